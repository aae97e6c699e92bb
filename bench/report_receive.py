"""Print the table of bench/test_bench_receive.py results from one or more pytest-benchmark JSON files.

    python bench/report_receive.py bench/receive.json [more.json ...]

One row per contender and size (several runs or rounds: one row each, in run order). CPU is
the client process's, per second of audio it received (a receiver that fell behind is charged
for what it handled, not for what was sent to it).
"x compiled" is the contender's CPU per stream-second over fastvoice compiled's in the same
encryption mode, same size and same round of the same file (the runs that were side by side):
``compiled`` for XChaCha20-Poly1305, ``compiled/aes`` for AES-256-GCM, ``compiled+playout``
for the decoding receivers. "lost" counts packets missing before a later one arrived; "tail"
the packets held in the receiver when the stream stopped (never delivered: the extension's
jitter buffer hands a packet out when the next one arrives). Latency is from the server's
``sendto`` to the receiver's callback.
"""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("calls", "N"),
    ("contender", "contender"),
    ("mode_short", "mode"),
    ("cpu_share_of_one_core", "CPU (cores)"),
    ("cpu_us_per_stream_second", "CPU us per received stream-second"),
    ("x_compiled", "x compiled"),
    ("rss_kib_per_call", "RSS KiB/call"),
    ("received", "received"),
    ("expected", "sent"),
    ("lost", "lost"),
    ("undelivered_tail", "tail"),
    ("latency_p50_ms", "latency p50 ms"),
    ("latency_p99_ms", "latency p99 ms"),
    ("latency_max_ms", "latency max ms"),
]

#: Which fastvoice row each contender is compared with.
BASELINE = {"voice-recv": "compiled", "py-cord": "compiled", "pure": "compiled", "discord.js": "compiled/aes",
            "voice-recv+decode": "compiled+playout"}


def short_mode(mode: str | None) -> str:
    if not mode:
        return ""
    return "AES-GCM" if "aes256" in mode else "XChaCha20" if "xchacha" in mode else mode


def rows_of(paths: list[str]) -> list[dict]:
    rows = []
    for number, path in enumerate(paths):
        with open(path) as fh:
            for bench in json.load(fh)["benchmarks"]:
                row = dict(bench["extra_info"])
                row["run"] = number
                rows.append(row)
    by_key = {(r["run"], r.get("round", 0), r["calls"], r["contender"]): r for r in rows}
    for row in rows:
        row["mode_short"] = short_mode(row.get("mode"))
        base = by_key.get((row["run"], row.get("round", 0), row["calls"], BASELINE.get(row["contender"], "")))
        if base and base.get("cpu_us_per_stream_second") and row.get("cpu_us_per_stream_second"):
            row["x_compiled"] = f'{row["cpu_us_per_stream_second"] / base["cpu_us_per_stream_second"]:.1f}x'
    order = list(dict.fromkeys(["compiled", "pure", "voice-recv", "py-cord", "compiled/aes", "discord.js",
                                "compiled+playout", "voice-recv+decode"]))
    rows.sort(key=lambda r: (r["calls"], order.index(r["contender"]) if r["contender"] in order else 99,
                             r["run"], r.get("round", 0)))
    return rows


def main(paths: list[str]) -> None:
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows_of(paths):
        print("| " + " | ".join("" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/receive.json"])
