# The compiled SSRC dispatch table, declared for the compiled modules that use it in C: the
# packet core (fastvoice/_rtp_c.pyx, whose Depacketizer.c_dispatch looks up each datagram's
# SSRC) and the I/O edge (fastvoice/_rtp_edge_c.pyx). The per-packet lookup, its probe loop and
# the duplicate window are ``inline`` here, so their bodies are compiled into c_dispatch
# itself instead of being called through the type's method table.
# The rest is in _rtp_c_ssrc.pyx; the pure twin is fastvoice/_rtp_py_ssrc.py.

cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


cdef struct _Slot:
    uint32_t key
    PyObject *entry  # NULL marks an empty slot


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

    cdef inline bint c_accept(self, uint32_t seq) noexcept:
        """True the first time ``seq`` is seen within the last 64 packets; False (and
        ``duplicates`` + 1) for a repeat."""
        cdef uint32_t ahead, behind
        cdef uint64_t bit
        if not self._seen:
            self._seen = True
            self._top = seq
            self._window = 1
            return True
        ahead = (seq - self._top) & 0xFFFF
        if ahead == 0:
            self.duplicates += 1
            return False
        if ahead < 0x8000:
            self._window = (self._window << ahead) | 1 if ahead < 64 else 1
            self._top = seq
            return True
        behind = (self._top - seq) & 0xFFFF
        if behind >= 64:
            # Far behind the window: a restarted stream, not a late copy. Start over.
            self._top = seq
            self._window = 1
            return True
        bit = (<uint64_t>1) << behind
        if self._window & bit:
            self.duplicates += 1
            return False
        self._window |= bit
        return True


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
        """Index of ``key``'s slot, or of the empty slot where it would go (the per-packet
        lookup's probe loop)."""
        cdef size_t i = _slot_hash(key, self._mask)
        while self._slots[i].entry != NULL and self._slots[i].key != key:
            i = (i + 1) & self._mask
        return i

    cdef inline SSRCEntry c_lookup(self, uint32_t key):
        """The entry for ``key`` marked active, or None."""
        cdef size_t i = self._find(key)
        cdef SSRCEntry entry
        if self._slots[i].entry == NULL:
            return None
        entry = <SSRCEntry>self._slots[i].entry
        self._clock += 1
        entry._active = self._clock
        return entry

    cdef object _peek(self, object ssrc)
    cdef int _grow(self) except -1
    cdef object _delete_at(self, size_t i)
    cdef int _evict(self) except -1
