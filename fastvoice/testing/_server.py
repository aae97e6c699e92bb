"""An in-process Discord voice server for tests: gateway v8 over websockets plus the UDP media side."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ..close_codes import CloseBehaviour, gateway_close_event_code_by_code
from ..constants import SILENCE_AUDIO_FRAME
from ..encryption import AVAILABLE_MODES, EncryptionMode
from ..errors import DecryptionFailedError, GatewayDecodeError
from ..ipdiscovery import build_ip_discovery_response as build_ip_discovery_reply
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
    encode_server_binary,
)

from ._dave_relay import DaveRelay
from ._dispatches import voice_dispatches
from ._keepalive import KeepaliveLapse, KeepaliveWatch, ReceivedKeepalive
from ._media import MediaEngine
from ._mls import is_dave_frame
from ._recording import Recording, ReceivedPacket, RecordedMessage, RejectedDatagram, check_limit
from ._sockbuf import enlarge_receive_buffer, receive_drops
from ._stamps import kernel_receive_clock

if TYPE_CHECKING:
    from ._dave import DaveCallGroup
    from ._main_gateway import MainGatewayStandIn

__all__ = [
    "VoiceServer",
    "ServerSession",
    "ServerConnection",
    "RecordedMessage",
    "ReceivedPacket",
    "RejectedDatagram",
    "build_ip_discovery_reply",
    "build_rtcp_receiver_report",
]

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


def build_rtcp_receiver_report(ssrc: int) -> bytes:
    """Return a minimal RTCP receiver report (packet type 201, no report blocks) from ``ssrc``."""
    return struct.pack(">BBHI", 0x80, 201, 1, ssrc & 0xFFFFFFFF)


def _message_size(message: RecordedMessage) -> int:
    return len(message.raw)


class ServerConnection:
    """One websocket connection; ``messages`` records its frames both ways, in order (the
    newest, within the server's ``record_messages`` and ``record_message_bytes``)."""

    def __init__(self, server: VoiceServer, number: int, ws: web.WebSocketResponse, request: web.Request) -> None:
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

    def __init__(self, server: VoiceServer, identify: GatewayMessageDataIdentify, channel_id: int, ssrc: int) -> None:
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
        self._depacketizer: Any = None
        self._packetizers: dict[int, Any] = {}

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


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self._stamp: Callable[[], float | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stamp = kernel_receive_clock(transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        stamp = self._stamp() if self.server.kernel_stamps and self._stamp is not None else None
        try:
            if stamp is None:
                self.server._on_udp(data, addr)
            else:
                # The kernel's receive time, moved from the wall clock to the monotonic one.
                self.server._on_datagram(data, addr, time.monotonic() - (time.time() - stamp))
        except Exception:  # the server must survive whatever arrives
            _log.exception("voice server failed on a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        _log.debug("voice server UDP error: %s", exc)


class VoiceServer:
    """A local Discord voice server: gateway v8 over websockets and UDP media, on 127.0.0.1.

    Use it as an async context manager::

        async with VoiceServer() as server:
            state = server.make_state(guild_id=1, user_id=2)
            gateway = Gateway(config=GatewayConfig(ssl=server.ssl_context))
            await gateway.open(state)

    Clients that identify for the same guild and channel share one call: audio
    from one member is decrypted and re-encrypted for every other member with that
    member's key and mode, as Discord's SFU does.

    Knobs (plain attributes, changeable at any time):

    - ``heartbeat_interval``: ms sent in Hello.
    - ``modes``: encryption modes offered in Ready (default: the two AEAD modes).
    - ``require_dave``: close 4017 on an Identify without ``max_dave_protocol_version >= 1``.
    - ``dave_protocol_version``: sent in Session Description (0: no DAVE). With 1 the server
      runs each call's MLS group as its external sender (:meth:`dave_group`), checks that
      audio really is DAVE ciphertext (``ServerSession.dave_plaintext_packets``) and can take
      a call down to protocol 0 and back (:meth:`dave_downgrade`, :meth:`dave_upgrade`). A
      member without DAVE takes its call to protocol 0 until it leaves (unless
      ``require_dave``), and gets no DAVE frame. :attr:`dave` has DAVE's own knobs
      (transition timeout, late, corrupted or lost DAVE messages, the announced version).
    - ``withhold_heartbeat_acks``: ACK no heartbeat (also per session and per connection).
    - ``strict_auth``: only accept sessions registered with :meth:`voice_updates` (else 4004).
    - ``session_timeout``: seconds a dropped session stays resumable.
    - ``udp_loss``, ``udp_duplicate``, ``udp_reorder`` (probabilities) and ``udp_delay``
      (seconds): applied to datagrams the server sends to clients. ``udp_reorder_window``
      (default 1): a datagram held back by ``udp_reorder`` goes out after 1 to that many
      later ones. ``udp_jitter`` (seconds): each datagram is delayed by a further random
      0 to ``udp_jitter``. :meth:`stall_udp` holds every datagram to clients for a while, then
      releases them at once (a network stall). Datagrams dropped by ``udp_loss`` are
      recorded in :attr:`udp_lost` (the last 65,536).
    - ``expect_keepalive`` (seconds, default ``None``): UDP keepalives are always accepted
      silently and recorded (``ServerSession.keepalives``); with this set, every session
      that sends nothing over UDP for longer is reported in :attr:`keepalive_lapses`
      (also see :meth:`silent_sessions`).
    - :meth:`refuse_next_resume`, :meth:`close_next_connection`; per connection or
      session: ``close``, ``close_after``, ``drop``, ``inject_datagram``, ``send_raw``;
      per connection: ``announce_frame`` (a hostile frame header) and ``closed_at``.

    Recordings: ``connections`` (their frames both ways), ``sessions``,
    :meth:`packets` (per SSRC, arrival time and decrypted payload), ``rejected_datagrams``
    and ``rtcp_received``. Each is a bounded :class:`Recording` (a ``list`` whose ``dropped``
    counts what it let go): ``record_messages`` frames and ``record_message_bytes`` bytes of
    them per connection (defaults 10,000 and 4 MiB), ``record_packets`` per SSRC and per
    datagram list (default 10,000); ``None`` lifts a limit. A limit changed on a running
    server applies to the recordings it starts afterwards. ``udp_receive_drops`` counts
    datagrams the kernel dropped at the server's socket (its receive buffer,
    ``udp_receive_buffer``, was full). With ``kernel_stamps`` on (Linux), a packet's arrival is the
    time the kernel received it rather than the time the server's loop read it, so pacing
    measured at the server excludes the server's own delays (it shares the loop under test).

    Media path: audio from a known session in an AEAD ``_rtpsize`` mode is forwarded by a
    media engine (compiled, with a pure-Python twin) that reads and sends the UDP socket in
    batches; everything else, and everything while a UDP fault knob is set or with
    ``kernel_stamps``, takes the Python path. ``media_recording`` chooses what it keeps of the
    audio: ``"full"`` (default: every packet in :meth:`packets` and ``ServerSession.packets``),
    ``"counts"`` (only :meth:`packets_received`) or ``"off"`` (nothing: the fastest).

    The main gateway's part: :meth:`voice_updates` returns the VOICE_STATE_UPDATE
    and VOICE_SERVER_UPDATE payloads for a guild/user/channel, and
    :meth:`main_gateway` a :class:`MainGatewayStandIn` that answers op 4 with them.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        tls: bool = False,
        heartbeat_interval: float = 13750.0,
        modes: Iterable[str | EncryptionMode] | None = None,
        require_dave: bool = False,
        dave_protocol_version: int = 0,
        strict_auth: bool = False,
        session_timeout: float = 30.0,
        seed: int | None = None,
        kernel_stamps: bool = False,
        expect_keepalive: float | None = None,
        record_messages: int | None = 10_000,
        record_message_bytes: int | None = 4 * 1024 * 1024,
        record_packets: int | None = 10_000,
        media_recording: str = "full",
    ) -> None:
        self._keepalive = KeepaliveWatch(expect_keepalive)
        self.host = host
        self.kernel_stamps = kernel_stamps
        self.record_messages = check_limit("record_messages", record_messages)
        self.record_message_bytes = check_limit("record_message_bytes", record_message_bytes)
        self.record_packets = check_limit("record_packets", record_packets)
        self.tls = tls
        self.heartbeat_interval = heartbeat_interval
        self.modes: list[str] = [str(m) for m in (modes if modes is not None else AVAILABLE_MODES)]
        self.require_dave = require_dave
        self.dave_protocol_version = dave_protocol_version
        self.strict_auth = strict_auth
        self.session_timeout = session_timeout
        if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, (int, float)) or not (
            heartbeat_interval > 0
        ):
            raise ValueError(f"heartbeat_interval must be a positive number of milliseconds, got {heartbeat_interval!r}")
        if not self.modes:
            raise ValueError("modes must offer at least one encryption mode")
        self.withhold_heartbeat_acks = False
        self._udp_loss = 0.0
        self._udp_duplicate = 0.0
        self._udp_reorder = 0.0
        self._udp_delay = 0.0
        self._udp_jitter = 0.0
        self._udp_reorder_window = 1
        #: ``(address, SSRC, sequence number)`` of the datagrams ``udp_loss`` dropped (the last 65,536).
        self.udp_lost: collections.deque[tuple[tuple[str, int], int, int]] = collections.deque(maxlen=65536)
        self._held_for = 0
        self._stall_until = 0.0
        self._stalled: list[tuple[tuple[str, int], bytes]] = []
        self._stall_timer: asyncio.TimerHandle | None = None
        #: Every websocket connection, in order of arrival.
        self.connections: list[ServerConnection] = []
        #: Every voice session, in order of creation.
        self.sessions: list[ServerSession] = []
        #: Datagrams the UDP side could not use (the newest ``record_packets``).
        self.rejected_datagrams: Recording[RejectedDatagram] = Recording(self.record_packets)
        #: RTCP datagrams received, as ``(address, bytes)`` (the newest ``record_packets``).
        self.rtcp_received: Recording[tuple[tuple[str, int], bytes]] = Recording(self.record_packets)
        self._random = random.Random(seed)
        # (session id, guild id) -> (user id, channel id, token)
        self._registered: dict[tuple[str, int], tuple[int, int, str]] = {}
        self._calls: dict[tuple[int, int], list[ServerSession]] = {}
        self._by_ssrc: dict[int, ServerSession] = {}
        self._packets: dict[int, Recording[ReceivedPacket]] = {}
        self._refuse_resumes = 0
        self._close_next: list[tuple[int, int | None, str]] = []
        self._runner: web.AppRunner | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._cert: Any = None
        self._ws_port = 0
        self._udp_port = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._held: tuple[tuple[str, int], bytes] | None = None
        self._changed: asyncio.Event | None = None
        #: The DAVE side: call groups, delivery and DAVE's fault knobs (see :class:`DaveRelay`).
        self.dave = DaveRelay(self)
        self._connection_count = 0
        self._closing = False
        #: Receive buffer of the UDP socket as the kernel reports it (``SO_RCVBUF``), once started.
        self.udp_receive_buffer = 0
        # -- media engine (the UDP audio fast path; see _media.py) --
        self._media = MediaEngine(self.dave.groups, media_recording)
        self._audio_counts: collections.Counter[int] = collections.Counter()  # Python-path audio per SSRC

    # -- UDP fault rates ---------------------------------------------------------------

    @staticmethod
    def _rate(name: str, value: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in 0..1, got {value!r}")
        return float(value)

    @property
    def udp_loss(self) -> float:
        """Probability that a datagram sent to a client is dropped."""
        return self._udp_loss

    @udp_loss.setter
    def udp_loss(self, value: float) -> None:
        self._udp_loss = self._rate("udp_loss", value)

    @property
    def udp_duplicate(self) -> float:
        """Probability that a datagram sent to a client is sent twice."""
        return self._udp_duplicate

    @udp_duplicate.setter
    def udp_duplicate(self, value: float) -> None:
        self._udp_duplicate = self._rate("udp_duplicate", value)

    @property
    def udp_reorder(self) -> float:
        """Probability that a datagram is held back and sent after the next one (lost if none follows)."""
        return self._udp_reorder

    @udp_reorder.setter
    def udp_reorder(self, value: float) -> None:
        self._udp_reorder = self._rate("udp_reorder", value)

    @property
    def udp_reorder_window(self) -> int:
        """A datagram held back by ``udp_reorder`` is sent after 1 to this many later datagrams."""
        return self._udp_reorder_window

    @udp_reorder_window.setter
    def udp_reorder_window(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"udp_reorder_window must be an int >= 1, got {value!r}")
        self._udp_reorder_window = value

    def stall_udp(self, seconds: float) -> None:
        """Hold every datagram sent to clients for ``seconds``, then send them all at once, in order.

        Models a network stall (a jitter spike): nothing is lost, everything arrives late
        and in a burst. A stall started during another one extends it.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"stall seconds must be a positive number, got {seconds!r}")
        loop = asyncio.get_running_loop()
        self._stall_until = max(self._stall_until, loop.time() + seconds)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._stall_timer = loop.call_at(self._stall_until, self._end_stall)

    def _end_stall(self) -> None:
        self._stall_timer = None
        self._stall_until = 0.0
        stalled, self._stalled = self._stalled, []
        for addr, data in stalled:
            self._udp_send_now(addr, data)

    @property
    def udp_delay(self) -> float:
        """Seconds every datagram sent to a client is delayed by."""
        return self._udp_delay

    @udp_delay.setter
    def udp_delay(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"udp_delay must be a number of seconds >= 0, got {value!r}")
        self._udp_delay = float(value)

    @property
    def udp_jitter(self) -> float:
        """Each datagram sent to a client is delayed by a further random 0 to this many seconds."""
        return self._udp_jitter

    @udp_jitter.setter
    def udp_jitter(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"udp_jitter must be a number of seconds >= 0, got {value!r}")
        self._udp_jitter = float(value)

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> VoiceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind the websocket and UDP endpoints on random ports and start serving."""
        if self._runner is not None:
            raise RuntimeError("VoiceServer is already started")
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._closing = False
        ssl_context = None
        if self.tls:
            from ._tls import SelfSignedCertificate

            self._cert = SelfSignedCertificate()
            ssl_context = self._cert.server_context()
        app = web.Application()
        app.router.add_get("/", self._handle_ws)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
        except OSError:
            sock.close()
            raise
        self._ws_port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=ssl_context)
        await site.start()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPProtocol(self), local_addr=(self.host, 0), family=socket.AF_INET
        )
        self._udp = transport
        self._udp_port = transport.get_extra_info("sockname")[1]
        # A tick's burst from many calls waits here while the shared loop is busy elsewhere.
        self.udp_receive_buffer = enlarge_receive_buffer(transport.get_extra_info("socket").fileno())
        _log.debug("voice server listening on %s (UDP %d)", self.url, self._udp_port)

    async def close(self) -> None:
        """Close every connection (code 1001), stop both endpoints and remove temporary files."""
        self._closing = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._stalled.clear()
        self.dave.close()
        for conn in self.connections:
            for timer in conn._timers:
                timer.cancel()
        await asyncio.gather(
            *(conn.close(1001, "server shutting down") for conn in self.connections if not conn.closed),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in self.sessions:
            if session._expiry is not None:
                session._expiry.cancel()
                session._expiry = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._media.close()
        if self._cert is not None:
            self._cert.cleanup()
            self._cert = None

    # -- addresses -------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port``, the ``endpoint`` a VOICE_SERVER_UPDATE carries (no scheme)."""
        return f"{self.host}:{self._ws_port}"

    @property
    def url(self) -> str:
        """The websocket URL with scheme (``ws://`` or ``wss://``)."""
        return f"{'wss' if self.tls else 'ws'}://{self.endpoint}"

    @property
    def udp_receive_drops(self) -> int | None:
        """Datagrams the kernel dropped at the server's UDP socket since it opened (its receive
        buffer was full: the server could not keep up), or ``None`` where unknown (not Linux)."""
        return None if self._udp is None else receive_drops(self._udp.get_extra_info("socket").fileno())

    @property
    def udp_port(self) -> int:
        """The UDP port announced in Ready."""
        return self._udp_port

    @property
    def ca_file(self) -> str | None:
        """With ``tls=True``: path of the PEM certificate clients must trust."""
        return self._cert.ca_file if self._cert is not None else None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """With ``tls=True``: a client ``SSLContext`` that trusts this server; ``None`` otherwise."""
        return self._cert.client_context() if self._cert is not None else None

    # -- what the main gateway would deliver ---------------------------------------

    def voice_updates(
        self,
        guild_id: int,
        user_id: int,
        channel_id: int | None = None,
        *,
        session_id: str | None = None,
        token: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Register a session and return the VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE payloads.

        These are the ``d`` objects Discord's main gateway dispatches after an op 4
        Voice State Update; a Manager fed with them connects to this server.  The
        channel defaults to the guild id (one call per guild).  Passing the same
        ``session_id`` and ``token`` again re-registers them (as Discord keeps the
        main gateway's session id).

        The ``endpoint`` is ``host:port`` without a scheme, as Discord sends it, when
        the server speaks ``wss://``; with ``tls=False`` it is ``ws://host:port``, since
        a bare endpoint means ``wss://`` to every client.
        """
        channel = guild_id if channel_id is None else channel_id
        session_id = session_id or secrets.token_hex(16)
        token = token or secrets.token_hex(8)
        self._registered[(session_id, guild_id)] = (user_id, channel, token)
        return voice_dispatches(self.endpoint if self.tls else self.url, guild_id, user_id, channel, session_id, token)

    def main_gateway(self, user_id: int, *, server_update_first: bool = False) -> MainGatewayStandIn:
        """Return a :class:`MainGatewayStandIn` for ``user_id``: the main gateway's part for a Manager.

        ``stand_in.update_voice_state`` is what the Manager calls to send op 4;
        ``stand_in.attach(manager)`` routes the two voice dispatches back to it.
        """
        from ._main_gateway import MainGatewayStandIn

        return MainGatewayStandIn(self, user_id, server_update_first=server_update_first)

    async def close_voice_sessions(
        self, user_id: int, guild_id: int, *, keep_channel: int | None = None, code: int = 4014,
        reason: str = "disconnected",
    ) -> int:
        """Close the live sessions of ``user_id`` in ``guild_id`` (except one in ``keep_channel``)
        with ``code``, as Discord does after a move or a leave; returns how many were closed."""
        closed = 0
        for session in list(self.sessions):
            if (session.user_id == user_id and session.guild_id == guild_id
                    and session.channel_id != keep_channel and not session.ended):
                await session.close(code, reason)
                closed += 1
        return closed

    def make_state(self, guild_id: int, user_id: int, channel_id: int | None = None) -> Any:
        """Register a session and return a :class:`fastvoice.State` pointing at this server.

        The endpoint carries the scheme (``ws://`` or ``wss://``) so a
        :class:`fastvoice.Gateway` connects without further setup (with ``tls=True``
        pass :attr:`ssl_context` in its config).
        """
        from ..gateway import State

        state_update, server_update = self.voice_updates(guild_id, user_id, channel_id)
        return State(
            guild_id=guild_id,
            user_id=user_id,
            channel_id=int(state_update["channel_id"]),
            session_id=state_update["session_id"],
            token=server_update["token"],
            endpoint=self.url,
        )

    # -- fault knobs -----------------------------------------------------------------

    def refuse_next_resume(self, count: int = 1) -> None:
        """Answer the next ``count`` Resume requests with close code 4006."""
        self._refuse_resumes += count

    def close_next_connection(self, code: int, *, after_messages: int | None = None, reason: str = "") -> None:
        """Close the next websocket connection with ``code``, at once or after ``after_messages`` client frames.

        Heartbeats are not counted, so ``after_messages=1`` closes right after Identify or Resume.
        """
        self._close_next.append((code, after_messages, reason))

    # -- recordings ------------------------------------------------------------------

    @property
    def expect_keepalive(self) -> float | None:
        """Seconds a session may send nothing over UDP before it is a lapse (``None``: not checked)."""
        return self._keepalive.expect

    @expect_keepalive.setter
    def expect_keepalive(self, value: float | None) -> None:
        self._keepalive.expect = value

    @property
    def keepalive_lapses(self) -> list[KeepaliveLapse]:
        """Sessions that sent nothing over UDP (IP discovery, audio, keepalive) for longer than
        ``expect_keepalive``: the gaps that ended, then the silences still going on."""
        return self._keepalive.lapses(time.monotonic())

    def silent_sessions(self, seconds: float | None = None) -> list[ServerSession]:
        """Live sessions whose last UDP datagram is older than ``seconds`` (default:
        ``expect_keepalive``)."""
        seconds = self.expect_keepalive if seconds is None else seconds
        if seconds is None:
            raise ValueError("silent_sessions() needs seconds when expect_keepalive is not set")
        return self._keepalive.silent_sessions(seconds, time.monotonic())

    def packets(self, ssrc: int) -> Recording[ReceivedPacket]:
        """The audio packets received from ``ssrc``, in arrival order (the newest
        ``record_packets``; ``dropped`` counts older ones let go)."""
        return self._packets.get(ssrc) or Recording(self.record_packets)

    @property
    def media_recording(self) -> str:
        """What the server keeps of the audio it forwards: ``"full"`` (every packet, in
        :meth:`packets` and ``ServerSession.packets``), ``"counts"`` (only
        :meth:`packets_received`) or ``"off"`` (nothing). Changeable at any time."""
        return self._media.recording

    @media_recording.setter
    def media_recording(self, value: str) -> None:
        self._media.recording = value

    def packets_received(self, ssrc: int) -> int:
        """Audio packets accepted from ``ssrc`` while ``media_recording`` was ``"counts"`` or
        ``"full"`` (``len(packets(ssrc))`` without the recording's bound)."""
        return self._media.count(ssrc) + self._audio_counts[ssrc]

    def media_stats(self) -> dict[str, Any]:
        """The media engine's figures: ``implementation`` (``"c"`` or ``"py"``), ``forwarded``
        (audio datagrams it took), ``sent`` (datagrams it sent to members) and ``send_drops``
        (datagrams the socket refused)."""
        from ._media import IMPLEMENTATION

        media = self._media
        return {"implementation": IMPLEMENTATION, "forwarded": media.forwarded, "sent": media.sent,
                "send_drops": media.send_drops}

    def session_for_user(self, user_id: int) -> ServerSession | None:
        """The most recent session of ``user_id``, or ``None``."""
        for session in reversed(self.sessions):
            if session.user_id == user_id:
                return session
        return None

    def session_for_ssrc(self, ssrc: int) -> ServerSession | None:
        """The session that owns ``ssrc``, or ``None``."""
        return self._by_ssrc.get(ssrc)

    def call_members(self, guild_id: int, channel_id: int | None = None) -> list[ServerSession]:
        """Sessions currently in the call of ``guild_id``/``channel_id``."""
        return list(self._calls.get((guild_id, guild_id if channel_id is None else channel_id), []))

    def dave_group(self, guild_id: int, channel_id: int | None = None) -> DaveCallGroup | None:
        """The DAVE state of a call (``None`` if the call never used DAVE)."""
        return self.dave.groups.get((guild_id, guild_id if channel_id is None else channel_id))

    async def dave_downgrade(self, guild_id: int, channel_id: int | None = None) -> None:
        """Take a call to DAVE protocol 0 (ops 21/23/22); its members then send plaintext."""
        await self.dave.call_event((guild_id, guild_id if channel_id is None else channel_id), "downgrade")

    async def dave_upgrade(self, guild_id: int, channel_id: int | None = None) -> None:
        """Bring a downgraded call back to DAVE: op 24 (epoch 1), a new group, then the transition."""
        await self.dave.call_event((guild_id, guild_id if channel_id is None else channel_id), "upgrade")

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every recorded event); return its value.

        Raises ``TimeoutError`` naming the predicate after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition {getattr(predicate, '__name__', predicate)!r} not met in {timeout} s")
            event = self._changed
            assert event is not None, "VoiceServer is not started"
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.05))
            except asyncio.TimeoutError:
                pass

    # -- internals: bookkeeping -----------------------------------------------------

    def _notify(self) -> None:
        event = self._changed
        if event is not None:
            event.set()
            self._changed = asyncio.Event()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_ssrc(self) -> int:
        while True:
            ssrc = self._random.randrange(1, 2**32)
            if ssrc not in self._by_ssrc:
                return ssrc

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

    # -- internals: websocket ------------------------------------------------------

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
        self._media_update(session)
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
        session._depacketizer = None
        session._packetizers.clear()
        dave_version = self.dave.session_version(session)
        session.dave_protocol_version = dave_version
        await session.send(
            Opcode.SESSION_DESCRIPTION,
            GatewayMessageDataSessionDescription(session.mode, session.secret_key, dave_version),
        )
        await self.dave.join(session)
        self._media_update(session)

    async def _on_speaking(self, conn: ServerConnection, data: GatewayMessageDataSpeaking) -> None:
        session = conn.session
        assert session is not None
        session.speaking = SpeakingFlags(data.speaking)
        self._media_update(session)
        relay = GatewayMessageDataSpeaking(data.speaking, session.ssrc, user_id=session.user_id)
        for other in self.call_members(session.guild_id, session.channel_id):
            if other is not session:
                await other.send(Opcode.SPEAKING, relay)

    # -- internals: UDP ----------------------------------------------------------------

    def _reject(self, addr: tuple[str, int], reason: str, data: bytes) -> None:
        self.rejected_datagrams.record(RejectedDatagram(addr, reason, data[:2048], time.monotonic()))
        self._notify()

    def _on_datagram(self, data: bytes, addr: tuple[str, int], now: float | None = None) -> None:
        if now is None:
            now = time.monotonic()
        if len(data) == 74 and data[0:4] == b"\x00\x01\x00\x46":
            ssrc = struct.unpack_from(">I", data, 4)[0]
            session = self._by_ssrc.get(ssrc)
            if session is not None:
                session.udp_address = addr
                self._keepalive.heard(session, addr, now)
                self._media_update(session)
            self._udp_send(addr, build_ip_discovery_reply(ssrc, addr[0], addr[1]), faults=False)
            self._notify()
            return
        if len(data) >= 8 and data[0] >> 6 == 2 and 200 <= data[1] <= 204:
            self.rtcp_received.record((addr, bytes(data[:2048])))
            self._notify()
            return
        keepalive = self._keepalive.received(data, addr, now)
        if keepalive is not None:
            if keepalive:
                self._notify()
            else:
                self._reject(addr, "keepalive from an address no session uses", data)
            return
        if len(data) < 12:
            self._reject(addr, f"datagram of {len(data)} bytes is shorter than an RTP header", data)
            return
        ssrc = struct.unpack_from(">I", data, 8)[0]
        session = self._by_ssrc.get(ssrc)
        if session is None:
            self._reject(addr, f"unknown SSRC {ssrc}", data)
            return
        if session.mode is None or session.secret_key is None:
            self._reject(addr, f"SSRC {ssrc} sent audio before Select Protocol", data)
            return
        if session._depacketizer is None:
            from ..rtp import Depacketizer

            session._depacketizer = Depacketizer(session.mode, session.secret_key)
        try:
            packet = session._depacketizer.depacketize(data)
        except DecryptionFailedError as exc:
            self._reject(addr, f"SSRC {ssrc}: {exc}", data)
            return
        if packet is None:
            self._reject(addr, "not an RTP audio packet", data)
            return
        if session.udp_address != addr:
            session.udp_address = addr
            self._media_update(session)
        self._keepalive.heard(session, addr, now)
        if session.speaking is None:
            session.audio_before_speaking += 1
        if self._media.recording != "off":
            self._audio_counts[ssrc] += 1
        if self._media.recording == "full":
            self._record_audio(session, ssrc, packet.sequence, packet.timestamp, packet.opus, packet.marker, now, addr)
        group = self.dave.groups.get((session.guild_id, session.channel_id))
        if (
            group is not None
            and group.protocol_version > 0
            and session.user_id in group.members
            and packet.opus != SILENCE_AUDIO_FRAME
            and not is_dave_frame(packet.opus)
        ):
            session.dave_plaintext_packets += 1
        self._forward(session, packet)
        self._notify()

    def _forward(self, sender: ServerSession, packet: Any) -> None:
        from ..rtp import Packetizer

        # As Discord's SFU: DAVE frames never go to a member that cannot decrypt them.
        ciphertext = bool(self.dave.groups) and is_dave_frame(packet.opus)
        for member in self.call_members(sender.guild_id, sender.channel_id):
            if member is sender or member.udp_address is None or member.mode is None or member.secret_key is None:
                continue
            if ciphertext and not member.max_dave_protocol_version:
                member.dave_frames_withheld += 1
                continue
            packetizer = member._packetizers.get(sender.ssrc)
            if packetizer is None:
                packetizer = Packetizer(sender.ssrc, member.mode, member.secret_key)
                member._packetizers[sender.ssrc] = packetizer
            packetizer.sequence = packet.sequence
            packetizer.timestamp = packet.timestamp
            self._udp_send(member.udp_address, packetizer.packetize(packet.opus, marker=packet.marker))

    def _record_audio(self, session: ServerSession, ssrc: int, sequence: int, timestamp: int, opus: bytes,
                      marker: bool, now: float, addr: tuple[str, int]) -> None:
        received = ReceivedPacket(ssrc, session.user_id, sequence, timestamp, opus, marker, now, addr)
        session.packets.record(received)
        recording = self._packets.get(ssrc)
        if recording is None:
            recording = self._packets[ssrc] = Recording(self.record_packets)
        recording.record(received)

    # -- internals: the media engine seam --------------------------------------------

    def _media_update(self, session: ServerSession) -> None:
        """Tell the media engine what it needs of ``session`` (after any change to it)."""
        if session.ended or session.mode is None or session.secret_key is None:
            self._media.remove_session(session.ssrc)
            return
        self._media.set_session(
            session.ssrc, session, (session.guild_id, session.channel_id), session.mode, session.secret_key,
            session.udp_address, speaking=session.speaking is not None, dave=bool(session.max_dave_protocol_version),
        )

    def _udp_faults(self) -> bool:
        return bool(
            self._udp_loss or self._udp_duplicate or self._udp_reorder or self._udp_delay or self._udp_jitter
            or self._stall_timer is not None or self._held is not None or self._stalled
        )

    def _media_hooked(self) -> bool:
        # A hook that replaced _on_datagram or _forward (a test's or a benchmark's, on the
        # instance or the class) sees every datagram, as it did before the engine.
        return (getattr(self._on_datagram, "__func__", None) is not _PYTHON_PATH[0]
                or getattr(self._forward, "__func__", None) is not _PYTHON_PATH[1])

    def _on_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram arrived: the media engine forwards it and what else waits on the socket,
        in batches; what it leaves (and everything while a fault knob is set) goes to
        :meth:`_on_datagram`."""
        udp = self._udp
        if udp is None or self._udp_faults() or self._media_hooked():
            self._on_datagram(data, addr)
            return
        now = time.monotonic()
        slow = self._media.pump(udp.get_extra_info("socket").fileno(), data, addr)
        heard, records = self._media.take()
        for session in heard:
            self._keepalive.heard(session, session.udp_address, now)
        for session, ssrc, sequence, timestamp, opus, marker, address in records:
            self._record_audio(session, ssrc, sequence, timestamp, opus, marker, now, address)
        for data, addr in slow:
            try:
                self._on_datagram(data, addr, now)
            except Exception:  # the server must survive whatever arrives
                _log.exception("voice server failed on a datagram from %s", addr)
        self._notify()

    # -- internals: UDP sending ------------------------------------------------------

    def _udp_send(self, addr: tuple[str, int], data: bytes, faults: bool = True) -> None:
        if self._udp is None:
            return
        if not faults:
            self._udp.sendto(data, addr)
            return
        rng = self._random
        if self.udp_loss and rng.random() < self.udp_loss:
            if len(data) >= 12:
                self.udp_lost.append((addr, int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big")))
            return
        copies = 2 if self.udp_duplicate and rng.random() < self.udp_duplicate else 1
        out: list[tuple[tuple[str, int], bytes]] = [(addr, data)] * copies
        if self._held is not None:
            self._held_for -= 1
            if self._held_for <= 0:
                out.append(self._held)
                self._held = None
        elif self.udp_reorder and rng.random() < self.udp_reorder:
            self._held = out.pop(0)
            window = self._udp_reorder_window
            self._held_for = 1 if window == 1 else rng.randint(1, window)
            if not out:
                return
        for target, payload in out:
            delay = self.udp_delay + (rng.uniform(0.0, self._udp_jitter) if self._udp_jitter else 0.0)
            if delay > 0:
                loop = asyncio.get_running_loop()
                handle = loop.call_later(delay, self._udp_send_later, target, payload)
                self._timers.add(handle)
            else:
                self._udp_send_now(target, payload)

    def _udp_send_later(self, addr: tuple[str, int], data: bytes) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()}
        self._udp_send_now(addr, data)

    def _udp_send_now(self, addr: tuple[str, int], data: bytes) -> None:
        if self._stall_timer is not None:
            self._stalled.append((addr, data))
            return
        if self._udp is not None:
            self._udp.sendto(data, addr)


# The server's own datagram handlers, as defined (see VoiceServer._media_hooked).
_PYTHON_PATH = (VoiceServer._on_datagram, VoiceServer._forward)
