"""Scale-out: the same calls held by one client process, or split over two.

A sharded bot runs one process per shard group, each with its own Manager. For each N this
runs ``connections_client.py`` (N calls, its record-only voice server in a process of its own)
once with N calls, then as two processes side by side with N/2 calls each, and records for
every client process its deficit, the server-measured jitter p99 and its CPU. The two-process
row shows whether halving the calls per process keeps every call on time where one process
falls behind.

    FASTVOICE_BENCH_SCALEOUT=1000,2000,3000 python -m pytest bench/test_bench_scaleout.py \\
        --benchmark-json=bench/scaleout.json
    python bench/report_scaleout.py bench/scaleout.json

``FASTVOICE_BENCH_SECONDS`` (default 10) is the audio each call plays. On this 2-core machine
each client's record-only server also takes CPU, so the clients share the cores with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [int(n) for n in os.environ.get("FASTVOICE_BENCH_SCALEOUT", "1000,2000").split(",")]
SECONDS = float(os.environ.get("FASTVOICE_BENCH_SECONDS", "10"))


def run_clients(counts: list[int], seconds: float) -> list[dict]:
    """Start one connections client per entry of ``counts`` at once; wait for all; their results."""
    env = dict(os.environ)
    env.pop("FASTVOICE_REQUIRE_EXTENSIONS", None)
    command = [sys.executable, os.path.join(HERE, "connections_client.py")]
    procs = [subprocess.Popen([*command, str(n), str(seconds)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in counts]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600 + 2 * seconds)
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark client failed:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("n", SIZES)
def test_calls_split_over_processes(benchmark, n, processes):
    import fastvoice

    if not fastvoice.speedups_enabled():
        pytest.skip("measured with the compiled core")
    counts = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    benchmark.group = f"{n} calls"
    results = benchmark.pedantic(run_clients, args=(counts, SECONDS), rounds=1, iterations=1)
    benchmark.extra_info.update(
        calls=n, processes=processes, audio_seconds=SECONDS,
        deficit=sum(r["deficit"] for r in results),
        jitter_p99_ms=max(r["jitter_p99_ms"] for r in results if r["jitter_p99_ms"] is not None),
        cpu_cores=round(sum(r["cpu_share_of_one_core"] for r in results), 3),
        per_process=[{k: r[k] for k in ("opened", "deficit", "jitter_p99_ms", "cpu_share_of_one_core",
                                         "stream_seconds")} for r in results],
    )
    assert sum(r["opened"] for r in results) == n
