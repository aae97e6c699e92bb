"""bench/report.py's tables read right: the last column compares the compiled twin with each row."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _report_module():
    spec = importlib.util.spec_from_file_location("_bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_native_row_says_compiled_is_slower(tmp_path, capsys):
    rows = {"native C loop": 100e-6, "fastvoice compiled": 140e-6, "fastvoice pure": 4200e-6, "discord.py": 1400e-6}
    data = {"benchmarks": [
        {"group": "send x", "extra_info": {"contender": name, "batch": 1000}, "stats": {"min": t, "median": t}}
        for name, t in rows.items()
    ]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    _report_module().main([str(path)])
    out = capsys.readouterr().out
    assert "| contender | ns/packet (min) | ns/packet (median) | x native | fastvoice compiled vs this |" in out
    lines = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert lines["native C loop"].endswith("| 1.40x slower |")
    assert lines["fastvoice compiled"].endswith("| - |")
    assert lines["discord.py"].endswith("| 10.0x faster |")
    assert lines["fastvoice pure"].endswith("| 30.0x faster |")
