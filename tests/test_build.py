"""The build degrades to a pure install without a compiler, unless extensions are required."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
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


def _in_a_terminal(command: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as its controlling terminal and stdio (as a user
    at a shell would); return its exit status and everything the terminal showed."""
    import fcntl
    import select
    import termios

    master, slave = os.openpty()

    def take_terminal() -> None:  # runs in the child, after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(command, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=take_terminal)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), shown.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def _import_from(site: Path, cwd: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    env.update(env_overrides, PYTHONPATH=str(site))
    # An editable install of the checkout under test would resolve fastvoice._rtp_c from the
    # checkout; drop its import hook so only the target directory is seen.
    code = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    code += "import fastvoice; assert fastvoice.__file__.startswith(%r); print(fastvoice.speedups_enabled())" % str(site)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("false") is None, reason="needs a failing stand-in compiler")
@pytest.mark.skipif(NO_EXTENSIONS, reason="already covered by the run with extensions enabled")
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_no_compiler_gives_working_pure_install_and_says_so(tmp_path):
    broken = {"CC": "false", "LDSHARED": "false"}
    source = _clean_source(tmp_path)
    # pip without -v, in a terminal, as the README's user runs it: pip hides the build's output
    # (it shows it only if the build fails), so the warning must reach the terminal itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    env.update(broken)
    code, shown = _in_a_terminal([sys.executable, "-m", "pip", "install", "--no-deps", "--target",
                                  str(tmp_path / "site"), str(source)], env)
    assert code == 0, shown[-3000:]
    assert "compiled extensions could not be built" in shown, shown[-3000:]
    assert "speedups_enabled()" in shown
    assert not list((tmp_path / "site" / "fastvoice").glob("_rtp_c*.so"))

    run = _import_from(tmp_path / "site", tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
    # Importing says it too, once: the compiled core is missing on CPython, where it is built.
    assert run.stderr.count("RuntimeWarning") == 1, run.stderr
    assert "compiled packet core is not available" in run.stderr and "FASTVOICE_NO_EXTENSIONS=1" in run.stderr
    # ... unless the pure twins were asked for.
    chosen = _import_from(tmp_path / "site", tmp_path, FASTVOICE_NO_EXTENSIONS="1")
    assert chosen.returncode == 0 and chosen.stdout.strip() == "False" and chosen.stderr == "", chosen.stderr

    required = _pip_install(source, tmp_path / "site2", FASTVOICE_REQUIRE_EXTENSIONS="1", **broken)
    assert required.returncode != 0


def _check_dist():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_check_dist", ROOT / "ci" / "check_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extension_modules() -> list[str]:
    import ast

    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXTENSION_MODULES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no EXTENSION_MODULES")


def test_every_cython_module_is_built():
    # A .pyx that setup.py does not list would silently never be compiled.
    pyx = {p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in (ROOT / "fastvoice").rglob("*.pyx")}
    assert set(_extension_modules()) == pyx
    assert "fastvoice._rtp_c_ssrc" in pyx


def test_the_sdist_check_names_what_a_build_from_it_lacks():
    check = _check_dist()
    setup = "EXTENSION_MODULES = ['fastvoice._a', 'fastvoice.sub._b']\n"
    files = {
        "setup.py": setup,
        "fastvoice/_a.pyx": 'from fastvoice._d cimport X\ninclude "_s.pxi"\n',
        "fastvoice/_a.c": "",
        "fastvoice/sub/_b.pyx": 'include "../_s.pxi"\n',
    }
    assert sorted(check.build_inputs_missing(files)) == [
        "fastvoice/_d.pxd (needed by fastvoice/_a.pyx)",
        "fastvoice/_s.pxi (needed by fastvoice/_a.pyx)",
        "fastvoice/_s.pxi (needed by fastvoice/sub/_b.pyx)",
        "fastvoice/sub/_b.c",
    ]
    files.update({"fastvoice/_d.pxd": "cimport cython\n", "fastvoice/_s.pxi": "", "fastvoice/sub/_b.c": ""})
    assert check.build_inputs_missing(files) == []
    assert check.build_inputs_missing({}) == ["setup.py with its EXTENSION_MODULES"]


def _sdist_builder(tmp_path) -> str:
    """A Python whose setuptools and Cython meet pyproject's build requirements (setuptools >= 77
    for the SPDX license, Cython to generate the C): this one if it does, else a throwaway venv
    with them, as an isolated build would make (a fresh venv's bundled setuptools is older)."""
    from importlib import metadata

    def meets() -> bool:
        try:
            major = int(metadata.version("setuptools").split(".")[0])
            metadata.version("Cython")
        except (metadata.PackageNotFoundError, ValueError):
            return False
        return major >= 77

    if meets():
        return sys.executable
    venv = tmp_path / "build-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "setuptools>=77", "Cython>=3.1"], check=True, timeout=600)
    return python


@pytest.mark.skipif(NO_EXTENSIONS, reason="builds the compiled wheel")
def test_sdist_builds_the_wheel_which_has_the_license_and_neither_generated_c_nor_debug_info(tmp_path):
    # As CI builds it: the sdist first, then the wheel from the sdist alone (so the sdist must
    # carry everything the compiled modules are built from: .pyx, .pxd, .pxi, generated C).
    source = _clean_source(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    run = subprocess.run([_sdist_builder(tmp_path), "-c", code, str(tmp_path / "sdist")], cwd=source, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    sdist = tmp_path / "sdist" / run.stdout.split()[-1]
    check = _check_dist()
    assert check.check_sdist(str(sdist)) == []
    env["FASTVOICE_REQUIRE_EXTENSIONS"] = "1"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(sdist)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fastvoice-*.whl")
    assert check.check_wheel(str(wheel)) == []
    with zipfile.ZipFile(wheel) as built:
        names = built.namelist()
    # Every compiled module is in the wheel, the local server's media engine too, with its .pyx.
    for module in _extension_modules():
        path = module.replace(".", "/")
        assert any(n.startswith(path + ".") and n.endswith(".so") for n in names), (module, names)
    assert "fastvoice/testing/_media_c.pyx" in names and "fastvoice/testing/_media_c.c" not in names
    assert "fastvoice/_sodium.pxi" in names and "fastvoice/_rtp_c_ssrc.pxd" in names
    # The checker itself sees debug information where there is some: an object built with -g.
    if shutil.which("cc"):
        (tmp_path / "x.c").write_text("int f(int x) { return x + 1; }\n")
        subprocess.run(["cc", "-g", "-c", str(tmp_path / "x.c"), "-o", str(tmp_path / "x.o")], check=True)
        assert ".debug_info" in check.elf_sections((tmp_path / "x.o").read_bytes())
