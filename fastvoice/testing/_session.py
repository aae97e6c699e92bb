"""The test server's two kinds of peers: a websocket connection and the voice session it
identified or resumed (which outlives the connection, for resumes).

Both sit below the server: what they use of it is :class:`SessionHost`, which the server
satisfies (it passes itself down when a client connects).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import struct
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import web

from ..gateway_messages import (
    GatewayMessageData,
    GatewayMessageDataIdentify,
    GatewayMessageDataUnknown,
    SpeakingFlags,
    encode_message,
    encode_server_binary,
)
from ._recording import ReceivedKeepalive, ReceivedPacket, RecordedMessage, Recording

__all__ = ["ServerConnection", "ServerSession", "SessionHost"]


class SessionHost(Protocol):
    """What a connection and a session use of the server that owns them (a ``VoiceServer``)."""

    @property
    def record_messages(self) -> int | None: ...

    @property
    def record_message_bytes(self) -> int | None: ...

    @property
    def record_packets(self) -> int | None: ...

    def _notify(self) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    async def _send_frame(
        self, conn: ServerConnection, op: int, data: Any, seq: int | None, frame: str | bytes
    ) -> None: ...

    def _udp_send(self, addr: tuple[str, int], data: bytes, faults: bool = True) -> None: ...


def _message_size(message: RecordedMessage) -> int:
    return len(message.raw)


class ServerConnection:
    """One websocket connection; ``messages`` records its frames both ways, in order (the
    newest, within the server's ``record_messages`` and ``record_message_bytes``)."""

    def __init__(self, server: SessionHost, number: int, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.server = server
        #: 1, 2, 3... in order of arrival.
        self.number = number
        #: The frames of this connection, both directions (a bounded :class:`Recording`:
        #: ``messages.dropped`` counts the oldest ones it let go).
        self.messages: Recording[RecordedMessage] = Recording(
            server.record_messages, server.record_message_bytes, _message_size
        )
        #: The voice session this connection identified or resumed, if any.
        self.session: ServerSession | None = None
        #: When True, heartbeats on this connection get no ACK (a zombie connection).
        self.withhold_heartbeat_acks = False
        #: The close code this connection ended with (``None`` while open or after a drop).
        self.close_code: int | None = None
        #: True once the connection has ended.
        self.closed = False
        #: ``time.monotonic()`` when the connection ended (``None`` while open).
        self.closed_at: float | None = None
        self._ws = ws
        self._request = request
        self._inbound = 0
        self._close_after: tuple[int, int, str] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._identified = False
        self._server_closed = False

    def __repr__(self) -> str:
        return f"<ServerConnection #{self.number} closed={self.closed} close_code={self.close_code}>"

    def messages_in(self, op: int | None = None) -> list[RecordedMessage]:
        """Frames received from the client (optionally only opcode ``op``)."""
        return [m for m in self.messages if m.direction == "in" and (op is None or m.op == op)]

    def messages_out(self, op: int | None = None) -> list[RecordedMessage]:
        """Frames sent to the client (optionally only opcode ``op``)."""
        return [m for m in self.messages if m.direction == "out" and (op is None or m.op == op)]

    async def send_raw(self, frame: str | bytes) -> None:
        """Send ``frame`` as-is (text or binary): for malformed-input tests."""
        if self._ws.closed:
            return
        self._record("out", -1, None, None, frame)
        try:
            if isinstance(frame, str):
                await self._ws.send_str(frame)
            else:
                await self._ws.send_bytes(bytes(frame))
        except (ConnectionError, RuntimeError):
            pass

    async def close(self, code: int, reason: str = "") -> None:
        """Close this connection now with ``code``."""
        self.close_code = code
        self._server_closed = True
        if not self._ws.closed:
            try:
                await self._ws.close(code=code, message=reason.encode())
            except (ConnectionError, RuntimeError):
                pass

    def close_after(self, code: int, *, messages: int | None = None, seconds: float | None = None,
                    reason: str = "") -> None:
        """Close with ``code`` after ``messages`` more client frames (heartbeats not counted) and/or ``seconds``."""
        if messages is None and seconds is None:
            raise ValueError("close_after needs messages=N and/or seconds=T")
        if messages is not None:
            self._close_after = (self._inbound + messages, code, reason)
        if seconds is not None:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(seconds, lambda: self.server._spawn(self.close(code, reason))))

    def drop(self) -> None:
        """Cut the TCP connection without a close frame (the client sees code 1006)."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def announce_frame(self, length: int, *, binary: bool = False) -> None:
        """Write the header of an unmasked, final frame announcing ``length`` payload bytes, and no payload.

        For hostile-peer tests: a client must refuse a frame larger than its limit from the
        header alone, without waiting for (or buffering) the payload.
        """
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length < 2**63:
            raise ValueError(f"length must be an int in 0..2**63-1, got {length!r}")
        first = 0x82 if binary else 0x81
        if length < 126:
            header = struct.pack(">BB", first, length)
        elif length < 2**16:
            header = struct.pack(">BBH", first, 126, length)
        else:
            header = struct.pack(">BBQ", first, 127, length)
        transport = self._request.transport
        if transport is not None and not transport.is_closing():
            transport.write(header)

    def _record(self, direction: str, op: int, data: Any, seq: int | None, raw: str | bytes) -> None:
        self.messages.record(RecordedMessage(direction, op, data, seq, time.monotonic(), raw))
        self.server._notify()


class ServerSession:
    """One voice session: survives resumes; owns the SSRC, key, mode and the resume buffer."""

    def __init__(self, server: SessionHost, identify: GatewayMessageDataIdentify, channel_id: int, ssrc: int) -> None:
        self.server = server
        self.guild_id = identify.guild_id
        self.user_id = identify.user_id
        self.session_id = identify.session_id
        self._token = identify.token
        self.channel_id = channel_id
        self.ssrc = ssrc
        self.max_dave_protocol_version = identify.max_dave_protocol_version
        #: The mode chosen in Select Protocol (``None`` before it).
        self.mode: str | None = None
        #: The 32-byte key sent in Session Description (``None`` before it).
        self.secret_key: bytes | None = None
        #: The client's UDP address as seen by the server (from IP discovery or audio).
        self.udp_address: tuple[str, int] | None = None
        #: The address and port the client announced in Select Protocol.
        self.announced_address: tuple[str, int] | None = None
        #: The last Speaking flags the client sent (``None`` before any op 5).
        self.speaking: SpeakingFlags | None = None
        #: The audio packets received from this session, in arrival order (the newest
        #: ``record_packets``; ``packets.dropped`` counts older ones let go).
        self.packets: Recording[ReceivedPacket] = Recording(server.record_packets)
        #: Every UDP keepalive received from this session, in arrival order (the newest
        #: ``record_packets``).
        self.keepalives: Recording[ReceivedKeepalive] = Recording(server.record_packets)
        #: Every websocket connection this session used (identify first, then resumes).
        self.connections: list[ServerConnection] = []
        #: The last seq_ack the client reported.
        self.seq_ack = -1
        #: When True, heartbeats of this session get no ACK.
        self.withhold_heartbeat_acks = False
        #: True once the session has ended (closed for good or timed out).
        self.ended = False
        self.audio_before_speaking = 0
        #: The DAVE protocol version told to this session in Session Description.
        self.dave_protocol_version = 0
        #: Audio packets that arrived in plaintext while this session's call was end-to-end encrypted.
        self.dave_plaintext_packets = 0
        #: DAVE frames not forwarded to this session because it does not speak DAVE.
        self.dave_frames_withheld = 0
        self._seq = 0
        self._buffer: collections.deque[tuple[int, str | bytes, int, Any]] = collections.deque(maxlen=4096)
        self._expiry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"<ServerSession user_id={self.user_id} guild_id={self.guild_id} ssrc={self.ssrc} "
            f"mode={self.mode} ended={self.ended}>"
        )

    @property
    def token(self) -> str:
        """The voice token this session identified with (kept out of ``repr``)."""
        return self._token

    @property
    def connection(self) -> ServerConnection | None:
        """The live websocket connection, or ``None`` while the client is away."""
        if self.connections and not self.connections[-1].closed:
            return self.connections[-1]
        return None

    @property
    def seq(self) -> int:
        """The seq of the last session message sent (0 before any)."""
        return self._seq

    @property
    def messages(self) -> list[RecordedMessage]:
        """Every frame of every connection of this session, in order."""
        return [m for c in self.connections for m in c.messages]

    async def send(self, op: int, data: GatewayMessageData | Any) -> int:
        """Send a session message with the next ``seq`` (buffered for resume); return the seq.

        Binary DAVE payloads go in a binary frame ``[seq][op][payload]``.  While the
        client is away the message is only buffered and re-delivered on resume.
        """
        self._seq += 1
        seq = self._seq
        binary = isinstance(data, (bytes, bytearray)) or (
            isinstance(data, GatewayMessageData) and not isinstance(data, GatewayMessageDataUnknown) and data.BINARY
        )
        if binary:
            frame: str | bytes = encode_server_binary(seq, op, data)
            recorded: Any = frame[3:]
        else:
            frame = encode_message(op, data, seq=seq)
            recorded = data.to_json() if isinstance(data, GatewayMessageData) else data
        self._buffer.append((seq, frame, op, recorded))
        conn = self.connection
        if conn is not None:
            await self.server._send_frame(conn, op, recorded, seq, frame)
        return seq

    async def close(self, code: int, reason: str = "") -> None:
        """Close the live connection with ``code`` (the session ends unless the code is resumable)."""
        conn = self.connection
        if conn is not None:
            await conn.close(code, reason)

    def close_after(self, code: int, *, messages: int | None = None, seconds: float | None = None) -> None:
        """Close the live connection with ``code`` after ``messages`` client frames and/or ``seconds``."""
        conn = self.connection
        if conn is None:
            raise RuntimeError("the session has no live connection to close")
        conn.close_after(code, messages=messages, seconds=seconds)

    def drop(self) -> None:
        """Cut the live TCP connection without a close frame (the session stays resumable)."""
        conn = self.connection
        if conn is not None:
            conn.drop()

    async def inject_datagram(self, data: bytes) -> None:
        """Send ``data`` as-is to the client's UDP address (RTCP, garbage, crafted packets)."""
        if self.udp_address is None:
            raise RuntimeError("the client has not sent anything over UDP yet (no IP discovery)")
        self.server._udp_send(self.udp_address, bytes(data))

    def _check_token(self, token: str) -> bool:
        return secrets.compare_digest(self._token.encode(), token.encode())
