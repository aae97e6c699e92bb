"""The voice gateway's typed payloads and opcodes (PROTOCOL.md section 2).

Internal to :mod:`fastvoice.gateway_messages`, which exports every public name here and
frames them.  Most JSON payloads are a dataclass plus a table of their fields (``FIELDS``,
see :mod:`fastvoice._gateway_fields`); binary DAVE payloads are a blob after an optional
transition id.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ._gateway_fields import (
    EPOCH,
    Field,
    I64,
    JSONFields,
    MAX_U32,
    PORT,
    SEQ_ACK,
    U16,
    U32,
    U8,
    fields_from_json,
    fields_to_json,
    read_int,
    read_interval,
    read_key,
    read_modes,
    read_str,
    read_transition_payload,
    read_user_ids,
    snowflake,
    write_int,
    write_key,
    write_modes,
    write_text,
    write_transition_id,
    write_user_ids,
)
from .errors import GatewayDecodeError

_T = TypeVar("_T")


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


def _read_speaking(cls: type, name: str, value: Any) -> SpeakingFlags:
    return SpeakingFlags(read_int(cls, name, value, 0, MAX_U32))


def _read_protocol(cls: type, name: str, value: Any) -> Protocol | str:
    protocol = read_str(cls, name, value)
    try:
        return Protocol(protocol)
    except ValueError:
        return protocol


class GatewayMessageData:
    """Base class of every typed voice gateway payload (the seed's ``GatewayMessageData``).

    Subclasses set ``OPCODE``; JSON ones implement :meth:`to_json` and
    :meth:`from_json` (most from a table of their fields), binary ones
    (``BINARY = True``) :meth:`to_bytes` and :meth:`from_bytes`.
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
class GatewayMessageDataIdentify(JSONFields, GatewayMessageData):
    """Op 0 Identify (client): starts a new voice session.

    JSON: ``{server_id, user_id, session_id, token, max_dave_protocol_version?}`` (snowflakes as
    strings).  ``max_dave_protocol_version`` is the highest DAVE version the client speaks
    (1 = DAVE v1; ``None`` leaves the field out, which Discord treats as 0).
    ``repr`` hides the session id and token.
    """

    OPCODE: ClassVar[int] = Opcode.IDENTIFY
    FIELDS: ClassVar[tuple[Field, ...]] = (
        snowflake("guild_id", key="server_id"),
        snowflake("user_id"),
        Field("session_id", read_str),
        Field("token", read_str),
        Field("max_dave_protocol_version", U8, missing=None, omit_none=True),
    )
    guild_id: int
    user_id: int
    session_id: str = field(repr=False)
    token: str = field(repr=False)
    max_dave_protocol_version: int | None = None


@dataclass(slots=True)
class GatewayMessageDataSelectProtocolData(JSONFields):
    """The ``data`` object of op 1: the client's discovered address, port and chosen mode."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("address", read_str),
        Field("port", PORT),
        Field("mode", read_str, write_text),
    )
    address: str
    port: int
    mode: str


def _read_select_data(cls: type, name: str, value: Any) -> GatewayMessageDataSelectProtocolData:
    return GatewayMessageDataSelectProtocolData.from_json(value)


def _write_select_data(cls: type, name: str, value: Any) -> Any:
    return value.to_json()


@dataclass(slots=True)
class GatewayMessageDataSelectProtocol(JSONFields, GatewayMessageData):
    """Op 1 Select Protocol (client): ``{protocol: "udp", data: {address, port, mode}}``.

    ``protocol`` is a :class:`Protocol` when known, else the string received.
    """

    OPCODE: ClassVar[int] = Opcode.SELECT_PROTOCOL
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("protocol", _read_protocol, write_text),
        Field("data", _read_select_data, _write_select_data),
    )
    protocol: Protocol | str
    data: GatewayMessageDataSelectProtocolData


@dataclass(slots=True)
class GatewayMessageDataReady(JSONFields, GatewayMessageData):
    """Op 2 Ready (server): ``{ssrc, ip, port, modes}``, the client's SSRC, the UDP address to
    use and the offered modes.

    A ``heartbeat_interval`` inside Ready is ignored (the interval comes from Hello).
    """

    OPCODE: ClassVar[int] = Opcode.READY
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("ssrc", U32),
        Field("ip", read_str),
        Field("port", PORT),
        Field("modes", read_modes, write_modes, first=True),
    )
    ssrc: int
    ip: str
    port: int
    modes: list[str]


@dataclass(slots=True)
class GatewayMessageDataHeartbeat(JSONFields, GatewayMessageData):
    """Op 3 Heartbeat (client).

    v8: ``{t: nonce, seq_ack: last seq or -1}``.  With ``seq_ack=None`` it encodes
    as the bare integer nonce of v4 (seed: ``GatewayMessageDataHeartbeat int64``).
    """

    OPCODE: ClassVar[int] = Opcode.HEARTBEAT
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("t", I64),
        Field("seq_ack", SEQ_ACK, missing=None, omit_none=True),
    )
    t: int
    seq_ack: int | None = None

    def to_json(self) -> Any:
        """Return ``{t, seq_ack}`` (or the bare nonce when ``seq_ack`` is ``None``)."""
        if self.seq_ack is None:
            return self.t
        return fields_to_json(self)

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataHeartbeat:
        """Decode either heartbeat form."""
        if isinstance(d, int) and not isinstance(d, bool):
            return cls(t=d)
        return fields_from_json(cls, d)


@dataclass(slots=True)
class GatewayMessageDataSessionDescription(JSONFields, GatewayMessageData):
    """Op 4 Session Description (server): the chosen mode, the 32-byte key (a list of 32 ints
    on the wire) and the DAVE version (0 when absent)."""

    OPCODE: ClassVar[int] = Opcode.SESSION_DESCRIPTION
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("mode", read_str, write_text),
        Field("secret_key", read_key, write_key, first=True),
        Field("dave_protocol_version", U8, missing=0),
    )
    mode: str
    secret_key: bytes = field(repr=False)
    dave_protocol_version: int = 0


@dataclass(slots=True)
class GatewayMessageDataSpeaking(JSONFields, GatewayMessageData):
    """Op 5 Speaking.

    Client form: ``{speaking, delay, ssrc}``.  Server form: ``{speaking, ssrc,
    user_id}``, the only documented SSRC to user map.  ``delay`` and ``user_id``
    are left out of the JSON when ``None``.
    """

    OPCODE: ClassVar[int] = Opcode.SPEAKING
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("speaking", _read_speaking, write_int),
        Field("delay", U32, missing=None, omit_none=True),
        Field("ssrc", U32),
        snowflake("user_id", missing=None, omit_none=True),
    )
    speaking: SpeakingFlags
    ssrc: int
    delay: int | None = None
    user_id: int | None = None


@dataclass(slots=True)
class GatewayMessageDataHeartbeatACK(JSONFields, GatewayMessageData):
    """Op 6 Heartbeat ACK (server): v8 ``{t: echoed nonce}``; the v4 bare integer is accepted too."""

    OPCODE: ClassVar[int] = Opcode.HEARTBEAT_ACK
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("t", I64),)
    t: int

    @classmethod
    def from_json(cls, d: Any) -> GatewayMessageDataHeartbeatACK:
        """Decode either ACK form."""
        if isinstance(d, int) and not isinstance(d, bool):
            return cls(t=d)
        return fields_from_json(cls, d)


@dataclass(slots=True)
class GatewayMessageDataResume(JSONFields, GatewayMessageData):
    """Op 7 Resume (client): ``{server_id, session_id, token, seq_ack}`` resumes a session;
    ``seq_ack`` is the last seq received (or -1).

    ``seq_ack=None`` leaves the field out (pre-v8).  ``repr`` hides the session id and token.
    """

    OPCODE: ClassVar[int] = Opcode.RESUME
    FIELDS: ClassVar[tuple[Field, ...]] = (
        snowflake("guild_id", key="server_id"),
        Field("session_id", read_str),
        Field("token", read_str),
        Field("seq_ack", SEQ_ACK, missing=None, omit_none=True),
    )
    guild_id: int
    session_id: str = field(repr=False)
    token: str = field(repr=False)
    seq_ack: int | None = -1


@dataclass(slots=True)
class GatewayMessageDataHello(JSONFields, GatewayMessageData):
    """Op 8 Hello (server): ``{heartbeat_interval}`` in milliseconds (may be fractional; a
    positive finite number)."""

    OPCODE: ClassVar[int] = Opcode.HELLO
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("heartbeat_interval", read_interval),)
    heartbeat_interval: float


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
class GatewayMessageDataClientsConnect(JSONFields, GatewayMessageData):
    """Op 11 Clients Connect (server): ``{user_ids: [...]}`` (string snowflakes), users now in the call."""

    OPCODE: ClassVar[int] = Opcode.CLIENTS_CONNECT
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("user_ids", read_user_ids, write_user_ids),)
    user_ids: list[int]


@dataclass(slots=True)
class GatewayMessageDataClientConnect(JSONFields, GatewayMessageData):
    """Op 12 Client Connect (the seed's single-user form; community-documented, not in Discord's
    docs): ``{user_id, audio_codec, video_codec}``, codecs empty when absent."""

    OPCODE: ClassVar[int] = Opcode.CLIENT_CONNECT
    FIELDS: ClassVar[tuple[Field, ...]] = (
        snowflake("user_id"),
        Field("audio_codec", read_str, missing=""),
        Field("video_codec", read_str, missing=""),
    )
    user_id: int
    audio_codec: str = ""
    video_codec: str = ""


@dataclass(slots=True)
class GatewayMessageDataClientDisconnect(JSONFields, GatewayMessageData):
    """Op 13 Client Disconnect (server): ``{user_id}``, a user left the call."""

    OPCODE: ClassVar[int] = Opcode.CLIENT_DISCONNECT
    FIELDS: ClassVar[tuple[Field, ...]] = (snowflake("user_id"),)
    user_id: int


_TRANSITION_ID = Field("transition_id", U16)


@dataclass(slots=True)
class GatewayMessageDataDavePrepareTransition(JSONFields, GatewayMessageData):
    """Op 21 DAVE Prepare Transition (server): ``{protocol_version, transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_PREPARE_TRANSITION
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("protocol_version", U8), _TRANSITION_ID)
    protocol_version: int
    transition_id: int


@dataclass(slots=True)
class _TransitionIdOnly(JSONFields, GatewayMessageData):
    """The ``{transition_id}`` messages (ops 22, 23 and 31) share their field and its codec."""

    FIELDS: ClassVar[tuple[Field, ...]] = (_TRANSITION_ID,)
    transition_id: int


@dataclass(slots=True)
class GatewayMessageDataDaveExecuteTransition(_TransitionIdOnly):
    """Op 22 DAVE Execute Transition (server): ``{transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_EXECUTE_TRANSITION


@dataclass(slots=True)
class GatewayMessageDataDaveTransitionReady(_TransitionIdOnly):
    """Op 23 DAVE Transition Ready (client): ``{transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_TRANSITION_READY


@dataclass(slots=True)
class GatewayMessageDataDavePrepareEpoch(JSONFields, GatewayMessageData):
    """Op 24 DAVE Prepare Epoch (server): ``{protocol_version, epoch}`` (epoch 1 = a new group)."""

    OPCODE: ClassVar[int] = Opcode.DAVE_PREPARE_EPOCH
    FIELDS: ClassVar[tuple[Field, ...]] = (Field("protocol_version", U8), Field("epoch", EPOCH))
    protocol_version: int
    epoch: int


@dataclass(slots=True)
class GatewayMessageDataDaveMLSInvalidCommitWelcome(_TransitionIdOnly):
    """Op 31 DAVE MLS Invalid Commit Welcome (client): ``{transition_id}``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME


# --- binary DAVE messages ---------------------------------------------------


class _Blob(GatewayMessageData):
    """Binary messages whose payload is one blob (field ``_BLOB``), after a u16 BE
    ``transition_id`` when ``_WITH_TRANSITION``."""

    __slots__ = ()
    BINARY: ClassVar[bool] = True
    _BLOB: ClassVar[str] = ""
    _WITH_TRANSITION: ClassVar[bool] = False

    def to_bytes(self) -> bytes:
        """Return the payload."""
        blob = bytes(getattr(self, self._BLOB))
        if self._WITH_TRANSITION:
            return write_transition_id(type(self), getattr(self, "transition_id")) + blob
        return blob

    @classmethod
    def from_bytes(cls: type[_T], payload: bytes) -> _T:
        """Decode the payload."""
        blob_name: str = getattr(cls, "_BLOB")
        make: Callable[..., _T] = cls
        if getattr(cls, "_WITH_TRANSITION"):
            transition_id, blob = read_transition_payload(cls, payload)
            return make(transition_id=transition_id, **{blob_name: blob})
        return make(**{blob_name: bytes(payload)})


@dataclass(slots=True)
class GatewayMessageDataDaveMLSExternalSender(_Blob):
    """Op 25 DAVE MLS External Sender (server, binary): the serialized ExternalSender."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_EXTERNAL_SENDER
    _BLOB: ClassVar[str] = "external_sender"
    external_sender: bytes


@dataclass(slots=True)
class GatewayMessageDataDaveMLSKeyPackage(_Blob):
    """Op 26 DAVE MLS Key Package (client, binary): a serialized MLS KeyPackage."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_KEY_PACKAGE
    _BLOB: ClassVar[str] = "key_package"
    key_package: bytes


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
class GatewayMessageDataDaveMLSCommitWelcome(_Blob):
    """Op 28 DAVE MLS Commit Welcome (client, binary): ``commit || welcome?`` as one blob."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_COMMIT_WELCOME
    _BLOB: ClassVar[str] = "commit_welcome"
    commit_welcome: bytes


@dataclass(slots=True)
class GatewayMessageDataDaveMLSAnnounceCommitTransition(_Blob):
    """Op 29 DAVE MLS Announce Commit Transition (server, binary): ``[u16 BE transition_id][commit]``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION
    _BLOB: ClassVar[str] = "commit"
    _WITH_TRANSITION: ClassVar[bool] = True
    transition_id: int
    commit: bytes


@dataclass(slots=True)
class GatewayMessageDataDaveMLSWelcome(_Blob):
    """Op 30 DAVE MLS Welcome (server, binary): ``[u16 BE transition_id][welcome]``."""

    OPCODE: ClassVar[int] = Opcode.DAVE_MLS_WELCOME
    _BLOB: ClassVar[str] = "welcome"
    _WITH_TRANSITION: ClassVar[bool] = True
    transition_id: int
    welcome: bytes


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


TYPES: dict[int, type[GatewayMessageData]] = {
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
COMMUNITY_OPS = frozenset({Opcode.CLIENT_CONNECT})


def message_data_type(op: int) -> type[GatewayMessageData] | None:
    """Return the payload class for opcode ``op``, or ``None`` when it is unknown."""
    return TYPES.get(op)
