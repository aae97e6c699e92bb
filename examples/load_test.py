"""Load test: many guild voice calls on one event loop, streaming the bundled Opus clip.

By default it starts fastvoice's local voice server in a child process (so the CPU figures
are this process's alone), joins N guild calls through one Manager, streams the bundled
clip (looped) on every call and prints, every interval, the CPU used, the ticks lost to
event-loop stalls (deficit) and the send clock's jitter.

    python examples/load_test.py                        # 500 calls for 60 s, local server
    python examples/load_test.py -n 5 -s 2 --interval 1 # a quick check
    python examples/load_test.py -n 50 --dave           # DAVE on, with a listener bot per call
    DISCORD_TOKEN=... python examples/load_test.py --discord --channels 111,222,333

Against the local server DAVE is off unless --dave is given. The local server forms a call's
DAVE group once the call has two members, and until then a bot holds its audio rather than
send it unencrypted, so --dave joins a second, listening bot to every call: 2N connections in this process, and
a "heard/s" column counting the frames the listeners decrypted. The local server is a test
server written in Python: past about 12,000 packets per second it cannot take in everything
("server rx/s" falls behind "sent/s"), which costs the client nothing.

With --discord it connects to Discord's real main gateway with the bot token read from the
environment variable named by --token-env (never from the command line) and joins the given
voice channels (one per guild; the bot must be in those guilds). Its main gateway client is
deliberately small: one shard, no resume; if Discord asks it to reconnect the run stops.
Joins and leaves are paced to stay under the main gateway's limit of 120 commands per minute,
so 500 calls take about five minutes to open, and as long to leave. Discord's calls are
end-to-end encrypted (DAVE) and fastvoice never sends plaintext into them: a call whose DAVE
group is not ready holds its audio, which the report shows as calls that sent nothing.

Jitter is measured where the clock hands each connection its next frame: the gap between
two consecutive frame requests of a connection, minus 20 ms. Each request happens right
after the tick's sends, so it follows the send times closely.

The exit status is 0 when every call opened and sent audio, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from importlib import resources

import fastvoice
from fastvoice import ConnConfig, Manager, OpusReader, SendClock

DISCORD_GATEWAY = "wss://gateway.discord.gg/?v=10&encoding=json"
# Intents: GUILDS (channel lists in GUILD_CREATE) and GUILD_VOICE_STATES (the voice dispatches).
INTENTS = (1 << 0) | (1 << 7)
# Discord allows 120 main gateway commands per 60 s; heartbeats need a few of them.
JOIN_SPACING = 0.6
# User ids of the bots against the local server (any ids work there).
BOT_USER_ID, LISTENER_USER_ID = 4242, 4343

log = logging.getLogger("load_test")


# -- the audio ------------------------------------------------------------------------


def load_clip() -> bytes:
    """The bundled clip: Opus frames, each after its length (the OpusReader format)."""
    return resources.files("fastvoice").joinpath("data/demo_clip.dca").read_bytes()


class JitterHistogram:
    """|gap - 20 ms| of frame requests, counted in 0.1 ms bins (up to 100 ms, then one bin).

    Counting is O(1) per frame and a report O(bins): with hundreds of calls, keeping every gap
    and sorting them at each report would itself stall the event loop for tens of ms.
    """

    BIN_MS = 0.1
    BINS = 1000

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts = [0] * (self.BINS + 1)
        self.total = 0
        self.max_ms = float("nan")

    def record(self, gap: float) -> None:
        deviation_ms = abs(gap - 0.020) * 1000
        self.counts[min(int(deviation_ms / self.BIN_MS), self.BINS)] += 1
        self.total += 1
        if not deviation_ms <= self.max_ms:  # also replaces the initial NaN
            self.max_ms = deviation_ms

    def percentile(self, fraction: float) -> float:
        """The upper edge of the bin holding that fraction of the gaps (ms); NaN when empty."""
        if not self.total:
            return float("nan")
        rank = fraction * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return min((index + 1) * self.BIN_MS, self.max_ms)
        return self.max_ms


class LoopingClip:
    """An OpusFrameProvider that plays a clip over and over and notes when frames are asked for
    (the gap between two requests goes to ``jitter``)."""

    def __init__(self, clip: bytes, jitter: JitterHistogram) -> None:
        self._stream = io.BytesIO(clip)
        self._reader = OpusReader(self._stream)
        self._jitter = jitter
        self._last = 0.0
        self._calls = 0

    def provide_opus_frame(self) -> bytes | None:
        now = time.perf_counter()
        self._calls += 1
        # The first frame waits one extra tick for op 5 Speaking: not a clock delay.
        if self._calls > 2:
            self._jitter.record(now - self._last)
        self._last = now
        try:
            return self._reader.provide_opus_frame()
        except EOFError:
            self._stream.seek(0)
            return self._reader.provide_opus_frame()

    def close(self) -> None:
        self._reader.close()


# -- the main gateway's part -----------------------------------------------------------


class LocalMainGateway:
    """Plays Discord's main gateway for a local voice server in another process.

    The server accepts any session id and token it was not told about, so the two voice
    dispatches can be made up here.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.manager: Manager | None = None

    async def update_voice_state(self, guild_id: int, channel_id: int | None, self_mute: bool, self_deaf: bool) -> None:
        if channel_id is None or self.manager is None:
            return
        manager = self.manager
        state = {"guild_id": str(guild_id), "channel_id": str(channel_id), "user_id": str(manager.user_id),
                 "session_id": f"load-{manager.user_id}-{guild_id}"}
        server = {"guild_id": str(guild_id), "token": f"token-{manager.user_id}-{guild_id}", "endpoint": self.url}
        loop = asyncio.get_running_loop()
        loop.call_soon(manager.handle_voice_state_update, state)
        loop.call_soon(manager.handle_voice_server_update, server)


class DiscordMainGateway:
    """A minimal client of Discord's main gateway: identify, heartbeat, op 4, voice dispatches.

    One shard, no resume, no zlib: enough to hold the voice side of a load test.
    """

    def __init__(self, token: str, url: str = DISCORD_GATEWAY) -> None:
        self._token = token
        self._url = url
        self.user_id: int | None = None
        self.manager: Manager | None = None
        #: channel id -> guild id, from GUILD_CREATE.
        self.channel_guilds: dict[int, int] = {}
        self._ready = asyncio.Event()
        self._guilds_changed = asyncio.Event()
        self._seq: int | None = None
        self._ws = None
        self._session = None
        self._tasks: list[asyncio.Task] = []
        self._send_lock = asyncio.Lock()
        self._last_command = 0.0
        self.failure: str | None = None

    async def connect(self, timeout: float = 30.0) -> None:
        """Connect and identify; return once READY arrived."""
        import aiohttp

        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(self._url, max_msg_size=0)
        except BaseException:
            await self._session.close()
            raise
        self._tasks.append(asyncio.get_running_loop().create_task(self._read()))
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"no READY from the main gateway within {timeout:g} s ({self.failure or 'no reason'})")

    async def wait_for_channels(self, channel_ids: list[int], timeout: float = 60.0) -> None:
        """Wait until GUILD_CREATE told which guild each channel belongs to."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [c for c in channel_ids if c not in self.channel_guilds]
            if not missing:
                return
            if loop.time() > deadline or self.failure:
                raise RuntimeError(f"{len(missing)} channel(s) not found in the bot's guilds, e.g. {missing[:5]}")
            self._guilds_changed.clear()
            try:
                await asyncio.wait_for(self._guilds_changed.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass

    async def update_voice_state(self, guild_id: int, channel_id: int | None, self_mute: bool, self_deaf: bool) -> None:
        """Send op 4 Voice State Update (the Manager's StateUpdateFunc), paced under the rate limit."""
        payload = {"op": 4, "d": {"guild_id": str(guild_id), "channel_id": None if channel_id is None else str(channel_id),
                                  "self_mute": self_mute, "self_deaf": self_deaf}}
        await self._send(payload, paced=True)

    async def _send(self, payload: dict, paced: bool = False) -> None:
        async with self._send_lock:
            if paced:
                wait = self._last_command + JOIN_SPACING - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._last_command = time.monotonic()
            if self._ws is None or self._ws.closed:
                raise ConnectionError(f"the main gateway connection is closed ({self.failure or 'closed'})")
            await self._ws.send_str(json.dumps(payload))

    async def _read(self) -> None:
        import aiohttp

        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                    await self._on_frame(frame)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.warning("main gateway: ignored a malformed frame (%s)", type(exc).__name__)
            self.failure = f"main gateway closed (code {self._ws.close_code})"
        except Exception as exc:  # noqa: BLE001 - the run reports it; nothing here may die silently
            self.failure = f"main gateway reader failed: {type(exc).__name__}: {exc}"
        log.error("%s", self.failure)
        self._guilds_changed.set()

    async def _on_frame(self, frame: dict) -> None:
        op = frame.get("op")
        if frame.get("s") is not None:
            self._seq = frame["s"]
        if op == 10:  # Hello
            interval = frame["d"]["heartbeat_interval"] / 1000
            self._tasks.append(asyncio.get_running_loop().create_task(self._heartbeat(interval)))
            await self._send({"op": 2, "d": {"token": self._token, "intents": INTENTS,
                                             "properties": {"os": sys.platform, "browser": "fastvoice-load-test",
                                                            "device": "fastvoice-load-test"}}})
        elif op == 1:  # the server asks for a heartbeat now
            await self._send({"op": 1, "d": self._seq})
        elif op in (7, 9):  # Reconnect / Invalid Session: out of scope for this script
            self.failure = f"Discord sent op {op} ({'reconnect' if op == 7 else 'invalid session'}); stopping"
            log.error("%s", self.failure)
            await self._ws.close()
        elif op == 0:
            await self._on_dispatch(frame.get("t"), frame.get("d") or {})

    async def _on_dispatch(self, name: str | None, data: dict) -> None:
        if name == "READY":
            self.user_id = int(data["user"]["id"])
            self._ready.set()
        elif name == "GUILD_CREATE":
            guild_id = int(data["id"])
            for channel in data.get("channels", []):
                self.channel_guilds[int(channel["id"])] = guild_id
            self._guilds_changed.set()
        elif name == "VOICE_STATE_UPDATE" and self.manager is not None:
            self.manager.handle_voice_state_update(data)
        elif name == "VOICE_SERVER_UPDATE" and self.manager is not None:
            self.manager.handle_voice_server_update(data)

    async def _heartbeat(self, interval: float) -> None:
        while self._ws is not None and not self._ws.closed:
            try:
                await self._send({"op": 1, "d": self._seq})
            except (ConnectionError, RuntimeError):
                return
            await asyncio.sleep(interval)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()


# -- the local voice server, in a child process ---------------------------------------------


async def serve(interval: float, dave: bool) -> None:
    """Child process: run a VoiceServer; print its URL, then one JSON line of counts per interval.

    Recordings are emptied at each report so a long run does not grow without bound.
    Serves until stdin closes.
    """
    from fastvoice.testing import VoiceServer

    if hasattr(os, "nice"):
        os.nice(5)  # the client's figures are the point: let it have the CPU first
    async with VoiceServer(heartbeat_interval=15000.0, dave_protocol_version=1 if dave else 0) as server:
        print(server.url, flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        while not stdin_closed.done():
            await asyncio.wait({stdin_closed}, timeout=interval)
            received = 0
            for session in server.sessions:
                received += len(session.packets)
                session.packets.clear()
                server.packets(session.ssrc).clear()
            server.rejected_datagrams.clear()
            print(json.dumps({"received": received, "sessions": sum(not s.ended for s in server.sessions)}), flush=True)


class ServerProcess:
    """The child process running the local server, and the counts it reports."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.received = 0
        self._reader: asyncio.Task | None = None

    async def start(self, interval: float, dave: bool) -> str:
        args = [sys.executable, os.path.abspath(__file__), "--serve", "--interval", str(interval)]
        if dave:
            args.append("--dave")
        self.proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the local voice server process exited before printing its URL")
        self._reader = asyncio.get_running_loop().create_task(self._read_counts())
        return line.decode().strip()

    async def _read_counts(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.received += json.loads(line)["received"]
            except (ValueError, KeyError, TypeError):
                pass

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


# -- the run ---------------------------------------------------------------------------


async def open_all(manager: Manager, targets: list[tuple[int, int]], batch: int,
                   receiver: object = None) -> tuple[list, list[str]]:
    """Open a connection per (guild, channel), ``batch`` at a time; return the open ones and the errors."""
    opened, errors = [], []
    for start in range(0, len(targets), batch):
        chunk = targets[start:start + batch]
        conns = [manager.create_conn(guild) for guild, _ in chunk]
        if receiver is not None:
            for conn in conns:
                conn.set_opus_frame_receiver(receiver)
        results = await asyncio.gather(*(c.open(channel) for c, (_, channel) in zip(conns, chunk)),
                                       return_exceptions=True)
        for conn, result in zip(conns, results):
            if isinstance(result, BaseException):
                errors.append(f"guild {conn.guild_id}: {type(result).__name__}: {result}")
            else:
                opened.append(conn)
    return opened, errors


class HeardCounter:
    """An OpusFrameReceiver that only counts frames (the listening bots of --dave)."""

    def __init__(self) -> None:
        self.frames = 0

    def receive_opus_frame(self, user_id: int, packet: object) -> None:
        self.frames += 1

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


async def wait_for_e2ee(conns: list, timeout: float) -> bool:
    """Wait until every connection's DAVE group is ready (end-to-end encrypted)."""
    deadline = time.monotonic() + timeout
    while not all(c.dave is not None and c.dave.e2ee for c in conns):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


class GCPauses:
    """Times the garbage collector's pauses (a full collection of a big heap can stall the loop)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.longest = max(self.longest, time.perf_counter() - self._started)
            self._started = 0.0


async def stream_and_report(conns: list, seconds: float, interval: float, server: ServerProcess | None,
                            heard: HeardCounter | None, failure: Callable[[], str | None]) -> bool:
    """Stream on every connection for ``seconds`` and print a report line every ``interval``.

    Returns False if a call sent no audio or ``failure()`` named a reason to stop early.
    """
    clip = load_clip()
    jitter = JitterHistogram()
    # What exists after start-up lives as long as the bot: keep it out of the collector's
    # full passes, as a long-running bot would (gc.freeze), and time the pauses that remain.
    gc.collect()
    gc.freeze()
    pauses = GCPauses()
    gc.callbacks.append(pauses)
    for conn in conns:
        conn.set_opus_frame_provider(LoopingClip(clip, jitter))
    try:
        clock = SendClock.for_loop()
        started = time.monotonic()
        cpu_before, wall_before = time.process_time(), started
        sent_before = deficit_before = received_before = heard_before = 0
        resyncs_before = clock.resyncs
        print(f"{'time':>6}  {'calls':>5}  {'sent/s':>8}  {'CPU':>6}  {'deficit':>7}  {'resyncs':>7}  "
              f"{'jitter p50 / p99 / max (ms)':>27}  {'GC max':>6}" + ("  server rx/s" if server else "")
              + ("  heard/s" if heard else ""))
        while True:
            remaining = started + seconds - time.monotonic()
            if remaining < 0.01:  # a shorter sleep may not advance a millisecond clock
                break
            if failure():
                print(f"stopping early: {failure()}", file=sys.stderr)
                return False
            await asyncio.sleep(min(interval, remaining))
            now, cpu = time.monotonic(), time.process_time()
            window = now - wall_before
            senders = [c.sender for c in conns if c.sender is not None]
            sent = sum(s.stats.sent for s in senders)
            deficit = sum(s.stats.deficit for s in senders)
            line = (f"{now - started:5.1f}s  {sum(1 for s in senders if s.live):>5}  "
                    f"{(sent - sent_before) / window:>8.0f}  {100 * (cpu - cpu_before) / window:>5.1f}%  "
                    f"{deficit - deficit_before:>7}  {clock.resyncs - resyncs_before:>7}  "
                    f"{jitter.percentile(0.5):>8.1f} / {jitter.percentile(0.99):>6.1f} / "
                    f"{jitter.max_ms:>6.1f}  {pauses.longest * 1000:>4.1f}ms")
            jitter.reset()
            pauses.longest = 0.0
            if server is not None:
                line += f"  {(server.received - received_before) / window:>11.0f}"
                received_before = server.received
            if heard is not None:
                line += f"  {(heard.frames - heard_before) / window:>7.0f}"
                heard_before = heard.frames
            print(line, flush=True)
            cpu_before, wall_before, sent_before, deficit_before = cpu, now, sent, deficit
            resyncs_before = clock.resyncs
    finally:
        gc.callbacks.remove(pauses)
        gc.unfreeze()
    silent = [c.guild_id for c in conns if c.sender is None or c.sender.stats.sent == c.sender.stats.silence]
    if silent:
        print(f"{len(silent)} call(s) sent no audio, e.g. guilds {silent[:5]}", file=sys.stderr)
        held = sum(c.dave.stats.frames_held for c in conns if c.dave is not None)
        if held:
            print(f"DAVE held {held} frames: an end-to-end encrypted call's group was not ready "
                  "(fastvoice never sends plaintext into such a call)", file=sys.stderr)
    return not silent


async def run(args: argparse.Namespace) -> int:
    conn_config = ConnConfig(open_timeout=args.open_timeout)
    server: ServerProcess | None = None
    mains: list[LocalMainGateway | DiscordMainGateway] = []
    managers: list[Manager] = []
    heard: HeardCounter | None = None
    try:
        if args.discord:
            token = os.environ.get(args.token_env, "").strip()
            if not token:
                print(f"--discord needs the bot token in the environment variable {args.token_env}", file=sys.stderr)
                return 2
            discord = DiscordMainGateway(token, args.gateway_url or DISCORD_GATEWAY)
            mains.append(discord)
            await discord.connect()
            await discord.wait_for_channels(args.channels)
            targets = [(discord.channel_guilds[c], c) for c in args.channels]
            if len({guild for guild, _ in targets}) != len(targets):
                print("--channels must name one voice channel per guild (one voice connection per guild)",
                      file=sys.stderr)
                return 2
            manager = Manager(discord.update_voice_state, discord.user_id, conn_config=conn_config)
            discord.manager = manager
            managers.append(manager)
        else:
            server = ServerProcess()
            url = await server.start(args.interval, args.dave)
            for user_id in (BOT_USER_ID, LISTENER_USER_ID) if args.dave else (BOT_USER_ID,):
                local = LocalMainGateway(url)
                local.manager = Manager(local.update_voice_state, user_id, conn_config=conn_config)
                mains.append(local)
                managers.append(local.manager)
            # The server puts a session it was not told about in the call whose channel id is the guild id.
            targets = [(100_000 + i, 100_000 + i) for i in range(args.connections)]
        core = "compiled" if fastvoice.speedups_enabled() else "pure-Python"
        dave = "offered" if args.discord else ("on" if args.dave else "off")
        print(f"fastvoice {fastvoice.__version__} ({core} core): {len(targets)} calls on "
              f"{'Discord' if args.discord else 'the local voice server'}, DAVE {dave}")
        opening = time.monotonic()
        errors: list[str] = []
        listeners: list = []
        if len(managers) > 1:
            heard = HeardCounter()
            listeners, errors = await open_all(managers[1], targets, 50, receiver=heard)
        conns, more_errors = await open_all(managers[0], targets, 10 if args.discord else 50)
        errors += more_errors
        print(f"{len(conns) + len(listeners)} of {len(targets) * len(managers)} connections open "
              f"in {time.monotonic() - opening:.1f} s")
        for error in errors[:10]:
            print("  " + error, file=sys.stderr)
        if not conns:
            return 1
        if heard is not None and not await wait_for_e2ee(conns + listeners, args.open_timeout):
            print("DAVE groups did not form in time", file=sys.stderr)
            return 1
        def failure() -> str | None:
            return mains[0].failure if isinstance(mains[0], DiscordMainGateway) else None

        streamed = await stream_and_report(conns, args.seconds, args.interval, server, heard, failure)
        # End the streams as a bot would: five silence frames and Speaking 0, then leave.
        for conn in conns:
            conn.set_opus_frame_provider(None)
        await asyncio.sleep(0.2)
        return 0 if streamed and not errors else 1
    finally:
        for manager in managers:
            await manager.close()
        for main in mains:
            if isinstance(main, DiscordMainGateway):
                await main.close()
        if server is not None:
            await server.stop()


def parse_channels(text: str) -> list[int]:
    try:
        channels = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--channels must be channel ids separated by commas, got {text!r}") from None
    if not channels:
        raise argparse.ArgumentTypeError("--channels is empty")
    return channels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--connections", type=int, default=500, help="calls against the local server (default 500)")
    parser.add_argument("-s", "--seconds", type=float, default=60.0, help="seconds to stream (default 60)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between reports (default 10)")
    parser.add_argument("--dave", action="store_true",
                        help="local server: run the calls with DAVE, adding a listening bot to each call")
    parser.add_argument("--open-timeout", type=float, default=60.0, help="seconds each call may take to open")
    parser.add_argument("--discord", action="store_true", help="use Discord instead of the local server")
    parser.add_argument("--channels", type=parse_channels, default=None,
                        help="with --discord: voice channel ids, one per guild, separated by commas")
    parser.add_argument("--token-env", default="DISCORD_TOKEN",
                        help="with --discord: environment variable holding the bot token (default DISCORD_TOKEN)")
    parser.add_argument("--gateway-url", default=None, help=argparse.SUPPRESS)  # a stand-in main gateway, for tests
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child server process
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.seconds <= 0:
        parser.error(f"--seconds and --interval must be > 0, got {args.seconds} and {args.interval}")
    if args.serve:
        asyncio.run(serve(args.interval, args.dave))
        return 0
    if args.connections < 1:
        parser.error(f"--connections must be >= 1, got {args.connections}")
    if args.discord and not args.channels:
        parser.error("--discord needs --channels")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
