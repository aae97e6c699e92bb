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

``FASTVOICE_BENCH_SPEAKERS=K`` (read by the server this client starts) gives every call K
speakers; each receiver then records each user's packets apart, one stream per speaker.
With ``--playout`` the result also has the playout figures of ``receive_common.playout_summary``
(ticks delivered late, dropped or skipped, frames decoded, whether the run held) and the
machine's total CPU over the window (``machine_busy_cores``: this client, the server and
anything else).

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
monotonic = time.monotonic


class Arrivals:
    """Each user's packet sequence numbers and arrival times (``time.time()``), in order."""

    __slots__ = ("by_user",)

    def __init__(self) -> None:
        self.by_user: dict[int, tuple[list[int], list[float]]] = {}

    def note(self, user_id: int, sequence: int) -> None:
        lists = self.by_user.get(user_id)
        if lists is None:
            lists = self.by_user[user_id] = ([], [])
        lists[0].append(sequence)
        lists[1].append(now())


class CountingReceiver:
    """Keeps each frame's sequence number and arrival time, nothing else."""

    __slots__ = ("arrivals",)

    def __init__(self) -> None:
        self.arrivals = Arrivals()

    def receive_opus_frame(self, user_id: int, packet) -> None:
        self.arrivals.note(user_id, packet.sequence)

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


def playout_receiver():
    from fastvoice import PlayoutReceiver
    from fastvoice.timeline import FRAME

    class TimedPlayout(PlayoutReceiver):
        """A PlayoutReceiver that also notes each packet's arrival, and counts its ticks.

        While ``measuring``, its tick listener counts the frames of each tick (``decoded``:
        PCM delivered, ``decoded_packets``: of which decoded from a packet, the rest
        concealed) and each tick's lag, from when the tick was due (``tick.time``, the
        clock's ``time.monotonic()``) to its delivery: a tick delivered more than one frame
        after it was due (when the next one is due already) is ``late``.  Nothing in the
        library counts that per receiver: the clock's ``late_ticks`` counts ticks it *started*
        late, for the whole loop, and a tick can also be late waiting for the decode pool."""

        def __init__(self) -> None:
            super().__init__()
            self.arrivals = Arrivals()
            self.measuring = False
            self.decoded = 0
            self.decoded_packets = 0
            self.ticks_seen = 0
            self.late = 0
            self.lags: list[float] = []
            self.late_times: list[float] = []  # when the first late ticks were due
            self.dropped_before = self.skipped_before = 0
            self.add_listener(self._count)

        def receive_opus_frame(self, user_id: int, packet) -> None:
            self.arrivals.note(user_id, packet.sequence)
            super().receive_opus_frame(user_id, packet)

        def start_measuring(self) -> None:
            self.measuring = True
            self.dropped_before, self.skipped_before = self.dropped_ticks, self.skipped_ticks

        def _count(self, tick) -> None:
            if not self.measuring:
                return
            lag = monotonic() - tick.time
            self.ticks_seen += 1
            self.lags.append(lag)
            if lag > FRAME:
                self.late += 1
                if len(self.late_times) < 20:
                    self.late_times.append(tick.time)
            self.decoded += len(tick.speaking)
            packets = tick.packets
            for user_id in tick.speaking:
                if packets.get(user_id) is not None:
                    self.decoded_packets += 1

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
    clock_before: dict[str, int] = {}

    def on_streaming() -> None:
        window.extend((common.cpu_seconds(), time.monotonic(), common.machine_busy_seconds()))
        if playout:
            clock_before.update(clock_counters(receivers))
            for r in receivers.values():
                r.start_measuring()

    report_line = await common.speak_raw(server, seconds, on_streaming)
    await asyncio.sleep(0.3)  # the last packets and ticks
    cpu = common.cpu_seconds() - window[0]
    wall = time.monotonic() - window[1]
    machine = common.machine_busy_seconds()
    if playout:
        # The frames still in the jitter buffers when the stream stopped play out (at most
        # the largest playout delay, 0.4 s, plus decoding; concealment 0.1 s after): waited
        # for before anything else runs on this loop, so that the figures' own work below
        # delays no tick. Not in the CPU window above.
        expected = round(seconds * 50) * n * common.speakers_per_call()
        deadline = time.monotonic() + 2.0
        while sum(r.decoded_packets for r in receivers.values()) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        for r in receivers.values():
            r.measuring = False
        clock_after = clock_counters(receivers)
    rss_after = common.rss_kib()
    report = json.loads(report_line)
    # each stream's receiver (its call's) and user id
    streams = {key: (receivers[stream.get("guild", key)], stream["user_id"]) for key, stream in report["calls"].items()}
    arrivals = {key: r.arrivals.by_user[user] for key, (r, user) in streams.items() if user in r.arrivals.by_user}
    result = common.summarize(report, arrivals, n=n, seconds=seconds, cpu=cpu, wall=wall,
                              rss_per_call_kib=round((rss_after - rss_before) / n, 1))
    result.update(speedups=speedups_enabled(), mode=str(conns[0].udp.packetizer.mode) if conns[0].udp else None)
    # the whole machine over the same window (this client, the server, and whatever else runs)
    result["machine_busy_cores"] = (round((machine - window[2]) / wall, 3)
                                    if machine is not None and window[2] is not None and wall else None)
    result["load_average"] = round(os.getloadavg()[0], 2)
    if playout:
        calls = [{"ticks": r.ticks_seen, "late": r.late, "decoded": r.decoded, "decoded_packets": r.decoded_packets,
                  "dropped_ticks": r.dropped_ticks - r.dropped_before,
                  "skipped_ticks": r.skipped_ticks - r.skipped_before, "lags": r.lags}
                 for r in receivers.values()]
        result["decoded"] = sum(r.decoded for r in receivers.values())  # PCM frames, concealed ones included
        result.update(common.playout_summary(
            result["expected"], calls, {k: clock_after[k] - clock_before.get(k, 0) for k in clock_after}))
        # when the late ticks were due, in seconds after the first packet was sent (the first
        # 20 of each call, all calls together): tells a one-off stall from steady overload
        result["late_tick_times"] = sorted({round(t - window[1], 2) for r in receivers.values()
                                            for t in r.late_times})[:50]
        stats = [r.stats(user) for r, user in streams.values() if user in r.users]
        result["played"] = sum(s.played for s in stats)
        result["concealed"] = sum(s.concealed for s in stats)
        result["late_packets"] = sum(s.late for s in stats)
    return result


def clock_counters(receivers: dict) -> dict[str, int]:
    """The counters of the loop's playout clock (every receiver here shares it)."""
    clock = next((r.clock for r in receivers.values() if r.clock is not None), None)
    if clock is None:
        return {"clock_late_ticks": 0, "clock_skipped": 0, "clock_dropped": 0}
    return {"clock_late_ticks": clock.late_ticks, "clock_skipped": clock.skipped, "clock_dropped": clock.dropped}


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
