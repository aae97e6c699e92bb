"""ThreadedOpusFrameReceiver: a blocking receiver run off the event loop, in order, bounded."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fastvoice import ThreadedOpusFrameReceiver
from fastvoice.rtp import Packet


class Recorder:
    """Records every call with the thread it ran on; ``gate`` (an Event) holds each frame until set."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None, fail_on: int | None = None):
        self.calls: list[tuple] = []
        self.threads: set[int] = set()
        self.delay = delay
        self.gate = gate
        self.fail_on = fail_on

    def receive_opus_frame(self, user_id, packet):
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        if packet.sequence == self.fail_on:
            raise RuntimeError("receiver broke")
        self.calls.append(("frame", user_id, packet.sequence, packet.opus))

    def cleanup_user(self, user_id):
        self.threads.add(threading.get_ident())
        self.calls.append(("cleanup", user_id))

    def close(self):
        self.threads.add(threading.get_ident())
        self.calls.append(("close",))


def packet(n: int) -> Packet:
    return Packet(n, 960 * n, 1234, bytes([n % 256]) * 20)


def test_calls_run_in_order_in_one_worker_thread_and_close_comes_last():
    inner = Recorder(delay=0.001)
    threaded = ThreadedOpusFrameReceiver(inner)
    for n in range(50):
        threaded.receive_opus_frame(7, packet(n))
        if n == 24:
            threaded.cleanup_user(7)
    threaded.close()
    assert threaded.closed
    assert threaded.join(5)
    expected = [("frame", 7, n, bytes([n]) * 20) for n in range(25)] + [("cleanup", 7)]
    expected += [("frame", 7, n, bytes([n]) * 20) for n in range(25, 50)] + [("close",)]
    assert inner.calls == expected
    assert len(inner.threads) == 1 and threading.get_ident() not in inner.threads
    assert (threaded.delivered, threaded.dropped, threaded.errors, threaded.pending) == (50, 0, 0, 0)


def test_a_full_queue_drops_new_frames_and_counts_them_but_never_a_cleanup():
    gate = threading.Event()
    inner = Recorder(gate=gate)
    threaded = ThreadedOpusFrameReceiver(inner, max_pending=10)
    for n in range(30):  # the first is taken by the worker and waits at the gate
        threaded.receive_opus_frame(1, packet(n))
    threaded.cleanup_user(1)
    assert threaded.dropped >= 19  # nothing beyond max_pending waits
    gate.set()
    threaded.close()
    assert threaded.join(5)
    frames = [c[2] for c in inner.calls if c[0] == "frame"]
    assert frames == sorted(frames) and frames[0] == 0
    assert len(frames) + threaded.dropped == 30 and len(frames) <= 11
    assert inner.calls[-2:] == [("cleanup", 1), ("close",)]


def test_receiver_exceptions_are_logged_and_counted_and_the_worker_goes_on(caplog):
    inner = Recorder(fail_on=3)
    threaded = ThreadedOpusFrameReceiver(inner)
    with caplog.at_level(logging.ERROR, logger="fastvoice.opus"):
        for n in range(6):
            threaded.receive_opus_frame(1, packet(n))
        threaded.close()
        assert threaded.join(5)
    assert [c[2] for c in inner.calls if c[0] == "frame"] == [0, 1, 2, 4, 5]
    assert threaded.errors == 1 and threaded.delivered == 5
    assert any("receiver broke" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_a_failing_close_still_ends_the_worker():
    class BadClose(Recorder):
        def close(self):
            raise OSError("disk gone")

    threaded = ThreadedOpusFrameReceiver(BadClose())
    threaded.close()
    assert threaded.join(5) and threaded.errors == 1


def test_frames_after_close_are_dropped_and_close_is_idempotent():
    inner = Recorder()
    threaded = ThreadedOpusFrameReceiver(inner)
    threaded.close()
    threaded.close()
    threaded.receive_opus_frame(1, packet(1))
    threaded.cleanup_user(1)
    assert threaded.join(5)
    assert inner.calls == [("close",)] and threaded.dropped == 1


async def test_wait_closed_does_not_block_the_loop():
    inner = Recorder(delay=0.05)
    threaded = ThreadedOpusFrameReceiver(inner)
    for n in range(4):
        threaded.receive_opus_frame(1, packet(n))
    threaded.close()
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    assert await threaded.wait_closed(5)
    ticker.cancel()
    assert ticks >= 10  # the loop kept running for the ~200 ms the worker needed
    assert inner.calls[-1] == ("close",) and threaded.delivered == 4


def test_bad_arguments_are_rejected_by_name():
    with pytest.raises(TypeError, match="receiver must be an OpusFrameReceiver .*not object"):
        ThreadedOpusFrameReceiver(object())
    for max_pending in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"max_pending must be a positive int, got {max_pending!r}"):
            ThreadedOpusFrameReceiver(Recorder(), max_pending=max_pending)


def test_an_open_receiver_is_closed_at_exit_after_its_queued_frames():
    program = textwrap.dedent("""
        import time
        from fastvoice import ThreadedOpusFrameReceiver
        from fastvoice.rtp import Packet

        class Slow:
            n = 0
            def receive_opus_frame(self, user_id, packet):
                time.sleep(0.01)
                self.n += 1
            def cleanup_user(self, user_id):
                pass
            def close(self):
                print("closed after", self.n, "frames", flush=True)

        receiver = ThreadedOpusFrameReceiver(Slow())
        for n in range(20):
            receiver.receive_opus_frame(1, Packet(n, 0, 1, b"x"))
        print("main done", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["main done", "closed after 20 frames"]
