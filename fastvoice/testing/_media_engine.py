"""The local server's media engine: the compiled twin when built and allowed, else the pure one.

Selected like the packet core (:mod:`fastvoice.rtp`): ``FASTVOICE_NO_EXTENSIONS=1`` forces the
pure twin (``_media_py``), ``FASTVOICE_REQUIRE_EXTENSIONS=1`` makes a missing compiled twin
(``_media_c``) an ImportError; otherwise a missing compiled twin falls back to the pure one
silently (the packet core already warns about a build without extensions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS

__all__ = ["IMPLEMENTATION", "MediaEngine", "RECORDING_MODES"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._media_py import IMPLEMENTATION, RECORDING_MODES, MediaEngine
else:
    try:
        from ._media_c import IMPLEMENTATION, RECORDING_MODES, MediaEngine
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                "FASTVOICE_REQUIRE_EXTENSIONS is set but the compiled media engine fastvoice.testing._media_c "
                f"could not be imported ({exc}); rebuild with a C compiler: pip install -e ."
            ) from exc
        from ._media_py import IMPLEMENTATION, RECORDING_MODES, MediaEngine  # noqa: F401
