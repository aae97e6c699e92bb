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
        print("| contender | ns/packet (min) | ns/packet (median) | x native | fastvoice compiled vs this |")
        print("|---|---:|---:|---:|---:|")
        for name, ns, median in sorted(rows, key=lambda r: r[1]):
            x_native = f"{ns / native:.2f}" if native else "-"
            versus = compared(compiled, ns) if compiled and name != "fastvoice compiled" else "-"
            print(f"| {name} | {ns:,.0f} | {median:,.0f} | {x_native} | {versus} |")


def compared(compiled_ns: float, other_ns: float) -> str:
    """How the compiled twin compares with a row, worded so that it reads right either way:
    ``"12.5x faster"`` for a slower row, ``"1.40x slower"`` for a faster one (the native loop)."""
    ratio = other_ns / compiled_ns if other_ns >= compiled_ns else compiled_ns / other_ns
    figure = f"{ratio:.1f}" if ratio >= 10 else f"{ratio:.2f}"
    return f"{figure}x {'faster' if other_ns >= compiled_ns else 'slower'}"


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/packets.json"])
