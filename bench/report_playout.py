"""The receive-playout benchmarks as tables: the decode pool's speed-up from one thread to two,
its real-time capacity, and the timeline's own cost per tick.

    python bench/report_playout.py bench/playout.json [more runs.json ...]

Speed-up rounds of several runs are pooled; each real-time round is listed.
"""

from __future__ import annotations

import json
import statistics
import sys

#: A round counts as quiet when no thread of it waited for a CPU longer than this share of it.
QUIET = 0.05


def main(paths: list[str]) -> None:
    speedups: list[float] = []
    unloaded: list[float] = []
    quiet: list[float] = []
    one: list[float] = []
    two: list[float] = []
    realtime: dict[int, list[dict]] = {}
    costs: dict[tuple[int, int], list[float]] = {}
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            if "speedups" in info:
                speedups += info["speedups"]
                unloaded += info.get("unloaded_speedups", [])
                one += info["us_per_frame_one"][1:]
                two += info["us_per_frame_two"][1:]
                for t1, w1, t2, w2 in info.get("rounds", []):
                    if w1 is not None and w2 is not None and w1 < QUIET * t1 and w2 < QUIET * t2:
                        quiet.append(t1 / t2)
            elif "realtime" in info:
                for count, rounds in info["realtime"].items():
                    realtime.setdefault(int(count), []).extend(rounds)
            elif "calls" in info:
                per_tick = bench["stats"]["min"] / info["batch"]
                costs.setdefault((info["calls"], info["speakers"]), []).append(per_tick)

    if speedups:
        speedups.sort()
        unloaded.sort()
        print("\ndecode pool: 2 threads over 1, alternated in each round (all rounds of all runs)")
        print("| rounds | median | lowest | highest | load taken out: median | lowest | highest |"
              " µs/frame, 1 thread (median) | 2 threads (median) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        free = (f"{statistics.median(unloaded):.2f}x | {unloaded[0]:.2f}x | {unloaded[-1]:.2f}x"
                if unloaded else "- | - | -")
        print(f"| {len(speedups)} | {statistics.median(speedups):.2f}x | {speedups[0]:.2f}x | {speedups[-1]:.2f}x | "
              f"{free} | {statistics.median(one):.1f} | {statistics.median(two):.1f} |")
        if quiet:
            quiet.sort()
            print(f"quiet rounds (every thread waited for a CPU less than {QUIET:.0%} of the time): {len(quiet)}, "
                  f"median {statistics.median(quiet):.2f}x, lowest {quiet[0]:.2f}x, highest {quiet[-1]:.2f}x")
    if realtime:
        print("\ndecode pool of 2 threads on a 20 ms schedule: late ticks (batch done after the next was due)")
        print("(waited: ms the pool's threads were ready to run while other processes held the CPUs, during the round)")
        print("| stereo streams | round | late ticks | p50 ms | p99 ms | max ms | waited ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for count in sorted(realtime):
            for n, r in enumerate(realtime[count], 1):
                waited = "-" if r.get("waited_ms") is None else f"{r['waited_ms']:.0f}"
                print(f"| {count} | {n} | {r['late']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
                      f"| {waited} |")
        print(f"\nquiet rounds only (the pool's threads waited for a CPU less than {QUIET:.0%} of the round)")
        print("| stereo streams | quiet rounds | late ticks in each | p99 ms in each |")
        print("|---:|---:|---|---|")
        for count in sorted(realtime):
            calm = [r for r in realtime[count]
                    if r.get("waited_ms") is not None and r["waited_ms"] < QUIET * r.get("seconds", 3.0) * 1e3]
            lates = ", ".join(str(r["late"]) for r in calm) or "-"
            p99s = ", ".join(f"{r['p99_ms']:.1f}" for r in calm) or "-"
            print(f"| {count} | {len(calm)} | {lates} | {p99s} |")
    if costs:
        print("\ntimeline: fastvoice's work per tick, decoding stubbed out (best run)")
        print("| calls x speakers | ms per tick | µs per call | µs per speaking user | share of a core |")
        print("|---|---:|---:|---:|---:|")
        for (calls, speakers), values in sorted(costs.items()):
            best = min(values)
            per_user = f"{best / (calls * speakers) * 1e6:.2f}" if speakers else "-"
            print(f"| {calls} x {speakers} | {best * 1e3:.2f} | {best / calls * 1e6:.2f} | {per_user} | "
                  f"{best / 0.02 * 100:.1f} % |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/playout.json"])
