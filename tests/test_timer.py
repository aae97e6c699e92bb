"""DeadlineTimer: the send clock's wake-ups (timerfd on Linux, the loop's timers elsewhere)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from fastvoice import _timer
from fastvoice._timer import DeadlineTimer
from fastvoice.audio import SendClock
from fastvoice.rtp import PreparedSlot

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@linux_only
async def test_timerfd_wakes_at_or_after_each_deadline_and_closes():
    before = open_fds()
    timer = DeadlineTimer(asyncio.get_running_loop())
    assert timer.precise and timer.now() == pytest.approx(__import__("time").monotonic(), abs=0.01)
    assert len(open_fds() - before) == 1
    deadline = timer.now()
    for _ in range(10):
        deadline += 0.005
        await timer.sleep_until(deadline)
        assert timer.now() >= deadline  # never early: the kernel's clock, an absolute time
    # A deadline already past returns at once (an absolute time in the past still fires).
    await asyncio.wait_for(timer.sleep_until(timer.now() - 5), 1)
    await asyncio.wait_for(timer.sleep_until(0.0), 1)  # zero would disarm a timerfd: must not hang
    timer.close()
    timer.close()
    assert open_fds() == before


@linux_only
async def test_a_cancelled_sleep_leaves_the_timer_usable():
    timer = DeadlineTimer(asyncio.get_running_loop())
    task = asyncio.ensure_future(timer.sleep_until(timer.now() + 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = timer.now() + 0.01
    await asyncio.wait_for(timer.sleep_until(deadline), 1)
    assert timer.now() >= deadline
    timer.close()


async def test_loop_timers_when_not_precise():
    loop = asyncio.get_running_loop()
    before = open_fds() if sys.platform.startswith("linux") else set()
    timer = DeadlineTimer(loop, precise=False)
    assert not timer.precise and timer.now == loop.time
    deadline = loop.time() + 0.01
    await timer.sleep_until(deadline)
    assert loop.time() >= deadline - 0.002  # the loop's clock may count whole milliseconds
    timer.close()
    if before:
        assert open_fds() == before


async def test_a_loop_that_cannot_watch_descriptors_falls_back(monkeypatch):
    loop = asyncio.get_running_loop()

    def no_readers(fd, callback):
        raise NotImplementedError

    before = open_fds() if sys.platform.startswith("linux") else set()
    monkeypatch.setattr(loop, "add_reader", no_readers)
    timer = DeadlineTimer(loop)
    assert not timer.precise and timer.now == loop.time
    await timer.sleep_until(loop.time() + 0.005)
    timer.close()
    if before:
        assert open_fds() == before  # the timerfd made for the attempt was closed


@linux_only
def test_libc_and_os_timerfd_bindings_agree():
    # Python 3.13 has os.timerfd_*; older ones use libc through ctypes. Test what exists.
    bindings = [b for b in (_timer._os_timerfd(), _timer._libc_timerfd()) if b is not None]
    assert bindings
    import select
    import time

    for create, arm in bindings:
        fd = create()
        try:
            assert not os.get_blocking(fd)
            arm(fd, int((time.monotonic() + 0.01) * 1e9))
            assert select.select([fd], [], [], 0)[0] == []  # not yet
            assert select.select([fd], [], [], 1)[0] == [fd]
            assert int.from_bytes(os.read(fd, 8), sys.byteorder) == 1  # one expiry
        finally:
            os.close(fd)


@linux_only
async def test_the_send_clock_runs_on_the_timerfd_and_closes_it():
    loop = asyncio.get_running_loop()
    before = open_fds()

    class Sender:
        _live = True
        _slot = PreparedSlot(None, None)  # nothing prepared: the clock only calls _prepare
        ticks = 0

        def _prepare(self):
            self.ticks += 1
            if self.ticks == 5:
                clock._remove(self)

    clock = SendClock(loop)
    sender = Sender()
    clock._add(sender)
    await asyncio.sleep(0)
    assert clock.running and clock.precise
    for _ in range(100):
        if not clock.running:
            break
        await asyncio.sleep(0.02)
    assert sender.ticks == 5 and not clock.running
    assert open_fds() == before
