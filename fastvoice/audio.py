"""Paced Opus out and per-user Opus in: the shared send clock, AudioSender and AudioReceiver.

One :class:`SendClock` per event loop drives every :class:`AudioSender` on it: no task,
thread or timer per connection. Each 20 ms tick first sends every datagram prepared on the
previous tick, back to back, then prepares the next datagram of each live sender (provider
-> frame hook (DAVE) -> RTP packing and transport encryption). The send time therefore
depends on the wake-up alone, not on the work of the tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, overload

from ._timer import DeadlineTimer
from .histogram import Histogram
from .constants import OPUS_FRAME_SIZE_MS, SILENCE_AUDIO_FRAME
from .opus import OpusFrameProvider, OpusFrameReceiver, UserFilterFunc
from .rtp import Packet, Packetizer, PreparedSlot, SSRCTable, send_prepared
from .udp import UDPConn

__all__ = [
    "AudioReceiver",
    "AudioReceiverCreateFunc",
    "AudioSender",
    "AudioSenderCreateFunc",
    "FrameStats",
    "SendClock",
    "SILENCE_FRAMES",
]

_log = logging.getLogger("fastvoice.audio")

FRAME_SECONDS = OPUS_FRAME_SIZE_MS / 1000
#: Silence frames sent when a stream pauses or ends (PROTOCOL.md section 4.3).
SILENCE_FRAMES = 5
#: A stall longer than this many frames is resynchronised instead of caught up.
RESYNC_FRAMES = 3
#: RTP timestamp units per tick: one 20 ms frame at 48 kHz.
_SAMPLES_PER_TICK = 960

_MICROPHONE = 1
_NOT_SPEAKING = 0


class SenderConn(Protocol):
    """What an AudioSender needs from its connection (a :class:`fastvoice.Conn` provides it)."""

    @property
    def udp(self) -> UDPConn | None: ...

    async def set_speaking(self, flags: int) -> None: ...


class ReceiverConn(Protocol):
    """What an AudioReceiver built the seed's way, ``AudioReceiver(logger, receiver, conn)``,
    takes from its connection (a :class:`fastvoice.Conn` provides it)."""

    @property
    def udp(self) -> UDPConn | None: ...

    @property
    def ssrcs(self) -> SSRCTable: ...

    @property
    def user_filter(self) -> UserFilterFunc | None: ...


def _seed_call(cls: str, args: tuple[Any, ...], params: str) -> bool:
    """True for the seed's argument order, ``(logger, ..., conn)``, False for the earlier one;
    raises ``TypeError`` for neither."""
    if len(args) == 3 and isinstance(args[0], (logging.Logger, logging.LoggerAdapter)):
        return True
    if len(args) == len(params.split(", ")):
        return False
    raise TypeError(f"{cls}() takes (logger, {params.split(', ', 1)[0]}, conn) or ({params}) "
                    f"as positional arguments, got {len(args)}")


@dataclass
class FrameStats:
    """Per-connection send counters.

    ``sent``: datagrams sent (audio and silence); ``silence``: of which silence frames;
    ``nulled``: ticks with nothing to send while live (provider returned ``None``, no key yet,
    or the frame hook held the frame); ``deficit``: ticks lost to event-loop stalls;
    ``errors``: provider exceptions.
    """

    sent: int = 0
    silence: int = 0
    nulled: int = 0
    deficit: int = 0
    errors: int = 0


class SendClock:
    """The one 20 ms clock of an event loop; use :meth:`for_loop` to get it.

    Ticks follow an absolute schedule. On Linux a timerfd wakes the loop at each deadline
    (uvloop's own timers only count whole milliseconds); ``precise=False``, or a loop that
    cannot watch file descriptors, uses the loop's timers. Tests can drive ticks
    deterministically with :meth:`run_tick` on a clock made with ``autostart=False``.

    ``position`` numbers the ticks on the schedule, counting those skipped by a
    resynchronisation and, when the clock restarts after an idle spell, the ticks that
    spell lasted: senders derive their RTP timestamps from it, so a pause or a stall shows
    as the wall-clock gap it was (48 timestamp units per millisecond).
    """

    _clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SendClock] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, *, frame: float = FRAME_SECONDS, autostart: bool = True,
                 precise: bool = True) -> None:
        self._loop = loop
        self._frame = frame
        self._autostart = autostart
        self._precise = precise
        #: True while a timerfd wakes the loop for ticks (Linux), False with the loop's timers.
        self.precise = False
        #: The live senders, each with the slot its next datagram is prepared in.
        self._live: dict[AudioSender, PreparedSlot] = {}
        self._task: asyncio.Task[None] | None = None
        #: Ticks run, and ticks skipped by resynchronisation, since the clock was made.
        self.ticks = 0
        self.resyncs = 0
        self.late_ticks = 0
        #: Schedule index of the current (or last) tick; see the class docstring.
        self.position = 0
        #: time.monotonic() when the clock's task last stopped (its last tick), or None.
        self._stopped_at: float | None = None
        #: Each tick's lateness (wake-up minus deadline, seconds) while metrics are on
        #: (``fastvoice.metrics.enable``); ``None``, the default, observes nothing.
        self.lateness: Histogram | None = None

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> SendClock:
        """The clock of ``loop`` (the running loop by default), created on first use."""
        loop = loop if loop is not None else asyncio.get_running_loop()
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    @property
    def live_senders(self) -> int:
        """Senders the clock works for on each tick."""
        return len(self._live)

    @property
    def running(self) -> bool:
        """True while the clock's task runs (only while some sender is live)."""
        return self._task is not None and not self._task.done()

    def _add(self, sender: AudioSender) -> None:
        self._live[sender] = sender._slot
        if self._autostart and not self.running:
            self._task = self._loop.create_task(self._run(), name="fastvoice-send-clock")

    def _remove(self, sender: AudioSender) -> None:
        self._live.pop(sender, None)

    async def _run(self) -> None:
        frame = self._frame
        timer = DeadlineTimer(self._loop, precise=self._precise)
        self.precise = timer.precise
        clock = timer.now
        next_tick = clock()
        if self._stopped_at is not None:
            # The schedule went on while nothing was live: the first tick is that many later.
            idle = round((time.monotonic() - self._stopped_at) / frame)
            self.position += max(0, idle - 1)
        try:
            while self._live:
                now = clock()
                if now < next_tick:
                    await timer.sleep_until(next_tick)
                    now = clock()
                behind = now - next_tick
                if self.lateness is not None:
                    self.lateness.observe(behind)
                if behind > RESYNC_FRAMES * frame:
                    # The loop was blocked: skip the missed ticks rather than burst them out.
                    missed = int(behind / frame)
                    next_tick += missed * frame
                    self.skip(missed)
                elif behind > frame:
                    self.late_ticks += 1
                self.run_tick()
                next_tick += frame
        finally:
            timer.close()
            self._task = None
            self._stopped_at = time.monotonic()

    def skip(self, ticks: int) -> None:
        """Skip ``ticks`` ticks of the schedule, as a resynchronisation after a stall does:
        each live sender counts them as ``deficit`` and its next RTP timestamp moves on by
        them. (Tests call it on a clock made with ``autostart=False`` to stand for a stall.)"""
        if isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 0:
            raise ValueError(f"ticks must be an int >= 0, got {ticks!r}"[:120])
        self.position += ticks
        self.resyncs += 1
        for sender in list(self._live):
            sender.stats.deficit += ticks

    def run_tick(self) -> None:
        """Run one tick: send what was prepared, then prepare the next datagrams."""
        self.ticks += 1
        self.position += 1
        senders = list(self._live)
        # Back to back, one syscall per datagram, in the compiled core when it is built;
        # what cannot go straight to a socket goes through the transport.
        for sender, datagram in send_prepared(self._live.values()):
            sender._send(datagram)
        for sender in senders:
            if sender._live:
                sender._prepare()

    async def close(self) -> None:
        """Stop the clock (senders stay registered and restart it when they go live)."""
        task = self._task
        for sender in list(self._live):
            sender._go_idle()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


class AudioSender:
    """Sends a provider's Opus frames on a connection, paced by the loop's :class:`SendClock`.

    Speaking (microphone) is sent before the first frame; a provider returning ``None``
    gives five silence frames then Speaking 0, and new audio sends Speaking again; at the end
    of the stream (``EOFError``) the same silence is sent and the sender stops asking.
    Provider errors are logged and counted, never fatal. ``frame_hook`` (set by the DAVE
    layer) transforms each Opus frame before packing and may return ``None`` to hold it.

    RTP timing (PROTOCOL.md 4.1): the first packet after Speaking (a talkspurt's start)
    carries the marker bit, and a packet that follows ticks without one (a pause, a held
    frame, a stall the clock skipped, a reconnect) has its timestamp moved on by those
    ticks, so the timestamp keeps wall-clock time.
    """

    @overload
    def __init__(self, logger: logging.Logger, provider: OpusFrameProvider | None, conn: SenderConn, /, *,
                 clock: SendClock | None = None) -> None: ...

    @overload
    def __init__(self, provider: OpusFrameProvider | None, conn: SenderConn, /, *,
                 logger: logging.Logger | None = None, clock: SendClock | None = None) -> None: ...

    def __init__(self, *args: Any, logger: logging.Logger | None = None, clock: SendClock | None = None) -> None:
        provider: OpusFrameProvider | None
        conn: SenderConn
        if _seed_call("AudioSender", args, "provider, conn"):
            logger, provider, conn = args  # the seed's NewAudioSender(logger, provider, conn)
        else:
            provider, conn = args
        self._provider = provider
        self._conn = conn
        self._log = logger or _log
        self._clock = clock
        self.stats = FrameStats()
        self.frame_hook: Callable[[bytes], bytes | None] | None = None
        #: The datagram for the next tick and the socket it goes to (read by ``send_prepared``).
        self._slot = PreparedSlot(self, self.stats)
        #: The UDP connection the prepared datagram was encrypted for.
        self._prepared_udp: UDPConn | None = None
        self._live = False
        self._open = False
        self._speaking = False
        self._speaking_task: asyncio.Task[None] | None = None
        self._silence_left = 0
        self._tail_sent = False
        self._ended = False
        self._held: bytes | None = None
        #: The clock position the next packet would have if it followed the last one (None: no packet yet).
        self._next_position: int | None = None
        #: True until the first packet of the current talkspurt is packed.
        self._talkspurt_start = False

    @property
    def provider(self) -> OpusFrameProvider | None:
        """The frame provider."""
        return self._provider

    @property
    def speaking(self) -> bool:
        """True between Speaking (microphone) and Speaking 0."""
        return self._speaking

    @property
    def live(self) -> bool:
        """True while the clock works for this sender."""
        return self._live

    def set_provider(self, provider: OpusFrameProvider | None) -> None:
        """Play from ``provider`` from the next tick on (``None`` stops after the silence tail)."""
        self._provider = provider
        self._ended = False
        self._held = None
        if self._open:
            self._go_live()

    def open(self) -> None:
        """Start sending (seed: ``Open``)."""
        self._open = True
        if self._clock is None:
            self._clock = SendClock.for_loop()
        self._go_live()

    def _go_live(self) -> None:
        if not self._live and self._provider is not None and self._clock is not None:
            self._live = True
            self._clock._add(self)

    def _go_idle(self) -> None:
        if self._live:
            self._live = False
            self._clear_prepared()
            if self._clock is not None:
                self._clock._remove(self)

    def close(self) -> None:
        """Stop sending and close the provider (seed: ``Close``)."""
        self._open = False
        self._go_idle()
        if self._speaking_task is not None and not self._speaking_task.done():
            self._speaking_task.cancel()
        provider, self._provider = self._provider, None
        if provider is not None:
            try:
                provider.close()
            except Exception:
                self._log.exception("closing the Opus frame provider failed")

    # -- per tick ---------------------------------------------------------------------

    def reset_session(self) -> None:
        """The voice session changed (reconnect): announce Speaking again before the next frame."""
        self._clear_prepared()
        self._speaking = False
        self._tail_sent = False
        self._silence_left = 0
        if self._speaking_task is not None and not self._speaking_task.done():
            self._speaking_task.cancel()
        self._speaking_task = None

    def _clear_prepared(self) -> None:
        slot = self._slot
        slot.datagram = slot.target = None
        self._prepared_udp = None

    def _send(self, datagram: bytes) -> None:
        udp = self._conn.udp
        if udp is None or udp is not self._prepared_udp:
            return  # reconnecting: the datagram was encrypted for the old session
        udp.send_datagram(datagram)
        self.stats.sent += 1

    def _prepare(self) -> None:
        """Prepare the datagram the next tick sends."""
        if self._speaking_task is not None:
            if not self._speaking_task.done():
                # Speaking must reach the server before the next packet: wait for it.
                self.stats.nulled += 1
                return
            self._speaking_task = None
        if self._silence_left:
            self._pack(SILENCE_AUDIO_FRAME, silence=True)
            self._silence_left -= 1
            return
        if self._speaking and self._tail_sent:
            # The last silence frame left in this tick's send phase: now stop speaking.
            self._tail_sent = False
            self._set_speaking(False)
            udp = self._conn.udp
            if udp is not None:
                udp.restart_keepalive()  # audio stopped: keepalives from an interval on
            return
        frame: bytes | None
        if self._held is not None:
            frame, self._held = self._held, None
        else:
            frame = self._next_frame()
        if frame is not None:
            if not self._speaking:
                self._set_speaking(True)
                self._held = frame
                self.stats.nulled += 1
                return
            self._pack(frame, silence=False)
            return
        if self._speaking:
            self._silence_left = SILENCE_FRAMES - 1
            self._tail_sent = True
            self._pack(SILENCE_AUDIO_FRAME, silence=True)
            return
        self.stats.nulled += 1
        if self._ended or self._provider is None:
            # Nothing left to play (end of stream, or the provider was removed): off the clock
            # until set_provider gives it something again.
            self._go_idle()

    def _next_frame(self) -> bytes | None:
        provider = self._provider
        if provider is None or self._ended:
            return None
        try:
            return provider.provide_opus_frame()
        except EOFError:
            self._ended = True
            return None
        except Exception:
            self.stats.errors += 1
            if self.stats.errors <= 3 or self.stats.errors % 1000 == 0:
                self._log.exception("Opus frame provider failed (%d errors so far)", self.stats.errors)
            return None

    def _pack(self, frame: bytes, *, silence: bool) -> None:
        hook = self.frame_hook
        if hook is not None and not silence:
            frame = hook(frame)  # type: ignore[assignment]
            if frame is None:
                self.stats.nulled += 1
                return
        udp = self._conn.udp
        packetizer = None if udp is None else udp.packetizer
        if udp is None or packetizer is None:
            # No Session Description yet: nothing may be encrypted or sent.
            self.stats.nulled += 1
            return
        position = self._clock.position  # type: ignore[union-attr]  # _pack runs in the clock's tick
        slot = self._slot
        if position == self._next_position:
            slot.datagram = packetizer.packetize(frame)  # the stream goes on: nothing to adjust
        else:
            slot.datagram = self._pack_after_gap(packetizer, frame, position, silence)
        slot.target = udp.send_target
        self._next_position = position + 1
        self._prepared_udp = udp
        if silence:
            self.stats.silence += 1

    def _pack_after_gap(self, packetizer: Packetizer, frame: bytes, position: int, silence: bool) -> bytes:
        """Pack a packet that does not follow the previous one on the schedule (or the first).

        A talkspurt's first packet is always one of these: Speaking goes out on a tick that
        packs nothing, so the marker is set here, off the per-tick path.
        """
        expected = self._next_position
        if expected is not None and position > expected:
            # Ticks went by without a packet: the timestamp counts them (wall-clock time).
            packetizer.timestamp = (packetizer.timestamp + _SAMPLES_PER_TICK * (position - expected)) & 0xFFFFFFFF
        if self._talkspurt_start and not silence:
            self._talkspurt_start = False
            return packetizer.packetize(frame, marker=True)
        return packetizer.packetize(frame)

    def _set_speaking(self, on: bool) -> None:
        self._speaking = on
        self._talkspurt_start = on
        flags = _MICROPHONE if on else _NOT_SPEAKING
        self._speaking_task = asyncio.get_running_loop().create_task(self._send_speaking(flags))

    async def _send_speaking(self, flags: int) -> None:
        try:
            await self._conn.set_speaking(flags)
        except Exception as exc:
            self._log.warning("could not send Speaking %d: %s", flags, exc)


class _PendingSSRC:
    __slots__ = ("packets", "timer")

    def __init__(self, timer: asyncio.TimerHandle) -> None:
        self.packets: list[Packet] = []
        self.timer = timer


class AudioReceiver:
    """Delivers each user's Opus frames from a connection to an :class:`OpusFrameReceiver`.

    Packets are mapped to users through ``ssrcs`` (filled from op 5). Packets of an SSRC not
    mapped yet are held for up to ``hold_seconds`` (at most ``hold_packets`` per SSRC and
    ``hold_ssrcs`` SSRCs), then delivered when op 5 maps it (:meth:`ssrc_mapped`) or dropped.
    ``frame_hook(user_id, opus)`` may transform or drop (``None``) a frame. The DAVE layer sets
    ``packet_hook(user_id, packet, deliver)`` instead: it decrypts ``packet.opus`` in place and
    returns True to deliver it now, or False when it dropped the packet or keeps it for later
    (a frame that came before its key), to pass it to ``deliver`` (:meth:`deliver_decrypted`)
    once decrypted. Receiver exceptions are logged and counted, never raised into the socket.
    """

    @overload
    def __init__(self, logger: logging.Logger, receiver: OpusFrameReceiver, conn: ReceiverConn, /, *,
                 hold_seconds: float = 1.0, hold_packets: int = 50, hold_ssrcs: int = 32) -> None: ...

    @overload
    def __init__(self, receiver: OpusFrameReceiver, udp: UDPConn, ssrcs: SSRCTable, /, *,
                 user_filter: UserFilterFunc | None = None, logger: logging.Logger | None = None,
                 hold_seconds: float = 1.0, hold_packets: int = 50, hold_ssrcs: int = 32) -> None: ...

    def __init__(self, *args: Any, user_filter: UserFilterFunc | None = None, logger: logging.Logger | None = None,
                 hold_seconds: float = 1.0, hold_packets: int = 50, hold_ssrcs: int = 32) -> None:
        receiver: OpusFrameReceiver
        udp: UDPConn | None
        ssrcs: SSRCTable
        if _seed_call("AudioReceiver", args, "receiver, udp, ssrcs"):
            # The seed's NewAudioReceiver(logger, receiver, conn): the rest comes from the connection.
            logger, receiver, conn = args
            udp, ssrcs, user_filter = conn.udp, conn.ssrcs, conn.user_filter
            if udp is None:
                raise ValueError("AudioReceiver(logger, receiver, conn) needs a connection with a UDP connection "
                                 "(conn.udp is None: build it once the connection is Ready)")
        else:
            receiver, udp, ssrcs = args
        self._receiver = receiver
        self._udp = udp
        self._ssrcs = ssrcs
        self._filter = user_filter
        self._log = logger or _log
        self._hold_seconds = hold_seconds
        self._hold_packets = hold_packets
        self._hold_ssrcs = hold_ssrcs
        self._pending: dict[int, _PendingSSRC] = {}
        self.frame_hook: Callable[[int, bytes], bytes | None] | None = None
        self.packet_hook: Callable[[int, Packet, Callable[[int, Packet], None]], bool] | None = None
        self._closed = False
        #: Packets delivered, dropped (unmapped too long / hook refused / filtered), receiver errors.
        self.delivered = 0
        self.dropped = 0
        self.errors = 0

    @property
    def receiver(self) -> OpusFrameReceiver:
        """The frame receiver."""
        return self._receiver

    def open(self) -> None:
        """Start receiving (seed: ``Open``)."""
        self._udp.set_packet_handler(self.handle_packet, self._ssrcs)

    def attach(self, udp: UDPConn) -> None:
        """Receive from ``udp`` from now on (a reconnect's new socket); the old one is released."""
        if udp is not self._udp:
            self._udp.set_packet_handler(None)
            self._udp = udp
        self.open()

    def handle_packet(self, packet: Packet) -> None:
        """Route one decrypted packet to its user (called by the UDP connection).

        The connection's router has already looked the SSRC up in ``ssrcs`` and dropped
        repeats: a packet arrives with ``user_id`` set, or ``None`` for an SSRC not mapped
        yet, which is held (see :meth:`ssrc_mapped`).
        """
        user_id = packet.user_id
        if user_id is None:
            self._hold(packet)
            return
        self._deliver(user_id, packet)

    def _deliver(self, user_id: int, packet: Packet) -> None:
        if self._filter is not None and not self._filter(user_id):
            return
        if self.packet_hook is not None:
            if packet.opus != SILENCE_AUDIO_FRAME and not self.packet_hook(user_id, packet, self.deliver_decrypted):
                return
        elif self.frame_hook is not None and packet.opus != SILENCE_AUDIO_FRAME:
            opus = self.frame_hook(user_id, packet.opus)
            if opus is None:
                self.dropped += 1
                return
            packet.opus = opus
        self.deliver_decrypted(user_id, packet)

    def deliver_decrypted(self, user_id: int, packet: Packet) -> None:
        """Hand a packet whose ``opus`` is final to the frame receiver (no filter, no hook)."""
        if self._closed:
            return
        try:
            self._receiver.receive_opus_frame(user_id, packet)
            self.delivered += 1
        except Exception:
            self.errors += 1
            if self.errors <= 3 or self.errors % 1000 == 0:
                self._log.exception("Opus frame receiver failed (%d errors so far)", self.errors)

    def _hold(self, packet: Packet) -> None:
        pending = self._pending.get(packet.ssrc)
        if pending is None:
            if len(self._pending) >= self._hold_ssrcs:
                self.dropped += 1
                return
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._hold_seconds, self._expire, packet.ssrc)
            pending = self._pending[packet.ssrc] = _PendingSSRC(timer)
        if len(pending.packets) >= self._hold_packets:
            self.dropped += 1
            return
        pending.packets.append(packet)

    def _expire(self, ssrc: int) -> None:
        pending = self._pending.pop(ssrc, None)
        if pending is not None:
            self.dropped += len(pending.packets)

    def ssrc_mapped(self, ssrc: int) -> None:
        """Op 5 mapped ``ssrc``: deliver the packets held for it, in arrival order."""
        pending = self._pending.pop(ssrc, None)
        if pending is None:
            return
        pending.timer.cancel()
        entry = self._ssrcs.lookup(ssrc)
        if entry is None:
            self.dropped += len(pending.packets)
            return
        for packet in pending.packets:
            if entry.accept(packet.sequence):
                packet.user_id = entry.user_id
                self._deliver(entry.user_id, packet)

    def cleanup_user(self, user_id: int) -> None:
        """Op 13: forget the user's SSRCs and let the receiver free its state."""
        self._ssrcs.remove_user(user_id)
        try:
            self._receiver.cleanup_user(user_id)
        except Exception:
            self._log.exception("Opus frame receiver cleanup failed")

    def close(self) -> None:
        """Stop receiving and close the receiver (seed: ``Close``)."""
        self._closed = True
        self._udp.set_packet_handler(None)
        for pending in self._pending.values():
            pending.timer.cancel()
        self._pending.clear()
        try:
            self._receiver.close()
        except Exception:
            self._log.exception("closing the Opus frame receiver failed")


#: Creates an AudioSender (seed: ``AudioSenderCreateFunc``).
AudioSenderCreateFunc = Callable[..., AudioSender]
#: Creates an AudioReceiver (seed: ``AudioReceiverCreateFunc``).
AudioReceiverCreateFunc = Callable[..., AudioReceiver]
