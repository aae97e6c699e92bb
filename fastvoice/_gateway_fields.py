"""How the voice gateway messages' fields are read from and written to the wire.

Internal to :mod:`fastvoice.gateway_messages`: the value readers (each names the message and
the field it rejects, shows a rejected value bounded and a secret never), the writers, and the
:class:`Field` table from which most messages get ``to_json`` and ``from_json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

from ._shown import shown
from .errors import GatewayDecodeError

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
MAX_SNOWFLAKE = 0xFFFFFFFFFFFFFFFF
# Longest heartbeat interval accepted in Hello (about 24.8 days; Discord sends ~13.75 s).
MAX_HEARTBEAT_MS = 2**31 - 1


# -- readers: each names the message and the field it rejects


def where(cls: type, name: str) -> str:
    return f"{cls.__name__} field {name!r}"


# Rejected values are shown bounded (a hostile frame may be megabytes) and secrets never.
brief = shown


def require(cls: type, d: dict[str, Any], name: str) -> Any:
    if name not in d:
        raise GatewayDecodeError(f"{where(cls, name)} is missing")
    return d[name]


def read_int(cls: type, name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GatewayDecodeError(f"{where(cls, name)} must be an integer in {lo}..{hi}, got {brief(value, name)}")
    return value


def read_str(cls: type, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise GatewayDecodeError(f"{where(cls, name)} must be a string, got {brief(value, name)}")
    if not value.isascii() and not _encodable(value):
        # JSON escapes can spell lone surrogates, which no UTF-8 text (a log, a socket) can carry.
        raise GatewayDecodeError(f"{where(cls, name)} must be valid Unicode text (it holds a lone surrogate)")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_snowflake(cls: type, name: str, value: Any) -> int:
    # Discord sends snowflakes as decimal strings; integers are accepted too.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise GatewayDecodeError(f"{where(cls, name)} must be a snowflake (decimal string), got {brief(value, name)}")
    if not 0 <= number <= MAX_SNOWFLAKE:
        raise GatewayDecodeError(f"{where(cls, name)} snowflake {brief(value, name)} is out of range")
    return number


def write_snowflake(cls: type, name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SNOWFLAKE:
        raise ValueError(f"{where(cls, name)} must be a snowflake int in 0..2**64-1, got {value!r}")
    return str(value)


def read_dict(cls: type, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise GatewayDecodeError(f"{cls.__name__} payload must be a JSON object, got {type(d).__name__}")
    return d


# -- the field table: how each message's fields are read from and written to JSON

# ``missing`` of a field that must be present.
REQUIRED: Any = object()


def write_same(cls: type, name: str, value: Any) -> Any:
    return value


def write_text(cls: type, name: str, value: Any) -> str:
    return str(value)


def ranged(lo: int, hi: int) -> Callable[[type, str, Any], int]:
    def read(cls: type, name: str, value: Any) -> int:
        return read_int(cls, name, value, lo, hi)

    return read


U8, U16, U32, PORT = ranged(0, 255), ranged(0, MAX_U16), ranged(0, MAX_U32), ranged(0, 65535)
I64, SEQ_ACK, EPOCH = ranged(-(2**63), 2**63 - 1), ranged(-1, 2**63 - 1), ranged(0, 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Field:
    """One JSON field of a message: the Python attribute, its JSON key, and how to read and write it.

    ``read(cls, key, value)`` raises :class:`GatewayDecodeError`; ``write(cls, attr, value)``
    raises ``ValueError``.  ``missing`` is the value of an absent (or ``null``) optional field;
    ``omit_none`` leaves the field out of the JSON when it is ``None``.  Fields are read
    required ones first (``first`` ones before all), so the error reported for a frame with
    several faults is the first one in that order.
    """

    attr: str
    read: Callable[[type, str, Any], Any]
    write: Callable[[type, str, Any], Any] = write_same
    key: str = ""
    missing: Any = REQUIRED
    omit_none: bool = False
    first: bool = False

    @property
    def wire(self) -> str:
        return self.key or self.attr


_T = TypeVar("_T")


def fields_to_json(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    d: dict[str, Any] = {}
    for spec in cls.FIELDS:
        value = getattr(obj, spec.attr)
        if value is None and spec.omit_none:
            continue
        d[spec.wire] = spec.write(cls, spec.attr, value)
    return d


def fields_from_json(cls: Callable[..., _T], d: Any) -> _T:
    d = read_dict(cast(type, cls), d)
    values: dict[str, Any] = {}
    specs: tuple[Field, ...] = getattr(cls, "FIELDS")
    for spec in sorted(specs, key=lambda s: (not s.first, s.missing is not REQUIRED)):
        if spec.missing is REQUIRED:
            values[spec.attr] = spec.read(cast(type, cls), spec.wire, require(cast(type, cls), d, spec.wire))
        else:
            value = d.get(spec.wire)
            values[spec.attr] = spec.missing if value is None else spec.read(cast(type, cls), spec.wire, value)
    return cls(**values)


class JSONFields:
    """Mixin: ``to_json`` and ``from_json`` from the class's ``FIELDS`` table."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def to_json(self) -> Any:
        """Return the ``d`` object of this message (JSON-ready Python data)."""
        return fields_to_json(self)

    @classmethod
    def from_json(cls: type[_T], d: Any) -> _T:
        """Build the message from a decoded ``d`` value; raises :class:`GatewayDecodeError`."""
        return fields_from_json(cls, d)


# Readers and writers of the fields that are more than a number, a string or a snowflake.


def read_modes(cls: type, name: str, modes: Any) -> list[str]:
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise GatewayDecodeError(f"{where(cls, name)} must be a list of strings, got {brief(modes)}")
    for mode in modes:
        read_str(cls, name, mode)
    return list(modes)


def write_modes(cls: type, name: str, modes: Any) -> list[str]:
    return [str(m) for m in modes]


def read_key(cls: type, name: str, key: Any) -> bytes:
    if (
        not isinstance(key, list)
        or len(key) != 32
        or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in key)
    ):
        described = f"a list of {len(key)} items" if isinstance(key, list) else f"a {type(key).__name__}"
        raise GatewayDecodeError(f"{where(cls, name)} must be a list of 32 ints in 0..255, got {described}")
    return bytes(key)


def write_key(cls: type, name: str, key: Any) -> list[int]:
    if len(key) != 32:
        raise ValueError(f"secret_key must be 32 bytes, got {len(key)}")
    return list(key)


def write_int(cls: type, name: str, value: Any) -> int:
    return int(value)


def read_user_ids(cls: type, name: str, ids: Any) -> list[int]:
    if not isinstance(ids, list):
        raise GatewayDecodeError(f"{where(cls, name)} must be a list, got {brief(ids)}")
    return [read_snowflake(cls, name, u) for u in ids]


def write_user_ids(cls: type, name: str, ids: Any) -> list[str]:
    return [write_snowflake(cls, name, u) for u in ids]


def read_interval(cls: type, name: str, value: Any) -> float:
    # Compared before any float conversion: a 400-digit integer does not fit in a float.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_HEARTBEAT_MS:
        raise GatewayDecodeError(
            f"{where(cls, name)} must be a positive number of milliseconds "
            f"(at most {MAX_HEARTBEAT_MS}), got {brief(value)}"
        )
    return float(value)


def snowflake(attr: str, key: str = "", missing: Any = REQUIRED, omit_none: bool = False) -> Field:
    """A snowflake field: a decimal string on the wire (an int is accepted), an ``int`` in Python."""
    return Field(attr, read_snowflake, write_snowflake, key=key, missing=missing, omit_none=omit_none)


def read_transition_payload(cls: type, payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 2:
        raise GatewayDecodeError(f"{cls.__name__} payload is {len(payload)} bytes; expected a u16 transition id first")
    return (payload[0] << 8) | payload[1], bytes(payload[2:])


def write_transition_id(cls: type, transition_id: int) -> bytes:
    if isinstance(transition_id, bool) or not isinstance(transition_id, int) or not 0 <= transition_id <= MAX_U16:
        raise ValueError(f"{cls.__name__} transition_id must be an int in 0..65535, got {transition_id!r}")
    return transition_id.to_bytes(2, "big")
