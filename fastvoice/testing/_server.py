"""An in-process Discord voice server for tests: gateway v8 over websockets plus the UDP media side.

:class:`VoiceServer` holds the knobs, the lifecycle, the session registry and the recordings;
the websocket side is its base :class:`~._gateway_side.GatewaySide`, each datagram goes to its
:class:`~._media.MediaForwarder`, and datagrams to clients go through :class:`~._faults.UDPFaults`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..encryption import AVAILABLE_MODES, EncryptionMode
from ..gateway import State
from ._dave_relay import DaveRelay
from ._dispatches import voice_dispatches
from ._faults import UDPFaults
from ._gateway_side import GatewaySide
from ._keepalive import KeepaliveLapse, KeepaliveWatch
from ._main_gateway import MainGatewayStandIn
from ._media import MediaForwarder, MediaProtocol, build_ip_discovery_reply, build_rtcp_receiver_report
from ._recording import ReceivedPacket, RecordedMessage, Recording, RejectedDatagram, check_limit
from ._session import ServerConnection, ServerSession
from ._sockbuf import enlarge_receive_buffer, receive_drops
from ._tls import SelfSignedCertificate

if TYPE_CHECKING:
    from ._dave import DaveCallGroup

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

class VoiceServer(GatewaySide):
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
        #: Every websocket connection, in order of arrival.
        self.connections: list[ServerConnection] = []
        #: Every voice session, in order of creation.
        self.sessions: list[ServerSession] = []
        #: Datagrams the UDP side could not use (the newest ``record_packets``).
        self.rejected_datagrams: Recording[RejectedDatagram] = Recording(self.record_packets)
        #: RTCP datagrams received, as ``(address, bytes)`` (the newest ``record_packets``).
        self.rtcp_received: Recording[tuple[tuple[str, int], bytes]] = Recording(self.record_packets)
        self._random = random.Random(seed)
        #: The fault knobs on datagrams to clients (the ``udp_*`` attributes, :meth:`stall_udp`).
        self._faults = UDPFaults(self._udp_send_now, self._random)
        #: ``(address, SSRC, sequence number)`` of the datagrams ``udp_loss`` dropped (the last 65,536).
        self.udp_lost = self._faults.lost
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
        self._changed: asyncio.Event | None = None
        #: The DAVE side: call groups, delivery and DAVE's fault knobs (see :class:`DaveRelay`).
        self.dave = DaveRelay(self)
        #: What is done with each datagram received: the media engine, else the Python path
        #: (see :mod:`._media`).
        self._media = MediaForwarder(self, media_recording, on_datagram=_ON_DATAGRAM)
        self._connection_count = 0
        self._closing = False
        #: Receive buffer of the UDP socket as the kernel reports it (``SO_RCVBUF``), once started.
        self.udp_receive_buffer = 0

    # -- UDP fault knobs (see UDPFaults) ----------------------------------------------

    @property
    def udp_loss(self) -> float:
        """Probability that a datagram sent to a client is dropped."""
        return self._faults.loss

    @udp_loss.setter
    def udp_loss(self, value: float) -> None:
        self._faults.loss = value

    @property
    def udp_duplicate(self) -> float:
        """Probability that a datagram sent to a client is sent twice."""
        return self._faults.duplicate

    @udp_duplicate.setter
    def udp_duplicate(self, value: float) -> None:
        self._faults.duplicate = value

    @property
    def udp_reorder(self) -> float:
        """Probability that a datagram is held back and sent after the next one (lost if none follows)."""
        return self._faults.reorder

    @udp_reorder.setter
    def udp_reorder(self, value: float) -> None:
        self._faults.reorder = value

    @property
    def udp_reorder_window(self) -> int:
        """A datagram held back by ``udp_reorder`` is sent after 1 to this many later datagrams."""
        return self._faults.reorder_window

    @udp_reorder_window.setter
    def udp_reorder_window(self, value: int) -> None:
        self._faults.reorder_window = value

    def stall_udp(self, seconds: float) -> None:
        """Hold every datagram sent to clients for ``seconds``, then send them all at once, in order.

        Models a network stall (a jitter spike): nothing is lost, everything arrives late
        and in a burst. A stall started during another one extends it.
        """
        self._faults.stall(seconds)

    @property
    def udp_delay(self) -> float:
        """Seconds every datagram sent to a client is delayed by."""
        return self._faults.delay

    @udp_delay.setter
    def udp_delay(self, value: float) -> None:
        self._faults.delay = value

    @property
    def udp_jitter(self) -> float:
        """Each datagram sent to a client is delayed by a further random 0 to this many seconds."""
        return self._faults.jitter

    @udp_jitter.setter
    def udp_jitter(self, value: float) -> None:
        self._faults.jitter = value

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
            lambda: MediaProtocol(self), local_addr=(self.host, 0), family=socket.AF_INET
        )
        self._udp = transport
        self._udp_port = transport.get_extra_info("sockname")[1]
        # A tick's burst from many calls waits here while the shared loop is busy elsewhere.
        self.udp_receive_buffer = enlarge_receive_buffer(transport.get_extra_info("socket").fileno())
        _log.debug("voice server listening on %s (UDP %d)", self.url, self._udp_port)

    async def close(self) -> None:
        """Close every connection (code 1001), stop both endpoints and remove temporary files."""
        self._closing = True
        self._faults.close()
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
        return str(self._media.engine.recording)

    @media_recording.setter
    def media_recording(self, value: str) -> None:
        self._media.engine.recording = value

    def packets_received(self, ssrc: int) -> int:
        """Audio packets accepted from ``ssrc`` while ``media_recording`` was ``"counts"`` or
        ``"full"`` (``len(packets(ssrc))`` without the recording's bound)."""
        return self._media.count(ssrc)

    def media_stats(self) -> dict[str, Any]:
        """The media engine's figures: ``implementation`` (``"c"`` or ``"py"``), ``forwarded``
        (audio datagrams it took), ``sent`` (datagrams it sent to members) and ``send_drops``
        (datagrams the socket refused)."""
        return self._media.stats()

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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_ssrc(self) -> int:
        while True:
            ssrc = self._random.randrange(1, 2**32)
            if ssrc not in self._by_ssrc:
                return ssrc

    # -- internals: UDP ----------------------------------------------------------------

    def _on_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram from the socket (without a kernel stamp): the media engine's batch, then
        the Python path for what it leaves."""
        udp = self._udp
        if udp is None:
            return
        self._media.on_udp(data, addr, udp.get_extra_info("socket").fileno(), self._faults.active)

    def _on_datagram(self, data: bytes, addr: tuple[str, int], now: float | None = None) -> None:
        """The Python path: one datagram the UDP socket received (``now``: its arrival time)."""
        self._media.datagram_received(data, addr, now)

    def _udp_send(self, addr: tuple[str, int], data: bytes, faults: bool = True) -> None:
        """Send ``data`` to a client, through the fault knobs unless ``faults`` is False."""
        if self._udp is None:
            return
        if faults:
            self._faults.send(addr, data)
        else:
            self._udp.sendto(data, addr)

    def _udp_send_now(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._udp is not None:
            self._udp.sendto(data, addr)


# The Python path's entry as defined (a hook replacing it takes every datagram; see MediaForwarder).
_ON_DATAGRAM = VoiceServer._on_datagram
