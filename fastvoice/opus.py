"""Opus frame sources and sinks: the seed's OpusFrameProvider / OpusFrameReceiver, OpusReader / OpusWriter.

The file format of :class:`OpusReader` and :class:`OpusWriter` is the seed's: each frame is
prefixed by its length as a 4-byte little-endian unsigned integer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import struct
import threading
import weakref
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
    "ThreadedOpusFrameReceiver",
    "MAX_OPUS_FRAME",
]

_log = logging.getLogger(__name__)

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
    connection on the loop, so hand heavy work to a task or a queue, or wrap the receiver in
    a :class:`ThreadedOpusFrameReceiver`.
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


class ReadAhead:
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


class AsyncOpusReader(ReadAhead):
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


# Work items of ThreadedOpusFrameReceiver's queue.
_FRAME, _CLEANUP, _STOP = 0, 1, 2

# Receivers whose worker still runs. At interpreter exit they are closed before the
# interpreter joins their (non-daemon) threads, so an exiting program neither hangs on a
# receiver nobody closed nor cuts off the frames still queued. ``threading._register_atexit``
# is what concurrent.futures uses for the same purpose; without it the workers are daemons.
_live_receivers: weakref.WeakSet[ThreadedOpusFrameReceiver] = weakref.WeakSet()
_register_atexit = getattr(threading, "_register_atexit", None)
_atexit_registered = False


def _close_live_receivers() -> None:
    for receiver in list(_live_receivers):
        receiver.close()


class ThreadedOpusFrameReceiver:
    """Runs another :class:`OpusFrameReceiver` in a thread of its own, off the event loop.

    For receivers that block: writing files, encoding, network calls. Each call made on
    the loop only queues the frame (a few hundred nanoseconds), so a receiver that takes
    10 ms per frame no longer delays the sending of every connection on the loop. The
    wrapped receiver's methods are called in order, from the worker thread only.

    At most ``max_pending`` frames wait in the queue; a frame arriving when it is full is
    dropped and counted in :attr:`dropped` (a receiver slower than the audio cannot keep
    everything, and the queue must not grow without bound). ``cleanup_user`` calls are
    never dropped. Exceptions of the wrapped receiver are logged and counted in
    :attr:`errors`.

    :meth:`close` queues the wrapped receiver's ``close()`` after the frames already
    queued and returns at once; :meth:`join` (or ``await`` :meth:`wait_closed`) waits for
    the worker to finish them. A connection closes its receiver when it closes. At
    interpreter exit a receiver still open is closed and its queued frames are handed over
    before the program ends, so a recording is not cut short.

    The worker holds the GIL while it runs Python code; a receiver that computes (rather
    than waits on I/O) still competes with the loop for it in 5 ms slices.
    """

    def __init__(self, receiver: OpusFrameReceiver, *, max_pending: int = 500, name: str | None = None) -> None:
        if not isinstance(receiver, OpusFrameReceiver):
            raise TypeError(
                f"receiver must be an OpusFrameReceiver (receive_opus_frame, cleanup_user, close), "
                f"not {type(receiver).__name__}"
            )
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
        self._receiver = receiver
        self._max_pending = max_pending
        self._queue: queue.SimpleQueue[tuple[int, int, Packet | None]] = queue.SimpleQueue()
        self._closed = False
        self._done = threading.Event()
        #: Frames handed to the wrapped receiver, frames dropped because the queue was full,
        #: and exceptions raised by the wrapped receiver.
        self.delivered = 0
        self.dropped = 0
        self.errors = 0
        global _atexit_registered
        if _register_atexit is not None and not _atexit_registered:
            _register_atexit(_close_live_receivers)
            _atexit_registered = True
        self._thread = threading.Thread(
            target=self._run, name=name or f"fastvoice-receiver-{id(self):x}", daemon=_register_atexit is None
        )
        _live_receivers.add(self)
        self._thread.start()

    @property
    def receiver(self) -> OpusFrameReceiver:
        """The wrapped receiver."""
        return self._receiver

    @property
    def pending(self) -> int:
        """Frames and calls queued and not yet handed to the wrapped receiver."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def receive_opus_frame(self, user_id: int, packet: Packet) -> None:
        """Queue the frame for the worker (dropped and counted when the queue is full or closed)."""
        if self._closed or self._queue.qsize() >= self._max_pending:
            self.dropped += 1
            return
        self._queue.put((_FRAME, user_id, packet))

    def cleanup_user(self, user_id: int) -> None:
        """Queue ``cleanup_user`` after the user's frames already queued."""
        if not self._closed:
            self._queue.put((_CLEANUP, user_id, None))

    def close(self) -> None:
        """Queue the wrapped receiver's ``close()`` behind the queued frames; returns at once."""
        if not self._closed:
            self._closed = True
            self._queue.put((_STOP, 0, None))

    def join(self, timeout: float | None = None) -> bool:
        """Block until the worker has closed the wrapped receiver; False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Like :meth:`join`, without blocking the event loop."""
        if self._done.is_set():
            return True
        return await asyncio.to_thread(self._done.wait, timeout)

    def _run(self) -> None:
        receiver = self._receiver
        get = self._queue.get
        try:
            while True:
                kind, user_id, packet = get()
                try:
                    if kind == _FRAME:
                        receiver.receive_opus_frame(user_id, packet)  # type: ignore[arg-type]
                        self.delivered += 1
                    elif kind == _CLEANUP:
                        receiver.cleanup_user(user_id)
                    else:
                        receiver.close()
                        return
                except Exception:
                    self.errors += 1
                    if self.errors <= 3 or self.errors % 1000 == 0:
                        _log.exception("threaded Opus frame receiver failed (%d errors so far)", self.errors)
                    if kind == _STOP:
                        return
        finally:
            self._done.set()

    def __repr__(self) -> str:
        return (
            f"ThreadedOpusFrameReceiver({self._receiver!r}, pending={self.pending}, "
            f"dropped={self.dropped}, closed={self._closed})"
        )
