"""bench/receive_common.py's figures and bench/report_receive.py's table read right.

Every contender of the receive benchmark is judged by the same ``summarize``: a loss, a
duplicate, a held-back tail and the latency from each packet's send time must come out as
the receiver's records say, whatever the contender.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(per_call: int, calls: dict[str, list[int | None]], base: float = 1000.0) -> dict:
    return {"base": base, "packets_per_call": per_call, "late_ticks": 0, "sender_cpu_seconds": 0.5,
            "calls": {g: {"ssrc": 1, "user_id": 2, "sent_us": sent} for g, sent in calls.items()}}


def test_loss_tail_duplicates_and_latency_are_told_apart():
    summarize = _module("receive_common").summarize
    # Two calls of 5 packets sent every 20 ms from base = 1000 s.
    sent = [0, 20_000, 40_000, 60_000, 80_000]
    report = _report(5, {"1": sent, "2": sent})
    arrivals = {
        # packet 2 lost, packet 3 twice, all 1 ms after its send
        "1": ([0, 1, 3, 3, 4], [1000.001, 1000.021, 1000.061, 1000.0615, 1000.081]),
        # the last two held back when the stream stopped; 3 ms late each
        "2": ([0, 1, 2], [1000.003, 1000.023, 1000.043]),
    }
    out = summarize(report, arrivals, n=2, seconds=0.1, cpu=0.02, wall=0.2, rss_per_call_kib=40.0)
    assert out["expected"] == 10
    assert out["received"] == 7
    assert out["duplicates"] == 1
    assert out["lost"] == 1 and out["undelivered_tail"] == 2
    assert out["loss_percent"] == pytest.approx(10.0)
    # latencies: four of 1 ms, three of 3 ms (the duplicate's second copy is not counted)
    assert out["latency_p50_ms"] == pytest.approx(1.0, abs=1e-3)
    assert out["latency_max_ms"] == pytest.approx(3.0, abs=1e-3)
    assert out["cpu_us_per_stream_second"] == pytest.approx(0.02 / (7 * 0.02) * 1e6)  # 7 packets received
    assert out["cpu_us_per_sent_stream_second"] == pytest.approx(0.02 / (2 * 0.1) * 1e6)
    assert out["cpu_share_of_one_core"] == pytest.approx(0.1)


def test_a_packet_the_sender_could_not_send_has_no_latency_and_a_call_with_nothing_is_all_tail():
    summarize = _module("receive_common").summarize
    report = _report(3, {"7": [0, None, 40_000], "8": [0, 20_000, 40_000]})
    out = summarize(report, {"7": ([0, 1, 2], [1000.002, 1000.5, 1000.042])}, n=2, seconds=0.06, cpu=0.0,
                    wall=0.1, rss_per_call_kib=None)
    assert out["received"] == 3 and out["undelivered_tail"] == 3 and out["lost"] == 0
    assert out["latency_max_ms"] == pytest.approx(2.0, abs=1e-3)  # packet 1 had no send time
    assert out["sender_unsent"] == 1


def test_report_compares_each_peer_with_compiled_in_its_own_mode(tmp_path, capsys):
    def row(contender, mode, cpu_us):
        return {"extra_info": {"calls": 100, "contender": contender, "round": 0, "mode": mode,
                               "cpu_us_per_stream_second": cpu_us, "received": 1, "expected": 1}}

    xchacha, aes = "aead_xchacha20_poly1305_rtpsize", "aead_aes256_gcm_rtpsize"
    data = {"benchmarks": [row("discord.js", aes, 900.0), row("compiled", xchacha, 100.0),
                           row("voice-recv", xchacha, 850.0), row("compiled/aes", aes, 90.0),
                           row("py-cord", xchacha, None)]}  # received nothing: no CPU per second received
    path = tmp_path / "receive.json"
    path.write_text(json.dumps(data))
    _module("report_receive").main([str(path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 100 ")]
    assert [line.split(" | ")[1] for line in lines] == ["compiled", "voice-recv", "py-cord", "compiled/aes",
                                                        "discord.js"]
    assert "| XChaCha20 |" in lines[1] and "| 8.5x |" in lines[1]
    assert "x |" not in lines[2].split(" | ", 5)[-1].split(" | ")[0]
    assert "| AES-GCM |" in lines[4] and "| 10.0x |" in lines[4]
