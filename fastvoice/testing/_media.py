"""The test server's UDP media side: IP discovery, RTCP, keepalives, and audio decrypted,
recorded and forwarded to the other members of the call (as Discord's SFU does).

:class:`MediaForwarder` is the seam between the server and its socket. Audio of a known session
in an AEAD ``_rtpsize`` mode is forwarded by the media engine (:mod:`._media_engine`: compiled,
with a pure twin), which reads and sends the socket in batches; whatever it leaves, and every
datagram while a UDP fault knob is set, takes the Python path (:meth:`datagram_received`,
sending through ``VoiceServer._udp_send`` where the fault knobs apply).

Both classes sit below the server: what they use of it is :class:`DatagramSink` and
:class:`MediaHost`, which the server satisfies (it passes itself down).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..constants import SILENCE_AUDIO_FRAME
from ..errors import DecryptionFailedError
from ..ipdiscovery import build_ip_discovery_response as build_ip_discovery_reply
from ..rtp import Depacketizer, Packet, Packetizer
from ._media_engine import IMPLEMENTATION, MediaEngine
from ._mls import is_dave_frame
from ._recording import ReceivedPacket, Recording, RejectedDatagram
from ._stamps import kernel_receive_clock

if TYPE_CHECKING:
    from ._dave_relay import DaveRelay
    from ._keepalive import KeepaliveWatch
    from ._session import ServerSession

__all__ = [
    "DatagramSink",
    "MediaForwarder",
    "MediaHost",
    "MediaProtocol",
    "build_ip_discovery_reply",
    "build_rtcp_receiver_report",
]

_log = logging.getLogger("fastvoice.testing")


def build_rtcp_receiver_report(ssrc: int) -> bytes:
    """Return a minimal RTCP receiver report (packet type 201, no report blocks) from ``ssrc``."""
    return struct.pack(">BBHI", 0x80, 201, 1, ssrc & 0xFFFFFFFF)


class DatagramSink(Protocol):
    """What :class:`MediaProtocol` uses of the server (a ``VoiceServer``): where datagrams go."""

    @property
    def kernel_stamps(self) -> bool: ...

    def _on_udp(self, data: bytes, addr: tuple[str, int]) -> None: ...

    def _on_datagram(self, data: bytes, addr: tuple[str, int], now: float | None = None) -> None: ...


class MediaHost(Protocol):
    """What :class:`MediaForwarder` uses of the server (a ``VoiceServer``): its session
    registry and call lists, the recordings it adds to, the keepalive watch, the DAVE groups,
    the Python path's entry and the way out to clients."""

    @property
    def record_packets(self) -> int | None: ...

    @property
    def rejected_datagrams(self) -> Recording[RejectedDatagram]: ...

    @property
    def rtcp_received(self) -> Recording[tuple[tuple[str, int], bytes]]: ...

    @property
    def dave(self) -> DaveRelay: ...

    @property
    def _keepalive(self) -> KeepaliveWatch: ...

    @property
    def _by_ssrc(self) -> dict[int, ServerSession]: ...

    @property
    def _packets(self) -> dict[int, Recording[ReceivedPacket]]: ...

    def call_members(self, guild_id: int, channel_id: int | None = None) -> list[ServerSession]: ...

    def _notify(self) -> None: ...

    def _on_datagram(self, data: bytes, addr: tuple[str, int], now: float | None = None) -> None: ...

    def _udp_send(self, addr: tuple[str, int], data: bytes, faults: bool = True) -> None: ...


class MediaProtocol(asyncio.DatagramProtocol):
    """The server's UDP socket: hands every datagram to ``VoiceServer._on_datagram`` (with the
    kernel's receive time when ``kernel_stamps`` is on) and survives whatever arrives."""

    def __init__(self, server: DatagramSink) -> None:
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


class MediaForwarder:
    """What the server does with each datagram it receives (see the module docstring)."""

    def __init__(self, server: MediaHost, recording: str = "full", on_datagram: Any = None) -> None:
        self._server = server
        #: ``VoiceServer._on_datagram`` as defined, to notice a hook that replaced it.
        self._on_datagram = on_datagram
        #: The batched fast path for audio (see the module docstring).
        self.engine = MediaEngine(server.dave.groups, recording)
        #: Audio packets per SSRC that the Python path accepted (the engine counts its own).
        self.audio_counts: collections.Counter[int] = collections.Counter()
        #: Per session, the transport crypto of its current key: what decrypts its audio, and one
        #: packetizer per other member whose audio is forwarded to it (by that member's SSRC).
        self._depacketizers: dict[ServerSession, Depacketizer] = {}
        self._packetizers: dict[ServerSession, dict[int, Packetizer]] = {}

    # -- the fast path ---------------------------------------------------------------

    def update(self, session: ServerSession) -> None:
        """Tell the engine what it needs of ``session`` (after any change to it)."""
        if session.ended or session.mode is None or session.secret_key is None:
            self.engine.remove_session(session.ssrc)
            return
        self.engine.set_session(
            session.ssrc, session, (session.guild_id, session.channel_id), session.mode, session.secret_key,
            session.udp_address, speaking=session.speaking is not None, dave=bool(session.max_dave_protocol_version),
        )

    def count(self, ssrc: int) -> int:
        """Audio packets accepted from ``ssrc`` while recording was ``counts`` or ``full``."""
        return self.engine.count(ssrc) + self.audio_counts[ssrc]

    def stats(self) -> dict[str, Any]:
        """The engine's figures (see :meth:`VoiceServer.media_stats`)."""
        engine = self.engine
        return {"implementation": IMPLEMENTATION, "forwarded": engine.forwarded, "sent": engine.sent,
                "send_drops": engine.send_drops}

    def hooked(self) -> bool:
        """True when a test or benchmark replaced a step of the Python path (on the class or the
        instance): that hook must see every datagram, as it did before the engine."""
        server = self._server
        return (getattr(server._on_datagram, "__func__", None) is not self._on_datagram
                or getattr(self.datagram_received, "__func__", None) is not _PYTHON_PATH[0]
                or getattr(self.forward, "__func__", None) is not _PYTHON_PATH[1])

    def on_udp(self, data: bytes, addr: tuple[str, int], fd: int, faults: bool) -> None:
        """A datagram arrived on the socket ``fd``: the engine forwards it and what else waits
        there, in batches; what it leaves (and everything while ``faults`` are on, or a hook
        is set) goes to the Python path."""
        server = self._server
        if faults or self.hooked():
            server._on_datagram(data, addr)
            return
        now = time.monotonic()
        slow = self.engine.pump(fd, data, addr)
        heard, records = self.engine.take()
        for session in heard:
            server._keepalive.heard(session, session.udp_address, now)
        for session, ssrc, sequence, timestamp, opus, marker, address in records:
            self._record(session, ssrc, sequence, timestamp, opus, marker, now, address)
        for data, addr in slow:
            try:
                server._on_datagram(data, addr, now)
            except Exception:  # the server must survive whatever arrives
                _log.exception("voice server failed on a datagram from %s", addr)
        server._notify()

    def _record(self, session: ServerSession, ssrc: int, sequence: int, timestamp: int, opus: bytes,
                marker: bool, now: float, addr: tuple[str, int]) -> None:
        server = self._server
        received = ReceivedPacket(ssrc, session.user_id, sequence, timestamp, opus, marker, now, addr)
        session.packets.record(received)
        recording = server._packets.get(ssrc)
        if recording is None:
            recording = server._packets[ssrc] = Recording(server.record_packets)
        recording.record(received)

    def close(self) -> None:
        """Release the engine's resources."""
        self.engine.close()

    # -- the Python path -------------------------------------------------------------

    def new_key(self, session: ServerSession) -> None:
        """``session`` was given a new mode and key (Session Description): forget the old crypto."""
        self._depacketizers.pop(session, None)
        self._packetizers.pop(session, None)

    def _reject(self, addr: tuple[str, int], reason: str, data: bytes) -> None:
        server = self._server
        server.rejected_datagrams.record(RejectedDatagram(addr, reason, data[:2048], time.monotonic()))
        server._notify()

    def datagram_received(self, data: bytes, addr: tuple[str, int], now: float | None = None) -> None:
        """Take one datagram the server's socket received (``now``: its arrival, monotonic clock)."""
        if now is None:
            now = time.monotonic()
        server = self._server
        if len(data) == 74 and data[0:4] == b"\x00\x01\x00\x46":
            ssrc = struct.unpack_from(">I", data, 4)[0]
            session = server._by_ssrc.get(ssrc)
            if session is not None:
                session.udp_address = addr
                server._keepalive.heard(session, addr, now)
                self.update(session)
            server._udp_send(addr, build_ip_discovery_reply(ssrc, addr[0], addr[1]), faults=False)
            server._notify()
            return
        if len(data) >= 8 and data[0] >> 6 == 2 and 200 <= data[1] <= 204:
            server.rtcp_received.record((addr, bytes(data[:2048])))
            server._notify()
            return
        keepalive = server._keepalive.received(data, addr, now)
        if keepalive is not None:
            if keepalive:
                server._notify()
            else:
                self._reject(addr, "keepalive from an address no session uses", data)
            return
        if len(data) < 12:
            self._reject(addr, f"datagram of {len(data)} bytes is shorter than an RTP header", data)
            return
        ssrc = struct.unpack_from(">I", data, 8)[0]
        session = server._by_ssrc.get(ssrc)
        if session is None:
            self._reject(addr, f"unknown SSRC {ssrc}", data)
            return
        if session.mode is None or session.secret_key is None:
            self._reject(addr, f"SSRC {ssrc} sent audio before Select Protocol", data)
            return
        depacketizer = self._depacketizers.get(session)
        if depacketizer is None:
            depacketizer = self._depacketizers[session] = Depacketizer(session.mode, session.secret_key)
        try:
            packet = depacketizer.depacketize(data)
        except DecryptionFailedError as exc:
            self._reject(addr, f"SSRC {ssrc}: {exc}", data)
            return
        if packet is None:
            self._reject(addr, "not an RTP audio packet", data)
            return
        if session.udp_address != addr:
            session.udp_address = addr
            self.update(session)
        server._keepalive.heard(session, addr, now)
        if session.speaking is None:
            session.audio_before_speaking += 1
        recording = self.engine.recording
        if recording != "off":
            self.audio_counts[ssrc] += 1
        if recording == "full":
            self._record(session, ssrc, packet.sequence, packet.timestamp, packet.opus, packet.marker, now, addr)
        group = server.dave.groups.get((session.guild_id, session.channel_id))
        if (
            group is not None
            and group.protocol_version > 0
            and session.user_id in group.members
            and packet.opus != SILENCE_AUDIO_FRAME
            and not is_dave_frame(packet.opus)
        ):
            session.dave_plaintext_packets += 1
        self.forward(session, packet)
        server._notify()

    def forward(self, sender: ServerSession, packet: Packet) -> None:
        """Send ``packet`` from ``sender`` to every other member of its call that can take it."""
        server = self._server
        # As Discord's SFU: DAVE frames never go to a member that cannot decrypt them.
        ciphertext = bool(server.dave.groups) and is_dave_frame(packet.opus)
        for member in server.call_members(sender.guild_id, sender.channel_id):
            if member is sender or member.udp_address is None or member.mode is None or member.secret_key is None:
                continue
            if ciphertext and not member.max_dave_protocol_version:
                member.dave_frames_withheld += 1
                continue
            packetizers = self._packetizers.setdefault(member, {})
            packetizer = packetizers.get(sender.ssrc)
            if packetizer is None:
                packetizer = packetizers[sender.ssrc] = Packetizer(sender.ssrc, member.mode, member.secret_key)
            packetizer.sequence = packet.sequence
            packetizer.timestamp = packet.timestamp
            server._udp_send(member.udp_address, packetizer.packetize(packet.opus, marker=packet.marker))


# The Python path's steps as defined (see MediaForwarder.hooked).
_PYTHON_PATH: tuple[Any, Any] = (MediaForwarder.datagram_received, MediaForwarder.forward)
