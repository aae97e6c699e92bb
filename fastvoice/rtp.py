"""The packet core: RTP packing, transport encryption and SSRC dispatch.

Selects the compiled twin (``fastvoice._rtp_c``) when it is built and allowed,
else the pure-Python twin (``fastvoice._rtp_py``), which has the same API and
behaviour.  ``FASTVOICE_NO_EXTENSIONS=1`` forces the pure twin;
``FASTVOICE_REQUIRE_EXTENSIONS=1`` makes a missing compiled twin an ImportError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS

__all__ = [
    "IMPLEMENTATION",
    "Packet",
    "Packetizer",
    "Depacketizer",
    "SSRCEntry",
    "SSRCTable",
    "aes256gcm_available",
    "send_prepared",
    "DatagramRouter",
    "speedups_enabled",
]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._rtp_py import (
        IMPLEMENTATION,
        Depacketizer,
        Packet,
        Packetizer,
        SSRCEntry,
        SSRCTable,
        aes256gcm_available,
        send_prepared,
        DatagramRouter,
    )
else:
    try:
        from ._rtp_c import (
            IMPLEMENTATION,
            Depacketizer,
            Packet,
            Packetizer,
            SSRCEntry,
            SSRCTable,
            aes256gcm_available,
            send_prepared,
            DatagramRouter,
        )
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                "FASTVOICE_REQUIRE_EXTENSIONS is set but the compiled packet core fastvoice._rtp_c "
                f"could not be imported ({exc}); rebuild with a C compiler: pip install -e ."
            ) from exc
        from ._rtp_py import (  # noqa: F401
            IMPLEMENTATION,
            Depacketizer,
            Packet,
            Packetizer,
            SSRCEntry,
            SSRCTable,
            aes256gcm_available,
            send_prepared,
            DatagramRouter,
        )


def speedups_enabled() -> bool:
    """True when the compiled (Cython) packet core is in use, False for the pure-Python twin."""
    return IMPLEMENTATION == "c"
