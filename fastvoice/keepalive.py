"""UDP keepalives: the datagram, and the one coarse timer per event loop that sends them.

A voice connection that sends nothing (a listening bot, a paused or idle one) loses its
NAT or firewall binding after tens of seconds and silently stops receiving. While no
audio goes out, each UDP connection therefore sends an 8-byte keepalive every few seconds
(PROTOCOL.md section 4.3: a u32 little-endian counter and four zero bytes; it is not RTP,
so the server's media path ignores it).

Thousands of idle connections must cost next to nothing, so there is no task or timer per
connection: one :class:`KeepaliveScheduler` per event loop keeps every connection's next
visit in a heap and wakes through a single loop timer. Visit times are rounded up to a coarse
grid, so every visit falling in one grid step shares one wake-up: a wake-up costs far more
than a visit (tens of microseconds on a VM against a few), and keepalive timing needs no
precision.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import struct
import weakref
from typing import Protocol

from ._rtp_common import KEEPALIVE_SIZE

__all__ = [
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_SIZE",
    "KeepaliveMember",
    "KeepaliveScheduler",
    "build_keepalive",
    "is_keepalive",
]

_log = logging.getLogger("fastvoice.keepalive")

#: Seconds between keepalives on a connection that sends no audio (@discordjs/voice's value).
KEEPALIVE_INTERVAL = 5.0

_COUNTER = struct.Struct("<I")
_TAIL = bytes(4)


def build_keepalive(counter: int) -> bytes:
    """The keepalive datagram carrying ``counter`` (an int in 0..2**32-1)."""
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter <= 0xFFFFFFFF:
        raise ValueError(f"counter must be an int in 0..4294967295, got {counter!r}"[:120])
    return _COUNTER.pack(counter) + _TAIL


def is_keepalive(datagram: bytes) -> bool:
    """True when ``datagram`` has the keepalive's shape (8 bytes, the last four zero)."""
    return len(datagram) == KEEPALIVE_SIZE and datagram[4:] == _TAIL


class KeepaliveMember(Protocol):
    """What the scheduler visits (a :class:`fastvoice.UDPConn`)."""

    def _keepalive_visit(self, now: float) -> float | None:
        """Send a keepalive if one is due; return the next visit's time, or ``None`` to leave."""
        ...


class KeepaliveScheduler:
    """The keepalive timer of one event loop; get it with :meth:`for_loop`.

    Members are visited at the times they ask for (in the loop's ``time()`` clock), rounded
    up to a grid of ``slack`` seconds (or an eighth of the delay asked for, when that is
    shorter): each visit decides whether to send and when the next one is. Visits on one grid
    point share one wake-up, so members with delays of a second or more wake the loop at most
    ``1 / slack`` times a second however many there are, and a visit runs at most one grid
    step late (plus the loop's own latency). The cost per member is one heap push and pop per
    visit. Tests can make one with ``autostart=False`` and drive it with :meth:`run_due`.
    """

    _schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KeepaliveScheduler] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, *, slack: float = 0.25, autostart: bool = True) -> None:
        if isinstance(slack, bool) or not isinstance(slack, (int, float)) or not 0 <= slack <= 60:
            raise ValueError(f"slack must be a number of seconds in 0..60, got {slack!r}"[:120])
        self._loop = loop
        self._slack = float(slack)
        self._autostart = autostart
        #: member -> its next visit; heap entries whose time differs from this are stale.
        self._due: dict[KeepaliveMember, float] = {}
        self._heap: list[tuple[float, int, KeepaliveMember]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Timer wake-ups, and member visits, since the scheduler was made.
        self.wakeups = 0
        self.visits = 0

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> KeepaliveScheduler:
        """The scheduler of ``loop`` (the running loop by default), created on first use."""
        loop = loop if loop is not None else asyncio.get_running_loop()
        scheduler = cls._schedulers.get(loop)
        if scheduler is None:
            scheduler = cls._schedulers[loop] = cls(loop)
        return scheduler

    @property
    def members(self) -> int:
        """Members with a visit scheduled."""
        return len(self._due)

    def time(self) -> float:
        """The clock visits are scheduled in (the loop's)."""
        return self._loop.time()

    def schedule(self, member: KeepaliveMember, delay: float) -> None:
        """Visit ``member`` in ``delay`` seconds, or up to one grid step later (replacing the
        visit it had)."""
        now = self._loop.time()
        self._push(member, self._on_grid(now, now + delay))
        if self._autostart:
            self._arm()

    def _on_grid(self, now: float, when: float) -> float:
        step = min(self._slack, (when - now) / 8)
        if step <= 0:
            return when
        return math.ceil(when / step) * step

    def cancel(self, member: KeepaliveMember) -> None:
        """Visit ``member`` no more (idempotent)."""
        self._due.pop(member, None)

    def _push(self, member: KeepaliveMember, when: float) -> None:
        due = self._due
        if due.get(member) == when:
            return  # already there
        due[member] = when
        heap = self._heap
        if len(heap) > 2 * len(due) + 64:
            # Cancelled and rescheduled visits leave stale entries: keep the heap bounded.
            live = {m: (t, order) for t, order, m in heap if due.get(m) == t}
            heap[:] = [(t, order, m) for m, (t, order) in live.items()]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, next(self._order), member))

    def run_due(self, now: float) -> int:
        """Visit every member due at or before ``now``; return how many were visited."""
        heap, due = self._heap, self._due
        visited = 0
        while heap and heap[0][0] <= now:
            when, _, member = heapq.heappop(heap)
            if due.get(member) != when:
                continue  # cancelled or rescheduled since
            del due[member]
            visited += 1
            try:
                following = member._keepalive_visit(now)
            except Exception:
                _log.exception("keepalive visit failed; the member is dropped")
                continue
            if following is not None:
                self._push(member, self._on_grid(now, following))
        self.visits += visited
        return visited

    def _fire(self) -> None:
        self._timer = None
        self.wakeups += 1
        # A loop may run a timer a little before its time (uvloop counts whole milliseconds):
        # what it was armed for is due.
        self.run_due(max(self._loop.time(), self._timer_at))
        self._arm()

    def _arm(self) -> None:
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        when = heap[0][0]
        if self._timer is not None:
            if self._timer_at <= when:
                return  # the armed wake-up comes first and re-arms
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._timer_at = when

    def close(self) -> None:
        """Forget every member and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
        self._heap.clear()
