"""Counters of a connection's voice gateway sessions: reconnects, resumes, closes by code."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Union

from .close_codes import GATEWAY_CLOSE_EVENT_CODES
from .errors import GatewayClosedError

__all__ = [
    "CloseCodeKey",
    "KNOWN_CLOSE_CODES",
    "OTHER_CLOSE_CODE",
    "SessionStats",
    "close_code_key",
    "close_code_label",
]

_READY, _HELLO, _RESUMED = 2, 8, 9

#: Close codes counted under their own number: the voice close code table's and RFC 6455's
#: (1000-1015). Any other code a server sends is counted under :data:`OTHER_CLOSE_CODE`, so a
#: peer cannot grow the counters' dicts without limit.
KNOWN_CLOSE_CODES: frozenset[int] = frozenset(GATEWAY_CLOSE_EVENT_CODES) | frozenset(range(1000, 1016))

#: The key every close code outside :data:`KNOWN_CLOSE_CODES` is counted under.
OTHER_CLOSE_CODE = "other"

#: A key of the by-close-code dicts: a known close code, ``None`` (no close frame: the
#: connection was lost, could not be made, or missed heartbeat ACKs) or :data:`OTHER_CLOSE_CODE`.
CloseCodeKey = Union[int, str, None]


def close_code_key(code: object) -> CloseCodeKey:
    """The key ``code`` (a close code as received, or ``None``) is counted under."""
    if code is None:
        return None
    if type(code) is int and code in KNOWN_CLOSE_CODES:
        return code
    return OTHER_CLOSE_CODE


def close_code_label(key: CloseCodeKey) -> str:
    """The text of a by-close-code key, as Prometheus labels show it: the code's number,
    ``"none"`` or ``"other"``."""
    return "none" if key is None else str(key)


@dataclass
class SessionStats:
    """Counters of one :class:`~fastvoice.Conn`'s voice gateway sessions (all monotonic).

    The gateway resumes or identifies again on its own after a close that allows it
    (PROTOCOL.md section 2, the close code table); the connection counts what follows:

    - ``connections``: websocket connections that reached Hello (op 8);
    - ``sessions``: voice sessions identified (Ready, op 2), the first one included;
    - ``reconnects``: of which sessions identified again after a dropped connection (a close
      code such as 4006 or 4009, or a connection lost), on the same gateway;
    - ``resumes``: sessions resumed after a dropped connection (Resumed, op 9);
    - ``server_changes``: moves to a new voice server (a VOICE_SERVER_UPDATE with a new token
      or endpoint: a new gateway and session);
    - ``reconnects_by_code`` / ``resumes_by_code``: the same reconnects and resumes by the
      close code that led to them (the gateway's ``reconnect_close_code``: the last close
      frame's code since the session was last ready);
    - ``closes``: times the gateway stopped for good, by the close code it stopped on
      (``None``: no close code, e.g. retries ran out after connections were lost, or the
      session was unusable).

    The by-code dicts are keyed by :func:`close_code_key`: a known code, ``None`` or
    ``"other"``, so they hold at most ``len(KNOWN_CLOSE_CODES) + 2`` keys.
    """

    connections: int = 0
    sessions: int = 0
    reconnects: int = 0
    resumes: int = 0
    server_changes: int = 0
    closes: dict[CloseCodeKey, int] = field(default_factory=dict)
    reconnects_by_code: dict[CloseCodeKey, int] = field(default_factory=dict)
    resumes_by_code: dict[CloseCodeKey, int] = field(default_factory=dict)
    _gateway: Any = field(default=None, init=False, repr=False, compare=False)
    _hellos: int = field(default=0, init=False, repr=False, compare=False)

    def on_event(self, gateway: object, opcode: int) -> None:
        """Count a voice gateway event of ``gateway`` (the connection calls this for each)."""
        if opcode not in (_HELLO, _READY, _RESUMED):
            return
        current = self._gateway() if self._gateway is not None else None
        if current is not gateway:
            self._gateway = weakref.ref(gateway) if gateway is not None else None
            self._hellos = 0
        if opcode == _HELLO:
            self.connections += 1
            self._hellos += 1
        elif opcode == _READY:
            self.sessions += 1
            if self._hellos > 1:
                self.reconnects += 1
                _count(self.reconnects_by_code, getattr(gateway, "reconnect_close_code", None))
        else:
            self.resumes += 1
            _count(self.resumes_by_code, getattr(gateway, "reconnect_close_code", None))

    def on_server_change(self) -> None:
        """Count a move to a new voice server."""
        self.server_changes += 1

    def on_closed(self, error: BaseException) -> None:
        """Count the gateway stopping for good with ``error`` (its close code, if it has one)."""
        _count(self.closes, error.code if isinstance(error, GatewayClosedError) else None)


def _count(counts: dict[CloseCodeKey, int], code: object) -> None:
    key = close_code_key(code)
    counts[key] = counts.get(key, 0) + 1
