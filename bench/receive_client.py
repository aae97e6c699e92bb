"""fastvoice's side of bench/test_bench_receive.py: N listener calls in one process.

    python bench/receive_client.py N SECONDS [--playout] [--mode=xchacha|aes]

Opens N guild connections through one Manager (uvloop), each with an OpusFrameReceiver,
asks ``receive_server_process.py`` to speak to every call for SECONDS and prints one JSON
line (``receive_common.summarize``). The receiver of each call:

- default: a counting receiver (the packet's sequence number and ``time.time()`` appended
  to two lists): what a recorder or a relay that keeps Opus pays at least;
- ``--playout``: a ``fastvoice.PlayoutReceiver`` (jitter buffer, one 20 ms timeline, every
  frame decoded to 48 kHz stereo PCM in the shared decode pool) with a listener that counts
  the decoded frames of each tick; the server then sends real Opus (the demo's clip). The
  latency is still taken at the packet's arrival in the receiver; the playout delay
  (60 ms to start, adapting) comes on top of it before the PCM is delivered.

``FASTVOICE_NO_EXTENSIONS=1`` measures the pure twin (the server keeps the compiled core).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import receive_common as common  # noqa: E402

now = time.time


class CountingReceiver:
    """Keeps each frame's sequence number and arrival time, nothing else."""

    __slots__ = ("seqs", "times")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.times: list[float] = []

    def receive_opus_frame(self, user_id: int, packet) -> None:
        self.seqs.append(packet.sequence)
        self.times.append(now())

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


def playout_receiver():
    from fastvoice import PlayoutReceiver

    class TimedPlayout(PlayoutReceiver):
        """A PlayoutReceiver that also notes each packet's arrival, and counts decoded frames."""

        def __init__(self) -> None:
            super().__init__()
            self.seqs: list[int] = []
            self.times: list[float] = []
            self.decoded = 0
            self.add_listener(self._count)

        def receive_opus_frame(self, user_id: int, packet) -> None:
            self.seqs.append(packet.sequence)
            self.times.append(now())
            super().receive_opus_frame(user_id, packet)

        def _count(self, tick) -> None:
            self.decoded += len(tick.speaking)

    return TimedPlayout()


async def main(n: int, seconds: float, playout: bool, mode: str) -> dict:
    server = await common.start_server(mode, *(["--opus"] if playout else []))
    closers: list = []
    try:
        return await measure(n, seconds, playout, server, closers)
    finally:
        for close in closers:
            try:
                await asyncio.wait_for(close(), 10)
            except BaseException:  # noqa: BLE001 - the server must still be stopped
                pass
        await common.stop_server(server)


async def measure(n: int, seconds: float, playout: bool, server, closers: list) -> dict:
    from fastvoice import ConnConfig, Manager, speedups_enabled
    from fastvoice.gateway import GatewayConfig

    url = (await asyncio.wait_for(server.stdout.readline(), 60)).decode().strip()
    manager: Manager

    async def update_voice_state(guild_id, channel_id, self_mute=False, self_deaf=False):
        if channel_id is None:
            return
        loop = asyncio.get_running_loop()
        loop.call_soon(manager.handle_voice_state_update, {
            "guild_id": str(guild_id), "channel_id": str(channel_id), "user_id": "1", "session_id": f"s{guild_id}"})
        loop.call_soon(manager.handle_voice_server_update, {
            "guild_id": str(guild_id), "token": f"t{guild_id}", "endpoint": url})

    manager = Manager(update_voice_state, 1, conn_config=ConnConfig(
        open_timeout=120, gateway_config=GatewayConfig(open_timeout=120, connect_timeout=60)))
    closers.append(manager.close)
    rss_before = common.rss_kib()
    conns = [manager.create_conn(g) for g in range(1, n + 1)]
    for start in range(0, n, 100):
        await asyncio.gather(*(c.open(g) for g, c in enumerate(conns[start:start + 100], start + 1)))
    receivers = {}
    for guild, conn in enumerate(conns, 1):
        receiver = playout_receiver() if playout else CountingReceiver()
        conn.set_opus_frame_receiver(receiver)
        receivers[str(guild)] = receiver
    gc.collect()
    gc.freeze()  # what a long-running bot does after start-up
    window: list[float] = []

    def on_streaming() -> None:
        window.extend((common.cpu_seconds(), time.monotonic()))

    report = await common.speak(server, seconds, on_streaming)
    await asyncio.sleep(0.3)  # the last packets and ticks
    cpu = common.cpu_seconds() - window[0]
    wall = time.monotonic() - window[1]
    rss_after = common.rss_kib()
    arrivals = {guild: (r.seqs, r.times) for guild, r in receivers.items()}
    result = common.summarize(report, arrivals, n=n, seconds=seconds, cpu=cpu, wall=wall,
                              rss_per_call_kib=round((rss_after - rss_before) / n, 1))
    result.update(speedups=speedups_enabled(), mode=str(conns[0].udp.packetizer.mode) if conns[0].udp else None)
    if playout:
        result["decoded"] = sum(r.decoded for r in receivers.values())
        stats = [r.stats(report["calls"][g]["user_id"]) for g, r in receivers.items()]
        result["played"] = sum(s.played for s in stats)
        result["concealed"] = sum(s.concealed for s in stats)
        # ticks never delivered because the decode pool was still busy, or skipped by a blocked loop
        result["dropped_ticks"] = sum(r.dropped_ticks for r in receivers.values())
        result["skipped_ticks"] = sum(r.skipped_ticks for r in receivers.values())
    return result


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        out = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), "--playout" in sys.argv[3:],
                              common.mode_argument(sys.argv[3:])))
    except KeyboardInterrupt:
        sys.exit(130)
    print(json.dumps(out))
