"""DAVE's receive side: frames that came before their key, and the settings of that hold and of recovery.

A new member's first frames, or frames of a member that moved to a new epoch before this
client processed the commit, reach the receiver before the key that decrypts them.
:class:`EarlyFrames` keeps them (at most ``limit`` frames and ``seconds`` per user) instead of
dropping them, tries them again whenever the keys change, and delivers them in their order;
the ones whose key does not come in time are dropped through ``on_drop``. :class:`DaveConfig`
(exported as ``fastvoice.dave.DaveConfig``) sets the hold and the recovery from broken keys.
Used by :class:`fastvoice.dave.DaveSession`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DaveConfig", "EarlyFrames"]

#: ``decrypt(user_id, frame)`` -> ``(plaintext or None, reason)``.
DecryptFunc = Callable[[int, bytes], "tuple[bytes | None, str]"]
#: Where a held frame goes once it is decrypted: ``deliver(user_id, packet)``.
DeliverFunc = Callable[[int, Any], Any]

#: Users whose early frames are held at once, at most (a call has a few hundred members at most).
HOLD_USERS = 256


@dataclass(frozen=True, slots=True)
class DaveConfig:
    """How a :class:`DaveSession` holds early frames and recovers from broken keys.

    - ``hold_frames``, ``hold_seconds``: a received frame that no key decrypts yet (a new
      member's first frames, a member that switched to a new epoch first) is held, at most
      this many per user and this long, and decrypted once the key arrives. ``hold_frames=0``
      drops such frames at once.
    - ``failure_threshold``: this many frames in a row from one member that cannot be
      decrypted (after the hold, outside transitions) mean this client's keys are broken: it
      sends op 31 and re-initialises its session, as it does for a commit or welcome it
      cannot process.
    - ``recovery_backoff``, ``recovery_backoff_max``: the wait before the second recovery of
      the same cause, doubling each time up to the maximum.
    - ``max_recoveries``: recoveries in a row without success, after which it gives up (a
      warning; counted in ``DaveStats.recoveries_abandoned``) until frames decrypt or a commit
      is processed again, or a new session starts.
    """

    hold_frames: int = 16
    hold_seconds: float = 0.25
    failure_threshold: int = 36
    recovery_backoff: float = 1.0
    recovery_backoff_max: float = 30.0
    max_recoveries: int = 5

    def __post_init__(self) -> None:
        for name in ("hold_frames", "failure_threshold", "max_recoveries"):
            value = getattr(self, name)
            low = 0 if name == "hold_frames" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("hold_seconds", "recovery_backoff", "recovery_backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before recovery number ``attempt`` (0 for the first)."""
        if attempt <= 0:
            return 0.0
        return float(min(self.recovery_backoff * 2 ** (attempt - 1), self.recovery_backoff_max))


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
