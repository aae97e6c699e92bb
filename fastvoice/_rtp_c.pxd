# The compiled packet core's objects, declared for the compiled modules that use them in C:
# the I/O edge (fastvoice/_rtp_edge_c.pyx) calls Depacketizer.c_dispatch per datagram.
# The definitions are in _rtp_c.pyx; the pure twin is fastvoice/_rtp_py.py.

cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


cdef struct _AesState:
    void *raw           # what malloc returned
    unsigned char *ctx  # 16-byte aligned libsodium state inside ``raw``; NULL when unused


cdef struct _Slot:
    uint32_t key
    PyObject *entry  # NULL marks an empty slot


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


@cython.final
cdef class SSRCEntry:
    cdef public object ssrc
    cdef public object user_id
    cdef public object state
    cdef readonly unsigned long long duplicates
    cdef uint32_t _top
    cdef uint64_t _window
    cdef bint _seen
    cdef uint64_t _active  # the owning table's activity stamp of its last use

    cdef bint c_accept(self, uint32_t seq) noexcept


cdef inline size_t _slot_hash(uint32_t key, size_t mask) noexcept nogil:
    # Fibonacci hashing spreads sequential or clustered SSRCs over the table.
    return <size_t>((<uint32_t>(key * 2654435769u)) >> 8) & mask


cdef class SSRCTable:
    cdef _Slot *_slots
    cdef size_t _mask
    cdef size_t _count
    cdef size_t _max_entries
    cdef uint64_t _clock
    cdef unsigned long long _evictions
    cdef list _victims

    cdef void _release_all(self) noexcept
    cdef inline size_t _find(self, uint32_t key) noexcept:
        """Index of ``key``'s slot, or of the empty slot where it would go (inline: the
        per-packet lookup's probe loop)."""
        cdef size_t i = _slot_hash(key, self._mask)
        while self._slots[i].entry != NULL and self._slots[i].key != key:
            i = (i + 1) & self._mask
        return i

    cdef SSRCEntry c_lookup(self, uint32_t key)
    cdef object _peek(self, object ssrc)
    cdef int _grow(self) except -1
    cdef object _delete_at(self, size_t i)
    cdef int _evict(self) except -1


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
