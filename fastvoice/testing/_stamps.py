"""Kernel receive timestamps of datagrams, for pacing measurements.

The time a protocol's ``datagram_received`` runs includes the receiving process's own
scheduling delay (several milliseconds at the tail on a busy machine), which would be
charged to the sender. Linux keeps, per socket, the time the kernel received the last
datagram read from it; the ``SIOCGSTAMPNS`` ioctl returns it. The ioctl only works while
the ``SO_TIMESTAMP``/``SO_TIMESTAMPNS`` socket options are *off* (with them on, the stamp
goes to ancillary data that transports do not read, and the ioctl fails), and the first
call turns stamping on for the socket.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Callable

__all__ = ["kernel_receive_clock"]

_SIOCGSTAMPNS = 0x8907
_STAMP_OPTIONS = (("SO_TIMESTAMP", 29), ("SO_TIMESTAMPNS", 35))


def kernel_receive_clock(transport: asyncio.BaseTransport) -> Callable[[], float | None] | None:
    """A function giving the kernel receive time of the datagram just delivered by ``transport``.

    Call the function from the protocol's ``datagram_received``: it returns the time, in
    ``time.time()``'s clock (seconds), at which the kernel received the last datagram read
    from the transport's socket, or ``None`` when the kernel has no stamp for it. Returns
    ``None`` itself where this is not available (not Linux, no socket).
    """
    if not sys.platform.startswith("linux"):
        return None
    import fcntl  # Unix only

    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        raw = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        # Python's socket module does not always name them; these are Linux's (asm-generic).
        for option, number in _STAMP_OPTIONS:
            raw.setsockopt(socket.SOL_SOCKET, getattr(socket, option, number), 0)
    except OSError:
        return None
    finally:
        raw.detach()  # the transport owns the descriptor
    buf = bytearray(16)
    unpack = struct.Struct("=qq").unpack
    ioctl = fcntl.ioctl
    try:
        ioctl(fd, _SIOCGSTAMPNS, buf)  # turns stamping on (fails: nothing received yet)
    except OSError:
        pass

    def stamp() -> float | None:
        try:
            ioctl(fd, _SIOCGSTAMPNS, buf)
        except OSError:
            return None
        sec, nsec = unpack(buf)
        return float(sec + nsec * 1e-9)

    return stamp
