"""Voice gateway close codes and what a client does about each (PROTOCOL.md section 2).

Every entry is data a user can read: the code, the seed's description and
explanation, whether to reconnect at all, and how (:class:`CloseBehaviour`).

* ``RESUME``: same session, op 7 Resume.
* ``NEW_SESSION``: the session is gone; identify again (after a new voice state
  update on the main gateway when the session id or token changed).
* ``STOP``: report to the user and do not retry.

``reconnect`` is ``behaviour is not STOP``; the seed's older table said ``False``
for 4003, 4006, 4009 and 4011, which today are recovered with a new session.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CloseBehaviour",
    "GatewayCloseEventCode",
    "GATEWAY_CLOSE_EVENT_CODES",
    "gateway_close_event_code_by_code",
    "GATEWAY_CLOSE_EVENT_CODE_HEARTBEAT_TIMEOUT",
    "GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_ERROR",
    "GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_OPCODE",
    "GATEWAY_CLOSE_EVENT_CODE_FAILED_DECODE",
    "GATEWAY_CLOSE_EVENT_CODE_NOT_AUTHENTICATED",
    "GATEWAY_CLOSE_EVENT_CODE_AUTHENTICATION_FAILED",
    "GATEWAY_CLOSE_EVENT_CODE_ALREADY_AUTHENTICATED",
    "GATEWAY_CLOSE_EVENT_CODE_SESSION_NO_LONGER_VALID",
    "GATEWAY_CLOSE_EVENT_CODE_SESSION_TIMEOUT",
    "GATEWAY_CLOSE_EVENT_CODE_SERVER_NOT_FOUND",
    "GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_PROTOCOL",
    "GATEWAY_CLOSE_EVENT_CODE_DISCONNECTED",
    "GATEWAY_CLOSE_EVENT_CODE_VOICE_SERVER_CRASH",
    "GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_ENCRYPTION_MODE",
    "GATEWAY_CLOSE_EVENT_CODE_DAVE_PROTOCOL_REQUIRED",
    "GATEWAY_CLOSE_EVENT_CODE_BAD_REQUEST",
    "GATEWAY_CLOSE_EVENT_CODE_RATE_LIMITED",
    "GATEWAY_CLOSE_EVENT_CODE_CALL_TERMINATED",
    "GATEWAY_CLOSE_EVENT_CODE_UNKNOWN",
]


class CloseBehaviour(str, enum.Enum):
    """What a client does after a close code."""

    #: Reconnect and send op 7 Resume for the same session.
    RESUME = "resume"
    #: The session is gone: identify again (op 0), possibly with a new session id and token.
    NEW_SESSION = "new_session"
    #: Report to the user; never retry.
    STOP = "stop"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class GatewayCloseEventCode:
    """One voice gateway close code (the seed's ``GatewayCloseEventCode``).

    ``client_bug`` marks codes caused by a malformed client (retried a bounded
    number of times, and logged loudly).  ``stop_unless_moved`` marks 4014 and 4022:
    they end the connection unless a voice state/server update shows a move.
    """

    code: int
    description: str
    explanation: str
    behaviour: CloseBehaviour
    client_bug: bool = False
    stop_unless_moved: bool = False

    @property
    def reconnect(self) -> bool:
        """True when the client should connect again (RESUME or NEW_SESSION)."""
        return self.behaviour is not CloseBehaviour.STOP

    def __str__(self) -> str:
        return f"{self.code} {self.description} ({self.behaviour})"


_R, _N, _S = CloseBehaviour.RESUME, CloseBehaviour.NEW_SESSION, CloseBehaviour.STOP

GATEWAY_CLOSE_EVENT_CODE_HEARTBEAT_TIMEOUT = GatewayCloseEventCode(
    1000, "Heartbeat timeout", "We did not heartbeat in time.", _R
)
GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_ERROR = GatewayCloseEventCode(
    4000, "Unknown error", "We're not sure what went wrong. Try reconnecting?", _R
)
GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_OPCODE = GatewayCloseEventCode(
    4001, "Unknown opcode", "You sent an invalid opcode.", _N, client_bug=True
)
GATEWAY_CLOSE_EVENT_CODE_FAILED_DECODE = GatewayCloseEventCode(
    4002, "Failed to decode payload", "You sent an invalid payload in your identifying to the Gateway.", _N,
    client_bug=True,
)
GATEWAY_CLOSE_EVENT_CODE_NOT_AUTHENTICATED = GatewayCloseEventCode(
    4003, "Not authenticated", "You sent a payload before identifying with the Gateway.", _N, client_bug=True
)
GATEWAY_CLOSE_EVENT_CODE_AUTHENTICATION_FAILED = GatewayCloseEventCode(
    4004, "Authentication failed", "The token you sent in your identify payload is incorrect.", _S
)
GATEWAY_CLOSE_EVENT_CODE_ALREADY_AUTHENTICATED = GatewayCloseEventCode(
    4005, "Already authenticated", "You sent more than one identify payload.", _N, client_bug=True
)
GATEWAY_CLOSE_EVENT_CODE_SESSION_NO_LONGER_VALID = GatewayCloseEventCode(
    4006, "Session no longer valid", "Your session is no longer valid.", _N
)
GATEWAY_CLOSE_EVENT_CODE_SESSION_TIMEOUT = GatewayCloseEventCode(
    4009, "Session timeout", "Your session has timed out.", _N
)
GATEWAY_CLOSE_EVENT_CODE_SERVER_NOT_FOUND = GatewayCloseEventCode(
    4011, "Server not found", "We can't find the server you're trying to connect to.", _N
)
GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_PROTOCOL = GatewayCloseEventCode(
    4012, "Unknown protocol", "We didn't recognize the protocol you sent.", _S, client_bug=True
)
GATEWAY_CLOSE_EVENT_CODE_DISCONNECTED = GatewayCloseEventCode(
    4014,
    "Disconnected",
    "Channel was deleted, you were kicked, voice server changed, or the main gateway session was dropped. "
    "Don't reconnect.",
    _S,
    stop_unless_moved=True,
)
GATEWAY_CLOSE_EVENT_CODE_VOICE_SERVER_CRASH = GatewayCloseEventCode(
    4015, "Voice server crashed", "The server crashed. Our bad! Try resuming.", _R
)
GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_ENCRYPTION_MODE = GatewayCloseEventCode(
    4016, "Unknown encryption mode", "We didn't recognize your encryption.", _S
)
GATEWAY_CLOSE_EVENT_CODE_DAVE_PROTOCOL_REQUIRED = GatewayCloseEventCode(
    4017,
    "E2EE/DAVE protocol required",
    "This channel requires end-to-end encryption: identify with max_dave_protocol_version >= 1.",
    _S,
)
GATEWAY_CLOSE_EVENT_CODE_BAD_REQUEST = GatewayCloseEventCode(
    4020, "Bad request", "You sent a malformed request.", _N, client_bug=True
)
GATEWAY_CLOSE_EVENT_CODE_RATE_LIMITED = GatewayCloseEventCode(
    4021, "Disconnected: rate limited", "You were disconnected for sending too many requests. Don't reconnect.", _S
)
GATEWAY_CLOSE_EVENT_CODE_CALL_TERMINATED = GatewayCloseEventCode(
    4022,
    "Disconnected: call terminated",
    "The call was terminated (channel deleted, or everyone was removed). Don't reconnect.",
    _S,
    stop_unless_moved=True,
)
#: The seed's entry for codes not in the table (code 0).  A connection that ends
#: this way is treated as a dropped transport: resume.
GATEWAY_CLOSE_EVENT_CODE_UNKNOWN = GatewayCloseEventCode(0, "Unknown", "Unknown Voice Close Event Code", _R)

#: Every known close code, by code (read-only).
GATEWAY_CLOSE_EVENT_CODES: Mapping[int, GatewayCloseEventCode] = MappingProxyType(
    {
        entry.code: entry
        for entry in (
            GATEWAY_CLOSE_EVENT_CODE_HEARTBEAT_TIMEOUT,
            GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_ERROR,
            GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_OPCODE,
            GATEWAY_CLOSE_EVENT_CODE_FAILED_DECODE,
            GATEWAY_CLOSE_EVENT_CODE_NOT_AUTHENTICATED,
            GATEWAY_CLOSE_EVENT_CODE_AUTHENTICATION_FAILED,
            GATEWAY_CLOSE_EVENT_CODE_ALREADY_AUTHENTICATED,
            GATEWAY_CLOSE_EVENT_CODE_SESSION_NO_LONGER_VALID,
            GATEWAY_CLOSE_EVENT_CODE_SESSION_TIMEOUT,
            GATEWAY_CLOSE_EVENT_CODE_SERVER_NOT_FOUND,
            GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_PROTOCOL,
            GATEWAY_CLOSE_EVENT_CODE_DISCONNECTED,
            GATEWAY_CLOSE_EVENT_CODE_VOICE_SERVER_CRASH,
            GATEWAY_CLOSE_EVENT_CODE_UNKNOWN_ENCRYPTION_MODE,
            GATEWAY_CLOSE_EVENT_CODE_DAVE_PROTOCOL_REQUIRED,
            GATEWAY_CLOSE_EVENT_CODE_BAD_REQUEST,
            GATEWAY_CLOSE_EVENT_CODE_RATE_LIMITED,
            GATEWAY_CLOSE_EVENT_CODE_CALL_TERMINATED,
        )
    }
)


def gateway_close_event_code_by_code(code: int | None) -> GatewayCloseEventCode:
    """Return the table entry for ``code``; the seed's ``Unknown`` entry (RESUME) for any other code.

    ``None`` (no close frame) and unlisted codes such as 1006 are transport drops,
    which the ``Unknown`` entry's RESUME behaviour covers.
    """
    if code is None:
        return GATEWAY_CLOSE_EVENT_CODE_UNKNOWN
    return GATEWAY_CLOSE_EVENT_CODES.get(code, GATEWAY_CLOSE_EVENT_CODE_UNKNOWN)
