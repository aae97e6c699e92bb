"""Pure-Python twin of the packet core's I/O edge: the receive router and the send loop.

The edge is where datagrams meet sockets: :class:`DatagramRouter` is what the event loop
calls with each datagram a UDP socket receives, and :func:`send_prepared` writes each
datagram a clock tick prepared. The packet work is the core's (``fastvoice._rtp_py``); what
the edge reads of the layer above is two declared objects, :class:`SendTarget` (a
connection's socket) and :class:`PreparedSlot` (a sender's next datagram).
``fastvoice._rtp_edge_c`` is the compiled twin.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ._rtp_common import KEEPALIVE_SIZE, DispatchOutcome
from ._rtp_py import Depacketizer, SSRCTable
from .errors import DecryptionFailedError

__all__ = ["DatagramRouter", "PreparedSlot", "SendTarget", "send_prepared"]

_os_write = os.write
_ZERO4 = bytes(4)
_DUPLICATE = DispatchOutcome.DUPLICATE


class SendTarget:
    """The socket a UDP connection sends on, as the send loop sees it.

    ``fd`` is the socket's descriptor while the connection is open and -1 once it closes
    (the connection sets it before the descriptor can be reused).
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd

    def __repr__(self) -> str:
        return f"SendTarget(fd={self.fd})"


class PreparedSlot:
    """One sender's datagram for the next clock tick.

    ``datagram`` is the encrypted datagram (``None`` when nothing is prepared), ``target``
    the :class:`SendTarget` of the connection it was encrypted for; :func:`send_prepared`
    counts each datagram it sends in ``stats.sent`` and hands ``owner`` back with one it
    could not send.
    """

    __slots__ = ("datagram", "target", "stats", "owner")

    def __init__(self, owner: Any, stats: Any) -> None:
        self.owner = owner
        self.stats = stats
        self.datagram: bytes | None = None
        self.target: SendTarget | None = None

    def __repr__(self) -> str:
        return f"PreparedSlot(prepared={self.datagram is not None})"


def send_prepared(slots: Iterable[PreparedSlot]) -> list[tuple[Any, bytes]]:
    """The send phase of a clock tick: send every datagram prepared in ``slots``.

    Each prepared datagram is taken (``datagram`` becomes ``None``) and written straight to
    its target's socket, counting ``stats.sent``. Datagrams that cannot be written that way
    (no target, a closed socket, a full socket buffer, any error, a platform without socket
    writes on descriptors) are returned as ``(owner, datagram)`` pairs for the caller to hand
    to the asyncio transport, which buffers and reports errors.
    """
    fallback = []
    for slot in slots:
        datagram = slot.datagram
        if datagram is None:
            continue
        slot.datagram = None
        target = slot.target
        fd = -1 if target is None else target.fd
        if fd >= 0 and type(datagram) is bytes:
            try:
                if _os_write(fd, datagram) == len(datagram):
                    slot.stats.sent += 1
                    continue
            except OSError:
                pass
        fallback.append((slot.owner, datagram))
    return fallback


class DatagramRouter:
    """A UDP socket's per-datagram entry point: what the asyncio datagram protocol calls.

    The one receive route. Each datagram from ``remote`` (any address while ``remote`` is
    ``None``) no longer than ``max_size`` is depacketized, routed through the SSRC table and
    handed to the handler in one call (:meth:`route`); datagrams from another address,
    oversized ones, non-audio, repeats and forgeries are dropped and counted (``ignored``,
    ``duplicates``, ``decrypt_failures``; forgeries logged at debug). UDP keepalives (8 bytes:
    a u32 counter and 4 zero bytes) are dropped too, counted apart in ``keepalives``: they are
    expected traffic, not garbage. Each datagram is decrypted at most once. ``received`` counts
    every datagram handed in, whatever became of it.
    While ``slow`` is true (IP discovery running, a raw handler set), every datagram that
    passed the address and size checks is first offered to ``slow_path(data, addr)``, which
    returns true when it took it; otherwise it goes on along the route.
    """

    __slots__ = ("_remote", "slow_path", "slow", "logger", "ignored", "decrypt_failures", "duplicates",
                 "keepalives", "received", "_max_size", "_dep", "_table", "_handler")

    def __init__(self, slow_path: Any, max_size: int, logger: Any) -> None:
        self.slow_path = slow_path
        #: Offer each datagram to ``slow_path`` first.
        self.slow = False
        self._max_size = max_size
        self.logger = logger
        self._remote: tuple[Any, int] | None = None
        self.ignored = self.decrypt_failures = self.duplicates = self.keepalives = self.received = 0
        self._dep: Depacketizer | None = None
        self._table: SSRCTable | None = None
        self._handler: Any = None

    @property
    def remote(self) -> tuple[Any, int] | None:
        """``(host, port)`` of the voice server; datagrams from elsewhere are ignored."""
        return self._remote

    @remote.setter
    def remote(self, value: Any) -> None:
        if value is None:
            self._remote = None
            return
        host, port = value[0], value[1]
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ValueError(f"remote port must be an int in 0..65535, got {port!r}"[:120])
        self._remote = (host, port)

    def route(self, depacketizer: Depacketizer | None, table: SSRCTable | None, handler: Any) -> None:
        """Deliver audio decrypted by ``depacketizer`` and routed through ``table`` to ``handler``.

        With ``table`` ``None`` packets are delivered unrouted (``user_id`` ``None``, no
        duplicate window). With ``depacketizer`` or ``handler`` ``None`` there is no route:
        audio datagrams are counted in ``ignored``.
        """
        if depacketizer is None or handler is None:
            self._dep = self._table = self._handler = None
            return
        if not isinstance(depacketizer, Depacketizer) or not (table is None or isinstance(table, SSRCTable)):
            raise TypeError("route() takes this twin's Depacketizer and SSRCTable (or None)")
        self._dep, self._table, self._handler = depacketizer, table, handler

    @property
    def fast(self) -> bool:
        """True while datagrams go straight along the route (routed, and not ``slow``)."""
        return self._dep is not None and not self.slow

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Handle one datagram from ``addr`` (the asyncio ``DatagramProtocol`` method)."""
        self.received += 1
        remote = self._remote
        if remote is not None and (type(addr) is not tuple or len(addr) < 2
                                   or addr[1] != remote[1] or addr[0] != remote[0]):
            self.ignored += 1
            return
        if type(data) is not bytes or len(data) > self._max_size:
            self.ignored += 1
            return
        if self.slow and self.slow_path(data, addr):
            return
        if len(data) == KEEPALIVE_SIZE and data[4:] == _ZERO4:
            self.keepalives += 1
            return
        dep = self._dep
        if dep is None:
            self.ignored += 1
            return
        try:
            outcome, packet = dep.dispatch_outcome(data, self._table)  # the core's one route
        except DecryptionFailedError as exc:
            self.decrypt_failures += 1
            self.logger.debug("dropped a voice packet: %s", exc)
            return
        if packet is None:
            if outcome is _DUPLICATE:
                self.duplicates += 1
            else:
                self.ignored += 1
            return
        self._handler(packet)
