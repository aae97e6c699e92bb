"""WAV output that stays readable while it is written: :class:`WavWriter`.

A WAV file's header holds the length of its data, known only at the end.  :class:`WavWriter`
writes a header for what was written so far at once and again on every :meth:`WavWriter.sync`
(a recorder syncs about once a second) and at :meth:`WavWriter.close`, so a file copied or
read while a recording runs, or left behind by a process that was killed, is a valid WAV file
of everything up to the last sync.  16-bit little-endian PCM (``WAVE_FORMAT_PCM``), any rate,
1 or 2 channels; at most 4 GiB of data (the format's 32-bit sizes: 6.2 hours of 48 kHz stereo),
beyond which :meth:`WavWriter.write` keeps nothing more and :attr:`WavWriter.full` is true.

The file can be let go between writes (:meth:`WavWriter.suspend` closes it; the next write
opens it again), so a recording of many tracks holds open only the files it is writing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["WavWriter", "wav_header", "WAV_HEADER_SIZE", "MAX_WAV_DATA"]

#: Bytes before the samples: the RIFF, ``fmt `` and ``data`` chunk headers.
WAV_HEADER_SIZE = 44
#: The most data bytes a WAV file can describe (its RIFF size is 32 bits).
MAX_WAV_DATA = 0xFFFFFFFF - (WAV_HEADER_SIZE - 8)
# Silences from this size on extend the file instead of writing zeros.
_SPARSE_FROM = 1 << 16


def wav_header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file holding ``data_bytes`` bytes of samples."""
    block = channels * 2
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", WAV_HEADER_SIZE - 8 + data_bytes, b"WAVE", b"fmt ", 16, 1,
                       channels, sample_rate, sample_rate * block, block, 16, b"data", data_bytes)


class WavWriter:
    """Writes s16le PCM (channels interleaved) to a new WAV file at ``path`` (replaced if it
    exists); the header is right after :meth:`sync`, :meth:`suspend` and :meth:`close`.

    ``write(pcm)`` appends (whole frames; once 4 GiB are written the rest is dropped and
    :attr:`full` is set), ``sync()`` rewrites the header's sizes and flushes the file to the
    operating system, ``suspend()`` syncs and closes the file until the next write,
    ``close()`` syncs and closes for good.  Errors are the ``OSError`` of the file system.
    """

    def __init__(self, path: str | os.PathLike[str], sample_rate: int = 48000, channels: int = 2) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 1 <= sample_rate <= 1_000_000:
            raise ValueError(f"sample_rate must be an int from 1 to 1000000, got {sample_rate!r}"[:80])
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}"[:80])
        self._path = Path(path)
        self._sample_rate = sample_rate
        self._channels = channels
        self._block = channels * 2
        self._data = 0
        self._synced = -1
        self._closed = False
        self._full = False
        self._file: BinaryIO | None = open(self._path, "w+b")  # noqa: SIM115 - kept open across calls
        try:
            self._file.write(wav_header(sample_rate, channels, 0))
        except BaseException:
            self._file.close()
            raise

    @property
    def path(self) -> Path:
        """The file written."""
        return self._path

    @property
    def data_bytes(self) -> int:
        """Bytes of samples written."""
        return self._data

    @property
    def frames(self) -> int:
        """Sample frames written (samples per channel)."""
        return self._data // self._block

    @property
    def full(self) -> bool:
        """True once the 4 GiB a WAV file can hold are written."""
        return self._full

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _open(self) -> BinaryIO:
        file = self._file
        if file is None:
            if self._closed:
                raise ValueError(f"write to a closed WavWriter ({self._path.name})")
            file = self._file = open(self._path, "r+b")  # noqa: SIM115
            file.seek(WAV_HEADER_SIZE + self._data)
        return file

    def write(self, pcm: bytes) -> None:
        """Append ``pcm`` (s16le, whole frames)."""
        if len(pcm) % self._block:
            raise ValueError(f"PCM of {len(pcm)} bytes is not a whole number of {self._channels}-channel frames")
        room = MAX_WAV_DATA - self._data
        if len(pcm) > room:
            room -= room % self._block
            pcm = pcm[:room]
            self._full = True
        if pcm:
            self._open().write(pcm)
            self._data += len(pcm)

    def write_silence(self, nbytes: int) -> None:
        """Append ``nbytes`` bytes of zeros (whole frames); a long silence is made by extending
        the file, which most file systems store without writing the zeros."""
        if nbytes % self._block or nbytes < 0:
            raise ValueError(f"{nbytes} bytes of silence is not a whole number of {self._channels}-channel frames")
        room = MAX_WAV_DATA - self._data
        room -= room % self._block
        if nbytes > room:
            nbytes = room
            self._full = True
        if nbytes < _SPARSE_FROM:
            if nbytes:
                self._open().write(bytes(nbytes))
                self._data += nbytes
            return
        file = self._open()
        file.flush()
        end = WAV_HEADER_SIZE + self._data + nbytes
        file.truncate(end)
        file.seek(end)
        self._data += nbytes

    def sync(self) -> None:
        """Write the header's sizes for what was written and flush the file to the system."""
        file = self._file
        if file is None:
            return
        if self._synced != self._data:
            file.seek(0)
            file.write(wav_header(self._sample_rate, self._channels, self._data))
            file.seek(WAV_HEADER_SIZE + self._data)
            self._synced = self._data
        file.flush()

    def suspend(self) -> None:
        """Sync and close the file; the next :meth:`write` opens it again."""
        file = self._file
        if file is not None:
            try:
                self.sync()
            finally:
                self._file = None
                file.close()

    def close(self) -> None:
        """Sync and close the file for good (idempotent)."""
        if self._closed:
            return
        try:
            self.suspend()
        finally:
            self._closed = True

    def __repr__(self) -> str:
        return (f"WavWriter({self._path.name!r}, {self._sample_rate} Hz x {self._channels}, "
                f"{self._data} bytes, closed={self._closed})")
