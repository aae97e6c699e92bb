# cython: language_level=3, embedsignature=True
"""Compiled twin of the SSRC dispatch table (see ``fastvoice._rtp_py_ssrc`` for the documented API).

``fastvoice._rtp_c`` re-exports both classes with the rest of the compiled packet core, whose
``Depacketizer`` looks each datagram's SSRC up through the ``inline`` methods declared in
``_rtp_c_ssrc.pxd``.
"""

from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free

cimport cython

from . import _rtp_common as common

__all__ = ["SSRCEntry", "SSRCTable"]


@cython.final
cdef class SSRCEntry:
    """One row of the SSRC dispatch table: the SSRC, its user and per-user receiver state
    (see ``fastvoice._rtp_py_ssrc.SSRCEntry``)."""

    def __init__(self, ssrc, user_id, state=None):
        self.ssrc = ssrc
        self.user_id = user_id
        self.state = state

    def accept(self, sequence):
        """True the first time ``sequence`` is seen within the last 64 packets; False (and
        ``duplicates`` + 1) for a repeat."""
        return self.c_accept(common.check_uint("sequence", sequence, 16))

    def __repr__(self):
        return f"SSRCEntry(ssrc={self.ssrc}, user_id={self.user_id})"


cdef class SSRCTable:
    """SSRC -> (user id, receiver state), an open-addressing hash table keyed by the C ``uint32``.

    Filled from op 5 (``set``), emptied per user on op 13 (``remove_user``). Bounded by
    ``max_entries``: the least recently active entries are evicted (see the pure twin).
    """

    def __cinit__(self):
        self._slots = <_Slot *>calloc(16, sizeof(_Slot))
        if self._slots == NULL:
            raise MemoryError()
        self._mask = 15
        self._count = 0
        self._max_entries = common.DEFAULT_MAX_SSRCS
        self._victims = []

    def __init__(self, max_entries=common.DEFAULT_MAX_SSRCS):
        self._max_entries = common.check_max_entries(max_entries)

    @property
    def max_entries(self):
        """The most entries the table holds."""
        return self._max_entries

    @property
    def evictions(self):
        """Entries evicted because the table was full."""
        return self._evictions

    def __dealloc__(self):
        self._release_all()
        free(self._slots)

    cdef void _release_all(self) noexcept:
        cdef size_t i
        if self._slots == NULL:
            return
        for i in range(self._mask + 1):
            if self._slots[i].entry != NULL:
                Py_DECREF(<object>self._slots[i].entry)
                self._slots[i].entry = NULL
        self._count = 0

    cdef object _peek(self, object ssrc):
        """The entry for ``ssrc`` without marking it active, or ``None``."""
        cdef size_t i
        if type(ssrc) is not int or ssrc < 0 or ssrc > 0xFFFFFFFF:
            return None
        i = self._find(<uint32_t>ssrc)
        if self._slots[i].entry == NULL:
            return None
        return <object>self._slots[i].entry

    cdef int _grow(self) except -1:
        cdef _Slot *old = self._slots
        cdef size_t old_size = self._mask + 1
        cdef size_t new_size = old_size * 2
        cdef size_t i, j
        cdef _Slot *fresh = <_Slot *>calloc(new_size, sizeof(_Slot))
        if fresh == NULL:
            raise MemoryError()
        self._slots = fresh
        self._mask = new_size - 1
        for i in range(old_size):
            if old[i].entry != NULL:
                j = self._find(old[i].key)
                self._slots[j] = old[i]
        free(old)
        return 0

    cdef object _delete_at(self, size_t i):
        """Remove slot ``i`` (backward-shift deletion, no tombstones) and return its entry."""
        cdef object entry = <object>self._slots[i].entry
        Py_DECREF(entry)  # the table's reference; ``entry`` holds its own
        self._slots[i].entry = NULL
        self._count -= 1
        cdef size_t hole = i
        cdef size_t j = (i + 1) & self._mask
        cdef size_t home
        while self._slots[j].entry != NULL:
            home = _slot_hash(self._slots[j].key, self._mask)
            # Move j into the hole if its home is not in the (cyclic) range (hole, j].
            if ((j - home) & self._mask) >= ((j - hole) & self._mask):
                self._slots[hole] = self._slots[j]
                self._slots[j].entry = NULL
                hole = j
            j = (j + 1) & self._mask
        return entry

    def set(self, ssrc, user_id, state=None):
        """Map ``ssrc`` to ``user_id`` and return its entry (same rules as the pure twin)."""
        cdef uint32_t key = common.check_uint("ssrc", ssrc, 32)
        common.check_uint("user_id", user_id, 64)
        cdef size_t i = self._find(key)
        cdef SSRCEntry entry
        self._clock += 1
        if self._slots[i].entry != NULL:
            entry = <SSRCEntry>self._slots[i].entry
            if entry.user_id == user_id:
                entry._active = self._clock
                return entry
            Py_DECREF(entry)
            self._slots[i].entry = NULL
            self._count -= 1
        entry = SSRCEntry(ssrc, user_id, state)
        entry._active = self._clock
        Py_INCREF(entry)
        self._slots[i].key = key
        self._slots[i].entry = <PyObject *>entry
        self._count += 1
        if self._count > self._max_entries:
            self._evict()
        if self._count * 2 > self._mask + 1:
            self._grow()
        return entry

    cdef int _evict(self) except -1:
        cdef size_t i
        cdef uint64_t stamp
        cdef uint32_t key
        while self._count > self._max_entries:
            if not self._victims:
                stamps = []
                for i in range(self._mask + 1):
                    if self._slots[i].entry != NULL:
                        stamps.append(((<SSRCEntry>self._slots[i].entry)._active, self._slots[i].key))
                self._victims = common.eviction_candidates(stamps, self._max_entries)
            stamp, key = self._victims.pop()
            i = self._find(key)
            # Evicted only if unused (and not replaced) since it was picked.
            if self._slots[i].entry != NULL and (<SSRCEntry>self._slots[i].entry)._active == stamp:
                self._delete_at(i)
                self._evictions += 1
        return 0

    def lookup(self, ssrc):
        """The entry for ``ssrc`` (marked active), or ``None`` for an unknown SSRC."""
        if type(ssrc) is not int or ssrc < 0 or ssrc > 0xFFFFFFFF:
            return None
        return self.c_lookup(<uint32_t>ssrc)

    def user_id(self, ssrc):
        """The user id mapped to ``ssrc``, or ``None``."""
        entry = self._peek(ssrc)
        return None if entry is None else (<SSRCEntry>entry).user_id

    def remove(self, ssrc):
        """Remove ``ssrc`` and return its entry (``None`` if it was unknown)."""
        if type(ssrc) is not int or not 0 <= ssrc <= 0xFFFFFFFF:
            return None
        cdef size_t i = self._find(<uint32_t>ssrc)
        if self._slots[i].entry == NULL:
            return None
        return self._delete_at(i)

    def remove_user(self, user_id):
        """Remove every SSRC of ``user_id`` (op 13) and return the removed entries."""
        removed = [e for e in self if (<SSRCEntry>e).user_id == user_id]
        for e in removed:
            self.remove((<SSRCEntry>e).ssrc)
        return removed

    def clear(self):
        """Remove every entry."""
        self._release_all()
        self._victims = []

    def __len__(self):
        return self._count

    def __contains__(self, ssrc):
        return self._peek(ssrc) is not None

    def __iter__(self):
        cdef size_t i
        entries = []
        for i in range(self._mask + 1):
            if self._slots[i].entry != NULL:
                entries.append(<object>self._slots[i].entry)
        return iter(entries)

    def __repr__(self):
        return f"SSRCTable({self._count} entries)"
