"""fastvoice: Discord voice for Python at scale.

The public API follows the disgo ``voice`` package in Python form (PEP 8 names);
the wire behaviour is Discord's voice protocol as spoken in 2026 (gateway v8,
AEAD ``_rtpsize`` transport encryption, DAVE end-to-end encryption).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .audio import AudioReceiver, AudioReceiverCreateFunc, AudioSender, AudioSenderCreateFunc, FrameStats, SendClock
from .close_codes import GATEWAY_CLOSE_EVENT_CODES, CloseBehaviour, GatewayCloseEventCode, gateway_close_event_code_by_code
from .conn import Conn, ConnConfig, ConnCreateFunc, ConnOpenError, StateUpdateFunc, VoiceServerUpdate, VoiceStateUpdate
from .constants import (
    GATEWAY_VERSION,
    OPUS_FRAME_SIZE,
    OPUS_FRAME_SIZE_BYTES,
    OPUS_FRAME_SIZE_MS,
    OPUS_PACKET_HEADER_SIZE,
    SILENCE_AUDIO_FRAME,
    UDP_TIMEOUT,
)
from . import dave as _dave
from .dave import DAVE_PROTOCOL_VERSION, DaveConfig, DaveSession, DaveStats, DaveUnavailableError
from .decode_pool import DecodePool
from .encryption import EncryptionMode, choose_encryption_mode
from .errors import (
    DecryptionFailedError,
    GatewayAlreadyConnectedError,
    GatewayClosedError,
    GatewayDecodeError,
    GatewayNotConnectedError,
    GatewayTimeoutError,
    IPDiscoveryError,
    VoiceError,
)
from .fanout import FanOut, FanOutSubscription
from .ffmpeg import FFmpegError, FFmpegNotFoundError, FFmpegOpusProvider, UnsafeSourceError
from .gateway import (
    CloseHandlerFunc,
    EventHandlerFunc,
    Gateway,
    GatewayConfig,
    GatewayCreateFunc,
    State,
    StateProviderFunc,
    Status,
)
from .gateway_messages import GatewayMessage, Opcode, Protocol, SpeakingFlags
from .ipdiscovery import build_ip_discovery_request, parse_ip_discovery_response
from .manager import Manager, ManagerConfig
from .ogg import AsyncOggOpusReader, OggError, OggOpusDemuxer, OggOpusReader, OpusHead, OpusTags
from .opus import (
    AsyncOpusReader,
    OpusFrameProvider,
    OpusFrameReceiver,
    OpusReader,
    OpusWriter,
    ThreadedOpusFrameReceiver,
    UserFilterFunc,
)
from .opus_decoder import OpusDecodeError, OpusDecoder, OpusNotAvailableError, load_opus
from .playout import PlayoutStats
from .playout_receiver import PlayoutReceiver
from .resample import Resampler
from .rtp import Depacketizer, Packet, Packetizer, SSRCEntry, SSRCTable, speedups_enabled
from .timeline import PlayoutClock, VoiceTick
from .udp import UDPConn, UDPConnConfig, UDPConnCreateFunc, UDPNotReadyError
from .utterances import Utterance

__version__ = "0.1.0"

# The public names, in the order of the layers (core up to adapters), then the audio inputs
# and the receive side. The seed's names keep their disgo spelling in PEP 8 form.
__all__ = [
    # constants of the protocol
    "GATEWAY_VERSION",
    "OPUS_FRAME_SIZE",
    "OPUS_FRAME_SIZE_BYTES",
    "OPUS_FRAME_SIZE_MS",
    "OPUS_PACKET_HEADER_SIZE",
    "SILENCE_AUDIO_FRAME",
    "UDP_TIMEOUT",
    # errors
    "VoiceError",
    "DecryptionFailedError",
    "GatewayAlreadyConnectedError",
    "GatewayClosedError",
    "GatewayDecodeError",
    "GatewayNotConnectedError",
    "GatewayTimeoutError",
    "IPDiscoveryError",
    # the sans-I/O core: RTP, encryption modes, IP discovery, gateway messages, close codes
    "Packet",
    "Packetizer",
    "Depacketizer",
    "SSRCEntry",
    "SSRCTable",
    "speedups_enabled",
    "EncryptionMode",
    "choose_encryption_mode",
    "build_ip_discovery_request",
    "parse_ip_discovery_response",
    "GatewayMessage",
    "Opcode",
    "Protocol",
    "SpeakingFlags",
    "GATEWAY_CLOSE_EVENT_CODES",
    "CloseBehaviour",
    "GatewayCloseEventCode",
    "gateway_close_event_code_by_code",
    # Opus frames in and out
    "OpusFrameProvider",
    "OpusFrameReceiver",
    "UserFilterFunc",
    "OpusReader",
    "AsyncOpusReader",
    "OpusWriter",
    "ThreadedOpusFrameReceiver",
    # the transports: voice gateway and UDP
    "Gateway",
    "GatewayConfig",
    "GatewayCreateFunc",
    "State",
    "Status",
    "StateProviderFunc",
    "EventHandlerFunc",
    "CloseHandlerFunc",
    "UDPConn",
    "UDPConnConfig",
    "UDPConnCreateFunc",
    "UDPNotReadyError",
    # audio on a connection
    "SendClock",
    "AudioSender",
    "AudioSenderCreateFunc",
    "FrameStats",
    "AudioReceiver",
    "AudioReceiverCreateFunc",
    # DAVE end-to-end encryption
    "DAVE_PROTOCOL_VERSION",
    "DaveSession",
    "DaveManager",  # deprecated name of DaveSession
    "DaveConfig",
    "DaveStats",
    "DaveUnavailableError",
    # connections and their manager
    "Conn",
    "ConnConfig",
    "ConnCreateFunc",
    "ConnOpenError",
    "StateUpdateFunc",
    "VoiceStateUpdate",
    "VoiceServerUpdate",
    "Manager",
    "ManagerConfig",
    # audio inputs: Ogg Opus, ffmpeg, fan-out
    "OggOpusDemuxer",
    "OggOpusReader",
    "AsyncOggOpusReader",
    "OggError",
    "OpusHead",
    "OpusTags",
    "FFmpegOpusProvider",
    "FFmpegError",
    "FFmpegNotFoundError",
    "UnsafeSourceError",
    "FanOut",
    "FanOutSubscription",
    # the receive side: Opus decoding (libopus at run time) and playout
    "load_opus",
    "OpusDecoder",
    "OpusDecodeError",
    "OpusNotAvailableError",
    "DecodePool",
    "Resampler",
    "PlayoutReceiver",
    "PlayoutClock",
    "PlayoutStats",
    "VoiceTick",
    "Utterance",
]

if TYPE_CHECKING:
    from .dave import DaveManager
else:
    def __getattr__(name: str) -> Any:
        """``DaveManager``, the deprecated name of :class:`DaveSession` (warns once)."""
        if name == "DaveManager":
            return _dave.dave_manager_deprecated(stacklevel=2)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
