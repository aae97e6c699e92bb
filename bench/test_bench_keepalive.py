"""What idle connections cost: N voice UDP connections that send no audio, keepalives on.

For each N, ``idle_client.py`` runs in its own process and measures its CPU time while its
N connections sit idle for SECONDS, with the keepalive sent by fastvoice's one shared
scheduler per loop (``shared``), by one loop timer per connection (``per-connection``, the
design it replaces) and with no keepalive at all (``off``, the floor). The sink that answers
IP discovery and counts the keepalives is a thread of this process, so its work is not in
the figures.

    python -m pytest bench/test_bench_keepalive.py --benchmark-json=bench/keepalive.json

``FASTVOICE_BENCH_IDLE`` (default ``1000,5000``), ``FASTVOICE_BENCH_IDLE_SECONDS``
(default 20: four keepalive intervals) and ``FASTVOICE_BENCH_IDLE_INTERVAL`` (default 5.0,
the library's) pick the sizes. With ``--benchmark-disable`` (CI's smoke run of every
benchmark) the defaults shrink to 20 connections, 1 s and a 0.2 s interval.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

from fastvoice.ipdiscovery import build_ip_discovery_response

HERE = os.path.dirname(os.path.abspath(__file__))
SMOKE = "--benchmark-disable" in sys.argv
SIZES = [int(n) for n in os.environ.get("FASTVOICE_BENCH_IDLE", "20" if SMOKE else "1000,5000").split(",")]
SECONDS = float(os.environ.get("FASTVOICE_BENCH_IDLE_SECONDS", "1" if SMOKE else "20"))
INTERVAL = float(os.environ.get("FASTVOICE_BENCH_IDLE_INTERVAL", "0.2" if SMOKE else "5.0"))


class Sink:
    """A blocking UDP socket in a thread: answers IP discovery, counts 8-byte keepalives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.keepalives = 0
        self.other = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) == 74 and data[:2] == b"\x00\x01":
                ssrc = struct.unpack_from(">I", data, 4)[0]
                self.sock.sendto(build_ip_discovery_response(ssrc, addr[0], addr[1]), addr)
            elif len(data) == 8:
                self.keepalives += 1
            else:
                self.other += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def run_client(n: int, seconds: float, design: str, port: int) -> dict:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "idle_client.py"), str(n), str(seconds), design, str(port),
         str(INTERVAL)],
        env=env, capture_output=True, text=True, timeout=300 + 2 * seconds,
    )
    if out.returncode != 0:
        raise RuntimeError(f"idle client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("design", ["shared", "per-connection", "off"])
@pytest.mark.parametrize("n", SIZES)
def test_idle_connections(benchmark, n, design):
    sink = Sink()
    try:
        benchmark.group = f"{n} idle connections"
        result = benchmark.pedantic(run_client, args=(n, SECONDS, design, sink.port), rounds=1, iterations=1)
    finally:
        sink.close()
    benchmark.extra_info.update(result, received=sink.keepalives)
    if design != "off":
        # Every connection keeps its binding: about SECONDS / INTERVAL keepalives each.
        assert result["keepalives_sent"] >= n * (int(SECONDS // INTERVAL) - 1)
    else:
        assert result["keepalives_sent"] == 0
    print(
        f"\n{n} idle, {design}: {result['cpu_percent_of_a_core']:.2f}% of a core, "
        f"{result['cpu_us_per_conn_second']:.2f} us CPU per connection-second, "
        f"{result['keepalives_sent']} keepalives, {result['wakeups_per_second']:.1f} wake-ups/s"
    )
