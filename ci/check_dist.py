"""Check what the built distributions carry (CI runs it on the wheel and the sdist it builds).

    python ci/check_dist.py dist/fastvoice-*.whl dist/fastvoice-*.tar.gz

Wheel: the LICENSE file, ``License-Expression: MIT`` in its metadata, the bundled clip, no
generated C (``_rtp_c.c`` belongs in the sdist only), and compiled modules without debug
information (no ``.debug_info`` section). Sdist: the LICENSE, each extension's .pyx and
generated C (so a build needs no Cython) with every file its Cython includes or cimports
(.pxi, .pxd), and no tests (the test suite runs from a checkout: see MANIFEST.in).
Prints what it checked; exits 1 naming every problem.
"""

from __future__ import annotations

import ast
import posixpath
import re
import struct
import sys
import tarfile
import zipfile


def elf_sections(data: bytes) -> list[str]:
    """Section names of an ELF file (32/64-bit, either byte order); [] for anything else."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return []
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        shoff, = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)
    if not shoff or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return []

    def header(i: int) -> tuple[int, int, int]:  # (name offset, file offset, size)
        at = shoff + i * shentsize
        if wide:
            name, = struct.unpack_from(order + "I", data, at)
            offset, size = struct.unpack_from(order + "QQ", data, at + 0x18)
        else:
            name, = struct.unpack_from(order + "I", data, at)
            offset, size = struct.unpack_from(order + "II", data, at + 0x10)
        return name, offset, size

    _, strings_at, strings_size = header(shstrndx)
    strings = data[strings_at:strings_at + strings_size]
    names = []
    for i in range(shnum):
        start = header(i)[0]
        end = strings.find(b"\0", start)
        names.append(strings[start:end if end >= 0 else None].decode("ascii", "replace"))
    return names


def check_wheel(path: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            problems.append("wheel: no .dist-info/licenses/LICENSE")
        if metadata is None or "License-Expression: MIT" not in wheel.read(metadata).decode("utf-8", "replace"):
            problems.append("wheel: METADATA lacks 'License-Expression: MIT'")
        if "fastvoice/data/demo_clip.dca" not in names:
            problems.append("wheel: the demo's clip fastvoice/data/demo_clip.dca is missing")
        problems += [f"wheel: ships generated C {n}" for n in names if n.endswith(".c")]
        modules = [n for n in names if n.endswith((".so", ".pyd"))]
        for name in modules:
            sections = elf_sections(wheel.read(name))
            if any(s.startswith((".debug_", ".zdebug_")) for s in sections):
                problems.append(f"wheel: {name} carries debug information ({', '.join(s for s in sections if 'debug' in s)})")
        print(f"{path}: {len(names)} files, compiled modules: {', '.join(modules) or 'none'}")
    return problems


_INCLUDE = re.compile(r'^include "([^"]+)"', re.M)
_CIMPORT = re.compile(r"^(?:from|cimport) (fastvoice(?:\.\w+)+)(?: cimport|$)", re.M)


def build_inputs_missing(files: dict[str, str]) -> list[str]:
    """What a build from these files (path -> text of every .pyx/.pxd/.pxi, and setup.py)
    lacks: a .pyx or the generated C of a module setup.py's ``EXTENSION_MODULES`` lists, or
    a file a Cython source includes (``include "x.pxi"``) or cimports (``fastvoice.x``)."""
    missing = []
    tree = ast.parse(files.get("setup.py", ""))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXTENSION_MODULES" for t in node.targets):
            modules = list(ast.literal_eval(node.value))
    if not modules:
        missing.append("setup.py with its EXTENSION_MODULES")
    for module in modules:
        stem = module.replace(".", "/")
        missing += [f"{stem}{ext}" for ext in (".pyx", ".c") if f"{stem}{ext}" not in files]
    for name, text in files.items():
        if not name.endswith((".pyx", ".pxd", ".pxi")):
            continue
        folder = posixpath.dirname(name)
        needed = [posixpath.normpath(posixpath.join(folder, inc)) for inc in _INCLUDE.findall(text)]
        needed += [module.replace(".", "/") + ".pxd" for module in _CIMPORT.findall(text)]
        missing += [f"{need} (needed by {name})" for need in needed if need not in files]
    return missing


def check_sdist(path: str) -> list[str]:
    problems = []
    files: dict[str, str] = {}
    with tarfile.open(path) as sdist:
        for member in sdist.getmembers():
            if "/" not in member.name:
                continue
            name = member.name.split("/", 1)[1]
            text = ""
            if member.isfile() and (name.endswith((".pyx", ".pxd", ".pxi")) or name == "setup.py"):
                text = sdist.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
            files[name] = text
    names = list(files)
    if "LICENSE" not in names:
        problems.append("sdist: no LICENSE")
    # A build from the sdist compiles every extension: from the generated C, or (with Cython)
    # from the .pyx with what it includes and cimports.
    problems += [f"sdist: no {missing} (a build from the sdist needs it)" for missing in build_inputs_missing(files)]
    shipped_tests = [n for n in names if n.startswith("tests/") or n == "conftest.py"]
    if shipped_tests:
        problems.append(f"sdist: ships tests it cannot run without the repository: {shipped_tests[:5]}")
    print(f"{path}: {len(names)} files, no tests shipped" if not shipped_tests else f"{path}: {len(names)} files")
    return problems


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    problems = []
    for path in paths:
        if path.endswith(".whl"):
            problems += check_wheel(path)
        elif path.endswith(".tar.gz"):
            problems += check_sdist(path)
        else:
            problems.append(f"{path}: neither a wheel nor an sdist")
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
