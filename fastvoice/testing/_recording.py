"""What the local voice server records, and the bound on how much of it stays.

A server that runs for hours, or a client that floods it, must not grow memory without end:
every recording is a :class:`Recording`, a list that keeps the newest items and counts the
ones it let go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, List, TypeVar

__all__ = ["Recording", "RecordedMessage", "ReceivedPacket", "ReceivedKeepalive", "RejectedDatagram", "check_limit"]

_T = TypeVar("_T")


def check_limit(name: str, value: object) -> int | None:
    """Validate a recording limit: an int >= 1, or ``None`` for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 or None (no limit), got {value!r}")
    return value


class Recording(List[_T]):
    """A list of the newest recorded items, bounded.

    It holds at most ``limit`` items and, with ``byte_limit``, at most that many bytes as
    measured by ``size(item)``; the oldest items go first (the newest always stays), and
    :attr:`dropped` counts them. The oldest are let go in batches, so between two trims the
    list may hold up to an eighth more than its limits. ``None`` means no limit. It is a
    plain ``list`` otherwise (read, compare, ``clear()`` it as one).
    """

    def __init__(
        self,
        limit: int | None,
        byte_limit: int | None = None,
        size: Callable[[_T], int] | None = None,
        items: Iterable[_T] = (),
    ) -> None:
        super().__init__(items)
        self.limit = limit
        self.byte_limit = byte_limit if size is not None else None
        self._size = size
        self._bytes = sum(size(item) for item in self) if size is not None else 0
        #: Items recorded and later let go to keep within the limits.
        self.dropped = 0

    def record(self, item: _T) -> None:
        """Append ``item``, then let the oldest go if a limit is passed by more than an eighth."""
        self.append(item)
        if self._size is not None:
            self._bytes += self._size(item)
        limit, byte_limit = self.limit, self.byte_limit
        if (limit is not None and len(self) > limit + limit // 8) or (
            byte_limit is not None and self._bytes > byte_limit + byte_limit // 8
        ):
            self._trim()

    def _trim(self) -> None:
        cut = 0 if self.limit is None else max(0, len(self) - self.limit)
        size = self._size
        if size is not None and self.byte_limit is not None:
            total = sum(size(item) for item in self[cut:])  # recounted: a user may have edited the list
            while total > self.byte_limit and cut < len(self) - 1:
                total -= size(self[cut])
                cut += 1
            self._bytes = total
        if cut:
            del self[:cut]
            self.dropped += cut

    def clear(self) -> None:
        """Remove every item (the :attr:`dropped` count stays)."""
        super().clear()
        self._bytes = 0


@dataclass(slots=True)
class RecordedMessage:
    """One gateway frame seen by the server.

    ``direction`` is ``"in"`` (client to server) or ``"out"``; ``op`` the opcode
    (``-1`` for a frame that could not be decoded); ``data`` the decoded JSON ``d``
    value or the binary payload; ``seq`` the server seq it carried; ``time`` a
    ``time.monotonic()`` stamp; ``raw`` the frame as sent or received.
    """

    direction: str
    op: int
    data: Any
    seq: int | None
    time: float
    raw: str | bytes = field(repr=False)

    @property
    def binary(self) -> bool:
        """True for a binary frame."""
        return isinstance(self.raw, bytes)


@dataclass(slots=True)
class ReceivedPacket:
    """One audio packet the server received and decrypted.

    ``arrival`` is ``time.monotonic()`` at reception; ``opus`` the decrypted payload.
    """

    ssrc: int
    user_id: int
    sequence: int
    timestamp: int
    opus: bytes
    marker: bool
    arrival: float
    address: tuple[str, int]


@dataclass(slots=True)
class ReceivedKeepalive:
    """One UDP keepalive the server received: its ``counter`` (u32 little-endian),
    ``arrival`` (``time.monotonic()``, or the kernel's stamp with ``kernel_stamps``) and
    the ``address`` it came from."""

    counter: int
    arrival: float
    address: tuple[str, int]


@dataclass(slots=True)
class RejectedDatagram:
    """A datagram the UDP side could not use, with the reason (for tests of garbage handling)."""

    address: tuple[str, int]
    reason: str
    data: bytes = field(repr=False)
    arrival: float = 0.0
