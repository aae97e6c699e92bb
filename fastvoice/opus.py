"""Opus frame sources and sinks: the seed's OpusFrameProvider / OpusFrameReceiver, OpusReader / OpusWriter.

The file format of :class:`OpusReader` and :class:`OpusWriter` is the seed's: each frame is
prefixed by its length as a 4-byte little-endian unsigned integer.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import BinaryIO, Protocol, runtime_checkable

from .rtp import Packet

__all__ = [
    "OpusFrameProvider",
    "OpusFrameReceiver",
    "UserFilterFunc",
    "OpusReader",
    "AsyncOpusReader",
    "OpusWriter",
    "MAX_OPUS_FRAME",
]

#: Largest frame the readers accept (an Opus packet is at most 1275 bytes per frame, 120 ms max).
MAX_OPUS_FRAME = 8 * 1275

_LENGTH = struct.Struct("<I")

#: Decides whether audio from a user is received (seed: ``UserFilterFunc``).
UserFilterFunc = Callable[[int], bool]


@runtime_checkable
class OpusFrameProvider(Protocol):
    """Supplies one 20 ms Opus frame per call to an AudioSender (seed: ``OpusFrameProvider``).

    ``provide_opus_frame`` is called synchronously on the event loop once per 20 ms tick and
    must not block. It returns a frame, ``None`` when it has nothing to send right now (the
    sender sends silence and goes quiet until frames come back), or raises ``EOFError`` at the
    end of the stream (the sender sends silence and stops asking). Any other exception is
    logged and counted by the sender; it never stops the clock.
    """

    def provide_opus_frame(self) -> bytes | None: ...

    def close(self) -> None: ...


@runtime_checkable
class OpusFrameReceiver(Protocol):
    """Receives the Opus frames of each user of a call (seed: ``OpusFrameReceiver``).

    Called synchronously on the event loop for every packet; a slow receiver delays every
    connection on the loop, so hand heavy work to a task or a queue.
    """

    def receive_opus_frame(self, user_id: int, packet: Packet) -> None: ...

    def cleanup_user(self, user_id: int) -> None: ...

    def close(self) -> None: ...


def _check_length(length: int) -> int:
    if length > MAX_OPUS_FRAME:
        raise ValueError(f"Opus frame length {length} exceeds the maximum of {MAX_OPUS_FRAME} bytes")
    return length


class OpusReader:
    """An :class:`OpusFrameProvider` reading length-prefixed frames from a binary stream.

    Reads are synchronous: use it for local files and in-memory streams; for sockets and
    pipes use :class:`AsyncOpusReader`. At the end of the stream ``provide_opus_frame``
    raises ``EOFError``; a stream cut inside a frame raises ``EOFError`` too, naming the cut.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def provide_opus_frame(self) -> bytes | None:
        """Return the next frame; raise ``EOFError`` at the end of the stream."""
        head = self._stream.read(4)
        if not head:
            raise EOFError("end of Opus stream")
        if len(head) < 4:
            raise EOFError(f"Opus stream cut inside a length prefix ({len(head)} of 4 bytes)")
        length = _check_length(_LENGTH.unpack(head)[0])
        frame = self._stream.read(length)
        if len(frame) < length:
            raise EOFError(f"Opus stream cut inside a frame ({len(frame)} of {length} bytes)")
        return frame

    def close(self) -> None:
        """Close the underlying stream."""
        self._stream.close()


class _ReadAhead:
    """A bounded buffer of Opus frames filled by one task and emptied by the send clock.

    The filling task awaits :meth:`_wait_for_space` before adding a frame and sets
    ``_ended`` (and ``_error`` for a failure to report) when it stops;
    :meth:`provide_opus_frame` never waits.
    """

    #: The message of the ``EOFError`` raised once the stream ended and the buffer is empty.
    _end_message = "end of Opus stream"

    def __init__(self, buffer_frames: int) -> None:
        if buffer_frames < 1:
            raise ValueError(f"buffer_frames must be >= 1, got {buffer_frames}")
        self._frames: deque[bytes] = deque()
        self._limit = buffer_frames
        self._space = asyncio.Event()
        self._space.set()
        self._ended = False
        self._error: BaseException | None = None

    async def _wait_for_space(self) -> None:
        if len(self._frames) >= self._limit:
            self._space.clear()
            await self._space.wait()  # set again by provide_opus_frame once a frame is taken

    def provide_opus_frame(self) -> bytes | None:
        """Return a buffered frame, ``None`` if none is ready, ``EOFError`` at the end."""
        frames = self._frames
        if frames:
            frame = frames.popleft()
            if len(frames) < self._limit:
                self._space.set()
            return frame
        if self._ended:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise EOFError(self._end_message)
        return None

    def _stop(self, task: asyncio.Task[None] | None) -> None:
        """Cancel the filling ``task`` and drop buffered frames."""
        if task is not None and not task.done():
            task.cancel()
        self._frames.clear()
        self._ended = True


class AsyncOpusReader(_ReadAhead):
    """An :class:`OpusFrameProvider` fed from an ``asyncio.StreamReader`` by a read-ahead task.

    ``start()`` begins reading ahead into a bounded buffer of ``buffer_frames`` frames;
    ``provide_opus_frame`` takes from it without waiting: ``None`` when the buffer is empty
    (the network is late), ``EOFError`` once the stream ended and the buffer is drained.
    """

    def __init__(self, reader: asyncio.StreamReader, *, buffer_frames: int = 50) -> None:
        super().__init__(buffer_frames)
        self._reader = reader
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the read-ahead task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read_ahead())

    async def _read_ahead(self) -> None:
        try:
            while True:
                await self._wait_for_space()
                try:
                    head = await self._reader.readexactly(4)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise EOFError("Opus stream cut inside a length prefix") from None
                    return
                length = _check_length(_LENGTH.unpack(head)[0])
                try:
                    self._frames.append(await self._reader.readexactly(length))
                except asyncio.IncompleteReadError:
                    raise EOFError(f"Opus stream cut inside a frame of {length} bytes") from None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported to the sender through provide_opus_frame
            self._error = exc
        finally:
            self._ended = True

    def close(self) -> None:
        """Stop the read-ahead task and drop buffered frames."""
        self._stop(self._task)


class OpusWriter:
    """An :class:`OpusFrameReceiver` writing length-prefixed frames to a binary stream.

    ``user_filter`` (a :data:`UserFilterFunc`) selects whose frames are written; all users'
    frames are written when it is ``None``. ``stream`` is anything with ``write(bytes)``: a
    file, or an ``asyncio.StreamWriter`` (whose ``write`` buffers without blocking; await its
    ``drain()`` from your own task to bound the buffer).
    """

    def __init__(self, stream: BinaryIO, user_filter: UserFilterFunc | None = None) -> None:
        self._stream = stream
        self._filter = user_filter

    def receive_opus_frame(self, user_id: int, packet: Packet) -> None:
        """Write ``packet.opus`` if ``user_id`` passes the filter."""
        if self._filter is not None and not self._filter(user_id):
            return
        opus = packet.opus
        self._stream.write(_LENGTH.pack(len(opus)) + opus)

    def cleanup_user(self, user_id: int) -> None:
        """Nothing to clean: the writer keeps no per-user state."""

    def close(self) -> None:
        """Flush the underlying stream if it can be flushed (the caller owns and closes it)."""
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()
