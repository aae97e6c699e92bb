"""The local voice server: UDP media (IP discovery, SFU forwarding), call membership, knobs and recordings."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import aiohttp
import pytest

from fastvoice.gateway import Gateway, GatewayConfig, Status
from fastvoice.gateway_messages import (
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSelectProtocolData,
    GatewayMessageDataSessionDescription,
    GatewayMessageDataSpeaking,
    Opcode,
    Protocol,
    SpeakingFlags,
)
from fastvoice.ipdiscovery import build_ip_discovery_request, parse_ip_discovery_response
from fastvoice.rtp import Depacketizer, Packetizer
from fastvoice.testing import VoiceServer, build_ip_discovery_reply, build_rtcp_receiver_report

GUILD = 10
ALICE = 1001
BOB = 1002
CAROL = 1003


class UDPPeer(asyncio.DatagramProtocol):
    """A client UDP socket that queues what it receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait(data)

    @classmethod
    async def open(cls, port: int) -> UDPPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, remote_addr=("127.0.0.1", port))
        return peer

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def drain(self, wait: float = 0.1) -> list[bytes]:
        await asyncio.sleep(wait)
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """A minimal voice client: gateway + UDP, enough to exercise the server."""

    def __init__(self, server: VoiceServer, user_id: int, mode: str = "aead_xchacha20_poly1305_rtpsize") -> None:
        self.server = server
        self.user_id = user_id
        self.mode = mode
        self.events: list[tuple[int, object]] = []
        self.gateway = Gateway(lambda op, d: self.events.append((op, d)), None,
                               GatewayConfig(backoff_base=0.01, backoff_max=0.05))
        self.udp: UDPPeer | None = None
        self.key: bytes | None = None

    def of(self, op: int) -> list:
        return [d for o, d in self.events if o == op]

    async def connect(self, *, speak: bool = True, guild: int = GUILD, channel: int | None = None) -> Client:
        await self.gateway.open(self.server.make_state(guild, self.user_id, channel))
        self.udp = await UDPPeer.open(self.server.udp_port)
        self.udp.send(build_ip_discovery_request(self.gateway.ssrc))
        address, port = parse_ip_discovery_response(await self.udp.recv(), self.gateway.ssrc)
        await self.gateway.send(
            Opcode.SELECT_PROTOCOL,
            GatewayMessageDataSelectProtocol(Protocol.UDP, GatewayMessageDataSelectProtocolData(address, port, self.mode)),
        )
        await self.server.wait_for(lambda: self.of(Opcode.SESSION_DESCRIPTION))
        description = self.of(Opcode.SESSION_DESCRIPTION)[0]
        assert isinstance(description, GatewayMessageDataSessionDescription)
        self.key = description.secret_key
        self.packetizer = Packetizer(self.gateway.ssrc, self.mode, self.key)
        self.depacketizer = Depacketizer(self.mode, self.key)
        if speak:
            await self.gateway.send(
                Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE, self.gateway.ssrc, delay=0)
            )
        return self

    def send_audio(self, opus: bytes) -> None:
        assert self.udp is not None
        self.udp.send(self.packetizer.packetize(opus))

    async def close(self) -> None:
        await self.gateway.close()
        if self.udp is not None:
            self.udp.close()


@pytest.fixture
async def server():
    async with VoiceServer(heartbeat_interval=1000.0, seed=7) as srv:
        yield srv


async def test_ip_discovery_reply_format(server):
    peer = await UDPPeer.open(server.udp_port)
    try:
        peer.send(build_ip_discovery_request(0xDEADBEEF))
        reply = await peer.recv()
        local_port = peer.transport.get_extra_info("sockname")[1]
        assert len(reply) == 74
        assert reply[:8] == struct.pack(">HHI", 2, 70, 0xDEADBEEF)
        assert reply[8:72].rstrip(b"\x00") == b"127.0.0.1"
        assert struct.unpack(">H", reply[72:])[0] == local_port
        assert parse_ip_discovery_response(reply, 0xDEADBEEF) == ("127.0.0.1", local_port)
        assert reply == build_ip_discovery_reply(0xDEADBEEF, "127.0.0.1", local_port)
    finally:
        peer.close()


async def test_audio_is_recorded_and_forwarded_with_each_members_key_and_mode(server):
    alice = await Client(server, ALICE, "aead_xchacha20_poly1305_rtpsize").connect()
    bob = await Client(server, BOB, "aead_aes256_gcm_rtpsize").connect()
    try:
        alice.packetizer.sequence = 65534  # forwarded sequence numbers wrap like the sender's
        alice.packetizer.timestamp = 2**32 - 960
        frames = [bytes([i]) * (20 + i) for i in range(4)]
        started = time.monotonic()
        for frame in frames:
            alice.send_audio(frame)
        got = [await bob.udp.recv() for _ in frames]
        # Bob decrypts with HIS key and mode; the SSRC, sequence and timestamp are Alice's
        packets = [bob.depacketizer.depacketize(d) for d in got]
        assert [p.opus for p in packets] == frames
        assert [p.ssrc for p in packets] == [alice.gateway.ssrc] * 4
        assert [p.sequence for p in packets] == [65534, 65535, 0, 1]
        assert [p.timestamp for p in packets] == [2**32 - 960, 0, 960, 1920]
        with pytest.raises(Exception):
            Depacketizer(alice.mode, alice.key).depacketize(got[0])  # not Alice's key
        # the server's recording, per SSRC
        recorded = server.packets(alice.gateway.ssrc)
        assert [r.opus for r in recorded] == frames
        assert [r.sequence for r in recorded] == [65534, 65535, 0, 1]
        assert all(r.user_id == ALICE for r in recorded)
        assert all(started <= r.arrival <= time.monotonic() for r in recorded)
        assert [r.arrival for r in recorded] == sorted(r.arrival for r in recorded)
        # nothing echoes back to the sender
        assert await alice.udp.drain() == []
    finally:
        await alice.close()
        await bob.close()


async def test_speaking_clients_connect_and_disconnect(server):
    alice = await Client(server, ALICE).connect()
    bob = await Client(server, BOB).connect()
    try:
        await server.wait_for(lambda: alice.of(Opcode.CLIENTS_CONNECT) and alice.of(Opcode.SPEAKING))
        assert alice.of(Opcode.CLIENTS_CONNECT)[0].user_ids == [BOB]
        assert bob.of(Opcode.CLIENTS_CONNECT)[0].user_ids == [ALICE]
        # Bob joined after Alice spoke: he learns her SSRC -> user map too
        bob_speaking = bob.of(Opcode.SPEAKING)
        assert bob_speaking[0].user_id == ALICE and bob_speaking[0].ssrc == alice.gateway.ssrc
        relayed = alice.of(Opcode.SPEAKING)[0]
        assert (relayed.user_id, relayed.ssrc, relayed.speaking) == (BOB, bob.gateway.ssrc, SpeakingFlags.MICROPHONE)
        # server-form Speaking carries user_id and no delay
        wire = [m for m in server.session_for_user(ALICE).connection.messages_out(Opcode.SPEAKING)][0]
        assert wire.data == {"speaking": 1, "ssrc": bob.gateway.ssrc, "user_id": str(BOB)}
        assert len(server.call_members(GUILD)) == 2
        await bob.close()
        await server.wait_for(lambda: alice.of(Opcode.CLIENT_DISCONNECT))
        assert alice.of(Opcode.CLIENT_DISCONNECT)[0].user_id == BOB
        assert [s.user_id for s in server.call_members(GUILD)] == [ALICE]
    finally:
        await alice.close()
        await bob.close()


async def test_channels_are_separate_calls(server):
    alice = await Client(server, ALICE).connect(channel=1)
    carol = await Client(server, CAROL).connect(channel=2)
    try:
        alice.send_audio(b"only for channel one")
        await server.wait_for(lambda: server.packets(alice.gateway.ssrc))
        assert await carol.udp.drain() == []
        assert carol.of(Opcode.CLIENTS_CONNECT) == []
    finally:
        await alice.close()
        await carol.close()


async def test_every_message_has_seq_and_recordings_are_complete(server):
    alice = await Client(server, ALICE).connect()
    try:
        session = server.session_for_user(ALICE)
        await server.wait_for(lambda: session.connection.messages_in(Opcode.SPEAKING))
        out = session.connection.messages_out()
        seq_ops = [(m.op, m.seq) for m in out if m.seq is not None]
        assert seq_ops == [(Opcode.READY, 1), (Opcode.SESSION_DESCRIPTION, 2)]
        # connection-level messages (Hello, ACK) carry no seq
        assert out[0].op == Opcode.HELLO and out[0].seq is None
        raw_ready = json.loads([m for m in out if m.op == Opcode.READY][0].raw)
        assert raw_ready["seq"] == 1 and raw_ready["d"]["ssrc"] == session.ssrc
        ins = [m.op for m in session.connection.messages_in() if m.op != Opcode.HEARTBEAT]
        assert ins == [Opcode.IDENTIFY, Opcode.SELECT_PROTOCOL, Opcode.SPEAKING]
        assert session.messages == session.connection.messages
    finally:
        await alice.close()


async def test_offered_modes_and_unknown_mode_closes_4016(server):
    server.modes = ["aead_xchacha20_poly1305_rtpsize"]
    errors = []
    events = []
    gw = Gateway(lambda op, d: events.append((op, d)), lambda g, e: errors.append(e), GatewayConfig())
    await gw.open(server.make_state(GUILD, ALICE))
    assert [d for op, d in events if op == Opcode.READY][0].modes == ["aead_xchacha20_poly1305_rtpsize"]
    await gw.send(
        Opcode.SELECT_PROTOCOL,
        GatewayMessageDataSelectProtocol(
            Protocol.UDP, GatewayMessageDataSelectProtocolData("127.0.0.1", 1, "aead_aes256_gcm_rtpsize")
        ),
    )
    await server.wait_for(lambda: errors)
    assert server.connections[0].close_code == 4016
    assert errors[0].code == 4016 and "Unknown encryption mode" in str(errors[0])
    await gw.close()


async def test_require_dave_closes_4017(server):
    server.require_dave = True
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/?v=8") as ws:
        hello = await ws.receive_json()
        assert hello == {"op": 8, "d": {"heartbeat_interval": 1000.0}}
        await ws.send_json({"op": 0, "d": {"server_id": "1", "user_id": "2", "session_id": "s", "token": "t"}})
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4017


@pytest.mark.parametrize(
    "frames, code",
    [
        (['{"op": 5, "d": {"speaking": 1, "ssrc": 1}}'], 4003),
        (['{"op": 0, "d": {"server_id": "1", "user_id": "2", "session_id": "s", "token": "t"}}',
          '{"op": 0, "d": {"server_id": "1", "user_id": "2", "session_id": "s", "token": "t"}}'], 4005),
        (['{"op": 77, "d": {}}'], 4001),
        (["{{{"], 4002),
        (['{"op": 0, "d": {"server_id": "x"}}'], 4002),
        (['{"op": 7, "d": {"server_id": "1", "session_id": "nope", "token": "t", "seq_ack": 0}}'], 4006),
        (['{"op": 0, "d": {"server_id": "1", "user_id": "2", "session_id": "s", "token": "t"}}',
          '{"op": 1, "d": {"protocol": "tcp", "data": {"address": "1.2.3.4", "port": 1, '
          '"mode": "aead_aes256_gcm_rtpsize"}}}'], 4012),
    ],
)
async def test_protocol_errors_close_with_discords_codes(server, frames, code):
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await ws.receive_json()
        for frame in frames:
            await ws.send_str(frame)
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == code


async def test_strict_auth_and_voice_updates(server):
    server.strict_auth = True
    state_update, server_update = server.voice_updates(GUILD, ALICE, 55)
    assert state_update["guild_id"] == str(GUILD) and state_update["channel_id"] == "55"
    assert state_update["user_id"] == str(ALICE) and state_update["session_id"]
    # a plain-websocket server says so in the endpoint (a bare one means wss:// to clients)
    assert server_update == {"token": server_update["token"], "guild_id": str(GUILD), "endpoint": server.url}
    assert server.url == "ws://" + server.endpoint
    good = server.make_state(GUILD, ALICE, 55)
    gw = Gateway(None, None, GatewayConfig(backoff_base=0.01))
    await gw.open(good)
    assert server.session_for_user(ALICE).channel_id == 55
    await gw.close()
    bad = server.make_state(GUILD, BOB)
    bad.token = "wrong"
    with pytest.raises(Exception) as info:
        await Gateway(None, None, GatewayConfig()).open(bad)
    assert getattr(info.value, "code", None) == 4004


async def test_close_after_messages_and_seconds(server):
    gw = Gateway(None, None, GatewayConfig(auto_reconnect=False))
    server.close_next_connection(4014, after_messages=2)  # after Identify and one more (heartbeats aside)
    await gw.open(server.make_state(GUILD, ALICE))
    await gw.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.NONE, gw.ssrc, delay=0))
    await server.wait_for(lambda: server.connections[0].closed)
    assert server.connections[0].close_code == 4014
    await gw.close()

    gw = Gateway(None, None, GatewayConfig(auto_reconnect=False))
    await gw.open(server.make_state(GUILD, BOB))
    started = time.monotonic()
    server.session_for_user(BOB).close_after(4022, seconds=0.2)
    await server.wait_for(lambda: server.connections[1].closed)
    assert 0.15 < time.monotonic() - started < 2
    assert server.connections[1].close_code == 4022
    await gw.close()


async def test_udp_fault_knobs(server):
    alice = await Client(server, ALICE).connect()
    bob = await Client(server, BOB).connect()
    try:
        server.udp_loss = 1.0
        alice.send_audio(b"lost")
        await server.wait_for(lambda: len(server.packets(alice.gateway.ssrc)) == 1)
        assert await bob.udp.drain() == []

        server.udp_loss = 0.0
        server.udp_duplicate = 1.0
        alice.send_audio(b"twice")
        twice = [await bob.udp.recv(), await bob.udp.recv()]
        assert [bob.depacketizer.depacketize(d).opus for d in twice] == [b"twice", b"twice"]

        server.udp_duplicate = 0.0
        server.udp_reorder = 1.0
        alice.send_audio(b"first")
        alice.send_audio(b"second")
        got = [bob.depacketizer.depacketize(await bob.udp.recv()).opus for _ in range(2)]
        assert got == [b"second", b"first"]

        server.udp_reorder = 0.0
        server.udp_delay = 0.15
        sent = time.monotonic()
        alice.send_audio(b"late")
        late = await bob.udp.recv()
        assert time.monotonic() - sent >= 0.14
        assert bob.depacketizer.depacketize(late).opus == b"late"
    finally:
        await alice.close()
        await bob.close()


async def test_injection_and_garbage_from_clients(server):
    alice = await Client(server, ALICE).connect()
    try:
        session = server.session_for_user(ALICE)
        await session.inject_datagram(build_rtcp_receiver_report(1234))
        rtcp = await alice.udp.recv()
        assert rtcp[1] == 201 and alice.depacketizer.depacketize(rtcp) is None
        await session.inject_datagram(os.urandom(40))
        assert len(await alice.udp.recv()) == 40

        # what clients send that the server cannot use is recorded, never raised
        alice.udp.send(b"\x01\x02")
        alice.udp.send(build_rtcp_receiver_report(alice.gateway.ssrc))
        alice.udp.send(b"\x80\x78" + b"\x00" * 6 + struct.pack(">I", 999) + b"x" * 30)  # unknown SSRC
        forged = bytearray(alice.packetizer.packetize(b"opus"))
        forged[-6] ^= 0xFF
        alice.udp.send(bytes(forged))
        alice.udp.send(b"\x80\x78" + os.urandom(10) + os.urandom(50))
        await server.wait_for(lambda: len(server.rejected_datagrams) >= 4 and server.rtcp_received)
        assert server.rtcp_received[0][1] == build_rtcp_receiver_report(alice.gateway.ssrc)
        reasons = [r.reason for r in server.rejected_datagrams]
        assert "shorter than an RTP header" in reasons[0]
        assert "unknown SSRC 999" in reasons[1]
        assert "authentication failed" in reasons[2]
        assert server.packets(alice.gateway.ssrc) == []
        # and it still works
        alice.send_audio(b"fine")
        await server.wait_for(lambda: server.packets(alice.gateway.ssrc))
    finally:
        await alice.close()


async def test_audio_before_speaking_is_counted(server):
    alice = await Client(server, ALICE).connect(speak=False)
    try:
        alice.send_audio(b"early")
        await server.wait_for(lambda: server.packets(alice.gateway.ssrc))
        assert server.session_for_user(ALICE).audio_before_speaking == 1
    finally:
        await alice.close()


async def test_server_close_leaves_nothing_behind():
    await asyncio.sleep(0)
    fds = len(os.listdir("/proc/self/fd"))
    tasks = asyncio.all_tasks()
    async with VoiceServer(tls=True, heartbeat_interval=100.0) as server:
        gw = Gateway(None, None, GatewayConfig(ssl=server.ssl_context, auto_reconnect=False))
        await gw.open(server.make_state(GUILD, ALICE))
        cert = server.ca_file
        assert os.path.exists(cert)
        server.udp_delay = 10.0  # a pending delayed datagram must not outlive the server
        server._udp_send(("127.0.0.1", 9), b"x")
    # the server went away under the client: it reports 1001 and stops (auto-reconnect off)
    await asyncio.sleep(0.05)
    await gw.close()
    await asyncio.sleep(0.05)
    assert not os.path.exists(cert)
    assert asyncio.all_tasks() == tasks
    assert len(os.listdir("/proc/self/fd")) == fds
    assert gw.status is Status.DISCONNECTED


async def test_dropped_session_stays_resumable_until_it_expires(server):
    server.session_timeout = 0.3
    errors: list[BaseException] = []
    alice = Gateway(None, lambda g, e: errors.append(e), GatewayConfig(auto_reconnect=False))
    bob = Client(server, BOB)
    await alice.open(server.make_state(GUILD, ALICE))
    await bob.connect()
    try:
        session = server.session_for_user(ALICE)
        session.drop()
        await server.wait_for(lambda: errors)
        assert errors[0].code is None  # no close frame: a transport drop
        assert not session.ended and bob.of(Opcode.CLIENT_DISCONNECT) == []
        await server.wait_for(lambda: bob.of(Opcode.CLIENT_DISCONNECT), timeout=2)
        assert session.ended and bob.of(Opcode.CLIENT_DISCONNECT)[0].user_id == ALICE
        # too late to resume: 4006
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
            await ws.receive_json()
            await ws.send_json({"op": 7, "d": {"server_id": str(GUILD), "session_id": session.session_id,
                                               "token": session.token, "seq_ack": 1}})
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4006
    finally:
        await alice.close()
        await bob.close()


async def test_random_client_frames_never_break_the_server(server, caplog):
    import logging
    import random

    rng = random.Random(1234)

    def random_value(depth: int = 0):
        kind = rng.randrange(7 if depth < 2 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False, -1, 0, 2**64, 1.5, rng.randrange(-10, 10**6)])
        if kind == 2:
            return rng.choice(["", "udp", "aead_aes256_gcm_rtpsize", "1", "x" * 50])
        if kind == 3:
            return str(rng.randrange(10**20))
        if kind == 4:
            return rng.randrange(2**32)
        if kind == 5:
            return [random_value(depth + 1) for _ in range(rng.randrange(4))]
        keys = ["server_id", "user_id", "session_id", "token", "protocol", "data", "address", "port", "mode",
                "speaking", "ssrc", "t", "seq_ack", "transition_id", "max_dave_protocol_version"]
        return {rng.choice(keys): random_value(depth + 1) for _ in range(rng.randrange(6))}

    closes = []
    with caplog.at_level(logging.ERROR, logger="fastvoice.testing"):
        async with aiohttp.ClientSession() as http:
            for _ in range(25):
                async with http.ws_connect(server.url) as ws:
                    await ws.receive_json()
                    if rng.random() < 0.5:  # half the runs start from a real session
                        await ws.send_json({"op": 0, "d": {"server_id": str(GUILD), "user_id": str(rng.randrange(1, 99)),
                                                           "session_id": "s", "token": "t"}})
                    for _ in range(8):
                        if rng.random() < 0.2:
                            await ws.send_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(12))))
                        else:
                            await ws.send_str(json.dumps({"op": rng.randrange(0, 40), "d": random_value()}))
                    try:
                        while True:
                            msg = await asyncio.wait_for(ws.receive(), 0.2)
                            if msg.type is not aiohttp.WSMsgType.TEXT:
                                break
                    except asyncio.TimeoutError:
                        msg = None
                    closes.append(msg.data if msg is not None and msg.type is aiohttp.WSMsgType.CLOSE else None)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    # every run that ended did so with one of Discord's codes
    assert all(code is None or 4001 <= code <= 4022 for code in closes), closes
    assert any(code is not None for code in closes)
    # and the server still serves a normal client
    alice = await Client(server, ALICE).connect()
    await alice.close()


#: The largest frame the server accepts (``max_msg_size`` of its websocket); larger ones close 1009.
SERVER_MAX_MESSAGE = 1024 * 1024


def masked_frame_header(length: int, *, binary: bool) -> bytes:
    """The header of a final, masked client frame announcing ``length`` payload bytes."""
    return struct.pack(">BBQ", 0x82 if binary else 0x81, 0x80 | 127, length) + os.urandom(4)


def raw_transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Transport:
    """The TCP transport under an aiohttp client websocket: aiohttp has no public way to write raw bytes."""
    transport = ws._response.connection.transport
    assert transport is not None and not transport.is_closing()
    return transport


@pytest.mark.parametrize("how", ["binary header only", "text header only", "whole frame"])
async def test_an_oversized_client_frame_closes_1009_at_once_and_the_server_serves_on(server, caplog, how):
    import logging

    state_update, server_update = server.voice_updates(GUILD, ALICE)
    with caplog.at_level(logging.ERROR, logger="fastvoice.testing"):
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as bystander:
            # A member of a call, connected before the hostile client and still there after it.
            await bystander.receive_json()  # Hello
            await bystander.send_json({"op": 0, "d": {"server_id": str(GUILD), "user_id": str(ALICE),
                                                      "session_id": state_update["session_id"],
                                                      "token": server_update["token"]}})
            ready = await bystander.receive_json()
            assert ready["op"] == Opcode.READY
            async with http.ws_connect(server.url) as hostile:
                await hostile.receive_json()  # Hello
                hostile_conn = server.connections[-1]
                sent_at = time.monotonic()
                if how == "whole frame":
                    await hostile.send_bytes(bytes(SERVER_MAX_MESSAGE + 1))
                else:
                    # 1 TiB announced and no payload: only a server that refuses from the header
                    # alone closes now; one that waits for (or buffers) the payload never does.
                    raw_transport(hostile).write(masked_frame_header(1 << 40, binary=how.startswith("binary")))
                msg = await asyncio.wait_for(hostile.receive(), 2.0)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009  # message too big
                assert time.monotonic() - sent_at < 2.0
                await server.wait_for(lambda: hostile_conn.closed, timeout=2.0)
                assert hostile_conn.closed_at - sent_at < 0.5
                assert hostile_conn.messages_in() == []  # nothing of the frame reached the handlers
                assert hostile_conn.close_code == 1009  # recorded as the server's close
            # The bystander's session goes on: its heartbeats are still acknowledged.
            await bystander.send_json({"op": 3, "d": {"t": 1234, "seq_ack": ready["seq"]}})
            ack = await asyncio.wait_for(bystander.receive_json(), 2.0)
            assert ack == {"op": Opcode.HEARTBEAT_ACK, "d": {"t": 1234}}
        assert server.session_for_user(ALICE).connections[0].close_code == 1000  # closed by the bystander
        # And a new client connects, gets its key and streams.
        bob = await Client(server, BOB).connect()
        try:
            bob.send_audio(b"\xf8\xff\xfe")
            await server.wait_for(lambda: server.packets(bob.gateway.ssrc))
        finally:
            await bob.close()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_server_knobs_reject_bad_values_by_name():
    with pytest.raises(ValueError, match="heartbeat_interval"):
        VoiceServer(heartbeat_interval=0)
    with pytest.raises(ValueError, match="at least one"):
        VoiceServer(modes=[])
    server = VoiceServer()
    for knob in ("udp_loss", "udp_duplicate", "udp_reorder"):
        with pytest.raises(ValueError, match=f"{knob} must be a probability in 0..1, got 1.5"):
            setattr(server, knob, 1.5)
    with pytest.raises(ValueError, match="udp_delay"):
        server.udp_delay = -1
    server.udp_loss = 0.25
    assert server.udp_loss == 0.25


class _UpdateSink:
    """Something that handles the two voice dispatches, as a Manager will."""

    def __init__(self) -> None:
        self.states: list[dict] = []
        self.servers: list[dict] = []
        self.order: list[str] = []

    def handle_voice_state_update(self, update: dict) -> None:
        self.states.append(update)
        self.order.append("state")

    async def handle_voice_server_update(self, update: dict) -> None:
        self.servers.append(update)
        self.order.append("server")


async def test_main_gateway_stand_in_join_move_leave(server):
    from fastvoice.gateway import State

    main = server.main_gateway(ALICE)
    sink = _UpdateSink()
    main.attach(sink)
    await main.update_voice_state(GUILD, 5, self_mute=True)
    assert sink.states == []  # delivered later, like a real gateway
    await server.wait_for(lambda: sink.states and sink.servers)
    assert sink.order == ["state", "server"]
    state, voice_server = sink.states[0], sink.servers[0]
    assert state["channel_id"] == "5" and state["user_id"] == str(ALICE) and state["self_mute"] is True
    assert voice_server["guild_id"] == str(GUILD) and voice_server["endpoint"] == server.url
    errors: list[BaseException] = []
    gw = Gateway(None, lambda g, e: errors.append(e), GatewayConfig())
    await gw.open(State(GUILD, ALICE, 5, state["session_id"], voice_server["token"], voice_server["endpoint"]))
    try:
        assert server.session_for_user(ALICE).channel_id == 5
        # a move: new token, same session id, and the old voice connection is closed with 4014
        await main.update_voice_state(GUILD, 6)
        await server.wait_for(lambda: len(sink.servers) == 2 and errors)
        assert sink.states[1]["channel_id"] == "6" and sink.states[1]["session_id"] == state["session_id"]
        assert sink.servers[1]["token"] != voice_server["token"]
        assert errors[0].code == 4014 and errors[0].close_event.stop_unless_moved
        await gw.open(State(GUILD, ALICE, 6, state["session_id"], sink.servers[1]["token"], server.url))
        assert server.session_for_user(ALICE).channel_id == 6
        # the old token no longer identifies (strict auth on): only the new one is registered for this guild
        server.strict_auth = True
        with pytest.raises(Exception) as info:
            await Gateway(None, None, GatewayConfig()).open(
                State(GUILD, ALICE, 5, state["session_id"], voice_server["token"], server.url)
            )
        assert getattr(info.value, "code", None) == 4004
        # leaving: a null channel, and the voice connection is closed
        await main.update_voice_state(GUILD, None)
        await server.wait_for(lambda: len(sink.states) == 3 and len(errors) == 2)
        assert sink.states[-1]["channel_id"] is None
        assert errors[1].code == 4014
        assert main.requests == [(GUILD, 5, True, False), (GUILD, 6, False, False), (GUILD, None, False, False)]
    finally:
        await gw.close()


async def test_main_gateway_stand_in_needs_a_target(server):
    main = server.main_gateway(ALICE)
    with pytest.raises(RuntimeError, match="attach"):
        await main.update_voice_state(GUILD, 1)
    with pytest.raises(TypeError, match="handle_voice_state_update"):
        main.attach(on_voice_state_update=lambda d: None)


async def test_udp_receive_buffer_is_enlarged_and_socket_drops_are_counted():
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    default = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    probe.close()
    async with VoiceServer() as server:
        fd = server._udp.get_extra_info("socket").fileno()
        sock = socket.socket(fileno=fd)
        try:
            assert server.udp_receive_buffer == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            limit = _rmem_max()
            if os.geteuid() == 0 or (limit is not None and 2 * limit > default):
                assert server.udp_receive_buffer > default  # SO_RCVBUFFORCE as root, else up to rmem_max
            if server.udp_receive_drops is None:
                pytest.skip("the kernel's per-socket drop counter is not readable here (Linux /proc/net/udp)")
            assert server.udp_receive_drops == 0
            # Shrink the buffer to the kernel's minimum and send a burst while the loop cannot read it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        finally:
            sock.detach()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _ in range(300):
                sender.sendto(b"\x80\x78" + bytes(200), ("127.0.0.1", server.udp_port))
        finally:
            sender.close()
        assert server.udp_receive_drops > 100


def _rmem_max():
    try:
        with open("/proc/sys/net/core/rmem_max") as fh:
            return int(fh.read())
    except OSError:
        return None
