"""Print the table of bench/test_bench_scaleout.py results from its pytest-benchmark JSON.

    python bench/report_scaleout.py bench/scaleout.json [more.json ...]

One row per run: calls, client processes, the summed deficit (ticks the send clocks skipped),
the worst client's server-measured jitter p99, the clients' CPU summed (cores) and the
slowest client's wall time to play the audio (a client that falls behind takes longer).
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    print(f"{'calls':>6} {'processes':>9} {'deficit':>8} {'p99 ms':>7} {'CPU cores':>9} {'stream s':>8}")
    for path in paths:
        with open(path) as fh:
            rows = [b["extra_info"] for b in json.load(fh)["benchmarks"]]
        for row in sorted(rows, key=lambda r: (r["calls"], r["processes"])):
            slowest = max(p["stream_seconds"] for p in row["per_process"])
            print(f"{row['calls']:>6} {row['processes']:>9} {row['deficit']:>8} {row['jitter_p99_ms']:>7.2f} "
                  f"{row['cpu_cores']:>9.2f} {slowest:>8.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
