"""Protocol constants shared by every layer (the seed's constants, PEP 8 names)."""

from __future__ import annotations

from typing import Final

#: Length of one Opus frame in milliseconds.
OPUS_FRAME_SIZE_MS: Final[int] = 20
#: Samples per channel in one 20 ms frame at 48 kHz (also the RTP timestamp step).
OPUS_FRAME_SIZE: Final[int] = 960
#: Bytes of 16-bit stereo PCM in one frame (960 samples x 2 channels x 2 bytes).
OPUS_FRAME_SIZE_BYTES: Final[int] = OPUS_FRAME_SIZE * 2 * 2
#: Size of the fixed RTP header fastvoice sends.
OPUS_PACKET_HEADER_SIZE: Final[int] = 12
#: Overall timeout, in seconds, for the UDP handshake (IP discovery).
UDP_TIMEOUT: Final[float] = 30.0
#: A 20 ms Opus frame of silence.
SILENCE_AUDIO_FRAME: Final[bytes] = b"\xf8\xff\xfe"
#: Voice gateway version spoken (the seed's document predates v8).
GATEWAY_VERSION: Final[int] = 8
#: RTP payload type of Opus on Discord.
RTP_PAYLOAD_TYPE_OPUS: Final[int] = 0x78
