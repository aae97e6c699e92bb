"""Environment switches read once at import time.

``FASTVOICE_NO_EXTENSIONS=1`` selects the pure-Python twins of the compiled core.
``FASTVOICE_REQUIRE_EXTENSIONS=1`` turns a missing compiled twin into an error
(at build time in ``setup.py`` and at import time here).
"""

from __future__ import annotations

import os


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


NO_EXTENSIONS: bool = _flag("FASTVOICE_NO_EXTENSIONS")
REQUIRE_EXTENSIONS: bool = _flag("FASTVOICE_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS
