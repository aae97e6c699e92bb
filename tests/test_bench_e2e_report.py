"""The end-to-end receive benchmark's parts read right: the speaking server's K speakers per
call, the figures of several streams per call, the playout figures and what "holds" means,
and bench/report_e2e.py's largest holding count.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import struct
from pathlib import Path

import pytest

from fastvoice.encryption import EncryptionMode

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the server's speakers ------------------------------------------------------------------


class _Session:
    def __init__(self, guild_id: int, address) -> None:
        self.guild_id = guild_id
        self.mode = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
        self.secret_key = bytes(range(32))
        self.udp_address = address
        self.ssrc = 1000 + guild_id
        self.sent: list[tuple[int, object]] = []

    async def send(self, op, data) -> None:
        self.sent.append((int(op), data))


class _Server:
    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self._next = 5000

    def _new_ssrc(self) -> int:
        self._next += 1
        return self._next


def test_speakers_option_reads_the_environment_and_refuses_nonsense():
    server = _module("receive_server_process")
    assert server.speakers_per_call({}) == 1
    assert server.speakers_per_call({"FASTVOICE_BENCH_SPEAKERS": "4"}) == 4
    for bad in ("0", "-2", "four", "100"):
        with pytest.raises(SystemExit, match="FASTVOICE_BENCH_SPEAKERS"):
            server.speakers_per_call({"FASTVOICE_BENCH_SPEAKERS": bad})
    assert server.stream_key(7, 0, 1) == "7"
    assert server.stream_key(7, 2, 4) == "7/2"


def test_each_call_gets_k_announced_speakers_each_with_its_own_stream():
    server = _module("receive_server_process")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        address = sink.getsockname()
        sessions = [_Session(2, address), _Session(1, address)]
        speakers = server.Speakers(_Server(sessions), sessions, 0.06, None, speakers=3)  # 3 ticks
        asyncio.run(speakers.announce())
        speakers.run(sender)
        datagrams = [sink.recvfrom(2048)[0] for _ in range(2 * 3 * 3)]
    finally:
        sink.close()
        sender.close()
    report = json.loads(json.dumps(speakers.report()))
    assert report["speakers_per_call"] == 3 and report["packets_per_call"] == 3
    assert sorted(report["calls"]) == ["1/0", "1/1", "1/2", "2/0", "2/1", "2/2"]
    streams = report["calls"]
    assert len({s["ssrc"] for s in streams.values()}) == 6
    assert len({s["user_id"] for s in streams.values()}) == 6
    assert not {s["ssrc"] for s in streams.values()} & {1001, 1002}  # no listener's own SSRC
    for session in sessions:
        mine = {s["user_id"]: s["ssrc"] for s in streams.values() if s["guild"] == str(session.guild_id)}
        (op11, connect), *speaking = session.sent
        assert op11 == 11 and sorted(connect.user_ids) == sorted(mine)
        assert [op for op, _ in speaking] == [5, 5, 5]
        assert {d.user_id: d.ssrc for _, d in speaking} == mine
    # the RTP headers (not encrypted in the rtpsize modes): per SSRC, sequence 0, 1, 2 and
    # timestamps 0, 960, 1920; the three ticks' packets in tick order
    seen: dict[int, list[tuple[int, int]]] = {}
    for datagram in datagrams:
        _flags, _pt, seq, ts, ssrc = struct.unpack_from(">BBHII", datagram)
        seen.setdefault(ssrc, []).append((seq, ts))
    assert set(seen) == {s["ssrc"] for s in streams.values()}
    for stream in seen.values():
        assert stream == [(0, 0), (1, 960), (2, 1920)]
    assert all(len(s["sent_us"]) == 3 and None not in s["sent_us"] for s in streams.values())
    assert report["sender_seconds"] > 0


# -- the figures -----------------------------------------------------------------------------


def test_summarize_counts_every_speakers_stream_of_a_call():
    summarize = _module("receive_common").summarize
    sent = [0, 20_000, 40_000]
    report = {"base": 1000.0, "packets_per_call": 3, "late_ticks": 0, "sender_cpu_seconds": 0.03,
              "sender_seconds": 0.06, "speakers_per_call": 2,
              "calls": {f"1/{k}": {"guild": "1", "ssrc": 10 + k, "user_id": 20 + k, "sent_us": sent} for k in (0, 1)}}
    arrivals = {"1/0": ([0, 1, 2], [1000.001, 1000.021, 1000.041]), "1/1": ([0, 2], [1000.002, 1000.042])}
    out = summarize(report, arrivals, n=1, seconds=0.06, cpu=0.012, wall=0.1, rss_per_call_kib=None)
    assert out["calls"] == 1 and out["speakers_per_call"] == 2 and out["streams"] == 2
    assert out["expected"] == 6 and out["received"] == 5 and out["lost"] == 1
    # per second of audio sent: 2 streams x 0.06 s, not 1 call x 0.06 s
    assert out["cpu_us_per_sent_stream_second"] == pytest.approx(0.012 / (2 * 0.06) * 1e6)
    assert out["server_cpu_share_of_one_core"] == pytest.approx(0.5)


def _call(ticks=10, late=0, decoded=8, decoded_packets=8, dropped=0, skipped=0, lags=(0.001,)):
    return {"ticks": ticks, "late": late, "decoded": decoded, "decoded_packets": decoded_packets,
            "dropped_ticks": dropped, "skipped_ticks": skipped, "lags": list(lags)}


def test_playout_summary_holds_only_with_every_frame_and_no_late_tick():
    playout_summary = _module("receive_common").playout_summary
    clean = {"clock_late_ticks": 0, "clock_skipped": 0, "clock_dropped": 0}
    out = playout_summary(16, [_call(decoded=10), _call(lags=(0.002, 0.004))], clean)
    assert out["holds"] is True
    assert out["frames_decoded"] == 16 and out["frames_missing"] == 0
    assert out["frames_concealed"] == 2  # PCM delivered without a packet
    assert out["ticks_delivered"] == 20
    assert out["tick_lag_max_ms"] == pytest.approx(4.0)
    assert out["tick_lag_p50_ms"] == pytest.approx(2.0)
    # one frame short; one late tick; a dropped tick; a skipped one; the clock late: each breaks it
    assert playout_summary(17, [_call(), _call()], clean)["frames_missing"] == 1
    assert playout_summary(17, [_call(), _call()], clean)["holds"] is False
    late = playout_summary(16, [_call(late=2), _call(late=1)], clean)
    assert late["holds"] is False and late["late_ticks"] == 3 and late["late_calls"] == 2
    assert late["worst_call_late_ticks"] == 2
    assert playout_summary(16, [_call(dropped=1), _call()], clean)["holds"] is False
    assert playout_summary(16, [_call(skipped=1), _call()], clean)["holds"] is False
    assert playout_summary(16, [_call(), _call()], dict(clean, clock_late_ticks=1))["holds"] is False
    assert playout_summary(0, [], clean)["holds"] is False  # nothing sent proves nothing


# -- the report ------------------------------------------------------------------------------


def _row(calls, holds, client, server=0.2, machine=None, round_=0):
    return {"extra_info": {"calls": calls, "speakers_per_call": 4, "streams": calls * 4, "round": round_,
                           "holds": holds, "cpu_share_of_one_core": client, "server_cpu_share_of_one_core": server,
                           "machine_busy_cores": machine, "frames_expected": 1, "frames_decoded": 1}}


def test_report_gives_the_largest_size_whose_every_run_held(tmp_path, capsys):
    report = _module("report_e2e")
    first = {"benchmarks": [_row(25, True, 0.25), _row(50, True, 0.5, machine=1.0), _row(75, False, 0.8),
                            _row(100, False, 1.0)]}
    second = {"benchmarks": [_row(25, True, 0.3, round_=1), _row(50, True, 0.55, round_=1),
                             _row(75, True, 0.75, round_=1), _row(100, False, 1.0, round_=1)]}
    paths = []
    for number, data in enumerate((first, second)):
        path = tmp_path / f"e2e{number}.json"
        path.write_text(json.dumps(data))
        paths.append(str(path))
    rows = report.rows_of(paths)
    assert [r["calls"] for r in rows] == [25, 25, 50, 50, 75, 75, 100, 100]
    assert rows[2]["other_cores"] == pytest.approx(0.3)  # 1.0 busy - 0.5 client - 0.2 server
    best = report.largest_holding(rows)
    # 75 held once and failed once: it does not hold; 50 is the largest
    assert best["calls"] == 50 and best["runs"] == 2 and best["speakers"] == 4
    assert best["client_cores"] == pytest.approx(0.55) and best["calls_per_client_core"] == 90
    assert report.smallest_failing(rows) == 75
    report.main(paths)
    out = capsys.readouterr().out
    assert "| 50 x 4 | 200 |" in out
    assert "Largest count that holds: 50 calls x 4 speakers (200 streams, 2 run(s))" in out
    assert report.largest_holding(report.rows_of([paths[0]]))["calls"] == 50
    assert report.largest_holding([{"calls": 5, "holds": False}]) is None
