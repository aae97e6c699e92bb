"""The shape of the package: module sizes, imports at the top and in no circle, discord.py's private names in one
place."""

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


# --- the import graph, type-only imports included -------------------------------------------------
#
# "Imports only go downward" holds for the reader too: an import written under ``if TYPE_CHECKING:``
# costs nothing at run time, but it still ties the lower module to the upper one, and a circle of
# such imports means no module of the circle can be read (or reused) without the others.

#: ``import`` / ``from ... import`` / ``cimport`` statements of a Cython file, found line by line
#: (``ast`` cannot parse Cython); a parenthesised name list or a backslash may carry one over lines.
_CYTHON_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+c?import[ \t]+(?:\([^)]*\)|(?:[^\n]*\\\n)*[^\n]*)"
    r"|c?import[ \t]+(?:[^\n]*\\\n)*[^\n]*)",
    re.MULTILINE,
)


def _module_name(path, root):
    """The dotted module name of a source file under ``root`` (the directory that holds the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_nodes(path):
    """Every import statement of a file, at any depth: under ``TYPE_CHECKING``, in functions, anywhere."""
    text = path.read_text()
    if path.suffix == ".py":
        tree = ast.parse(text)
    else:
        statements = [re.sub(r"\bcimport\b", "import", m.group(0).strip()) for m in _CYTHON_IMPORT.finditer(text)]
        tree = ast.Module(body=[], type_ignores=[])
        for statement in statements:
            try:
                tree.body += ast.parse(statement).body
            except SyntaxError as exc:
                raise AssertionError(f"{path.name}: cannot read the import {statement!r}") from exc
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(package_dir):
    """``{module: {module it imports, ...}}`` for every module of the package at ``package_dir``.

    Relative imports are resolved against the importing module's package; ``from pkg import name``
    points at the submodule ``pkg.name`` when there is one, else at ``pkg`` itself. Imports of
    modules outside the package are left out. A Cython module's ``.pyx`` and ``.pxd`` are one node.
    Importing ``pkg.mod`` runs ``pkg/__init__.py`` first, but that is no edge of the graph: a package
    that gathers its modules' names would otherwise be in a circle with each of them.
    """
    package_dir = Path(package_dir)
    root = package_dir.parent
    files = [p for ext in ("py", "pyx", "pxd") for p in package_dir.rglob(f"*.{ext}")]
    known = {_module_name(p, root) for p in files}
    graph = {name: set() for name in known}

    def add(source, target):
        while target and target not in known:  # ``import a.b.c`` where only ``a.b`` is ours, say
            target = target.rpartition(".")[0]
        if target and target != source:
            graph[source].add(target)

    for path in files:
        source = _module_name(path, root)
        is_package = path.stem == "__init__"
        for node in _import_nodes(path):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(source, alias.name)
                continue
            if node.level:
                base = source.split(".")
                if not is_package:
                    base.pop()
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                submodule = f"{base_name}.{alias.name}"
                add(source, submodule if submodule in known else base_name)
    return graph


def find_cycle(graph):
    """One import cycle as ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    state = {}  # module -> "open" while on the current path, "done" once all it reaches is known
    path = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle_even_counting_type_only_imports():
    graph = import_graph(PACKAGE)
    # The graph is the package's: a few edges known to exist, of each kind the reader handles.
    assert "fastvoice.testing._session" in graph["fastvoice.testing._server"]  # relative, run time
    assert "fastvoice.testing._session" in graph["fastvoice.testing._keepalive"]  # under TYPE_CHECKING
    assert "fastvoice._rtp_c" in graph["fastvoice._rtp_edge_c"]  # a Cython cimport
    assert "fastvoice.rtp" in graph["fastvoice.testing._media"]  # two dots up
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (type-only imports count): " + " -> ".join(cycle)


def test_the_cycle_check_sees_a_type_only_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .top import Top\n")
    (package / "top.py").write_text("from .sub import low\n\ndef later():\n    import pkg.sub.missing\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..top import Top\n"
    )
    (package / "fast.pyx").write_text(
        '"""Docs."""\nfrom libc.stdint cimport uint8_t\nfrom .sub import (\n    low,\n)\n'
        "from pkg cimport \\\n    fast\n"
    )
    (package / "fast.pxd").write_text("cimport cython\nfrom pkg.sub cimport low\n")
    graph = import_graph(package)
    assert graph == {
        "pkg": {"pkg.top"},
        "pkg.top": {"pkg.sub.low", "pkg.sub"},
        "pkg.sub": set(),
        "pkg.sub.low": {"pkg.top"},
        "pkg.fast": {"pkg.sub.low"},
    }
    assert find_cycle(graph) == ["pkg.top", "pkg.sub.low", "pkg.top"]
    (package / "sub" / "low.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None
    (package / "sub" / "low.py").write_text("def f():\n    from .. import top\n")  # in a function: it counts
    assert find_cycle(import_graph(package)) == ["pkg.top", "pkg.sub.low", "pkg.top"]
