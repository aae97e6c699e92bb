"""discord.py 2.7's own VoiceClient, N of them in one process, playing to a VoiceServer process.

Each VoiceClient runs as in a bot: its websocket, its heartbeat thread, its UDP reader
thread and, while playing, its AudioPlayer thread. Only the bot's main gateway and REST
login are stood in for (as in tests/test_voice_server_discordpy.py). Prints one JSON line.

    python bench/discordpy_client.py N SECONDS
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import sys
import threading
import time
import types

import aiohttp
import discord
from discord.gateway import DiscordClientWebSocketResponse

HERE = os.path.dirname(os.path.abspath(__file__))
BOT = 159985870458322944


class Frames(discord.AudioSource):
    """``count`` 120-byte Opus frames, as an already-encoded source."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.frame = os.urandom(120)

    def read(self) -> bytes:
        if self.left <= 0:
            return b""
        self.left -= 1
        return self.frame

    def is_opus(self) -> bool:
        return True


def make_client(loop, http_session, guild_id: int, endpoint: str):
    http = discord.http.HTTPClient(loop)
    http._HTTPClient__session = http_session
    state = types.SimpleNamespace(loop=loop, http=http, user=types.SimpleNamespace(id=BOT),
                                  _remove_voice_client=lambda key: None)
    client = types.SimpleNamespace(_connection=state, loop=loop)
    channel_id = guild_id + 1
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

    guild = types.SimpleNamespace(id=guild_id, me=types.SimpleNamespace(voice=None), change_voice_state=change_voice_state)
    channel = types.SimpleNamespace(id=channel_id, guild=guild)
    guild.get_channel = lambda cid: channel if cid == channel_id else None
    channel._get_voice_client_key = lambda: (guild_id, "guild_id")
    vc = holder["vc"] = discord.VoiceClient(client, channel)
    return vc


async def main(n: int, seconds: float) -> dict:
    server = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(HERE, "voice_server_process.py"), "--tls",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**28,
    )
    try:
        return await measure(n, seconds, server)
    finally:
        await stop(server)


async def stop(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if it is still running and reap it (on every way out, Ctrl-C included)."""
    if process.returncode is None:
        process.kill()
    await process.wait()


async def measure(n: int, seconds: float, server: asyncio.subprocess.Process) -> dict:
    _url, endpoint, ca_file = (await asyncio.wait_for(server.stdout.readline(), 60)).decode().split()
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=ca_file)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=0),
                                    ws_response_class=DiscordClientWebSocketResponse)
    clients = [make_client(loop, session, 10**6 + 10 * i, endpoint) for i in range(n)]
    started = time.monotonic()
    opened = 0
    for start in range(0, n, 50):
        results = await asyncio.gather(*(vc.connect(reconnect=False, timeout=60) for vc in clients[start:start + 50]),
                                       return_exceptions=True)
        opened += sum(1 for r in results if not isinstance(r, BaseException))
    open_seconds = time.monotonic() - started
    threads_idle = threading.active_count()
    frames = int(seconds * 50)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.monotonic()
    for vc in clients:
        if vc.is_connected():
            vc.play(Frames(frames))
    await asyncio.sleep(0.5)
    threads_playing = threading.active_count()
    while any(vc.is_playing() for vc in clients):
        await asyncio.sleep(0.05)
    wall = time.monotonic() - wall_before
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    server.stdin.write(b"report\n")
    await server.stdin.drain()
    report = json.loads(await asyncio.wait_for(server.stdout.readline(), 120))
    await asyncio.gather(*(asyncio.wait_for(vc.disconnect(force=True), 10) for vc in clients),
                         return_exceptions=True)
    await session.close()
    server.stdin.close()
    try:
        await asyncio.wait_for(server.wait(), 20)
    except asyncio.TimeoutError:
        server.kill()
        await server.wait()
    jitter = sorted(abs(g - 20.0) for r in report.values() for g in r["gaps_ms"])

    def pct(p):
        return jitter[min(len(jitter) - 1, int(p * len(jitter)))] if jitter else float("nan")

    return {
        "opened": opened,
        "open_seconds": round(open_seconds, 2),
        "stream_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "cpu_us_per_connection_second": round(cpu / wall / max(opened, 1) * 1e6, 1),
        "threads_idle": threads_idle,
        "threads_playing": threads_playing,
        "received": sum(r["packets"] for r in report.values()),
        "jitter_p50_ms": round(pct(0.5), 3),
        "jitter_p99_ms": round(pct(0.99), 3),
    }


if __name__ == "__main__":
    try:
        result = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
    except KeyboardInterrupt:  # Ctrl-C: the server process is gone too (see main)
        sys.exit(130)
    print(json.dumps(result))
