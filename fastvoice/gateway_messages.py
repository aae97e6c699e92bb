"""Voice gateway messages: opcodes, typed payloads, JSON and binary framing (PROTOCOL.md section 2).

Everything here is sans-I/O: text or bytes in, typed objects out, and back.  The payload
classes are written in :mod:`fastvoice._gateway_payloads` (most as a table of their fields)
and exported from here, their one public home.

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

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Union

from ._gateway_fields import brief
from ._gateway_payloads import (
    BINARY_OPCODES,
    COMMUNITY_OPS,
    TYPES,
    GatewayMessageData,
    GatewayMessageDataClientConnect,
    GatewayMessageDataClientDisconnect,
    GatewayMessageDataClientsConnect,
    GatewayMessageDataDaveExecuteTransition,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSCommitWelcome,
    GatewayMessageDataDaveMLSExternalSender,
    GatewayMessageDataDaveMLSInvalidCommitWelcome,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataDaveMLSProposals,
    GatewayMessageDataDaveMLSWelcome,
    GatewayMessageDataDavePrepareEpoch,
    GatewayMessageDataDavePrepareTransition,
    GatewayMessageDataDaveTransitionReady,
    GatewayMessageDataHeartbeat,
    GatewayMessageDataHeartbeatACK,
    GatewayMessageDataHello,
    GatewayMessageDataIdentify,
    GatewayMessageDataReady,
    GatewayMessageDataResume,
    GatewayMessageDataResumed,
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSelectProtocolData,
    GatewayMessageDataSessionDescription,
    GatewayMessageDataSpeaking,
    GatewayMessageDataUnknown,
    Opcode,
    Protocol,
    SpeakingFlags,
    message_data_type,
)
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
        raise GatewayDecodeError(f"frame 'op' must be an integer in 0..255, got {brief(op)}")
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= 2**63 - 1):
        raise GatewayDecodeError(f"frame 'seq' must be a non-negative integer, got {brief(seq)}")
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
    cls = TYPES.get(op)
    if cls is None:
        return GatewayMessage(op, GatewayMessageDataUnknown(op, d), seq)
    if cls.BINARY:
        raise GatewayDecodeError(f"op {op} ({Opcode(op).name}) is binary-only but came in a JSON frame")
    if op in COMMUNITY_OPS:
        try:
            return GatewayMessage(Opcode(op), cls.from_json(d), seq)
        except GatewayDecodeError:
            return GatewayMessage(op, GatewayMessageDataUnknown(op, d), seq)
    return GatewayMessage(Opcode(op), cls.from_json(d), seq)


def _decode_binary(op: int, payload: bytes, seq: int | None) -> GatewayMessage:
    cls = TYPES.get(op)
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
