# cython: language_level=3, embedsignature=True
"""Compiled twin of the packet core's I/O edge (see ``fastvoice._rtp_edge_py`` for the API).

The router (each datagram the event loop hands a UDP socket's protocol) and the send loop
(each datagram a clock tick prepared, one ``send`` syscall each). The packet work itself is
the core's (``_rtp_c``, cimported through ``_rtp_c.pxd``); what this module reads of the layer
above is declared in ``_rtp_edge_c.pxd``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.ref cimport Py_REFCNT
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE

cimport cython

from fastvoice._rtp_c cimport Depacketizer, Packet
from fastvoice._rtp_c_ssrc cimport SSRCTable

from .errors import DecryptionFailedError

__all__ = ["DatagramRouter", "PreparedSlot", "SendTarget", "send_prepared"]

cdef enum:
    KEEPALIVE_SIZE = 8  # _rtp_common.KEEPALIVE_SIZE (tests/test_twins_guard.py checks)
    DUPLICATE = 2  # _rtp_common.DispatchOutcome.DUPLICATE
    NOT_AUDIO = 3  # _rtp_common.DispatchOutcome.NOT_AUDIO


cdef inline bint _is_keepalive_tail(const unsigned char *p) noexcept nogil:
    # A UDP keepalive is a u32 counter followed by four zero bytes.
    return p[4] == 0 and p[5] == 0 and p[6] == 0 and p[7] == 0


@cython.final
cdef class SendTarget:
    """The socket a UDP connection sends on (see ``fastvoice._rtp_edge_py.SendTarget``)."""

    def __init__(self, fd=-1):
        self.fd = fd

    def __repr__(self):
        return f"SendTarget(fd={self.fd})"


@cython.final
cdef class PreparedSlot:
    """One sender's datagram for the next tick (see ``fastvoice._rtp_edge_py.PreparedSlot``)."""

    def __init__(self, owner, stats):
        self.owner = owner
        self.stats = stats
        self.datagram = None
        self.target = None

    def __repr__(self):
        return f"PreparedSlot(prepared={self.datagram is not None})"


@cython.final
cdef class DatagramRouter:
    """A UDP socket's per-datagram entry point and its one receive route (see
    ``fastvoice._rtp_py.DatagramRouter``)."""

    cdef object _remote
    cdef object _remote_host
    cdef long _remote_port
    cdef public object slow_path
    cdef public bint slow
    cdef public object logger
    cdef public unsigned long long ignored
    cdef public unsigned long long decrypt_failures
    cdef public unsigned long long duplicates
    cdef public unsigned long long keepalives
    cdef public unsigned long long received
    cdef Py_ssize_t _max_size
    cdef Depacketizer _dep
    cdef SSRCTable _table
    cdef object _handler
    cdef Packet _spare

    def __init__(self, slow_path, max_size, logger):
        self.slow_path = slow_path
        self.slow = False
        self._max_size = max_size
        self.logger = logger
        self.remote = None

    @property
    def remote(self):
        """``(host, port)`` of the voice server; datagrams from elsewhere are ignored."""
        return self._remote

    @remote.setter
    def remote(self, value):
        if value is None:
            self._remote, self._remote_host, self._remote_port = None, None, -1
            return
        host, port = value[0], value[1]
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ValueError(f"remote port must be an int in 0..65535, got {port!r}"[:120])
        self._remote, self._remote_host, self._remote_port = (host, port), host, port

    def route(self, depacketizer, table, handler):
        """Deliver audio decrypted by ``depacketizer`` and routed through ``table`` (or, with
        ``None``, unrouted) to ``handler``; with ``depacketizer`` or ``handler`` ``None``
        audio datagrams are counted in ``ignored``."""
        if depacketizer is None or handler is None:
            self._dep, self._table, self._handler = None, None, None
            return
        if not isinstance(depacketizer, Depacketizer) or not (table is None or isinstance(table, SSRCTable)):
            raise TypeError("route() takes this twin's Depacketizer and SSRCTable (or None)")
        self._dep, self._table, self._handler = depacketizer, table, handler

    @property
    def fast(self):
        """True while datagrams go straight along the route (routed, and not ``slow``)."""
        return self._dep is not None and not self.slow

    def datagram_received(self, data, addr):
        """Handle one datagram from ``addr`` (the asyncio ``DatagramProtocol`` method)."""
        cdef object packet
        cdef object port
        cdef object host
        cdef Packet spare
        cdef int outcome = NOT_AUDIO
        self.received += 1
        if self._remote is not None:
            # The port first (a C comparison), then the host; IPv6 addresses are 4-tuples.
            # The event loop hands a tuple: its items are read without the generic indexing.
            if PyTuple_CheckExact(addr) and PyTuple_GET_SIZE(addr) >= 2:
                port = <object>PyTuple_GET_ITEM(addr, 1)
                host = <object>PyTuple_GET_ITEM(addr, 0)
            else:
                self.ignored += 1  # not an (host, port, ...) address: not the voice server
                return
            if type(port) is not int or <long>port != self._remote_port or (
                    host is not self._remote_host and host != self._remote_host):
                self.ignored += 1
                return
        if not PyBytes_CheckExact(data) or PyBytes_GET_SIZE(data) > self._max_size:
            self.ignored += 1
            return
        if self.slow and self.slow_path(data, addr):
            return
        if PyBytes_GET_SIZE(data) == KEEPALIVE_SIZE and _is_keepalive_tail(<const unsigned char *>PyBytes_AS_STRING(data)):
            self.keepalives += 1  # expected traffic (PROTOCOL.md 4.3), not garbage
            return
        if self._dep is None:
            self.ignored += 1  # no key or no receiver yet: nowhere to go
            return
        spare, self._spare = self._spare, None
        try:
            packet = self._dep.c_dispatch(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                                          self._table, spare, &outcome)
        except DecryptionFailedError as exc:
            self.decrypt_failures += 1
            self.logger.debug("dropped a voice packet: %s", exc)
            return
        if packet is None:
            if outcome == DUPLICATE:
                self.duplicates += 1  # told apart from non-audio by dispatch: decrypted once
            else:
                self.ignored += 1
            return
        spare = None
        self._handler(packet)
        if Py_REFCNT(packet) == 1:
            # Nobody kept the packet: the next datagram is parsed into it (no allocation).
            # Only this frame refers to it, and Packet has no weak references.
            self._spare = <Packet>packet


cdef extern from *:
    """
    #ifdef _WIN32
    static long fastvoice_send(long fd, const char *buf, size_t n) { (void)fd; (void)buf; (void)n; return -2; }
    #else
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <errno.h>
    static long fastvoice_send(long fd, const char *buf, size_t n) {
        ssize_t r;
        do { r = send((int)fd, buf, n, MSG_DONTWAIT); } while (r < 0 && errno == EINTR);
        return (long)r;
    }
    #endif
    """
    long fastvoice_send(long fd, const char *buf, size_t n) nogil


def send_prepared(slots):
    """The send phase of a clock tick (see ``fastvoice._rtp_edge_py.send_prepared``): every
    datagram prepared in ``slots`` goes out back to back with one ``send`` syscall each,
    straight on the socket; what could not be sent that way is returned for the transport."""
    cdef list fallback = []
    cdef PreparedSlot slot
    cdef object datagram
    cdef long fd, rc
    for item in slots:
        slot = <PreparedSlot?>item
        datagram = slot.datagram
        if datagram is None:
            continue
        slot.datagram = None
        fd = -1 if slot.target is None else slot.target.fd
        if fd >= 0 and PyBytes_CheckExact(datagram):
            rc = fastvoice_send(fd, PyBytes_AS_STRING(datagram), PyBytes_GET_SIZE(datagram))
            if rc == PyBytes_GET_SIZE(datagram):
                slot.stats.sent += 1
                continue
        fallback.append((slot.owner, datagram))
    return fallback
