"""Operator metrics: the snapshot API (fastvoice.metrics) and its Prometheus export, checked
against what the local voice server recorded."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest

from fastvoice.audio import SendClock
from fastvoice.errors import GatewayClosedError
from fastvoice.gateway_protocol import GatewayProtocol, State
from fastvoice.histogram import TICK_LATENESS_BUCKETS, Histogram
from fastvoice.metrics import Counters, Metrics, snapshot
from fastvoice.session_stats import (
    KNOWN_CLOSE_CODES,
    OTHER_CLOSE_CODE,
    SessionStats,
    close_code_key,
    close_code_label,
)
from fastvoice.testing import VoiceServer

from _calls import Collect, make_manager, opus_stream, wait_until

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fastvoice.prometheus import MetricsUnavailableError, PrometheusCollector, start_metrics_server  # noqa: E402

GUILD, CHANNEL, SPEAKER, LISTENER = 500, 600, 1, 2
FRAMES = [bytes([0xFC, i, i, i]) for i in range(1, 41)]


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by (name, labels)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples, name):
    """The sum of every sample of ``name``, whatever its labels."""
    return sum(v for (n, _), v in samples.items() if n == name)


def labelled(samples, name, label):
    """``{label value: sample value}`` of every sample of ``name``."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


# -- the histogram ---------------------------------------------------------------------


def test_histogram_buckets_are_upper_bounds_inclusive():
    h = Histogram((0.001, 0.01))
    for v in (-1.0, 0.0, 0.001, 0.0011, 0.01, 0.5):
        h.observe(v)
    assert h.counts == [3, 2, 1]  # (-1 as 0), 0, 0.001 | 0.0011, 0.01 | 0.5
    assert h.cumulative() == [(0.001, 3), (0.01, 5), (float("inf"), 6)]
    assert h.count == 6 and h.sum == pytest.approx(0.5121)
    twin = h.copy()
    h.observe(0.0)
    assert twin.count == 6 and twin.counts == [3, 2, 1]


@pytest.mark.parametrize("bounds", [(), (0.2, 0.1), (0.1, 0.1), (-0.1, 1.0)])
def test_histogram_refuses_bounds_that_are_not_increasing(bounds):
    with pytest.raises(ValueError, match="bounds must be increasing"):
        Histogram(bounds)


async def test_tick_lateness_is_kept_only_when_metrics_are_on():
    clock = SendClock.for_loop()
    assert clock.lateness is None  # off by default: the tick loop observes nothing
    Metrics([])
    assert clock.lateness is not None and clock.lateness.bounds == TICK_LATENESS_BUCKETS
    snapshot([])  # a one-shot read does not turn it off, nor on elsewhere
    assert clock.lateness is not None


# -- the UDP counter the snapshot needed -----------------------------------------------


def test_router_counts_every_datagram_handed_in(rtp):
    seen = []
    router = rtp.DatagramRouter(lambda data, addr: seen.append(data) or True, 4096, None)
    router.remote = ("127.0.0.1", 9)
    router.slow = True  # offered to the slow path (IP discovery): taken there
    for data in (b"x", b"\x00" * 8, b"y" * 100):
        router.datagram_received(data, ("127.0.0.1", 9))
    assert router.received == 3 and len(seen) == 3
    router.slow = False  # no route yet: dropped, and still counted as received
    router.datagram_received(b"z" * 20, ("127.0.0.1", 9))
    router.datagram_received(b"z" * 20, ("127.0.0.2", 9))  # from elsewhere
    assert router.received == 5 and len(seen) == 3


# -- a call against the local server, scraped --------------------------------------------


async def test_metrics_of_a_dave_call_match_what_the_server_recorded():
    async with VoiceServer(dave_protocol_version=1, require_dave=True) as server:
        _, speakers = make_manager(server, SPEAKER)
        _, listeners = make_manager(server, LISTENER)
        metrics = Metrics([speakers, listeners])
        async with await start_metrics_server(metrics, 0) as endpoint:
            speaker, listener = speakers.create_conn(GUILD), listeners.create_conn(GUILD)
            heard = Collect()
            listener.set_opus_frame_receiver(heard)
            await asyncio.gather(speaker.open(CHANNEL), listener.open(CHANNEL))
            await wait_until(lambda: speaker.dave.ready and listener.dave.ready, what="DAVE ready")
            speaker.set_opus_frame_provider(opus_stream(FRAMES))
            expected = len(FRAMES) + 5  # the frames, then five silence frames
            await wait_until(lambda: len(heard.frames) >= expected and not speaker.sender.live, 10, "stream heard")
            samples = await scrape(endpoint.port)

            recorded = server.packets(speaker.udp.ssrc)
            assert speaker.sender.stats.sent == expected
            assert value(samples, "fastvoice_frames_sent_total") == expected == len(recorded)
            assert value(samples, "fastvoice_frames_silence_total") == 5
            assert value(samples, "fastvoice_packets_delivered_total") == len(heard.frames) == expected
            # The listener's socket got every forwarded packet; discovery replies come on top.
            assert value(samples, "fastvoice_datagrams_received_total") >= expected + 2
            assert value(samples, "fastvoice_datagrams_decrypt_failures_total") == 0
            assert value(samples, "fastvoice_calls") == 2
            assert value(samples, "fastvoice_calls_ready") == 2
            assert value(samples, "fastvoice_gateway_sessions_total") == 2
            assert value(samples, "fastvoice_gateway_connections_total") == 2
            assert total(samples, "fastvoice_gateway_resumes_total") == 0  # no close code: no series yet
            assert value(samples, "fastvoice_dave_transitions_total") >= 2
            assert value(samples, "fastvoice_dave_decrypt_failures_total") == 0
            ticks = value(samples, "fastvoice_send_clock_ticks_total")
            assert ticks >= expected
            # Every tick of the clock since metrics were enabled is in the histogram.
            assert value(samples, "fastvoice_tick_lateness_seconds_count") == ticks
            assert value(samples, "fastvoice_tick_lateness_seconds_bucket", le="+Inf") == ticks

            snap = metrics.snapshot()
            by_guild = {(c.guild_id, c.counters.frames_sent > 0): c for c in snap.conns}
            mine = by_guild[(GUILD, True)].counters
            assert mine.frames_sent == expected and mine.packets_delivered == 0
            assert by_guild[(GUILD, False)].counters.packets_delivered == expected
            assert all(c.dave_protocol_version == 1 and c.ready and c.channel_id == CHANNEL for c in snap.conns)
            await asyncio.gather(speakers.close(), listeners.close())


async def test_reconnects_resumes_and_closes_are_counted_by_what_followed():
    async with VoiceServer() as server:
        _, manager = make_manager(server, SPEAKER)
        metrics = Metrics(manager)
        conn = manager.create_conn(GUILD)
        conn.set_opus_frame_provider(opus_stream(FRAMES))
        await conn.open(CHANNEL)
        await wait_until(lambda: conn.sender is not None and conn.sender.stats.sent >= 5, what="audio out")
        first_udp = conn.udp
        sent_before = metrics.snapshot().totals.frames_sent

        await server.session_for_user(SPEAKER).close(4015)  # voice server crashed: resume
        await wait_until(lambda: conn.session_stats.resumes == 1, what="resume")
        await server.session_for_user(SPEAKER).close(4006)  # session no longer valid: new session
        await wait_until(lambda: conn.session_stats.reconnects == 1 and conn.udp is not None
                         and conn.udp is not first_udp and conn.udp.packetizer is not None, what="new session")
        stats = conn.session_stats
        assert (stats.connections, stats.sessions, stats.resumes, stats.reconnects) == (3, 2, 1, 1)
        assert stats.resumes_by_code == {4015: 1} and stats.reconnects_by_code == {4006: 1}
        snap = metrics.snapshot()
        totals = snap.totals
        assert totals.gateway_resumes == 1 and totals.gateway_reconnects == 1
        assert totals.gateway_resumes_by_code == {4015: 1} and totals.gateway_reconnects_by_code == {4006: 1}
        (mine,) = snap.conns
        assert mine.counters.gateway_resumes_by_code == {4015: 1}
        assert mine.counters.gateway_reconnects_by_code == {4006: 1}
        # The first socket's counts stay in the totals after the new session replaced it.
        assert totals.frames_sent >= sent_before
        assert totals.datagrams_received >= first_udp.datagrams_received + conn.udp.datagrams_received

        await server.session_for_user(SPEAKER).close(4004)  # authentication failed: stop
        await wait_until(lambda: conn.session_stats.closes, what="stop")
        assert conn.session_stats.closes == {4004: 1}
        assert metrics.snapshot().totals.gateway_closes == {4004: 1}
        async with await start_metrics_server(metrics, 0) as endpoint:
            samples = await scrape(endpoint.port)
        assert labelled(samples, "fastvoice_gateway_closes_total", "close_code") == {"4004": 1}
        assert labelled(samples, "fastvoice_gateway_resumes_total", "close_code") == {"4015": 1}
        assert labelled(samples, "fastvoice_gateway_reconnects_total", "close_code") == {"4006": 1}
        await manager.close()
        # Gone, the connection's counts by close code stay in the totals.
        totals = metrics.snapshot().totals
        assert (totals.gateway_resumes_by_code, totals.gateway_reconnects_by_code, totals.gateway_closes) == (
            {4015: 1}, {4006: 1}, {4004: 1})


async def test_resumes_after_a_drop_or_an_unknown_close_code_have_their_own_labels():
    async with VoiceServer() as server:
        _, manager = make_manager(server, SPEAKER)
        metrics = Metrics(manager)
        conn = manager.create_conn(GUILD)
        await conn.open(CHANNEL)
        server.session_for_user(SPEAKER).drop()  # no close frame
        await wait_until(lambda: conn.session_stats.resumes == 1, what="resume after a drop")
        await server.session_for_user(SPEAKER).close(4321)  # not in any table: resumed as a drop
        await wait_until(lambda: conn.session_stats.resumes == 2, what="resume after 4321")
        assert conn.session_stats.resumes_by_code == {None: 1, "other": 1}
        assert metrics.snapshot().totals.gateway_resumes_by_code == {None: 1, "other": 1}
        async with await start_metrics_server(metrics, 0) as endpoint:
            samples = await scrape(endpoint.port)
        assert labelled(samples, "fastvoice_gateway_resumes_total", "close_code") == {"none": 1, "other": 1}
        assert total(samples, "fastvoice_gateway_reconnects_total") == 0
        await manager.close()


def test_the_code_that_began_a_reconnect_is_kept_until_the_session_is_back():
    protocol = GatewayProtocol()
    protocol.start(State(guild_id=1, user_id=2, channel_id=3, session_id="s", token="t", endpoint="e"))
    protocol.receive_text('{"op": 2, "d": {"ssrc": 1, "ip": "127.0.0.1", "port": 9, "modes": []}}', 0.0)
    protocol.on_close(4015)
    protocol.on_close(None)  # the resume's connection was lost: the outage began with 4015
    assert protocol.reconnect_close_code == 4015
    protocol.on_close(4006)  # a later close frame says more: a new session follows it
    assert protocol.reconnect_close_code == 4006
    protocol.receive_text('{"op": 9, "d": null}', 1.0)
    assert protocol.reconnect_close_code == 4006  # still readable when Resumed is handed on
    protocol.on_close(None)  # a new outage, without a close frame
    assert protocol.reconnect_close_code is None


class _StubGateway:
    def __init__(self) -> None:
        self.reconnect_close_code = None


def test_a_flood_of_unknown_close_codes_stays_in_a_bounded_set():
    stats, gateway = SessionStats(), _StubGateway()
    stats.on_event(gateway, 8)
    stats.on_event(gateway, 2)
    codes = list(range(70_000)) + [-5, 2**40, True, "4015", None]
    for code in codes:
        gateway.reconnect_close_code = code
        stats.on_event(gateway, 8)  # a new connection's Hello, then a Resumed and a Ready
        stats.on_event(gateway, 9)
        stats.on_event(gateway, 2)
        stats.on_closed(GatewayClosedError(code, None))
    bound = len(KNOWN_CLOSE_CODES) + 2  # the known codes, None and "other"
    for counts in (stats.resumes_by_code, stats.reconnects_by_code, stats.closes):
        assert len(counts) <= bound and sum(counts.values()) == len(codes)
        assert set(counts) <= set(KNOWN_CLOSE_CODES) | {None, OTHER_CLOSE_CODE}
        assert counts[4015] == 1 and counts[None] == 1  # 4015 is known; "4015" (a str) is not
        known = sum(1 for c in codes if type(c) is int and c in KNOWN_CLOSE_CODES)
        assert counts[OTHER_CLOSE_CODE] == len(codes) - known - 1
    assert close_code_key(4015) == 4015 and close_code_key(True) == close_code_key(65535) == OTHER_CLOSE_CODE
    assert [close_code_label(k) for k in (None, 4015, OTHER_CLOSE_CODE)] == ["none", "4015", "other"]


async def test_a_flood_of_close_codes_makes_a_bounded_number_of_series():
    async with VoiceServer() as server:
        _, manager = make_manager(server, SPEAKER)
        conn = manager.create_conn(GUILD)
        gateway = _StubGateway()
        for code in range(4000, 6000):
            gateway.reconnect_close_code = code
            conn.session_stats.on_event(gateway, 9)
            conn.session_stats.on_closed(GatewayClosedError(code, None))
        collector = PrometheusCollector(manager, per_connection=True)
        families = {f.name: f for f in collector.collect()}
        for name in ("fastvoice_gateway_resumes", "fastvoice_gateway_closes",
                     "fastvoice_connection_gateway_resumes"):
            values = {s.labels["close_code"]: s.value for s in families[name].samples if s.name.endswith("_total")}
            assert len(values) <= len(KNOWN_CLOSE_CODES) + 2
            assert sum(values.values()) == 2000 and values["4015"] == 1
            assert values["other"] == 2000 - len([c for c in KNOWN_CLOSE_CODES if 4000 <= c < 6000])


async def test_totals_keep_the_counts_of_connections_that_went_away():
    async with VoiceServer() as server:
        _, manager = make_manager(server, SPEAKER)
        metrics = Metrics(manager)
        conn = manager.create_conn(GUILD)
        conn.set_opus_frame_provider(opus_stream(FRAMES[:5]))
        await conn.open(CHANNEL)
        assert conn.sender is not None
        assert metrics.snapshot().totals.frames_sent < 10  # the last read before it goes away
        await wait_until(lambda: conn.sender.stats.sent == 10, what="stream sent")
        udp = conn.udp
        await conn.close()
        assert conn.sender is None and conn.udp is None
        snap = metrics.snapshot()
        assert snap.calls == 0 and snap.conns == ()
        # The counts it made after the last read are in the totals too: its parts' final ones.
        assert snap.totals.frames_sent == 10 and snap.totals.gateway_sessions == 1
        assert snap.totals.datagrams_received == udp.datagrams_received > 0
        assert metrics.snapshot().totals.frames_sent == 10  # counted once


async def test_one_shot_snapshot_reads_a_conn_or_managers():
    async with VoiceServer() as server:
        _, manager = make_manager(server, SPEAKER)
        conn = manager.create_conn(GUILD)
        assert snapshot(conn).calls == 1 and snapshot([manager]).conns[0].ready is False
        with pytest.raises(TypeError, match="Managers or Conns, got int"):
            snapshot([manager, 3])
        with pytest.raises(TypeError, match="got int"):
            Metrics(5)


async def test_per_connection_series_are_served_only_when_asked():
    async with VoiceServer() as server:
        _, speakers = make_manager(server, SPEAKER)
        _, listeners = make_manager(server, LISTENER)
        metrics = Metrics([speakers, listeners])
        speaker, listener = speakers.create_conn(GUILD), listeners.create_conn(GUILD)
        other = speakers.create_conn(GUILD + 1)
        heard = Collect()
        listener.set_opus_frame_receiver(heard)
        await asyncio.gather(speaker.open(CHANNEL), listener.open(CHANNEL), other.open(CHANNEL + 1))
        speaker.set_opus_frame_provider(opus_stream(FRAMES[:5]))
        await wait_until(lambda: len(heard.frames) >= 10 and not speaker.sender.live, 10, "stream heard")
        await server.session_for_user(LISTENER).close(4015)
        await wait_until(lambda: listener.session_stats.resumes == 1, what="resume")

        async with await start_metrics_server(metrics, 0) as plain:
            samples = await scrape(plain.port)
        assert not [name for name, _ in samples if name.startswith("fastvoice_connection_")]
        assert all("guild_id" not in dict(labels) for _, labels in samples)

        async with await start_metrics_server(metrics, 0, per_connection=True) as endpoint:
            samples = await scrape(endpoint.port)
        g, s_, l_ = str(GUILD), str(SPEAKER), str(LISTENER)
        sent = labelled(samples, "fastvoice_connection_frames_sent_total", "guild_id")
        assert set(sent) == {g, str(GUILD + 1)}  # one series per connection, by guild and user
        assert value(samples, "fastvoice_connection_frames_sent_total", guild_id=g, user_id=s_) == 10
        assert value(samples, "fastvoice_connection_frames_sent_total", guild_id=g, user_id=l_) == 0
        assert value(samples, "fastvoice_connection_packets_delivered_total", guild_id=g, user_id=l_) == 10
        assert value(samples, "fastvoice_connection_ready", guild_id=str(GUILD + 1), user_id=s_) == 1
        assert value(samples, "fastvoice_connection_dave_protocol_version", guild_id=g, user_id=l_) == 0
        assert value(samples, "fastvoice_connection_gateway_resumes_total",
                     guild_id=g, user_id=l_, close_code="4015") == 1
        assert labelled(samples, "fastvoice_connection_gateway_resumes_total", "user_id") == {l_: 1}
        # The totals keep their names and labels: per-connection series never count twice.
        assert value(samples, "fastvoice_frames_sent_total") == 10
        assert labelled(samples, "fastvoice_gateway_resumes_total", "close_code") == {"4015": 1}
        assert total(samples, "fastvoice_connection_frames_sent_total") == value(samples, "fastvoice_frames_sent_total")
        with pytest.raises(TypeError, match="per_connection must be a bool, got str"):
            PrometheusCollector(metrics, per_connection="yes")
        await asyncio.gather(speakers.close(), listeners.close())


def test_metrics_needs_the_loop_outside_one():
    with pytest.raises(RuntimeError, match="event loop"):
        Metrics([])


async def test_collector_takes_the_snapshot_on_the_loop_when_scraped_from_a_thread():
    collector = PrometheusCollector([])
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = await asyncio.get_running_loop().run_in_executor(None, prometheus_client.generate_latest, registry)
    assert b"fastvoice_calls 0.0" in text


async def test_server_refuses_a_bad_port():
    with pytest.raises(ValueError, match="port must be an int in 0..65535, got 70000"):
        await start_metrics_server([], 70000)


# -- without prometheus-client -----------------------------------------------------------


async def test_exporter_names_the_extra_when_prometheus_client_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(MetricsUnavailableError, match=r"pip install 'fastvoice\[metrics\]'"):
        PrometheusCollector([])
    with pytest.raises(MetricsUnavailableError, match="prometheus-client"):
        await start_metrics_server([], 0)


def test_fastvoice_and_its_metrics_import_without_prometheus_client():
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "import fastvoice, fastvoice.metrics, fastvoice.prometheus; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_counters_add_sums_every_field():
    a, b = Counters(frames_sent=2, gateway_closes={4004: 1}), Counters(frames_sent=3, gateway_closes={4004: 1, None: 2})
    a.add(b)
    assert a.frames_sent == 5 and a.gateway_closes == {4004: 2, None: 2}


# -- the demo serves them ----------------------------------------------------------------


@pytest.mark.parametrize("in_process", [True, False], ids=["one-process", "bots-apart"])
async def test_demo_serves_its_metrics_while_it_runs(monkeypatch, capsys, in_process):
    import re

    from fastvoice import _demo, _demo_speakers, prometheus

    scraped, speaker_scraped = [], []
    close = prometheus.MetricsServer.close
    close_speakers = _demo_speakers.SpeakerBotProcess.close

    async def scrape_then_close(self):  # the demo closes the endpoint after its last packet
        scraped.append(await scrape(self.port))
        await close(self)

    async def scrape_speakers_then_close(self):  # the speaker bot's endpoint lives until its process ends
        speaker_scraped.append(await scrape(int(self.metrics_url.rsplit(":", 1)[1].split("/")[0])))
        await close_speakers(self)

    monkeypatch.setattr(prometheus.MetricsServer, "close", scrape_then_close)
    monkeypatch.setattr(_demo_speakers.SpeakerBotProcess, "close", scrape_speakers_then_close)
    status = await _demo.run(2, 0.5, True, in_process=in_process, metrics_port=0)
    out = capsys.readouterr().out
    assert status == _demo.OK, out
    assert re.search(r"Prometheus metrics at http://127\.0\.0\.1:\d+/metrics", out)
    (samples,) = scraped
    sent = int(re.search(r"packets sent\s+(\d+) \(", out).group(1))
    read = int(re.search(r"read by the test server\s+(\d+) \(", out).group(1))
    heard = int(re.search(r"frames received\s+(\d+) of", out).group(1))
    assert sent == 2 * (25 + 5) == read  # two calls: 0.5 s of frames, then five silence frames
    assert value(samples, "fastvoice_packets_delivered_total") == heard == sent
    if in_process:  # one endpoint for both bots
        assert not speaker_scraped
        assert value(samples, "fastvoice_frames_sent_total") == sent
        assert value(samples, "fastvoice_calls") == value(samples, "fastvoice_calls_ready") == 4
        assert value(samples, "fastvoice_dave_transitions_total") >= 4
        assert value(samples, "fastvoice_tick_lateness_seconds_count") > 0
    else:  # the speaker bot's process serves its own
        assert re.search(r"\(the speaker bot's at http://127\.0\.0\.1:\d+/metrics\)", out)
        (speaker,) = speaker_scraped
        assert value(speaker, "fastvoice_frames_sent_total") == sent
        assert value(speaker, "fastvoice_tick_lateness_seconds_count") > 0
        assert value(samples, "fastvoice_frames_sent_total") == 0
        assert value(samples, "fastvoice_calls") == value(speaker, "fastvoice_calls") == 2
        assert value(samples, "fastvoice_dave_transitions_total") >= 2 <= value(speaker, "fastvoice_dave_transitions_total")


def test_demo_metrics_port_is_checked():
    from fastvoice._demo import parser

    assert parser().parse_args(["--metrics-port", "9464"]).metrics_port == 9464
    assert parser().parse_args([]).metrics_port is None
    for bad in ("-1", "65536", "http"):
        run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", "--metrics-port", bad],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "expected a TCP port from 0 to 65535" in run.stderr, run.stderr


def test_demo_without_prometheus_client_names_the_extra():
    code = ("import sys; sys.modules['prometheus_client'] = None; from fastvoice._demo import main; "
            "sys.exit(main(['-n', '1', '--metrics-port', '0']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "pip install 'fastvoice[metrics]'" in run.stderr and "Traceback" not in run.stderr


async def test_the_endpoint_builds_its_text_off_the_event_loop(monkeypatch):
    # A per-connection scrape of a thousand connections is ~150 ms of formatting: on the loop it
    # would stall every call's tick. The snapshot is still taken on the loop (it reads live objects).
    import threading

    import prometheus_client

    from fastvoice import metrics as metrics_module

    loop_thread = threading.get_ident()
    formatted, snapped = [], []
    generate = prometheus_client.generate_latest
    take = metrics_module.Metrics.snapshot

    def spy_generate(registry):
        formatted.append(threading.get_ident())
        return generate(registry)

    def spy_snapshot(self):
        snapped.append(threading.get_ident())
        return take(self)

    monkeypatch.setattr(prometheus_client, "generate_latest", spy_generate)
    monkeypatch.setattr(metrics_module.Metrics, "snapshot", spy_snapshot)
    async with VoiceServer() as server:
        _, speakers = make_manager(server, SPEAKER)
        conn = speakers.create_conn(GUILD)
        await conn.open(CHANNEL)
        async with await start_metrics_server(speakers, 0, per_connection=True) as endpoint:
            samples = await scrape(endpoint.port)
        await speakers.close()
    assert value(samples, "fastvoice_calls") == 1
    assert formatted and all(thread != loop_thread for thread in formatted)
    assert snapped and all(thread == loop_thread for thread in snapped)
