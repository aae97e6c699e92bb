"""Command line: ``python -m fastvoice demo`` and ``python -m fastvoice bench``."""

from __future__ import annotations

import os
import subprocess
import sys

USAGE = """usage: python -m fastvoice COMMAND [options]

commands:
  demo    run many voice calls against the local voice server and print a summary
          (python -m fastvoice demo --help)
  bench   run the benchmark suite of a source checkout and print its comparison tables
"""


def bench(argv: list[str]) -> int:
    """Run bench/ (pytest-benchmark) from a source checkout and print the tables."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench_dir = os.path.join(root, "bench")
    if not os.path.isdir(bench_dir):
        print("python -m fastvoice bench needs a source checkout (the bench/ folder next to fastvoice/)",
              file=sys.stderr)
        return 2
    status = 0
    for suite, report in (("test_bench_packets.py", "report.py"), ("test_bench_dave.py", "report.py"),
                          ("test_bench_opus.py", "report_opus.py"), ("test_bench_playout.py", "report_playout.py"),
                          ("test_bench_connections.py", "report_connections.py")):
        out = os.path.join(bench_dir, suite.replace("test_bench_", "").replace(".py", ".json"))
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", os.path.join(bench_dir, suite),
                              f"--benchmark-json={out}", *argv], cwd=root)
        status = status or run.returncode
        if run.returncode == 0:
            subprocess.run([sys.executable, os.path.join(bench_dir, report), out], cwd=root)
    return status


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(USAGE)
        return 0 if len(sys.argv) >= 2 else 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "demo":
        from ._demo import main as demo

        return demo(rest)
    if command == "bench":
        return bench(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
