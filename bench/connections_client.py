"""Client side of bench/test_bench_connections.py: run N connections, print one JSON line of results."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class TickTimer:
    """Times the send clock's ticks from inside the client (``time.perf_counter``).

    The server's jitter figure is what arrived; these say what the sender did: the
    start-to-start interval of ticks (|interval - 20 ms|, the same statistic), how long
    each tick ran, and how long its send phase (the datagrams prepared the tick before,
    back to back) took. A late tick with a short run means the loop woke late; a long run
    means the tick's own work (or the process being descheduled in it) was the delay.
    """

    def __init__(self, audio_module, clock) -> None:
        self.starts: list[float] = []
        self.runs: list[float] = []
        self.sends: list[float] = []
        self._audio = audio_module
        self._clock = clock
        self._send_prepared = audio_module.send_prepared
        run_tick = clock.run_tick
        clock_now = time.perf_counter

        def timed_send(senders):
            t = clock_now()
            try:
                return self._send_prepared(senders)
            finally:
                self.sends.append(clock_now() - t)

        def timed_tick():
            t = clock_now()
            self.starts.append(t)
            run_tick()
            self.runs.append(clock_now() - t)

        audio_module.send_prepared = timed_send
        clock.run_tick = timed_tick

    def undo(self) -> None:
        self._audio.send_prepared = self._send_prepared
        del self._clock.run_tick

    def dump(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"starts": self.starts, "runs": self.runs, "sends": self.sends}, fh)

    def summary(self, frame_ms: float = 20.0) -> dict:
        def pct(values, p):
            values = sorted(values)
            return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None

        interval_jitter = [abs((b - a) * 1000 - frame_ms) for a, b in zip(self.starts, self.starts[1:])]
        runs = [r * 1000 for r in self.runs]
        sends = [r * 1000 for r in self.sends]
        return {
            "ticks": len(self.starts),
            "tick_jitter_p50_ms": pct(interval_jitter, 0.50),
            "tick_jitter_p99_ms": pct(interval_jitter, 0.99),
            "tick_jitter_max_ms": round(max(interval_jitter), 3) if interval_jitter else None,
            "tick_run_p50_ms": pct(runs, 0.50),
            "tick_run_p99_ms": pct(runs, 0.99),
            "tick_run_max_ms": round(max(runs), 3) if runs else None,
            "send_phase_p50_ms": pct(sends, 0.50),
            "send_phase_p99_ms": pct(sends, 0.99),
        }


class Frames:
    """An endless provider of a fixed 120-byte frame for ``count`` frames."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.frame = os.urandom(120)

    def provide_opus_frame(self):
        if self.left <= 0:
            raise EOFError
        self.left -= 1
        return self.frame

    def close(self):
        pass


async def main(n: int, seconds: float) -> dict:
    server = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(HERE, "voice_server_process.py"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**28,
    )
    closers: list = []  # what measure() opened, closed on every way out (Ctrl-C too)
    try:
        return await measure(n, seconds, server, closers)
    finally:
        for close in closers:
            try:
                # Closed here rather than left to asyncio.run's cancellation of the remaining
                # tasks: a reconnecting voice gateway would keep this process waiting.
                await asyncio.wait_for(close(), 10)
            except BaseException:  # noqa: BLE001 - the server must still be stopped
                pass
        await stop(server)


async def stop(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if it is still running and reap it (on every way out, Ctrl-C included)."""
    if process.returncode is None:
        process.kill()
    await process.wait()


async def measure(n: int, seconds: float, server: asyncio.subprocess.Process, closers: list) -> dict:
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

    if os.environ.get("FASTVOICE_BENCH_PRECISE_TIMER", "1") == "0":
        from fastvoice.audio import SendClock

        # The loop's own timers instead of the timerfd (to measure what the timerfd gives).
        SendClock._clocks[asyncio.get_running_loop()] = SendClock(asyncio.get_running_loop(), precise=False)
    manager = Manager(update_voice_state, 1, conn_config=ConnConfig(
        open_timeout=120, gateway_config=GatewayConfig(open_timeout=120, connect_timeout=60)))
    closers.append(manager.close)
    rss_before = rss_kib()
    conns = [manager.create_conn(g) for g in range(1, n + 1)]
    opened_at = time.monotonic()
    for start in range(0, n, 100):
        await asyncio.gather(*(c.open(10**6 + i) for i, c in enumerate(conns[start:start + 100], start)))
    open_seconds = time.monotonic() - opened_at
    opened = sum(1 for c in conns if c.udp is not None and c.udp.packetizer is not None)
    frames = int(seconds * 50)
    if os.environ.get("FASTVOICE_BENCH_GC_FREEZE", "1") == "1":
        gc.collect()
        gc.freeze()  # what a long-running bot does after start-up (see bench/README.md)
    gc_pauses: list[float] = []
    gc_started = [0.0]

    def gc_timer(phase, info):
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(gc_timer)
    from fastvoice import audio

    ticks = TickTimer(audio, audio.SendClock.for_loop())
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.monotonic()
    for c in conns:
        c.set_opus_frame_provider(Frames(frames))
    while any(c.sender is not None and c.sender.live for c in conns):
        await asyncio.sleep(0.05)
    wall = time.monotonic() - wall_before
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    rss_after = rss_kib()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    gc.callbacks.remove(gc_timer)
    ticks.undo()
    if os.environ.get("FASTVOICE_BENCH_TICKS_FILE"):
        ticks.dump(os.environ["FASTVOICE_BENCH_TICKS_FILE"])  # per-tick times, for a closer look
    stats = [c.sender.stats for c in conns]
    await asyncio.sleep(0.2)
    server.stdin.write(b"report\n")
    await server.stdin.drain()
    report = json.loads(await asyncio.wait_for(server.stdout.readline(), 120))
    await manager.close()
    server.stdin.close()
    await server.wait()
    jitter = sorted(abs(g - 20.0) for r in report.values() for g in r["gaps_ms"])
    received = sum(r["packets"] for r in report.values())

    def pct(p: float) -> float:
        return jitter[min(len(jitter) - 1, int(p * len(jitter)))] if jitter else float("nan")

    return {
        "speedups": speedups_enabled(),
        "opened": opened,
        "open_seconds": round(open_seconds, 2),
        "stream_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "cpu_us_per_connection_second": round(cpu / wall / n * 1e6, 1),
        "rss_kib_per_connection": round((rss_after - rss_before) / n, 1),
        "sent": sum(s.sent for s in stats),
        "received": received,
        "deficit": sum(s.deficit for s in stats),
        "jitter_p50_ms": round(pct(0.50), 3),
        "jitter_p99_ms": round(pct(0.99), 3),
        "jitter_mean_ms": round(statistics.fmean(jitter), 3) if jitter else None,
        "gc_collections": len(gc_pauses),
        "gc_pause_max_ms": round(max(gc_pauses, default=0.0) * 1000, 2),
        "gc_frozen": os.environ.get("FASTVOICE_BENCH_GC_FREEZE", "1") == "1",
        "precise_timer": audio.SendClock.for_loop().precise,
        **ticks.summary(),
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        result = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
    except KeyboardInterrupt:  # Ctrl-C: the server process is gone too (see main)
        sys.exit(130)
    print(json.dumps(result))
