"""Every use of discord.py's private names by :mod:`fastvoice.ext.discord`, in one place.

discord.py offers no public way to read an ffmpeg source's pipe without blocking, nor to load
libopus from its default places on demand: these helpers reach into its private attributes,
each with a fallback when a version of discord.py (or a fork) lacks them. When discord.py
changes, this is the file to check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from discord import opus as _discord_opus
from discord.player import FFmpegAudio

__all__ = [
    "ffmpeg_exit_error",
    "ffmpeg_pipe",
    "install_read",
    "installed_reader",
    "load_default_opus",
]

_log = logging.getLogger("fastvoice.ext.discord")

#: The attribute a source carries once fastvoice reads its pipe (so a second play() reuses it).
_READER_ATTRIBUTE = "_fastvoice_reader"


def ffmpeg_pipe(source: FFmpegAudio) -> tuple[Any, Any] | None:
    """The ``(process, stdout)`` of an ffmpeg source (``_process``, ``_stdout``), or ``None``
    when it has none left (already cleaned up) or they are not what they should be."""
    process, stdout = getattr(source, "_process", None), getattr(source, "_stdout", None)
    if not hasattr(process, "poll") or not hasattr(stdout, "fileno"):
        return None
    return process, stdout


def install_read(source: FFmpegAudio, reader: Any, read: Callable[[], bytes]) -> None:
    """Replace ``source.read`` on the instance by ``read`` (so a wrapper such as
    ``PCMVolumeTransformer``, which calls ``original.read()``, gets it too) and remember ``reader``."""
    source.read = read  # type: ignore[method-assign]
    setattr(source, _READER_ATTRIBUTE, reader)


def installed_reader(source: FFmpegAudio) -> Any:
    """The reader :func:`install_read` attached to ``source``, or ``None``."""
    return getattr(source, _READER_ATTRIBUTE, None)


def ffmpeg_exit_error(source: FFmpegAudio) -> BaseException | None:
    """The error discord.py's own check finds in an exited ffmpeg (``_check_process_returncode``
    and ``_current_error``, discord.py 2.4+), or ``None`` where it has no such check or no error."""
    check = getattr(source, "_check_process_returncode", None)
    if check is None:
        return None
    try:
        check()
    except Exception as exc:  # reading its stderr failed: the caller reports the exit code
        _log.debug("checking ffmpeg's exit failed: %s", exc)
    error = getattr(source, "_current_error", None)
    return error if isinstance(error, BaseException) else None


def load_default_opus() -> None:
    """Let discord.py load libopus from its default places (``discord.opus._load_default``), if it can."""
    load_default = getattr(_discord_opus, "_load_default", None)
    try:
        if load_default is not None:
            load_default()
    except Exception as exc:
        _log.debug("loading libopus failed: %s", exc)
