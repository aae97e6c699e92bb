"""The test server's voice gateway side: each websocket connection from Hello to close,
the client's opcodes (Identify, Resume, Select Protocol, Speaking, heartbeats, DAVE's), and
the sessions they start, resume and end."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ..close_codes import CloseBehaviour, gateway_close_event_code_by_code
from ..errors import GatewayDecodeError
from ..gateway_messages import (
    GatewayMessage,
    GatewayMessageData,
    GatewayMessageDataClientDisconnect,
    GatewayMessageDataClientsConnect,
    GatewayMessageDataHeartbeat,
    GatewayMessageDataHeartbeatACK,
    GatewayMessageDataHello,
    GatewayMessageDataIdentify,
    GatewayMessageDataReady,
    GatewayMessageDataResume,
    GatewayMessageDataResumed,
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSessionDescription,
    GatewayMessageDataSpeaking,
    GatewayMessageDataUnknown,
    Opcode,
    Protocol,
    SpeakingFlags,
    decode_client_binary,
    decode_message,
    encode_message,
)
from ._session import ServerConnection, ServerSession

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._dave_relay import DaveRelay
    from ._media import MediaForwarder

__all__ = ["GatewaySide"]

_log = logging.getLogger("fastvoice.testing")
# Frames one connection handles before the server lets the others run.
_FAIR_SHARE = 8

_CLIENT_OPS_BEFORE_IDENTIFY = frozenset({Opcode.IDENTIFY, Opcode.RESUME, Opcode.HEARTBEAT})
_DAVE_CLIENT_OPS = frozenset(
    {
        Opcode.DAVE_TRANSITION_READY,
        Opcode.DAVE_MLS_KEY_PACKAGE,
        Opcode.DAVE_MLS_COMMIT_WELCOME,
        Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME,
    }
)
_CLIENT_OPS = frozenset(
    {
        Opcode.IDENTIFY,
        Opcode.SELECT_PROTOCOL,
        Opcode.HEARTBEAT,
        Opcode.SPEAKING,
        Opcode.RESUME,
        Opcode.DAVE_TRANSITION_READY,
        Opcode.DAVE_MLS_KEY_PACKAGE,
        Opcode.DAVE_MLS_COMMIT_WELCOME,
        Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME,
    }
)


class GatewaySide:
    """The websocket half of :class:`VoiceServer` (which it is a base of: the knobs, the session
    registry and the recordings it reads and writes are the server's attributes, declared here).

    It hands itself to each :class:`ServerConnection` and :class:`ServerSession` it creates as
    their :class:`~._session.SessionHost`, so it declares what they need of the server too."""

    # The server's state this side uses (set in VoiceServer.__init__).
    host: str
    heartbeat_interval: float
    modes: list[str]
    require_dave: bool
    strict_auth: bool
    session_timeout: float
    withhold_heartbeat_acks: bool
    connections: list[ServerConnection]
    sessions: list[ServerSession]
    dave: DaveRelay
    _media: MediaForwarder
    _registered: dict[tuple[str, int], tuple[int, int, str]]
    _calls: dict[tuple[int, int], list[ServerSession]]
    _by_ssrc: dict[int, ServerSession]
    _refuse_resumes: int
    _close_next: list[tuple[int, int | None, str]]
    _connection_count: int
    _closing: bool
    _udp_port: int
    # ... and what its connections and sessions use besides.
    record_messages: int | None
    record_message_bytes: int | None
    record_packets: int | None

    if TYPE_CHECKING:
        def _notify(self) -> None: ...

        def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        def _new_ssrc(self) -> int: ...

        def call_members(self, guild_id: int, channel_id: int | None = None) -> list[ServerSession]: ...

        def _udp_send(self, addr: tuple[str, int], data: bytes, faults: bool = True) -> None: ...

    async def _send_frame(self, conn: ServerConnection, op: int, data: Any, seq: int | None, frame: str | bytes) -> None:
        if conn._ws.closed:
            return
        conn._record("out", op, data, seq, frame)
        try:
            if isinstance(frame, str):
                await conn._ws.send_str(frame)
            else:
                await conn._ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            pass

    async def _send_plain(self, conn: ServerConnection, op: int, data: GatewayMessageData) -> None:
        """Send a connection-level message (Hello, Heartbeat ACK, Resumed): no seq, not buffered."""
        await self._send_frame(conn, op, data.to_json(), None, encode_message(op, data))

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        # A short close handshake: a stuck client must not hold the server's shutdown for long.
        ws = web.WebSocketResponse(max_msg_size=1024 * 1024, autoping=True, timeout=2.0)
        await ws.prepare(request)
        self._connection_count += 1
        conn = ServerConnection(self, self._connection_count, ws, request)
        self.connections.append(conn)
        if self._close_next:
            code, after, reason = self._close_next.pop(0)
            if after is None:
                await conn.close(code, reason)
            else:
                conn._close_after = (after, code, reason)
        try:
            if not ws.closed:
                await self._send_plain(conn, Opcode.HELLO, GatewayMessageDataHello(self.heartbeat_interval))
            handled = 0
            async for msg in ws:
                handled += 1
                if handled % _FAIR_SHARE == 0:
                    # Frames already buffered are read without a pause: one client's flood
                    # would hold the loop, and every other client's handshake, until it ends.
                    await asyncio.sleep(0)
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await self._on_binary(conn, msg.data)
                elif msg.type is WSMsgType.ERROR:
                    # aiohttp closed the socket itself (1009 for a frame over max_msg_size);
                    # its close_code then reads 1006, so record the code it sent now.
                    sent = getattr(msg.data, "code", None)
                    if isinstance(sent, int) and conn.close_code is None:
                        conn.close_code = sent
                        conn._server_closed = True
                if conn._close_after is not None:
                    limit, code, reason = conn._close_after
                    if conn._inbound >= limit:
                        conn._close_after = None
                        await conn.close(code, reason)
        except Exception:
            _log.exception("voice server connection #%d failed", conn.number)
            if not ws.closed:
                await conn.close(4000, "internal error")
        finally:
            self._connection_ended(conn, ws)
        return ws

    def _connection_ended(self, conn: ServerConnection, ws: web.WebSocketResponse) -> None:
        conn.closed = True
        conn.closed_at = time.monotonic()
        for timer in conn._timers:
            timer.cancel()
        if conn.close_code is None and ws.close_code is not None and ws.close_code != 1006:
            conn.close_code = ws.close_code
        session = conn.session
        self._notify()
        if session is None or session.ended or (session.connections and session.connections[-1] is not conn):
            return
        code = conn.close_code
        if conn._server_closed:
            # A server close ends the session unless its code is resumable.
            ends = gateway_close_event_code_by_code(code).behaviour is not CloseBehaviour.RESUME
        else:
            # A client closing with 1000 leaves the call; any other close or a drop may resume.
            ends = code == 1000
        if ends or self._closing:
            self._end_session(session)
        else:
            loop = asyncio.get_running_loop()
            session._expiry = loop.call_later(self.session_timeout, self._end_session, session)

    def _end_session(self, session: ServerSession) -> None:
        if session.ended:
            return
        session.ended = True
        if session._expiry is not None:
            session._expiry.cancel()
        key = (session.guild_id, session.channel_id)
        members = self._calls.get(key, [])
        if session in members:
            members.remove(session)
        self._by_ssrc.pop(session.ssrc, None)
        self._media.update(session)
        for other in members:
            self._spawn(other.send(Opcode.CLIENT_DISCONNECT, GatewayMessageDataClientDisconnect(session.user_id)))
        self.dave.left(session)
        self._notify()

    async def _on_text(self, conn: ServerConnection, text: str) -> None:
        try:
            message = decode_message(text)
        except GatewayDecodeError as exc:
            conn._inbound += 1
            conn._record("in", -1, None, None, text)
            _log.info("voice server: undecodable frame from connection #%d: %s", conn.number, exc)
            await conn.close(4002, "failed to decode payload")
            return
        data = message.d
        conn._record("in", int(message.op), data.raw if isinstance(data, GatewayMessageDataUnknown) else data.to_json(),
                     message.seq, text)
        if message.op != Opcode.HEARTBEAT:
            conn._inbound += 1
        await self._on_message(conn, message)

    async def _on_binary(self, conn: ServerConnection, frame: bytes) -> None:
        conn._inbound += 1
        try:
            message = decode_client_binary(frame)
        except GatewayDecodeError:
            conn._record("in", -1, None, None, bytes(frame))
            await conn.close(4002, "failed to decode payload")
            return
        conn._record("in", int(message.op), bytes(frame[1:]), None, bytes(frame))
        await self._on_message(conn, message)

    async def _on_message(self, conn: ServerConnection, message: GatewayMessage) -> None:
        op = message.op
        data = message.d
        if op not in _CLIENT_OPS:
            await conn.close(4001, "unknown opcode")
            return
        if not conn._identified and op not in _CLIENT_OPS_BEFORE_IDENTIFY:
            await conn.close(4003, "not authenticated")
            return
        if op == Opcode.HEARTBEAT:
            assert isinstance(data, GatewayMessageDataHeartbeat)
            session = conn.session
            if session is not None and data.seq_ack is not None:
                session.seq_ack = data.seq_ack
                while session._buffer and session._buffer[0][0] <= data.seq_ack:
                    session._buffer.popleft()
            if (
                self.withhold_heartbeat_acks
                or conn.withhold_heartbeat_acks
                or (session is not None and session.withhold_heartbeat_acks)
            ):
                return
            await self._send_plain(conn, Opcode.HEARTBEAT_ACK, GatewayMessageDataHeartbeatACK(data.t))
        elif op == Opcode.IDENTIFY:
            assert isinstance(data, GatewayMessageDataIdentify)
            await self._on_identify(conn, data)
        elif op == Opcode.RESUME:
            assert isinstance(data, GatewayMessageDataResume)
            await self._on_resume(conn, data)
        elif op == Opcode.SELECT_PROTOCOL:
            assert isinstance(data, GatewayMessageDataSelectProtocol)
            await self._on_select_protocol(conn, data)
        elif op == Opcode.SPEAKING:
            assert isinstance(data, GatewayMessageDataSpeaking)
            await self._on_speaking(conn, data)
        elif op in _DAVE_CLIENT_OPS:
            if conn.session is not None and not conn.session.ended:
                await self.dave.on_message(conn.session, data)

    async def _on_identify(self, conn: ServerConnection, data: GatewayMessageDataIdentify) -> None:
        if conn._identified:
            await conn.close(4005, "already authenticated")
            return
        registered = self._registered.get((data.session_id, data.guild_id))
        if registered is not None:
            user_id, channel_id, token = registered
            if user_id != data.user_id or not secrets.compare_digest(
                token.encode(), data.token.encode()
            ):
                await conn.close(4004, "authentication failed")
                return
        elif self.strict_auth:
            await conn.close(4004, "authentication failed")
            return
        else:
            channel_id = data.guild_id
        if self.require_dave and not data.max_dave_protocol_version:
            await conn.close(4017, "E2EE/DAVE protocol required")
            return
        # A new identify replaces an older session of the same user in the same guild
        # (a move, or the same bot connecting again): the old one is disconnected.
        for old in self.sessions:
            if not old.ended and old.user_id == data.user_id and old.guild_id == data.guild_id:
                old_conn = old.connection
                self._end_session(old)
                if old_conn is not None:
                    await old_conn.close(4014, "disconnected: session replaced")
        conn._identified = True
        session = ServerSession(self, data, channel_id, self._new_ssrc())
        conn.session = session
        session.connections.append(conn)
        self.sessions.append(session)
        self._by_ssrc[session.ssrc] = session
        await session.send(
            Opcode.READY, GatewayMessageDataReady(session.ssrc, self.host, self._udp_port, list(self.modes))
        )
        members = self._calls.setdefault((session.guild_id, channel_id), [])
        others = [m for m in members if not m.ended]
        members.append(session)
        if others:
            await session.send(Opcode.CLIENTS_CONNECT, GatewayMessageDataClientsConnect([m.user_id for m in others]))
            for other in others:
                if other.speaking is not None:
                    await session.send(
                        Opcode.SPEAKING, GatewayMessageDataSpeaking(other.speaking, other.ssrc, user_id=other.user_id)
                    )
        for other in others:
            # Spawned like _end_session's op 13, so a replaced session's "left" reaches the
            # other members before its successor's "connected" (tasks run in creation order).
            self._spawn(other.send(Opcode.CLIENTS_CONNECT, GatewayMessageDataClientsConnect([session.user_id])))

    async def _on_resume(self, conn: ServerConnection, data: GatewayMessageDataResume) -> None:
        if conn._identified:
            await conn.close(4005, "already authenticated")
            return
        session = None
        for candidate in self.sessions:
            if candidate.session_id == data.session_id and candidate.guild_id == data.guild_id:
                session = candidate
        if self._refuse_resumes > 0:
            self._refuse_resumes -= 1
            session = None
        if session is None or session.ended or not session._check_token(data.token):
            await conn.close(4006, "session no longer valid")
            return
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        old = session.connection
        conn._identified = True
        conn.session = session
        session.connections.append(conn)
        if old is not None:
            await old.close(4000, "resumed elsewhere")
        await self._send_plain(conn, Opcode.RESUMED, GatewayMessageDataResumed())
        seq_ack = -1 if data.seq_ack is None else data.seq_ack
        for seq, frame, op, recorded in list(session._buffer):
            if seq > seq_ack:
                await self._send_frame(conn, op, recorded, seq, frame)

    async def _on_select_protocol(self, conn: ServerConnection, data: GatewayMessageDataSelectProtocol) -> None:
        session = conn.session
        assert session is not None
        if data.protocol != Protocol.UDP:
            await conn.close(4012, "unknown protocol")
            return
        if data.data.mode not in self.modes:
            await conn.close(4016, "unknown encryption mode")
            return
        session.mode = data.data.mode
        session.secret_key = os.urandom(32)
        session.announced_address = (data.data.address, data.data.port)
        self._media.new_key(session)
        dave_version = self.dave.session_version(session)
        session.dave_protocol_version = dave_version
        await session.send(
            Opcode.SESSION_DESCRIPTION,
            GatewayMessageDataSessionDescription(session.mode, session.secret_key, dave_version),
        )
        await self.dave.join(session)
        self._media.update(session)

    async def _on_speaking(self, conn: ServerConnection, data: GatewayMessageDataSpeaking) -> None:
        session = conn.session
        assert session is not None
        session.speaking = SpeakingFlags(data.speaking)
        self._media.update(session)
        relay = GatewayMessageDataSpeaking(data.speaking, session.ssrc, user_id=session.user_id)
        for other in self.call_members(session.guild_id, session.channel_id):
            if other is not session:
                await other.send(Opcode.SPEAKING, relay)
