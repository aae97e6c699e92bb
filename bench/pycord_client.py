"""py-cord's recording as a peer in bench/test_bench_receive.py: N py-cord listeners in one process.

    FASTVOICE_PYTHON=python3 /path/to/venv/bin/python bench/pycord_client.py N SECONDS [--mode=xchacha]

py-cord replaces discord.py (both are the ``discord`` package), so this runs in a venv of its
own with ``py-cord[voice]``; FASTVOICE_PYTHON names the Python with fastvoice that runs the
speaking server. Each call is py-cord's ``VoiceClient``, connected as ``discordpy_client.py``
connects discord.py (only the main gateway and REST login stood in for), recording with
``start_recording`` into a sink of its own that asks for Opus (no decoding). py-cord 2.8's
receive path is a port of discord-ext-voice-recv's: per call, the UDP reader thread hands every
datagram to its callback (PyNaCl decryption, a jitter buffer per SSRC), a packet-router thread
calls the sink's ``write(data, user)``; a speaking-timer, a UDP keep-alive and an event-router
thread run besides, with the heartbeat thread.

py-cord 2.8.1's ``Sink`` lacks what its own receive path calls on it (``is_opus``,
``walk_children``, ``__sink_listeners__``), so the benchmark's sink defines them; and py-cord
sends op 5 without the ``ssrc`` field, which the server is told to accept. py-cord warns that its receive does
not work with DAVE yet; the server runs without DAVE for every contender.
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
from discord.gateway import DiscordClientWebSocketResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import receive_common as common  # noqa: E402

BOT = 159985870458322944
now = time.time


class CountingSink(discord.sinks.Sink):
    """Keeps each real packet's sequence number and the time ``write`` got it."""

    __sink_listeners__: list = []  # (event, method name) pairs py-cord's event router reads

    def __init__(self) -> None:
        super().__init__()
        self.seqs: list[int] = []
        self.times: list[float] = []

    def is_opus(self) -> bool:
        return True

    def walk_children(self, *, with_self: bool = False):
        return iter([self] if with_self else [])

    def write(self, data, user) -> None:
        if data.packet:  # a stand-in for a lost packet is falsy
            self.seqs.append(data.packet.sequence)
            self.times.append(now())

    def cleanup(self) -> None:
        pass


def make_client(loop, http_session, guild_id: int, endpoint: str):
    http = discord.http.HTTPClient(loop=loop)
    http._HTTPClient__session = http_session
    state = types.SimpleNamespace(loop=loop, http=http, user=types.SimpleNamespace(id=BOT), self_id=BOT,
                                  _remove_voice_client=lambda key: None)
    client = types.SimpleNamespace(_connection=state, loop=loop, dispatch=lambda *a, **k: None,
                                   get_user=lambda uid: None, user=state.user)
    channel_id = guild_id
    holder = {}

    async def change_voice_state(*, channel, self_mute=False, self_deaf=False, **_):
        vc = holder["vc"]
        if channel is None:
            return
        # py-cord takes the two dispatches as its Raw*Event objects: their attributes it reads.
        server_update = types.SimpleNamespace(guild_id=guild_id, token=f"t{guild_id}", endpoint=endpoint)
        voice_state = types.SimpleNamespace(guild_id=guild_id, channel_id=channel_id, user_id=BOT,
                                            session_id=f"s{guild_id}", self_mute=self_mute, self_deaf=self_deaf)
        loop.call_soon(lambda: loop.create_task(vc.on_voice_server_update(server_update)))
        loop.call_soon(lambda: loop.create_task(vc.on_voice_state_update(voice_state)))

    guild = types.SimpleNamespace(id=guild_id, me=types.SimpleNamespace(id=BOT, voice=None),
                                  change_voice_state=change_voice_state, get_member=lambda uid: None)
    channel = types.SimpleNamespace(id=channel_id, guild=guild)
    guild.get_channel = lambda cid: channel if cid == channel_id else None
    channel._get_voice_client_key = lambda: (guild_id, "guild_id")
    vc = holder["vc"] = discord.VoiceClient(client, channel)
    return vc


async def main(n: int, seconds: float, mode: str) -> dict:
    server = await common.start_server("--tls", mode, "--speaking-without-ssrc")
    try:
        return await measure(n, seconds, server)
    finally:
        await common.stop_server(server)


async def measure(n: int, seconds: float, server) -> dict:
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
            for r in results:
                if isinstance(r, BaseException):
                    print(f"connect failed: {r!r}"[:300], file=sys.stderr)
            opened += sum(1 for r in results if not isinstance(r, BaseException))
        sinks = {}
        for guild, vc in zip(guilds, clients):
            if vc.is_connected():
                sink = sinks[str(guild)] = CountingSink()
                vc.start_recording(sink)
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
        result.update(opened=opened, threads=threads, peer=f"py-cord {discord.__version__}",
                      mode=str(clients[0].mode) if clients else None)
        return result
    finally:
        for vc in clients:
            try:
                if vc.is_recording():
                    vc.stop_recording()
            except Exception:  # noqa: BLE001 - leave the others to close
                pass
        await asyncio.gather(*(asyncio.wait_for(vc.disconnect(force=True), 10) for vc in clients),
                             return_exceptions=True)
        await session.close()


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # py-cord's "reception is broken with DAVE" notice
    try:
        out = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), common.mode_argument(sys.argv[3:])))
    except KeyboardInterrupt:
        sys.exit(130)
    print(json.dumps(out))
