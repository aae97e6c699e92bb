"""Ogg Opus input: a page parser and Opus demuxer (RFC 3533, RFC 7845) and providers built on it.

:class:`OggOpusDemuxer` is sans-I/O: feed it bytes, take Opus packets out. It checks every page
(capture pattern, version, header flags, CRC-32, segment table, page sequence), joins packets
continued across pages, reads the ``OpusHead`` and ``OpusTags`` headers and hands out the
audio packets, ready to send as 20 ms frames when the encoder used 20 ms frames.

Logical streams: the demuxer follows the first logical stream whose beginning-of-stream page
starts with ``OpusHead``; pages of every other serial number (a video stream multiplexed in the
same file, a second audio stream) are checked and skipped. When the followed stream ends (its
end-of-stream page), a later beginning-of-stream page starting with ``OpusHead`` begins the
next link of a chained file (RFC 3533 section 4) and is followed the same way.

Bad input raises :class:`OggError` (a ``ValueError``) naming what is wrong and where; the end of
the data raises ``EOFError``. Data ending on a page boundary without an end-of-stream page (a
live stream cut, a recording still being written) ends cleanly.

Two :class:`~fastvoice.OpusFrameProvider` s wrap the demuxer: :class:`OggOpusReader` reads files
and file objects synchronously, :class:`AsyncOggOpusReader` reads ahead from an
``asyncio.StreamReader`` in one task into a bounded buffer.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import VoiceError
from .opus import ReadAhead

__all__ = [
    "OggError",
    "OpusHead",
    "OpusTags",
    "OggOpusDemuxer",
    "OggOpusReader",
    "AsyncOggOpusReader",
    "ogg_crc32",
]

_CAPTURE = b"OggS"
# capture pattern, version, header type, granule position, serial, page sequence, CRC, segments
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_HEADER_SIZE = _PAGE_HEADER.size  # 27

_CONTINUED = 0x01
_BEGIN = 0x02
_END = 0x04

#: Default largest audio packet accepted: an Opus packet of 120 ms holds at most 48 frames of
#: 1275 bytes (RFC 6716), about 61 KB; multistream packets (mapping family 1) can be larger.
MAX_PACKET_SIZE = 1 << 16
#: Default largest OpusTags header kept; larger ones (embedded cover art) are skipped.
MAX_TAGS_SIZE = 1 << 20

_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc32(data: bytes | bytearray) -> int:
    """The Ogg page checksum of ``data``: CRC-32, polynomial 0x04C11DB7, not reflected, init 0.

    Computed with ``zlib.crc32`` (the reflected form of the same polynomial) on the
    bit-reversed bytes, which gives the bit-reversed register: C speed instead of a Python loop.
    """
    reflected = zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int.from_bytes(reflected.to_bytes(4, "little").translate(_BIT_REVERSED), "big")


class OggError(VoiceError, ValueError):
    """Ogg or Ogg Opus data is malformed; the message names what is wrong and where."""


@dataclass(frozen=True)
class OpusHead:
    """The Opus identification header (RFC 7845 section 5.1).

    ``pre_skip`` is the number of 48 kHz samples a decoder drops at the start;
    ``input_sample_rate`` is informational (the rate of the original input, 0 if unknown);
    ``output_gain`` is in Q7.8 dB. ``stream_count``, ``coupled_count`` and
    ``channel_mapping`` describe mapping families other than 0.
    """

    version: int
    channels: int
    pre_skip: int
    input_sample_rate: int
    output_gain: int
    mapping_family: int
    stream_count: int = 1
    coupled_count: int = 0
    channel_mapping: bytes = b""

    @classmethod
    def parse(cls, packet: bytes) -> OpusHead:
        """Parse an ``OpusHead`` packet; raise :class:`OggError` if it is not a valid one."""
        if not packet.startswith(b"OpusHead"):
            raise OggError(f"identification header does not start with 'OpusHead' (got {bytes(packet[:8])!r})")
        if len(packet) < 19:
            raise OggError(f"OpusHead is {len(packet)} bytes, at least 19 expected")
        version, channels, pre_skip, rate, gain, family = struct.unpack_from("<BBHIhB", packet, 8)
        if version >> 4:
            raise OggError(f"OpusHead version {version} is not supported (major version 0 expected)")
        if channels == 0:
            raise OggError("OpusHead channel count is 0, at least 1 expected")
        if family == 0:
            if channels > 2:
                raise OggError(f"OpusHead channel count {channels} with mapping family 0, at most 2 expected")
            return cls(version, channels, pre_skip, rate, gain, family, 1, channels - 1)
        if len(packet) < 21 + channels:
            raise OggError(
                f"OpusHead with mapping family {family} and {channels} channels is {len(packet)} bytes,"
                f" at least {21 + channels} expected"
            )
        streams, coupled = packet[19], packet[20]
        if streams == 0 or coupled > streams or streams + coupled > 255:
            raise OggError(f"OpusHead stream count {streams} / coupled count {coupled} is not valid")
        mapping = bytes(packet[21 : 21 + channels])
        for index in mapping:
            if index != 255 and index >= streams + coupled:
                raise OggError(f"OpusHead channel mapping names stream channel {index}, only {streams + coupled} exist")
        return cls(version, channels, pre_skip, rate, gain, family, streams, coupled, mapping)


@dataclass(frozen=True)
class OpusTags:
    """The Opus comment header (RFC 7845 section 5.2): the encoder's vendor string and the
    ``NAME=value`` comments, decoded as UTF-8 (invalid bytes replaced)."""

    vendor: str
    comments: tuple[str, ...]

    @classmethod
    def parse(cls, packet: bytes) -> OpusTags:
        """Parse an ``OpusTags`` packet; raise :class:`OggError` if it is not a valid one."""
        if not packet.startswith(b"OpusTags"):
            raise OggError(f"comment header does not start with 'OpusTags' (got {bytes(packet[:8])!r})")
        offset = 8

        def string(what: str) -> str:
            nonlocal offset
            if offset + 4 > len(packet):
                raise OggError(f"OpusTags ends inside the length of the {what}")
            (length,) = struct.unpack_from("<I", packet, offset)
            offset += 4
            if offset + length > len(packet):
                raise OggError(f"OpusTags {what} is {length} bytes, only {len(packet) - offset} left in the header")
            text = bytes(packet[offset : offset + length]).decode("utf-8", "replace")
            offset += length
            return text

        vendor = string("vendor string")
        if offset + 4 > len(packet):
            raise OggError("OpusTags ends before its comment count")
        (count,) = struct.unpack_from("<I", packet, offset)
        offset += 4
        if count * 4 > len(packet) - offset:
            raise OggError(f"OpusTags comment count {count} does not fit in the {len(packet) - offset} bytes left")
        comments = tuple(string(f"comment {i}") for i in range(count))
        return cls(vendor, comments)


# What the demuxer waits for in the followed logical stream.
_LOOKING = 0  # a beginning-of-stream page starting with OpusHead
_TAGS = 1  # the OpusTags packet
_AUDIO = 2  # audio packets


class OggOpusDemuxer:
    """Sans-I/O Ogg Opus demuxer: :meth:`feed` bytes, :meth:`read_packet` Opus packets.

    ``read_packet`` returns the next audio packet, ``None`` when more data is needed, raises
    ``EOFError`` after :meth:`feed_eof` once everything was read, and :class:`OggError` on bad
    data. After an error the demuxer stays stopped: later calls raise ``EOFError``.

    ``head`` and ``tags`` are the headers of the current link (``None`` until read).
    ``max_packet_size`` bounds an audio packet; OpusTags larger than ``max_tags_size`` are
    skipped (``tags`` stays ``None``) rather than held in memory. Empty audio packets are
    dropped (an Opus packet is at least one byte).
    """

    def __init__(self, *, max_packet_size: int = MAX_PACKET_SIZE, max_tags_size: int = MAX_TAGS_SIZE) -> None:
        if max_packet_size < 1:
            raise ValueError(f"max_packet_size must be >= 1, got {max_packet_size}")
        self._max_packet = max_packet_size
        self._max_tags = max_tags_size
        self._buffer = bytearray()
        self._pos = 0  # start of the first unparsed byte in _buffer
        self._offset = 0  # stream offset of _buffer[_pos]
        self._eof = False
        self._done = False
        self._ready: deque[bytes] = deque()
        self._state = _LOOKING
        self._serial: int | None = None
        self._next_sequence = 0
        self._pending: list[bytes] | None = None  # pieces of a packet continued across pages
        self._pending_size = 0
        self._pending_dropped = False
        self._other_serials: set[int] = set()
        #: Headers of the current link.
        self.head: OpusHead | None = None
        self.tags: OpusTags | None = None
        #: Pages parsed (all streams) and links (Opus streams) begun.
        self.pages = 0
        self.links = 0

    @property
    def at_eof(self) -> bool:
        """True once :meth:`feed_eof` was called."""
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes fed but not parsed yet."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> None:
        """Add bytes of the stream."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if self._pos > 65536 and self._pos * 2 > len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def feed_eof(self) -> None:
        """Mark the end of the stream."""
        self._eof = True

    def read_packet(self) -> bytes | None:
        """The next audio packet, ``None`` if more data is needed; ``EOFError`` at the end."""
        if self._done:
            raise EOFError("end of Ogg Opus stream")
        try:
            while not self._ready:
                if not self._parse_page():
                    if self._eof:
                        self._finish()
                    return None
        except OggError:
            self._done = True
            self._ready.clear()
            raise
        return self._ready.popleft()

    def read_headers(self) -> bool:
        """Parse up to the first audio packet without taking it; True once ``head`` and ``tags``
        are read (``tags`` may stay ``None`` when skipped), False if more data is needed."""
        if self._done:
            return self.links > 0 and self._state != _TAGS
        try:
            while self.links == 0 or self._state == _TAGS:
                if not self._parse_page():
                    if self._eof:
                        self._finish()
                    return False
        except OggError:
            self._done = True
            raise
        return True

    # -- pages --------------------------------------------------------------------

    def _fail(self, message: str, offset: int | None = None) -> OggError:
        where = self._offset if offset is None else offset
        return OggError(f"Ogg page at byte {where}: {message}")

    def _parse_page(self) -> bool:
        """Parse one page if a whole one is buffered; False if more data is needed."""
        buffer, pos = self._buffer, self._pos
        available = len(buffer) - pos
        if available == 0:
            return False
        head = bytes(buffer[pos : pos + 4])
        if head != _CAPTURE[: len(head)]:
            raise self._fail(f"capture pattern 'OggS' expected, got {head!r}")
        if available < _HEADER_SIZE:
            return False
        capture, version, flags, granule, serial, sequence, crc, segments = _PAGE_HEADER.unpack_from(buffer, pos)
        if version != 0:
            raise self._fail(f"stream structure version {version}, 0 expected")
        if flags & ~(_CONTINUED | _BEGIN | _END):
            raise self._fail(f"header type flags {flags:#04x} set undefined bits (only 0x01, 0x02, 0x04 exist)")
        if available < _HEADER_SIZE + segments:
            return False
        table = bytes(buffer[pos + _HEADER_SIZE : pos + _HEADER_SIZE + segments])
        size = _HEADER_SIZE + segments + sum(table)
        if available < size:
            return False
        checked = buffer[pos : pos + size]
        checked[22:26] = b"\0\0\0\0"  # the checksum is computed with its own field zeroed
        computed = ogg_crc32(checked)
        page = bytes(checked)
        if computed != crc:
            raise self._fail(f"CRC-32 mismatch: page says {crc:#010x}, contents give {computed:#010x}")
        self._handle_page(flags, serial, sequence, table, page, _HEADER_SIZE + segments)
        self._pos = pos + size
        self._offset += size
        self.pages += 1
        return True

    def _handle_page(self, flags: int, serial: int, sequence: int, table: bytes, page: bytes, body: int) -> None:
        if self._serial is None:
            if flags & _BEGIN and page.startswith(b"OpusHead", body):
                self._begin_link(flags, serial, sequence, table, page, body)
                return
            if flags & _BEGIN:
                self._other_serials.add(serial)  # another codec's stream: skipped
                return
            if self.links == 0:
                raise self._fail(
                    f"page of stream {serial:#x} before any Opus stream began"
                    " (no beginning-of-stream page starting with 'OpusHead')"
                )
            return  # after our link ended: other streams' remaining pages
        if serial != self._serial:
            if flags & _BEGIN or serial in self._other_serials:
                self._other_serials.add(serial)
                return
            raise self._fail(f"page of stream {serial:#x}, which never began (followed stream is {self._serial:#x})")
        if flags & _BEGIN:
            raise self._fail(f"second beginning-of-stream page for stream {serial:#x}")
        if sequence != self._next_sequence:
            raise self._fail(
                f"page sequence number {sequence} of stream {serial:#x}, {self._next_sequence} expected (a page is missing)"
            )
        self._next_sequence = (sequence + 1) & 0xFFFFFFFF
        continued = bool(flags & _CONTINUED)
        if continued and self._pending is None and not self._pending_dropped:
            raise self._fail("page continues a packet, but no packet was left unfinished")
        if not continued and (self._pending is not None or self._pending_dropped):
            raise self._fail("the previous page left a packet unfinished, but this page does not continue it")
        start = body
        for lacing in table:
            end = start + lacing
            if lacing < 255:
                self._complete(page, body, end)
                body = end
            start = end
        if body < start or (table and table[-1] == 255):
            self._add_pending(page[body:start])
        if flags & _END:
            if self._pending is not None or self._pending_dropped:
                raise self._fail(f"end-of-stream page of stream {serial:#x} leaves a packet unfinished")
            if self._state == _TAGS:
                raise self._fail(f"stream {serial:#x} ends before its OpusTags header")
            self._serial = None
            self._state = _LOOKING

    def _begin_link(self, flags: int, serial: int, sequence: int, table: bytes, page: bytes, body: int) -> None:
        if flags & _CONTINUED:
            raise self._fail("beginning-of-stream page is marked as continuing a packet")
        if not table or table[-1] == 255 or any(lacing < 255 for lacing in table[:-1]):
            raise self._fail("the OpusHead page must hold exactly one complete packet")
        self.head = OpusHead.parse(page[body:])
        self.tags = None
        self._serial = serial
        self._other_serials.discard(serial)
        self._next_sequence = (sequence + 1) & 0xFFFFFFFF
        self._state = _TAGS
        self.links += 1
        if flags & _END:
            raise self._fail(f"stream {serial:#x} ends on its first page, before its OpusTags header")

    def _limit(self) -> int:
        return self._max_tags if self._state == _TAGS else self._max_packet

    def _add_pending(self, piece: bytes) -> None:
        if self._pending_dropped:
            return
        if self._pending is None:
            self._pending = []
            self._pending_size = 0
        self._pending_size += len(piece)
        if self._pending_size > self._limit():
            if self._state == _TAGS:
                self._pending = None
                self._pending_dropped = True  # skip the oversized OpusTags
                return
            raise self._fail(f"packet larger than {self._limit()} bytes (max_packet_size)")
        self._pending.append(piece)

    def _complete(self, page: bytes, start: int, end: int) -> None:
        """A packet ends at ``page[end]``; its last piece starts at ``page[start]``."""
        if self._pending_dropped:
            self._pending_dropped = False
            self._state = _AUDIO
            return
        if self._pending is not None:
            self._add_pending(page[start:end])
            if self._pending_dropped:
                self._pending_dropped = False
                self._state = _AUDIO
                return
            packet = b"".join(self._pending)
            self._pending = None
        else:
            packet = page[start:end]
            if len(packet) > self._limit():
                if self._state == _TAGS:
                    self._state = _AUDIO
                    return
                raise self._fail(f"packet of {len(packet)} bytes, larger than {self._limit()} (max_packet_size)")
        if self._state == _AUDIO:
            if packet:
                self._ready.append(packet)
        else:  # _TAGS
            self.tags = OpusTags.parse(packet)
            self._state = _AUDIO

    def _finish(self) -> None:
        """The data ended and every whole page was parsed: EOFError, or OggError if cut short."""
        self._done = True
        left = len(self._buffer) - self._pos
        if left:
            raise OggError(f"Ogg data ends inside a page: {left} bytes after the last whole page, at byte {self._offset}")
        if self.links == 0:
            if self._offset == 0:
                raise OggError("no Ogg data: the stream is empty")
            raise OggError("no Opus stream: no beginning-of-stream page starts with 'OpusHead'")
        if self._pending is not None or self._pending_dropped:
            raise OggError(f"Ogg data ends inside a packet continued across pages, at byte {self._offset}")
        if self._serial is not None and self._state == _TAGS:
            raise OggError(f"Ogg data ends before the OpusTags header, at byte {self._offset}")
        raise EOFError("end of Ogg Opus stream")


def _open_source(source: str | os.PathLike[str] | BinaryIO) -> BinaryIO:
    if isinstance(source, (str, os.PathLike)):
        return open(source, "rb")
    if callable(getattr(source, "read", None)):
        return source
    raise TypeError(f"source must be a path or a binary file object, got {type(source).__name__}")


class OggOpusReader:
    """An :class:`~fastvoice.OpusFrameProvider` playing an Ogg Opus file.

    ``source`` is a path or a binary file object (a path is opened here). The headers are read
    in the constructor, so a file that is not Ogg Opus raises :class:`OggError` at once and
    :attr:`head` is available. Reads are synchronous: use it for local files and in-memory data;
    for pipes and sockets use :class:`AsyncOggOpusReader` or :class:`~fastvoice.FFmpegOpusProvider`.

    ``provide_opus_frame`` returns the next packet and raises ``EOFError`` at the end (an
    :class:`OggError` met mid-file is raised once, then ``EOFError``). Iterating over the reader
    yields the remaining packets. ``close()`` closes the file, also one passed in.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        chunk_size: int = 16384,
        max_packet_size: int = MAX_PACKET_SIZE,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._file = _open_source(source)
        self._chunk = chunk_size
        self._demuxer = OggOpusDemuxer(max_packet_size=max_packet_size)
        try:
            while not self._demuxer.read_headers():
                self._read_more()
        except BaseException:
            self._file.close()
            raise

    @property
    def head(self) -> OpusHead:
        """The identification header (channels, pre-skip, input sample rate...)."""
        assert self._demuxer.head is not None
        return self._demuxer.head

    @property
    def tags(self) -> OpusTags | None:
        """The comment header (``None`` if it was too large to keep)."""
        return self._demuxer.tags

    def _read_more(self) -> None:
        data = self._file.read(self._chunk)
        if data:
            self._demuxer.feed(data)
        else:
            self._demuxer.feed_eof()

    def read_packet(self) -> bytes:
        """The next Opus packet; ``EOFError`` at the end, :class:`OggError` on bad data."""
        while True:
            packet = self._demuxer.read_packet()
            if packet is not None:
                return packet
            self._read_more()

    def provide_opus_frame(self) -> bytes | None:
        """Return the next frame; raise ``EOFError`` at the end of the stream."""
        return self.read_packet()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.read_packet()
            except EOFError:
                return

    def close(self) -> None:
        """Close the underlying file."""
        self._file.close()

    def __enter__(self) -> OggOpusReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OggReadAhead(ReadAhead):
    """A bounded buffer of demuxed packets filled by one task, emptied by the send clock."""

    _end_message = "end of Ogg Opus stream"

    def __init__(self, *, buffer_frames: int, chunk_size: int, max_packet_size: int) -> None:
        super().__init__(buffer_frames)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._demuxer = OggOpusDemuxer(max_packet_size=max_packet_size)
        self._chunk = chunk_size

    @property
    def head(self) -> OpusHead | None:
        """The identification header, once read."""
        return self._demuxer.head

    @property
    def tags(self) -> OpusTags | None:
        """The comment header, once read."""
        return self._demuxer.tags

    @property
    def buffered_frames(self) -> int:
        """Frames read ahead and not played yet."""
        return len(self._frames)

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        """Demux ``reader`` into the buffer until the end of the stream; waits while it is full."""
        demuxer, frames = self._demuxer, self._frames
        while True:
            await self._wait_for_space()
            try:
                packet = demuxer.read_packet()
            except EOFError:
                return
            if packet is None:
                data = await reader.read(self._chunk)
                if data:
                    demuxer.feed(data)
                else:
                    demuxer.feed_eof()
            else:
                frames.append(packet)


class AsyncOggOpusReader(OggReadAhead):
    """An :class:`~fastvoice.OpusFrameProvider` demuxing Ogg Opus from an ``asyncio.StreamReader``.

    ``start()`` begins reading ahead in one task into a buffer of at most ``buffer_frames``
    packets (reading stops while it is full); ``provide_opus_frame`` takes from it without
    waiting: ``None`` when the buffer is empty (the data is late), the :class:`OggError` of bad
    data once, then ``EOFError`` once the stream ended and the buffer is drained.
    :attr:`head` and :attr:`tags` are set once the headers arrived.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        buffer_frames: int = 50,
        chunk_size: int = 4096,
        max_packet_size: int = MAX_PACKET_SIZE,
    ) -> None:
        super().__init__(buffer_frames=buffer_frames, chunk_size=chunk_size, max_packet_size=max_packet_size)
        self._reader = reader
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the read-ahead task on the running loop."""
        if self._task is None and not self._ended:
            self._task = asyncio.get_running_loop().create_task(self._read_ahead())

    async def _read_ahead(self) -> None:
        try:
            await self._pump(self._reader)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported to the sender through provide_opus_frame
            self._error = exc
        finally:
            self._ended = True

    def close(self) -> None:
        """Stop the read-ahead task and drop buffered frames (the reader's owner closes it)."""
        self._stop(self._task)
