"""Each speaker's audio on one 20 ms timeline: :class:`PlayoutReceiver`.

An :class:`~fastvoice.OpusFrameReceiver` (give it to ``conn.set_opus_frame_receiver``):
every packet goes into its user's :class:`~fastvoice.playout.PlayoutBuffer`; every 20 ms
the loop's :class:`~fastvoice.timeline.PlayoutClock` has the receiver take what each user
plays, decode it (in a :class:`~fastvoice.decode_pool.DecodePool`, or inline) and deliver
one :class:`~fastvoice.timeline.VoiceTick` to its consumers: :meth:`PlayoutReceiver.ticks`,
:meth:`PlayoutReceiver.utterances` and listeners (:meth:`PlayoutReceiver.add_listener`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from .decode_pool import DecodeJob, DecodePool, decode_jobs
from .opus_decoder import OpusDecoder, load_opus
from .playout import FEC, IDLE, PLAY, QUIET, PlayoutBuffer, PlayoutStats
from .rtp import Packet
from .timeline import BoundedStream, PlayoutClock, TickStream, VoiceTick
from .utterances import UtteranceStream

__all__ = ["PlayoutReceiver", "TickListener"]

_log = logging.getLogger("fastvoice.playout")

#: A function called with every :class:`VoiceTick` of a receiver, on the event loop.
TickListener = Callable[[VoiceTick], None]

_RATES = (8000, 12000, 16000, 24000, 48000)
_NO_JOBS: list[DecodeJob] = []  # shared by empty ticks: never modified
_NO_META: list[tuple[Any, int, bytes | None]] = []


class _User:
    __slots__ = ("user_id", "buffer", "decoder", "leaving")

    def __init__(self, user_id: int, buffer: PlayoutBuffer, decoder: Any) -> None:
        self.user_id = user_id
        self.buffer = buffer
        self.decoder = decoder
        self.leaving = False


class _Plan:
    """One tick of one receiver between taking (on the loop) and delivering (after decoding)."""

    __slots__ = ("receiver", "index", "time", "jobs", "meta", "users")

    def __init__(self, receiver: PlayoutReceiver, index: int, time: float, jobs: list[DecodeJob],
                 meta: list[tuple[_User, int, bytes | None]], users: frozenset[int]) -> None:
        self.receiver = receiver
        self.index = index
        self.time = time
        self.jobs = jobs
        self.meta = meta
        self.users = users


class PlayoutReceiver:
    """Receives a call and plays every user's audio out on one 20 ms timeline.

    - ``sample_rate`` (8000, 12000, 16000, 24000 or 48000) and ``channels`` (1 or 2): the
      PCM of the ticks (libopus decodes straight to them);
    - ``delay``: the playout delay before it adapts, ``min_delay`` and ``max_delay`` its
      bounds, ``max_concealment`` the longest loss concealed in a row (see
      :mod:`fastvoice.playout`);
    - ``decode_threads``: ``0`` decodes on the event loop; ``N`` uses the process's shared
      :class:`DecodePool` of ``N`` threads; ``None`` (default) the shared pool of one thread
      per CPU (at most 8); ``decode_pool`` gives a pool of your own instead;
    - ``clock``: the :class:`PlayoutClock` (default: the running loop's); a test clock
      (``PlayoutClock(autostart=False)``) drives the receiver deterministically;
    - ``max_users``: packets of more users than this are refused (counted in ``refused``).

    The timeline starts at the first packet or the first consumer, whichever comes first
    (index 0 is the next tick).  Decoding happens only while something consumes ticks
    (:meth:`ticks`, :meth:`utterances`, a listener): without, packets are still buffered,
    played and counted, but not decoded.  A user who leaves (:meth:`cleanup_user`, op 13)
    plays out what is buffered, then is forgotten (it leaves ``users``; ``stats`` no longer
    knows it).  Raises ``OpusNotAvailableError`` when libopus cannot be loaded.
    """

    def __init__(self, sample_rate: int = 48000, channels: int = 2, delay: float = 0.06, *,
                 min_delay: float = 0.02, max_delay: float = 0.4, max_concealment: float = 0.1,
                 decode_threads: int | None = None, decode_pool: DecodePool | None = None,
                 clock: PlayoutClock | None = None, max_users: int = 256,
                 logger: logging.Logger | None = None) -> None:
        for name, value, allowed in (("sample_rate", sample_rate, _RATES), ("channels", channels, (1, 2))):
            if type(value) is bool or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, not {str(value)[:20]}")
        if decode_threads is not None and (
                isinstance(decode_threads, bool) or not isinstance(decode_threads, int) or decode_threads < 0):
            raise ValueError(f"decode_threads must be None or an int >= 0, got {decode_threads!r}"[:100])
        if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
            raise ValueError(f"max_users must be an int >= 1, got {max_users!r}"[:100])
        if clock is not None and not isinstance(clock, PlayoutClock):
            raise TypeError(f"clock must be a PlayoutClock, not {type(clock).__name__}")
        # Checks the arguments of every user's buffer now rather than at the first packet.
        PlayoutBuffer(delay=delay, min_delay=min_delay, max_delay=max_delay, max_concealment=max_concealment)
        load_opus()
        self._sample_rate = sample_rate
        self._channels = channels
        self._buffer_options = dict(delay=delay, min_delay=min_delay, max_delay=max_delay,
                                    max_concealment=max_concealment)
        self._frame_bytes = sample_rate // 50 * channels * 2
        if decode_pool is not None:
            self._pool: DecodePool | None = decode_pool
        elif decode_threads == 0:
            self._pool = None
        else:
            self._pool = DecodePool.shared(decode_threads)
        self._clock = clock
        self._log = logger or _log
        self._max_users = max_users
        self._users: dict[int, _User] = {}
        self._busy: dict[int, _User] = {}
        self._known: frozenset[int] = frozenset()
        self._listeners: list[TickListener] = []
        # Streams are held weakly: one its consumer dropped (a ``break`` out of ``async for``)
        # detaches itself when it is collected.
        self._streams: list[weakref.ref[BoundedStream]] = []
        self._origin: int | None = None
        self._expect = 0
        self._closed = False
        #: Ticks run, ticks never delivered (a busy decode pool), ticks skipped (a blocked
        #: loop), packets refused (too many users, or after close), consumer exceptions.
        self.ticks_run = 0
        self.dropped_ticks = 0
        self.skipped_ticks = 0
        self.refused = 0
        self.errors = 0

    # -- properties ----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Sample rate of the ticks' PCM."""
        return self._sample_rate

    @property
    def channels(self) -> int:
        """Channels of the ticks' PCM."""
        return self._channels

    @property
    def users(self) -> frozenset[int]:
        """The users this receiver knows (has had packets from and who have not left)."""
        return self._known

    @property
    def clock(self) -> PlayoutClock | None:
        """The clock driving this receiver (None until its timeline starts, without ``clock=``)."""
        return self._clock

    @property
    def decode_pool(self) -> DecodePool | None:
        """The pool decoding for this receiver (None: it decodes on the event loop)."""
        return self._pool

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def index(self) -> int:
        """The timeline index of the next tick (0 before the timeline starts)."""
        if self._origin is None or self._clock is None:
            return 0
        return self._clock.position - self._origin

    def stats(self, user_id: int) -> PlayoutStats:
        """A copy of ``user_id``'s counters (``KeyError`` for a user not known, or gone)."""
        user = self._users.get(user_id)
        if user is None:
            raise KeyError(f"no user {str(user_id)[:30]} on this receiver")
        return user.buffer.snapshot()

    # -- the OpusFrameReceiver protocol --------------------------------------------------------

    def receive_opus_frame(self, user_id: int, packet: Packet) -> None:
        """Buffer one packet of ``user_id`` (called by the connection, on the event loop)."""
        if self._closed:
            self.refused += 1
            return
        clock = self._clock if self._origin is not None else self._attach()
        user = self._users.get(user_id)
        if user is None:
            if len(self._users) >= self._max_users:
                self.refused += 1
                return
            user = self._add_user(user_id)
        elif user.leaving:
            user.leaving = False
        position = clock.position  # type: ignore[union-attr]
        user.buffer.push(packet.sequence, packet.timestamp, packet.opus, packet.marker, clock.time(),  # type: ignore[union-attr]
                         position - self._origin, clock.due(position))  # type: ignore[union-attr,operator]
        self._busy[user_id] = user

    def cleanup_user(self, user_id: int) -> None:
        """The user left (op 13): what is buffered plays out, then the user is forgotten."""
        user = self._users.get(user_id)
        if user is None:
            return
        user.leaving = True
        if user_id not in self._busy:
            self._forget(user)

    def close(self) -> None:
        """Stop: detach from the clock, end every stream (phrases in progress are delivered
        first) and forget every user.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._clock is not None and self._origin is not None:
            self._clock._remove(self)
        streams, self._streams = self._streams, []
        for ref in streams:
            stream = ref()
            if stream is not None:
                stream._source_ended()
        self._listeners.clear()
        self._users.clear()
        self._busy.clear()
        self._known = frozenset()

    # -- consumers -----------------------------------------------------------------------------

    def ticks(self, *, max_pending: int = 50) -> TickStream:
        """Every tick from the next one on, as an async iterator (``async for tick in
        rx.ticks()``).  At most ``max_pending`` ticks wait for a slow consumer; older ones are
        dropped and counted (``stream.dropped``).  Ends when the receiver closes."""
        stream = TickStream(max_pending, self._detach_stream)
        self._subscribe(stream)
        return stream

    def utterances(self, silence: float = 0.5, pre_roll: float = 0.2, min_length: float = 0.3,
                   max_length: float = 30.0, sample_rate: int = 16000, channels: int = 1, *,
                   threshold: float = -40.0, max_pending: int = 64) -> UtteranceStream:
        """Each user's phrases, as an async iterator of :class:`~fastvoice.utterances.Utterance`
        (``async for u in rx.utterances()``), resampled to ``sample_rate`` and ``channels``
        (the rate must divide the receiver's).  See :mod:`fastvoice.utterances` for how
        phrases are cut; ``threshold`` is the voice level in dBFS."""
        stream = UtteranceStream(self._sample_rate, self._channels, silence=silence, pre_roll=pre_roll,
                                 min_length=min_length, max_length=max_length, sample_rate=sample_rate,
                                 channels=channels, threshold=threshold, max_pending=max_pending,
                                 detach=self._detach_stream)
        self._subscribe(stream)
        return stream

    def add_listener(self, listener: TickListener) -> None:
        """Call ``listener(tick)`` for every tick delivered from now on, synchronously on the
        event loop, never dropping one (a recorder's hook; keep it quick).  Its exceptions are
        logged and counted in ``errors``."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {type(listener).__name__}")
        if self._closed:
            raise RuntimeError("the receiver is closed")
        self._attach()
        self._listeners.append(listener)

    def remove_listener(self, listener: TickListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def _subscribe(self, stream: BoundedStream) -> None:
        if self._closed:
            stream._source_ended()
            return
        self._attach()
        self._streams.append(weakref.ref(stream, self._stream_collected))

    def _detach_stream(self, stream: BoundedStream) -> None:
        self._streams = [ref for ref in self._streams if ref() is not stream and ref() is not None]

    def _stream_collected(self, ref: weakref.ref[BoundedStream]) -> None:
        self._streams = [other for other in self._streams if other is not ref]

    # -- the timeline --------------------------------------------------------------------------

    def _attach(self) -> PlayoutClock:
        clock = self._clock
        if clock is None:
            clock = self._clock = PlayoutClock.for_loop()
        if self._origin is None:
            self._origin = clock._add(self)
            self._expect = 0
        return clock

    def _add_user(self, user_id: int) -> _User:
        user = _User(user_id, PlayoutBuffer(**self._buffer_options),
                     OpusDecoder(self._sample_rate, self._channels))
        self._users[user_id] = user
        self._known = self._known | {user_id}
        return user

    def _forget(self, user: _User) -> None:
        self._users.pop(user.user_id, None)
        self._busy.pop(user.user_id, None)
        self._known = self._known - {user.user_id}

    def _plan_tick(self, position: int, due: float) -> _Plan | None:
        """Take what every user plays on this tick (the clock calls this on every tick)."""
        index = position - self._origin  # type: ignore[operator]
        if index != self._expect:
            self.skipped_ticks += index - self._expect
            for user in self._users.values():
                user.buffer.purge(index)
        self._expect = index + 1
        self.ticks_run += 1
        busy = self._busy
        if not busy:  # nobody to play: an empty tick, if anyone listens
            if self._listeners or self._streams:
                return _Plan(self, index, due, _NO_JOBS, _NO_META, self._known)
            return None
        consumers = self._listeners or self._streams
        jobs: list[DecodeJob] = []
        meta: list[tuple[_User, int, bytes | None]] = []
        following = index + 1
        for user in list(busy.values()):
            buffer = user.buffer
            action, opus = buffer.take(index)
            if action != IDLE:
                meta.append((user, action, opus))
                jobs.append((user.decoder, opus, action == FEC))
            if user.leaving and not buffer.buffered:
                self._forget(user)  # what was buffered has played out
            elif buffer.is_idle(following):
                del busy[user.user_id]
        if not consumers:
            return None
        return _Plan(self, index, due, jobs, meta, self._known)

    def _decode_and_deliver(self, plan: _Plan) -> None:
        if not plan.jobs:
            self._deliver(plan, _NO_JOBS, _NO_JOBS)  # type: ignore[arg-type]
            return
        results: list[bytes | None] = [None] * len(plan.jobs)
        errors: list[int] = []
        decode_jobs(plan.jobs, results, errors)
        self._deliver(plan, results, errors)

    def _deliver(self, plan: _Plan, results: list[bytes | None], errors: list[int]) -> None:
        """Build the tick from the decoded frames and hand it to every consumer."""
        if self._closed:
            return
        for i in errors:
            plan.meta[i][0].buffer.stats.undecodable += 1
        speaking: dict[int, bytes] = {}
        packets: dict[int, bytes | None] = {}
        size = self._frame_bytes
        for (user, action, opus), pcm in zip(plan.meta, results):
            if action == QUIET or pcm is None:
                continue
            if len(pcm) != size:  # a packet of another duration than 20 ms: cut or padded to the tick
                pcm = pcm[:size] if len(pcm) > size else pcm + bytes(size - len(pcm))
            speaking[user.user_id] = pcm
            packets[user.user_id] = opus if action == PLAY else None
        tick = VoiceTick(plan.index, plan.time, speaking, packets, plan.users)
        for listener in self._listeners:
            try:
                listener(tick)
            except Exception:
                self._consumer_failed()
        for ref in self._streams:
            stream = ref()
            if stream is not None:
                try:
                    stream._on_tick(tick)
                except Exception:
                    self._consumer_failed()

    def _consumer_failed(self) -> None:
        self.errors += 1
        if self.errors <= 3 or self.errors % 1000 == 0:
            self._log.exception("a playout tick consumer failed (%d errors so far)", self.errors)

    def _drop(self, plan: _Plan) -> None:
        """A tick the decode pool could not take in time: never decoded nor delivered."""
        self.dropped_ticks += 1

    def __repr__(self) -> str:
        return (f"PlayoutReceiver(sample_rate={self._sample_rate}, channels={self._channels}, "
                f"users={len(self._users)}, ticks_run={self.ticks_run}, closed={self._closed})")
