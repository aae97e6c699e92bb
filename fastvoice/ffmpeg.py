"""Play any file or URL ffmpeg can read: :class:`FFmpegOpusProvider`.

ffmpeg runs as a child process (``asyncio.create_subprocess_exec``, no thread) and encodes to
Ogg Opus on its stdout: 48 kHz stereo, 20 ms frames, one Ogg page per frame so each frame
arrives as soon as it is encoded. The pages are demuxed as they arrive (:mod:`fastvoice.ogg`)
into a bounded read-ahead buffer; while the buffer is full, stdout is not read and ffmpeg
waits on the pipe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shlex
import subprocess
from collections import deque
from collections.abc import Sequence

from ._ffmpeg_safety import SafeSourcePolicy, UnsafeSourceError
from ._shown import cut
from .errors import VoiceError
from .ogg import MAX_PACKET_SIZE, OggError, OggReadAhead

__all__ = ["FFmpegError", "FFmpegNotFoundError", "FFmpegOpusProvider", "UnsafeSourceError"]

_log = logging.getLogger("fastvoice.ffmpeg")

# The pipe reader's buffer limit: it stops reading the pipe above twice this many bytes.
_PIPE_LIMIT = 8192
# How long a process whose stdout ended may take to exit before it is killed.
_EXIT_TIMEOUT = 5.0
_STDERR_LINES = 20

# Reapers of closed processes, kept referenced until they finish.
_reapers: set[asyncio.Task[None]] = set()


class FFmpegError(VoiceError):
    """ffmpeg could not be started, or exited with an error (the message quotes its stderr)."""


class FFmpegNotFoundError(FFmpegError, FileNotFoundError):
    """The ffmpeg executable was not found."""


def _option_list(value: str | Sequence[str] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, (bytes, bytearray)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a string or a sequence of strings, got {value!r}")
    return list(value)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


class FFmpegOpusProvider(OggReadAhead):
    """An :class:`~fastvoice.OpusFrameProvider` playing ``source`` (a path or URL) through ffmpeg.

    Options:

    - ``executable``: the ffmpeg program (a name looked up in ``PATH``, or a path).
    - ``bitrate``: Opus bitrate in kbit/s (6 to 510).
    - ``volume``: gain factor applied with ffmpeg's ``volume`` filter (1.0: unchanged,
      0.5: half, 0: mute).
    - ``seek``: start position in seconds (``-ss`` before the input: fast input seeking).
    - ``before_options``: extra arguments before ``-i`` (input options, e.g.
      ``"-reconnect 1"``); ``options``: extra output arguments (they come after the encoder
      settings, so they can override them). A string is split like a shell command line.
    - ``read_ahead``: frames demuxed ahead of the send clock (50 = 1 s).
    - ``safe``: for a ``source`` that comes from untrusted users (a ``!play <url>`` command).
      ffmpeg opens local files and many protocols besides the web (``file:``, ``concat:``,
      ``subfile:``, ``data:``, ``pipe:``...), and playlists (HLS) or concatenation scripts
      name further inputs. With ``safe=True`` a source must be a URL of one of
      ``allowed_protocols`` (default ``("http", "https")``), a local path or ``file:`` is
      refused unless ``allow_local_files=True``, a URL whose host is (or resolves to) a
      loopback, private or link-local address is refused at :meth:`start` unless
      ``allow_private_hosts=True``, and ffmpeg gets ``-protocol_whitelist`` with the allowed
      protocols (and the ``tls``/``tcp`` they run on), which also binds every input a
      playlist or a script opens. ``before_options`` may not then set ``-f``, ``-safe``,
      ``-i`` or the protocol lists, nor ``options`` ``-i``. A refusal raises
      :class:`UnsafeSourceError` (a ``ValueError``) naming the reason: at once for the
      source and the options, from :meth:`start` for the host. Not covered: an HTTP
      redirect, or a playlist entry, to an internal address (firewall the bot's outgoing
      traffic for that).

    Starting: ``await provider.start()`` (or ``async with provider``) starts ffmpeg and raises
    :class:`FFmpegNotFoundError` at once if the executable is missing. A provider handed to a
    connection without being started starts itself on the first ``provide_opus_frame`` call;
    a start error is then raised by that path (the sender logs it) and the stream ends.

    ``provide_opus_frame`` never waits: ``None`` while the next frame has not arrived (ffmpeg
    is starting or the source is slow), ``EOFError`` once ffmpeg's output ended and the buffer
    is drained. If ffmpeg exits with a non-zero status, the :class:`FFmpegError` (quoting the
    end of its stderr) is logged, kept in :attr:`error`, raised once by
    ``provide_opus_frame``, then ``EOFError``. ffmpeg's stderr is read continuously, logged at
    debug level (it may name the input) and its last lines are kept in :attr:`stderr_tail`.

    ``close()`` kills ffmpeg and reaps it in the background; ``await aclose()`` also waits
    until the process is reaped and its pipes are closed.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        executable: str | os.PathLike[str] = "ffmpeg",
        bitrate: int = 128,
        volume: float = 1.0,
        seek: float | None = None,
        before_options: str | Sequence[str] | None = None,
        options: str | Sequence[str] | None = None,
        read_ahead: int = 50,
        max_packet_size: int = MAX_PACKET_SIZE,
        logger: logging.Logger | None = None,
        safe: bool = False,
        allowed_protocols: Sequence[str] | None = None,
        allow_local_files: bool = False,
        allow_private_hosts: bool = False,
    ) -> None:
        if not isinstance(bitrate, int) or not 6 <= bitrate <= 510:
            raise ValueError(f"bitrate must be an int of kbit/s between 6 and 510, got {bitrate!r}")
        if not isinstance(volume, (int, float)) or not math.isfinite(volume) or volume < 0:
            raise ValueError(f"volume must be a finite number >= 0, got {volume!r}")
        if seek is not None and (not isinstance(seek, (int, float)) or not math.isfinite(seek) or seek < 0):
            raise ValueError(f"seek must be a finite number of seconds >= 0, got {seek!r}")
        if not safe and (allowed_protocols is not None or allow_local_files or allow_private_hosts):
            raise TypeError("allowed_protocols, allow_local_files and allow_private_hosts need safe=True")
        super().__init__(buffer_frames=read_ahead, chunk_size=4096, max_packet_size=max_packet_size)
        self._source = os.fspath(source)
        self._executable = os.fspath(executable)
        self._log = logger or _log
        self._policy: SafeSourcePolicy | None = None
        args = [self._executable, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning"]
        before = _option_list(before_options, "before_options")
        after = _option_list(options, "options")
        args += before
        if safe:
            policy = self._policy = SafeSourcePolicy(allowed_protocols, allow_local_files, allow_private_hosts)
            policy.check_source(self._source)
            policy.check_options(before, "before_options")
            policy.check_options(after, "options")
            args += ["-protocol_whitelist", policy.whitelist()]
        if seek:
            args += ["-ss", _seconds(seek)]
        args += ["-i", self._source, "-vn"]
        if volume != 1.0:
            args += ["-filter:a", f"volume={volume:g}"]
        args += ["-ac", "2", "-ar", "48000", "-c:a", "libopus", "-b:a", f"{bitrate}k", "-frame_duration", "20"]
        args += after
        args += ["-f", "ogg", "-page_duration", "20000", "-flush_packets", "1", "pipe:1"]
        self._args = args
        self._process: asyncio.subprocess.Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._killed = False
        self._failure: BaseException | None = None
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES)

    # -- information -------------------------------------------------------------------

    @property
    def args(self) -> list[str]:
        """The ffmpeg command line (argv) this provider runs."""
        return list(self._args)

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The ffmpeg process once started."""
        return self._process

    @property
    def returncode(self) -> int | None:
        """ffmpeg's exit status once it exited (negative: killed by that signal)."""
        return None if self._process is None else self._process.returncode

    @property
    def error(self) -> BaseException | None:
        """Why the stream ended early: :class:`FFmpegError`, :class:`~fastvoice.OggError`, or ``None``."""
        return self._failure

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines ffmpeg wrote to stderr."""
        return list(self._stderr_tail)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start ffmpeg and the read-ahead task; raises :class:`FFmpegError` if ffmpeg cannot run
        and, in safe mode, :class:`UnsafeSourceError` for a URL whose host is not public."""
        if self._started:
            return
        if self._closed:
            raise FFmpegError("the provider is closed")
        lazy = self._start_task
        if lazy is not None and lazy is not asyncio.current_task():
            await asyncio.wait({lazy})  # the first provide_opus_frame call is starting it
            if isinstance(self._failure, (FFmpegError, UnsafeSourceError)) and self._process is None:
                raise self._failure
            return
        self._started = True
        if self._policy is not None:
            try:
                await self._policy.check_host(self._source)
            except UnsafeSourceError as exc:
                self._fail(exc)
                raise
        try:
            process = await asyncio.create_subprocess_exec(
                *self._args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                limit=_PIPE_LIMIT,
            )
        except FileNotFoundError as exc:
            error: FFmpegError = FFmpegNotFoundError(
                f"ffmpeg executable {self._executable!r} not found: install ffmpeg or pass its path"
                " with the executable= option"
            )
            self._fail(error, exc)
            raise error from exc
        except OSError as exc:
            error = FFmpegError(f"cannot run ffmpeg executable {self._executable!r} (the executable= option): {exc}")
            self._fail(error, exc)
            raise error from exc
        self._process = process
        self._loop = asyncio.get_running_loop()
        self._stderr_task = self._loop.create_task(self._drain_stderr(process))
        self._task = self._loop.create_task(self._run(process))
        if self._closed:  # closed while the process was starting
            self._shut_down()

    def _fail(self, error: BaseException, cause: BaseException | None = None) -> None:
        if cause is not None and error.__cause__ is None:
            error.__cause__ = cause
        self._failure = self._error = error
        self._ended = True

    async def _lazy_start(self) -> None:
        try:
            await self.start()
        except (FFmpegError, UnsafeSourceError):
            pass  # kept in self.error and raised through provide_opus_frame

    def provide_opus_frame(self) -> bytes | None:
        """Return a buffered frame, ``None`` if none is ready, ``EOFError`` at the end."""
        if not self._started and self._start_task is None and not self._closed:
            self._start_task = asyncio.get_running_loop().create_task(self._lazy_start())
        return super().provide_opus_frame()

    async def _run(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        demux_error: Exception | None = None
        try:
            try:
                await self._pump(process.stdout)
            except (OggError, OSError) as exc:
                demux_error = exc
                if not self._demuxer.at_eof:
                    self._kill()  # ffmpeg is still writing what can no longer be read
            try:
                returncode = await asyncio.wait_for(process.wait(), _EXIT_TIMEOUT)
            except asyncio.TimeoutError:
                self._log.warning("ffmpeg did not exit %.0f s after its output ended: killing it", _EXIT_TIMEOUT)
                self._kill()
                returncode = await process.wait()
            if self._stderr_task is not None:
                await asyncio.wait({self._stderr_task}, timeout=1.0)
            if returncode != 0 and not self._killed:
                # Bounded: ffmpeg's messages quote the source and what the remote side sent.
                tail = cut(" | ".join(list(self._stderr_tail)[-5:]), 500) or "no message"
                raise FFmpegError(f"ffmpeg exited with status {returncode}: {tail}") from demux_error
            if demux_error is not None:
                raise demux_error
            self._log.debug("ffmpeg finished (status %d)", returncode)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.error("ffmpeg stream failed: %s", exc)
            self._fail(exc)
        finally:
            self._ended = True

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        partial = b""
        while True:
            chunk = await process.stderr.read(4096)
            if not chunk:
                break
            *lines, partial = re.split(rb"[\r\n]", partial + chunk)
            partial = partial[-4096:]  # a line without end is bounded too
            for line in lines:
                self._stderr_line(line)
        self._stderr_line(partial)

    def _stderr_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if text:
            self._stderr_tail.append(text[:1000])
            self._log.debug("ffmpeg: %s", text)

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            self._killed = True
            try:
                process.kill()
            except ProcessLookupError:
                pass

    def _shut_down(self) -> None:
        """Kill ffmpeg, stop the tasks, reap the process in the background."""
        for task in (self._task, self._stderr_task):
            if task is not None and not task.done():
                task.cancel()
        self._kill()
        process, loop = self._process, self._loop
        if process is None or loop is None or self._reaper is not None:
            return
        try:
            reaper = loop.create_task(self._reap(process))
        except RuntimeError:  # the loop is closed: the process was killed, nothing can await it
            return
        self._reaper = reaper
        _reapers.add(reaper)
        reaper.add_done_callback(_reapers.discard)

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        tasks = {t for t in (self._task, self._stderr_task) if t is not None}
        if tasks:
            await asyncio.wait(tasks)
        try:
            # Reading both pipes to their end lets their transports close; then the exit status.
            await asyncio.wait_for(process.communicate(), _EXIT_TIMEOUT)
        except Exception as exc:
            self._log.warning("reaping ffmpeg failed: %s", exc)

    def close(self) -> None:
        """Stop: kill ffmpeg (reaped in the background) and drop buffered frames."""
        if self._closed:
            return
        self._closed = True
        self._ended = True
        self._frames.clear()
        self._space.set()
        self._shut_down()

    async def wait_closed(self) -> None:
        """Wait until a closed provider's process is reaped and its pipes are closed."""
        if self._start_task is not None:
            await asyncio.wait({self._start_task})
        if self._reaper is not None:
            await asyncio.wait({self._reaper})

    async def aclose(self) -> None:
        """:meth:`close`, then wait until ffmpeg is reaped."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> FFmpegOpusProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._process is not None else "not started"
        return f"<FFmpegOpusProvider {state} pid={getattr(self._process, 'pid', None)} returncode={self.returncode}>"
