"""The demo's speaker bot, in a process of its own (``python -m fastvoice._demo_speakers``).

A bot that speaks in a thousand calls and a bot that listens to them are two bots, and a bot
runs on one event loop: one core at most. The demo runs the speaker bot here and the listener
bot in its own process, so that each has its loop (and its core) to itself, as two real bots
would.

The demo (the parent) registered every voice session with the local server and hands over,
on stdin, one JSON line: the calls (guild id, channel id and the two main-gateway dispatches
of each), the seconds of audio and whether DAVE is on. This process answers on stdout with
one JSON line per event:

- ``{"ready": ...}`` once every connection is open (and its DAVE group formed), or
  ``{"error": "..."}``;
- after the parent writes ``go``: ``{"sent": N}`` about once a second while streaming, then
  ``{"done": ...}`` with each call's SSRC, packets sent, first sequence number and deficit,
  and this process's CPU seconds while streaming.

It ends when its stdin closes (the parent ended), closing every connection first.
"""

from __future__ import annotations

import asyncio
import io
import json
import resource
import signal
import struct
import sys
import time
from typing import Any

from . import ConnConfig, GatewayConfig, Manager, OpusReader, SendClock
from ._demo_clip import load_clip
from .histogram import Histogram
from .testing._process import end_child

__all__ = ["LocalSpeakers", "SpeakerBot", "SpeakerBotProcess", "main"]

#: How long the connections may take to open and form their DAVE groups.
READY_TIMEOUT = 120.0
#: Bounds (seconds) of the tick-lateness histogram: 0.1 ms steps to 20 ms, then coarser.
LATENESS_BOUNDS = [i / 10_000 for i in range(1, 201)] + [0.025, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1.0]


def lateness_percentiles(histogram: Histogram, *quantiles: float) -> list[float | None]:
    """Upper bounds (ms) of the buckets holding each quantile of the ticks' lateness."""
    cumulative = histogram.cumulative()
    total = cumulative[-1][1] if cumulative else 0
    result: list[float | None] = []
    for q in quantiles:
        if not total:
            result.append(None)
            continue
        rank = q * total
        result.append(next((bound * 1000 for bound, count in cumulative if count >= rank), None))
    return result


def cpu_seconds() -> float:
    """This process's CPU time (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Prearranged:
    """The main gateway's side of voice for this bot: the parent registered each session with
    the server and passed the two dispatches of each guild; op 4 delivers them."""

    def __init__(self, updates: dict[int, tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self._updates = updates
        self._manager: Manager | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, manager: Manager) -> None:
        self._manager = manager

    async def update_voice_state(self, guild_id: int, channel_id: int | None, self_mute: bool = False,
                                 self_deaf: bool = False) -> None:
        if channel_id is None or guild_id not in self._updates:
            return  # leaving: the demo is over, nobody waits for the answer
        task = asyncio.get_running_loop().create_task(self._deliver(*self._updates[guild_id]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, state: dict[str, Any], server: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # after op 4 returns, as a gateway would
        assert self._manager is not None
        self._manager.handle_voice_state_update(state)
        self._manager.handle_voice_server_update(server)


class SpeakerBot:
    """One bot user speaking the demo's clip into many calls."""

    def __init__(self, user_id: int, calls: list[dict[str, Any]], seconds: float, dave: bool) -> None:
        self.user_id = user_id
        self.calls = calls
        self.dave = dave
        clip = load_clip()
        frames = [clip[i % len(clip)] for i in range(max(1, int(seconds * 50)))]
        self.stream = b"".join(struct.pack("<I", len(f)) + f for f in frames)
        gateway = _Prearranged({int(c["guild_id"]): (c["state"], c["server"]) for c in calls})
        config = ConnConfig(open_timeout=60, gateway_config=GatewayConfig(max_dave_protocol_version=1 if dave else 0))
        self.manager = Manager(gateway.update_voice_state, user_id, conn_config=config)
        gateway.attach(self.manager)
        self.conns = [self.manager.create_conn(int(c["guild_id"])) for c in calls]

    async def open(self) -> None:
        """Open every connection (50 at a time) and wait for their DAVE groups."""
        for start in range(0, len(self.conns), 50):
            batch = range(start, min(len(self.conns), start + 50))
            await asyncio.gather(*(self.conns[i].open(int(self.calls[i]["channel_id"])) for i in batch))
        if self.dave:
            deadline = time.monotonic() + READY_TIMEOUT
            while not all(c.dave is not None and c.dave.ready for c in self.conns):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DAVE groups did not form within {READY_TIMEOUT:g} s")
                await asyncio.sleep(0.05)

    def start(self) -> None:
        """Every speaker starts the clip (on the next tick of the shared clock)."""
        for conn in self.conns:
            conn.set_opus_frame_provider(OpusReader(io.BytesIO(self.stream)))

    def sent(self) -> int:
        """Packets sent so far, over every call."""
        return sum(c.sender.stats.sent for c in self.conns if c.sender is not None)

    def streaming(self) -> bool:
        """True while any speaker still has audio to send."""
        return any(c.sender is not None and c.sender.live for c in self.conns)

    def report(self) -> list[dict[str, Any]]:
        """Per call: the speaker's SSRC, packets sent, first sequence number and deficit ticks."""
        calls = []
        for conn in self.conns:
            udp, sender = conn.udp, conn.sender
            sent = sender.stats.sent if sender is not None else 0
            counters = udp.stream_counters if udp is not None else None
            calls.append({
                "ssrc": udp.ssrc if udp is not None else None,
                "sent": sent,
                "first": 0 if counters is None else (counters[0] - sent) & 0xFFFF,
                "deficit": sender.stats.deficit if sender is not None else 0,
            })
        return calls

    async def close(self) -> None:
        await self.manager.close()


class LocalSpeakers:
    """The speaker bot on the demo's own event loop (``--in-process``), shaped like a
    :class:`SpeakerBotProcess`."""

    def __init__(self, bot: SpeakerBot) -> None:
        self.bot = bot
        self.cpu: float | None = None  # counted in the demo's own process
        self.metrics_url: str | None = None

    async def ready(self) -> None:
        await self.bot.open()

    def go(self) -> None:
        self.bot.start()

    @property
    def sent(self) -> int:
        return self.bot.sent()

    def streaming(self) -> bool:
        return self.bot.streaming()

    async def finished(self) -> dict[str, Any]:
        return {"done": self.bot.report(), "deficit": None}

    async def close(self) -> None:
        await self.bot.close()


class SpeakerBotProcess:
    """The demo's handle on the speaker bot's process: start it with the calls, wait until it is
    ready, tell it to go, follow its progress, take its report, end it."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self._setup = setup
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._done: asyncio.Future[dict[str, Any]] | None = None
        #: Packets sent, CPU seconds and wall seconds since ``go``, as last reported.
        self.sent = 0
        self.cpu: float | None = 0.0
        self.wall = 0.0
        self.metrics_url: str | None = None
        self._streaming = True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready, self._done = loop.create_future(), loop.create_future()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastvoice._demo_speakers",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(self._setup).encode() + b"\n")
        self._reader = loop.create_task(self._read())

    async def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        while True:
            line = await process.stdout.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "ready" in message and self._ready is not None and not self._ready.done():
                self.metrics_url = message.get("metrics")
                self._ready.set_result(None)
            elif "error" in message and self._ready is not None and not self._ready.done():
                self._ready.set_exception(RuntimeError(f"the speaker bot failed: {str(message['error'])[:300]}"))
            elif "sent" in message:
                self.sent, self.cpu, self.wall = int(message["sent"]), float(message["cpu"]), float(message["wall"])
            elif "done" in message and self._done is not None and not self._done.done():
                self._streaming = False
                self.cpu, self.wall = float(message["cpu"]), float(message["wall"])
                self.sent = sum(int(c["sent"]) for c in message["done"])
                self._done.set_result(message)
        self._streaming = False
        code = await process.wait()
        for future in (self._ready, self._done):
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"the speaker bot's process ended (exit status {code})"))

    async def ready(self) -> None:
        """Wait until every speaker connection is open (and its DAVE group formed)."""
        assert self._ready is not None
        await asyncio.shield(self._ready)

    def go(self) -> None:
        """Start the clip in every call."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(b"go\n")

    def streaming(self) -> bool:
        """True until the bot reported its end."""
        return self._streaming

    async def finished(self) -> dict[str, Any]:
        """The bot's report (see the module's docstring)."""
        assert self._done is not None
        return await asyncio.shield(self._done)

    async def close(self) -> None:
        """End the process (close its stdin; terminate, then kill, if it lingers) and wait for it."""
        process, self._process = self._process, None
        if process is not None:
            await end_child(process, 30)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for future in (self._ready, self._done):
            if future is not None and not future.done():
                future.cancel()
            elif future is not None and not future.cancelled():
                future.exception()  # retrieved: an unread failure is not reported at exit


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    """Read the setup line, open the calls, stream on ``go``, report; end when stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # the parent decides; its closing stdin ends this process
    setup = json.loads(await reader.readline() or b"null")
    if not isinstance(setup, dict):
        raise SystemExit("expected one JSON line with the calls")
    bot = SpeakerBot(int(setup["user_id"]), list(setup["calls"]), float(setup["seconds"]), bool(setup["dave"]))
    metrics: Any = None

    async def run() -> None:
        try:
            await bot.open()
        except Exception as exc:
            _say({"error": f"{type(exc).__name__}: {exc}"[:300]})
            await reader.read()  # the parent decides what follows; wait for it to end
            return
        ready: dict[str, Any] = {"ready": len(bot.conns)}
        if setup.get("metrics"):
            from .prometheus import start_metrics_server

            nonlocal metrics
            metrics = await start_metrics_server([bot.manager], 0)
            ready["metrics"] = f"http://127.0.0.1:{metrics.port}/metrics"
        _say(ready)
        if (await reader.readline()).strip() != b"go":
            return
        clock = SendClock.for_loop()
        clock.lateness = Histogram(LATENESS_BOUNDS)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        bot.start()
        await asyncio.sleep(0.1)
        last = time.monotonic()
        while bot.streaming():
            await asyncio.sleep(0.1)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                _say({"sent": bot.sent(), "cpu": cpu_seconds() - cpu0, "wall": last - wall0})
        p50, p99 = lateness_percentiles(clock.lateness, 0.5, 0.99)
        _say({"done": bot.report(), "cpu": cpu_seconds() - cpu0, "wall": time.monotonic() - wall0,
              "tick_late_p50_ms": p50, "tick_late_p99_ms": p99, "late_ticks": clock.late_ticks})
        await reader.read()  # stay connected until the parent has counted what arrived

    running = loop.create_task(run())
    stopped = loop.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (running, stopped):
            task.cancel()
        await asyncio.gather(running, stopped, return_exceptions=True)
        if metrics is not None:
            await metrics.close()
        await bot.close()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
