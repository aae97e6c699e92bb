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


def machine_busy_seconds() -> float | None:
    """CPU seconds every process of the machine has used since boot (Linux ``/proc/stat``: user,
    nice, system, irq and softirq time of all CPUs), or None where there is no such file."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        ticks = sum(int(fields[i]) for i in (1, 2, 3, 6, 7))
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def speakers_per_call() -> int:
    """``FASTVOICE_BENCH_SPEAKERS`` as the server reads it (default 1)."""
    return int(os.environ.get("FASTVOICE_BENCH_SPEAKERS", "1"))


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
    return json.loads(await speak_raw(server, seconds, on_streaming))


async def speak_raw(server: asyncio.subprocess.Process, seconds: float, on_streaming=None) -> bytes:
    """:func:`speak`, returning the report's JSON line unparsed: parsing a large report (every
    packet's send time) holds the GIL for tens of milliseconds, which a client whose receivers
    still play the stream's last ticks parses after them."""
    server.stdin.write(f"start {seconds}\n".encode())
    await server.stdin.drain()
    line = (await asyncio.wait_for(server.stdout.readline(), 120)).decode()
    if not line.startswith("streaming"):
        raise RuntimeError(f"the speaking server did not start streaming: {line[:200]!r}")
    if on_streaming is not None:
        on_streaming()
    return await asyncio.wait_for(server.stdout.readline(), 120 + 2 * seconds)


def _pct(values: list[float], p: float) -> float | None:
    return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None


def summarize(report: dict, arrivals: dict[str, tuple[list[int], list[float]]], *, n: int, seconds: float,
              cpu: float, wall: float, rss_per_call_kib: float | None) -> dict:
    """The figures of one contender's run.

    ``arrivals`` maps a stream's key in ``report["calls"]`` (the call's guild id as a string,
    with one speaker a call; ``GUILD/K`` for speaker K with more) to the packet numbers its
    receiver got and the ``time.time()`` of each, in order. ``lost`` counts the packet numbers never
    received before a later one was; ``undelivered_tail`` those after the last one received
    (a receiver that holds packets back until the next one arrives keeps the stream's last
    packets when the stream stops: the server sends nothing after them). Latency is from the ``time.time()`` the server took right before each ``sendto`` to
    the receiver's callback, for the first copy of each packet. CPU is the client process's
    user + system time from the first packet sent to 0.3 s after the last, per second of audio
    received (``received`` x 20 ms) and per second sent (streams x ``seconds``).
    """
    base = report["base"]
    per_call = report["packets_per_call"]
    streams = len(report["calls"])
    expected = per_call * streams
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
        "speakers_per_call": report.get("speakers_per_call", 1),
        "streams": streams,
        "audio_seconds": seconds,
        "window_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / wall, 3) if wall else None,
        # per second of audio received (20 ms a packet): a receiver that fell behind is not
        # flattered by the packets it had not handled when the window closed
        "cpu_us_per_stream_second": round(cpu / (unique * 0.02) * 1e6, 1) if unique else None,
        # per second of audio sent to it (streams x seconds)
        "cpu_us_per_sent_stream_second": round(cpu / (streams * seconds) * 1e6, 1) if streams else None,
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
        # the whole server process (its event loop and the sending thread) while it sent
        "server_cpu_share_of_one_core": (round(report["sender_cpu_seconds"] / report["sender_seconds"], 3)
                                         if report.get("sender_seconds") else None),
    }


def playout_summary(expected: int, calls: list[dict], clock: dict[str, int]) -> dict:
    """The playout figures of a run of decoding receivers (``receive_client.py --playout``).

    ``calls`` has one dict per call (its ``PlayoutReceiver``), counted while the stream ran
    and played out: ``ticks`` delivered, ``late`` (delivered more than one 20 ms frame after
    they were due), ``decoded`` (frames of PCM delivered), ``decoded_packets`` (of those,
    decoded from a packet rather than concealed), ``dropped_ticks`` (never delivered: the
    decode pool was busy), ``skipped_ticks`` (the loop was blocked too long) and ``lags``
    (seconds from each tick's due time to its delivery). ``clock`` holds the loop's
    ``PlayoutClock`` counters over the same time (``clock_late_ticks``, ``clock_skipped``,
    ``clock_dropped``). ``expected`` is the packets the server sent (streams x packets).

    The run *holds* when every packet sent was decoded and played (``frames_missing`` 0)
    and no tick was late, dropped or skipped, by the receivers' count or the clock's.
    """
    lags = sorted(lag for call in calls for lag in call["lags"])
    late = [call["late"] for call in calls]
    decoded_packets = sum(call["decoded_packets"] for call in calls)
    decoded = sum(call["decoded"] for call in calls)
    out = {
        "ticks_delivered": sum(call["ticks"] for call in calls),
        "late_ticks": sum(late),
        "late_calls": sum(1 for count in late if count),
        "worst_call_late_ticks": max(late, default=0),
        "dropped_ticks": sum(call["dropped_ticks"] for call in calls),
        "skipped_ticks": sum(call["skipped_ticks"] for call in calls),
        "frames_expected": expected,
        "frames_decoded": decoded_packets,
        "frames_concealed": decoded - decoded_packets,
        "frames_missing": expected - decoded_packets,
        "tick_lag_p50_ms": _pct([lag * 1000 for lag in lags], 0.50),
        "tick_lag_p99_ms": _pct([lag * 1000 for lag in lags], 0.99),
        "tick_lag_max_ms": round(lags[-1] * 1000, 3) if lags else None,
        **{name: clock.get(name, 0) for name in ("clock_late_ticks", "clock_skipped", "clock_dropped")},
    }
    out["holds"] = (decoded_packets == expected and expected > 0
                    and not any(out[name] for name in ("late_ticks", "dropped_ticks", "skipped_ticks",
                                                       "clock_late_ticks", "clock_skipped", "clock_dropped")))
    return out
