"""DecodePool: the same PCM as decoding inline, on threads, in order per stream, errors concealed."""

from __future__ import annotations

import asyncio
import threading

import pytest

import opus_reference as ref
from _playout import Harness, counter_packet, stepped_tone_packets, stream
from fastvoice.decode_pool import DecodePool, decode_jobs
from fastvoice.opus_decoder import OpusDecoder
from fastvoice.playout_receiver import PlayoutReceiver


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


@pytest.fixture
def pool():
    pool = DecodePool(3)
    yield pool
    pool.close()
    pool.join(5)


def test_a_batch_decodes_as_inline_decoding_does(pool):
    packets = stepped_tone_packets(60)
    inline = [OpusDecoder() for _ in range(7)]
    pooled = [OpusDecoder() for _ in range(7)]
    for k in range(60):
        # each stream its own frame; PLC and garbage among them
        jobs_a, jobs_b = [], []
        for n in range(7):
            packet = packets[(k + n) % 60] if (k + n) % 11 else None
            if n == 3 and k == 20:
                packet = b"\x0b"  # libopus refuses it: concealed, and reported
            jobs_a.append((inline[n], packet, False))
            jobs_b.append((pooled[n], packet, False))
        expected, errors_a = [None] * 7, []
        decode_jobs(jobs_a, expected, errors_a)
        got, errors_b = pool.decode(jobs_b)
        assert got == expected and sorted(errors_b) == errors_a == ([3] if k == 20 else [])
    assert pool.batches == 60 and pool.frames == 420


def test_the_shares_run_on_the_pools_threads(pool):
    seen = set()

    class Spy:
        def decode(self, packet, fec):
            seen.add(threading.current_thread().name)
            threading.Event().wait(0.01)  # long enough for every share to be taken by its own thread
            return b""

    pool.decode([(Spy(), None, False) for _ in range(6)])
    assert len(seen) == 3 and all(name.startswith("fastvoice-decode") for name in seen)


async def test_submit_reports_on_the_event_loop(pool):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    decoder = OpusDecoder()
    pool.submit([(decoder, stepped_tone_packets(5)[0], False)], lambda r, e: done.set_result((r, e, threading.get_ident())),
                loop)
    results, errors, thread = await asyncio.wait_for(done, 5)
    assert len(results[0]) == 3840 and errors == [] and thread == threading.get_ident()


def test_the_shared_pool_is_one_per_size_and_bad_sizes_are_refused():
    assert DecodePool.shared(2) is DecodePool.shared(2)
    assert DecodePool.shared(2) is not DecodePool.shared(1)
    with pytest.raises(ValueError, match="threads"):
        DecodePool(0)
    closed = DecodePool(1)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.decode([])


def test_a_receiver_decoding_in_a_pool_delivers_the_same_ticks_as_inline(pool):
    packets = stepped_tone_packets(100)
    results = []
    for options in ({"decode_threads": 0}, {"decode_pool": pool}):
        harness = Harness(**options)
        harness.play(stream(11, packets, jitter=0.03, seed=4, skip={30, 31, 70})
                     + stream(22, [counter_packet(n) for n in range(80)], jitter=0.01, start_time=0.3))
        results.append([(t.index, t.speaking, t.packets, t.users) for t in harness.ticks])
    assert results[0] == results[1]
    assert PlayoutReceiver(decode_threads=2).decode_pool is DecodePool.shared(2)
    assert PlayoutReceiver(decode_threads=0).decode_pool is None


async def test_a_pool_that_cannot_keep_up_holds_a_bounded_backlog_and_drops_the_oldest_ticks():
    from _calls import wait_until
    from fastvoice.rtp import Packet
    from fastvoice.timeline import PlayoutClock

    class StuckPool:
        """Takes batches and finishes none until told to."""

        def __init__(self):
            self.pending = []

        def submit(self, jobs, done, loop):
            self.pending.append((jobs, done))

    stuck = StuckPool()
    clock = PlayoutClock(asyncio.get_running_loop(), max_backlog=4)
    rx = PlayoutReceiver(decode_pool=stuck, clock=clock)  # type: ignore[arg-type]
    ticks = []
    rx.add_listener(ticks.append)
    for n in range(100):
        rx.receive_opus_frame(11, Packet(n, n * 960, 0, counter_packet(n)))
    await wait_until(lambda: rx.dropped_ticks >= 3, timeout=10, what="ticks dropped")
    state = clock._pools[stuck]
    assert len(stuck.pending) == 1 and len(state.waiting) <= 4
    assert clock.dropped == rx.dropped_ticks
    # The pool comes back: the batch in flight, then a waiting one, delivered in order; the
    # dropped ticks are the gap between them.
    for _ in range(2):
        await wait_until(lambda: stuck.pending, timeout=10, what="a batch in the pool")
        jobs, done = stuck.pending.pop()
        done([b"\x00" * 3840] * len(jobs), [])
    rx.close()
    indices = [t.index for t in ticks]
    missing = set(range(indices[-1] + 1)) - set(indices)
    assert indices == sorted(indices) and 3 <= len(missing) <= rx.dropped_ticks
    await clock.close()
