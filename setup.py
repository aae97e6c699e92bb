"""Build script: the Cython packet core, optional unless FASTVOICE_REQUIRE_EXTENSIONS=1.

Metadata lives in pyproject.toml.  ``FASTVOICE_NO_EXTENSIONS=1`` skips the
extensions; a machine without a C compiler gets a working pure-Python install
and a printed warning.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


NO_EXTENSIONS = _flag("FASTVOICE_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = _flag("FASTVOICE_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS

EXTENSION_MODULES = ["fastvoice._rtp_c", "fastvoice._opus_c", "fastvoice._resample_c"]

WARNING = """
********************************************************************************
WARNING: fastvoice's compiled extensions could not be built ({error}).
fastvoice is installed with its pure-Python twins: it works, but its packet
core is several times slower.  Install a C compiler and the Python headers and
reinstall to get the speedups (FASTVOICE_REQUIRE_EXTENSIONS=1 makes this fatal).
********************************************************************************
"""


class OptionalBuildExt(build_ext):
    """build_ext that degrades to a pure install unless the extensions are required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, ...
            if REQUIRE_EXTENSIONS:
                raise
            print(WARNING.format(error=exc), file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXTENSIONS:
                raise
            print(WARNING.format(error=f"{ext.name}: {exc}"), file=sys.stderr)


def extensions():
    if NO_EXTENSIONS:
        print("FASTVOICE_NO_EXTENSIONS is set: installing the pure-Python twins only", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        print(WARNING.format(error="Cython is not installed"), file=sys.stderr)
        return []
    modules = [
        Extension(name, [name.replace(".", "/") + ".pyx"], extra_compile_args=["-O2"] if os.name != "nt" else [])
        for name in EXTENSION_MODULES
    ]
    compiled = cythonize(
        modules,
        compiler_directives={"language_level": "3", "embedsignature": True},
        quiet=True,
    )
    for ext in compiled:
        ext.optional = not REQUIRE_EXTENSIONS
    return compiled


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
