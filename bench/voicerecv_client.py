"""discord-ext-voice-recv's side of bench/test_bench_receive.py: N discord.py listeners in one process.

    python bench/voicerecv_client.py N SECONDS [--decode] [--mode=xchacha]

Each call is a ``discord.ext.voice_recv.VoiceRecvClient`` (discord.py's VoiceClient with the
extension's receive path), connected as ``discordpy_client.py`` connects discord.py (only
the main gateway and REST login are stood in for), listening with an ``AudioSink`` of its
own. The extension, per call: discord.py's UDP reader thread hands every datagram to the
extension's callback (decrypt with PyNaCl, parse), which pushes it into the SSRC's jitter
buffer; a packet-router thread pops it and calls the sink's ``write(user, data)``; a
speaking-timer thread and a UDP keep-alive thread run besides, with discord.py's heartbeat
thread. The sink:

- default: ``wants_opus()`` is true (no decoding); ``write`` keeps the RTP sequence number
  and ``time.time()`` of each real packet (the extension also hands out stand-ins for lost
  packets, which are not counted);
- ``--decode``: ``wants_opus()`` is false, so the extension decodes every packet to 48 kHz
  stereo PCM with discord.py's Opus decoder before ``write`` (the server sends real Opus).

The extension has no DAVE: the server runs without it for every contender.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import threading
import time
import types

import aiohttp
import discord
from discord.ext import voice_recv
from discord.gateway import DiscordClientWebSocketResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import receive_common as common  # noqa: E402

BOT = 159985870458322944
now = time.time


class CountingSink(voice_recv.AudioSink):
    """Keeps each real packet's sequence number and the time ``write`` got it."""

    def __init__(self, decode: bool) -> None:
        super().__init__()
        self.decode = decode
        self.seqs: list[int] = []
        self.times: list[float] = []
        self.pcm_frames = 0

    def wants_opus(self) -> bool:
        return not self.decode

    def write(self, user, data) -> None:
        if data.pcm:
            self.pcm_frames += 1
        if data.packet:  # a stand-in for a lost packet is falsy
            self.seqs.append(data.packet.sequence)
            self.times.append(now())

    def cleanup(self) -> None:
        pass


def make_client(loop, http_session, guild_id: int, endpoint: str):
    http = discord.http.HTTPClient(loop)
    http._HTTPClient__session = http_session
    state = types.SimpleNamespace(loop=loop, http=http, user=types.SimpleNamespace(id=BOT),
                                  _remove_voice_client=lambda key: None)
    client = types.SimpleNamespace(_connection=state, loop=loop, dispatch=lambda *a, **k: None,
                                   get_user=lambda uid: None)
    channel_id = guild_id  # the speaking server puts every call in the channel named like its guild
    holder = {}

    async def change_voice_state(*, channel, self_mute=False, self_deaf=False, **_):
        vc = holder["vc"]
        if channel is None:
            return
        server_update = {"guild_id": str(guild_id), "token": f"t{guild_id}", "endpoint": endpoint}
        voice_state = {"guild_id": str(guild_id), "channel_id": str(channel_id), "user_id": str(BOT),
                       "session_id": f"s{guild_id}", "self_mute": self_mute, "self_deaf": self_deaf}
        loop.call_soon(lambda: loop.create_task(vc.on_voice_server_update(server_update)))
        loop.call_soon(lambda: loop.create_task(vc.on_voice_state_update(voice_state)))

    guild = types.SimpleNamespace(id=guild_id, me=types.SimpleNamespace(id=BOT, voice=None),
                                  change_voice_state=change_voice_state, get_member=lambda uid: None)
    channel = types.SimpleNamespace(id=channel_id, guild=guild)
    guild.get_channel = lambda cid: channel if cid == channel_id else None
    channel._get_voice_client_key = lambda: (guild_id, "guild_id")
    vc = holder["vc"] = voice_recv.VoiceRecvClient(client, channel)
    return vc


async def main(n: int, seconds: float, decode: bool, mode: str) -> dict:
    server = await common.start_server("--tls", mode, *(["--opus"] if decode else []))
    try:
        return await measure(n, seconds, decode, server)
    finally:
        await common.stop_server(server)


async def measure(n: int, seconds: float, decode: bool, server) -> dict:
    _url, endpoint, ca_file = (await asyncio.wait_for(server.stdout.readline(), 60)).decode().split()
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=ca_file)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=0),
                                    ws_response_class=DiscordClientWebSocketResponse)
    rss_before = common.rss_kib()
    guilds = [10**6 + i for i in range(n)]
    clients = [make_client(loop, session, g, endpoint) for g in guilds]
    try:
        opened = 0
        for start in range(0, n, 50):
            results = await asyncio.gather(*(vc.connect(reconnect=False, timeout=60) for vc in clients[start:start + 50]),
                                           return_exceptions=True)
            opened += sum(1 for r in results if not isinstance(r, BaseException))
        sinks = {}
        for guild, vc in zip(guilds, clients):
            if vc.is_connected():
                sink = sinks[str(guild)] = CountingSink(decode)
                vc.listen(sink)
        threads = threading.active_count()
        window: list[float] = []

        def on_streaming() -> None:
            window.extend((common.cpu_seconds(), time.monotonic()))

        report = await common.speak(server, seconds, on_streaming)
        await asyncio.sleep(0.3)
        cpu = common.cpu_seconds() - window[0]
        wall = time.monotonic() - window[1]
        rss_after = common.rss_kib()
        arrivals = {guild: (s.seqs, s.times) for guild, s in sinks.items()}
        result = common.summarize(report, arrivals, n=n, seconds=seconds, cpu=cpu, wall=wall,
                                  rss_per_call_kib=round((rss_after - rss_before) / n, 1))
        result.update(opened=opened, threads=threads, peer=f"discord-ext-voice-recv {voice_recv.__version__}",
                      mode=clients[0].mode if clients else None)
        if decode:
            result["decoded"] = sum(s.pcm_frames for s in sinks.values())
        return result
    finally:
        for vc in clients:
            if vc.is_listening():
                vc.stop_listening()
        await asyncio.gather(*(asyncio.wait_for(vc.disconnect(force=True), 10) for vc in clients),
                             return_exceptions=True)
        await session.close()


if __name__ == "__main__":
    try:
        out = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), "--decode" in sys.argv[3:],
                              common.mode_argument(sys.argv[3:])))
    except KeyboardInterrupt:
        sys.exit(130)
    print(json.dumps(out))
