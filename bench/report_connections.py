"""Print the table of bench/test_bench_connections.py results from its pytest-benchmark JSON.

    python bench/report_connections.py bench/connections.json

"stream s" is the wall time the client took to play SECONDS of audio on every connection:
a client that falls behind its 20 ms clock takes longer, and its CPU per connection-second
is then spread over more seconds. "CPU us per conn-second of audio" divides the same CPU
time by the audio played instead (connections x SECONDS): the cost of the work whatever the
pace. The peers (discord.py, discord.js) leave the fastvoice-only columns empty;
discord.js's "sent" counts the frames it was asked to play, without the silence frames it
appends.
"""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("connections", "N"),
    ("twin", "twin"),
    ("stream_seconds", "stream s"),
    ("cpu_share_of_one_core", "CPU (cores)"),
    ("cpu_us_per_connection_second", "CPU us per conn-second"),
    ("cpu_us_per_audio_second", "CPU us per conn-second of audio"),
    ("rss_kib_per_connection", "RSS KiB/conn"),
    ("sent", "sent"),
    ("received", "received by server"),
    ("deficit", "deficit (ticks)"),
    ("jitter_p50_ms", "jitter p50 ms"),
    ("jitter_p99_ms", "jitter p99 ms"),
]


def main(path: str) -> None:
    with open(path) as fh:
        rows = [b["extra_info"] for b in json.load(fh)["benchmarks"]]
    rows.sort(key=lambda r: (r["connections"], r["twin"]))
    for row in rows:
        if row.get("audio_seconds") and row.get("cpu_seconds") is not None and row.get("opened"):
            row["cpu_us_per_audio_second"] = round(row["cpu_seconds"] / (row["opened"] * row["audio_seconds"]) * 1e6, 1)
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/connections.json")
