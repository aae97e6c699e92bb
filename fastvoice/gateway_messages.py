"""Voice gateway messages: opcodes, typed payloads, JSON and binary framing (PROTOCOL.md section 2).

Everything here is sans-I/O: text or bytes in, typed objects out, and back.

* JSON frames look like ``{"op": 5, "d": {...}, "seq": 10}``; ``seq`` is present on
  server messages that may be re-delivered after a resume.
* Server binary frames are ``[seq: u16 BE][op: u8][payload]``; client binary frames
  are ``[op: u8][payload]``.
* Snowflakes (guild and user ids) are strings on the wire and ``int`` in Python.
* An opcode fastvoice does not know decodes to :class:`GatewayMessageDataUnknown`
  (so does op 12, known only from community sources, when its payload has another
  shape); a known opcode whose payload is malformed raises :class:`GatewayDecodeError`
  (the only exception decoding raises on bad input).
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from ._shown import shown
from .errors import GatewayDecodeError

__all__ = [
    "Opcode",
    "SpeakingFlags",
    "Protocol",
    "GatewayMessage",
    "GatewayMessageData",
    "GatewayMessageDataIdentify",
    "GatewayMessageDataSelectProtocol",
    "GatewayMessageDataSelectProtocolData",
    "GatewayMessageDataReady",
    "GatewayMessageDataHeartbeat",
    "GatewayMessageDataSessionDescription",
    "GatewayMessageDataSpeaking",
    "GatewayMessageDataHeartbeatACK",
    "GatewayMessageDataResume",
    "GatewayMessageDataHello",
    "GatewayMessageDataResumed",
    "GatewayMessageDataClientsConnect",
    "GatewayMessageDataClientConnect",
    "GatewayMessageDataClientDisconnect",
    "GatewayMessageDataDavePrepareTransition",
    "GatewayMessageDataDaveExecuteTransition",
    "GatewayMessageDataDaveTransitionReady",
    "GatewayMessageDataDavePrepareEpoch",
    "GatewayMessageDataDaveMLSExternalSender",
    "GatewayMessageDataDaveMLSKeyPackage",
    "GatewayMessageDataDaveMLSProposals",
    "GatewayMessageDataDaveMLSCommitWelcome",
    "GatewayMessageDataDaveMLSAnnounceCommitTransition",
    "GatewayMessageDataDaveMLSWelcome",
    "GatewayMessageDataDaveMLSInvalidCommitWelcome",
    "GatewayMessageDataUnknown",
    "GatewayDecodeError",
    "decode_message",
    "decode_server_binary",
    "decode_client_binary",
    "encode_message",
    "encode_server_binary",
    "encode_client_binary",
    "message_data_type",
    "BINARY_OPCODES",
]

_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF
_MAX_SNOWFLAKE = 0xFFFFFFFFFFFFFFFF
# Longest heartbeat interval accepted in Hello (about 24.8 days; Discord sends ~13.75 s).
_MAX_HEARTBEAT_MS = 2**31 - 1


class Opcode(enum.IntEnum):
    """Voice gateway opcodes (PROTOCOL.md section 2).

    The seed's names are kept.  ``GUILD_SYNC`` is the seed's name for op 11,
    which Discord now uses for Clients Connect: it is an alias of
    ``CLIENTS_CONNECT``.  ``CLIENT_CONNECT`` (12) carries the seed's
    single-user Client Connect payload; it is a community-documented op that
    Discord may or may not send.
    """

    IDENTIFY = 0
    SELECT_PROTOCOL = 1
    READY = 2
    HEARTBEAT = 3
    SESSION_DESCRIPTION = 4
    SPEAKING = 5
    HEARTBEAT_ACK = 6
    RESUME = 7
    HELLO = 8
    RESUMED = 9
    CLIENTS_CONNECT = 11
    CLIENT_CONNECT = 12
    CLIENT_DISCONNECT = 13
    DAVE_PREPARE_TRANSITION = 21
    DAVE_EXECUTE_TRANSITION = 22
    DAVE_TRANSITION_READY = 23
    DAVE_PREPARE_EPOCH = 24
    DAVE_MLS_EXTERNAL_SENDER = 25
    DAVE_MLS_KEY_PACKAGE = 26
    DAVE_MLS_PROPOSALS = 27
    DAVE_MLS_COMMIT_WELCOME = 28
    DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION = 29
    DAVE_MLS_WELCOME = 30
    DAVE_MLS_INVALID_COMMIT_WELCOME = 31

    GUILD_SYNC = 11


#: Opcodes whose payload travels in binary frames rather than JSON.
BINARY_OPCODES: frozenset[int] = frozenset(range(25, 31))


class SpeakingFlags(enum.IntFlag):
    """Flags of op 5 Speaking (seed: ``SpeakingFlag*``)."""

    NONE = 0
    MICROPHONE = 1 << 0
    SOUNDSHARE = 1 << 1
    PRIORITY = 1 << 2


class Protocol(str, enum.Enum):
    """Transport protocol named in op 1 Select Protocol (seed: ``ProtocolUDP``)."""

    UDP = "udp"

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------------------
# field readers: each names the message and the field it rejects


def _where(cls: type, name: str) -> str:
    return f"{cls.__name__} field {name!r}"


# Rejected values are shown bounded (a hostile frame may be megabytes) and secrets never.
_brief = shown


def _require(cls: type, d: dict[str, Any], name: str) -> Any:
    if name not in d:
        raise GatewayDecodeError(f"{_where(cls, name)} is missing")
    return d[name]


def _int(cls: type, name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GatewayDecodeError(f"{_where(cls, name)} must be an integer in {lo}..{hi}, got {_brief(value, name)}")
    return value


def _str(cls: type, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise GatewayDecodeError(f"{_where(cls, name)} must be a string, got {_brief(value, name)}")
    if not value.isascii() and not _encodable(value):
        # JSON escapes can spell lone surrogates, which no UTF-8 text (a log, a socket) can carry.
        raise GatewayDecodeError(f"{_where(cls, name)} must be valid Unicode text (it holds a lone surrogate)")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _snowflake(cls: type, name: str, value: Any) -> int:
    # Discord sends snowflakes as decimal strings; integers are accepted too.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise GatewayDecodeError(f"{_where(cls, name)} must be a snowflake (decimal string), got {_brief(value, name)}")
    if not 0 <= number <= _MAX_SNOWFLAKE:
        raise GatewayDecodeError(f"{_where(cls, name)} snowflake {_brief(value, name)} is out of range")
    return number


def _check_snowflake_out(cls: type, name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SNOWFLAKE:
        raise ValueError(f"{_where(cls, name)} must be a snowflake int in 0..2**64-1, got {value!r}")
    return str(value)


def _dict(cls: type, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise GatewayDecodeError(f"{cls.__name__} payload must be a JSON object, got {type(d).__name__}")
    return d


def _transition_id(cls: type, d: dict[str, Any]) -> int:
    return _int(cls, "transition_id", _require(cls, d, "transition_id"), 0, _MAX_U16)


# ---------------------------------------------------------------------------
# message data classes


class GatewayMessageData:
    """Base class of every typed voice gateway payload (the seed's ``GatewayMessageData``).

    Subclasses set ``OPCODE``; JSON ones implement :meth:`to_json` and
    :meth:`from_json`, binary ones (``BINARY = True``) :meth:`to_bytes` and
    :meth:`from_bytes`.
    """

    __slots__ = ()
    OPCODE: ClassVar[int] = -1
    BINARY: ClassVar[bool] = False

    def to_json(self) -> Any:
        """Return the ``d`` value of this message as JSON-ready Python data."""
        raise TypeError(f"{type(self).__name__} is sent in a binary frame, not JSON")

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageData:
        """Build the message from a decoded ``d`` value; raises :class:`GatewayDecodeError`."""
        raise GatewayDecodeError(f"{cls.__name__} is a binary message and cannot come in a JSON frame")

    def to_bytes(self) -> bytes:
        """Return the payload of this message's binary frame (after the opcode byte)."""
        raise TypeError(f"{type(self).__name__} is sent as JSON, not in a binary frame")

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageData:
        """Build the message from a binary frame's payload; raises :class:`GatewayDecodeError`."""
        raise GatewayDecodeError(f"{cls.__name__} is a JSON message and cannot come in a binary frame")


@dataclass(slots=True)
class GatewayMessageDataIdentify(GatewayMessageData):
    """Op 0 Identify (client): starts a new voice session.

    ``max_dave_protocol_version`` is the highest DAVE version the client speaks
    (1 = DAVE v1; ``None`` leaves the field out, which Discord treats as 0).
    ``repr`` hides the session id and token.
    """

    OPCODE: ClassVar[int] = Opcode.IDENTIFY
    guild_id: int
    user_id: int
    session_id: str = field(repr=False)
    token: str = field(repr=False)
    max_dave_protocol_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object (``server_id`` and ``user_id`` as strings)."""
        d: dict[str, Any] = {
            "server_id": _check_snowflake_out(type(self), "guild_id", self.guild_id),
            "user_id": _check_snowflake_out(type(self), "user_id", self.user_id),
            "session_id": self.session_id,
            "token": self.token,
        }
        if self.max_dave_protocol_version is not None:
            d["max_dave_protocol_version"] = self.max_dave_protocol_version
        return d

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataIdentify:
        """Decode an Identify ``d`` object."""
        d = _dict(cls, d)
        dave = d.get("max_dave_protocol_version")
        return cls(
            guild_id=_snowflake(cls, "server_id", _require(cls, d, "server_id")),
            user_id=_snowflake(cls, "user_id", _require(cls, d, "user_id")),
            session_id=_str(cls, "session_id", _require(cls, d, "session_id")),
            token=_str(cls, "token", _require(cls, d, "token")),
            max_dave_protocol_version=None if dave is None else _int(cls, "max_dave_protocol_version", dave, 0, 255),
        )


@dataclass(slots=True)
class GatewayMessageDataSelectProtocolData:
    """The ``data`` object of op 1: the client's discovered address, port and chosen mode."""

    address: str
    port: int
    mode: str

    def to_json(self) -> dict[str, Any]:
        """Return the ``data`` object."""
        return {"address": self.address, "port": self.port, "mode": str(self.mode)}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataSelectProtocolData:
        """Decode the ``data`` object."""
        d = _dict(cls, d)
        return cls(
            address=_str(cls, "address", _require(cls, d, "address")),
            port=_int(cls, "port", _require(cls, d, "port"), 0, 65535),
            mode=_str(cls, "mode", _require(cls, d, "mode")),
        )


@dataclass(slots=True)
class GatewayMessageDataSelectProtocol(GatewayMessageData):
    """Op 1 Select Protocol (client): ``{protocol: "udp", data: {address, port, mode}}``.

    ``protocol`` is a :class:`Protocol` when known, else the string received.
    """

    OPCODE: ClassVar[int] = Opcode.SELECT_PROTOCOL
    protocol: Protocol | str
    data: GatewayMessageDataSelectProtocolData

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"protocol": str(self.protocol), "data": self.data.to_json()}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataSelectProtocol:
        """Decode a Select Protocol ``d`` object."""
        d = _dict(cls, d)
        protocol = _str(cls, "protocol", _require(cls, d, "protocol"))
        try:
            proto: Protocol | str = Protocol(protocol)
        except ValueError:
            proto = protocol
        return cls(protocol=proto, data=GatewayMessageDataSelectProtocolData.from_json(_require(cls, d, "data")))


@dataclass(slots=True)
class GatewayMessageDataReady(GatewayMessageData):
    """Op 2 Ready (server): the client's SSRC, the UDP address to use and the offered modes.

    A ``heartbeat_interval`` inside Ready is ignored (the interval comes from Hello).
    """

    OPCODE: ClassVar[int] = Opcode.READY
    ssrc: int
    ip: str
    port: int
    modes: list[str]

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"ssrc": self.ssrc, "ip": self.ip, "port": self.port, "modes": [str(m) for m in self.modes]}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataReady:
        """Decode a Ready ``d`` object."""
        d = _dict(cls, d)
        modes = _require(cls, d, "modes")
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            raise GatewayDecodeError(f"{_where(cls, 'modes')} must be a list of strings, got {_brief(modes)}")
        for mode in modes:
            _str(cls, "modes", mode)
        return cls(
            ssrc=_int(cls, "ssrc", _require(cls, d, "ssrc"), 0, _MAX_U32),
            ip=_str(cls, "ip", _require(cls, d, "ip")),
            port=_int(cls, "port", _require(cls, d, "port"), 0, 65535),
            modes=list(modes),
        )


@dataclass(slots=True)
class GatewayMessageDataHeartbeat(GatewayMessageData):
    """Op 3 Heartbeat (client).

    v8: ``{t: nonce, seq_ack: last seq or -1}``.  With ``seq_ack=None`` it encodes
    as the bare integer nonce of v4 (seed: ``GatewayMessageDataHeartbeat int64``).
    """

    OPCODE: ClassVar[int] = Opcode.HEARTBEAT
    t: int
    seq_ack: int | None = None

    def to_json(self) -> Any:
        """Return ``{t, seq_ack}`` (or the bare nonce when ``seq_ack`` is ``None``)."""
        if self.seq_ack is None:
            return self.t
        return {"t": self.t, "seq_ack": self.seq_ack}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataHeartbeat:
        """Decode either heartbeat form."""
        if isinstance(d, int) and not isinstance(d, bool):
            return cls(t=d)
        d = _dict(cls, d)
        t = _int(cls, "t", _require(cls, d, "t"), -(2**63), 2**63 - 1)
        seq_ack = d.get("seq_ack")
        return cls(t=t, seq_ack=None if seq_ack is None else _int(cls, "seq_ack", seq_ack, -1, 2**63 - 1))


@dataclass(slots=True)
class GatewayMessageDataSessionDescription(GatewayMessageData):
    """Op 4 Session Description (server): the chosen mode, the 32-byte key and the DAVE version."""

    OPCODE: ClassVar[int] = Opcode.SESSION_DESCRIPTION
    mode: str
    secret_key: bytes = field(repr=False)
    dave_protocol_version: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object (the key as a list of 32 ints)."""
        if len(self.secret_key) != 32:
            raise ValueError(f"secret_key must be 32 bytes, got {len(self.secret_key)}")
        return {
            "mode": str(self.mode),
            "secret_key": list(self.secret_key),
            "dave_protocol_version": self.dave_protocol_version,
        }

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataSessionDescription:
        """Decode a Session Description ``d`` object."""
        d = _dict(cls, d)
        key = _require(cls, d, "secret_key")
        if (
            not isinstance(key, list)
            or len(key) != 32
            or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in key)
        ):
            shown = f"a list of {len(key)} items" if isinstance(key, list) else f"a {type(key).__name__}"
            raise GatewayDecodeError(f"{_where(cls, 'secret_key')} must be a list of 32 ints in 0..255, got {shown}")
        dave = d.get("dave_protocol_version", 0)
        return cls(
            mode=_str(cls, "mode", _require(cls, d, "mode")),
            secret_key=bytes(key),
            dave_protocol_version=0 if dave is None else _int(cls, "dave_protocol_version", dave, 0, 255),
        )


@dataclass(slots=True)
class GatewayMessageDataSpeaking(GatewayMessageData):
    """Op 5 Speaking.

    Client form: ``{speaking, delay, ssrc}``.  Server form: ``{speaking, ssrc,
    user_id}``, the only documented SSRC to user map.  ``delay`` and ``user_id``
    are left out of the JSON when ``None``.
    """

    OPCODE: ClassVar[int] = Opcode.SPEAKING
    speaking: SpeakingFlags
    ssrc: int
    delay: int | None = None
    user_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        d: dict[str, Any] = {"speaking": int(self.speaking)}
        if self.delay is not None:
            d["delay"] = self.delay
        d["ssrc"] = self.ssrc
        if self.user_id is not None:
            d["user_id"] = _check_snowflake_out(type(self), "user_id", self.user_id)
        return d

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataSpeaking:
        """Decode a Speaking ``d`` object."""
        d = _dict(cls, d)
        delay = d.get("delay")
        user_id = d.get("user_id")
        return cls(
            speaking=SpeakingFlags(_int(cls, "speaking", _require(cls, d, "speaking"), 0, _MAX_U32)),
            ssrc=_int(cls, "ssrc", _require(cls, d, "ssrc"), 0, _MAX_U32),
            delay=None if delay is None else _int(cls, "delay", delay, 0, _MAX_U32),
            user_id=None if user_id is None else _snowflake(cls, "user_id", user_id),
        )


@dataclass(slots=True)
class GatewayMessageDataHeartbeatACK(GatewayMessageData):
    """Op 6 Heartbeat ACK (server): v8 ``{t: echoed nonce}``; the v4 bare integer is accepted too."""

    OPCODE: ClassVar[int] = Opcode.HEARTBEAT_ACK
    t: int

    def to_json(self) -> dict[str, Any]:
        """Return ``{t}``."""
        return {"t": self.t}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataHeartbeatACK:
        """Decode either ACK form."""
        if isinstance(d, int) and not isinstance(d, bool):
            return cls(t=d)
        d = _dict(cls, d)
        return cls(t=_int(cls, "t", _require(cls, d, "t"), -(2**63), 2**63 - 1))


@dataclass(slots=True)
class GatewayMessageDataResume(GatewayMessageData):
    """Op 7 Resume (client): resumes a session; ``seq_ack`` is the last seq received (or -1).

    ``seq_ack=None`` leaves the field out (pre-v8).  ``repr`` hides the session id and token.
    """

    OPCODE: ClassVar[int] = Opcode.RESUME
    guild_id: int
    session_id: str = field(repr=False)
    token: str = field(repr=False)
    seq_ack: int | None = -1

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        d: dict[str, Any] = {
            "server_id": _check_snowflake_out(type(self), "guild_id", self.guild_id),
            "session_id": self.session_id,
            "token": self.token,
        }
        if self.seq_ack is not None:
            d["seq_ack"] = self.seq_ack
        return d

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataResume:
        """Decode a Resume ``d`` object."""
        d = _dict(cls, d)
        seq_ack = d.get("seq_ack")
        return cls(
            guild_id=_snowflake(cls, "server_id", _require(cls, d, "server_id")),
            session_id=_str(cls, "session_id", _require(cls, d, "session_id")),
            token=_str(cls, "token", _require(cls, d, "token")),
            seq_ack=None if seq_ack is None else _int(cls, "seq_ack", seq_ack, -1, 2**63 - 1),
        )


@dataclass(slots=True)
class GatewayMessageDataHello(GatewayMessageData):
    """Op 8 Hello (server): the heartbeat interval in milliseconds (may be fractional)."""

    OPCODE: ClassVar[int] = Opcode.HELLO
    heartbeat_interval: float

    def to_json(self) -> dict[str, Any]:
        """Return ``{heartbeat_interval}``."""
        return {"heartbeat_interval": self.heartbeat_interval}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataHello:
        """Decode a Hello ``d`` object; the interval must be a positive finite number."""
        d = _dict(cls, d)
        value = _require(cls, d, "heartbeat_interval")
        # Compared before any float conversion: a 400-digit integer does not fit in a float.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= _MAX_HEARTBEAT_MS:
            raise GatewayDecodeError(
                f"{_where(cls, 'heartbeat_interval')} must be a positive number of milliseconds "
                f"(at most {_MAX_HEARTBEAT_MS}), got {_brief(value)}"
            )
        return cls(heartbeat_interval=float(value))


@dataclass(slots=True)
class GatewayMessageDataResumed(GatewayMessageData):
    """Op 9 Resumed (server): the resume succeeded; ``d`` is ``null``."""

    OPCODE: ClassVar[int] = Opcode.RESUMED

    def to_json(self) -> None:
        """Return ``None`` (JSON ``null``)."""
        return None

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataResumed:
        """Accept any ``d`` (Discord sends ``null``)."""
        return cls()


@dataclass(slots=True)
class GatewayMessageDataClientsConnect(GatewayMessageData):
    """Op 11 Clients Connect (server): users now in the call."""

    OPCODE: ClassVar[int] = Opcode.CLIENTS_CONNECT
    user_ids: list[int]

    def to_json(self) -> dict[str, Any]:
        """Return ``{user_ids: [...]}`` with string snowflakes."""
        return {"user_ids": [_check_snowflake_out(type(self), "user_ids", u) for u in self.user_ids]}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataClientsConnect:
        """Decode a Clients Connect ``d`` object."""
        d = _dict(cls, d)
        ids = _require(cls, d, "user_ids")
        if not isinstance(ids, list):
            raise GatewayDecodeError(f"{_where(cls, 'user_ids')} must be a list, got {_brief(ids)}")
        return cls(user_ids=[_snowflake(cls, "user_ids", u) for u in ids])


@dataclass(slots=True)
class GatewayMessageDataClientConnect(GatewayMessageData):
    """Op 12 Client Connect (the seed's single-user form; community-documented, not in Discord's docs)."""

    OPCODE: ClassVar[int] = Opcode.CLIENT_CONNECT
    user_id: int
    audio_codec: str = ""
    video_codec: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {
            "user_id": _check_snowflake_out(type(self), "user_id", self.user_id),
            "audio_codec": self.audio_codec,
            "video_codec": self.video_codec,
        }

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataClientConnect:
        """Decode a Client Connect ``d`` object (codecs default to empty strings)."""
        d = _dict(cls, d)
        audio = d.get("audio_codec")
        video = d.get("video_codec")
        return cls(
            user_id=_snowflake(cls, "user_id", _require(cls, d, "user_id")),
            audio_codec="" if audio is None else _str(cls, "audio_codec", audio),
            video_codec="" if video is None else _str(cls, "video_codec", video),
        )


@dataclass(slots=True)
class GatewayMessageDataClientDisconnect(GatewayMessageData):
    """Op 13 Client Disconnect (server): a user left the call."""

    OPCODE: ClassVar[int] = Opcode.CLIENT_DISCONNECT
    user_id: int

    def to_json(self) -> dict[str, Any]:
        """Return ``{user_id}``."""
        return {"user_id": _check_snowflake_out(type(self), "user_id", self.user_id)}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataClientDisconnect:
        """Decode a Client Disconnect ``d`` object."""
        d = _dict(cls, d)
        return cls(user_id=_snowflake(cls, "user_id", _require(cls, d, "user_id")))


@dataclass(slots=True)
class GatewayMessageDataDavePrepareTransition(GatewayMessageData):
    """Op 21 DAVE Prepare Transition (server): ``{protocol_version, transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_PREPARE_TRANSITION
    protocol_version: int
    transition_id: int

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"protocol_version": self.protocol_version, "transition_id": self.transition_id}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataDavePrepareTransition:
        """Decode the ``d`` object."""
        d = _dict(cls, d)
        return cls(
            protocol_version=_int(cls, "protocol_version", _require(cls, d, "protocol_version"), 0, 255),
            transition_id=_transition_id(cls, d),
        )


@dataclass(slots=True)
class GatewayMessageDataDaveExecuteTransition(GatewayMessageData):
    """Op 22 DAVE Execute Transition (server): ``{transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_EXECUTE_TRANSITION
    transition_id: int

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"transition_id": self.transition_id}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageData:
        """Decode the ``d`` object."""
        return cls(transition_id=_transition_id(cls, _dict(cls, d)))


@dataclass(slots=True)
class GatewayMessageDataDaveTransitionReady(GatewayMessageData):
    """Op 23 DAVE Transition Ready (client): ``{transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_TRANSITION_READY
    transition_id: int

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"transition_id": self.transition_id}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageData:
        """Decode the ``d`` object."""
        return cls(transition_id=_transition_id(cls, _dict(cls, d)))


@dataclass(slots=True)
class GatewayMessageDataDavePrepareEpoch(GatewayMessageData):
    """Op 24 DAVE Prepare Epoch (server): ``{protocol_version, epoch}`` (epoch 1 = a new group)."""

    OPCODE: ClassVar[int] = Opcode.DAVE_PREPARE_EPOCH
    protocol_version: int
    epoch: int

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"protocol_version": self.protocol_version, "epoch": self.epoch}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataDavePrepareEpoch:
        """Decode the ``d`` object."""
        d = _dict(cls, d)
        return cls(
            protocol_version=_int(cls, "protocol_version", _require(cls, d, "protocol_version"), 0, 255),
            epoch=_int(cls, "epoch", _require(cls, d, "epoch"), 0, 2**63 - 1),
        )


@dataclass(slots=True)
class GatewayMessageDataDaveMLSInvalidCommitWelcome(GatewayMessageData):
    """Op 31 DAVE MLS Invalid Commit Welcome (client): ``{transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME
    transition_id: int

    def to_json(self) -> dict[str, Any]:
        """Return the ``d`` object."""
        return {"transition_id": self.transition_id}

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageData:
        """Decode the ``d`` object."""
        return cls(transition_id=_transition_id(cls, _dict(cls, d)))


# --- binary DAVE messages ---------------------------------------------------


@dataclass(slots=True)
class GatewayMessageDataDaveMLSExternalSender(GatewayMessageData):
    """Op 25 DAVE MLS External Sender (server, binary): the serialized ExternalSender."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_EXTERNAL_SENDER
    BINARY: ClassVar[bool] = True
    external_sender: bytes

    def to_bytes(self) -> bytes:
        """Return the payload."""
        return bytes(self.external_sender)

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageDataDaveMLSExternalSender:
        """Decode the payload."""
        return cls(external_sender=bytes(payload))


@dataclass(slots=True)
class GatewayMessageDataDaveMLSKeyPackage(GatewayMessageData):
    """Op 26 DAVE MLS Key Package (client, binary): a serialized MLS KeyPackage."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_KEY_PACKAGE
    BINARY: ClassVar[bool] = True
    key_package: bytes

    def to_bytes(self) -> bytes:
        """Return the payload."""
        return bytes(self.key_package)

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageDataDaveMLSKeyPackage:
        """Decode the payload."""
        return cls(key_package=bytes(payload))


@dataclass(slots=True)
class GatewayMessageDataDaveMLSProposals(GatewayMessageData):
    """Op 27 DAVE MLS Proposals (server, binary): ``[u8 operation_type][proposals]``.

    ``operation_type`` is 0 (append) or 1 (revoke).
    """

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_PROPOSALS
    BINARY: ClassVar[bool] = True
    APPEND: ClassVar[int] = 0
    REVOKE: ClassVar[int] = 1
    operation_type: int
    proposals: bytes

    def to_bytes(self) -> bytes:
        """Return the payload."""
        if self.operation_type not in (0, 1):
            raise ValueError(f"operation_type must be 0 (append) or 1 (revoke), got {self.operation_type!r}")
        return bytes((self.operation_type,)) + bytes(self.proposals)

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageDataDaveMLSProposals:
        """Decode the payload."""
        if len(payload) < 1:
            raise GatewayDecodeError(f"{cls.__name__} payload is empty; expected an operation type byte")
        if payload[0] not in (0, 1):
            raise GatewayDecodeError(f"{cls.__name__} operation type must be 0 or 1, got {payload[0]}")
        return cls(operation_type=payload[0], proposals=bytes(payload[1:]))


@dataclass(slots=True)
class GatewayMessageDataDaveMLSCommitWelcome(GatewayMessageData):
    """Op 28 DAVE MLS Commit Welcome (client, binary): ``commit || welcome?`` as one blob."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_COMMIT_WELCOME
    BINARY: ClassVar[bool] = True
    commit_welcome: bytes

    def to_bytes(self) -> bytes:
        """Return the payload."""
        return bytes(self.commit_welcome)

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageDataDaveMLSCommitWelcome:
        """Decode the payload."""
        return cls(commit_welcome=bytes(payload))


def _transition_payload(cls: type, payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 2:
        raise GatewayDecodeError(f"{cls.__name__} payload is {len(payload)} bytes; expected a u16 transition id first")
    return (payload[0] << 8) | payload[1], bytes(payload[2:])


def _check_transition_id(cls: type, transition_id: int) -> bytes:
    if isinstance(transition_id, bool) or not isinstance(transition_id, int) or not 0 <= transition_id <= _MAX_U16:
        raise ValueError(f"{cls.__name__} transition_id must be an int in 0..65535, got {transition_id!r}")
    return transition_id.to_bytes(2, "big")


@dataclass(slots=True)
class GatewayMessageDataDaveMLSAnnounceCommitTransition(GatewayMessageData):
    """Op 29 DAVE MLS Announce Commit Transition (server, binary): ``[u16 BE transition_id][commit]``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION
    BINARY: ClassVar[bool] = True
    transition_id: int
    commit: bytes

    def to_bytes(self) -> bytes:
        """Return the payload."""
        return _check_transition_id(type(self), self.transition_id) + bytes(self.commit)

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageDataDaveMLSAnnounceCommitTransition:
        """Decode the payload."""
        transition_id, commit = _transition_payload(cls, payload)
        return cls(transition_id=transition_id, commit=commit)


@dataclass(slots=True)
class GatewayMessageDataDaveMLSWelcome(GatewayMessageData):
    """Op 30 DAVE MLS Welcome (server, binary): ``[u16 BE transition_id][welcome]``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_WELCOME
    BINARY: ClassVar[bool] = True
    transition_id: int
    welcome: bytes

    def to_bytes(self) -> bytes:
        """Return the payload."""
        return _check_transition_id(type(self), self.transition_id) + bytes(self.welcome)

    @classmethod
    def from_bytes(cls, payload: bytes) -> GatewayMessageDataDaveMLSWelcome:
        """Decode the payload."""
        transition_id, welcome = _transition_payload(cls, payload)
        return cls(transition_id=transition_id, welcome=welcome)


@dataclass(slots=True)
class GatewayMessageDataUnknown(GatewayMessageData):
    """A message with an opcode fastvoice does not know (seed: ``GatewayMessageDataUnknown``).

    ``op`` is the opcode received; ``raw`` is the decoded JSON ``d`` value, or the
    payload bytes of a binary frame.  It reaches the event handler like any other.
    """

    op: int
    raw: Any = None

    @property
    def binary(self) -> bool:
        """True when this message came in (or goes out as) a binary frame."""
        return isinstance(self.raw, (bytes, bytearray, memoryview))

    def to_json(self) -> Any:
        """Return ``raw`` as the ``d`` value."""
        if self.binary:
            raise TypeError("a binary unknown message has no JSON form")
        return self.raw

    def to_bytes(self) -> bytes:
        """Return ``raw`` as a binary payload."""
        if not self.binary:
            raise TypeError("a JSON unknown message has no binary form")
        return bytes(self.raw)


_TYPES: dict[int, type[GatewayMessageData]] = {
    cls.OPCODE: cls
    for cls in (
        GatewayMessageDataIdentify,
        GatewayMessageDataSelectProtocol,
        GatewayMessageDataReady,
        GatewayMessageDataHeartbeat,
        GatewayMessageDataSessionDescription,
        GatewayMessageDataSpeaking,
        GatewayMessageDataHeartbeatACK,
        GatewayMessageDataResume,
        GatewayMessageDataHello,
        GatewayMessageDataResumed,
        GatewayMessageDataClientsConnect,
        GatewayMessageDataClientConnect,
        GatewayMessageDataClientDisconnect,
        GatewayMessageDataDavePrepareTransition,
        GatewayMessageDataDaveExecuteTransition,
        GatewayMessageDataDaveTransitionReady,
        GatewayMessageDataDavePrepareEpoch,
        GatewayMessageDataDaveMLSExternalSender,
        GatewayMessageDataDaveMLSKeyPackage,
        GatewayMessageDataDaveMLSProposals,
        GatewayMessageDataDaveMLSCommitWelcome,
        GatewayMessageDataDaveMLSAnnounceCommitTransition,
        GatewayMessageDataDaveMLSWelcome,
        GatewayMessageDataDaveMLSInvalidCommitWelcome,
    )
}


# Ops known only from community sources: a payload of another shape is kept as unknown.
_COMMUNITY_OPS = frozenset({Opcode.CLIENT_CONNECT})


def message_data_type(op: int) -> type[GatewayMessageData] | None:
    """Return the payload class for opcode ``op``, or ``None`` when it is unknown."""
    return _TYPES.get(op)


@dataclass(slots=True)
class GatewayMessage:
    """One voice gateway frame (the seed's ``GatewayMessage``).

    ``op`` is an :class:`Opcode` when known, else the raw int; ``d`` the typed
    payload; ``seq`` the server's sequence number when the frame carried one.
    """

    op: Opcode | int
    d: GatewayMessageData
    seq: int | None = None

    @property
    def binary(self) -> bool:
        """True when this message travels in a binary frame."""
        if isinstance(self.d, GatewayMessageDataUnknown):
            return self.d.binary
        return self.d.BINARY


_JSONData = Union[GatewayMessageData, "dict[str, Any]", "list[Any]", str, int, float, bool, None]


def decode_message(frame: str | bytes | bytearray) -> GatewayMessage:
    """Decode a JSON text frame ``{"op", "d", "seq"?}``.

    Unknown opcodes give a :class:`GatewayMessageDataUnknown`.  Raises
    :class:`GatewayDecodeError` for invalid JSON, a non-object, a missing or
    non-integer ``op``, a non-integer ``seq`` or a malformed payload of a known op.
    """
    try:
        obj = json.loads(frame, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        # The frame's text is not shown: it may hold a token or a key.
        size = len(frame) if isinstance(frame, (str, bytes, bytearray)) else 0
        where = f" at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        detail = str(exc) if isinstance(exc, _NotStrictJSON) else f"{exc.__class__.__name__}{where}"
        raise GatewayDecodeError(f"frame of {size} characters is not valid JSON ({detail})") from None
    if not isinstance(obj, dict):
        raise GatewayDecodeError(f"frame must be a JSON object with 'op' and 'd', got {type(obj).__name__}")
    op = obj.get("op")
    if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op <= 255:
        raise GatewayDecodeError(f"frame 'op' must be an integer in 0..255, got {_brief(op)}")
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= 2**63 - 1):
        raise GatewayDecodeError(f"frame 'seq' must be a non-negative integer, got {_brief(seq)}")
    try:
        return _decode_json_payload(op, obj.get("d"), seq)
    except GatewayDecodeError as exc:
        exc.seq = seq
        raise
    except Exception as exc:
        # A payload reader missed a case: still only GatewayDecodeError leaves (the cause is
        # chained for a bug report; the message shows no value).
        error = GatewayDecodeError(f"op {op} payload could not be decoded ({type(exc).__name__})")
        error.seq = seq
        raise error from exc


class _NotStrictJSON(ValueError):
    """JSON that Python's parser accepts but the JSON standard does not (NaN, Infinity, 1e999)."""


def _reject_constant(name: str) -> Any:
    raise _NotStrictJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStrictJSON(f"a number of {len(text)} characters is out of the float range")
    return value


def _decode_json_payload(op: int, d: Any, seq: int | None) -> GatewayMessage:
    cls = _TYPES.get(op)
    if cls is None:
        return GatewayMessage(op, GatewayMessageDataUnknown(op, d), seq)
    if cls.BINARY:
        raise GatewayDecodeError(f"op {op} ({Opcode(op).name}) is binary-only but came in a JSON frame")
    if op in _COMMUNITY_OPS:
        try:
            return GatewayMessage(Opcode(op), cls.from_json(d), seq)
        except GatewayDecodeError:
            return GatewayMessage(op, GatewayMessageDataUnknown(op, d), seq)
    return GatewayMessage(Opcode(op), cls.from_json(d), seq)


def _decode_binary(op: int, payload: bytes, seq: int | None) -> GatewayMessage:
    cls = _TYPES.get(op)
    if cls is None:
        return GatewayMessage(op, GatewayMessageDataUnknown(op, payload), seq)
    if not cls.BINARY:
        raise GatewayDecodeError(f"op {op} ({Opcode(op).name}) is a JSON message but came in a binary frame")
    return GatewayMessage(Opcode(op), cls.from_bytes(payload), seq)


def decode_server_binary(frame: bytes | bytearray | memoryview) -> GatewayMessage:
    """Decode a server binary frame ``[seq: u16 BE][op: u8][payload]``.

    Raises :class:`GatewayDecodeError` for frames shorter than 3 bytes or a
    malformed payload of a known op.
    """
    data = bytes(frame)
    if len(data) < 3:
        raise GatewayDecodeError(f"binary frame is {len(data)} bytes; expected at least 3 (seq u16, op u8)")
    seq = (data[0] << 8) | data[1]
    try:
        return _decode_binary(data[2], data[3:], seq)
    except GatewayDecodeError as exc:
        exc.seq = seq
        raise
    except Exception as exc:
        error = GatewayDecodeError(f"op {data[2]} binary payload could not be decoded ({type(exc).__name__})")
        error.seq = seq
        raise error from exc


def decode_client_binary(frame: bytes | bytearray | memoryview) -> GatewayMessage:
    """Decode a client binary frame ``[op: u8][payload]`` (used by the server side)."""
    data = bytes(frame)
    if len(data) < 1:
        raise GatewayDecodeError("binary frame is empty; expected at least an opcode byte")
    try:
        return _decode_binary(data[0], data[1:], None)
    except GatewayDecodeError:
        raise
    except Exception as exc:
        raise GatewayDecodeError(f"op {data[0]} binary payload could not be decoded ({type(exc).__name__})") from exc


def _payload_for(op: int, data: _JSONData) -> Any:
    if isinstance(data, GatewayMessageData):
        return data.to_json()
    return data


def encode_message(op: int, data: _JSONData, seq: int | None = None) -> str:
    """Encode a JSON text frame; ``data`` is a typed payload or plain JSON data.

    ``seq`` adds the top-level ``"seq"`` key (server side).  Raises ``TypeError``
    for a binary message and ``ValueError`` for values that cannot be encoded.
    """
    if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op <= 255:
        raise ValueError(f"op must be an int in 0..255, got {op!r}")
    if isinstance(data, GatewayMessageData) and data.OPCODE not in (-1, op) and not isinstance(
        data, GatewayMessageDataUnknown
    ):
        raise ValueError(f"{type(data).__name__} belongs to op {data.OPCODE}, not op {op}")
    frame: dict[str, Any] = {"op": int(op), "d": _payload_for(op, data)}
    if seq is not None:
        frame["seq"] = seq
    return json.dumps(frame, separators=(",", ":"), allow_nan=False)


def _binary_payload(op: int, data: GatewayMessageData | bytes | bytearray | memoryview) -> bytes:
    if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op <= 255:
        raise ValueError(f"op must be an int in 0..255, got {op!r}")
    if isinstance(data, GatewayMessageData):
        return data.to_bytes()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"binary payload must be a GatewayMessageData or bytes, got {type(data).__name__}")


def encode_client_binary(op: int, data: GatewayMessageData | bytes | bytearray | memoryview) -> bytes:
    """Encode a client binary frame ``[op][payload]``."""
    payload = _binary_payload(op, data)
    return bytes((op,)) + payload


def encode_server_binary(seq: int, op: int, data: GatewayMessageData | bytes | bytearray | memoryview) -> bytes:
    """Encode a server binary frame ``[seq u16 BE][op][payload]``; ``seq`` is taken modulo 2**16."""
    payload = _binary_payload(op, data)
    return struct.pack(">HB", seq & 0xFFFF, op) + payload
