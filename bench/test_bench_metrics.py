"""What metrics cost: the send clock's tick with metrics off and on, and one scrape.

Side by side in one run:

- **tick, metrics off / on**: one send-clock tick of SENDERS live senders (real
  ``AudioSender`` objects whose provider has nothing this tick, the cheapest tick, so the
  difference shows most), plus what the clock's loop does for metrics on each tick: nothing
  while off, one ``Histogram.observe`` of the tick's lateness while on. Nothing is added per
  packet: the counters the snapshot reads are kept anyway.
- **snapshot / scrape**: ``Metrics.snapshot()`` of CONNS connections (each with a sender
  and an unopened UDP connection, so every counter is read), and a whole Prometheus scrape
  (the collector's families rendered in the text format). Paid once per scrape, not per
  packet.

    python -m pytest bench/test_bench_metrics.py --benchmark-json=bench/metrics.json

``FASTVOICE_BENCH_METRICS_SENDERS`` (default 1000) and ``FASTVOICE_BENCH_METRICS_CONNS``
(default 1000) pick the sizes.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from fastvoice.audio import AudioSender, SendClock
from fastvoice.conn import Conn
from fastvoice.histogram import Histogram
from fastvoice.metrics import Metrics
from fastvoice.udp import UDPConn

SENDERS = int(os.environ.get("FASTVOICE_BENCH_METRICS_SENDERS", "1000"))
CONNS = int(os.environ.get("FASTVOICE_BENCH_METRICS_CONNS", "1000"))


class Quiet:
    """A provider with nothing to send this tick (the sender stays live and counts it as nulled)."""

    def provide_opus_frame(self):
        return None

    def close(self):
        pass


class NoUDP:
    udp = None

    async def set_speaking(self, flags):
        pass


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _one_tick(clock: SendClock) -> None:
    # What SendClock._run does per tick for metrics, then the tick itself.
    lateness = clock.lateness
    if lateness is not None:
        lateness.observe(0.0003)
    clock.run_tick()


@pytest.mark.parametrize("metrics", ["off", "on"])
def test_tick(benchmark, loop, metrics):
    clock = SendClock(loop, autostart=False)
    senders = [AudioSender(Quiet(), NoUDP(), clock=clock) for _ in range(SENDERS)]
    for sender in senders:
        sender.open()
    clock.lateness = Histogram() if metrics == "on" else None
    benchmark.group = f"send clock tick, {SENDERS} live senders"
    benchmark.extra_info.update(senders=SENDERS, metrics=metrics)
    benchmark(_one_tick, clock)
    assert all(s.stats.nulled > 0 for s in senders)
    if metrics == "on":
        assert clock.lateness.count == clock.ticks


def _conns() -> list[Conn]:
    conns = []
    for i in range(CONNS):
        conn = Conn(10_000 + i, 1, lambda *a: None)
        conn._sender = AudioSender(Quiet(), conn)
        conn._udp = UDPConn()
        conns.append(conn)
    return conns


def test_snapshot(benchmark, loop):
    metrics = Metrics(_conns(), loop=loop)
    benchmark.group = f"one read of {CONNS} connections"
    benchmark.extra_info.update(conns=CONNS)
    snap = benchmark(metrics.snapshot)
    assert snap.calls == CONNS


@pytest.mark.parametrize("per_connection", [False, True], ids=["totals", "per-connection"])
def test_scrape(benchmark, loop, per_connection):
    prometheus_client = pytest.importorskip("prometheus_client")
    from fastvoice.prometheus import PrometheusCollector

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(PrometheusCollector(Metrics(_conns(), loop=loop), per_connection=per_connection))
    benchmark.group = f"one read of {CONNS} connections"
    benchmark.extra_info.update(conns=CONNS, per_connection=per_connection)
    text = benchmark(prometheus_client.generate_latest, registry)
    assert f"fastvoice_calls {float(CONNS)}".encode() in text
    assert (b"fastvoice_connection_frames_sent_total{" in text) is per_connection


def test_lateness_observe(benchmark):
    histogram = Histogram()
    benchmark.group = "per tick, metrics on only"
    benchmark(histogram.observe, 0.0003)
    assert histogram.count > 0
