# The I/O edge's contract with the layer above, declared: what the send loop reads per
# datagram is C fields of these two objects, never attributes looked up by name.
# Definitions in _rtp_edge_c.pyx; the pure twin is fastvoice/_rtp_edge_py.py.

cimport cython


@cython.final
cdef class SendTarget:
    # The socket a UDP connection sends on: its descriptor, -1 once closed (set by UDPConn).
    cdef public long fd


@cython.final
cdef class PreparedSlot:
    # One sender's datagram for the next tick (owned by an AudioSender).
    cdef public object datagram   # bytes, or None when nothing is prepared
    cdef public SendTarget target  # where it goes (the connection it was encrypted for), or None
    cdef public object stats      # the owner's FrameStats: ``sent`` counts each datagram sent
    cdef public object owner      # handed back with a datagram the loop could not send
