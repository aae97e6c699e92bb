"""What the clients of bench/test_bench_receive.py share: the speaking server's process, the figures.

Every contender's client starts ``receive_server_process.py``, opens its N listener calls,
asks the server to speak, records for each call the RTP sequence number (or the payload's
packet number) and the ``time.time()`` of each frame its receiver callback got, and hands
those to :func:`summarize`, so that every contender's figures are computed by the same code.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: The encryption modes by their short names (the server offers only the one a run asks for).
MODES = {"xchacha": "aead_xchacha20_poly1305_rtpsize", "aes": "aead_aes256_gcm_rtpsize"}


def mode_argument(argv: list[str]) -> str:
    """The server option for ``--mode=xchacha|aes`` in ``argv`` (default xchacha)."""
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--mode=")), "xchacha")
    if name not in MODES:
        raise SystemExit(f"--mode must be one of {', '.join(MODES)}, got {name[:40]!r}")
    return f"--mode={MODES[name]}"


def server_command(*options: str) -> list[str]:
    """The server's command line: FASTVOICE_PYTHON (a Python with fastvoice) or this one."""
    python = os.environ.get("FASTVOICE_PYTHON") or sys.executable
    return [python, os.path.join(HERE, "receive_server_process.py"), *options]


def server_env() -> dict[str, str]:
    """The server (and its sender) runs on the compiled core whatever twin the client tests."""
    env = dict(os.environ)
    env.pop("FASTVOICE_NO_EXTENSIONS", None)
    return env


async def start_server(*options: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *server_command(*options), env=server_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**28,
    )


async def stop_server(process: asyncio.subprocess.Process) -> None:
    """End the server on every way out (its stdin closed; killed if it lingers) and reap it."""
    if process.returncode is None:
        try:
            process.stdin.close()
        except Exception:  # noqa: BLE001 - the pipe may be gone already
            pass
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
    await process.wait()


async def speak(server: asyncio.subprocess.Process, seconds: float, on_streaming=None) -> dict:
    """Have the server speak to every listener for ``seconds``; return its report.

    ``on_streaming()`` is called when the first packet is about to leave (start the CPU
    window there)."""
    server.stdin.write(f"start {seconds}\n".encode())
    await server.stdin.drain()
    line = (await asyncio.wait_for(server.stdout.readline(), 120)).decode()
    if not line.startswith("streaming"):
        raise RuntimeError(f"the speaking server did not start streaming: {line[:200]!r}")
    if on_streaming is not None:
        on_streaming()
    return json.loads(await asyncio.wait_for(server.stdout.readline(), 120 + 2 * seconds))


def _pct(values: list[float], p: float) -> float | None:
    return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None


def summarize(report: dict, arrivals: dict[str, tuple[list[int], list[float]]], *, n: int, seconds: float,
              cpu: float, wall: float, rss_per_call_kib: float | None) -> dict:
    """The figures of one contender's run.

    ``arrivals`` maps a call's guild id (a string) to the packet numbers its receiver got
    and the ``time.time()`` of each, in order. ``lost`` counts the packet numbers never
    received before a later one was; ``undelivered_tail`` those after the last one received
    (a receiver that holds packets back until the next one arrives keeps the stream's last
    packets when the stream stops: the server sends nothing after them). Latency is from the ``time.time()`` the server took right before each ``sendto`` to
    the receiver's callback, for the first copy of each packet. CPU is the client process's
    user + system time from the first packet sent to 0.3 s after the last, per second of audio
    received (``received`` x 20 ms) and per second sent (``n`` x ``seconds``).
    """
    base = report["base"]
    per_call = report["packets_per_call"]
    expected = per_call * len(report["calls"])
    latencies: list[float] = []
    unique = duplicates = tail = 0
    for guild, call in report["calls"].items():
        sent = call["sent_us"]
        seqs, times = arrivals.get(guild, ((), ()))
        seen = set()
        for seq, t in zip(seqs, times):
            if seq in seen or not 0 <= seq < per_call:
                duplicates += seq in seen
                continue
            seen.add(seq)
            if sent[seq] is not None:
                latencies.append((t - base) * 1000 - sent[seq] / 1000)
        unique += len(seen)
        last = per_call - 1
        while last >= 0 and last not in seen:
            last -= 1
        tail += per_call - 1 - last
    latencies.sort()
    return {
        "calls": n,
        "audio_seconds": seconds,
        "window_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / wall, 3) if wall else None,
        # per second of audio received (20 ms a packet): a receiver that fell behind is not
        # flattered by the packets it had not handled when the window closed
        "cpu_us_per_stream_second": round(cpu / (unique * 0.02) * 1e6, 1) if unique else None,
        # per second of audio sent to it (calls x seconds)
        "cpu_us_per_sent_stream_second": round(cpu / (n * seconds) * 1e6, 1),
        "rss_kib_per_call": rss_per_call_kib,
        "expected": expected,
        "received": unique,
        "duplicates": duplicates,
        "lost": expected - unique - tail,
        "loss_percent": round(100.0 * (expected - unique - tail) / expected, 3) if expected else None,
        "undelivered_tail": tail,
        "latency_p50_ms": _pct(latencies, 0.50),
        "latency_p90_ms": _pct(latencies, 0.90),
        "latency_p99_ms": _pct(latencies, 0.99),
        "latency_max_ms": round(latencies[-1], 3) if latencies else None,
        "sender_late_ticks": report["late_ticks"],
        # packets the server's sendto refused (full send buffer): counted in lost or tail above
        "sender_unsent": sum(1 for call in report["calls"].values() for t in call["sent_us"] if t is None),
        "sender_cpu_seconds": report["sender_cpu_seconds"],
    }
