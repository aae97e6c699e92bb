"""Wake-ups at absolute deadlines, finer than the event loop's timers where the OS allows.

uvloop's timers count whole milliseconds (libuv's clock), so a 20 ms tick scheduled with
``asyncio.sleep`` starts anywhere in the millisecond after its deadline. On Linux a
``timerfd`` armed for an absolute ``CLOCK_MONOTONIC`` time and watched by the loop like any
socket wakes it within the kernel's scheduling latency instead (tens of microseconds on an
idle machine). Elsewhere, and on loops that cannot watch file descriptors (Windows'
proactor), :class:`DeadlineTimer` falls back to the loop's own timers.

Python 3.13 has ``os.timerfd_create``; older versions reach the same two libc calls
through :mod:`ctypes` (two calls per tick, about a microsecond each).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable

__all__ = ["DeadlineTimer"]

_log = logging.getLogger("fastvoice.audio")

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


def _libc_timerfd() -> tuple[Callable[[], int], Callable[[int, int], None]] | None:
    """``(create, arm_at_ns)`` from libc, or ``None`` where that is not possible."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_long) != 8:
        return None  # timespec is two longs only where long (and time_t) is 64 bits

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        c_create, c_settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    c_create.argtypes, c_create.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    c_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(Itimerspec), ctypes.c_void_p]
    c_settime.restype = ctypes.c_int
    spec = Itimerspec()
    spec_ref = ctypes.byref(spec)

    def create() -> int:
        fd: int = c_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd

    def arm(fd: int, ns: int) -> None:
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        if c_settime(fd, _TFD_TIMER_ABSTIME, spec_ref, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return create, arm


def _os_timerfd() -> tuple[Callable[[], int], Callable[[int, int], None]] | None:
    if not hasattr(os, "timerfd_create"):
        return None

    # Python 3.13+ (type checkers reading an older version's stubs do not know these names).
    timerfd_create: Callable[..., int] = getattr(os, "timerfd_create")
    timerfd_settime_ns: Callable[..., object] = getattr(os, "timerfd_settime_ns")
    nonblock_cloexec: int = getattr(os, "TFD_NONBLOCK") | getattr(os, "TFD_CLOEXEC")
    abstime: int = getattr(os, "TFD_TIMER_ABSTIME")

    def create() -> int:
        return timerfd_create(time.CLOCK_MONOTONIC, flags=nonblock_cloexec)

    def arm(fd: int, ns: int) -> None:
        timerfd_settime_ns(fd, flags=abstime, initial=ns)

    return create, arm


_TIMERFD = _os_timerfd() or _libc_timerfd()


class DeadlineTimer:
    """Sleeps until absolute deadlines on one event loop.

    :meth:`now` is the clock deadlines are expressed in: ``time.monotonic()`` when a
    ``timerfd`` wakes the loop (``precise`` is then true), else ``loop.time()``.
    :meth:`close` releases the descriptor; the timer must not be used afterwards.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, precise: bool = True) -> None:
        self._loop = loop
        self._fd = -1
        self._waiter: asyncio.Future[None] | None = None
        self._arm: Callable[[int, int], None] | None = None
        if precise and _TIMERFD is not None:
            create, arm = _TIMERFD
            fd = -1
            try:
                fd = create()
                loop.add_reader(fd, self._on_expired)
            except (OSError, NotImplementedError, RuntimeError) as exc:
                if fd >= 0:
                    os.close(fd)
                _log.debug("timerfd unavailable (%s): the send clock uses the loop's timers", exc)
            else:
                self._fd, self._arm = fd, arm
        self.now: Callable[[], float] = time.monotonic if self._fd >= 0 else loop.time

    @property
    def precise(self) -> bool:
        """True when a timerfd (not the loop's timers) wakes the loop."""
        return self._fd >= 0

    def _on_expired(self) -> None:
        try:
            os.read(self._fd, 8)
        except OSError:  # BlockingIOError: woken for an expiry already consumed
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (in :meth:`now`'s clock) or soon after."""
        if self._arm is None:
            await asyncio.sleep(deadline - self._loop.time())
            return
        waiter = self._waiter = self._loop.create_future()
        # An absolute time of zero would disarm the timer: a past deadline fires at once.
        self._arm(self._fd, max(1, int(deadline * 1e9)))
        try:
            await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Stop watching and close the descriptor (idempotent)."""
        fd, self._fd = self._fd, -1
        self._arm = None
        if fd >= 0:
            try:
                self._loop.remove_reader(fd)
            except (RuntimeError, ValueError, OSError):
                pass  # the loop is already closed
            os.close(fd)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.cancel()
