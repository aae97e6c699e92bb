"""Opus decoding with libopus: :class:`OpusDecoder` and its errors.

Selects the compiled twin (``fastvoice._opus_c``, calls libopus from C without the GIL) when
it is built and allowed, else the pure-Python twin (``fastvoice._opus_py``, libopus through
ctypes), which has the same API and output.  ``FASTVOICE_NO_EXTENSIONS=1`` forces the pure
twin; ``FASTVOICE_REQUIRE_EXTENSIONS=1`` makes a missing compiled twin an ImportError.

Both load the system's libopus at run time, when the first decoder is created (or at
:func:`load_opus`): importing fastvoice never needs it.  ``FASTVOICE_LIBOPUS`` names the
library to load instead of the usual names (``libopus.so.0``, ``libopus.0.dylib``, ...).
(The module name leaves ``fastvoice.opus`` to the frame providers and receivers.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS
from ._opus_common import OpusDecodeError, OpusNotAvailableError, load_opus

__all__ = ["IMPLEMENTATION", "OpusDecoder", "OpusDecodeError", "OpusNotAvailableError", "decode_batch", "load_opus"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._opus_py import IMPLEMENTATION, OpusDecoder, decode_batch
else:
    try:
        from ._opus_c import IMPLEMENTATION, OpusDecoder, decode_batch
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                "FASTVOICE_REQUIRE_EXTENSIONS is set but the compiled Opus decoder fastvoice._opus_c "
                f"could not be imported ({exc}); rebuild with a C compiler: pip install -e ."
            ) from exc
        from ._opus_py import IMPLEMENTATION, OpusDecoder, decode_batch  # noqa: F401
