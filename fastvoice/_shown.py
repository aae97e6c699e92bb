"""How a value from the network may appear in a log line or an error message.

A peer (the voice server, a client of the test server, a datagram) can send megabytes where
a few bytes are expected; echoing that into a log line or an exception message turns one
hostile frame into a huge log. Every peer-supplied value goes through :func:`shown` (a value)
or :func:`cut` (free text, such as an exception's message that may quote one) first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SHOWN_MAX", "SECRET_FIELDS", "cut", "shown"]

#: Characters of a value's ``repr`` kept in a message.
SHOWN_MAX = 60
#: Fields whose value is never shown, whatever it is (only its type).
SECRET_FIELDS = frozenset({"token", "session_id", "secret_key"})


def cut(text: str, limit: int = SHOWN_MAX) -> str:
    """``text`` itself when it has at most ``limit`` characters, else its first ``limit``
    characters followed by ``... (N characters)``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown(value: Any, name: str = "") -> str:
    """``value`` as a message may show it: its ``repr`` cut to :data:`SHOWN_MAX` characters
    with the full length noted, a container as its item count, and nothing but the type for
    a secret field (``name`` in :data:`SECRET_FIELDS`)."""
    if name in SECRET_FIELDS:
        return f"a {type(value).__name__}"
    if isinstance(value, (list, dict, tuple, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, str) and len(value) > SHOWN_MAX:
        return f"{value[:SHOWN_MAX]!r}... ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)) and len(value) > SHOWN_MAX // 4:
        return f"{bytes(value[:SHOWN_MAX // 4])!r}... ({len(value)} bytes)"
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else f"a {type(value).__name__}"
    return cut(text)
