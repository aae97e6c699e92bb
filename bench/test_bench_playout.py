"""Receive playout: the decode pool's thread scaling and real-time capacity, and the
timeline's own cost per call and per user per tick.

- ``test_pool_speedup``: the same work (``STREAMS`` stereo streams, one 20 ms frame each per
  tick, ``TICKS`` ticks, submitted tick after tick as the clock does) decoded by a pool of
  one thread and by a pool of two, alternated in each round so that other load on this
  shared machine hits both alike.  Besides the raw ratio it reports the ratio with the
  run-queue wait of every thread involved taken out (Linux ``/proc/self/task/*/schedstat``:
  time a thread was ready to run while other processes held the CPUs).
- ``test_realtime_streams``: a pool of two threads decodes ``S`` concurrent streams on a
  20 ms schedule (each tick's batch submitted when due, or when the previous one is done if
  that is later); a tick is late when its batch completes after the next tick is due.  The
  largest ``S`` with no late tick is the pool's real-time capacity here.  Each round also
  reports how long the pool's threads waited for a CPU other processes held (schedstat), so
  a round spoilt by other load shows as such.
- ``test_timeline_cost``: the playout receiver's own work per tick (buffering the packet,
  taking it on its tick, building and delivering the tick), with decoding stubbed out so
  that only fastvoice's Python remains: per idle call and per speaking user.

    pytest bench/test_bench_playout.py --benchmark-json=bench/playout.json
    python bench/report_playout.py bench/playout.json

Sizes: ``FASTVOICE_BENCH_PLAYOUT_STREAMS`` (200) and ``FASTVOICE_BENCH_PLAYOUT_TICKS`` (50) for
the speed-up, ``FASTVOICE_BENCH_REALTIME`` (stream counts, ``300,400,500,600,700,800``) and
``FASTVOICE_BENCH_REALTIME_TICKS`` (150) for the real-time sweep, ``FASTVOICE_BENCH_CALLS``
(``1000x0,250x4,100x10``: calls x speakers) for the timeline's cost.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

import pytest

import opus_reference as ref
from fastvoice import _opus_common
from fastvoice import decode_pool
from fastvoice.decode_pool import DecodePool
from fastvoice.opus_decoder import OpusDecoder
from fastvoice.playout_receiver import PlayoutReceiver
from fastvoice.rtp import Packet
from fastvoice.timeline import PlayoutClock
from test_bench_opus import music_packets

# With --benchmark-disable (CI's smoke run of every benchmark) the sizes shrink to a check that it runs.
SMOKE = "--benchmark-disable" in sys.argv
STREAMS = int(os.environ.get("FASTVOICE_BENCH_PLAYOUT_STREAMS", "20" if SMOKE else "200"))
TICKS = int(os.environ.get("FASTVOICE_BENCH_PLAYOUT_TICKS", "5" if SMOKE else "50"))
REALTIME_COUNTS = [int(n) for n in os.environ.get(
    "FASTVOICE_BENCH_REALTIME", "20" if SMOKE else "300,400,500,600,700,800").split(",")]
REALTIME_TICKS = int(os.environ.get("FASTVOICE_BENCH_REALTIME_TICKS", "10" if SMOKE else "150"))
CALLS = [(int(c), int(s)) for c, s in (pair.split("x") for pair in os.environ.get(
    "FASTVOICE_BENCH_CALLS", "10x0,5x4" if SMOKE else "1000x0,250x4,100x10").split(","))]


@pytest.fixture(scope="module", autouse=True)
def _libopus():
    ref.require_libopus()
    _opus_common.library()


def _jobs(decoders, tick):
    packets = music_packets()
    return [(decoder, packets[(tick + n) % len(packets)], False) for n, decoder in enumerate(decoders)]


def _task_schedstat(native_id):
    """Run-queue wait (ns) of one thread of this process, or None off Linux."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as fh:
            return int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _waits(threads):
    return [_task_schedstat(t.native_id) for t in threads]


def _decode_ticks(pool, decoders, ticks):
    """Submit one batch per tick, each after the previous is done; returns (wall s, max run-queue wait s)."""
    involved = [threading.current_thread(), *pool._workers]
    before = _waits(involved)
    started = time.perf_counter()
    for tick in range(ticks):
        pool.decode(_jobs(decoders, tick))
    wall = time.perf_counter() - started
    after = _waits(involved)
    if None in before or None in after:
        return wall, None
    return wall, max(b - a for a, b in zip(before, after)) / 1e9


def test_pool_speedup(benchmark):
    pools = {1: DecodePool(1, name="bench-1"), 2: DecodePool(2, name="bench-2")}
    decoders = [OpusDecoder() for _ in range(STREAMS)]
    rounds = []

    def round_of_both():
        rounds.append((_decode_ticks(pools[1], decoders, TICKS), _decode_ticks(pools[2], decoders, TICKS)))

    try:
        benchmark.group = "decode pool: 2 threads over 1, alternated in each round"
        benchmark.pedantic(round_of_both, rounds=15, iterations=1, warmup_rounds=1)
    finally:
        for pool in pools.values():
            pool.close()
    speedups, unloaded = [], []
    for (one, one_wait), (two, two_wait) in rounds[1:] or rounds:
        speedups.append(one / two)
        if one_wait is not None and two_wait is not None:
            unloaded.append((one - one_wait) / (two - two_wait))
    frames = STREAMS * TICKS
    benchmark.extra_info.update(
        rounds=[[one, one_wait, two, two_wait] for (one, one_wait), (two, two_wait) in rounds[1:] or rounds],
        contender=f"DecodePool, {STREAMS} streams x {TICKS} ticks", batch=2 * frames, speedups=sorted(speedups),
        median_speedup=statistics.median(speedups), unloaded_speedups=sorted(unloaded),
        us_per_frame_one=[r[0][0] / frames * 1e6 for r in rounds], us_per_frame_two=[r[1][0] / frames * 1e6 for r in rounds],
    )


def _paced(pool, decoders, ticks):
    """Decode on a 20 ms schedule; per tick, seconds from its due time to its batch's completion."""
    latencies = []
    start = time.perf_counter() + 0.02
    for tick in range(ticks):
        due = start + tick * 0.02
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        pool.decode(_jobs(decoders, tick))
        latencies.append(time.perf_counter() - due)
    return latencies


def test_realtime_streams(benchmark):
    pool = DecodePool(2, name="bench-rt")
    results = {}

    def sweep():
        for count in REALTIME_COUNTS:
            decoders = [OpusDecoder() for _ in range(count)]
            _paced(pool, decoders, 10)  # warm up
            before = _waits(pool._workers)
            latencies = sorted(_paced(pool, decoders, REALTIME_TICKS))
            after = _waits(pool._workers)
            waited = None if None in before or None in after else sum(b - a for a, b in zip(before, after)) / 1e6
            late = sum(1 for v in latencies if v > 0.02)
            results.setdefault(count, []).append(
                {"late": late, "p50_ms": latencies[len(latencies) // 2] * 1e3,
                 "p99_ms": latencies[int(0.99 * len(latencies))] * 1e3, "max_ms": latencies[-1] * 1e3,
                 "waited_ms": waited, "seconds": REALTIME_TICKS * 0.02})

    try:
        benchmark.group = "decode pool: concurrent stereo streams in real time, 2 threads"
        benchmark.pedantic(sweep, rounds=2, iterations=1)
    finally:
        pool.close()
    benchmark.extra_info.update(contender="DecodePool(2), paced 20 ms ticks", batch=1,
                                realtime={str(k): v for k, v in results.items()}, ticks=REALTIME_TICKS)


_PCM = bytes(3840)


def _no_decoding(jobs):
    """decode_batch with the decoding left out: only fastvoice's own work is measured."""
    return [_PCM] * len(jobs), []


def _calls(count, speakers):
    clock = PlayoutClock(autostart=False)
    receivers, delivered = [], []
    for _ in range(count):
        rx = PlayoutReceiver(clock=clock, decode_threads=0)
        rx.add_listener(delivered.append)
        receivers.append(rx)
    packet_of = [[Packet(0, 0, 0, b"\xfc" + bytes(60)) for _ in range(speakers)] for _ in range(count)]
    return clock, receivers, packet_of, delivered


def _run_calls(clock, receivers, packet_of, delivered, ticks, start):
    for tick in range(start, start + ticks):
        for rx, packets in zip(receivers, packet_of):
            for user, packet in enumerate(packets):
                packet.sequence, packet.timestamp = tick & 0xFFFF, (tick * 960) & 0xFFFFFFFF
                rx.receive_opus_frame(user, packet)
        clock.advance(0.02)
    delivered.clear()


@pytest.mark.parametrize("calls, speakers", CALLS)
def test_timeline_cost(benchmark, monkeypatch, calls, speakers):
    monkeypatch.setattr(decode_pool, "decode_batch", _no_decoding)
    clock, receivers, packet_of, delivered = _calls(calls, speakers)
    _run_calls(clock, receivers, packet_of, delivered, 20, 0)  # warm up: every user known and talking
    state = {"tick": 20}

    def run():
        _run_calls(clock, receivers, packet_of, delivered, 10, state["tick"])
        state["tick"] += 10

    benchmark.group = "timeline: fastvoice's work per tick (decoding stubbed out)"
    benchmark.extra_info.update(contender=f"{calls} calls x {speakers} speakers", calls=calls, speakers=speakers,
                                batch=10)
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    for rx in receivers:
        if speakers:
            assert rx.stats(0).lost == 0 and rx.stats(0).late == 0
        rx.close()
