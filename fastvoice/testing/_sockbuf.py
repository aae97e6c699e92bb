"""The local voice server's UDP receive buffer: how large it is, and what overflowed it.

The server reads its media socket from the event loop it shares with the code under test.
While that loop is busy (a tick's send phase for many calls), datagrams wait in the socket's
kernel buffer; when it is full, the kernel drops them and counts the drop on the socket.
:func:`enlarge_receive_buffer` asks for a deep buffer (``SO_RCVBUFFORCE`` where the process
may, else ``SO_RCVBUF``, which the kernel caps at ``net.core.rmem_max``) and never fails;
:func:`receive_drops` reads the kernel's count back (Linux: ``/proc/net/udp``), and
:func:`receive_drops_by_port` sums it over many sockets in one read.
"""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["DEFAULT_RECEIVE_BUFFER", "enlarge_receive_buffer", "receive_drops", "receive_drops_by_port", "rmem_max"]

#: What the server asks for (the kernel doubles it for its bookkeeping and reports that).
DEFAULT_RECEIVE_BUFFER = 8 << 20

# Linux's SO_RCVBUFFORCE (CAP_NET_ADMIN may exceed rmem_max); the socket module lacks the name.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)


def rmem_max() -> int | None:
    """``net.core.rmem_max`` (the cap on ``SO_RCVBUF`` without privileges), or ``None`` if unknown."""
    try:
        with open("/proc/sys/net/core/rmem_max", encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def enlarge_receive_buffer(fd: int, size: int = DEFAULT_RECEIVE_BUFFER) -> int:
    """Ask for a ``size``-byte receive buffer on the socket ``fd``; return what the kernel granted.

    Tries ``SO_RCVBUFFORCE`` first (root or CAP_NET_ADMIN: not capped), then ``SO_RCVBUF``
    (capped at ``net.core.rmem_max``). A refusal is not an error: the buffer stays as it was.
    The value returned is ``getsockopt(SO_RCVBUF)``, which on Linux is twice the usable size.
    """
    sock = socket.socket(fileno=fd)
    try:
        for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        sock.detach()


def _udp_rows() -> list[list[str]] | None:
    """The socket rows of ``/proc/net/udp`` and ``udp6`` (fields split; ``None`` if neither reads)."""
    rows: list[list[str]] = []
    found = False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)  # the header
                rows.extend(fields for fields in (line.split() for line in fh) if len(fields) >= 13)
            found = True
        except OSError:
            continue
    return rows if found else None


def receive_drops(fd: int) -> int | None:
    """Datagrams the kernel dropped at the UDP socket ``fd`` (full receive buffer, ...).

    Read from the ``drops`` column of ``/proc/net/udp`` (and ``udp6``) for the socket's inode;
    ``None`` where that is not available (not Linux, or another network namespace).
    """
    try:
        inode = str(os.fstat(fd).st_ino)
    except OSError:
        return None
    for fields in _udp_rows() or ():
        if fields[9] == inode:
            try:
                return int(fields[12])
            except ValueError:
                return None
    return None


def receive_drops_by_port(ports: set[int] | frozenset[int]) -> int | None:
    """Datagrams the kernel dropped at the UDP sockets bound to any of ``ports``, summed.

    One pass over ``/proc/net/udp`` (and ``udp6``) for however many sockets (a listener bot's
    thousand connections); ``None`` where those tables cannot be read.
    """
    rows = _udp_rows()
    if rows is None:
        return None
    total = 0
    for fields in rows:
        try:
            if int(fields[1].rpartition(":")[2], 16) in ports:
                total += int(fields[12])
        except ValueError:
            continue
    return total
