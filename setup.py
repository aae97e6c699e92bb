"""Build script: the Cython packet core, optional unless FASTVOICE_REQUIRE_EXTENSIONS=1.

Metadata lives in pyproject.toml.  ``FASTVOICE_NO_EXTENSIONS=1`` skips the
extensions; a machine without a C compiler gets a working pure-Python install
and a warning.

pip shows a build's output only when the build fails or with ``-v``, so the
warning goes to stderr (for ``-v`` and logs) and also to the terminal itself
(``/dev/tty``) when the build has one. Where it has none (CI), importing
fastvoice warns too (``RuntimeWarning``), and ``fastvoice.speedups_enabled()``
says which core is in use.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


NO_EXTENSIONS = _flag("FASTVOICE_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = _flag("FASTVOICE_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS

EXTENSION_MODULES = [
    "fastvoice._rtp_c",
    "fastvoice._rtp_c_ssrc",  # the SSRC table; _rtp_c cimports it and re-exports its classes
    "fastvoice._rtp_edge_c",
    "fastvoice._opus_c",
    "fastvoice._resample_c",
    # The local test server's UDP media path (fastvoice.testing), beside the packet core.
    "fastvoice.testing._media_c",
]

WARNING = """
********************************************************************************
WARNING: fastvoice's compiled extensions could not be built ({error}).
fastvoice is installed with its pure-Python twins: it works, but its packet
core is several times slower.  Install a C compiler and the Python headers and
reinstall to get the speedups (FASTVOICE_REQUIRE_EXTENSIONS=1 makes this fatal).
fastvoice.speedups_enabled() tells which core an installation uses.
********************************************************************************
"""


def warn(message):
    """Print ``message`` to stderr and, when there is one, to the terminal pip runs in."""
    print(message, file=sys.stderr)
    try:
        fd = os.open("/dev/tty", os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
    except OSError:  # no terminal (CI, a service), or not a POSIX system
        return
    try:
        os.write(fd, message.replace("\n", "\r\n").encode("utf-8", "replace") + b"\r\n")
    except OSError:
        pass
    finally:
        os.close(fd)


class OptionalBuildExt(build_ext):
    """build_ext that degrades to a pure install unless the extensions are required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, ...
            if REQUIRE_EXTENSIONS:
                raise
            warn(WARNING.format(error=exc))

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXTENSIONS:
                raise
            warn(WARNING.format(error=f"{ext.name}: {exc}"))


def extensions():
    if NO_EXTENSIONS:
        print("FASTVOICE_NO_EXTENSIONS is set: installing the pure-Python twins only", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        warn(WARNING.format(error="Cython is not installed"))
        return []
    # -g0 after Python's own CFLAGS (which carry -g): wheels ship no debug information.
    flags = ["-O2", "-g0"] if os.name != "nt" else []
    modules = [Extension(name, [name.replace(".", "/") + ".pyx"], extra_compile_args=flags) for name in EXTENSION_MODULES]
    compiled = cythonize(
        modules,
        compiler_directives={"language_level": "3", "embedsignature": True},
        quiet=True,
    )
    for ext in compiled:
        ext.optional = not REQUIRE_EXTENSIONS
    return compiled


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
