"""DAVE frames that arrived before their key: held per user, bounded, and decrypted once it comes.

A new member's first frames, or frames of a member that moved to a new epoch before this
client processed the commit, reach the receiver before the key that decrypts them. They are
kept (at most ``limit`` frames and ``seconds`` per user) instead of being dropped, tried again
whenever the keys change, and delivered in their order; the ones whose key does not come in
time are dropped through ``on_drop``. Used by :class:`fastvoice.dave.DaveManager`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["EarlyFrames"]

#: ``decrypt(user_id, frame)`` -> ``(plaintext or None, reason)``.
DecryptFunc = Callable[[int, bytes], "tuple[bytes | None, str]"]
#: Where a held frame goes once it is decrypted: ``deliver(user_id, packet)``.
DeliverFunc = Callable[[int, Any], Any]

#: Users whose early frames are held at once, at most (a call has a few hundred members at most).
HOLD_USERS = 256


class EarlyFrames:
    """Per-user queues of ``(arrival, packet, deliver)`` waiting for a key, oldest first.

    ``decrypt`` tries a frame; ``on_decrypted(user_id)`` and ``on_drop(user_id, reason)`` report
    each outcome (counted by the owner); ``clock`` gives monotonic seconds.
    """

    def __init__(
        self,
        limit: int,
        seconds: float,
        clock: Callable[[], float],
        decrypt: DecryptFunc,
        on_decrypted: Callable[[int], None],
        on_drop: Callable[[int, str], None],
        logger: logging.Logger,
    ) -> None:
        self.limit = limit
        self.seconds = seconds
        self._clock = clock
        self._decrypt = decrypt
        self._on_decrypted = on_decrypted
        self._on_drop = on_drop
        self._log = logger
        self._queues: dict[int, collections.deque[tuple[float, Any, DeliverFunc]]] = {}
        #: Frames held now.
        self.count = 0
        self._next_expiry = float("inf")

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._queues

    def can_hold(self, user_id: int) -> bool:
        """Whether a frame of ``user_id`` may be held (holding is on and the user table has room)."""
        return self.limit > 0 and (user_id in self._queues or len(self._queues) < HOLD_USERS)

    def hold(self, user_id: int, packet: Any, deliver: DeliverFunc) -> None:
        """Keep ``packet`` until a key decrypts it; the user's oldest frame goes if it has ``limit`` already."""
        now = self._clock()
        queue = self._queues.get(user_id)
        if queue is None:
            queue = self._queues[user_id] = collections.deque()
        if len(queue) >= self.limit:
            queue.popleft()
            self.count -= 1
            self._on_drop(user_id, f"more than {self.limit} frames waiting for a key")
        queue.append((now, packet, deliver))
        self.count += 1
        self._next_expiry = min(self._next_expiry, now + self.seconds)

    def expire(self) -> None:
        """Drop the frames held longer than ``seconds`` (cheap when none is due)."""
        now = self._clock()
        if now < self._next_expiry:
            return
        next_expiry = float("inf")
        for user_id in list(self._queues):
            queue = self._queues[user_id]
            while queue and now - queue[0][0] >= self.seconds:
                queue.popleft()
                self.count -= 1
                self._on_drop(user_id, f"no key within {self.seconds:g} s")
            if queue:
                next_expiry = min(next_expiry, queue[0][0] + self.seconds)
            else:
                del self._queues[user_id]
        self._next_expiry = next_expiry

    def retry(self, user_id: int, final: bool = False) -> None:
        """Try the user's held frames again; deliver the ones that decrypt, in order.

        ``final``: a newer frame of the user decrypted, so the ones still undecryptable are dropped.
        """
        queue = self._queues.pop(user_id, None)
        if queue is None:
            return
        self.count -= len(queue)
        now = self._clock()
        keep: collections.deque[tuple[float, Any, DeliverFunc]] = collections.deque()
        for item in queue:
            arrival, packet, deliver = item
            if now - arrival >= self.seconds:
                self._on_drop(user_id, f"no key within {self.seconds:g} s")
                continue
            opus, reason = self._decrypt(user_id, packet.opus)
            if opus is None:
                if final:
                    self._on_drop(user_id, reason)
                else:
                    keep.append(item)
                continue
            packet.opus = opus
            self._on_decrypted(user_id)
            try:
                deliver(user_id, packet)
            except Exception:
                self._log.exception("DAVE: delivering a held frame of user %s failed", user_id)
        if keep:
            self._queues[user_id] = keep
            self.count += len(keep)

    def retry_all(self) -> None:
        """The keys changed: every user's held frames may decrypt now."""
        for user_id in list(self._queues):
            self.retry(user_id)

    def forget(self, user_id: int) -> None:
        """The user left: drop its frames without reporting them."""
        queue = self._queues.pop(user_id, None)
        if queue is not None:
            self.count -= len(queue)

    def clear(self) -> None:
        """Drop everything without reporting it."""
        self._queues.clear()
        self.count = 0
        self._next_expiry = float("inf")
