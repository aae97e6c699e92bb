"""Turn a pytest-benchmark JSON file into per-packet figures and ratios, per group.

Ratios use each contender's fastest round (min): on a shared, noisy machine the
minimum is the figure least disturbed by other load.  Medians are shown too.

    python bench/report.py bench/packets.json [more runs.json ...]

Given several runs, each contender's best run (lowest min) is reported.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(paths: list[str]) -> None:
    # Several files (repeated runs of the same suite): each contender's best run is kept.
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        for bench in data["benchmarks"]:
            batch = bench["extra_info"].get("batch", 1)
            stats = bench["stats"]
            key = (bench["group"], bench["extra_info"]["contender"])
            row = (stats["min"] / batch * 1e9, stats["median"] / batch * 1e9)
            if key not in best or row[0] < best[key][0]:
                best[key] = row
    groups: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for (group, contender), (ns, median) in best.items():
        groups[group].append((contender, ns, median))
    for group in sorted(groups):
        rows = groups[group]
        native = next((ns for name, ns, _ in rows if name.startswith("native")), None)
        compiled = next((ns for name, ns, _ in rows if name == "fastvoice compiled"), None)
        print(f"\n{group}")
        print("| contender | ns/packet (min) | ns/packet (median) | x native | compiled is faster by |")
        print("|---|---:|---:|---:|---:|")
        for name, ns, median in sorted(rows, key=lambda r: r[1]):
            x_native = f"{ns / native:.2f}" if native else "-"
            speedup = f"{ns / compiled:.1f}x" if compiled and name != "fastvoice compiled" else "-"
            print(f"| {name} | {ns:,.0f} | {median:,.0f} | {x_native} | {speedup} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/packets.json"])
