"""The interop tests skip, saying why, when their peer is not installed; FASTVOICE_REQUIRE_INTEROP=1 fails them.

Each case hides one peer in a pytest of its own (an empty directory for @discordjs/voice's
packages; a ``dave`` module that cannot be imported, first on the path, for libdave's binding).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "discordjs": ("tests/test_dave_interop_discordjs.py", "@discordjs/voice member not set up"),
    "libdave": ("tests/test_dave_interop_libdave.py", "libdave's Python binding is not installed"),
}


def run_without_peer(peer: str, tmp_path: Path, *, required: bool) -> subprocess.CompletedProcess[str]:
    test_file, _ = CASES[peer]
    env = {k: v for k, v in os.environ.items() if k != "FASTVOICE_REQUIRE_INTEROP"}
    if peer == "discordjs":
        env["FASTVOICE_DISCORDJS_DIR"] = str(tmp_path)  # no node_modules there
    else:
        (tmp_path / "dave.py").write_text('raise ImportError("hidden for this test")\n', encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    if required:
        env["FASTVOICE_REQUIRE_INTEROP"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test_file],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("peer", sorted(CASES))
def test_interop_test_skips_with_its_reason_when_the_peer_is_missing(peer, tmp_path):
    result = run_without_peer(peer, tmp_path, required=False)
    # A module skipped whole leaves no test that ran: pytest's "no tests collected", not a failure.
    assert result.returncode in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), \
        result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 skipped" in result.stdout and CASES[peer][1] in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("peer", sorted(CASES))
def test_interop_test_fails_without_its_peer_when_required(peer, tmp_path):
    result = run_without_peer(peer, tmp_path, required=True)
    assert result.returncode not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    assert "FASTVOICE_REQUIRE_INTEROP=1 but" in result.stdout and CASES[peer][1] in result.stdout, \
        result.stdout[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1]
