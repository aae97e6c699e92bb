"""The packet core (RTP packing, transport encryption, SSRC dispatch) and its I/O edge.

The core (``Packet``, ``Packetizer``, ``Depacketizer``, the SSRC table) is sans-I/O: bytes
in, bytes or packets out. The edge (``DatagramRouter``, ``send_prepared`` and the two objects
they read, ``SendTarget`` and ``PreparedSlot``) is where datagrams meet sockets.

Selects the compiled twin (``fastvoice._rtp_c``) when it is built and allowed,
else the pure-Python twin (``fastvoice._rtp_py``), which has the same API and
behaviour.  ``FASTVOICE_NO_EXTENSIONS=1`` forces the pure twin;
``FASTVOICE_REQUIRE_EXTENSIONS=1`` makes a missing compiled twin an ImportError.
Otherwise a missing compiled twin on CPython (where it is built) falls back to the pure
one with a ``RuntimeWarning``, once; :func:`speedups_enabled` says which one is in use.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING

from ._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS

__all__ = [
    "IMPLEMENTATION",
    "DispatchOutcome",
    "Packet",
    "Packetizer",
    "Depacketizer",
    "SSRCEntry",
    "SSRCTable",
    "aes256gcm_available",
    "send_prepared",
    "DatagramRouter",
    "PreparedSlot",
    "SendTarget",
    "speedups_enabled",
]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._rtp_py import (
        IMPLEMENTATION,
        Depacketizer,
        DispatchOutcome,
        Packet,
        Packetizer,
        SSRCEntry,
        SSRCTable,
        aes256gcm_available,
    )
    from ._rtp_edge_py import DatagramRouter, PreparedSlot, SendTarget, send_prepared
else:
    try:
        from ._rtp_c import (
            IMPLEMENTATION,
            Depacketizer,
            DispatchOutcome,
            Packet,
            Packetizer,
            SSRCEntry,
            SSRCTable,
            aes256gcm_available,
        )
        from ._rtp_edge_c import DatagramRouter, PreparedSlot, SendTarget, send_prepared
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                "FASTVOICE_REQUIRE_EXTENSIONS is set but the compiled packet core fastvoice._rtp_c "
                f"could not be imported ({exc}); rebuild with a C compiler: pip install -e ."
            ) from exc
        from ._rtp_py import (  # noqa: F401
            IMPLEMENTATION,
            Depacketizer,
            DispatchOutcome,
            Packet,
            Packetizer,
            SSRCEntry,
            SSRCTable,
            aes256gcm_available,
        )
        from ._rtp_edge_py import DatagramRouter, PreparedSlot, SendTarget, send_prepared  # noqa: F401

        if sys.implementation.name == "cpython":  # where the build makes the compiled twin
            warnings.warn(
                f"fastvoice's compiled packet core is not available ({str(exc)[:120]}): using the pure-Python "
                "twin, several times slower. Reinstall with a C compiler and the Python headers for the speedups, "
                "or set FASTVOICE_NO_EXTENSIONS=1 to choose the pure twin without this warning "
                "(fastvoice.speedups_enabled() says which is in use)",
                RuntimeWarning,
            )


def speedups_enabled() -> bool:
    """True when the compiled (Cython) packet core is in use, False for the pure-Python twin."""
    return IMPLEMENTATION == "c"
