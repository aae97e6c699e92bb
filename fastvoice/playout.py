"""The playout (jitter) buffer of one user's stream: :class:`PlayoutBuffer` and :class:`PlayoutStats`.

Sans-I/O: packets go in with their arrival time (:meth:`PlayoutBuffer.push`), and the
timeline asks, tick by tick, what to play (:meth:`PlayoutBuffer.take`): a packet to decode,
the next packet's FEC, a concealment, or nothing.  No clock, no decoder, no asyncio here:
:class:`fastvoice.PlayoutReceiver` owns those.

How a packet finds its tick.  Each packet has a *slot*: the index of the 20 ms tick on
which it plays.  When a talkspurt starts (the first packet, a marker bit, or a timestamp
that moved on by more than the sequence numbers account for: the sender paused) and
nothing is buffered, the buffer *anchors* the stream: the packet plays ``delay`` after the
time it would have arrived by the fastest path seen recently, rounded up to a tick; every
later packet's slot follows from its RTP timestamp (960 units per tick), so the stream
keeps the sender's timing and a pause stays a pause.  A packet whose slot has already
been played is late; one whose sequence number was already seen is a duplicate; one whose
slot is further ahead than ``max_delay`` allows (a flood) overflows.  All are dropped and
counted.  Sequence numbers are compared modulo 2**16 and timestamps modulo 2**32 (both
extended to unbounded integers), so the wraps are crossed without a glitch.

How the delay adapts.  Every packet's transit (arrival time minus its timestamp's time)
goes into a window of the last ``JITTER_WINDOW`` packets; the delay a new talkspurt gets is
the ``JITTER_QUANTILE`` quantile of the transits above the window's fastest one (the delay
that would have played that share of recent packets on time), within ``min_delay`` and
``max_delay``.  Inside a long talkspurt (music, a speaker who never pauses) the delay moves
only when it must, judged once per second of played packets from their *margins* (how long
before its tick each packet arrived): when two or more packets of that second were late,
the delay grows by the lateness, in whole ticks (each inserted tick is concealed: a sender
whose clock runs slow, a path that got slower); when even the earliest-due packet had two
ticks more margin than the talkspurt started with, one packet is dropped to shrink it by a
tick (a sender whose clock runs fast, the excess left by a stall).  Three newest packets late
in a row with nothing buffered (a stall) re-anchor the stream at once.

How loss is concealed.  When a tick's packet is missing inside a talkspurt, the next
packet's in-band FEC recovers it if that packet is already buffered, immediately follows
and carries FEC data (:func:`fastvoice.opus_packet.has_fec`); otherwise libopus's packet
loss concealment extrapolates, for at most ``max_concealment`` (100 ms) in a row; after
that the user is silent.  A silence frame (``F8 FF FE``: what senders send before a pause)
ends a talkspurt: the ticks after it are silent, not concealed.  When the stream resumes,
the sequence numbers it skipped are counted as lost, and those of them that fell past the
concealment bound as muted; concealed ticks that hid no lost packet (the stream resumed
without skipping a sequence number: the delay grew, a stall was absorbed, a sender paused
without silence frames) count as stretched.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

from .constants import SILENCE_AUDIO_FRAME
from .opus_packet import has_fec, is_celt_only

__all__ = [
    "PlayoutBuffer",
    "PlayoutStats",
    "IDLE",
    "PLAY",
    "QUIET",
    "FEC",
    "PLC",
    "JITTER_WINDOW",
    "JITTER_QUANTILE",
]

#: What :meth:`PlayoutBuffer.take` tells the timeline to do on a tick.
IDLE = 0  #: nothing to play: the user is silent on this tick
PLAY = 1  #: decode the packet
QUIET = 2  #: decode the packet (a silence frame: it keeps the decoder's state), the user is silent
FEC = 3  #: recover the missing packet from the next one's FEC: ``decode(packet, fec=True)``
PLC = 4  #: conceal the missing packet: ``decode(None)``

#: RTP timestamp units per 20 ms frame (48 kHz).
FRAME_UNITS = 960
RTP_RATE = 48000
#: A sequence number this far from the highest seen is a new stream if the next one follows it
#: (RFC 3550 appendix A.1's MAX_DROPOUT); alone, it is dropped.
MAX_DROPOUT = 3000
#: Sequence numbers remembered for duplicate detection.
SEEN_WINDOW = 64
#: Transits kept for the delay estimate (5 s of one speaker's packets).
JITTER_WINDOW = 250
#: Share of recent packets the adapted delay would have played on time.
JITTER_QUANTILE = 0.98
#: Transits needed before the delay adapts (before, ``delay`` applies).
MIN_SAMPLES = 50
#: Newest packets late in a row that re-anchor a talkspurt.
LATE_RUN_RESYNC = 3
#: Played ticks per adaptation step inside a talkspurt (one second).
ADAPT_WINDOW = 50
#: Late packets in an adaptation step that make the delay grow.
LATE_TO_GROW = 2
#: A transit this far (seconds) from the previous packet's is not jitter: the sender's timestamps
#: jumped (one that does not count the time of its pauses): the jitter window starts over.
TIMING_JUMP = 1.0
#: Ticks a slot may lie beyond ``max_delay`` (reordering, a faster path) before a packet overflows.
AHEAD_MARGIN = 4

_MASK = (1 << SEEN_WINDOW) - 1


@dataclass
class PlayoutStats:
    """Counters of one user's stream (``PlayoutReceiver.stats(user_id)`` returns a copy).

    Packets: ``received`` (all handed in), ``played`` (decoded on their tick, silence frames
    included), ``late`` (arrived after their tick was played, or their tick was skipped),
    ``duplicate``, ``overflow`` (further ahead than ``max_delay``: a flood or a bogus
    timestamp; or still buffered when a new stream replaced the old), ``invalid`` (a sequence number far from the stream's, or two packets for one
    tick), ``dropped`` (dropped on purpose to shrink the delay), ``undecodable`` (refused by
    libopus: concealed instead).

    Loss: ``lost`` is the number of sequence numbers skipped on the timeline (never played:
    lost on the way or late), counted when the stream resumes after them.  Each tick of a
    talkspurt without its packet is ``recovered`` (decoded from the next packet's FEC),
    ``concealed`` (libopus's packet loss concealment) or, past ``max_concealment``,
    ``muted``.  Concealed ticks that hid no lost packet are also counted as ``stretched``:
    ticks the delay grew by, a stall the buffer absorbed, a sender that paused without
    silence frames (nobody can tell a stop from a loss at once).  Once the stream has resumed
    after them, ``recovered + concealed + muted == lost + stretched``.

    Timing: ``delay`` is the playout delay in use (seconds after the fastest arrival seen),
    ``target_delay`` what the jitter estimate asks for, ``jitter`` RFC 3550's interarrival
    jitter estimate (seconds), ``buffered`` the packets waiting. ``talkspurts`` counts
    anchorings (talkspurt starts), ``resyncs`` re-anchorings after late packets,
    ``restarts`` new streams (sequence numbers or timestamps that jumped).
    """

    received: int = 0
    played: int = 0
    lost: int = 0
    concealed: int = 0
    recovered: int = 0
    muted: int = 0
    stretched: int = 0
    late: int = 0
    duplicate: int = 0
    overflow: int = 0
    invalid: int = 0
    dropped: int = 0
    undecodable: int = 0
    talkspurts: int = 0
    resyncs: int = 0
    restarts: int = 0
    delay: float = 0.0
    target_delay: float = 0.0
    jitter: float = 0.0
    buffered: int = 0


def _check_seconds(name: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a number of seconds >= {minimum}, got {value!r}"[:120])
    return float(value)


class PlayoutBuffer:
    """The playout buffer of one user's stream (see the module docstring for how it works).

    ``delay`` is the playout delay until enough packets were seen to adapt it, kept within
    ``min_delay`` and ``max_delay``; ``max_concealment`` bounds concealment in a row;
    ``frame`` is the tick (0.02 s).  Memory is bounded whatever arrives: at most
    ``max_delay / frame + 5`` packets wait, and the jitter window holds ``JITTER_WINDOW``
    numbers.
    """

    __slots__ = (
        "stats", "_frame", "_initial", "_min_delay", "_max_delay", "_conceal_ticks", "_max_ahead",
        "_slots", "_started", "_max_seq", "_max_ts", "_seen", "_probe", "_ts0", "_transits", "_last_transit",
        "_anchored", "_base_slot", "_base_ts", "_delay", "_target", "_anchor_target",
        "_last_seq", "_last_ts", "_last_slot", "_active", "_last_celt", "_run_filled", "_late_run",
        "_margins", "_window", "_stretching",
    )

    def __init__(self, *, delay: float = 0.06, min_delay: float = 0.02, max_delay: float = 0.4,
                 max_concealment: float = 0.1, frame: float = 0.02) -> None:
        self._frame = _check_seconds("frame", frame)
        if self._frame <= 0:
            raise ValueError("frame must be a positive number of seconds")
        self._min_delay = _check_seconds("min_delay", min_delay)
        self._max_delay = _check_seconds("max_delay", max_delay)
        if self._max_delay < self._min_delay:
            raise ValueError(f"max_delay ({max_delay!r}) must not be below min_delay ({min_delay!r})"[:120])
        self._initial = _check_seconds("delay", delay)
        if not self._min_delay <= self._initial <= self._max_delay:
            raise ValueError(f"delay ({delay!r}) must lie within min_delay ({min_delay!r}) and "
                             f"max_delay ({max_delay!r})"[:160])
        self._conceal_ticks = round(_check_seconds("max_concealment", max_concealment) / self._frame)
        self._max_ahead = math.ceil(self._max_delay / self._frame - 1e-9) + AHEAD_MARGIN
        self.stats = PlayoutStats(delay=self._initial, target_delay=self._initial)
        self._slots: dict[int, tuple[int, int, bytes]] = {}
        self._transits: deque[float] = deque(maxlen=JITTER_WINDOW)
        self._margins: deque[float] = deque(maxlen=4 * ADAPT_WINDOW)
        self._target = self._initial
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._slots.clear()
        self._transits.clear()
        self._started = False
        self._max_seq = self._max_ts = 0
        self._seen = 0
        self._probe: int | None = None
        self._ts0 = 0
        self._last_transit: float | None = None
        self._anchored = False
        self._base_slot = self._base_ts = 0
        self._delay = self._anchor_target = self._target
        self._last_seq: int | None = None
        self._last_ts = 0
        self._last_slot = 0
        self._active = False
        self._last_celt = True
        self._run_filled = 0
        self._late_run = 0
        self._margins.clear()
        self._window = 0
        self._stretching = 0

    # -- public state ----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Packets waiting for their tick."""
        return len(self._slots)

    @property
    def delay(self) -> float:
        """The playout delay in use, in seconds."""
        return self._delay

    def snapshot(self) -> PlayoutStats:
        """A copy of the counters with the current delay, target and buffer filled in."""
        return replace(self.stats, delay=self._delay, target_delay=self._target, buffered=len(self._slots))

    def is_idle(self, index: int) -> bool:
        """True when ticks from ``index`` on have nothing to do until a packet arrives: nothing
        buffered, and no talkspurt to conceal (or its concealment has run out)."""
        if self._slots or (self._active and self._stretching):
            return False
        return not self._active or index - self._last_slot > self._conceal_ticks

    # -- packets in ------------------------------------------------------------------------

    def push(self, sequence: int, timestamp: int, opus: bytes, marker: bool, now: float,
             next_index: int, next_time: float) -> None:
        """Add a packet that arrived at ``now``; ``next_index`` is the next tick to be played
        and ``next_time`` the time it is due (same clock as ``now``)."""
        stats = self.stats
        stats.received += 1
        sequence &= 0xFFFF
        timestamp &= 0xFFFFFFFF
        if not self._started:
            ext_seq, ext_ts, newest = self._start(sequence, timestamp)
        else:
            dseq = ((sequence - self._max_seq + 0x8000) & 0xFFFF) - 0x8000
            if dseq > MAX_DROPOUT or dseq < -MAX_DROPOUT:
                if self._probe != sequence:
                    # Maybe a new stream (a restarted sender): believe it when the next packet follows.
                    self._probe = (sequence + 1) & 0xFFFF
                    stats.invalid += 1
                    return
                self._restart()
                ext_seq, ext_ts, newest = self._start(sequence, timestamp)
            else:
                ext_seq = self._max_seq + dseq
                dts = ((timestamp - self._max_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                ext_ts = self._max_ts + dts
                if dseq > 0 and dts <= 0:
                    # A newer packet with an older timestamp: a new stream if the next follows it.
                    if self._probe != sequence:
                        self._probe = (sequence + 1) & 0xFFFF
                        stats.invalid += 1
                        return
                    self._restart()
                    ext_seq, ext_ts, newest = self._start(sequence, timestamp)
                elif dseq > 0:
                    self._seen = ((self._seen << dseq) | 1) & _MASK if dseq < SEEN_WINDOW else 1
                    self._max_seq, self._max_ts = ext_seq, ext_ts
                    newest = True
                else:
                    back = -dseq
                    if back >= SEEN_WINDOW:
                        stats.late += 1  # too old to tell a duplicate: long past its tick anyway
                        return
                    if (self._seen >> back) & 1:
                        stats.duplicate += 1
                        return
                    self._seen |= 1 << back
                    newest = False
        self._probe = None
        # The jitter estimates: every packet seen once counts, late ones too (they are the signal).
        transit = now - (ext_ts - self._ts0) / RTP_RATE
        last_transit = self._last_transit
        if last_transit is not None:
            change = abs(transit - last_transit)
            if change > TIMING_JUMP:
                self._transits.clear()  # the sender's timestamps left wall-clock time: start over
            else:
                stats.jitter += (change - stats.jitter) / 16
        self._last_transit = transit
        self._transits.append(transit)

        last_seq = self._last_seq
        if last_seq is not None and ext_seq <= last_seq:
            stats.late += 1  # its sequence number was passed on the timeline
            return
        if not self._anchored or (not self._slots and (marker or (
                last_seq is not None and ext_ts - self._last_ts > (ext_seq - last_seq) * FRAME_UNITS + FRAME_UNITS // 2))):
            self._anchor(ext_ts, next_index, next_time)
            stats.talkspurts += 1
        slot = self._base_slot + round((ext_ts - self._base_ts) / FRAME_UNITS)
        if slot < next_index:
            self._margins.append(next_time + (slot - next_index) * self._frame - now)
            if newest and not self._slots:
                self._late_run += 1
                if self._late_run >= LATE_RUN_RESYNC:
                    self._anchor(ext_ts, next_index, next_time)
                    stats.resyncs += 1
                    slot = self._base_slot
                else:
                    stats.late += 1
                    return
            else:
                stats.late += 1
                return
        if newest:
            self._late_run = 0
        if slot - next_index > self._max_ahead:
            stats.overflow += 1
            return
        if slot in self._slots:
            stats.invalid += 1  # another packet already plays on that tick
            return
        self._slots[slot] = (ext_seq, ext_ts, opus)
        self._margins.append(next_time + (slot - next_index) * self._frame - now)

    def _start(self, sequence: int, timestamp: int) -> tuple[int, int, bool]:
        self._started = True
        self._max_seq, self._max_ts = sequence, timestamp
        self._seen = 1
        self._ts0 = timestamp
        return sequence, timestamp, True

    def _restart(self) -> None:
        self.stats.restarts += 1
        self.stats.overflow += len(self._slots)
        self._reset_stream()

    def _compute_target(self) -> float:
        transits = self._transits
        if len(transits) < MIN_SAMPLES:
            target = self._initial
        else:
            ordered = sorted(transits)
            target = ordered[min(len(ordered) - 1, int(JITTER_QUANTILE * len(ordered)))] - ordered[0]
        return min(self._max_delay, max(self._min_delay, target))

    def _anchor(self, ext_ts: int, next_index: int, next_time: float) -> None:
        """Map the stream's timestamps to ticks so that the packet of ``ext_ts`` plays at the
        target delay after its fastest-path arrival (and not before the next tick)."""
        target = self._target = self._compute_target()
        fastest = min(self._transits) + (ext_ts - self._ts0) / RTP_RATE
        play = fastest + target
        frame = self._frame
        slot = next_index
        if play > next_time:
            slot += math.ceil((play - next_time) / frame - 1e-9)
        self._anchored = True
        self._base_slot, self._base_ts = slot, ext_ts
        self._delay = next_time + (slot - next_index) * frame - fastest
        self._anchor_target = target
        self._late_run = 0
        self._margins.clear()
        self._window = 0
        self._stretching = 0

    # -- ticks out -------------------------------------------------------------------------

    def take(self, index: int) -> tuple[int, bytes | None]:
        """What to play on tick ``index`` (called once per tick, in order): ``(PLAY, packet)``,
        ``(QUIET, silence frame)``, ``(FEC, next packet)``, ``(PLC, None)`` or ``(IDLE, None)``."""
        entry = self._slots.pop(index, None)
        stats = self.stats
        if entry is not None:
            ext_seq, ext_ts, opus = entry
            last_seq = self._last_seq
            if last_seq is not None:
                gap = ext_seq - last_seq - 1
                if gap > 0:
                    stats.lost += gap
                    stats.muted += max(0, gap - self._run_filled)
                if self._run_filled > gap:
                    stats.stretched += self._run_filled - max(gap, 0)
            self._run_filled = 0
            self._last_seq, self._last_ts, self._last_slot = ext_seq, ext_ts, index
            stats.played += 1
            silence = opus == SILENCE_AUDIO_FRAME
            self._active = not silence
            self._last_celt = is_celt_only(opus)
            self._window += 1
            if self._window >= ADAPT_WINDOW:
                self._adapt(index)
            return (QUIET if silence else PLAY), opus
        if not self._active:
            return IDLE, None
        if self._stretching:
            self._stretching -= 1
            stats.concealed += 1
            self._run_filled += 1
            return PLC, None
        slots = self._slots
        if slots:
            following = min(slots)
            next_seq, _, next_opus = slots[following]
            if next_seq == self._last_seq + 1:  # type: ignore[operator]
                return IDLE, None  # nothing is missing: the sender paused without silence frames
            if following == index + 1 and not self._last_celt and has_fec(next_opus):
                stats.recovered += 1
                self._run_filled += 1
                return FEC, next_opus
        if index - self._last_slot <= self._conceal_ticks:
            stats.concealed += 1
            self._run_filled += 1
            return PLC, None
        return IDLE, None

    def purge(self, index: int) -> None:
        """Drop the packets of ticks before ``index`` that were never played (the timeline
        skipped them: the event loop was blocked); they count as late."""
        stale = [slot for slot in self._slots if slot < index]
        for slot in stale:
            del self._slots[slot]
        self.stats.late += len(stale)

    def _adapt(self, index: int) -> None:
        """Once per ``ADAPT_WINDOW`` played ticks: grow or shrink the delay inside a talkspurt."""
        margins = sorted(self._margins)
        self._margins.clear()
        self._window = 0
        self._target = self._compute_target()
        if not margins:
            return
        # The delay in use: how long before its tick the earliest packet of the second came.
        self._delay = margins[-1]
        frame = self._frame
        if len(margins) >= LATE_TO_GROW and margins[LATE_TO_GROW - 1] < 0:
            room = math.floor((self._max_delay - self._delay) / frame + 1e-9)
            ticks = min(room, math.ceil(-margins[LATE_TO_GROW - 1] / frame - 1e-9))
            if ticks > 0:
                self._grow(index, ticks)
        elif margins[0] >= max(self._target, self._anchor_target) + 2 * frame:
            self._shrink(index)

    def _grow(self, index: int, ticks: int) -> None:
        """Play ``ticks`` ticks more of delay: every packet after tick ``index`` moves that many
        ticks later, and the ticks opened up are concealed."""
        self._slots = {slot + ticks: value for slot, value in self._slots.items()}
        self._base_slot += ticks
        self._delay += ticks * self._frame
        self._stretching += ticks

    def _shrink(self, index: int) -> None:
        """Play one tick less of delay: drop the packet due on the next tick (when it follows
        the one just played) and move every later one a tick earlier."""
        entry = self._slots.get(index + 1)
        if entry is None or entry[0] != self._last_seq + 1:  # type: ignore[operator]
            return
        del self._slots[index + 1]
        self._slots = {slot - 1: value for slot, value in self._slots.items()}
        self._base_slot -= 1
        self._delay -= self._frame
        self._last_seq, self._last_ts = entry[0], entry[1]
        self._last_celt = is_celt_only(entry[2])
        self.stats.dropped += 1
