"""End to end receive at scale: calls x speakers, sent by the server's process, received,
buffered and decoded by one client process, swept over the number of calls.

For each size, ``receive_client.py --playout`` opens N listener calls to
``receive_server_process.py`` with ``FASTVOICE_BENCH_SPEAKERS`` = K speakers announced to each
call (op 11 naming them, op 5 each); the server's sending thread then sends every call K
packets of real Opus per 20 ms tick (each speaker its own SSRC, sequence numbers and
timestamps) for ``FASTVOICE_BENCH_SECONDS``. Each call's ``fastvoice.PlayoutReceiver`` (the
shared decode pool, the loop's one playout clock) buffers and decodes every frame; a
listener on it counts the ticks delivered more than a frame after they were due, and the
frames decoded. A size *holds* when every frame sent was decoded and no tick was late,
dropped or skipped (``receive_common.playout_summary``). Recorded per size: calls x
speakers, streams, frames expected / decoded, late ticks, the client's and the server's CPU
(cores), the machine's total (so other load shows) and whether it held.

    FASTVOICE_BENCH_E2E=25,50,75,100 python -m pytest bench/test_bench_e2e.py --benchmark-json=bench/e2e.json
    python bench/report_e2e.py bench/e2e.json

``FASTVOICE_BENCH_E2E`` (default ``25,50,75,100``) picks the call counts,
``FASTVOICE_BENCH_E2E_SPEAKERS`` (4) the speakers per call, ``FASTVOICE_BENCH_E2E_ROUNDS`` (1)
how many times the whole sweep runs (each round every size once, smallest first). With
``--benchmark-disable`` (CI's smoke run) and none of them set: 3 calls x 4 speakers, 1 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SMOKE = "--benchmark-disable" in sys.argv and not any(
    name in os.environ for name in ("FASTVOICE_BENCH_E2E", "FASTVOICE_BENCH_E2E_SPEAKERS"))
SIZES = [int(n) for n in os.environ.get("FASTVOICE_BENCH_E2E", "3" if SMOKE else "25,50,75,100").split(",")]
SPEAKERS = int(os.environ.get("FASTVOICE_BENCH_E2E_SPEAKERS", "4"))
ROUNDS = int(os.environ.get("FASTVOICE_BENCH_E2E_ROUNDS", "1"))
SECONDS = float(os.environ.get("FASTVOICE_BENCH_SECONDS", "1" if SMOKE else "10"))
#: (round, calls) in the order they run: each round sweeps every size once.
RUNS = [(round_, n) for round_ in range(ROUNDS) for n in SIZES]


def run_client(n: int, speakers: int, seconds: float) -> dict:
    env = dict(os.environ)
    env.pop("FASTVOICE_REQUIRE_EXTENSIONS", None)
    env["FASTVOICE_NO_EXTENSIONS"] = "0"
    env["FASTVOICE_BENCH_SPEAKERS"] = str(speakers)  # read by the server the client starts
    env["FASTVOICE_PYTHON"] = sys.executable
    command = [sys.executable, os.path.join(HERE, "receive_client.py"), str(n), str(seconds), "--playout"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900 + 3 * seconds)
    if out.returncode != 0:
        raise RuntimeError(f"end-to-end client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("round_", "n"), RUNS, ids=[f"round{r}-{n}calls" for r, n in RUNS])
def test_end_to_end_playout_sweep(benchmark, round_, n):
    import fastvoice

    if not fastvoice.speedups_enabled():
        pytest.skip("compiled twin not built (or FASTVOICE_NO_EXTENSIONS=1)")
    benchmark.group = f"end to end, calls x {SPEAKERS} speakers"
    result = benchmark.pedantic(run_client, args=(n, SPEAKERS, SECONDS), rounds=1, iterations=1)
    benchmark.extra_info.update(result, round=round_)
    assert result["calls"] == n and result["speakers_per_call"] == SPEAKERS
    assert result["streams"] == n * SPEAKERS
    assert result["frames_expected"] == n * SPEAKERS * round(SECONDS * 50)
    # a run past the limit is a finding, not a failure; one that decoded nothing is broken
    assert result["frames_decoded"] > 0, result
