"""Recording a call: :class:`CallRecorder` writes one time-aligned track per user and a mix.

A :class:`CallRecorder` is an :class:`~fastvoice.OpusFrameReceiver` (give it to
``conn.set_opus_frame_receiver`` or to ``VoiceClient.listen``).  It owns a
:class:`~fastvoice.PlayoutReceiver` and listens to its 20 ms timeline: every tick says, per
user, the Opus packet played (or that it was concealed), its PCM, or that the user was silent.
The recording starts at the recorder's first tick, and every file has exactly one 20 ms frame
per tick from there on, so all tracks and the mix stay aligned sample for sample:

- ``<user_id>.ogg``: the user's Opus packets as received, without re-encoding.  RFC 7845
  allows no gap in an Ogg Opus stream's granule positions, so the ticks without a packet are
  filled with packets (section 4.4): a concealed tick with a packet asking the player's
  decoder to conceal 20 ms (a TOC byte and a zero-length frame), a silent tick with a silence
  frame, and the ticks before the user's first packet with concealment packets too (a decoder
  that has had no packet yet plays silence for them and keeps its fresh state, so the track
  decodes as the call's playout did).  Pre-skip is 0: decoded, the track lines up with the
  WAV tracks and the mix.
- ``<user_id>.wav``: the PCM the playout played for the user (silence when silent), at the
  receiver's rate and channels.
- ``mix.wav``: the sum of every user's PCM, clipped to 16 bits.

A user who joins late gets a track that starts at the recording's start (silence before); a
user who leaves keeps a track of the call's length: its files are closed while the user is
away (so a recording holds open only the files of the users present) and padded with silence
when the user comes back or the recording ends.  Ticks the timeline lost (a blocked loop, an
overloaded decode pool) and ticks the recorder dropped are filled the same way: the tracks lose
that audio, never their alignment.

Files are valid while they are written: Ogg pages go to the file once a second (50 packets),
and WAV headers are rewritten for what was written every ``flush_interval`` and at the end.
All disk work happens in a :class:`RecordingWriter` thread (one per process, shared by every
recorder): the tick listener only queues the tick, at most ``max_pending`` per recorder
(ten seconds by default); past that ticks are dropped and counted (``dropped``).  A
:class:`~fastvoice.ThreadedOpusFrameReceiver` does not fit here: it would move the playout off
the event loop, whose clock drives it.  On :meth:`CallRecorder.close` (the connection calls it),
when the recorder is collected, and at interpreter exit (an exception that ends the program
included), the writer finishes every file: tracks padded to the call's length, the Ogg
end-of-stream pages, the final WAV headers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import weakref
from pathlib import Path
from typing import Any

from .ogg_writer import OggOpusWriter, concealment_packet, fill_packets
from .opus_packet import packet_samples
from .playout_receiver import PlayoutReceiver
from .resample import mix_pcm
from .rtp import Packet
from .timeline import FRAME, PlayoutClock, VoiceTick
from .wav import WavWriter

__all__ = ["CallRecorder", "RecordingWriter", "FORMATS"]

_log = logging.getLogger("fastvoice.record")

#: The per-user track formats a recorder can write.
FORMATS = ("ogg", "wav")
#: 48 kHz samples (Ogg granule units) per tick.
_TICK_SAMPLES = 960
_FINISH = object()


def _check_formats(formats: object) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    try:
        chosen: tuple[object, ...] = tuple(formats)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"formats must be a sequence of format names, not {type(formats).__name__}") from None
    for name in chosen:
        if name not in FORMATS:
            raise ValueError(f"unknown recording format {str(name)[:20]!r}: expected 'ogg' and/or 'wav'")
    return tuple(name for name in FORMATS if name in chosen)


class _Track:
    """The files of one user (used by the writer thread only)."""

    __slots__ = ("user_id", "ogg", "ogg_path", "ogg_file", "wav", "ticks", "spoke", "last", "present")

    def __init__(self, session: _Session, user_id: int) -> None:
        self.user_id = user_id
        self.ogg: OggOpusWriter | None = None
        self.ogg_path: Path | None = None
        self.ogg_file: Any = None
        self.wav: WavWriter | None = None
        self.ticks = 0  # WAV ticks written
        self.spoke = False  # a packet was played: silent ticks are silence from now on
        self.last: bytes | None = None  # the last packet played (concealment continues it)
        self.present = True
        if "ogg" in session.formats:
            self.ogg = OggOpusWriter(vendor=session.vendor, comments=[f"DISCORD_USER_ID={user_id}"])
            self.ogg_path = session.directory / f"{user_id}.ogg"
            # Unbuffered: each page goes to the file in one write, so a reader never sees half of one.
            self.ogg_file = open(self.ogg_path, "w+b", buffering=0)  # noqa: SIM115 - closed by park() / finish()
            self.ogg_file.write(self.ogg.header_pages())
        if "wav" in session.formats:
            try:
                self.wav = WavWriter(session.directory / f"{user_id}.wav", session.sample_rate, session.channels)
            except BaseException:
                if self.ogg_file is not None:
                    self.ogg_file.close()
                raise

    def _ogg_write(self, packet: bytes, samples: int | None = None) -> None:
        assert self.ogg is not None
        page = self.ogg.write(packet, samples)
        if page:
            self._ogg_out(page)

    def _ogg_out(self, data: bytes) -> None:
        file = self.ogg_file
        if file is None:
            file = self.ogg_file = open(self.ogg_path, "r+b", buffering=0)  # type: ignore[arg-type]  # noqa: SIM115
            file.seek(0, os.SEEK_END)
        file.write(data)

    def _ogg_fill(self, until: int) -> None:
        """Fill the Ogg track up to sample ``until``: silence once the user has spoken, before
        that concealment (silence from a decoder that has had no packet)."""
        ogg = self.ogg
        assert ogg is not None
        gap = until - ogg.granule
        if gap <= 0:
            return
        gap -= gap % 120
        for packet in fill_packets(gap, silence=self.spoke, previous=self.last):
            self._ogg_write(packet)

    def write(self, r: int, tick: VoiceTick, silence: bytes, session: _Session) -> None:
        """Write tick ``r`` (counted from the recording's start) of this user."""
        self.present = True
        user = self.user_id
        if self.ogg is not None:
            start = r * _TICK_SAMPLES
            self._ogg_fill(start)
            if user in tick.speaking:
                opus = tick.packets.get(user)
                samples = None if opus is None else packet_samples(opus)
                if samples is None:  # concealed (or a packet libopus refused: concealed too)
                    opus, samples = concealment_packet(self.last), _TICK_SAMPLES
                    session.concealed += 1
                else:
                    self.last = opus
                    self.spoke = True
                if self.ogg.granule < start + _TICK_SAMPLES:  # not covered by a longer packet before
                    self._ogg_write(opus, samples)  # type: ignore[arg-type]  # set on both branches
            else:
                self._ogg_fill(start + _TICK_SAMPLES)
        wav = self.wav
        if wav is not None:
            if self.ticks < r:
                wav.write_silence((r - self.ticks) * len(silence))
            wav.write(tick.speaking.get(user, silence))
            self.ticks = r + 1

    def sync(self) -> None:
        if self.wav is not None:
            self.wav.sync()

    def park(self) -> None:
        """The user left: close the files until the user comes back (or the recording ends)."""
        self.present = False
        file, self.ogg_file = self.ogg_file, None
        try:
            if file is not None:
                file.close()
        finally:
            if self.wav is not None:
                self.wav.suspend()

    def finish(self, end: int, silence: bytes) -> None:
        """Pad to ``end`` ticks, write the end-of-stream page, close the files."""
        try:
            if self.ogg is not None and not self.ogg.finished:
                self._ogg_fill(end * _TICK_SAMPLES)
                self._ogg_out(self.ogg.finish(end * _TICK_SAMPLES))
            if self.wav is not None and self.ticks < end:
                self.wav.write_silence((end - self.ticks) * len(silence))
                self.ticks = end
        finally:
            try:
                file, self.ogg_file = self.ogg_file, None
                if file is not None:
                    file.close()
            finally:
                if self.wav is not None:
                    self.wav.close()


class _Session:
    """What a recorder writes, on the writer thread (``lock`` guards it)."""

    def __init__(self, directory: Path, formats: tuple[str, ...], mix: bool, sample_rate: int, channels: int,
                 flush_ticks: int, writer: RecordingWriter, logger: logging.Logger) -> None:
        from . import __version__

        self.directory = directory
        self.formats = formats
        self.want_mix = mix
        self.sample_rate = sample_rate
        self.channels = channels
        self.flush_ticks = flush_ticks
        self.writer = writer
        self.log = logger
        self.vendor = f"fastvoice {__version__}"
        self.silence = bytes(sample_rate // 50 * channels * 2)
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.tracks: dict[int, _Track] = {}
        self.users: frozenset[int] = frozenset()
        self.mix: WavWriter | None = None
        self.origin: int | None = None
        self.end = 0  # ticks written so far, counted from the origin (gaps included)
        # Ticks the recorder has seen (written or dropped), set on the event loop: the files are
        # padded to this length at the end, so ticks dropped last shorten no track.
        self.seen = 0
        self.since_sync = 0
        self.closed = False
        # Counters (written by the writer thread, read anywhere).
        self.done = 0
        self.ticks = 0
        self.gaps = 0
        self.concealed = 0
        self.errors = 0
        self.refused_users = 0

    def _failed(self, what: str) -> None:
        self.errors += 1
        if self.errors <= 3 or self.errors % 1000 == 0:
            self.log.exception("recording %s: %s failed (%d errors so far)", self.directory.name[:60], what,
                               self.errors)

    def write_tick(self, tick: VoiceTick) -> None:
        try:
            with self.lock:
                if not self.closed:
                    self._write(tick)
        except Exception:
            self._failed(f"writing tick {tick.index}")
        finally:
            self.done += 1

    def _write(self, tick: VoiceTick) -> None:
        if self.origin is None:  # the recorder sets it before queuing its first tick
            self.origin = tick.index
        if self.want_mix and self.mix is None:
            self.want_mix = False
            self.mix = WavWriter(self.directory / "mix.wav", self.sample_rate, self.channels)
        r = tick.index - self.origin
        if r < self.end:
            return  # never happens: ticks come in order
        self.gaps += r - self.end
        self.end = r + 1
        self.ticks += 1
        silence = self.silence
        if self.mix is not None:
            if self.mix.frames < r * (self.sample_rate // 50):
                self.mix.write_silence(r * len(silence) - self.mix.data_bytes)
            voices = list(tick.speaking.values())
            self.mix.write(mix_pcm(voices) if voices else silence)
        tracks = self.tracks
        for user_id in tick.users:
            track = tracks.get(user_id)
            if track is None:
                if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
                    self.refused_users += 1  # never a file name from anything but a snowflake
                    continue
                try:
                    track = tracks[user_id] = _Track(self, user_id)
                except Exception:
                    self._failed(f"opening the files of user {user_id}")
                    continue
                self.users = frozenset(tracks)
            try:
                track.write(r, tick, silence, self)
            except Exception:
                self._failed(f"writing user {user_id}'s tick {tick.index}")
        for user_id, track in tracks.items():
            if track.present and user_id not in tick.users:
                try:
                    track.park()
                except Exception:
                    self._failed(f"closing user {user_id}'s files")
        self.since_sync += 1
        if self.since_sync >= self.flush_ticks:
            self.since_sync = 0
            self._sync()

    def _sync(self) -> None:
        for track in self.tracks.values():
            if track.present:
                track.sync()
        if self.mix is not None:
            self.mix.sync()

    def finish(self) -> None:
        """Pad every track to the recording's length and close every file (idempotent)."""
        try:
            with self.lock:
                if self.closed:
                    return
                self.closed = True
                if self.seen > self.end:
                    self.gaps += self.seen - self.end
                    self.end = self.seen
                for user_id, track in self.tracks.items():
                    try:
                        track.finish(self.end, self.silence)
                    except Exception:
                        self._failed(f"finishing user {user_id}'s files")
                if self.want_mix and self.mix is None and self.end:  # every tick was dropped
                    try:
                        self.mix = WavWriter(self.directory / "mix.wav", self.sample_rate, self.channels)
                    except Exception:
                        self._failed("opening the mix")
                if self.mix is not None:
                    try:
                        if self.mix.frames < self.end * (self.sample_rate // 50):
                            self.mix.write_silence(self.end * len(self.silence) - self.mix.data_bytes)
                        self.mix.close()
                    except Exception:
                        self._failed("finishing the mix")
        finally:
            _live_sessions.discard(self)
            self.finished.set()


# Sessions not finished yet, and writers still running: at interpreter exit the first are
# finished (behind the ticks already queued) and the second stopped, before the interpreter
# joins their threads.  ``threading._register_atexit`` is what concurrent.futures (and
# ThreadedOpusFrameReceiver) use for this; without it the writer threads are daemons.
_live_sessions: weakref.WeakSet[_Session] = weakref.WeakSet()
_live_writers: weakref.WeakSet[RecordingWriter] = weakref.WeakSet()
_register_atexit = getattr(threading, "_register_atexit", None)
_atexit_registered = False
_registry_lock = threading.Lock()


def _finish_at_exit() -> None:
    for session in list(_live_sessions):
        session.writer.finish(session)
    for writer in list(_live_writers):
        writer.close()


class RecordingWriter:
    """A thread that writes recordings: every :class:`CallRecorder` queues its ticks to one,
    and it writes them in order, per recorder (disk writes, mixing, Ogg pages: all off the
    event loop).  :meth:`shared` is the process's writer, created on first use; a writer of your
    own isolates a recording from the others' disks.  :meth:`close` stops the thread once what
    is queued is written; at interpreter exit every writer finishes its recordings and stops.
    Counters: ``ticks`` written (all recorders), ``errors``."""

    _shared: RecordingWriter | None = None
    _shared_lock = threading.Lock()

    def __init__(self, *, name: str = "fastvoice-record") -> None:
        global _atexit_registered
        self._queue: queue.SimpleQueue[tuple[_Session, Any] | None] = queue.SimpleQueue()
        self._closed = False
        self.ticks = 0
        self.errors = 0
        with _registry_lock:
            if _register_atexit is not None and not _atexit_registered:
                _register_atexit(_finish_at_exit)
                _atexit_registered = True
            _live_writers.add(self)
        self._thread = threading.Thread(target=self._run, name=name, daemon=_register_atexit is None)
        self._thread.start()

    @classmethod
    def shared(cls) -> RecordingWriter:
        """The process's writer, created on first use (and again if it was closed)."""
        with cls._shared_lock:
            writer = cls._shared
            if writer is None or writer._closed:
                writer = cls._shared = cls(name="fastvoice-record")
            return writer

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def pending(self) -> int:
        """Items queued and not written yet."""
        return self._queue.qsize()

    def _put(self, session: _Session, item: Any) -> bool:
        if self._closed:
            return False
        self._queue.put((session, item))
        return True

    def finish(self, session: _Session) -> None:
        """Finish ``session``'s files behind its queued ticks (at once, here, if the thread is gone)."""
        if self._closed or not self._thread.is_alive() or not self._put(session, _FINISH):
            session.finish()

    def close(self) -> None:
        """Stop the thread once everything queued is written (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread of a closed writer to end; False if ``timeout`` passed first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            session, work = item
            try:
                if work is _FINISH:
                    session.finish()
                else:
                    session.write_tick(work)
                    self.ticks += 1
            except Exception:  # pragma: no cover - sessions count their own errors
                self.errors += 1
                _log.exception("the recording writer failed")

    def __repr__(self) -> str:
        return f"RecordingWriter(pending={self.pending}, ticks={self.ticks}, closed={self._closed})"


def _finish(writer: RecordingWriter, session: _Session) -> None:
    writer.finish(session)


class CallRecorder:
    """Records a call into ``directory``: one time-aligned track per user (``formats``: ``"ogg"``
    and/or ``"wav"``) and, with ``mix``, ``mix.wav`` (see the module docstring).

    - ``playout``: the :class:`~fastvoice.PlayoutReceiver` whose timeline is recorded (the
      recorder owns it: it closes it); by default one made with ``sample_rate``, ``channels``
      (the WAV files' format), ``decode_threads`` and ``clock``.  Its other consumers
      (``recorder.playout.utterances()``) see the same ticks;
    - ``max_pending``: ticks that may wait for the writer (500: 10 s); ``flush_interval``:
      seconds of the call between WAV header updates and flushes to the system;
    - ``writer``: the :class:`RecordingWriter` (default: the process's shared one).

    The recording starts with the first tick of the timeline, which starts here: create the
    recorder on the event loop (or give a ``clock``).  ``directory`` is created if needed;
    files of the same names in it are replaced.  :meth:`close` ends the recording (the
    connection calls it when it closes); :meth:`wait_closed` waits for the files to be final.
    ``with`` / ``async with`` close it when the block ends, an exception included (``async
    with`` also waits for the files); a recorder never closed is finished when it is collected
    or at interpreter exit.
    """

    def __init__(self, directory: str | os.PathLike[str], formats: tuple[str, ...] | list[str] | str = FORMATS,
                 mix: bool = True, *, playout: PlayoutReceiver | None = None, sample_rate: int = 48000,
                 channels: int = 2, decode_threads: int | None = None, clock: PlayoutClock | None = None,
                 max_pending: int = 500, flush_interval: float = 1.0, writer: RecordingWriter | None = None,
                 logger: logging.Logger | None = None) -> None:
        if playout is not None and not isinstance(playout, PlayoutReceiver):
            raise TypeError(f"playout must be a PlayoutReceiver, not {type(playout).__name__}")
        if clock is None and (playout is None or playout.clock is None):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("a CallRecorder starts recording at once: create it on the running event loop "
                                   "(or give clock=)") from None
        chosen = _check_formats(formats)
        if not chosen and not mix:
            raise ValueError("nothing to record: give formats ('ogg', 'wav') or mix=True")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an int >= 1, got {max_pending!r}"[:100])
        if isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float)) or \
                not 0 < flush_interval <= 3600:
            raise ValueError(f"flush_interval must be a number of seconds in (0, 3600], got {flush_interval!r}"[:100])
        if playout is None:
            playout = PlayoutReceiver(sample_rate, channels, decode_threads=decode_threads, clock=clock)
        if writer is not None and not isinstance(writer, RecordingWriter):
            raise TypeError(f"writer must be a RecordingWriter, not {type(writer).__name__}")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._directory = path
        self._formats = chosen
        self._mix = bool(mix)
        self._playout = playout
        self._writer = writer or RecordingWriter.shared()
        self._log = logger or _log
        self._session = _Session(path, chosen, self._mix, playout.sample_rate, playout.channels,
                                 max(1, round(flush_interval / FRAME)), self._writer, self._log)
        _live_sessions.add(self._session)
        self._max_pending = max_pending
        self._queued = 0
        self._closed = False
        #: Ticks not recorded because ``max_pending`` waited for the writer (filled with silence).
        self.dropped = 0
        # Finishes the files when the recorder is closed, collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _finish, self._writer, self._session)
        playout.add_listener(self._on_tick)

    # -- properties ----------------------------------------------------------------------------

    @property
    def playout(self) -> PlayoutReceiver:
        """The playout receiver whose timeline is recorded."""
        return self._playout

    @property
    def directory(self) -> Path:
        """Where the files are written."""
        return self._directory

    @property
    def formats(self) -> tuple[str, ...]:
        """The per-user track formats written."""
        return self._formats

    @property
    def mix_path(self) -> Path | None:
        """The mix's file (None without ``mix``)."""
        return self._directory / "mix.wav" if self._mix else None

    def path(self, user_id: int, format: str) -> Path:
        """The file of ``user_id``'s track in ``format`` (``"ogg"`` or ``"wav"``)."""
        if format not in self._formats:
            raise ValueError(f"this recorder writes no {str(format)[:20]!r} tracks (formats: {self._formats})")
        return self._directory / f"{int(user_id)}.{format}"

    @property
    def users(self) -> frozenset[int]:
        """Users with a track so far."""
        return self._session.users

    @property
    def ticks(self) -> int:
        """Ticks written so far (the recording lasts ``duration`` seconds)."""
        return self._session.ticks

    @property
    def duration(self) -> float:
        """Seconds of the call recorded so far (each track and the mix lasts that long once
        finished)."""
        return self._session.end * FRAME

    @property
    def gaps(self) -> int:
        """Ticks lost before the recorder (by the timeline) or dropped by it, filled with silence."""
        return self._session.gaps

    @property
    def errors(self) -> int:
        """Failures writing files (logged)."""
        return self._session.errors

    @property
    def pending(self) -> int:
        """Ticks queued for the writer and not written yet."""
        return self._queued - self._session.done

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def finished(self) -> bool:
        """True once every file is final (padded, end-of-stream page written, headers right)."""
        return self._session.finished.is_set()

    # -- the OpusFrameReceiver protocol --------------------------------------------------------

    def receive_opus_frame(self, user_id: int, packet: Packet) -> None:
        """Hand the packet to the playout receiver (called by the connection, on the loop)."""
        self._playout.receive_opus_frame(user_id, packet)

    def cleanup_user(self, user_id: int) -> None:
        """The user left (op 13): the playout plays out what it has; the user's track is then
        padded with silence (and its files closed) until the user comes back."""
        self._playout.cleanup_user(user_id)

    def close(self) -> None:
        """End the recording: the playout receiver closes, the writer finishes the files behind
        the ticks already queued (:meth:`wait_closed` waits for it).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._playout.remove_listener(self._on_tick)
        try:
            self._playout.close()
        finally:
            self._finalizer()

    def join(self, timeout: float | None = None) -> bool:
        """Block until the files are final; False if ``timeout`` passed first."""
        return self._session.finished.wait(timeout)

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Like :meth:`join`, without blocking the event loop."""
        if self._session.finished.is_set():
            return True
        return await asyncio.to_thread(self._session.finished.wait, timeout)

    def __enter__(self) -> CallRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> CallRecorder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close, and wait for the files to be final (an exception leaving the block included)."""
        self.close()
        await self.wait_closed()

    # -- the tick listener ---------------------------------------------------------------------

    def _on_tick(self, tick: VoiceTick) -> None:
        if self._closed:
            return
        session = self._session
        if session.origin is None:
            session.origin = tick.index  # before the first tick is queued: the writer sees it
        session.seen = tick.index - session.origin + 1
        if self._queued - self._session.done >= self._max_pending or not self._writer._put(self._session, tick):
            self.dropped += 1
            return
        self._queued += 1

    def __repr__(self) -> str:
        return (f"CallRecorder({self._directory.name!r}, formats={self._formats}, mix={self._mix}, "
                f"users={len(self._session.users)}, ticks={self._session.ticks}, closed={self._closed})")
