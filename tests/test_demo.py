"""The demo command runs end to end and reports success (or failure) through its exit status."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("extra", [[], ["--no-dave"]])
def test_demo_small_run(extra):
    run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", "-n", "3", "-s", "1", *extra],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"calls received intact\s+3 of 3\n", run.stdout)
    assert re.search(r"frames received\s+(\d+) of \1\n", run.stdout)
    assert "OK: every frame arrived, in order" in run.stdout
    summary = r"\n\s+DAVE\s+off\n" if extra else r"\n\s+DAVE\s+on, 0 plaintext packets in E2EE calls\n"
    assert re.search(summary, run.stdout)


def test_demo_rejects_bad_arguments():
    run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", "-n", "0"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "--connections must be >= 1, got 0" in run.stderr


def test_demo_clip_is_opus():
    from fastvoice._demo import load_clip

    frames = load_clip()
    assert len(frames) >= 100
    # TOC byte of every frame: CELT fullband 20 ms (config 31), stereo
    assert all(f[0] >> 3 == 31 and f[0] & 0x04 for f in frames)


def test_bundled_files_are_named_for_their_format():
    # The clip is length-prefixed frames (OpusReader's format, ".dca"); a ".opus" name would
    # promise an Ogg Opus file, which OggOpusReader would then fail to read.
    import io
    from importlib import resources

    from fastvoice import OggOpusReader, OpusReader
    from fastvoice._demo import load_clip

    data = resources.files("fastvoice").joinpath("data")
    names = sorted(entry.name for entry in data.iterdir())
    assert "demo_clip.dca" in names
    for name in names:
        if name.endswith(".opus"):
            OggOpusReader(io.BytesIO(data.joinpath(name).read_bytes())).provide_opus_frame()
    reader = OpusReader(io.BytesIO(data.joinpath("demo_clip.dca").read_bytes()))
    assert [reader.provide_opus_frame() for _ in range(3)] == load_clip()[:3]
