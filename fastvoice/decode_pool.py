"""Opus decoding spread over threads: :class:`DecodePool`.

libopus decodes without the GIL (``OpusDecoder`` releases it around ``opus_decode``), so
threads decode different streams on different cores at once.  A pool decodes *batches*: all
the frames of one 20 ms tick of every receiver that uses it.  A batch is cut into one
contiguous share per thread, each thread decodes its share, and the last one to finish
reports the batch done (to the event loop with ``call_soon_threadsafe``, or to a waiting
thread).  One job per decoder per batch, and one batch at a time per caller, so a decoder is
never used by two threads at once and every stream is decoded in order.

The pool is shared: :meth:`DecodePool.shared` gives the process's pool of ``N`` threads,
created on first use (daemon threads: they hold nothing that needs closing at exit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .opus_decoder import OpusDecodeError, decode_batch

__all__ = ["DecodePool", "DecodeJob", "decode_jobs", "default_threads"]

_log = logging.getLogger("fastvoice.playout")

#: A batch is cut into about this many chunks per thread, taken in turn.
CHUNKS_PER_THREAD = 8

#: One decode: ``(decoder, packet or None, fec)``; the result is ``decoder.decode(packet, fec)``.
DecodeJob = tuple[Any, "bytes | None", bool]


def default_threads() -> int:
    """Threads of the pool ``PlayoutReceiver`` uses by default: one per CPU (at most 8)."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_jobs(jobs: Sequence[DecodeJob], results: list[bytes | None], errors: list[int],
                start: int = 0, stop: int | None = None) -> None:
    """Decode ``jobs[start:stop]`` into ``results`` (same indices).  A packet libopus refuses
    is concealed instead (``decoder.decode(None)``) and its index appended to ``errors``.

    The frames go to :func:`~fastvoice.opus_decoder.decode_batch` (with the compiled decoder,
    one release of the GIL for all of them); decoders of another kind, or one appearing
    twice, are called one job at a time.
    """
    stop = len(jobs) if stop is None else stop
    try:
        decoded, failed = decode_batch(jobs[start:stop])
    except (TypeError, ValueError):
        _decode_one_by_one(jobs, results, errors, start, stop)
        return
    results[start:stop] = decoded
    for i in failed:
        errors.append(start + i)
        _conceal(jobs[start + i][0], results, start + i)


def _decode_one_by_one(jobs: Sequence[DecodeJob], results: list[bytes | None], errors: list[int],
                       start: int, stop: int) -> None:
    for i in range(start, stop):
        decoder, packet, fec = jobs[i]
        try:
            results[i] = decoder.decode(packet, fec)
        except OpusDecodeError:
            errors.append(i)
            _conceal(decoder, results, i)
        except Exception:
            errors.append(i)
            results[i] = None
            _log.exception("decoding a frame failed")


def _conceal(decoder: Any, results: list[bytes | None], i: int) -> None:
    try:
        results[i] = decoder.decode(None)
    except Exception:  # pragma: no cover - concealment does not fail on a live decoder
        results[i] = None


class _Batch:
    """One batch: its threads take chunks of it in turn until none is left, so they finish
    together whatever each frame costs."""

    __slots__ = ("jobs", "results", "errors", "next", "chunk", "remaining", "lock", "done")

    def __init__(self, jobs: Sequence[DecodeJob], shares: int, done: Callable[[], None]) -> None:
        self.jobs = jobs
        self.results: list[bytes | None] = [None] * len(jobs)
        self.errors: list[int] = []
        self.next = 0
        self.chunk = max(1, -(-len(jobs) // (shares * CHUNKS_PER_THREAD)))
        self.remaining = shares
        self.lock = threading.Lock()
        self.done = done


class DecodePool:
    """``threads`` threads that decode batches of Opus frames off the event loop.

    :meth:`submit` hands a batch over and returns at once; ``done(results, errors)`` is
    called on the event loop when every frame is decoded.  :meth:`decode` decodes a batch
    and waits for it (for a thread that may block: tests, benchmarks).  The threads take a
    batch's frames a chunk at a time until none is left.  Batches submitted together are
    decoded together; a caller that needs its streams decoded in order submits its next
    batch after the previous one is done.
    """

    _shared: dict[int, DecodePool] = {}
    _shared_lock = threading.Lock()

    def __init__(self, threads: int, *, name: str = "fastvoice-decode") -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}"[:100])
        self._threads = threads
        self._queues: list[Any] = []
        self._workers: list[threading.Thread] = []
        self._closed = False
        #: Batches and frames decoded so far.
        self.batches = 0
        self.frames = 0
        for n in range(threads):
            q: queue.SimpleQueue[tuple[_Batch, int, int] | None] = queue.SimpleQueue()
            worker = threading.Thread(target=self._run, args=(q,), name=f"{name}-{n}", daemon=True)
            self._queues.append(q)
            self._workers.append(worker)
            worker.start()

    @classmethod
    def shared(cls, threads: int | None = None) -> DecodePool:
        """The process's pool of ``threads`` threads (:func:`default_threads` when None),
        created on first use and never closed."""
        count = default_threads() if threads is None else threads
        with cls._shared_lock:
            pool = cls._shared.get(count)
            if pool is None or pool._closed:
                pool = cls._shared[count] = cls(count, name=f"fastvoice-decode{count}")
            return pool

    @property
    def threads(self) -> int:
        """Number of decoding threads."""
        return self._threads

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _split(self, batch: _Batch) -> None:
        for n in range(batch.remaining):
            self._queues[n].put(batch)

    def submit(self, jobs: Sequence[DecodeJob], done: Callable[[list[bytes | None], list[int]], None],
               loop: asyncio.AbstractEventLoop) -> None:
        """Decode ``jobs`` in the pool; ``done(results, errors)`` then runs on ``loop``
        (``results[i]`` is the PCM of ``jobs[i]``; ``errors`` lists the jobs concealed because
        libopus refused their packet)."""
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        shares = max(1, min(self._threads, len(jobs)))

        def finished() -> None:
            loop.call_soon_threadsafe(done, batch.results, batch.errors)

        batch = _Batch(jobs, shares, finished)
        self.batches += 1
        self.frames += len(jobs)
        self._split(batch)

    def decode(self, jobs: Sequence[DecodeJob]) -> tuple[list[bytes | None], list[int]]:
        """Decode ``jobs`` in the pool and wait: ``(results, errors)`` as for :meth:`submit`."""
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        event = threading.Event()
        batch = _Batch(jobs, max(1, min(self._threads, len(jobs))), event.set)
        self.batches += 1
        self.frames += len(jobs)
        self._split(batch)
        event.wait()
        return batch.results, batch.errors

    @staticmethod
    def _run(q: Any) -> None:
        while True:
            batch = q.get()
            if batch is None:
                return
            jobs, lock = batch.jobs, batch.lock
            count, chunk = len(jobs), batch.chunk
            errors: list[int] = []
            try:
                while True:
                    with lock:
                        start = batch.next
                        batch.next = start + chunk
                    if start >= count:
                        break
                    decode_jobs(jobs, batch.results, errors, start, min(count, start + chunk))
            finally:
                with lock:
                    batch.errors.extend(errors)
                    batch.remaining -= 1
                    last = batch.remaining == 0
                if last:
                    try:
                        batch.done()
                    except RuntimeError:  # the loop is closed: nobody waits for the batch any more
                        pass

    def close(self) -> None:
        """Stop the threads once the batches already submitted are decoded (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for q in self._queues:
            q.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads of a closed pool to end."""
        for worker in self._workers:
            worker.join(timeout)

    def __repr__(self) -> str:
        return f"DecodePool(threads={self._threads}, closed={self._closed})"
