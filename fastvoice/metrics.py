"""Operator metrics: every counter of a process's voice connections in one snapshot.

The counters live where the work is done and cost nothing extra to keep: the sender's
:class:`~fastvoice.audio.FrameStats`, the UDP connection's datagram counters, the DAVE
layer's :class:`~fastvoice.dave.DaveStats`, the connection's
:class:`~fastvoice.session_stats.SessionStats` and the send clock's tick counters. A
:class:`Metrics` reads them when asked (:meth:`Metrics.snapshot`), never per packet.
The one measurement kept only for metrics is the send clock's tick-lateness histogram:
:func:`enable` (which :class:`Metrics` calls) turns it on for a loop's clock.

A connection's UDP socket, DAVE state and receiver are replaced over its life (a reconnect,
a move to another channel); a :class:`Metrics` adds what the replaced ones counted, so its
counters only grow, and it keeps the counts of connections that went away in the process
totals. :mod:`fastvoice.prometheus` exports the snapshots to Prometheus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Union

from .audio import SendClock
from .conn import Conn
from .histogram import Histogram
from .manager import Manager
from .session_stats import CloseCodeKey

__all__ = [
    "ClockMetrics",
    "ConnMetrics",
    "Counters",
    "Metrics",
    "MetricsSnapshot",
    "MetricsSource",
    "disable",
    "enable",
    "snapshot",
]

#: What metrics are read from: a Manager, a Conn, or an iterable of either.
MetricsSource = Union[Manager, Conn, Iterable[Union[Manager, Conn]]]


@dataclass
class Counters:
    """One connection's counters, or their sum over the process (all monotonic).

    Sending (:class:`~fastvoice.audio.FrameStats`): ``frames_sent`` datagrams sent,
    ``frames_silence`` of which silence frames, ``frames_nulled`` live ticks with nothing to
    send, ``frames_deficit`` ticks lost to event-loop stalls, ``frame_errors`` provider
    exceptions. Receiving (UDP): ``datagrams_received`` every datagram the socket handed in,
    ``datagrams_ignored`` not audio / oversized / from elsewhere, ``datagrams_duplicate``
    repeats dropped, ``decrypt_failures`` transport decryption failures,
    ``keepalives_received`` / ``keepalives_sent``; the audio receiver's ``packets_delivered``
    and ``packets_dropped``. DAVE (:class:`~fastvoice.dave.DaveStats`): ``dave_transitions``,
    ``dave_decrypt_failures``, ``dave_recoveries``, ``dave_recoveries_abandoned``,
    ``dave_invalid_commits``. Gateway (:class:`~fastvoice.session_stats.SessionStats`):
    ``gateway_connections``, ``gateway_sessions``, ``gateway_reconnects``, ``gateway_resumes``,
    ``gateway_server_changes``, and by close code (keys as
    :func:`~fastvoice.session_stats.close_code_key` makes them: a known code, ``None`` for no
    close frame, ``"other"``) ``gateway_reconnects_by_code``, ``gateway_resumes_by_code`` and
    ``gateway_closes`` (the gateway stopped for good).
    """

    frames_sent: int = 0
    frames_silence: int = 0
    frames_nulled: int = 0
    frames_deficit: int = 0
    frame_errors: int = 0
    datagrams_received: int = 0
    datagrams_ignored: int = 0
    datagrams_duplicate: int = 0
    decrypt_failures: int = 0
    keepalives_received: int = 0
    keepalives_sent: int = 0
    packets_delivered: int = 0
    packets_dropped: int = 0
    dave_transitions: int = 0
    dave_decrypt_failures: int = 0
    dave_recoveries: int = 0
    dave_recoveries_abandoned: int = 0
    dave_invalid_commits: int = 0
    gateway_connections: int = 0
    gateway_sessions: int = 0
    gateway_reconnects: int = 0
    gateway_resumes: int = 0
    gateway_server_changes: int = 0
    gateway_reconnects_by_code: dict[CloseCodeKey, int] = field(default_factory=dict)
    gateway_resumes_by_code: dict[CloseCodeKey, int] = field(default_factory=dict)
    gateway_closes: dict[CloseCodeKey, int] = field(default_factory=dict)

    def add(self, other: Counters) -> None:
        """Add ``other``'s counts to these."""
        for f in _INT_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for f in _BY_CODE_FIELDS:
            _merge(getattr(self, f), getattr(other, f))

    def copy(self) -> Counters:
        """An independent copy."""
        twin = Counters()
        twin.add(self)
        return twin


#: The by-close-code dicts of :class:`Counters`.
_BY_CODE_FIELDS = ("gateway_reconnects_by_code", "gateway_resumes_by_code", "gateway_closes")
_INT_FIELDS = tuple(f.name for f in fields(Counters) if f.name not in _BY_CODE_FIELDS)


def _merge(into: dict[CloseCodeKey, int], counts: dict[CloseCodeKey, int]) -> None:
    for code, n in counts.items():
        into[code] = into.get(code, 0) + n


@dataclass(frozen=True)
class ConnMetrics:
    """One connection in a snapshot: its guild, the bot user it is for (``user_id``) and its
    channel, ``ready`` (True while its UDP connection holds a key: audio can flow),
    ``dave_protocol_version`` (0: no E2EE) and its :class:`Counters`."""

    guild_id: int
    user_id: int
    channel_id: int | None
    ready: bool
    dave_protocol_version: int
    counters: Counters


@dataclass(frozen=True)
class ClockMetrics:
    """The event loop's send clock: ``ticks`` run, ``late_ticks`` (woke more than a frame
    late), ``resyncs`` (stalls skipped), ``live_senders`` now, ``precise`` (timerfd wake-ups),
    and ``lateness``, the histogram of each tick's wake-up lateness in seconds (``None``
    unless metrics are enabled for the loop)."""

    ticks: int
    late_ticks: int
    resyncs: int
    live_senders: int
    precise: bool
    lateness: Histogram | None


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every counter at one moment (``taken_at``: ``time.time()``).

    ``calls``: connections in the source; ``calls_ready``: of which ready (audio can flow);
    ``totals``: the sum of every connection's :class:`Counters`, those that went away
    included (with :class:`Metrics`); ``clock``: the send clock of the loop (``None`` when it
    has none yet); ``conns``: one :class:`ConnMetrics` per connection.
    """

    taken_at: float
    calls: int
    calls_ready: int
    totals: Counters
    clock: ClockMetrics | None
    conns: tuple[ConnMetrics, ...]


def enable(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Keep the tick-lateness histogram on the send clock of ``loop`` (the running loop by default)."""
    clock = SendClock.for_loop(loop)
    if clock.lateness is None:
        clock.lateness = Histogram()


def disable(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Stop (and drop) the tick-lateness histogram of ``loop``'s send clock."""
    SendClock.for_loop(loop).lateness = None


class _Part:
    """One replaceable part of a connection (its UDP, DAVE, receiver or sender) and what the
    parts it replaced counted."""

    __slots__ = ("obj", "base")

    def __init__(self) -> None:
        self.obj: Any = None
        self.base: Counters | None = None  # made at the first replacement

    def read(self, obj: Any, reader: Any, out: Counters) -> None:
        if obj is not self.obj:
            if self.obj is not None:
                if self.base is None:
                    self.base = Counters()
                reader(self.obj, self.base)  # the replaced part's final counts
            self.obj = obj
        if self.base is not None:
            out.add(self.base)
        if obj is not None:
            reader(obj, out)


def _read_sender(sender: Any, out: Counters) -> None:
    stats = sender.stats
    out.frames_sent += stats.sent
    out.frames_silence += stats.silence
    out.frames_nulled += stats.nulled
    out.frames_deficit += stats.deficit
    out.frame_errors += stats.errors


def _read_udp(udp: Any, out: Counters) -> None:
    out.datagrams_received += udp.datagrams_received
    out.datagrams_ignored += udp.ignored
    out.datagrams_duplicate += udp.duplicates
    out.decrypt_failures += udp.decrypt_failures
    out.keepalives_received += udp.keepalives_received
    out.keepalives_sent += udp.keepalives_sent


def _read_receiver(receiver: Any, out: Counters) -> None:
    out.packets_delivered += receiver.delivered
    out.packets_dropped += receiver.dropped


def _read_dave(dave: Any, out: Counters) -> None:
    stats = dave.stats
    out.dave_transitions += stats.transitions_executed
    out.dave_decrypt_failures += stats.decrypt_failures
    out.dave_recoveries += stats.recoveries
    out.dave_recoveries_abandoned += stats.recoveries_abandoned
    out.dave_invalid_commits += stats.invalid_commits


def _read_session(stats: Any, out: Counters) -> None:
    out.gateway_connections += stats.connections
    out.gateway_sessions += stats.sessions
    out.gateway_reconnects += stats.reconnects
    out.gateway_resumes += stats.resumes
    out.gateway_server_changes += stats.server_changes
    _merge(out.gateway_reconnects_by_code, stats.reconnects_by_code)
    _merge(out.gateway_resumes_by_code, stats.resumes_by_code)
    _merge(out.gateway_closes, stats.closes)


class _Carry:
    __slots__ = ("sender", "udp", "receiver", "dave")

    def __init__(self) -> None:
        self.sender, self.udp, self.receiver, self.dave = _Part(), _Part(), _Part(), _Part()


def _conns(source: MetricsSource) -> list[Conn]:
    if isinstance(source, Conn):
        return [source]
    if isinstance(source, Manager):
        return list(source)
    try:
        items = list(source)
    except TypeError:
        raise TypeError(
            f"metrics source must be a Manager, a Conn or an iterable of them, got {type(source).__name__}"
        ) from None
    out: list[Conn] = []
    for item in items:
        if isinstance(item, Manager):
            out.extend(item)
        elif isinstance(item, Conn):
            out.append(item)
        else:
            raise TypeError(f"metrics source items must be Managers or Conns, got {type(item).__name__}")
    return out


class Metrics:
    """Reads the counters of ``source`` (a :class:`~fastvoice.Manager`, a
    :class:`~fastvoice.Conn`, or an iterable of them) into :class:`MetricsSnapshot` objects.

    Made on (or given) the event loop of the connections; unless ``lateness=False`` it
    enables the tick-lateness histogram of that loop's send clock (see :func:`enable`).
    :meth:`snapshot` runs on that loop's thread (the Prometheus exporter takes care of it).
    The totals it reports only grow: the final counts of parts replaced since the last
    snapshot (a socket after a reconnect, DAVE state after a move) and of connections gone
    since then stay in them. What a snapshot never saw is not counted: a part replaced twice
    between two snapshots loses the middle one's counts, and a sender that started and ended
    between two snapshots of a connection that closed meanwhile is not seen.
    """

    def __init__(self, source: MetricsSource, *, loop: asyncio.AbstractEventLoop | None = None,
                 lateness: bool = True) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("Metrics needs the connections' event loop: make it inside that loop "
                                   "or pass loop=") from None
        _conns(source)  # a bad source fails here, not at the first scrape
        self._source = source
        self.loop = loop
        self._carry: dict[Conn, _Carry] = {}
        self._retired = Counters()
        if lateness:
            enable(loop)

    def snapshot(self) -> MetricsSnapshot:
        """Read every counter now."""
        conns = _conns(self._source)
        per_conn: list[ConnMetrics] = []
        seen: set[Conn] = set()
        ready = 0
        for conn in conns:
            if conn in seen:
                continue
            seen.add(conn)
            carry = self._carry.get(conn)
            if carry is None:
                carry = self._carry[conn] = _Carry()
            counters = _read_conn(conn, carry)
            udp, dave = conn.udp, conn.dave
            is_ready = udp is not None and udp.packetizer is not None
            ready += is_ready
            per_conn.append(ConnMetrics(
                guild_id=conn.guild_id, user_id=conn.user_id, channel_id=conn.channel_id, ready=is_ready,
                dave_protocol_version=dave.protocol_version if dave is not None else 0, counters=counters,
            ))
        for conn in [c for c in self._carry if c not in seen]:
            # Gone (closed): its parts' final counts stay in the totals.
            self._retired.add(_read_conn(conn, self._carry.pop(conn)))
        return MetricsSnapshot(
            taken_at=time.time(), calls=len(per_conn), calls_ready=ready, totals=_sum(self._retired, per_conn),
            clock=_clock(self.loop), conns=tuple(per_conn),
        )


def _read_conn(conn: Conn, carry: _Carry) -> Counters:
    counters = Counters()
    carry.sender.read(conn.sender, _read_sender, counters)
    carry.udp.read(conn.udp, _read_udp, counters)
    carry.receiver.read(conn.receiver, _read_receiver, counters)
    carry.dave.read(conn.dave, _read_dave, counters)
    _read_session(conn.session_stats, counters)
    return counters


def _sum(retired: Counters, conns: list[ConnMetrics]) -> Counters:
    totals = retired.copy()
    every = [c.counters for c in conns]
    for name in _INT_FIELDS:
        setattr(totals, name, getattr(totals, name) + sum([getattr(c, name) for c in every]))
    for c in every:
        for name in _BY_CODE_FIELDS:
            _merge(getattr(totals, name), getattr(c, name))
    return totals


def _clock(loop: asyncio.AbstractEventLoop) -> ClockMetrics | None:
    clock = SendClock._clocks.get(loop)
    if clock is None:
        return None
    return ClockMetrics(
        ticks=clock.ticks, late_ticks=clock.late_ticks, resyncs=clock.resyncs, live_senders=clock.live_senders,
        precise=clock.precise, lateness=clock.lateness.copy() if clock.lateness is not None else None,
    )


def snapshot(source: MetricsSource, *, loop: asyncio.AbstractEventLoop | None = None) -> MetricsSnapshot:
    """One snapshot of ``source``, read on the connections' loop (``loop``, by default the
    running one). It does not turn the tick-lateness histogram on; :class:`Metrics` does, and
    keeps totals monotonic across reconnects and closed connections: use it for repeated reads."""
    return Metrics(source, loop=loop, lateness=False).snapshot()
