"""Pure-Python twin of the SSRC dispatch table (part of ``fastvoice._rtp_py``, which exports it).

``fastvoice._rtp_c`` holds the compiled twin of both classes; they behave identically.
"""

from __future__ import annotations

from collections.abc import Iterator

from . import _rtp_common as common

__all__ = ["SSRCEntry", "SSRCTable"]


_WINDOW_MASK = (1 << 64) - 1


class SSRCEntry:
    """One row of the SSRC dispatch table: the SSRC, its user and per-user receiver state.

    It also remembers which of the last 64 sequence numbers were dispatched, so that a
    repeated packet (network duplication, a replay) is delivered once: see :meth:`accept`.
    """

    __slots__ = ("ssrc", "user_id", "state", "_duplicates", "_top", "_window", "_active")

    def __init__(self, ssrc: int, user_id: int, state: object = None) -> None:
        self.ssrc = ssrc
        self.user_id = user_id
        self.state = state
        self._duplicates = 0
        self._top = -1
        self._window = 0
        self._active = 0  # the owning table's activity stamp of its last use

    @property
    def duplicates(self) -> int:
        """Packets refused by :meth:`accept` as repeats."""
        return self._duplicates

    def accept(self, sequence: int) -> bool:
        """True the first time ``sequence`` is seen within the last 64 packets; False (and
        ``duplicates`` + 1) for a repeat.

        A sequence number more than 64 behind the newest one starts the window over (a
        restarted stream rather than a late copy)."""
        seq = common.check_uint("sequence", sequence, 16)
        if self._top < 0:
            self._top, self._window = seq, 1
            return True
        ahead = (seq - self._top) & 0xFFFF
        if ahead == 0:
            self._duplicates += 1
            return False
        if ahead < 0x8000:
            self._window = ((self._window << ahead) | 1) & _WINDOW_MASK if ahead < 64 else 1
            self._top = seq
            return True
        behind = (self._top - seq) & 0xFFFF
        if behind >= 64:
            self._top, self._window = seq, 1
            return True
        bit = 1 << behind
        if self._window & bit:
            self._duplicates += 1
            return False
        self._window |= bit
        return True

    def __repr__(self) -> str:
        return f"SSRCEntry(ssrc={self.ssrc}, user_id={self.user_id})"


class SSRCTable:
    """SSRC -> (user id, receiver state), the map the receive path looks up per packet.

    Filled from op 5 (Speaking: ``set``), emptied per user on op 13 (Client
    Disconnect: ``remove_user``).

    Bounded: op 5 comes from the network, so past ``max_entries`` entries the least
    recently active ones are evicted (counted in ``evictions``). An entry is active when
    ``set`` or ``lookup`` finds it, which every routed packet does (``dispatch``).
    """

    __slots__ = ("_entries", "_max_entries", "_clock", "_evictions", "_victims")

    def __init__(self, max_entries: int = common.DEFAULT_MAX_SSRCS) -> None:
        self._max_entries = common.check_max_entries(max_entries)
        self._entries: dict[int, SSRCEntry] = {}
        self._clock = 0  # activity stamps: +1 per use, so the least recently used has the lowest
        self._evictions = 0
        self._victims: list[tuple[int, int]] = []

    @property
    def max_entries(self) -> int:
        """The most entries the table holds."""
        return self._max_entries

    @property
    def evictions(self) -> int:
        """Entries evicted because the table was full."""
        return self._evictions

    def set(self, ssrc: int, user_id: int, state: object = None) -> SSRCEntry:
        """Map ``ssrc`` to ``user_id`` and return its entry.

        If ``ssrc`` already belongs to ``user_id`` the existing entry (and its state)
        is kept; if it belonged to someone else, the entry is replaced. A new entry in a
        full table evicts the least recently active one.
        """
        common.check_uint("ssrc", ssrc, 32)
        common.check_uint("user_id", user_id, 64)
        self._clock += 1
        entry = self._entries.get(ssrc)
        if entry is not None and entry.user_id == user_id:
            entry._active = self._clock
            return entry
        entry = SSRCEntry(ssrc, user_id, state)
        entry._active = self._clock
        self._entries[ssrc] = entry
        if len(self._entries) > self._max_entries:
            self._evict()
        return entry

    def _evict(self) -> None:
        entries = self._entries
        while len(entries) > self._max_entries:
            if not self._victims:
                self._victims = common.eviction_candidates(((e._active, s) for s, e in entries.items()),
                                                       self._max_entries)
            stamp, ssrc = self._victims.pop()
            entry = entries.get(ssrc)
            if entry is not None and entry._active == stamp:  # else used (or replaced) since
                del entries[ssrc]
                self._evictions += 1

    def lookup(self, ssrc: int) -> SSRCEntry | None:
        """The entry for ``ssrc`` (marked active), or ``None`` for an unknown SSRC."""
        entry = self._entries.get(ssrc)
        if entry is not None:
            self._clock += 1
            entry._active = self._clock
        return entry

    def user_id(self, ssrc: int) -> int | None:
        """The user id mapped to ``ssrc``, or ``None``."""
        entry = self._entries.get(ssrc)
        return None if entry is None else entry.user_id

    def remove(self, ssrc: int) -> SSRCEntry | None:
        """Remove ``ssrc`` and return its entry (``None`` if it was unknown)."""
        return self._entries.pop(ssrc, None)

    def remove_user(self, user_id: int) -> list[SSRCEntry]:
        """Remove every SSRC of ``user_id`` (op 13) and return the removed entries."""
        removed = [e for e in self._entries.values() if e.user_id == user_id]
        for entry in removed:
            del self._entries[entry.ssrc]
        return removed

    def clear(self) -> None:
        """Remove every entry."""
        self._entries.clear()
        self._victims.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ssrc: object) -> bool:
        return ssrc in self._entries

    def __iter__(self) -> Iterator[SSRCEntry]:
        return iter(list(self._entries.values()))

    def __repr__(self) -> str:
        return f"SSRCTable({len(self._entries)} entries)"
