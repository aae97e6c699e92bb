"""fastvoice.ext.discord: discord.py's VoiceProtocol backed by fastvoice, against the local voice server.

A real ``discord.Client`` (never logged in) holds a real ``Guild`` with two voice channels. Only the
bot's main gateway websocket is stood in for: ``client.ws.voice_state`` (what ``guild.change_voice_state``
sends op 4 through) goes to the server's ``MainGatewayStandIn``, whose VOICE_STATE_UPDATE and
VOICE_SERVER_UPDATE dispatches go back through discord.py's own parsers
(``ConnectionState.parse_voice_state_update`` / ``parse_voice_server_update``), which hand them to the
voice client as they would in production.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import py_compile
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

discord = pytest.importorskip("discord")

import fastvoice.ext.discord as fvd  # noqa: E402
from _calls import Collect, wait_until  # noqa: E402
from fastvoice.conn import ConnConfig  # noqa: E402
from fastvoice.gateway import GatewayConfig  # noqa: E402
from fastvoice.manager import Manager, ManagerConfig  # noqa: E402
from fastvoice.opus import OpusReader, ThreadedOpusFrameReceiver  # noqa: E402
from fastvoice.testing import MainGatewayStandIn, VoiceServer  # noqa: E402

GUILD = 81384788765712384
GUILD_2 = 81384788765712500
VOICE_2 = 81384788765712501
VOICE_A = 81384788765712390
VOICE_B = 81384788765712391
BOT = 159985870458322944
OTHER = 159985870458322945
SILENCE = b"\xf8\xff\xfe"
ROOT = Path(__file__).resolve().parent.parent
FFMPEG = shutil.which("ffmpeg")


def libopus_available() -> bool:
    from discord import opus

    if not opus.is_loaded():
        try:
            opus._load_default()
        except Exception:
            return False
    return opus.is_loaded()


class StandInShard:
    """discord.py's main gateway websocket, as far as voice goes: op 4 in, the two dispatches out."""

    open = False  # Client.close() only closes an open websocket

    def __init__(self, client, server: VoiceServer, user_id: int) -> None:
        self.stand_in = server.main_gateway(user_id)
        state = client._connection
        self.stand_in.attach(
            on_voice_state_update=state.parse_voice_state_update,
            on_voice_server_update=state.parse_voice_server_update,
        )

    async def voice_state(self, guild_id, channel_id, self_mute=False, self_deaf=False):
        await self.stand_in.update_voice_state(guild_id, channel_id, self_mute, self_deaf)


def opus_reader(frames):
    import io

    return OpusReader(io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames)))


def make_client(server: VoiceServer, user_id: int = BOT, **gateway_options):
    client = discord.Client(intents=discord.Intents(guilds=True, voice_states=True))
    state = client._connection
    state.user = discord.ClientUser(
        state=state, data={"id": str(user_id), "username": "bot", "discriminator": "0", "avatar": None, "bot": True}
    )
    channels = [
        {"id": str(cid), "type": 2, "name": name, "position": i, "guild_id": str(GUILD), "bitrate": 64000,
         "user_limit": 0, "permission_overwrites": []}
        for i, (cid, name) in enumerate(((VOICE_A, "a"), (VOICE_B, "b")))
    ]
    guild = discord.Guild(data={"id": str(GUILD), "name": "g", "channels": channels}, state=state)
    state._add_guild(guild)
    state._add_guild(discord.Guild(data={"id": str(GUILD_2), "name": "g2", "channels": [
        {"id": str(VOICE_2), "type": 2, "name": "c", "position": 0, "guild_id": str(GUILD_2), "bitrate": 64000,
         "user_limit": 0, "permission_overwrites": []}]}, state=state))
    client.ws = StandInShard(client, server, user_id)
    fvd.get_manager(client, ManagerConfig(
        conn_config=ConnConfig(open_timeout=5, gateway_config=GatewayConfig(backoff_base=0.05, **gateway_options))))
    return client, guild


class Frames(discord.AudioSource):
    """An Opus AudioSource from a list of frames (an endless numbered stream with ``frames=None``)."""

    def __init__(self, frames=None, *, opus=True):
        self.frames = None if frames is None else list(frames)
        self.opus = opus
        self.reads = 0
        self.cleanups = 0

    def read(self):
        self.reads += 1
        if self.frames is None:
            return b"\xfc" + struct.pack(">I", self.reads)
        return self.frames.pop(0) if self.frames else b""

    def is_opus(self):
        return self.opus

    def cleanup(self):
        self.cleanups += 1


def numbered(packets):
    """The frame numbers of ``Frames()``'s endless stream among received packets (silence left out)."""
    return [struct.unpack(">I", p.opus[1:5])[0] for p in packets if p.opus != SILENCE]


@pytest.fixture
async def server():
    async with VoiceServer(heartbeat_interval=100.0, seed=7) as srv:
        yield srv


@pytest.fixture
async def bot(server):
    client, guild = make_client(server)
    yield client, guild
    await client.close()


def fastvoice_tasks():
    """Live tasks running fastvoice code outside the test server."""
    package = os.path.dirname(fvd.__file__).rsplit(os.sep, 1)[0]
    found = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        filename = getattr(code, "co_filename", "")
        if filename.startswith(package) and os.sep + "testing" + os.sep not in filename:
            found.append(task)
    return found


# -- connect, play, pace ------------------------------------------------------------------------


async def test_connect_and_play_opus_frames_paced_in_order(server, bot):
    client, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    assert isinstance(vc, fvd.VoiceClient) and guild.voice_client is vc
    assert vc.is_connected() and not vc.is_playing() and vc.source is None
    assert client.ws.stand_in.requests == [(GUILD, VOICE_A, False, False)]
    assert vc.manager is fvd.get_manager(client) and vc.conn.channel_id == VOICE_A
    session = server.session_for_user(BOT)
    assert session.channel_id == VOICE_A and vc.conn.udp.ssrc == session.ssrc

    frames = [b"\xfc" + os.urandom(40) + bytes([i]) for i in range(50)]
    source = Frames(frames)
    ended = []
    vc.play(source, after=ended.append)
    assert vc.is_playing() and vc.source is source
    await server.wait_for(lambda: len(server.packets(session.ssrc)) >= 55, timeout=5)
    got = server.packets(session.ssrc)
    assert [p.opus for p in got] == frames + [SILENCE] * 5
    assert [p.sequence for p in got] == [(got[0].sequence + i) % 65536 for i in range(55)]
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(got, got[1:])]
    # 960 a packet; a stall the send clock skipped moves the timestamp on by the ticks it lost.
    assert all(step >= 960 and step % 960 == 0 for step in steps), steps
    assert sum(steps) // 960 - len(steps) <= vc.conn.sender.stats.deficit
    gaps = sorted(b.arrival - a.arrival for a, b in zip(got, got[1:]))
    assert 0.015 <= gaps[len(gaps) // 2] <= 0.025, gaps  # median: 20 ms apart
    assert 0.9 <= got[-1].arrival - got[0].arrival <= 1.4  # 54 intervals of 20 ms, not a burst
    await wait_until(lambda: ended)
    assert ended == [None] and source.cleanups == 1
    assert not vc.is_playing() and vc.source is None
    await server.wait_for(lambda: session.speaking == 0)

    # the next song on the same connection
    again = Frames([b"\xfc-second"])
    vc.play(again, after=ended.append)
    await wait_until(lambda: len(ended) == 2)
    assert ended == [None, None] and again.cleanups == 1
    assert [p.opus for p in server.packets(session.ssrc)][55] == b"\xfc-second"
    await vc.disconnect()


async def test_fastvoice_providers_play_as_they_are(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    frames = [b"\xfc" + bytes([i]) * 20 for i in range(10)]
    reader = opus_reader(frames)
    ended = []
    vc.play(reader, after=ended.append)
    ssrc = vc.conn.udp.ssrc
    await server.wait_for(lambda: len(server.packets(ssrc)) >= 15)
    assert [p.opus for p in server.packets(ssrc)] == frames + [SILENCE] * 5
    await wait_until(lambda: ended)
    assert ended == [None] and reader._stream.closed  # the provider was closed at the end
    await vc.disconnect()


async def test_pause_resume_stop_and_after_called_once(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    session = server.session_for_user(BOT)
    source = Frames()
    calls = []
    vc.play(source, after=calls.append)
    await server.wait_for(lambda: len(server.packets(session.ssrc)) >= 10)

    vc.pause()
    assert vc.is_paused() and not vc.is_playing() and vc.source is source
    await server.wait_for(lambda: session.speaking == 0, timeout=3)  # silence tail, then Speaking 0
    reads, count = source.reads, len(server.packets(session.ssrc))
    await asyncio.sleep(0.2)
    assert source.reads == reads  # a paused source is not read
    assert len(server.packets(session.ssrc)) == count  # and nothing is sent
    assert [p.opus for p in server.packets(session.ssrc)][-5:] == [SILENCE] * 5

    vc.resume()
    assert vc.is_playing() and not vc.is_paused()
    await server.wait_for(lambda: len(server.packets(session.ssrc)) >= count + 10)
    played = numbered(server.packets(session.ssrc))
    assert played == list(range(1, len(played) + 1))  # nothing skipped or repeated across the pause
    assert session.speaking == 1

    with pytest.raises(discord.ClientException, match="Already playing"):
        vc.play(Frames())
    vc.stop()
    assert not vc.is_playing() and not vc.is_paused() and vc.source is None
    await wait_until(lambda: calls)
    assert calls == [None] and source.cleanups == 1
    vc.stop()
    vc.pause()
    vc.resume()
    await asyncio.sleep(0.1)
    assert calls == [None] and source.cleanups == 1  # exactly once
    await server.wait_for(lambda: session.speaking == 0)
    await vc.disconnect()
    assert calls == [None]


async def test_setting_source_swaps_it_in_place(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    ssrc = vc.conn.udp.ssrc
    first, second = Frames(), Frames([b"\xfcB"] * 3)
    ended = []
    vc.play(first, after=ended.append)
    await server.wait_for(lambda: len(server.packets(ssrc)) >= 3)
    vc.source = second
    assert vc.source is second and vc.is_playing()
    await wait_until(lambda: ended)
    await server.wait_for(lambda: [p.opus for p in server.packets(ssrc)][-5:] == [SILENCE] * 5)
    sent = [p.opus for p in server.packets(ssrc)]
    assert sent[-8:] == [b"\xfcB"] * 3 + [SILENCE] * 5 and sent[0] == b"\xfc" + struct.pack(">I", 1)
    # as in discord.py: the replaced source is not cleaned up (it may be wrapped by the new one)
    assert ended == [None] and second.cleanups == 1 and first.cleanups == 0
    with pytest.raises(TypeError, match="expected a discord.AudioSource"):
        vc.source = "song.mp3"
    await vc.disconnect()


async def test_a_failing_source_ends_with_after_error_and_the_clock_goes_on(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    ssrc = vc.conn.udp.ssrc

    class Broken(Frames):
        def read(self):
            if self.reads == 3:
                raise RuntimeError("disk on fire")
            return super().read()

    source = Broken()
    errors = []
    vc.play(source, after=errors.append)
    await wait_until(lambda: errors)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and str(errors[0]) == "disk on fire"
    assert source.cleanups == 1 and not vc.is_playing()
    await server.wait_for(lambda: len(server.packets(ssrc)) >= 8)
    assert numbered(server.packets(ssrc)) == [1, 2, 3]
    assert vc.conn.sender.stats.errors == 0  # ended cleanly, not counted as provider errors

    # an after() that raises is logged, not fatal; the clock keeps serving the connection
    def bad_after(error):
        raise ValueError("after is broken")

    vc.play(Frames([b"\xfc1", b"\xfc2"]), after=bad_after)
    await server.wait_for(lambda: len(server.packets(ssrc)) >= 15)
    assert [p.opus for p in server.packets(ssrc)][8:10] == [b"\xfc1", b"\xfc2"]
    assert vc.is_connected()
    await vc.disconnect()


async def test_bad_input_is_refused_with_clear_errors(server, bot, monkeypatch):
    client, guild = bot
    vc = fvd.VoiceClient(client, guild.get_channel(VOICE_A))
    with pytest.raises(discord.ClientException, match="Not connected"):
        vc.play(Frames())
    with pytest.raises(discord.ClientException, match="Not connected"):
        vc.listen(Collect())
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    with pytest.raises(TypeError, match="AudioSource or a fastvoice OpusFrameProvider, got bytes"):
        vc.play(b"not a source")
    with pytest.raises(TypeError, match="after must be a callable"):
        vc.play(Frames(), after="nope")
    with pytest.raises(TypeError, match="OpusFrameReceiver"):
        vc.listen(object())
    with pytest.raises(ValueError, match="Not playing"):
        vc.source = Frames()
    with pytest.raises(TypeError, match="channel must be a voice channel"):
        await vc.move_to("general")
    # a PCM source without libopus: the error names libopus and how to install it
    from discord import opus

    monkeypatch.setattr(opus, "is_loaded", lambda: False)
    monkeypatch.setattr(opus, "_load_default", lambda: False)
    with pytest.raises(opus.OpusNotLoaded, match="libopus0"):
        vc.play(Frames(opus=False))
    assert not vc.is_playing()
    # malformed dispatches are logged and ignored
    await vc.on_voice_state_update({"guild_id": "x", "user_id": str(BOT)})
    await vc.on_voice_server_update({"guild_id": None})
    assert vc.is_connected()
    await vc.disconnect()
    with pytest.raises(RuntimeError, match="already has a fastvoice Manager"):
        fvd.get_manager(client, ManagerConfig())

    lonely = discord.Client(intents=discord.Intents.none())
    with pytest.raises(discord.ClientException, match="not logged in"):
        fvd.get_manager(lonely)


async def test_latency_from_the_voice_gateway_heartbeats(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    await wait_until(lambda: len(vc._latencies) >= 3, timeout=5)  # heartbeats every 100 ms here
    assert 0 <= vc.latency < 0.5 and vc.latency == vc.conn.gateway.latency
    assert 0 <= vc.average_latency < 0.5
    assert vc.average_latency == pytest.approx(sum(vc._latencies) / len(vc._latencies))
    await vc.disconnect()
    assert vc.latency == math.inf


async def test_two_guilds_share_one_manager_and_after_can_queue_the_next_song(server, bot):
    client, guild = bot
    guild_2 = client.get_guild(GUILD_2)
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    channel_2 = guild_2.get_channel(VOICE_2)
    deaf = "self_deaf" in inspect.signature(channel_2.connect).parameters  # py-cord's connect has no self_deaf
    vc_2 = await channel_2.connect(cls=fvd.VoiceClient, timeout=5, **({"self_deaf": True} if deaf else {}))
    assert vc.manager is vc_2.manager and len(vc.manager) == 2
    assert guild.voice_client is vc and guild_2.voice_client is vc_2
    assert client.ws.stand_in.requests[-1] == (GUILD_2, VOICE_2, False, deaf)

    queue = [Frames([b"\xfcsong-2"]), Frames([b"\xfcsong-3"])]
    finished = []

    def next_song(error):
        finished.append(error)
        if queue:
            vc.play(queue.pop(0), after=next_song)

    vc.play(Frames([b"\xfcsong-1"]), after=next_song)
    vc_2.play(Frames([b"\xfcother-guild"] * 3))
    await wait_until(lambda: len(finished) == 3)
    ssrc, ssrc_2 = vc.conn.udp.ssrc, vc_2.conn.udp.ssrc
    await server.wait_for(lambda: len(server.packets(ssrc_2)) >= 8)
    songs = [p.opus for p in server.packets(ssrc) if p.opus != SILENCE]
    assert songs == [b"\xfcsong-1", b"\xfcsong-2", b"\xfcsong-3"] and finished == [None] * 3
    assert [p.opus for p in server.packets(ssrc_2)] == [b"\xfcother-guild"] * 3 + [SILENCE] * 5
    await vc.disconnect()
    assert guild_2.voice_client is vc_2 and vc_2.is_connected() and len(vc.manager) == 1
    await vc_2.disconnect()


# -- moving and leaving ------------------------------------------------------------------------------


async def test_move_to_another_channel_keeps_streaming(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    first = server.session_for_user(BOT)
    source = Frames()
    vc.play(source)
    await server.wait_for(lambda: len(first.packets) >= 10)

    await vc.move_to(guild.get_channel(VOICE_B), timeout=5)
    assert vc.channel is guild.get_channel(VOICE_B) and vc.conn.channel_id == VOICE_B
    assert vc.is_connected() and vc.is_playing() and vc.source is source
    second = server.session_for_user(BOT)
    assert second is not first and second.channel_id == VOICE_B
    await server.wait_for(lambda: len(second.packets) >= 10, timeout=5)
    before, after = numbered(first.packets), numbered(second.packets)
    assert before and after and after[0] > before[-1]  # the same stream goes on in the new channel
    assert after == list(range(after[0], after[0] + len(after)))
    await server.wait_for(lambda: first.ended)  # the old session was closed (4014)
    await vc.move_to(guild.get_channel(VOICE_B))  # already there: nothing to do
    await vc.move_to(None)  # discord.py: moving to None disconnects
    assert guild.voice_client is None and not vc.is_connected()


async def test_move_to_when_discord_keeps_the_voice_session(server, bot):
    client, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    stand_in, session = client.ws.stand_in, server.session_for_user(BOT)

    async def only_the_voice_state(guild_id, channel_id, self_mute=False, self_deaf=False):
        # Discord answering a move with a VOICE_STATE_UPDATE alone (same voice server and token)
        state, _ = server.voice_updates(guild_id, BOT, channel_id, session_id=stand_in.session_id,
                                        token=session.token)
        asyncio.get_running_loop().call_soon(client._connection.parse_voice_state_update, state)

    client.ws.voice_state = only_the_voice_state
    started = time.monotonic()
    await vc.move_to(guild.get_channel(VOICE_B), timeout=5)
    assert 0.9 <= time.monotonic() - started < 3
    assert vc.conn.channel_id == VOICE_B and vc.channel.id == VOICE_B and vc.is_connected()
    assert server.session_for_user(BOT) is session and not session.ended

    # and a move_to() cut short by a disconnect says so at once
    client.ws.voice_state = _never_answer
    mover = asyncio.ensure_future(vc.move_to(guild.get_channel(VOICE_A), timeout=10))
    await asyncio.sleep(0.1)
    await vc.disconnect()
    with pytest.raises(discord.ClientException, match="disconnected while moving"):
        await asyncio.wait_for(mover, 2)


async def test_moved_by_someone_else_follows_the_channel(server, bot):
    client, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    first = server.session_for_user(BOT)
    vc.play(Frames())
    await server.wait_for(lambda: len(first.packets) >= 5)
    # a moderator drags the bot: Discord sends the new voice state and server, nobody called move_to
    await client.ws.stand_in.update_voice_state(GUILD, VOICE_B)
    await wait_until(lambda: vc.channel.id == VOICE_B)
    await server.wait_for(lambda: server.session_for_user(BOT) is not first)
    second = server.session_for_user(BOT)
    await server.wait_for(lambda: len(second.packets) >= 5, timeout=5)
    assert second.channel_id == VOICE_B and vc.is_playing() and guild.voice_client is vc
    assert numbered(second.packets)[0] > numbered(first.packets)[-1]
    await vc.disconnect()


async def test_disconnect_releases_everything(server, bot):
    client, guild = bot
    fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    conn, udp, gateway = vc.conn, vc.conn.udp, vc.conn.gateway
    sink = Collect()
    vc.listen(sink)
    ended = []
    vc.play(Frames(), after=ended.append)
    await server.wait_for(lambda: server.packets(udp.ssrc))
    assert fastvoice_tasks()

    await vc.disconnect()
    assert ended == [None]  # disconnect() returns after the playback's end ran
    assert guild.voice_client is None and client.voice_clients == []
    assert vc.conn is None and not vc.is_connected() and not vc.is_listening()
    assert sink.closed == 1
    assert not udp.is_open and conn.udp is None and conn.gateway is None
    assert gateway.status.name == "DISCONNECTED"
    assert vc.manager.get_conn(GUILD) is None
    assert client.ws.stand_in.requests[-1] == (GUILD, None, False, False)
    await server.wait_for(lambda: server.session_for_user(BOT).ended)
    await wait_until(lambda: not fastvoice_tasks(), timeout=2)  # the send clock stops at its next tick
    if fds_before is not None:
        await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before, timeout=2)
    await vc.disconnect()  # twice is harmless
    with pytest.raises(discord.ClientException, match="Not connected"):
        vc.play(Frames())

    # and the guild can connect again
    vc2 = await guild.get_channel(VOICE_B).connect(cls=fvd.VoiceClient, timeout=5)
    assert guild.voice_client is vc2 and vc2.conn.channel_id == VOICE_B
    await client.close()  # discord.py disconnects its voice clients on close
    assert guild.voice_client is None and vc2.conn is None


async def test_an_async_after_may_disconnect(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    done = []

    async def leave_when_done(error):
        await vc.disconnect()
        done.append(error)

    vc.play(Frames([b"\xfc1"] * 3), after=leave_when_done)
    await wait_until(lambda: done, timeout=5)
    assert done == [None] and guild.voice_client is None and not vc.is_connected()


async def test_kicked_from_voice_disconnects_the_client(server, bot):
    client, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    ended = []
    vc.play(Frames(), after=ended.append)
    # Discord removes the bot from the channel: VOICE_STATE_UPDATE with a null channel, 4014 on the voice gateway
    await client.ws.stand_in.update_voice_state(GUILD, None)
    await wait_until(lambda: guild.voice_client is None)
    await wait_until(lambda: ended)
    assert ended == [None] and not vc.is_connected() and vc.conn is None


async def test_a_failed_connect_leaves_nothing_behind(server):
    from fastvoice.errors import GatewayClosedError

    server.require_dave = True  # and this bot does not offer DAVE: the voice server refuses it with 4017
    client, guild = make_client(server, max_dave_protocol_version=0)
    manager = fvd.get_manager(client)
    with pytest.raises(GatewayClosedError):
        await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    assert guild.voice_client is None and manager.get_conn(GUILD) is None
    assert client.ws.stand_in.requests[-1] == (GUILD, None, False, False)  # Discord told we left

    # a timeout: discord.py's own path (it calls disconnect(force=True))
    client.ws.voice_state = _never_answer
    with pytest.raises(asyncio.TimeoutError):
        await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=0.3)
    assert guild.voice_client is None and manager.get_conn(GUILD) is None
    await wait_until(lambda: not fastvoice_tasks(), timeout=2)
    await client.close()


async def _never_answer(guild_id, channel_id, self_mute=False, self_deaf=False):
    return None


# -- receiving ----------------------------------------------------------------------------------------


async def test_listen_receives_another_users_frames(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    sink = Collect()
    vc.listen(sink)
    assert vc.is_listening()

    main = MainGatewayStandIn(server, OTHER)
    other = Manager(main.update_voice_state, OTHER, conn_config=ConnConfig(open_timeout=5))
    main.attach(other)
    try:
        speaker = other.create_conn(GUILD)
        await speaker.open(VOICE_A)
        frames = [b"\xfc" + os.urandom(30) + bytes([i]) for i in range(20)]
        speaker.set_opus_frame_provider(opus_reader(frames))
        await wait_until(lambda: len(sink.frames) >= 25)
        assert sink.frames == [(OTHER, f) for f in frames] + [(OTHER, SILENCE)] * 5

        vc.stop_listening()
        assert sink.closed == 1 and not vc.is_listening()
        speaker.set_opus_frame_provider(opus_reader([b"\xfcxx"]))
        await server.wait_for(lambda: len(server.packets(speaker.udp.ssrc)) >= 31)
        await asyncio.sleep(0.1)
        assert len(sink.frames) == 25  # nothing after stop_listening
    finally:
        await other.close()
        await vc.disconnect()


async def _other_user_speaks(server, frames):
    """OTHER joins VOICE_A and plays ``frames``; returns its manager (close it)."""
    main = MainGatewayStandIn(server, OTHER)
    other = Manager(main.update_voice_state, OTHER, conn_config=ConnConfig(open_timeout=5))
    main.attach(other)
    speaker = other.create_conn(GUILD)
    await speaker.open(VOICE_A)
    speaker.set_opus_frame_provider(opus_reader(frames))
    await server.wait_for(lambda: len(server.packets(speaker.udp.ssrc)) >= len(frames) + 5, timeout=15)
    return other


async def test_the_recorder_example_records_aligned_ogg_tracks_and_a_mix(server, bot, tmp_path, monkeypatch):
    import wave

    from _playout import dominant, step_frequency, stepped_tone_packets
    from fastvoice.ogg import OggOpusReader
    from fastvoice.opus_decoder import OpusDecoder

    if not libopus_available():
        pytest.skip("libopus is not installed")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    recorder_example = __import__("recorder")
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    recorder = recorder_example.start_recording(vc, tmp_path / "rec")
    assert vc.is_listening()
    frames = list(stepped_tone_packets(50))
    other = None
    try:
        await asyncio.sleep(0.2)  # the recording starts before the other user speaks
        other = await _other_user_speaks(server, frames)
        await asyncio.sleep(0.3)
        await recorder_example.stop_recording(vc, recorder)
        assert not vc.is_listening() and recorder.finished
    finally:
        if other is not None:
            await other.close()
        await vc.disconnect()
    assert recorder.users == {OTHER} and recorder.errors == 0 and recorder.dropped == 0
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == [f"{OTHER}.ogg", "mix.wav"]
    ticks = round(recorder.duration / 0.02)
    with wave.open(str(tmp_path / "rec" / "mix.wav")) as w:
        mix = w.readframes(w.getnframes())
    assert len(mix) == ticks * 3840
    # The Ogg track decodes (libopus) to the mix, the other user's tone frame by frame.
    decoder = OpusDecoder()
    packets = list(OggOpusReader(tmp_path / "rec" / f"{OTHER}.ogg"))
    assert len(packets) == ticks
    # Each frame at most once, in order (all of them unless the loop was too busy to play one in time).
    at = {k: packets.index(f) for k, f in enumerate(frames) if f in packets}
    assert len(at) >= 45 and list(at.values()) == sorted(at.values()) and at.get(0) is not None
    pcm = b"".join(decoder.decode(p) for p in packets)
    assert len(pcm) == len(mix)
    first, last = at[0], at[max(at)]
    assert first >= 10 and not any(pcm[:first * 3840])  # silence before the other user spoke
    aligned = [k for k in at if k >= 2 and at.get(k - 1) == at[k] - 1]
    assert len(aligned) >= 40
    for k in aligned:
        assert dominant(pcm[at[k] * 3840:(at[k] + 1) * 3840]) == step_frequency(k)
    assert pcm[:(last + 1) * 3840] == mix[:(last + 1) * 3840]
    sys.modules.pop("recorder", None)


async def test_the_speech_example_prints_each_utterance_with_its_user_and_length(server, bot, monkeypatch):
    from _playout import stepped_tone_packets
    from fastvoice.playout_receiver import PlayoutReceiver

    if not libopus_available():
        pytest.skip("libopus is not installed")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    speech = __import__("speech")
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    receiver = PlayoutReceiver()
    vc.listen(receiver)
    lines, seen = [], []

    def recogniser(utterance):
        seen.append(utterance)
        return "hello"

    task = asyncio.create_task(speech.print_utterances(receiver, lines.append, recogniser))
    other = None
    try:
        other = await _other_user_speaks(server, list(stepped_tone_packets(40)))  # 0.8 s of tone
        await wait_until(lambda: lines, timeout=5)
        vc.stop_listening()  # closes the receiver: the stream ends
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        if other is not None:
            await other.close()
        await vc.disconnect()
    assert len(seen) == 1 and seen[0].user_id == OTHER
    assert (seen[0].sample_rate, seen[0].channels) == (16000, 1)
    length = seen[0].end - seen[0].start
    assert 0.8 <= length <= 1.2
    assert lines == [f"user {OTHER}: {length:.2f} s ({len(seen[0].pcm)} bytes at 16000 Hz): hello"]
    assert speech.recognise(seen[0]) is None  # no recogniser ships
    sys.modules.pop("speech", None)


# -- PCM and ffmpeg sources ---------------------------------------------------------------------------


class Sine(discord.AudioSource):
    """PCM: 16-bit 48 kHz stereo, 20 ms per read."""

    def __init__(self, frames):
        self.left = frames

    def read(self):
        if not self.left:
            return b""
        self.left -= 1
        return b"".join(struct.pack("<hh", s, s) for s in
                        (int(8000 * math.sin(2 * math.pi * 440 * i / 48000)) for i in range(960)))

    def is_opus(self):
        return False


@pytest.mark.skipif(not libopus_available(), reason="libopus cannot be loaded here (Debian: apt-get install libopus0)")
async def test_a_pcm_source_is_encoded_with_libopus(server, bot):
    from discord import opus

    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    ssrc = vc.conn.udp.ssrc
    ended = []
    vc.play(discord.PCMVolumeTransformer(Sine(25), volume=0.5), after=ended.append, bitrate=64)
    await wait_until(lambda: ended)
    await server.wait_for(lambda: len(server.packets(ssrc)) >= 30)
    frames = [p.opus for p in server.packets(ssrc)]
    assert ended == [None] and frames[25:] == [SILENCE] * 5
    decoder = opus.Decoder()
    for frame in frames[:25]:
        assert frame != SILENCE and len(frame) < 400
        assert len(decoder.decode(frame)) == 3840  # real Opus: 20 ms of 48 kHz stereo comes back out
    await vc.disconnect()


def ffmpeg_tone(seconds, opus):
    cls = discord.FFmpegOpusAudio if opus else discord.FFmpegPCMAudio
    return cls(f"sine=frequency=440:duration={seconds}", before_options="-f lavfi")


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
async def test_ffmpeg_opus_source_is_read_without_blocking_the_loop(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    ssrc = vc.conn.udp.ssrc
    source = ffmpeg_tone(1, opus=True)
    process = source._process
    ended = []
    vc.play(source, after=ended.append)
    # stdout is read by the loop: the source's read is the buffered reader's and the pipe can
    # no longer block (a blocking read would stall every call's clock; the loop-stall tests
    # measure that, this one checks the mechanism without timing anything)
    assert source.read.__self__.__class__.__name__ == "PipeReader"
    assert os.get_blocking(process.stdout.fileno()) is False
    await wait_until(lambda: ended, timeout=60)
    await server.wait_for(lambda: [p.opus for p in server.packets(ssrc)][-5:] == [SILENCE] * 5, timeout=60)
    frames = [p.opus for p in server.packets(ssrc)]
    assert ended == [None] and frames[-5:] == [SILENCE] * 5
    # 1 s of 20 ms frames, all of them. On a loaded machine ffmpeg may fall behind the clock for a
    # while, which sends a silence tail and resumes: the count is of the tone's frames alone.
    tone = [f for f in frames if f != SILENCE]
    assert 49 <= len(tone) <= 51, len(tone)
    assert not any(f.startswith((b"OpusHead", b"OpusTags")) for f in tone)
    assert process.returncode == 0 and process.stdout.closed
    await vc.disconnect()


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
@pytest.mark.skipif(not libopus_available(), reason="libopus cannot be loaded here (Debian: apt-get install libopus0)")
async def test_ffmpeg_pcm_source_behind_a_volume_transformer_stops_and_reaps(server, bot):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    ssrc = vc.conn.udp.ssrc
    inner = ffmpeg_tone(30, opus=False)
    process = inner._process
    ended = []
    vc.play(discord.PCMVolumeTransformer(inner, volume=0.3), after=ended.append)
    await server.wait_for(lambda: len(server.packets(ssrc)) >= 20, timeout=5)
    reader = inner._fastvoice_reader
    assert len(reader._frames) <= fvd.READ_AHEAD_FRAMES  # bounded read-ahead, ffmpeg waits on its pipe
    vc.stop()
    await wait_until(lambda: ended, timeout=8)
    assert ended == [None]
    assert process.returncode is not None and process.stdout.closed  # killed and reaped, pipe closed
    await vc.disconnect()


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
async def test_ffmpeg_failing_on_a_missing_file_reports_the_error(server, bot, tmp_path):
    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    errors = []
    vc.play(discord.FFmpegOpusAudio(str(tmp_path / "missing.ogg")), after=errors.append)
    await wait_until(lambda: errors, timeout=10)
    assert len(errors) == 1 and errors[0] is not None and "code" in str(errors[0])
    assert vc.is_connected() and not vc.is_playing()
    await vc.disconnect()


@pytest.mark.skipif(shutil.which("echo") is None, reason="no echo executable")
async def test_an_ffmpeg_pipe_that_is_not_ogg_ends_with_the_demuxer_error(server, bot):
    from fastvoice.ogg import OggError

    _, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    errors = []
    # "ffmpeg" that prints its arguments instead of an Ogg stream
    source = discord.FFmpegOpusAudio("input.mp3", executable=shutil.which("echo"))
    vc.play(source, after=errors.append)
    await wait_until(lambda: errors, timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], OggError) and "OggS" in str(errors[0])
    assert source._process is not None and vc.is_connected() and not vc.is_playing()
    await vc.disconnect()


async def test_debug_logs_of_the_adapter_hold_no_secret(server, bot, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    client, guild = bot
    vc = await guild.get_channel(VOICE_A).connect(cls=fvd.VoiceClient, timeout=5)
    await vc.on_voice_server_update({"guild_id": "not a snowflake", "token": "tok-secret-123", "endpoint": "x"})
    vc.play(Frames([b"\xfc1"] * 5))
    session = server.session_for_user(BOT)
    await vc.move_to(guild.get_channel(VOICE_B), timeout=5)
    texts = [repr(vc), repr(vc.conn)]
    await vc.disconnect()
    secrets = [session.token, server.session_for_user(BOT).token, session.session_id,
               client.ws.stand_in.session_id, "tok-secret-123"]
    assert any(r.name.startswith("fastvoice.ext.discord") for r in caplog.records)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records) + "\n".join(texts)
    for secret in secrets:
        assert secret and secret not in text, f"a secret ({len(secret)} chars) appears in the logs"
    for key in (session.secret_key, server.session_for_user(BOT).secret_key):
        assert key.hex() not in text and repr(key) not in text


def test_the_adapter_ships_in_the_package():
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    subpackages = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "fastvoice").rglob("__init__.py")}
    assert "fastvoice.ext" in subpackages and subpackages <= set(packages)


# -- examples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["music_bot.py", "recorder.py", "speech.py"])
def test_examples_compile_and_import(name, tmp_path, monkeypatch):
    path = ROOT / "examples" / name
    py_compile.compile(str(path), cfile=str(tmp_path / (name + "c")), doraise=True)
    monkeypatch.syspath_prepend(str(path.parent))
    module = __import__(name[:-3])  # importing must not start a bot
    assert module.__doc__ and "DISCORD_TOKEN" in module.__doc__
    sys.modules.pop(name[:-3], None)


def test_the_readme_bot_compiles_against_the_adapter():
    import pathlib

    import fastvoice.ext.discord as ext

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("A whole bot", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    compile(block, "README.md (bot example)", "exec")
    assert "connect(cls=fastvoice.ext.discord.VoiceClient)" in block
    assert issubclass(ext.VoiceClient, discord.VoiceProtocol)
