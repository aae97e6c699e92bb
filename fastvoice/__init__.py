"""fastvoice: Discord voice for Python at scale.

The public API follows the disgo ``voice`` package in Python form (PEP 8 names);
the wire behaviour is Discord's voice protocol as spoken in 2026 (gateway v8,
AEAD ``_rtpsize`` transport encryption, DAVE end-to-end encryption).
"""

from __future__ import annotations

from .audio import (
    AudioReceiver,
    AudioReceiverCreateFunc,
    AudioSender,
    AudioSenderCreateFunc,
    FrameStats,
    SendClock,
)
from .conn import (
    Conn,
    ConnConfig,
    ConnCreateFunc,
    ConnOpenError,
    StateUpdateFunc,
    VoiceServerUpdate,
    VoiceStateUpdate,
)
from .constants import (
    GATEWAY_VERSION,
    OPUS_FRAME_SIZE,
    OPUS_FRAME_SIZE_BYTES,
    OPUS_FRAME_SIZE_MS,
    OPUS_PACKET_HEADER_SIZE,
    SILENCE_AUDIO_FRAME,
    UDP_TIMEOUT,
)
from .encryption import EncryptionMode, choose_encryption_mode
from .errors import (
    DecryptionFailedError,
    GatewayAlreadyConnectedError,
    GatewayNotConnectedError,
    IPDiscoveryError,
    VoiceError,
)
from .ipdiscovery import build_ip_discovery_request, parse_ip_discovery_response
from .manager import Manager, ManagerConfig
from .opus import (
    AsyncOpusReader,
    OpusFrameProvider,
    OpusFrameReceiver,
    OpusReader,
    OpusWriter,
    ThreadedOpusFrameReceiver,
    UserFilterFunc,
)
from .rtp import Depacketizer, Packet, Packetizer, SSRCEntry, SSRCTable, speedups_enabled
from .udp import UDPConn, UDPConnConfig, UDPConnCreateFunc, UDPNotReadyError

__version__ = "0.1.0"

__all__ = [
    "GATEWAY_VERSION",
    "OPUS_FRAME_SIZE",
    "OPUS_FRAME_SIZE_BYTES",
    "OPUS_FRAME_SIZE_MS",
    "OPUS_PACKET_HEADER_SIZE",
    "SILENCE_AUDIO_FRAME",
    "UDP_TIMEOUT",
    "DecryptionFailedError",
    "Depacketizer",
    "EncryptionMode",
    "GatewayAlreadyConnectedError",
    "GatewayNotConnectedError",
    "IPDiscoveryError",
    "Packet",
    "Packetizer",
    "SSRCEntry",
    "SSRCTable",
    "VoiceError",
    "build_ip_discovery_request",
    "choose_encryption_mode",
    "parse_ip_discovery_response",
    "speedups_enabled",
    "AsyncOpusReader",
    "OpusFrameProvider",
    "OpusFrameReceiver",
    "OpusReader",
    "OpusWriter",
    "ThreadedOpusFrameReceiver",
    "UserFilterFunc",
    "UDPConn",
    "UDPConnConfig",
    "UDPConnCreateFunc",
    "UDPNotReadyError",
    "AudioReceiver",
    "AudioReceiverCreateFunc",
    "AudioSender",
    "AudioSenderCreateFunc",
    "FrameStats",
    "SendClock",
    "Conn",
    "ConnConfig",
    "ConnCreateFunc",
    "ConnOpenError",
    "StateUpdateFunc",
    "VoiceServerUpdate",
    "VoiceStateUpdate",
    "Manager",
    "ManagerConfig",
]

from .gateway import CloseHandlerFunc, EventHandlerFunc, GatewayCreateFunc, StateProviderFunc

__all__ += ["CloseHandlerFunc", "EventHandlerFunc", "GatewayCreateFunc", "StateProviderFunc"]

# --- gateway and local voice server exports are added below this line ---
from .close_codes import (
    GATEWAY_CLOSE_EVENT_CODES,
    CloseBehaviour,
    GatewayCloseEventCode,
    gateway_close_event_code_by_code,
)
from .errors import GatewayClosedError, GatewayDecodeError, GatewayTimeoutError
from .gateway import Gateway, GatewayConfig, State, Status
from .gateway_messages import GatewayMessage, Opcode, Protocol, SpeakingFlags

__all__ += [
    "GATEWAY_CLOSE_EVENT_CODES",
    "CloseBehaviour",
    "Gateway",
    "GatewayCloseEventCode",
    "GatewayClosedError",
    "GatewayConfig",
    "GatewayDecodeError",
    "GatewayMessage",
    "GatewayTimeoutError",
    "Opcode",
    "Protocol",
    "SpeakingFlags",
    "State",
    "Status",
    "gateway_close_event_code_by_code",
]

# --- DAVE (end-to-end encryption) exports ---
from .dave import DAVE_PROTOCOL_VERSION, DaveConfig, DaveManager, DaveStats, DaveUnavailableError

__all__ += ["DAVE_PROTOCOL_VERSION", "DaveConfig", "DaveManager", "DaveStats", "DaveUnavailableError"]

# --- audio inputs: Ogg Opus, ffmpeg, fan-out ---
from .fanout import FanOut, FanOutSubscription
from .ffmpeg import FFmpegError, FFmpegNotFoundError, FFmpegOpusProvider, UnsafeSourceError
from .ogg import AsyncOggOpusReader, OggError, OggOpusDemuxer, OggOpusReader, OpusHead, OpusTags

__all__ += [
    "AsyncOggOpusReader",
    "FanOut",
    "FanOutSubscription",
    "FFmpegError",
    "FFmpegNotFoundError",
    "FFmpegOpusProvider",
    "UnsafeSourceError",
    "OggError",
    "OggOpusDemuxer",
    "OggOpusReader",
    "OpusHead",
    "OpusTags",
]

# --- Opus decoding (libopus, loaded at run time) ---
from .opus_decoder import OpusDecodeError, OpusDecoder, OpusNotAvailableError, load_opus

__all__ += ["OpusDecodeError", "OpusDecoder", "OpusNotAvailableError", "load_opus"]

# --- receive playout: jitter buffer, one timeline per call, utterances (libopus at run time) ---
from .decode_pool import DecodePool
from .playout import PlayoutStats
from .playout_receiver import PlayoutReceiver
from .resample import Resampler
from .timeline import PlayoutClock, VoiceTick
from .utterances import Utterance

__all__ += ["DecodePool", "PlayoutClock", "PlayoutReceiver", "PlayoutStats", "Resampler", "Utterance", "VoiceTick"]
