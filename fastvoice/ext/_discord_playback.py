"""Audio sources and playback for :mod:`fastvoice.ext.discord`: what one ``play()`` hands the
connection, and how discord.py's ffmpeg sources are read without blocking the event loop.

An ffmpeg source's stdout is switched to non-blocking and read by the loop
(``loop.add_reader``) into a bounded read-ahead buffer (:data:`READ_AHEAD_FRAMES`); the
:class:`Playback` is the :class:`~fastvoice.OpusFrameProvider` the send clock asks every 20 ms.
The discord.py private names this needs are used through :mod:`._discord_privates` only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from discord import opus as _discord_opus
from discord.errors import ClientException
from discord.player import AudioSource, FFmpegAudio, FFmpegOpusAudio, FFmpegPCMAudio

from ..ogg import OggOpusDemuxer
from ._discord_privates import ffmpeg_exit_error, ffmpeg_pipe, install_read, installed_reader, load_default_opus

__all__ = [
    "PCM_FRAME_BYTES",
    "READ_AHEAD_FRAMES",
    "PipeReader",
    "Playback",
    "Underrun",
    "attach_reader",
    "ffmpeg_sources",
    "opus_encoder",
]

_log = logging.getLogger("fastvoice.ext.discord")

#: One 20 ms PCM frame as discord.py's AudioSources produce it: 960 samples, 16-bit, stereo, 48 kHz.
PCM_FRAME_BYTES = 3840
_PCM_FRAME_SAMPLES = 960
#: Frames of an ffmpeg source read ahead of the send clock (2 s).
READ_AHEAD_FRAMES = 100
#: How long a finished ffmpeg gets to exit on its own before it is killed, and then to die.
_EXIT_GRACE = 2.0
_KILL_WAIT = 5.0


# -- reading discord.py's ffmpeg sources without blocking ------------------------------------


class Underrun(Exception):
    """A read-ahead buffer is empty but its stream goes on: nothing to send on this tick."""


class PipeReader:
    """Reads one discord.py ffmpeg source's stdout on the event loop into a bounded buffer.

    The source's ``read`` is replaced (on the instance) by :meth:`read`, so wrappers such as
    ``PCMVolumeTransformer`` that call ``original.read()`` get the buffered frames too.
    """

    def __init__(self, source: FFmpegAudio, *, ogg: bool, loop: asyncio.AbstractEventLoop,
                 limit: int = READ_AHEAD_FRAMES) -> None:
        pipe = ffmpeg_pipe(source)
        if pipe is None:
            raise ValueError(f"{type(source).__name__} has no ffmpeg process and pipe to read")
        self.source = source
        self.process, self._pipe = pipe
        self._fd = self._pipe.fileno()
        self._loop = loop
        self._limit = limit
        self._ogg = OggOpusDemuxer() if ogg else None
        self._pcm = bytearray()
        self._frames: deque[bytes] = deque()
        self._reading = False
        self.ended = False
        self.error: BaseException | None = None
        self._start_reading()  # first: a loop without add_reader (Windows' proactor) raises here
        os.set_blocking(self._fd, False)
        install_read(source, self, self.read)

    def _start_reading(self) -> None:
        if not self._reading and not self.ended:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def stop_reading(self) -> None:
        """Stop watching the pipe (the buffered frames stay readable)."""
        if self._reading:
            self._reading = False
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError, RuntimeError):
                pass  # the fd or the loop is already closed

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        try:
            if not data:
                if self._ogg is not None:
                    self._ogg.feed_eof()
                    self._take_packets()
                self._end(None)
                return
            if self._ogg is not None:
                self._ogg.feed(data)
                self._take_packets()
            else:
                pcm = self._pcm
                pcm += data
                usable = len(pcm) - len(pcm) % PCM_FRAME_BYTES
                for start in range(0, usable, PCM_FRAME_BYTES):
                    self._frames.append(bytes(pcm[start:start + PCM_FRAME_BYTES]))
                del pcm[:usable]
        except ValueError as exc:  # fastvoice.ogg.OggError: not the Ogg Opus ffmpeg should write
            self._end(exc)
            return
        if len(self._frames) >= self._limit:
            self.stop_reading()  # back-pressure: ffmpeg blocks on its full pipe

    def _take_packets(self) -> None:
        assert self._ogg is not None
        try:
            while (packet := self._ogg.read_packet()) is not None:
                self._frames.append(packet)
        except EOFError:
            pass

    def _end(self, error: BaseException | None) -> None:
        self.ended = True
        self.error = error
        self.stop_reading()

    def read(self) -> bytes:
        """The next frame; ``b""`` at the end; raises :class:`Underrun` while ffmpeg is behind."""
        frames = self._frames
        if frames:
            frame = frames.popleft()
            if not self._reading and not self.ended and len(frames) <= self._limit // 2:
                self._start_reading()
            return frame
        if self.ended:
            if self.error is not None:
                raise self.error
            return b""
        raise Underrun

    async def reap(self, *, wait_for_exit: bool) -> None:
        """Make sure ffmpeg is gone, without blocking the loop: let it exit (if it is finishing), else kill it."""
        self.stop_reading()
        self.ended = True
        process = self.process
        if not hasattr(process, "poll"):
            return
        loop = self._loop
        if wait_for_exit:
            deadline = loop.time() + _EXIT_GRACE
            while process.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.02)
        if process.poll() is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
            deadline = loop.time() + _KILL_WAIT
            while process.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if process.poll() is None:
                _log.warning("ffmpeg process %s did not exit after SIGKILL", process.pid)

    def exit_error(self) -> BaseException | None:
        """The error of an ffmpeg that exited with a non-zero code (discord.py's own check when it has one)."""
        error = ffmpeg_exit_error(self.source)
        if error is not None:
            return error
        code = getattr(self.process, "returncode", None)
        if code:
            return ClientException(f"ffmpeg exited with code {code}")
        return None

    def close_pipe(self) -> None:
        """Close ffmpeg's stdout (after the process is gone)."""
        self.stop_reading()
        try:
            self._pipe.close()
        except Exception:  # pragma: no cover - closing a pipe we own
            pass


def ffmpeg_sources(source: Any) -> Iterator[FFmpegAudio]:
    """The ffmpeg sources ``source`` reads from: itself, or what it wraps (``original``)."""
    current = source
    for _ in range(16):
        if isinstance(current, FFmpegAudio):
            yield current
            return
        current = getattr(current, "original", None)
        if not isinstance(current, AudioSource):
            return


def attach_reader(source: FFmpegAudio, loop: asyncio.AbstractEventLoop) -> PipeReader | None:
    reader = installed_reader(source)
    if isinstance(reader, PipeReader):
        return reader
    if ffmpeg_pipe(source) is None:
        return None  # already cleaned up: read() will end the playback
    kind = type(source).read
    if kind is FFmpegOpusAudio.read or kind is FFmpegPCMAudio.read:
        try:
            return PipeReader(source, ogg=kind is FFmpegOpusAudio.read, loop=loop)
        except NotImplementedError:
            _log.warning("this event loop cannot watch pipes (add_reader): %s is read from the send clock "
                         "and may block it", type(source).__name__)
            return None
    _log.debug("%s overrides read(): it is called from the send clock and must not block", type(source).__name__)
    return None


def opus_encoder(options: dict[str, Any]) -> Any:
    if not _discord_opus.is_loaded():
        load_default_opus()
    if not _discord_opus.is_loaded():
        raise _discord_opus.OpusNotLoaded(
            "a PCM AudioSource must be encoded with libopus, and libopus could not be loaded: install it "
            "(Debian/Ubuntu: apt-get install libopus0; Fedora: dnf install opus; macOS: brew install opus) "
            "or load it with discord.opus.load_opus(path), or play an Opus source such as discord.FFmpegOpusAudio"
        )
    return _discord_opus.Encoder(**options)


# -- one play() call ----------------------------------------------------------------------------


class Playback:
    """The :class:`~fastvoice.OpusFrameProvider` a VoiceClient gives its connection for one ``play()``.

    Paused: ``None`` (silence, then Speaking 0). Stopped or finished: ``EOFError``, so the sender
    sends its silence tail and goes idle. The end (source exhausted, an error, ``stop()``) runs
    once, in a task: ffmpeg reaped without blocking, ``after(error)``, then ``source.cleanup()``.
    """

    def __init__(self, source: Any, after: Callable[[Exception | None], Any] | None,
                 encoder_options: dict[str, Any], loop: asyncio.AbstractEventLoop,
                 on_end: Callable[[asyncio.Task[None]], None]) -> None:
        self.after = after
        self._on_end = on_end
        self.paused = False
        self.done = False
        self.error: BaseException | None = None
        self.finished: asyncio.Task[None] | None = None
        self._loop = loop
        self._encoder_options = encoder_options
        self._encoder: Any = None
        self._readers: list[PipeReader] = []
        self._provider = False
        self._opus = True
        self.source: Any = None
        self.set_source(source)

    def set_source(self, source: Any) -> None:
        """Play from ``source`` from the next frame on (the previous source is not cleaned up)."""
        if isinstance(source, AudioSource):
            opus = bool(source.is_opus())
            if not opus and self._encoder is None:
                self._encoder = opus_encoder(self._encoder_options)
            readers = [r for r in (attach_reader(s, self._loop) for s in ffmpeg_sources(source)) if r is not None]
            self._provider, self._opus = False, opus
        else:
            readers = []
            self._provider = True
        for old in self._readers:
            if old not in readers:
                old.stop_reading()
        self._readers = readers
        self.source = source

    # the OpusFrameProvider protocol

    def provide_opus_frame(self) -> bytes | None:
        """Called by the send clock every 20 ms; never blocks."""
        if self.done:
            raise EOFError("playback finished")
        if self.paused:
            return None
        source = self.source
        try:
            if self._provider:
                frame: bytes | None = source.provide_opus_frame()
                return frame
            data = source.read()
            if not data:
                raise EOFError("end of the audio source")
            if self._opus:
                return bytes(data)
            size = len(data)
            if size < PCM_FRAME_BYTES:
                data = bytes(data) + bytes(PCM_FRAME_BYTES - size)
            elif size > PCM_FRAME_BYTES:
                raise ValueError(f"the PCM source returned {size} bytes; expected {PCM_FRAME_BYTES} "
                                 "(20 ms of 16-bit 48 kHz stereo)")
            encoded: bytes = self._encoder.encode(data, _PCM_FRAME_SAMPLES)
            return encoded
        except Underrun:
            return None
        except EOFError:
            self._end(None)
            raise
        except Exception as exc:
            self._end(exc)
            raise EOFError("the audio source failed") from exc

    def close(self) -> None:
        """The connection is closing: stop."""
        self.stop()

    # control

    def stop(self) -> None:
        """End the playback now (``after(None)`` follows from a task)."""
        if not self.done:
            self.done = True
            self._schedule(natural=False)

    def _end(self, error: BaseException | None) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._schedule(natural=True)

    def _schedule(self, *, natural: bool) -> None:
        for reader in self._readers:
            reader.stop_reading()
        self.finished = self._loop.create_task(self._finish(natural), name="fastvoice-discord-playback-end")
        self._on_end(self.finished)

    async def _finish(self, natural: bool) -> None:
        error = self.error
        for reader in self._readers:
            try:
                await reader.reap(wait_for_exit=natural)
                if natural:
                    # ffmpeg failing (bad input, network) is the cause of whatever the pipe showed
                    error = reader.exit_error() or error
            except Exception:
                _log.exception("stopping ffmpeg failed")
        self.error = error
        after = self.after
        if after is not None:
            try:
                # discord.py's after() takes an Exception; a BaseException here is one too
                # in practice (ffmpeg's and the source's errors), passed on as it came.
                result = after(error)  # type: ignore[arg-type]
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception("the after callback of play() raised")
        elif error is not None:
            _log.error("audio playback ended with an error: %s", error, exc_info=error)
        source = self.source
        try:
            if self._provider:
                source.close()
            else:
                source.cleanup()
        except Exception:
            _log.exception("cleaning up the audio source failed")
        for reader in self._readers:
            reader.close_pipe()
