"""What a receiver can tell from an Opus packet without decoding it (RFC 6716).

:func:`has_fec` reads the first header bits of the packet's SILK layer: whether the packet
carries in-band forward error correction (LBRR) data for the packet before it.  The playout
buffer uses it to choose between recovering a lost frame from the next packet
(``OpusDecoder.decode(next, fec=True)``) and concealing it (``decode(None)``), and to count
each as what it really is.  libopus 1.5 has ``opus_packet_has_lbrr`` for this; the systems
fastvoice runs on mostly ship 1.3 or 1.4, so the few bits are read here.

:func:`packet_samples` reads a packet's duration from its TOC byte and frame count (what
libopus's ``opus_packet_get_nb_samples`` does): a recorder writing packets into an Ogg file
needs it for the granule positions.
"""

from __future__ import annotations

__all__ = ["has_fec", "is_celt_only", "frame_bounds", "packet_samples", "MAX_PACKET_SAMPLES"]

# Range decoder constants of RFC 6716 section 4.1 (32-bit coder, 8-bit symbols).
_CODE_TOP = 1 << 31
_CODE_BOT = 1 << 23
_CODE_EXTRA = 7

#: The longest an Opus packet may last: 120 ms, in 48 kHz samples (RFC 6716 section 3.2.5).
MAX_PACKET_SAMPLES = 5760
# Samples per frame at 48 kHz of each TOC configuration (RFC 6716 section 3.1, table 2):
# SILK-only 10/20/40/60 ms, hybrid 10/20 ms, CELT-only 2.5/5/10/20 ms.
_FRAME_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4


def is_celt_only(packet: bytes) -> bool:
    """True when ``packet``'s TOC byte says CELT-only (configurations 16-31): no SILK layer,
    so no in-band FEC.  False for SILK-only and hybrid packets and for an empty packet."""
    return bool(packet) and packet[0] >> 3 >= 16


def packet_samples(packet: bytes) -> int | None:
    """The duration of ``packet`` in 48 kHz samples (960 for a 20 ms packet), from its TOC
    byte and frame count; None when the packet is empty, its code 3 frame count is missing or
    zero, or it would last longer than 120 ms.  Frame lengths are not checked (see
    :func:`frame_bounds`)."""
    if not packet:
        return None
    toc = packet[0]
    code = toc & 3
    if code == 0:
        count = 1
    elif code != 3:
        count = 2
    elif len(packet) < 2:
        return None
    else:
        count = packet[1] & 0x3F
    samples = count * _FRAME_SAMPLES[toc >> 3]
    return samples if 0 < samples <= MAX_PACKET_SAMPLES else None


def frame_bounds(packet: bytes) -> tuple[int, int] | None:
    """``(start, length)`` of the first frame of ``packet`` (RFC 6716 section 3.2), or None when
    the packet is empty or its framing is malformed."""
    size = len(packet)
    if size < 1:
        return None
    code = packet[0] & 3
    if code == 0:
        return 1, size - 1
    if code == 1:
        if (size - 1) % 2:
            return None
        return 1, (size - 1) // 2
    if code == 2:
        parsed = _frame_length(packet, 1)
        if parsed is None:
            return None
        length, start = parsed
        return (start, length) if start + length <= size else None
    # code 3: a frame count byte, optional padding, then (VBR) the lengths of all frames but the last
    if size < 2:
        return None
    count_byte = packet[1]
    count = count_byte & 0x3F
    if count == 0:
        return None
    offset, padding = 2, 0
    if count_byte & 0x40:
        while True:
            if offset >= size:
                return None
            value = packet[offset]
            offset += 1
            padding += 254 if value == 255 else value
            if value != 255:
                break
    if count_byte & 0x80:  # VBR
        first = None
        for _ in range(count - 1):
            parsed = _frame_length(packet, offset)
            if parsed is None:
                return None
            length, offset = parsed
            if first is None:
                first = length
        if first is None:  # a single frame: everything left but the padding
            first = size - offset - padding
        return (offset, first) if first >= 0 and offset + first <= size - padding else None
    payload = size - offset - padding
    if payload < 0 or payload % count:
        return None
    return offset, payload // count


def _frame_length(packet: bytes, offset: int) -> tuple[int, int] | None:
    """A frame length coded in one or two bytes at ``offset``: ``(length, offset after it)``."""
    if offset >= len(packet):
        return None
    first = packet[offset]
    if first < 252:
        return first, offset + 1
    if offset + 1 >= len(packet):
        return None
    return first + 4 * packet[offset + 1], offset + 2


def has_fec(packet: bytes) -> bool:
    """True when ``packet`` carries in-band FEC (LBRR) data for the packet before it.

    Only SILK-only and hybrid packets can (libopus encoders with in-band FEC on and an
    expected loss above 0 add it); the flag is one of the first bits of the SILK layer of
    the packet's first frame, for the mid channel (RFC 6716 section 4.2.3).  Never raises:
    a malformed or CELT-only packet gives False.
    """
    if not packet or packet[0] >> 3 >= 16:
        return False
    bounds = frame_bounds(packet)
    if bounds is None:
        return False
    start, length = bounds
    if length <= 0:
        return False
    config = packet[0] >> 3
    # SILK frames per Opus frame: 40 ms SILK-only frames hold two, 60 ms three.
    silk_frames = 1
    if config < 12:
        silk_frames = (1, 1, 2, 3)[config & 3]
    data = packet[start:start + length]
    decoder = _BitReader(data)
    for _ in range(silk_frames):  # the mid channel's VAD flags
        decoder.bit()
    return decoder.bit()


class _BitReader:
    """The range decoder of RFC 6716 section 4.1, only for symbols of probability 1/2."""

    __slots__ = ("data", "offset", "rng", "val", "rem")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.rng = 1 << _CODE_EXTRA
        self.rem = self._byte()
        self.val = self.rng - 1 - (self.rem >> (8 - _CODE_EXTRA))
        self._normalize()

    def _byte(self) -> int:
        if self.offset < len(self.data):
            value = self.data[self.offset]
            self.offset += 1
            return value
        return 0  # reading past the end gives zeros (RFC 6716 4.1.1)

    def _normalize(self) -> None:
        while self.rng <= _CODE_BOT:
            self.rng <<= 8
            previous, self.rem = self.rem, self._byte()
            symbol = ((previous << 8) | self.rem) >> (8 - _CODE_EXTRA)
            self.val = ((self.val << 8) + (0xFF & ~symbol)) & (_CODE_TOP - 1)

    def bit(self) -> bool:
        """Decode one symbol of probability 1/2 (``ec_dec_bit_logp(dec, 1)``)."""
        half = self.rng >> 1
        one = self.val < half
        if one:
            self.rng = half
        else:
            self.val -= half
            self.rng -= half
        self._normalize()
        return one
