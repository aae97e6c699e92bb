"""Print the table of bench/test_bench_e2e.py results, and the largest count that holds.

    python bench/report_e2e.py bench/e2e.json [more.json ...]

One row per run (size and round), in size order. A size holds when every run of it held:
every frame the server sent was decoded and no tick was late, dropped or skipped. The
client's and the server's CPU are each process's user + system time over the streaming
window, in cores; "other" is what the rest of the machine used meanwhile (the machine's
total less the two), so a run spoilt by other load shows as such.
"""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("calls_x_speakers", "calls x speakers"),
    ("streams", "streams"),
    ("round", "round"),
    ("frames_expected", "frames sent"),
    ("frames_decoded", "frames decoded"),
    ("late_ticks", "late ticks"),
    ("dropped_skipped", "dropped / skipped ticks"),
    ("tick_lag_p99_ms", "tick lag p99 ms"),
    ("cpu_share_of_one_core", "client CPU (cores)"),
    ("server_cpu_share_of_one_core", "server CPU (cores)"),
    ("other_cores", "other (cores)"),
    ("cpu_us_per_stream_second", "client CPU us per stream-second"),
    ("holds_text", "holds"),
]


def rows_of(paths: list[str]) -> list[dict]:
    """Every run's figures, with the derived columns, sorted by size then file and round."""
    rows = []
    for number, path in enumerate(paths):
        with open(path) as fh:
            for bench in json.load(fh)["benchmarks"]:
                row = dict(bench["extra_info"])
                row["run"] = number
                row["calls_x_speakers"] = f'{row["calls"]} x {row.get("speakers_per_call", 1)}'
                row["dropped_skipped"] = f'{row.get("dropped_ticks", 0)} / {row.get("skipped_ticks", 0)}'
                machine, client, server = (row.get("machine_busy_cores"), row.get("cpu_share_of_one_core"),
                                           row.get("server_cpu_share_of_one_core"))
                if None not in (machine, client, server):
                    row["other_cores"] = round(max(0.0, machine - client - server), 2)
                row["holds_text"] = "yes" if row.get("holds") else "no"
                rows.append(row)
    rows.sort(key=lambda r: (r["calls"], r.get("speakers_per_call", 1), r["run"], r.get("round", 0)))
    return rows


def largest_holding(rows: list[dict]) -> dict | None:
    """The largest call count whose every run held (with its runs' CPU), or None.

    Returns ``calls``, ``speakers``, ``runs``, the client's and the server's CPU in cores
    (the most any of its runs used) and, from the client's, the calls one core would take
    at that rate (an extrapolation: the cost per call is close to linear in this range).
    """
    by_size: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        by_size.setdefault((row["calls"], row.get("speakers_per_call", 1)), []).append(row)
    holding = [key for key, runs in by_size.items() if all(r.get("holds") for r in runs)]
    if not holding:
        return None
    calls, speakers = max(holding)
    runs = by_size[(calls, speakers)]
    client = max(r["cpu_share_of_one_core"] for r in runs)
    server = max((r.get("server_cpu_share_of_one_core") or 0.0) for r in runs)
    return {"calls": calls, "speakers": speakers, "runs": len(runs), "client_cores": client,
            "server_cores": server, "calls_per_client_core": int(calls / client) if client else None}


def smallest_failing(rows: list[dict]) -> int | None:
    """The smallest call count with a run that did not hold, or None."""
    failing = [row["calls"] for row in rows if not row.get("holds")]
    return min(failing) if failing else None


def main(paths: list[str]) -> None:
    rows = rows_of(paths)
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join("" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS) + " |")
    best = largest_holding(rows)
    print()
    if best is None:
        print("No size held.")
    else:
        print(f'Largest count that holds: {best["calls"]} calls x {best["speakers"]} speakers '
              f'({best["calls"] * best["speakers"]} streams, {best["runs"]} run(s)); client '
              f'{best["client_cores"]:.2f} cores, server {best["server_cores"]:.2f} cores; at that rate a client '
              f'alone would take ~{best["calls_per_client_core"]} calls x {best["speakers"]} speakers per core.')
    failing = smallest_failing(rows)
    if failing is not None:
        print(f"Smallest count with a run that did not hold: {failing} calls.")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/e2e.json"])
