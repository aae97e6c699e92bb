"""The shape of the package: module sizes, imports at the top, discord.py's private names in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastvoice"
MAX_LINES = 700

#: Packages that are checked as a whole (the rest of fastvoice/ is checked where its split is done).
SPLIT = ["testing", "ext"]
#: Modules imported inside a function on purpose: an optional package, and a Unix-only module,
#: loaded only where they are needed.
OPTIONAL = {"cryptography", "fcntl"}


def modules(*subpackages):
    for sub in subpackages:
        yield from sorted((PACKAGE / sub).glob("*.py"))


#: What counts as a module's source: Python, and the Cython of the compiled twins (with their
#: declarations and include files).
SOURCES = (".py", ".pyx", ".pxd", ".pxi")


def sources():
    return sorted(p for p in PACKAGE.rglob("*") if p.suffix in SOURCES and p.is_file())


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_at_most_700_lines(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it by concept"


def test_the_size_check_sees_the_compiled_twins():
    found = {p.relative_to(PACKAGE).as_posix() for p in sources()}
    assert {"_rtp_c.pyx", "_rtp_c.pxd", "_rtp_c_ssrc.pyx", "_rtp_c_ssrc.pxd", "_sodium.pxi",
            "testing/_media_c.pyx"} <= found


def function_local_imports(path):
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            found += [(node.lineno, n) for n in names if n.split(".")[0] not in OPTIONAL]
    return found


@pytest.mark.parametrize("path", list(modules(*SPLIT)), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_function_local_imports(path):
    assert function_local_imports(path) == []


def test_the_import_check_sees_a_function_local_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from . import x\n    import cryptography.x509\n    return x\n")
    assert function_local_imports(sample) == [(4, ".")]


# discord.py's private attributes fastvoice.ext.discord relies on.
DISCORD_PRIVATES = re.compile(
    r"\b(_process|_stdout|_load_default|_check_process_returncode|_current_error|_fastvoice_reader)\b"
)


def test_discord_privates_are_used_in_one_module():
    users = sorted(p.name for p in modules("ext") if DISCORD_PRIVATES.search(p.read_text()))
    assert users == ["_discord_privates.py"]


def private_names_imported(path):
    """``(line, module, name)`` of every private name (not a module) imported from a sibling module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        target = base.joinpath(*(node.module or "").split(".")) if node.module else base
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or name.startswith("__"):
                continue
            if any((target / f"{name}{ext}").exists() for ext in (".py", ".pyx")) or (target / name).is_dir():
                continue  # a private module of the package: that is what it is for
            found.append((node.lineno, node.module, name))
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_from_another_module(path):
    assert private_names_imported(path) == []


def test_the_private_name_check_sees_one(tmp_path):
    (tmp_path / "_helpers.py").write_text("")
    sample = tmp_path / "sample.py"
    sample.write_text("from . import _helpers\nfrom .other import _hidden, shown\nfrom .x import __version__\n")
    assert private_names_imported(sample) == [(2, "other", "_hidden")]
