"""One 20 ms timeline for every user of a call: :class:`VoiceTick` and :class:`PlayoutClock`.

The clock is one per event loop (:meth:`PlayoutClock.for_loop`), like the send clock: one
timer wakes the loop every 20 ms for every :class:`fastvoice.PlayoutReceiver` on it, with
no task or timer per call or per user.  On each tick the clock asks every receiver what its
users play (:meth:`PlayoutBuffer.take`: cheap, on the loop), gathers the frames to decode
of all receivers that share a :class:`~fastvoice.decode_pool.DecodePool` into one batch for
the pool's threads, and when the batch is decoded hands each receiver its tick to deliver.
Receivers that decode inline (``decode_threads=0``) decode on the loop, at once.

Ticks follow an absolute schedule (tick ``n`` is due ``n`` frames after the clock started).
A tick late by less than ``MAX_CATCHUP`` frames is caught up at once (the receivers'
ticks stay consecutive: a stalled loop delays them, it does not lose them); beyond that
the missed ticks are skipped, counted in :attr:`PlayoutClock.skipped`, and receivers drop
the packets those ticks would have played.  A pool that cannot keep up has at most
``max_backlog`` ticks waiting; beyond that the oldest waiting tick is not decoded and not
delivered (counted in ``dropped`` here and per receiver).

Tests drive a clock made with ``autostart=False``: its :meth:`time` is simulated, and
:meth:`advance` moves it, running every tick that falls due (decoding in the pool, if any,
is waited for), so minutes of calls run in seconds and the same way every time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from typing import Any

from ._timer import DeadlineTimer

__all__ = ["PlayoutClock", "VoiceTick", "TickStream", "BoundedStream", "FRAME", "MAX_CATCHUP"]

_log = logging.getLogger("fastvoice.playout")

#: Seconds per tick.
FRAME = 0.02
#: A clock this many ticks behind skips the missed ones instead of catching up.
MAX_CATCHUP = 25


class VoiceTick:
    """One 20 ms tick of a call's timeline.

    - ``index``: the tick's position on the receiver's timeline (0, 1, 2, ... one per 20 ms
      since the receiver started; a gap means ticks were lost: see ``PlayoutReceiver``);
    - ``time``: when the tick was due, in the clock's seconds (``time.monotonic()`` in
      production, simulated with a test clock): the same for every receiver of a loop;
    - ``speaking``: ``{user_id: pcm}`` for each user with audio on this tick (a packet
      played, or a lost one recovered or concealed): 20 ms of s16le PCM, channels
      interleaved, at the receiver's sample rate and channels;
    - ``packets``: ``{user_id: opus or None}`` for the same users: the Opus packet played on
      this tick, ``None`` when the tick was recovered from FEC or concealed. A recorder
      writing Opus without re-encoding takes these (and, for a user in ``silent``, writes
      silence);
    - ``users``: every user the receiver knows on this tick (a frozenset);
    - ``silent``: the users of ``users`` not in ``speaking`` (a set, computed on first use).

    The same tick object goes to every consumer: do not modify it.
    """

    __slots__ = ("index", "time", "speaking", "packets", "users", "_silent")

    def __init__(self, index: int, time: float, speaking: dict[int, bytes], packets: dict[int, bytes | None],
                 users: frozenset[int]) -> None:
        self.index = index
        self.time = time
        self.speaking = speaking
        self.packets = packets
        self.users = users
        self._silent: set[int] | None = None

    @property
    def silent(self) -> set[int]:
        """Known users with nothing to play on this tick."""
        silent = self._silent
        if silent is None:
            silent = self._silent = set(self.users.difference(self.speaking))
        return silent

    def __repr__(self) -> str:
        return (f"VoiceTick(index={self.index}, time={self.time:.3f}, speaking={sorted(self.speaking)}, "
                f"silent={sorted(self.silent)})")


class _PoolQueue:
    __slots__ = ("busy", "waiting")

    def __init__(self) -> None:
        self.busy = False
        self.waiting: deque[list[Any]] = deque()


class PlayoutClock:
    """The 20 ms clock of an event loop's playout receivers; use :meth:`for_loop` to get it.

    ``autostart=False`` makes a test clock: nothing runs by itself, :meth:`time` is
    simulated (it starts at 0.0) and :meth:`advance` or :meth:`run_tick` run the ticks.
    ``precise`` wakes the loop with a timerfd where available (as the send clock does).
    ``max_backlog``: ticks that may wait for a busy decode pool (see the module docstring).

    Counters: ``ticks`` run, ``skipped`` (missed by a loop blocked for longer than
    ``MAX_CATCHUP`` ticks), ``late_ticks`` (run more than a tick late), ``dropped`` (ticks a
    busy pool never decoded).
    """

    _clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PlayoutClock] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *, frame: float = FRAME,
                 autostart: bool = True, precise: bool = True, max_backlog: int = MAX_CATCHUP) -> None:
        if isinstance(frame, bool) or not isinstance(frame, (int, float)) or not frame > 0:
            raise ValueError(f"frame must be a positive number of seconds, got {frame!r}"[:100])
        if isinstance(max_backlog, bool) or not isinstance(max_backlog, int) or max_backlog < 1:
            raise ValueError(f"max_backlog must be an int >= 1, got {max_backlog!r}"[:100])
        self._loop = loop
        self._frame = float(frame)
        self._autostart = autostart
        self._precise = precise
        self._max_backlog = max_backlog
        self._now = 0.0
        self._receivers: dict[Any, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._origin_time: float | None = None
        self._origin_position = 0
        self._pools: dict[Any, _PoolQueue] = {}
        #: Ticks run so far: the index, on this clock, of the next tick.
        self.position = 0
        self.ticks = 0
        self.skipped = 0
        self.late_ticks = 0
        self.dropped = 0

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> PlayoutClock:
        """The clock of ``loop`` (the running loop by default), created on first use."""
        loop = loop if loop is not None else asyncio.get_running_loop()
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    @property
    def frame(self) -> float:
        """Seconds per tick."""
        return self._frame

    @property
    def manual(self) -> bool:
        """True for a test clock (``autostart=False``)."""
        return not self._autostart

    @property
    def running(self) -> bool:
        """True while the clock's task runs (only while receivers are attached)."""
        return self._task is not None and not self._task.done()

    @property
    def receivers(self) -> int:
        """Receivers the clock drives."""
        return len(self._receivers)

    def time(self) -> float:
        """Now, in the clock's seconds (``time.monotonic()``, or simulated for a test clock)."""
        return self._now if not self._autostart else time.monotonic()

    def due(self, position: int) -> float:
        """When tick ``position`` of this clock is (or was) due."""
        if self._origin_time is None:
            self._origin_time = self.time() + self._frame
            self._origin_position = self.position
        return self._origin_time + (position - self._origin_position) * self._frame

    # -- receivers ---------------------------------------------------------------------------

    def _add(self, receiver: Any) -> int:
        """Drive ``receiver`` from the next tick on; returns that tick's position."""
        if self._autostart and not self.running and self._loop is None:
            self._loop = asyncio.get_running_loop()
        if not self._receivers and not self.running:
            self._origin_time = None  # a new schedule starts one frame from now
        self._receivers[receiver] = None
        self.due(self.position)
        if self._autostart and not self.running:
            assert self._loop is not None
            self._task = self._loop.create_task(self._run(), name="fastvoice-playout-clock")
        return self.position

    def _remove(self, receiver: Any) -> None:
        self._receivers.pop(receiver, None)

    # -- running -----------------------------------------------------------------------------

    def advance(self, seconds: float) -> int:
        """Test clocks: move simulated time on by ``seconds``, running each tick that falls
        due on the way (with the time set to its due time).  Returns the ticks run."""
        if self._autostart:
            raise RuntimeError("advance() drives a test clock: create it with autostart=False")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}"[:100])
        target = self._now + seconds
        run = 0
        while self._receivers:
            due = self.due(self.position)
            if due > target + 1e-9:
                break
            self._now = max(self._now, due)
            self.run_tick()
            run += 1
        self._now = target
        return run

    async def _run(self) -> None:
        frame = self._frame
        timer = DeadlineTimer(self._loop, precise=self._precise)  # type: ignore[arg-type]
        try:
            while self._receivers:
                due = self.due(self.position)
                now = time.monotonic()
                if now < due:
                    await timer.sleep_until(due)
                    if not self._receivers:
                        break
                    now = time.monotonic()
                behind = now - due
                if behind > MAX_CATCHUP * frame:
                    missed = int(behind / frame)
                    self.position += missed
                    self.skipped += missed
                elif behind > frame:
                    self.late_ticks += 1
                self.run_tick()
        finally:
            timer.close()
            self._task = None

    def run_tick(self) -> None:
        """Run the next tick now: every receiver takes what its users play, then decodes (in
        its pool or inline) and delivers its tick."""
        position = self.position
        due = self.due(position)
        self.position += 1
        self.ticks += 1
        batches: dict[Any, list[Any]] = {}
        for receiver in list(self._receivers):
            try:
                plan = receiver._plan_tick(position, due)
                if plan is None:
                    continue
                pool = receiver._pool
                if pool is None:
                    receiver._decode_and_deliver(plan)
                else:  # even without frames to decode: its ticks stay in order behind those in the pool
                    batches.setdefault(pool, []).append(plan)
            except Exception:
                _log.exception("a playout receiver failed on tick %d", position)
        for pool, plans in batches.items():
            if not self._autostart:
                self._decode_now(pool, plans)
            else:
                self._enqueue(pool, plans)

    def _decode_now(self, pool: Any, plans: list[Any]) -> None:
        jobs = [job for plan in plans for job in plan.jobs]
        results, errors = pool.decode(jobs) if jobs else ([], [])
        self._hand_out(plans, results, errors)

    @staticmethod
    def _hand_out(plans: list[Any], results: list[bytes | None], errors: list[int]) -> None:
        start = 0
        errors = sorted(errors)
        for plan in plans:
            stop = start + len(plan.jobs)
            own = [i - start for i in errors if start <= i < stop]
            try:
                plan.receiver._deliver(plan, results[start:stop], own)
            except Exception:
                _log.exception("a playout receiver failed to deliver tick %d", plan.index)
            start = stop

    def _enqueue(self, pool: Any, plans: list[Any]) -> None:
        state = self._pools.get(pool)
        if state is None:
            state = self._pools[pool] = _PoolQueue()
        if state.busy:
            state.waiting.append(plans)
            if len(state.waiting) > self._max_backlog:
                for plan in state.waiting.popleft():
                    self.dropped += 1
                    plan.receiver._drop(plan)
            return
        self._submit(pool, state, plans)

    def _submit(self, pool: Any, state: _PoolQueue, plans: list[Any]) -> None:
        while True:
            jobs = [job for plan in plans for job in plan.jobs]
            if jobs:
                break
            self._hand_out(plans, [], [])  # nothing to decode: deliver now, in turn
            if not state.waiting:
                state.busy = False
                return
            plans = state.waiting.popleft()
        state.busy = True

        def done(results: list[bytes | None], errors: list[int]) -> None:
            state.busy = False
            self._hand_out(plans, results, errors)
            if state.waiting and not state.busy:
                self._submit(pool, state, state.waiting.popleft())

        pool.submit(jobs, done, self._loop)

    async def close(self) -> None:
        """Stop the clock: its task ends and the receivers it drove are detached (they get
        no more ticks)."""
        self._receivers.clear()
        task = self._task
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def __repr__(self) -> str:
        return (f"PlayoutClock(receivers={len(self._receivers)}, ticks={self.ticks}, skipped={self.skipped}, "
                f"manual={not self._autostart})")


class BoundedStream:
    """An async iterator over items delivered on the event loop, holding at most
    ``max_pending`` of them: when the consumer falls behind, the oldest item waiting is
    dropped and counted in :attr:`dropped` (memory stays bounded; the consumer sees the gap).

    It ends (``StopAsyncIteration``) once its source has ended and the items waiting are
    read.  :meth:`close` (or leaving an ``async with`` block) stops it at once.
    """

    def __init__(self, max_pending: int, detach: Any = None) -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an int >= 1, got {max_pending!r}"[:100])
        self._items: deque[Any] = deque()
        self._max_pending = max_pending
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._detach = detach
        #: Items dropped because ``max_pending`` were waiting.
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Items waiting to be read."""
        return len(self._items)

    @property
    def ended(self) -> bool:
        """True once the source ended or the stream was closed."""
        return self._ended

    def _put(self, item: Any) -> None:
        items = self._items
        if len(items) >= self._max_pending:
            items.popleft()
            self.dropped += 1
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self) -> None:
        self._ended = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _source_ended(self) -> None:
        self._end()

    def _on_tick(self, tick: VoiceTick) -> None:
        """Read one tick (the receiver calls this for every tick, in order)."""
        raise NotImplementedError

    def get_nowait(self) -> Any:
        """The next item waiting, or None (for code that polls instead of awaiting)."""
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> BoundedStream:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving: the stream detaches from its source, drops what waits and ends."""
        detach, self._detach = self._detach, None
        if detach is not None:
            detach(self)
        self._items.clear()
        self._end()

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing``."""
        self.close()

    async def __aenter__(self) -> BoundedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class TickStream(BoundedStream):
    """``PlayoutReceiver.ticks()``: an async iterator of :class:`VoiceTick`, one per tick.

    At most ``max_pending`` ticks wait (50, one second, by default); a consumer that falls
    further behind loses the oldest (counted in :attr:`dropped`, seen as a gap in
    ``tick.index``).  Ends when the receiver closes.
    """

    def _on_tick(self, tick: VoiceTick) -> None:
        self._put(tick)
