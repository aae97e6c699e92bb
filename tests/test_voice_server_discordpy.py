"""Fidelity of the local voice server, checked with an independent client: discord.py 2.7's voice stack.

discord.py's real ``VoiceClient`` / ``VoiceConnectionState`` / ``DiscordVoiceWebSocket`` run unchanged
over ``wss://`` (the self-signed certificate trusted through the aiohttp session discord.py's HTTP
client would hold), with permessage-deflate as discord.py asks for it, its heartbeat thread, its UDP
socket reader thread and its IP discovery.  Only the bot's main gateway and Discord's REST login are
stood in for: ``Guild.change_voice_state`` goes to the server's ``MainGatewayStandIn``, which answers
with the VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE dispatches.
"""

from __future__ import annotations

import asyncio
import struct
import types

import aiohttp
import pytest

discord = pytest.importorskip("discord")
pytest.importorskip("davey")

from discord.gateway import DiscordClientWebSocketResponse  # noqa: E402
from discord.voice_state import ConnectionFlowState  # noqa: E402

from fastvoice.gateway import Gateway, GatewayConfig  # noqa: E402
from fastvoice.gateway_messages import (  # noqa: E402
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSelectProtocolData,
    Opcode,
    Protocol,
)
from fastvoice.ipdiscovery import build_ip_discovery_request, parse_ip_discovery_response  # noqa: E402
from fastvoice.rtp import Depacketizer  # noqa: E402
from fastvoice.testing import VoiceServer  # noqa: E402

GUILD = 81384788765712384
CHANNEL = 81384788765712385
BOT = 159985870458322944
OTHER = 159985870458322945


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait(data)


async def make_discordpy_voice_client(server: VoiceServer, http_session: aiohttp.ClientSession):
    loop = asyncio.get_running_loop()
    # discord.py's 4015 resume path sends op 4 again and goes on only once it has seen both updates;
    # with VOICE_STATE_UPDATE first it waits until its timeout, so the server update comes first here.
    main = server.main_gateway(BOT, server_update_first=True)
    http = discord.http.HTTPClient(loop)
    # what HTTPClient.static_login would have set up, minus the REST login
    http._HTTPClient__session = http_session
    removed: list[int] = []
    connection_state = types.SimpleNamespace(
        loop=loop,
        http=http,
        user=types.SimpleNamespace(id=BOT),
        _remove_voice_client=removed.append,
    )
    client = types.SimpleNamespace(_connection=connection_state)

    async def change_voice_state(*, channel, self_mute: bool = False, self_deaf: bool = False, **_) -> None:
        await main.update_voice_state(GUILD, None if channel is None else channel.id, self_mute, self_deaf)

    guild = types.SimpleNamespace(id=GUILD, me=types.SimpleNamespace(voice=None), change_voice_state=change_voice_state)
    channel = types.SimpleNamespace(id=CHANNEL, guild=guild)
    guild.get_channel = lambda channel_id: channel if channel_id == CHANNEL else None
    channel._get_voice_client_key = lambda: (GUILD, "guild_id")
    vc = discord.VoiceClient(client, channel)
    main.attach(on_voice_state_update=vc.on_voice_state_update, on_voice_server_update=vc.on_voice_server_update)
    return vc, main


@pytest.fixture
async def server():
    async with VoiceServer(tls=True, heartbeat_interval=150.0, seed=3) as srv:
        yield srv


@pytest.fixture
async def http_session(server):
    connector = aiohttp.TCPConnector(ssl=server.ssl_context)
    async with aiohttp.ClientSession(connector=connector, ws_response_class=DiscordClientWebSocketResponse) as s:
        yield s


async def test_discordpy_handshake_heartbeat_and_audio(server, http_session):
    vc, main = await make_discordpy_voice_client(server, http_session)
    peer = Gateway(config=GatewayConfig(ssl=server.ssl_context))
    try:
        await vc.connect(reconnect=True, timeout=10.0)
        assert vc.is_connected()
        assert main.requests == [(GUILD, CHANNEL, False, False)]
        session = server.session_for_user(BOT)
        conn = session.connection
        # discord.py's Identify, as the server decoded it: v8 with DAVE offered, snowflakes as strings
        identify = conn.messages_in(Opcode.IDENTIFY)[0].data
        assert identify["server_id"] == str(GUILD) and identify["user_id"] == str(BOT)
        assert identify["session_id"] == session.session_id
        assert identify["max_dave_protocol_version"] == 1
        # Ready -> discord.py's IP discovery over its own UDP socket -> Select Protocol -> key
        assert vc.ssrc == session.ssrc
        assert session.udp_address is not None
        assert session.announced_address == session.udp_address  # what our discovery reply told it
        assert session.mode == "aead_xchacha20_poly1305_rtpsize"  # its first supported offered mode
        assert bytes(vc.secret_key) == session.secret_key
        # discord.py announces its SSRC with speaking 0 on the Session Description, and connect()
        # returns once it has written that op 5: nothing acknowledges it, so the server may read
        # it a moment later (on 3.12+, whose asyncio.wait_for adds no task, connect() returns
        # two loop iterations before the server's reader runs).
        await server.wait_for(lambda: session.speaking is not None, timeout=5)
        assert session.speaking == 0
        assert session.channel_id == CHANNEL
        # heartbeats {t, seq_ack} acknowledged: discord.py measures a latency
        await server.wait_for(lambda: len(conn.messages_in(Opcode.HEARTBEAT)) >= 2, timeout=5)
        beat = conn.messages_in(Opcode.HEARTBEAT)[-1].data
        assert set(beat) == {"t", "seq_ack"} and beat["seq_ack"] == session.seq
        await server.wait_for(lambda: vc.latency != float("inf"), timeout=5)
        assert 0 <= vc.latency < 1.0

        # discord.py's own packet builder: the server decrypts it
        vc.sequence, vc.timestamp = 7, 960 * 7
        vc._connection.send_packet(vc._get_voice_packet(b"\xf8\xff\xfe-discordpy"))
        await server.wait_for(lambda: server.packets(session.ssrc))
        received = server.packets(session.ssrc)[0]
        assert (received.opus, received.sequence, received.timestamp) == (b"\xf8\xff\xfe-discordpy", 7, 6720)

        # a second member (fastvoice's gateway + a UDP socket) joins the same call: discord.py takes
        # the op 11 in its stride, and the server forwards discord.py's audio under the peer's own key
        await peer.open(server.make_state(GUILD, OTHER, CHANNEL))
        other = server.session_for_user(OTHER)
        assert [m.data for m in other.connection.messages_out(Opcode.CLIENTS_CONNECT)] == [{"user_ids": [str(BOT)]}]
        await server.wait_for(lambda: conn.messages_out(Opcode.CLIENTS_CONNECT))
        assert conn.messages_out(Opcode.CLIENTS_CONNECT)[0].data == {"user_ids": [str(OTHER)]}
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Inbox(inbox), remote_addr=("127.0.0.1", server.udp_port)
        )
        try:
            transport.sendto(build_ip_discovery_request(peer.ssrc))
            address, port = parse_ip_discovery_response(await asyncio.wait_for(inbox.get(), 2), peer.ssrc)
            await peer.send(
                Opcode.SELECT_PROTOCOL,
                GatewayMessageDataSelectProtocol(
                    Protocol.UDP, GatewayMessageDataSelectProtocolData(address, port, "aead_aes256_gcm_rtpsize")
                ),
            )
            await server.wait_for(lambda: other.secret_key is not None)
            vc._connection.send_packet(vc._get_voice_packet(b"to the other member"))
            forwarded = Depacketizer("aead_aes256_gcm_rtpsize", other.secret_key).depacketize(
                await asyncio.wait_for(inbox.get(), 2)
            )
            assert (forwarded.ssrc, forwarded.opus, forwarded.sequence) == (vc.ssrc, b"to the other member", 7)
        finally:
            transport.close()
        assert vc.is_connected()
    finally:
        await peer.close()
        await vc.disconnect(force=True)
    await server.wait_for(lambda: server.session_for_user(BOT).ended)
    assert main.requests[-1][1] is None


async def test_discordpy_resume_after_4015_on_the_wire(server, http_session):
    vc, _ = await make_discordpy_voice_client(server, http_session)
    try:
        await vc.connect(reconnect=True, timeout=10.0)
        session = server.session_for_user(BOT)
        seq_before = session.seq
        await session.close(4015, "voice server crashed")
        await server.wait_for(lambda: len(session.connections) == 2 and session.connection is not None, timeout=10)
        resume = session.connections[1].messages_in(Opcode.RESUME)
        assert resume, [m.op for m in session.connections[1].messages]
        assert resume[0].data["seq_ack"] == seq_before
        assert resume[0].data["session_id"] == session.session_id
        await server.wait_for(lambda: session.connections[1].messages_out(Opcode.RESUMED))
        # Nothing was missed, so nothing is re-delivered after Resumed.  discord.py 2.7 then waits for a
        # Session Description on the new socket (its handshake waits for a fresh secret key), which a
        # resume does not bring: it stays in got_ip_discovery until its connect timeout.
        await asyncio.sleep(0.3)
        assert [m.seq for m in session.connections[1].messages_out() if m.seq is not None] == []
        assert vc._connection.state is ConnectionFlowState.got_ip_discovery
    finally:
        await vc.disconnect(force=True)


async def test_discordpy_is_refused_with_4017_when_dave_is_required_and_off(server, http_session, monkeypatch):
    server.require_dave = True
    monkeypatch.setattr(discord.voice_state.VoiceConnectionState, "max_dave_protocol_version", property(lambda s: 0))
    vc, _ = await make_discordpy_voice_client(server, http_session)
    try:
        with pytest.raises(discord.errors.ConnectionClosed) as info:
            await vc.connect(reconnect=False, timeout=5.0)
        assert info.value.code == 4017
        assert server.connections[0].close_code == 4017
        assert vc._connection.state is ConnectionFlowState.disconnected
    finally:
        await vc.disconnect(force=True)


def test_discovery_reply_matches_discordpy_parser():
    # discord.py reads the address from byte 8 to the first NUL and the port from the last two bytes
    from fastvoice.testing import build_ip_discovery_reply

    reply = build_ip_discovery_reply(5, "203.0.113.9", 50123)
    end = reply.index(0, 8)
    assert reply[8:end].decode("ascii") == "203.0.113.9"
    assert struct.unpack_from(">H", reply, len(reply) - 2)[0] == 50123
    assert reply[1] == 0x02 and len(reply) == 74
