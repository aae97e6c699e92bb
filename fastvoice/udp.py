"""The voice UDP connection: IP discovery, then encrypted RTP out and in (seed: ``UDPConn``)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._shown import shown
from .constants import UDP_TIMEOUT
from .encryption import EncryptionMode
from .errors import IPDiscoveryError, VoiceError
from .ipdiscovery import build_ip_discovery_request, is_ip_discovery_response, parse_ip_discovery_response
from .keepalive import KEEPALIVE_INTERVAL, KeepaliveScheduler, build_keepalive
from .rtp import DatagramRouter, Depacketizer, Packet, Packetizer, SendTarget, SSRCTable

__all__ = ["UDPConn", "UDPConnConfig", "UDPConnCreateFunc", "UDPNotReadyError"]

_log = logging.getLogger("fastvoice.udp")

#: Largest datagram the receive side accepts; anything longer is dropped unread. (Not the
#: largest UDP payload, ``_rtp_common.MAX_UDP_PAYLOAD``: a voice packet is far smaller.)
MAX_RECEIVED_DATAGRAM = 4096


def _random_stream_start() -> tuple[int, int]:
    """A new stream's first ``(sequence, timestamp)``: random, as RFC 3550 section 5.1 asks."""
    return secrets.randbits(16), secrets.randbits(32)


class UDPNotReadyError(VoiceError):
    """Audio was written before the connection had its address and secret key."""


@dataclass
class UDPConnConfig:
    """Configuration of a :class:`UDPConn` (seed: ``UDPConnConfig``; the Dialer becomes ``local_addr``).

    ``discovery_timeout`` bounds IP discovery as a whole (the seed's ``UDP_TIMEOUT``);
    the request is re-sent every ``discovery_retry`` seconds in case a datagram is lost.
    ``read_queue`` bounds how many undelivered packets ``read_packet`` keeps (oldest dropped).
    ``keepalive_interval``: while no audio goes out, a UDP keepalive is sent this often (in
    seconds) to keep NAT and firewall bindings open; ``None`` sends none.
    """

    logger: logging.Logger = field(default_factory=lambda: _log)
    local_addr: tuple[str, int] | None = None
    discovery_timeout: float = UDP_TIMEOUT
    discovery_retry: float = 1.0
    read_queue: int = 256
    keepalive_interval: float | None = KEEPALIVE_INTERVAL

    def __post_init__(self) -> None:
        interval = self.keepalive_interval
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 3600
        ):
            raise ValueError(f"keepalive_interval must be seconds in (0, 3600] or None, got {interval!r}"[:120])


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, conn: UDPConn) -> None:
        self._conn = conn
        # The per-datagram entry point is the connection's router (compiled in the fast path).
        self.datagram_received = conn._router.datagram_received  # type: ignore[method-assign]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable while the server restarts, ...) are transient for voice.
        self._conn._config.logger.debug("voice UDP error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._connection_lost()


class UDPConn:
    """A UDP voice connection on an asyncio datagram endpoint (uvloop's when installed).

    ``open(ip, port, ssrc)`` connects the socket and runs IP discovery; after
    ``set_secret_key(mode, key)`` (from Session Description) ``write(opus)`` packetizes,
    encrypts and sends a frame, and received packets are decrypted for ``read_packet()`` or,
    when a handler is set with ``set_packet_handler``, pushed to it as they arrive.

    From IP discovery until ``close``, the loop's :class:`~fastvoice.keepalive.KeepaliveScheduler`
    sends a keepalive every ``keepalive_interval`` seconds while no audio goes out: a visit
    sends one unless the packetizer's sequence number moved since the previous visit.
    """

    def __init__(self, config: UDPConnConfig | None = None, **options: Any) -> None:
        self._config = config if config is not None else UDPConnConfig(**options)
        if config is not None and options:
            raise TypeError("pass either a UDPConnConfig or keyword options, not both")
        self._transport: asyncio.DatagramTransport | None = None
        self._remote: tuple[str, int] | None = None
        #: The socket's descriptor while open, else -1: the send clock writes to it directly.
        self._send_target = SendTarget(-1)
        self._ssrc = 0
        self._packetizer: Packetizer | None = None
        self._depacketizer: Depacketizer | None = None
        self._discovery: asyncio.Future[bytes] | None = None
        self._queue: deque[Packet] = deque(maxlen=self._config.read_queue)
        self._readable = asyncio.Event()
        self._handler: Callable[[Packet], None] | None = None
        self._table: SSRCTable | None = None
        self._raw_handler: Callable[[bytes], None] | None = None
        self._read_timeout: float | None = None
        self._closed = False
        self._keepalive: KeepaliveScheduler | None = None
        self._keepalive_counter = 0
        #: The packetizer's sequence number at the last keepalive visit (moved: audio went out).
        self._keepalive_mark: int | None = None
        self._keepalives_sent = 0
        # Every datagram enters through the router: depacketize + SSRC routing + handler in
        # one compiled call; only IP discovery and a raw handler take _datagram_received first.
        self._router = DatagramRouter(self._datagram_received, MAX_RECEIVED_DATAGRAM, self._config.logger)

    # -- properties -----------------------------------------------------------------

    @property
    def decrypt_failures(self) -> int:
        """Datagrams that failed decryption (forged, corrupted or for another key)."""
        return self._router.decrypt_failures

    @property
    def datagrams_received(self) -> int:
        """Datagrams the socket handed in, whatever became of them (audio, keepalives, dropped)."""
        return self._router.received

    @property
    def ignored(self) -> int:
        """Datagrams ignored: not audio, oversized, or from an unexpected address."""
        return self._router.ignored

    @property
    def duplicates(self) -> int:
        """Repeated packets dropped (with a dispatch table, see ``set_packet_handler``)."""
        return self._router.duplicates

    @property
    def keepalives_received(self) -> int:
        """Keepalive datagrams received from the server (dropped; not counted as ``ignored``)."""
        return self._router.keepalives

    @property
    def keepalives_sent(self) -> int:
        """Keepalive datagrams sent on this connection."""
        return self._keepalives_sent

    def _update_route(self) -> None:
        # Every datagram takes the router's one route; IP discovery and a raw handler need
        # the slow path first.
        discovering = self._discovery is not None and not self._discovery.done()
        self._router.slow = discovering or self._raw_handler is not None
        if self._closed:
            self._router.route(None, None, None)
        else:
            handler = self._handler if self._handler is not None else self._enqueue
            self._router.route(self._depacketizer, self._table, handler)

    @property
    def config(self) -> UDPConnConfig:
        """The configuration in use."""
        return self._config

    @property
    def local_addr(self) -> tuple[str, int] | None:
        """The local (host, port) of the socket, once open."""
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def remote_addr(self) -> tuple[str, int] | None:
        """The voice server's (host, port), once open."""
        return self._remote

    @property
    def ssrc(self) -> int:
        """The SSRC this connection sends with."""
        return self._ssrc

    @property
    def packetizer(self) -> Packetizer | None:
        """The packetizer in use once a key is set, ``None`` before that and after ``close``
        (``stream_counters`` stays readable after close, for stream continuity)."""
        p = self._packetizer
        return None if p is None or p.wiped else p

    @property
    def stream_counters(self) -> tuple[int, int, int] | None:
        """``(sequence, timestamp, nonce)`` of the next packet, or ``None`` before a key is set."""
        p = self._packetizer
        return None if p is None else (p.sequence, p.timestamp, p.nonce)

    @property
    def is_open(self) -> bool:
        """True between a successful ``open`` and ``close``."""
        return self._transport is not None and not self._closed

    # -- lifecycle ------------------------------------------------------------------

    async def open(self, ip: str, port: int, ssrc: int) -> tuple[str, int]:
        """Connect to the voice server at ``ip:port`` and discover our external address.

        Returns ``(address, port)`` from the IP discovery reply. Raises ``IPDiscoveryError``
        on a malformed reply or when no reply comes within ``discovery_timeout`` seconds,
        ``OSError`` when the socket cannot be created, and ``ConnectionError`` when
        :meth:`close` is called meanwhile (the socket is closed in every case).
        """
        if self._transport is not None:
            raise VoiceError("UDPConn is already open")
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            raise ValueError(f"port must be an int in 1..65535, got {shown(port)}")
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self._closed = False
        making = asyncio.ensure_future(loop.create_datagram_endpoint(
            lambda: _Protocol(self), remote_addr=(ip, port), local_addr=self._config.local_addr, family=family
        ))
        try:
            # Shielded: uvloop leaves the socket of an endpoint cancelled half-made open for good.
            transport, _ = await asyncio.shield(making)
        except asyncio.CancelledError:
            making.add_done_callback(_close_endpoint)  # finished, then closed
            raise
        if self._closed:  # close() came while the socket was being made: it must not outlive it
            transport.close()
            raise ConnectionError("the voice UDP connection was closed while opening")
        self._transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self._remote = (str(host), int(port))
        self._router.remote = self._remote
        sock = transport.get_extra_info("socket")
        self._send_target.fd = sock.fileno() if sock is not None else -1
        self._ssrc = ssrc
        try:
            address = await self._discover(loop, ssrc)
        except BaseException:
            self.close()
            raise
        self._start_keepalive(loop)
        return address

    async def _discover(self, loop: asyncio.AbstractEventLoop, ssrc: int) -> tuple[str, int]:
        request = build_ip_discovery_request(ssrc)
        deadline = loop.time() + self._config.discovery_timeout
        while True:
            self._discovery = loop.create_future()
            self._update_route()
            assert self._transport is not None
            self._transport.sendto(request)
            wait = min(self._config.discovery_retry, deadline - loop.time())
            if wait <= 0:
                raise IPDiscoveryError(
                    f"no IP discovery reply from {self._remote[0]}:{self._remote[1]} "  # type: ignore[index]
                    f"within {self._config.discovery_timeout:g} s"
                )
            try:
                reply = await asyncio.wait_for(asyncio.shield(self._discovery), wait)
            except asyncio.TimeoutError:
                continue
            finally:
                self._discovery = None
                self._update_route()
            address = parse_ip_discovery_response(reply, ssrc)
            self._config.logger.debug("IP discovery: external address %s:%d", *address)
            return address

    def set_secret_key(
        self, mode: EncryptionMode | str, secret_key: bytes, *, counters: tuple[int, int, int] | None = None
    ) -> None:
        """Start encrypting and decrypting with ``mode`` and ``secret_key`` (op 4).

        ``counters`` (``(sequence, timestamp, nonce)``, see :attr:`stream_counters`) continues
        another connection's stream; by default a new key on this connection keeps its own
        counters, so the outgoing stream stays continuous. A new stream starts at a random
        sequence number and timestamp (RFC 3550 section 5.1) and nonce 0.
        """
        previous = self._packetizer
        if counters is None and previous is not None:
            counters = previous.sequence, previous.timestamp, previous.nonce
        if counters is None:
            sequence, timestamp = _random_stream_start()
            counters = sequence, timestamp, 0
        packetizer = Packetizer(self._ssrc, mode, secret_key)
        packetizer.sequence, packetizer.timestamp, packetizer.nonce = counters
        if previous is not None:
            previous.wipe()
        if self._depacketizer is not None:
            self._depacketizer.wipe()
        self._packetizer = packetizer
        self._depacketizer = Depacketizer(mode, secret_key)
        self._keepalive_mark = packetizer.sequence  # a new key is not audio
        self._update_route()

    def close(self) -> None:
        """Close the socket and wipe the session's secret key (see ``Packetizer.wipe``);
        pending ``read_packet`` calls raise ``ConnectionError``."""
        self._closed = True
        self._update_route()
        self._stop_keepalive()
        self._send_target.fd = -1  # before the descriptor can be closed and its number reused
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        if self._packetizer is not None:
            self._packetizer.wipe()
        if self._depacketizer is not None:
            self._depacketizer.wipe()
            self._depacketizer = None
        discovery = self._discovery
        if discovery is not None and not discovery.done():
            # An open() waiting for its reply fails with ConnectionError (a cancel would look
            # to its caller like a cancellation of its own).
            discovery.set_exception(ConnectionError("the voice UDP connection was closed during IP discovery"))
            discovery.exception()  # retrieved here: open() may have been cancelled meanwhile
        self._readable.set()

    # -- send -----------------------------------------------------------------------

    def write(self, opus: bytes) -> int:
        """Packetize, encrypt and send one Opus frame; return the number of Opus bytes sent.

        Raises ``UDPNotReadyError`` before ``open`` and ``set_secret_key``.
        """
        transport = self._transport
        packetizer = self.packetizer
        if transport is None or packetizer is None:
            raise UDPNotReadyError(
                "cannot send audio: the UDP connection is "
                + ("not open" if transport is None else "waiting for its secret key (Session Description)")
            )
        transport.sendto(packetizer.packetize(opus))
        return len(opus)

    @property
    def send_target(self) -> SendTarget:
        """This connection's socket as the send clock's loop sees it (its ``fd``, -1 when closed)."""
        return self._send_target

    def send_datagram(self, datagram: bytes) -> None:
        """Send an already built datagram (used by the shared send clock)."""
        if self._transport is not None:
            self._transport.sendto(datagram)

    # -- keepalive ------------------------------------------------------------------

    def _start_keepalive(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = self._config.keepalive_interval
        if interval is None or self._closed:
            return
        self._keepalive = KeepaliveScheduler.for_loop(loop)
        self._keepalive_mark = self._sequence_mark()
        self._keepalive.schedule(self, interval)

    def _stop_keepalive(self) -> None:
        scheduler, self._keepalive = self._keepalive, None
        if scheduler is not None:
            scheduler.cancel(self)

    def _sequence_mark(self) -> int | None:
        p = self._packetizer
        return None if p is None else p.sequence

    def restart_keepalive(self) -> None:
        """Audio stopped now: the next keepalive goes ``keepalive_interval`` seconds from now
        unless audio starts again before (the AudioSender calls this when a talkspurt's
        silence tail has gone out)."""
        scheduler = self._keepalive
        interval = self._config.keepalive_interval
        if scheduler is None or interval is None:
            return
        self._keepalive_mark = self._sequence_mark()
        scheduler.schedule(self, interval)

    def _keepalive_visit(self, now: float) -> float | None:
        """The scheduler's visit: send a keepalive unless audio went out since the last one."""
        interval = self._config.keepalive_interval
        transport = self._transport
        if transport is None or self._closed or interval is None:
            return None
        mark = self._sequence_mark()
        if mark != self._keepalive_mark:
            self._keepalive_mark = mark  # audio is flowing: look again in an interval
            return now + interval
        transport.sendto(build_keepalive(self._keepalive_counter))
        self._keepalive_counter = (self._keepalive_counter + 1) & 0xFFFFFFFF
        self._keepalives_sent += 1
        return now + interval

    # -- receive --------------------------------------------------------------------

    def set_packet_handler(self, handler: Callable[[Packet], None] | None, table: SSRCTable | None = None) -> None:
        """Push every decrypted audio packet to ``handler`` instead of queueing it for ``read_packet``.

        With ``table``, each datagram is depacketized and routed through it in one compiled
        call (``Depacketizer.dispatch``): packets arrive with ``user_id`` set (``None`` for an
        unmapped SSRC) and repeats of an already delivered packet are dropped and counted
        (``duplicates``).
        """
        self._handler = handler
        self._table = table if handler is not None else None
        self._update_route()

    def set_raw_handler(self, handler: Callable[[bytes], None] | None) -> None:
        """Push every raw datagram from the server to ``handler`` (before any decryption)."""
        self._raw_handler = handler
        self._update_route()

    def _datagram_received(self, data: bytes, addr: Any) -> bool:
        # The router's slow path (while IP discovery runs or a raw handler is set): called
        # after its address and size checks; True when the datagram was taken here, else it
        # goes on along the router's one route.
        discovery = self._discovery
        if discovery is not None and not discovery.done() and is_ip_discovery_response(data):
            discovery.set_result(data)
            return True
        if self._raw_handler is not None:
            self._raw_handler(data)
            return True
        return False

    def _enqueue(self, packet: Packet) -> None:
        # Where routed packets go while no handler is set: the queue read_packet reads.
        self._queue.append(packet)
        self._readable.set()

    def _connection_lost(self) -> None:
        self._send_target.fd = -1
        self._closed = True
        self._stop_keepalive()
        self._update_route()
        self._readable.set()

    def set_deadline(self, timeout: float | None) -> None:
        """Set the read and write timeouts, in seconds (``None`` for none)."""
        self.set_read_deadline(timeout)
        self.set_write_deadline(timeout)

    def set_read_deadline(self, timeout: float | None) -> None:
        """``read_packet`` raises ``TimeoutError`` after waiting ``timeout`` seconds (``None``: wait forever)."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        self._read_timeout = timeout

    def set_write_deadline(self, timeout: float | None) -> None:
        """Accepted for the seed's interface: UDP writes never wait, so there is nothing to bound."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")

    async def read(self) -> bytes:
        """Wait for the next audio packet and return its decrypted payload (seed: ``Read``)."""
        return (await self.read_packet()).opus

    async def read_packet(self) -> Packet:
        """Wait for the next decrypted audio packet.

        Raises ``TimeoutError`` after the read deadline and ``ConnectionError`` once closed.
        """
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._closed:
                raise ConnectionError("the voice UDP connection is closed")
            self._readable.clear()
            if self._read_timeout is None:
                await self._readable.wait()
            else:
                try:
                    await asyncio.wait_for(self._readable.wait(), self._read_timeout)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"no voice packet within {self._read_timeout:g} s") from None


def _close_endpoint(making: asyncio.Future[Any]) -> None:
    """Close the transport of an endpoint whose opener was cancelled meanwhile."""
    if not making.cancelled() and making.exception() is None:
        making.result()[0].close()


#: Creates a UDPConn (seed: ``UDPConnCreateFunc``).
UDPConnCreateFunc = Callable[..., UDPConn]
