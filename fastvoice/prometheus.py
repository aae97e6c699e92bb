"""Prometheus export of :mod:`fastvoice.metrics` (the optional extra ``fastvoice[metrics]``).

:class:`PrometheusCollector` is a custom collector for the ``prometheus-client`` library: at
each scrape it takes one :class:`~fastvoice.metrics.MetricsSnapshot` and turns it into
metric families (process totals; nothing is updated per packet). Register it with any
registry, or let :func:`start_metrics_server` serve it over HTTP on the event loop::

    server = await fastvoice.prometheus.start_metrics_server(manager, port=9464)
    ...
    await server.close()

Importing this module works without ``prometheus-client``; making a collector or a server
without it raises :class:`MetricsUnavailableError`, which names the extra to install.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from .errors import VoiceError
from .metrics import Metrics, MetricsSnapshot, MetricsSource
from .session_stats import CloseCodeKey, close_code_label

__all__ = [
    "MetricsServer",
    "MetricsUnavailableError",
    "PrometheusCollector",
    "require_prometheus_client",
    "start_metrics_server",
]

#: Seconds a scrape from another thread waits for the event loop to take the snapshot.
SCRAPE_TIMEOUT = 5.0

#: (metric name, help, Counters field) of every counter exported.
_COUNTERS = (
    ("fastvoice_frames_sent_total", "Audio datagrams sent (audio and silence frames).", "frames_sent"),
    ("fastvoice_frames_silence_total", "Silence frames sent.", "frames_silence"),
    ("fastvoice_frames_nulled_total", "Send ticks of a live sender with nothing to send.", "frames_nulled"),
    ("fastvoice_frames_deficit_total", "Send ticks lost to event-loop stalls, summed over senders.", "frames_deficit"),
    ("fastvoice_frame_provider_errors_total", "Exceptions raised by Opus frame providers.", "frame_errors"),
    ("fastvoice_datagrams_received_total", "UDP datagrams received from voice servers.", "datagrams_received"),
    ("fastvoice_datagrams_ignored_total", "Datagrams ignored: not audio, oversized or from elsewhere.",
     "datagrams_ignored"),
    ("fastvoice_datagrams_duplicate_total", "Repeated audio packets dropped.", "datagrams_duplicate"),
    ("fastvoice_datagrams_decrypt_failures_total", "Datagrams that failed transport decryption.",
     "decrypt_failures"),
    ("fastvoice_keepalives_received_total", "UDP keepalives received.", "keepalives_received"),
    ("fastvoice_keepalives_sent_total", "UDP keepalives sent.", "keepalives_sent"),
    ("fastvoice_packets_delivered_total", "Audio packets delivered to frame receivers.", "packets_delivered"),
    ("fastvoice_packets_dropped_total", "Audio packets the receivers dropped (unmapped too long, refused).",
     "packets_dropped"),
    ("fastvoice_dave_transitions_total", "DAVE transitions executed.", "dave_transitions"),
    ("fastvoice_dave_decrypt_failures_total", "Received frames DAVE could not decrypt.", "dave_decrypt_failures"),
    ("fastvoice_dave_recoveries_total", "DAVE recoveries after undecryptable frames.", "dave_recoveries"),
    ("fastvoice_dave_recoveries_abandoned_total", "DAVE recoveries given up.", "dave_recoveries_abandoned"),
    ("fastvoice_dave_invalid_commits_total", "DAVE commits and welcomes that could not be processed.",
     "dave_invalid_commits"),
    ("fastvoice_gateway_connections_total", "Voice gateway websocket connections that reached Hello.",
     "gateway_connections"),
    ("fastvoice_gateway_sessions_total", "Voice gateway sessions identified (Ready).", "gateway_sessions"),
    ("fastvoice_gateway_server_changes_total", "Moves to a new voice server.", "gateway_server_changes"),
)

#: (metric name, help, Counters field) of every counter exported with a ``close_code`` label.
_BY_CODE = (
    ("fastvoice_gateway_reconnects_total",
     "Sessions identified again after a dropped gateway connection, by the close code that led to it.",
     "gateway_reconnects_by_code"),
    ("fastvoice_gateway_resumes_total",
     "Voice gateway sessions resumed after a dropped connection, by the close code that led to it.",
     "gateway_resumes_by_code"),
    ("fastvoice_gateway_closes_total", "Voice gateways stopped for good, by close code.", "gateway_closes"),
)

#: The labels of the per-connection series (``per_connection=True``).
_CONN_LABELS = ["guild_id", "user_id"]


class MetricsUnavailableError(VoiceError):
    """``prometheus-client`` is not installed: ``pip install 'fastvoice[metrics]'``."""


def require_prometheus_client() -> Any:
    """The ``prometheus_client`` module; :class:`MetricsUnavailableError` (naming the extra to
    install) when it is not installed."""
    try:
        import prometheus_client
        import prometheus_client.core  # noqa: F401  (the metric families)
    except ImportError:
        raise MetricsUnavailableError(
            "Prometheus export needs the prometheus-client package: pip install 'fastvoice[metrics]'"
        ) from None
    return prometheus_client


class PrometheusCollector:
    """A ``prometheus-client`` collector of a :class:`~fastvoice.metrics.Metrics` (or of a
    source, for which one is made: on the event loop, or with ``loop=``).

    ``collect()`` takes the snapshot on the connections' event loop: directly when called
    from it, else by handing the read to the loop (at most :data:`SCRAPE_TIMEOUT` seconds), so
    it can be registered with a registry served from another thread.

    The families are process totals. With ``per_connection=True`` every connection also gets
    its own series, under the same names with ``fastvoice_connection_`` in place of
    ``fastvoice_`` and the labels ``guild_id`` and ``user_id`` (plus the gauges
    ``fastvoice_connection_ready`` and ``fastvoice_connection_dave_protocol_version``). It is
    off by default: a bot in thousands of guilds would make thousands of series per counter,
    which Prometheus stores and queries at a cost; the totals never carry those labels, so
    summing them does not count a connection twice. Either way nothing is counted per packet:
    the series are made from the snapshot at scrape time.
    """

    def __init__(self, metrics: Metrics | MetricsSource, *, loop: asyncio.AbstractEventLoop | None = None,
                 per_connection: bool = False) -> None:
        self._client = require_prometheus_client()
        if not isinstance(per_connection, bool):
            raise TypeError(f"per_connection must be a bool, got {type(per_connection).__name__}")
        self.metrics = metrics if isinstance(metrics, Metrics) else Metrics(metrics, loop=loop)
        self.per_connection = per_connection

    def _snapshot(self) -> MetricsSnapshot:
        loop = self.metrics.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or loop.is_closed() or not loop.is_running():
            return self.metrics.snapshot()
        done: concurrent.futures.Future[MetricsSnapshot] = concurrent.futures.Future()

        def take() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(self.metrics.snapshot())
                except BaseException as exc:  # handed to the scraping thread
                    done.set_exception(exc)

        loop.call_soon_threadsafe(take)
        try:
            return done.result(SCRAPE_TIMEOUT)
        finally:
            done.cancel()

    def describe(self) -> list[Any]:
        """No families described up front (the registry then collects to learn the names)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families of one snapshot."""
        core = self._client.core
        snap = self._snapshot()
        totals = snap.totals
        calls = core.GaugeMetricFamily("fastvoice_calls", "Voice connections held.")
        calls.add_metric([], snap.calls)
        yield calls
        ready = core.GaugeMetricFamily("fastvoice_calls_ready", "Voice connections that can carry audio now.")
        ready.add_metric([], snap.calls_ready)
        yield ready
        for name, doc, attr in _COUNTERS:
            family = core.CounterMetricFamily(name, doc)
            family.add_metric([], getattr(totals, attr))
            yield family
        for name, doc, attr in _BY_CODE:
            family = core.CounterMetricFamily(name, doc, labels=["close_code"])
            for code, n in _by_code(getattr(totals, attr)):
                family.add_metric([code], n)
            yield family
        if self.per_connection:
            yield from self._per_connection(snap)
        clock = snap.clock
        if clock is None:
            return
        for name, doc, value in (
            ("fastvoice_send_clock_ticks_total", "Send clock ticks run.", clock.ticks),
            ("fastvoice_send_clock_late_ticks_total", "Send clock ticks that woke more than a frame late.",
             clock.late_ticks),
            ("fastvoice_send_clock_resyncs_total", "Send clock stalls skipped by resynchronising.", clock.resyncs),
        ):
            family = core.CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        live = core.GaugeMetricFamily("fastvoice_send_clock_live_senders", "Senders the send clock works for.")
        live.add_metric([], clock.live_senders)
        yield live
        hist = clock.lateness
        if hist is not None:
            family = core.HistogramMetricFamily(
                "fastvoice_tick_lateness_seconds", "Send clock tick wake-up lateness (after its deadline)."
            )
            buckets = [("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in hist.cumulative()]
            family.add_metric([], buckets, sum_value=hist.sum)
            yield family

    def _per_connection(self, snap: MetricsSnapshot) -> Iterator[Any]:
        core = self._client.core
        conns = [([str(c.guild_id), str(c.user_id)], c) for c in snap.conns]
        for name, doc, value in (
            ("fastvoice_connection_ready", "1 while the connection can carry audio.", lambda c: int(c.ready)),
            ("fastvoice_connection_dave_protocol_version", "The connection's DAVE protocol version (0: none).",
             lambda c: c.dave_protocol_version),
        ):
            gauge = core.GaugeMetricFamily(name, doc, labels=_CONN_LABELS)
            for labels, conn in conns:
                gauge.add_metric(labels, value(conn))
            yield gauge
        for name, doc, attr in _COUNTERS:
            family = core.CounterMetricFamily(_conn_name(name), doc, labels=_CONN_LABELS)
            for labels, conn in conns:
                family.add_metric(labels, getattr(conn.counters, attr))
            yield family
        for name, doc, attr in _BY_CODE:
            family = core.CounterMetricFamily(_conn_name(name), doc, labels=[*_CONN_LABELS, "close_code"])
            for labels, conn in conns:
                for code, n in _by_code(getattr(conn.counters, attr)):
                    family.add_metric([*labels, code], n)
            yield family


def _conn_name(name: str) -> str:
    return "fastvoice_connection_" + name[len("fastvoice_"):]


def _by_code(counts: dict[CloseCodeKey, int]) -> list[tuple[str, int]]:
    """(label, count) pairs in a stable order: none, the codes by number, other."""
    def order(key: CloseCodeKey) -> tuple[int, int]:
        return (1, key) if isinstance(key, int) else (0 if key is None else 2, 0)
    return [(close_code_label(key), counts[key]) for key in sorted(counts, key=order)]


class MetricsServer:
    """An HTTP endpoint serving the Prometheus text format at ``/metrics`` (and ``/``), on
    the event loop (made by :func:`start_metrics_server`). ``port`` is the port bound."""

    def __init__(self, runner: Any, port: int, collector: PrometheusCollector) -> None:
        self._runner = runner
        self.port = port
        self.collector = collector

    async def close(self) -> None:
        """Stop serving and release the socket."""
        await self._runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_metrics_server(source: Metrics | MetricsSource, port: int, host: str = "127.0.0.1", *,
                               per_connection: bool = False) -> MetricsServer:
    """Serve the metrics of ``source`` (see :class:`PrometheusCollector`) at
    ``http://host:port/metrics`` from the running event loop (``port=0``: any free port).
    ``per_connection=True`` adds each connection's series (labelled by guild and user: off by
    default, see :class:`PrometheusCollector`). Raises :class:`MetricsUnavailableError`
    without ``prometheus-client``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}"[:120])
    client = require_prometheus_client()
    collector = PrometheusCollector(source, per_connection=per_connection)
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def handle(request: web.Request) -> web.Response:
        # The text is built on a worker thread: with per-connection series it takes ~150 ms of
        # CPU for 1,000 connections, which on the loop would stall every call's 20 ms tick.
        # The collector takes the snapshot itself on the loop (a few ms), then the thread
        # formats it, giving the loop the GIL back at every switch interval.
        body = await asyncio.get_running_loop().run_in_executor(None, client.generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": client.CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
    except BaseException:
        await runner.cleanup()
        raise
    return MetricsServer(runner, int(bound), collector)
