"""The build degrades to a pure install without a compiler, unless extensions are required."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastvoice._env import NO_EXTENSIONS

ROOT = Path(__file__).resolve().parent.parent


def _clean_source(tmp_path: Path) -> Path:
    """A copy of the source tree without build outputs (as a fresh checkout has it)."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src,
        ignore=shutil.ignore_patterns(".git", "*.so", "*.pyd", "*.c", "build", "*.egg-info", "__pycache__", ".*cache*",
                                      ".benchmarks", ".hypothesis"),
    )
    return src


def _pip_install(source: Path, target: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "-v", "--no-deps",
         "--target", str(target), str(source)],
        env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(shutil.which("false") is None, reason="needs a failing stand-in compiler")
@pytest.mark.skipif(NO_EXTENSIONS, reason="already covered by the run with extensions enabled")
def test_no_compiler_gives_working_pure_install(tmp_path):
    broken = {"CC": "false", "LDSHARED": "false"}
    source = _clean_source(tmp_path)
    result = _pip_install(source, tmp_path / "site", **broken)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compiled extensions could not be built" in result.stdout + result.stderr
    assert not list((tmp_path / "site" / "fastvoice").glob("_rtp_c*.so"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    # An editable install of the checkout under test would resolve fastvoice._rtp_c from the
    # checkout; drop its import hook so only the target directory is seen.
    code = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    code += "import fastvoice; assert fastvoice.__file__.startswith(%r); print(fastvoice.speedups_enabled())" % str(tmp_path)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"

    required = _pip_install(source, tmp_path / "site2", FASTVOICE_REQUIRE_EXTENSIONS="1", **broken)
    assert required.returncode != 0
