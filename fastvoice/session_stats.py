"""Counters of a connection's voice gateway sessions: reconnects, resumes, closes by code."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from .errors import GatewayClosedError

__all__ = ["SessionStats"]

_READY, _HELLO, _RESUMED = 2, 8, 9


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
    - ``closes``: times the gateway stopped for good, by close code (``None``: no close code,
      e.g. retries ran out after connections were lost, or the session was unusable).
    """

    connections: int = 0
    sessions: int = 0
    reconnects: int = 0
    resumes: int = 0
    server_changes: int = 0
    closes: dict[int | None, int] = field(default_factory=dict)
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
        else:
            self.resumes += 1

    def on_server_change(self) -> None:
        """Count a move to a new voice server."""
        self.server_changes += 1

    def on_closed(self, error: BaseException) -> None:
        """Count the gateway stopping for good with ``error`` (its close code, if it has one)."""
        code = error.code if isinstance(error, GatewayClosedError) else None
        if code is not None and (isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 0xFFFF):
            code = None  # a close code is a u16; anything else is not one to label
        self.closes[code] = self.closes.get(code, 0) + 1
