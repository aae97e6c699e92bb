"""Ogg Opus output: :class:`OggOpusWriter`, a sans-I/O muxer (RFC 3533, RFC 7845), and the
packets that repair a gap in a real-time stream.

The writer takes Opus packets as they are (nothing is decoded or re-encoded) and returns the
bytes of the Ogg pages they complete: the two header pages (``OpusHead`` on the
beginning-of-stream page, ``OpusTags``) from :meth:`OggOpusWriter.header_pages`, one audio page
per ``page_packets`` packets from :meth:`OggOpusWriter.write`, and the last page, flagged
end-of-stream, from :meth:`OggOpusWriter.finish`.  Each audio page's granule position is the
number of 48 kHz samples up to the end of its last packet (RFC 7845 section 4), read from the
packets' TOC bytes; every page carries its CRC-32.  A packet never spans two pages.

RFC 7845 allows no jump in the granule positions: a recorder that lost packets, or a speaker
who was silent, fills the time with packets (section 4.4).  :func:`concealment_packet` is
the packet that asks the decoder to conceal 20 ms (a TOC byte and a zero-length frame, with
the previous packet's mode, bandwidth and channels); :data:`SILENCE_PACKET` is 20 ms of
silence (the frame Discord clients send); :func:`fill_packets` fills any gap that is a
multiple of 2.5 ms with either.
"""

from __future__ import annotations

import os
import struct

from .constants import SILENCE_AUDIO_FRAME
from .ogg import ogg_crc32
from .opus_packet import packet_samples

__all__ = ["OggOpusWriter", "concealment_packet", "fill_packets", "SILENCE_PACKET", "MAX_PAGE_PACKETS"]

#: 20 ms of silence: a CELT frame whose first bits say "silence" (what Discord clients send).
SILENCE_PACKET = SILENCE_AUDIO_FRAME
#: At most this many packets on one page (one lacing value each, at most 255 per page).
MAX_PAGE_PACKETS = 255

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_BEGIN, _END = 0x02, 0x04
# CELT-only fullband TOC configurations of 2.5, 5, 10 and 20 ms frames (RFC 6716 table 2).
_CELT_FB = {120: 28, 240: 29, 480: 30, 960: 31}
_STEREO = 0x04
#: Largest packet that fits on one page: 255 lacing values.
_MAX_PACKET = 255 * 255 - 1


def concealment_packet(previous: bytes | None = None) -> bytes:
    """A one-byte Opus packet asking the decoder to conceal 20 ms (a zero-length frame, RFC 6716
    section 3.2.1; RFC 7845 section 4.4), with the mode, audio bandwidth and channels of the
    ``previous`` packet so that the decoder's concealment continues it.  Without a previous
    packet (a fresh decoder produces silence and keeps its state): CELT fullband stereo."""
    if not previous:
        return bytes([_CELT_FB[960] << 3 | _STEREO])
    config = previous[0] >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        config = (config & ~3) | 1
    elif config < 16:  # hybrid: 10, 20 ms
        config = (config & ~1) | 1
    else:  # CELT-only: 2.5, 5, 10, 20 ms
        config |= 3
    return bytes([config << 3 | (previous[0] & _STEREO)])


def fill_packets(samples: int, *, silence: bool, previous: bytes | None = None) -> list[bytes]:
    """Packets that fill ``samples`` 48 kHz samples (a multiple of 120, 2.5 ms): silence
    (``silence=True``) or concealment continuing ``previous``.  20 ms packets first; a rest
    shorter than 20 ms is made of CELT frames (the only mode with 2.5 and 5 ms frames) at the
    end of the gap, as RFC 7845 section 4.4 recommends."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0 or samples % 120:
        raise ValueError(f"a gap must be a whole number of 2.5 ms (120 samples) >= 0, got {samples!r}"[:100])
    whole, rest = divmod(samples, 960)
    packets = [SILENCE_PACKET if silence else concealment_packet(previous)] * whole
    stereo = _STEREO if previous and previous[0] & _STEREO else 0
    for size in (480, 240, 120):
        if rest >= size:
            rest -= size
            toc = bytes([_CELT_FB[size] << 3 | (0 if silence else stereo)])
            packets.append(toc + SILENCE_PACKET[1:] if silence else toc)
    return packets


def _page(flags: int, granule: int, serial: int, sequence: int, packets: list[bytes]) -> bytes:
    lacing = bytearray()
    for packet in packets:
        full, last = divmod(len(packet), 255)
        lacing += b"\xff" * full
        lacing.append(last)
    page = bytearray(_PAGE_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing)))
    page += lacing
    for packet in packets:
        page += packet
    page[22:26] = ogg_crc32(page).to_bytes(4, "little")
    return bytes(page)


class OggOpusWriter:
    """Sans-I/O Ogg Opus muxer of one logical stream (see the module docstring).

    - ``serial``: the stream's serial number (random by default);
    - ``channels`` (1 or 2), ``pre_skip`` (48 kHz samples a player drops at the start),
      ``input_sample_rate`` and ``output_gain`` (Q7.8 dB) go into ``OpusHead`` (mapping
      family 0); ``vendor`` and ``comments`` (``"NAME=value"`` strings) into ``OpusTags``;
    - ``page_packets``: audio packets per page (50: a page per second of 20 ms packets).

    Call :meth:`header_pages` first, then :meth:`write` for each packet (it returns the page it
    completed, or ``b""``), then :meth:`finish` (the last page, end-of-stream).  The last
    packets always wait for the next page, so that the end-of-stream page holds at least one.
    ``ValueError`` for a packet that is empty, longer than 120 ms or too large for a page.
    """

    def __init__(self, *, serial: int | None = None, channels: int = 2, pre_skip: int = 0,
                 input_sample_rate: int = 48000, output_gain: int = 0, vendor: str = "fastvoice",
                 comments: tuple[str, ...] | list[str] = (), page_packets: int = 50) -> None:
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}"[:80])
        if isinstance(pre_skip, bool) or not isinstance(pre_skip, int) or not 0 <= pre_skip <= 0xFFFF:
            raise ValueError(f"pre_skip must be an int from 0 to 65535, got {pre_skip!r}"[:80])
        if isinstance(page_packets, bool) or not isinstance(page_packets, int) or \
                not 1 <= page_packets <= MAX_PAGE_PACKETS:
            raise ValueError(f"page_packets must be an int from 1 to {MAX_PAGE_PACKETS}, got {page_packets!r}"[:80])
        if serial is None:
            serial = int.from_bytes(os.urandom(4), "little")
        if isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError(f"serial must be a 32-bit unsigned int, got {serial!r}"[:80])
        self._serial = serial
        self._head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_sample_rate,
                                               output_gain, 0)
        if isinstance(comments, str) or not all(isinstance(c, str) for c in comments):
            raise TypeError("comments must be a sequence of 'NAME=value' strings")
        tags = bytearray(b"OpusTags")
        vendor_bytes = vendor.encode("utf-8")
        tags += struct.pack("<I", len(vendor_bytes)) + vendor_bytes + struct.pack("<I", len(comments))
        for comment in comments:
            encoded = comment.encode("utf-8")
            tags += struct.pack("<I", len(encoded)) + encoded
        self._tags = bytes(tags)
        self._page_packets = page_packets
        self._sequence = 0
        self._pending: list[bytes] = []
        self._segments = 0
        self._granule = 0  # samples up to the end of the last packet written
        self._last_samples = 0
        self._started = False
        self._finished = False
        #: Audio packets written and pages made (headers included).
        self.packets = 0
        self.pages = 0

    @property
    def serial(self) -> int:
        """The logical stream's serial number."""
        return self._serial

    @property
    def granule(self) -> int:
        """48 kHz samples written so far (the granule position after the last packet)."""
        return self._granule

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` made the end-of-stream page."""
        return self._finished

    def _next_page(self, flags: int, granule: int, packets: list[bytes]) -> bytes:
        page = _page(flags, granule, self._serial, self._sequence, packets)
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        self.pages += 1
        return page

    def header_pages(self) -> bytes:
        """The two header pages: ``OpusHead`` (beginning of stream) and ``OpusTags``, both with
        granule position 0.  Once, before the first packet."""
        if self._started:
            raise RuntimeError("the header pages were already made")
        if len(self._tags) > _MAX_PACKET:
            raise ValueError(f"OpusTags of {len(self._tags)} bytes does not fit on one page")
        self._started = True
        return self._next_page(_BEGIN, 0, [self._head]) + self._next_page(0, 0, [self._tags])

    def write(self, packet: bytes, samples: int | None = None) -> bytes:
        """Add an audio packet (``samples``: its duration in 48 kHz samples, read from its TOC
        byte when None); returns the page this completed (the packets before it) or ``b""``."""
        if not self._started:
            raise RuntimeError("header_pages() must come first")
        if self._finished:
            raise RuntimeError("the stream is finished")
        size = len(packet)
        if size == 0 or size > _MAX_PACKET:
            raise ValueError(f"an Opus packet of {size} bytes cannot be written (1 to {_MAX_PACKET} bytes)")
        if samples is None:
            samples = packet_samples(packet)
            if samples is None:
                raise ValueError(f"not an Opus packet of 2.5 to 120 ms (TOC byte {packet[0]:#04x})")
        segments = size // 255 + 1
        out = b""
        if self._pending and (len(self._pending) >= self._page_packets or self._segments + segments > 255):
            out = self._next_page(0, self._granule, self._pending)
            self._pending = []
            self._segments = 0
        self._pending.append(bytes(packet))
        self._segments += segments
        self._granule += samples
        self._last_samples = samples
        self.packets += 1
        return out

    def finish(self, end: int | None = None) -> bytes:
        """The end-of-stream page with the packets still waiting (an empty one, granule 0, if
        no packet was ever written).  ``end`` (48 kHz samples) trims the stream's end to there (RFC 7845 section
        4.5): at most the last packet's duration earlier than :attr:`granule`."""
        if self._finished:
            return b""
        if not self._started:
            raise RuntimeError("header_pages() must come first")
        self._finished = True
        granule = self._granule
        if end is not None and self._granule - self._last_samples <= end < self._granule:
            granule = end
        page = self._next_page(_END, granule, self._pending)
        self._pending = []
        return page

    def __repr__(self) -> str:
        return (f"OggOpusWriter(serial={self._serial:#010x}, packets={self.packets}, pages={self.pages}, "
                f"granule={self._granule}, finished={self._finished})")
