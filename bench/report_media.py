"""The media-path benchmark as a table: audio datagrams forwarded per CPU second, per contender.

    python bench/report_media.py bench/media.json [more runs.json ...]

Of several runs, each row keeps its best round and the mean of the run with the best mean.
"""

from __future__ import annotations

import json
import sys

_ORDER = {"engine c": 0, "engine py": 1, "python path": 2}
_RECORDING = {"off": 0, "counts": 1, "full": 2}


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, str, str], tuple[float, float]] = {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            key = (bench["group"].split()[-1], info["contender"], info["recording"])
            best, mean = info["datagrams_per_cpu_s_best"], info["datagrams_per_cpu_s_mean"]
            old = rows.get(key, (0.0, 0.0))
            rows[key] = (max(old[0], best), max(old[1], mean))
    print("| mode | contender | recording | datagrams / CPU s (best round) | (mean) | CPU us / datagram (best) |")
    print("|---|---|---|---:|---:|---:|")
    for key in sorted(rows, key=lambda k: (k[0], _ORDER.get(k[1], 9), _RECORDING.get(k[2], 9))):
        best, mean = rows[key]
        print(f"| {key[0]} | {key[1]} | {key[2]} | {best:,.0f} | {mean:,.0f} | {1e6 / best:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
