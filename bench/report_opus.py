"""The Opus decoder benchmarks as tables: µs per frame and the ratio to the C loop, per group;
then the thread speed-ups (one thread's wall time per frame over N threads').

Each contender's fastest round (min) is used: on a shared, noisy machine it is the figure
least disturbed by other load; medians are shown beside it.

    python bench/report_opus.py bench/opus.json [more runs.json ...]

Given several runs, each contender's best run (lowest min) is reported.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def main(paths: list[str]) -> None:
    best: dict[tuple[str, str], dict] = {}
    speedups: dict[str, list[float]] = {}
    unloaded: dict[str, list[float]] = {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            batch = info.get("batch", 1)
            row = {"min": bench["stats"]["min"] / batch * 1e6, "median": bench["stats"]["median"] / batch * 1e6,
                   "implementation": info.get("implementation"), "threads": info.get("threads")}
            key = (bench["group"], info["contender"])
            if "speedups" in info:  # alternated 1- and 2-thread rounds: the ratios of every run are pooled
                speedups.setdefault(info["contender"], []).extend(info["speedups"])
                unloaded.setdefault(info["contender"], []).extend(info.get("unloaded_speedups", []))
                continue
            if key not in best or row["min"] < best[key]["min"]:
                best[key] = row
    groups: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for (group, contender), row in best.items():
        groups[group].append((contender, row))
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda r: r[1]["min"])
        native = next((r["min"] for name, r in rows if name.startswith("native") and r["threads"] in (None, 1)), None)
        print(f"\n{group}")
        print("| contender | µs/frame (min) | µs/frame (median) | x C loop |")
        print("|---|---:|---:|---:|")
        for name, row in rows:
            ratio = f"{row['min'] / native:.2f}" if native else "-"
            print(f"| {name} | {row['min']:.1f} | {row['median']:.1f} | {ratio} |")
        scaling = defaultdict(dict)
        for name, row in rows:
            if row["threads"]:
                scaling[row["implementation"]][row["threads"]] = row
        if scaling:
            print("\n| decoder | threads | speed-up over 1 thread (min) | (median) |")
            print("|---|---:|---:|---:|")
            for implementation, by_threads in sorted(scaling.items()):
                one = by_threads.get(1)
                for n, row in sorted(by_threads.items()):
                    if one and n > 1:
                        print(f"| {implementation} | {n} | {one['min'] / row['min']:.2f}x | "
                              f"{one['median'] / row['median']:.2f}x |")

    if speedups:
        print("\ndecode threads: speed-up of 2 threads over 1, alternated in each round (all rounds of all runs)")
        print("(other processes' load taken out: each thread's run-queue wait subtracted, Linux schedstat)")
        print("| decoder | rounds | median | lowest | highest | median, load taken out | lowest | highest |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, values in sorted(speedups.items()):
            values.sort()
            spread = f"{statistics.median(values):.2f}x | {values[0]:.2f}x | {values[-1]:.2f}x"
            free = sorted(unloaded.get(name, []))
            free_spread = f"{statistics.median(free):.2f}x | {free[0]:.2f}x | {free[-1]:.2f}x" if free else "- | - | -"
            print(f"| {name} | {len(values)} | {spread} | {free_spread} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/opus.json"])
