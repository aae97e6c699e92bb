"""Soak: N connections streaming for T seconds against a VoiceServer in another process,
with a fault injected every 30 s (rotating: websocket drop, close 4015, refused resume, a
UDP loss/duplication burst, withheld heartbeat ACKs), sampled every 10 s for growth of RSS,
open fds, asyncio tasks and live objects and, per connection, for what each sent and
received since the previous sample (``bench/soak_client.py``, ``bench/soak_server.py``).

    python -m pytest bench/test_bench_soak.py -s --benchmark-json=bench/soak.json
    python bench/soak_client.py --table bench/soak.json

``FASTVOICE_SOAK_CONNECTIONS`` (default 200), ``FASTVOICE_SOAK_SECONDS`` (default 600),
``FASTVOICE_SOAK_FAULT_INTERVAL`` (30) and ``FASTVOICE_SOAK_SAMPLE_INTERVAL`` (10) pick the
size. With ``--benchmark-disable`` (CI's smoke run of every benchmark) and none of them set,
a 10-connection, 20-second run checks that the benchmark works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
_ENV = ("FASTVOICE_SOAK_CONNECTIONS", "FASTVOICE_SOAK_SECONDS", "FASTVOICE_SOAK_FAULT_INTERVAL",
        "FASTVOICE_SOAK_SAMPLE_INTERVAL")


def run_soak(argv: list[str], timeout: float) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "soak_client.py"), *argv],
        capture_output=True, text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"soak client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_soak(benchmark, capsys):
    import fastvoice
    from soak_client import format_table

    if not fastvoice.speedups_enabled() and os.environ.get("FASTVOICE_NO_EXTENSIONS") != "1":
        pytest.skip("compiled twin not built")
    argv: list[str] = []
    seconds = float(os.environ.get("FASTVOICE_SOAK_SECONDS", "600"))
    if benchmark.disabled and not any(name in os.environ for name in _ENV):
        seconds = 20.0
        argv = ["--connections", "10", "--seconds", "20", "--fault-interval", "4", "--sample-interval", "5"]
    result = benchmark.pedantic(run_soak, args=(argv, 2 * seconds + 900), rounds=1, iterations=1)
    benchmark.group = "soak"
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print("\n" + format_table(result))
    assert result["faults_injected"] > 0
    assert result["faults_survived"] == result["faults_injected"], [f for f in result["faults"] if not f["survived"]]
    assert result["not_streaming_at_end"] == [] and result["not_sending_at_end"] == []
    assert result["not_receiving_at_end"] == []
    end = result["samples"][-1]
    assert end["stalled_send"] == 0 and end["stalled_recv"] == 0, end
