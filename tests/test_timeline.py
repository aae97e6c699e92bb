"""The playout clock on a real event loop: one clock per loop for every receiver, a blocked
loop caught up or skipped, receivers attached and detached."""

from __future__ import annotations

import asyncio
import time

import pytest

import opus_reference as ref
from _calls import wait_until
from _playout import counter_packet
from fastvoice.playout_receiver import PlayoutReceiver
from fastvoice.rtp import Packet
from fastvoice.timeline import MAX_CATCHUP, PlayoutClock


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


async def test_one_clock_drives_every_receiver_of_the_loop_and_stops_with_the_last():
    a, b = PlayoutReceiver(decode_threads=0), PlayoutReceiver(decode_threads=2)
    ticks_a, ticks_b = [], []
    a.add_listener(ticks_a.append)
    b.add_listener(ticks_b.append)
    clock = PlayoutClock.for_loop()
    assert a.clock is b.clock is clock and clock.receivers == 2 and clock.running
    await wait_until(lambda: len(ticks_a) >= 5 and len(ticks_b) >= 5, what="ticks")
    # the same tick of the loop's clock carries the same time on both timelines
    times_a = {t.time for t in ticks_a}
    assert any(t.time in times_a for t in ticks_b)
    a.close()
    b.close()
    await wait_until(lambda: not clock.running, what="the clock's task to end")


async def test_a_briefly_blocked_loop_is_caught_up_without_losing_a_tick():
    rx = PlayoutReceiver(decode_threads=0)
    ticks = []
    rx.add_listener(ticks.append)
    await wait_until(lambda: len(ticks) >= 3, what="ticks")
    time.sleep(0.15)  # user code blocking the loop for 7 ticks
    await wait_until(lambda: len(ticks) >= 15, what="more ticks")
    indices = [t.index for t in ticks]
    assert indices == list(range(len(indices)))
    assert rx.skipped_ticks == 0 and rx.clock.skipped == 0
    rx.close()


async def test_a_loop_blocked_for_long_skips_ticks_and_drops_what_they_would_have_played():
    rx = PlayoutReceiver(decode_threads=0)
    ticks = []
    rx.add_listener(ticks.append)
    for n in range(20):  # 400 ms of audio, buffered (most of it overflows max_delay: fine)
        rx.receive_opus_frame(5, Packet(n, n * 960, 0, counter_packet(n)))
    await wait_until(lambda: len(ticks) >= 2, what="ticks")
    time.sleep((MAX_CATCHUP + 10) * 0.02)
    await wait_until(lambda: len(ticks) >= 10, what="ticks after the stall")
    indices = [t.index for t in ticks]
    gaps = [b - a for a, b in zip(indices, indices[1:]) if b - a > 1]
    assert len(gaps) == 1 and gaps[0] - 1 == rx.skipped_ticks > MAX_CATCHUP
    assert rx.clock.skipped >= rx.skipped_ticks
    stats = rx.stats(5)
    assert stats.late >= 1 and stats.played + stats.late + stats.overflow + stats.buffered == 20
    rx.close()


def test_a_test_clock_refuses_to_be_run_by_the_loop_and_a_real_one_by_hand():
    clock = PlayoutClock(autostart=False)
    assert clock.manual and clock.time() == 0.0 and clock.advance(1.0) == 0  # nothing attached
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="test clock"):
            PlayoutClock(loop).advance(0.02)
    finally:
        loop.close()
    with pytest.raises(ValueError, match="frame"):
        PlayoutClock(frame=0)
    with pytest.raises(ValueError, match="max_backlog"):
        PlayoutClock(max_backlog=0)
