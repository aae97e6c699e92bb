"""N live voice connections in one process, against a VoiceServer in another process.

For each N: open N guild connections through a Manager, stream the same Opus frames on
all of them for STREAM_SECONDS, and record the client process's CPU time per connection,
its RSS growth per connection, the send clock's deficit, and the inter-arrival jitter
(|gap - 20 ms|) the server measured. Compiled and pure twins run in separate processes
(the twin is chosen at import). The peers run the same load through their own voice
clients: discord.py 2.7's ``VoiceClient`` (``discordpy_client.py``) and @discordjs/voice in
Node.js (``discordjs/client.mjs``; needs ``node`` and ``cd bench/discordjs && npm ci``).

    python -m pytest bench/test_bench_connections.py --benchmark-json=bench/connections.json
    python bench/report_connections.py bench/connections.json

``FASTVOICE_BENCH_CONNECTIONS`` (default ``100,500,1000,2000``) and
``FASTVOICE_BENCH_SECONDS`` (default 10) pick the sizes; CI runs a tiny smoke size.
``FASTVOICE_BENCH_DISCORDPY_MAX`` (default 500) and ``FASTVOICE_BENCH_DISCORDJS_MAX``
(default 1000) cap the peers' sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [int(n) for n in os.environ.get("FASTVOICE_BENCH_CONNECTIONS", "100,500,1000,2000").split(",")]
SECONDS = float(os.environ.get("FASTVOICE_BENCH_SECONDS", "10"))


DISCORDPY_MAX = int(os.environ.get("FASTVOICE_BENCH_DISCORDPY_MAX", "500"))
DISCORDJS_MAX = int(os.environ.get("FASTVOICE_BENCH_DISCORDJS_MAX", "1000"))
DISCORDJS_DIR = os.path.join(HERE, "discordjs")


def discordjs_missing() -> str | None:
    """Why the @discordjs/voice peer cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not os.path.isdir(os.path.join(DISCORDJS_DIR, "node_modules", "@discordjs", "voice")):
        return "bench/discordjs/node_modules is missing (run: cd bench/discordjs && npm ci)"
    return None


def run_client(n: int, seconds: float, twin: str) -> dict:
    env = dict(os.environ)
    env.pop("FASTVOICE_REQUIRE_EXTENSIONS", None)
    env["FASTVOICE_NO_EXTENSIONS"] = "1" if twin == "pure" else "0"
    if twin == "discord.js":
        env["FASTVOICE_PYTHON"] = sys.executable  # runs the voice server
        command = [shutil.which("node") or "node", os.path.join(DISCORDJS_DIR, "client.mjs")]
    else:
        script = "discordpy_client.py" if twin == "discord.py" else "connections_client.py"
        command = [sys.executable, os.path.join(HERE, script)]
    out = subprocess.run(
        [*command, str(n), str(seconds)],
        env=env, capture_output=True, text=True, timeout=600 + 2 * seconds,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("twin", ["compiled", "pure", "discord.py", "discord.js"])
@pytest.mark.parametrize("n", SIZES)
def test_live_connections(benchmark, n, twin):
    if twin == "compiled":
        import fastvoice

        if not fastvoice.speedups_enabled() and os.environ.get("FASTVOICE_NO_EXTENSIONS") != "1":
            pytest.skip("compiled twin not built")
    if twin == "pure" and n > 1000:
        pytest.skip("the pure twin is measured up to 1,000 connections")
    if twin == "discord.py":
        pytest.importorskip("discord")
        if n > DISCORDPY_MAX:
            pytest.skip(f"discord.py (three threads per call) is measured up to {DISCORDPY_MAX} connections")
    if twin == "discord.js":
        missing = discordjs_missing()
        if missing:
            pytest.skip(f"@discordjs/voice peer not set up: {missing}")
        if n > DISCORDJS_MAX:
            pytest.skip(f"@discordjs/voice is measured up to {DISCORDJS_MAX} connections (FASTVOICE_BENCH_DISCORDJS_MAX)")
    benchmark.group = f"{n} connections"
    result = benchmark.pedantic(run_client, args=(n, SECONDS, twin), rounds=1, iterations=1)
    benchmark.extra_info.update(result, twin=twin, connections=n, audio_seconds=SECONDS)
    assert result["opened"] == n
