"""The local server's DAVE, checked with an independent client: discord.py 2.7's own DAVE handling.

discord.py's VoiceClient joins a DAVE call on the local VoiceServer next to a fastvoice Conn. Its
davey session must accept the server's external sender, proposals, commits and welcomes, reach the
same group as fastvoice, and its DAVE-encrypted audio must reach fastvoice's receiver decrypted.
"""

from __future__ import annotations

import os

import pytest

discord = pytest.importorskip("discord")
pytest.importorskip("davey")

from test_voice_server_discordpy import BOT, CHANNEL, GUILD, OTHER, make_discordpy_voice_client  # noqa: E402

from _calls import Collect  # noqa: E402
from fastvoice.conn import ConnConfig  # noqa: E402
from fastvoice.gateway import GatewayConfig  # noqa: E402
from fastvoice.manager import Manager  # noqa: E402
from fastvoice.testing import MainGatewayStandIn, VoiceServer  # noqa: E402
from fastvoice.testing._dave import is_dave_frame  # noqa: E402


@pytest.fixture
async def server():
    async with VoiceServer(tls=True, heartbeat_interval=150.0, seed=3, dave_protocol_version=1) as srv:
        yield srv


@pytest.fixture
async def http_session(server):
    import aiohttp
    from discord.gateway import DiscordClientWebSocketResponse

    connector = aiohttp.TCPConnector(ssl=server.ssl_context)
    async with aiohttp.ClientSession(connector=connector, ws_response_class=DiscordClientWebSocketResponse) as s:
        yield s


async def test_discordpy_and_fastvoice_share_a_dave_group(server, http_session):
    vc, _ = await make_discordpy_voice_client(server, http_session)
    main = MainGatewayStandIn(server, OTHER)
    bots = Manager(main.update_voice_state, OTHER, conn_config=ConnConfig(
        open_timeout=5, gateway_config=GatewayConfig(ssl=server.ssl_context, backoff_base=0.05)))
    main.attach(bots)
    sink = Collect()
    try:
        await vc.connect(reconnect=False, timeout=10.0)
        conn = bots.create_conn(GUILD)
        conn.set_opus_frame_receiver(sink)
        await conn.open(CHANNEL)
        dave = vc._connection.dave_session
        await server.wait_for(lambda: dave.ready and conn.dave.e2ee, timeout=5)
        assert dave.epoch == conn.dave.epoch == 1
        assert dave.voice_privacy_code == conn.dave.voice_privacy_code
        # The pairwise verification code is the same seen from discord.py's side and from fastvoice's.
        assert dave.get_verification_code(OTHER) == conn.dave.verification_code(BOT)
        assert conn.dave.verification_codes == {BOT: dave.get_verification_code(OTHER)}
        assert server.dave_group(GUILD, CHANNEL).members == {BOT, OTHER}
        # discord.py executed the transition the server announced.
        await server.wait_for(lambda: not vc._connection.dave_pending_transitions, timeout=5)

        frame = b"\xfc" + os.urandom(50)
        vc._connection.speaking = False
        await vc.ws.speak(discord.SpeakingState.voice)
        await server.wait_for(lambda: conn.user_id_by_ssrc(vc.ssrc) == BOT, timeout=5)
        vc.sequence, vc.timestamp = 10, 9600
        vc._connection.send_packet(vc._get_voice_packet(frame))
        await server.wait_for(lambda: sink.frames, timeout=5)
        assert sink.frames == [(BOT, frame)]
        crossed = server.packets(vc.ssrc)[-1].opus
        assert is_dave_frame(crossed) and frame not in crossed
    finally:
        await bots.close()
        await vc.disconnect(force=True)
