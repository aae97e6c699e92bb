"""``python -m fastvoice``: its usage, and ``bench`` stopping every process it started.

The bench tests tag the processes they start with an environment variable of their own (every
child inherits it, however deep) and look for survivors in /proc after the interrupt.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fastvoice._env import NO_EXTENSIONS

ROOT = Path(__file__).resolve().parent.parent
MARK = "FASTVOICE_TEST_PROCESS_MARK"
linux_only = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ")
# Process handling does not depend on the packet core: run these once, with the compiled twin.
once = pytest.mark.skipif(NO_EXTENSIONS, reason="already covered by the run with extensions enabled")


def test_no_command_prints_usage_to_stderr_and_exits_2():
    run = subprocess.run([sys.executable, "-m", "fastvoice"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.startswith("usage: python -m fastvoice COMMAND") and "demo" in run.stderr and "bench" in run.stderr


def test_help_lists_the_commands_on_stdout():
    run = subprocess.run([sys.executable, "-m", "fastvoice", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    assert "demo" in run.stdout and "bench" in run.stdout


def test_unknown_command():
    run = subprocess.run([sys.executable, "-m", "fastvoice", "dmeo"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown command 'dmeo'" in run.stderr


def test_bench_help_says_how_long_and_what_it_starts():
    run = subprocess.run([sys.executable, "-m", "fastvoice", "bench", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "--quick" in text and "minutes" in text and "seconds" in text
    for started in ("connections_client.py", "discordpy_client.py", "client.mjs", "voice_server_process.py"):
        assert started in text


def _marked(mark: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment holds ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":  # a zombie is already dead, waiting to be reaped
            found.append((int(entry.name), cmdline))
    return found


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _kill_leftovers(mark: str) -> None:
    for pid, _ in _marked(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start(command: list[str], mark: str, **env: str) -> subprocess.Popen[str]:
    environ = dict(os.environ, **env)
    environ[MARK] = mark
    # A session of its own, as a shell would run it in the foreground: the signal goes to it alone,
    # and Ctrl-C's SIGINT is not ignored (as it is in a job a non-interactive shell put in the
    # background, which is how this test run itself may have been started).
    return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@linux_only
@once
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("contender", ["compiled", "discord.py", "discord.js"])
def test_interrupted_bench_leaves_no_process_and_prints_one_line(contender, sig):
    if contender == "discord.py":
        pytest.importorskip("discord")
    if contender == "discord.js" and not (ROOT / "bench" / "discordjs" / "node_modules" / "@discordjs" / "voice").is_dir():
        pytest.skip("the @discordjs/voice peer is not set up (cd bench/discordjs && npm ci)")
    pytest.importorskip("pytest_benchmark")
    mark = uuid.uuid4().hex
    client = {"discord.py": "discordpy_client.py", "discord.js": "client.mjs"}.get(contender, "connections_client.py")
    bench = _start([sys.executable, "-m", "fastvoice", "bench", "--quick", "-k", f"live_connections and {contender}"],
                   mark, FASTVOICE_BENCH_SECONDS="120", PYTHONPATH=str(ROOT))
    try:
        _wait_for(lambda: any("voice_server_process.py" in c for _, c in _marked(mark)) and
                  any(client in c for _, c in _marked(mark)), 90, "the benchmark client and its server")
        time.sleep(1.0)  # connections opening
        bench.send_signal(sig)
        out, err = bench.communicate(timeout=30)
        assert bench.returncode == 130, err[-3000:]
        try:
            _wait_for(lambda: not _marked(mark), 10, "the bench's processes to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still running: {_marked(mark)}") from None
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
        assert err.strip().splitlines()[-1] == (
            "python -m fastvoice bench: interrupted; every benchmark process it started was stopped")
        assert "interrupted" not in out
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
        _kill_leftovers(mark)


@linux_only
@once
@pytest.mark.parametrize("client", ["connections_client.py", "discordpy_client.py", "discordjs/client.mjs"])
def test_ctrl_c_stops_a_benchmark_client_and_its_server(client):
    if client == "discordpy_client.py":
        pytest.importorskip("discord")
    command = [sys.executable, str(ROOT / "bench" / client), "5", "120"]
    if client.endswith(".mjs"):
        if not (ROOT / "bench" / "discordjs" / "node_modules" / "@discordjs" / "voice").is_dir():
            pytest.skip("the @discordjs/voice peer is not set up (cd bench/discordjs && npm ci)")
        command[0] = shutil.which("node") or "node"
    mark = uuid.uuid4().hex
    proc = _start(command, mark, PYTHONPATH=str(ROOT), FASTVOICE_PYTHON=sys.executable)
    try:
        _wait_for(lambda: any("voice_server_process.py" in c for _, c in _marked(mark)), 60, "the voice server process")
        time.sleep(1.5)  # connections opening, or streaming
        proc.send_signal(signal.SIGINT)  # to the client alone, not to its process group
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err[-3000:]  # node: 128 + SIGINT too
        try:
            _wait_for(lambda: not _marked(mark), 10, "the client's server process to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still running: {_marked(mark)}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_leftovers(mark)
