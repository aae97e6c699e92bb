# The compiled packet core's objects, declared for the compiled modules that use them in C:
# the I/O edge (fastvoice/_rtp_edge_c.pyx) calls Depacketizer.c_dispatch per datagram.
# The definitions are in _rtp_c.pyx; the pure twin is fastvoice/_rtp_py.py. The SSRC table
# is its own compiled module (_rtp_c_ssrc.pxd / .pyx), which _rtp_c re-exports.

cimport cython
from libc.stdint cimport uint32_t

from fastvoice._rtp_c_ssrc cimport SSRCEntry, SSRCTable


cdef struct _AesState:
    void *raw           # what malloc returned
    unsigned char *ctx  # 16-byte aligned libsodium state inside ``raw``; NULL when unused


@cython.final
cdef class Packet:
    # Header fields are kept as C integers and become Python ints only when read.
    cdef uint32_t _sequence
    cdef uint32_t _timestamp
    cdef uint32_t _ssrc
    cdef uint32_t _payload_type
    cdef bint _marker
    cdef public object opus
    cdef public object csrcs
    cdef public object extension_profile
    cdef public object extension
    cdef public object user_id


cdef class Packetizer:
    cdef uint32_t _ssrc
    cdef uint32_t _sequence
    cdef uint32_t _timestamp
    cdef uint32_t _nonce
    cdef int _mode_no
    cdef object _mode
    cdef unsigned char _key[32]
    cdef _AesState _aes
    cdef bint _wiped

    cdef object _packetize(self, const unsigned char *m, Py_ssize_t mlen, bint marker)


cdef class Depacketizer:
    cdef int _mode_no
    cdef object _mode
    cdef unsigned char _key[32]
    cdef unsigned char *_scratch
    cdef Py_ssize_t _scratch_size
    cdef _AesState _aes
    cdef bint _wiped

    cdef object _dispatch_buffer(self, object datagram, SSRCTable table, int *outcome)
    # The one route of a datagram: depacketize, then (``table`` not None) look the SSRC up
    # and apply the duplicate window. Returns the Packet or None, and stores the
    # DispatchOutcome number in ``outcome[0]``. ``spare`` (or None) is a Packet nobody else
    # refers to, filled instead of a new one. Raises DecryptionFailedError.
    cdef object c_dispatch(self, const unsigned char *data, Py_ssize_t n, SSRCTable table, Packet spare,
                           int *outcome)
    cdef unsigned char *_buffer(self, Py_ssize_t size) except NULL
    cdef object _depacketize(self, const unsigned char *data, Py_ssize_t n, Packet spare=*)
