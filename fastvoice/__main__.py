"""Command line: ``python -m fastvoice demo`` and ``python -m fastvoice bench``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

USAGE = """usage: python -m fastvoice COMMAND [options]

commands:
  demo    run many voice calls against the local voice server and print a summary
          (python -m fastvoice demo --help)
  bench   run the benchmark suite of a source checkout and print its comparison tables
          (python -m fastvoice bench --help)
"""

BENCH_HELP = """usage: python -m fastvoice bench [--quick] [pytest options]

Runs the benchmark suite of a source checkout (the bench/ folder next to fastvoice/) and
prints its tables. It needs the test extra (pytest, pytest-benchmark, discord.py).

  1. per-packet costs, in this process's children: bench/test_bench_packets.py and
     bench/test_bench_dave.py (fastvoice's compiled and pure cores, discord.py's packet
     code, a native C loop over libsodium; the DAVE layer over davey);
  2. receive-side decoding: bench/test_bench_opus.py (Opus decoding per frame: a C loop over
     libopus, the compiled and pure decoders, discord.py's decoder; threads) and
     bench/test_bench_playout.py (the decode pool's speed-up and real-time capacity, the
     playout timeline's cost); they need libopus;
  3. live connections: bench/test_bench_connections.py, for 100, 500, 1,000 and 2,000
     calls with 10 s of audio each: one client process per contender (fastvoice compiled
     and pure: bench/connections_client.py; discord.py's VoiceClient:
     bench/discordpy_client.py; @discordjs/voice in node: bench/discordjs/client.mjs, when
     set up), each with its voice server process (bench/voice_server_process.py);
  4. scale-out: bench/test_bench_scaleout.py, 1,000 and 2,000 calls held by one client
     process, then split over two running side by side (as a sharded bot would).
  5. receive: bench/test_bench_receive.py, 100, 500 and 1,000 calls whose speakers the
     server's process sends, received by one client process per contender (fastvoice
     compiled and pure, with a PlayoutReceiver too; discord-ext-voice-recv, py-cord's
     recording and @discordjs/voice's receiver when installed; see bench/README.md).

The full suite takes about 7 to 8 minutes on a 2-core machine (2 to 3 more with the
@discordjs/voice peer set up), plus about 3 for the receive benchmark (5 with its peers), and
loads both cores. --quick runs every benchmark small (10 calls, 5 for receive, 1 s of audio,
few rounds) in under two minutes (50 seconds here, plus 45 for receive with its peers): a
check that it works, not figures to quote.
Ctrl-C (or SIGTERM) stops the suite and every process it started.

options:
  -h, --help  show this help and exit
  --quick     run every benchmark small
  other options are passed to pytest (e.g. -k compiled)
"""

#: What --quick sets: the knobs of bench/ (see bench/README.md) and pytest-benchmark's rounds.
QUICK_ENV = {
    "FASTVOICE_BENCH_CONNECTIONS": "10", "FASTVOICE_BENCH_SECONDS": "1", "FASTVOICE_BENCH_SCALEOUT": "10",
    "FASTVOICE_BENCH_RECEIVE": "5",
    "FASTVOICE_BENCH_OPUS_FRAMES": "150",
    "FASTVOICE_BENCH_PLAYOUT_STREAMS": "20", "FASTVOICE_BENCH_PLAYOUT_TICKS": "5",
    "FASTVOICE_BENCH_REALTIME": "20", "FASTVOICE_BENCH_REALTIME_TICKS": "10", "FASTVOICE_BENCH_CALLS": "10x0,5x4",
}
QUICK_ARGS = ["--benchmark-max-time=0.02", "--benchmark-min-rounds=1", "--benchmark-warmup=off"]
#: Seconds a stopped suite gets to exit after SIGTERM before its processes are killed.
STOP_GRACE = 5.0


class _Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop the suite as Ctrl-C would."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End every process of ``proc``'s process group: SIGTERM, then SIGKILL after a grace time."""
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    try:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
                time.sleep(0.05)
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
    finally:
        signal.signal(signal.SIGINT, interrupt)


def _run_in_own_group(command: list[str], cwd: str, env: dict[str, str]) -> int:
    """Run ``command`` in a new session (its own process group) and end the whole group when
    it ends, or when this process is interrupted."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True)
    try:
        return proc.wait()
    finally:
        _stop_group(proc)


def bench(argv: list[str]) -> int:
    """Run bench/ (pytest-benchmark) from a source checkout and print the tables."""
    if "-h" in argv or "--help" in argv:
        print(BENCH_HELP)
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench_dir = os.path.join(root, "bench")
    if not os.path.isdir(bench_dir):
        print("python -m fastvoice bench needs a source checkout (the bench/ folder next to fastvoice/)",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    if "--quick" in argv:
        argv = [a for a in argv if a != "--quick"] + QUICK_ARGS
        for name, value in QUICK_ENV.items():
            env.setdefault(name, value)  # what the caller set explicitly wins
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    status = 0
    try:
        for suite, report in (("test_bench_packets.py", "report.py"), ("test_bench_dave.py", "report.py"),
                              ("test_bench_opus.py", "report_opus.py"),
                              ("test_bench_playout.py", "report_playout.py"),
                              ("test_bench_connections.py", "report_connections.py"),
                              ("test_bench_receive.py", "report_receive.py")):
            out = os.path.join(bench_dir, suite.replace("test_bench_", "").replace(".py", ".json"))
            code = _run_in_own_group([sys.executable, "-m", "pytest", "-q", os.path.join(bench_dir, suite),
                                      f"--benchmark-json={out}", *argv], root, env)
            status = status or code
            if code == 0:
                _run_in_own_group([sys.executable, os.path.join(bench_dir, report), out], root, env)
    except (KeyboardInterrupt, _Stopped):
        print("python -m fastvoice bench: interrupted; every benchmark process it started was stopped",
              file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def main() -> int:
    if len(sys.argv) < 2:
        print(USAGE, file=sys.stderr, end="")
        return 2
    if sys.argv[1] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "demo":
        from ._demo import main as demo

        try:
            return demo(rest)
        except KeyboardInterrupt:
            print("python -m fastvoice demo: interrupted", file=sys.stderr)
            return 130
    if command == "bench":
        return bench(rest)
    print(f"unknown command {command[:40]!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
