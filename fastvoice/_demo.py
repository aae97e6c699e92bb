"""``python -m fastvoice demo``: many voice calls against the local voice server, end to end.

Starts a :class:`fastvoice.testing.VoiceServer` in its own process, joins N guild calls with a
"speaker" bot (in a process of its own, :mod:`fastvoice._demo_speakers`) and N with a
"listener" bot (this process): one speaker and one listener per call. Every speaker streams
the bundled Opus clip, every listener receives it, and the summary says, per direction, what
was sent, what arrived and where any lost packet went missing (the server's socket, the
listeners' sockets, the server's fault knobs), with each process's CPU
(:mod:`fastvoice._demo_report`). When the machine is too small for the run, it says so in
words while the run goes, before any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ._demo_clip import SILENCE, load_clip
from ._demo_report import (LOST, OK, RECORDING_FAILED, SERVER_DROPPED, USAGE, CallLoss, Outcome, account,
                           capacity_warning, summarise)
from ._demo_speakers import LocalSpeakers as _Local

SPEAKER, LISTENER = 1001, 1002
MAX_CALLS = 5000
MIN_SECONDS, MAX_SECONDS = 0.02, 3600.0


class Listener:
    """An OpusFrameReceiver that keeps every frame with its sequence number and arrival time."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sequences: list[int] = []
        self.arrivals: list[float] = []

    def receive_opus_frame(self, user_id: int, packet: Any) -> None:
        self.frames.append(packet.opus)
        self.sequences.append(packet.sequence)
        self.arrivals.append(time.monotonic())

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


class _InProcess:
    """The demo's view of a VoiceServer on this loop (``--in-process``), shaped like a
    :class:`fastvoice.testing.VoiceServerProcess`'s."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def stats(self) -> dict[str, Any]:
        from .testing._serve import stats

        return stats(self.server)

    def cpu_seconds(self) -> float | None:
        return None  # counted in this process's own CPU


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(calls: int, seconds: float, dave: bool, in_process: bool = False, record: str | None = None,
              metrics_port: int | None = None) -> int:
    """Run the demo; with ``record`` (a directory) also record every listener's call and
    check each recording against the clip (see :mod:`fastvoice._demo_record`)."""
    if record is None:
        return await _run_calls(calls, seconds, dave, in_process, None, metrics_port)
    from .opus_decoder import OpusNotAvailableError, load_opus

    try:
        load_opus()
    except OpusNotAvailableError as exc:
        print(f"--record needs libopus: {exc}", file=sys.stderr)
        return USAGE
    recording: dict[str, Any] = {"directory": record}
    status = await _run_calls(calls, seconds, dave, in_process, recording, metrics_port)
    return _check_recordings(recording, status)


def _check_recordings(recording: dict[str, Any], status: int) -> int:
    from pathlib import Path

    from ._demo_record import check_recording, clip_pcm

    sent: list[bytes] = recording.get("sent", [])
    recorders = recording.get("recorders", [])
    if not recorders:
        return status
    clip = clip_pcm(sent)
    checks = [check_recording(i, rec.directory, SPEAKER, sent, clip, heard, late)
              for i, (rec, heard, late) in enumerate(zip(recorders, recording["heard"], recording["late"]))]
    directory = Path(recording["directory"])
    report = directory / "report.txt"
    report.write_text("".join(check.line() + "\n" for check in checks), encoding="utf-8")
    ok = sum(1 for check in checks if check.ok)
    unfaithful = [check for check in checks if not check.faithful]
    print(f"\n  recordings: {ok} of {len(checks)} calls hold the whole clip, aligned, with its PCM "
          f"(Ogg tracks and mixes in {directory}; every call in {report.name})")
    shown = [check for check in checks if not check.ok][:20] or checks[:5]
    for check in shown:
        print(textwrap.fill(check.line(), width=92, initial_indent="    ", subsequent_indent="      "))
    if len(shown) < len(checks):
        print(f"    ... {len(checks) - len(shown)} more calls in {report}")
    if any(check.late for check in checks):
        print(textwrap.fill(
            "Frames the playout dropped arrived after their tick was played: the event loop (shared by "
            "every call) was too busy to receive them in time; the recording keeps their "
            "place as concealment. A PlayoutReceiver with a larger delay absorbs this.",
            width=92, initial_indent="  ", subsequent_indent="  "))
    if unfaithful:
        print(f"\n  RECORDING FAILED: {len(unfaithful)} recordings lack frames the listener received")
        return RECORDING_FAILED
    return status


async def _run_calls(calls: int, seconds: float, dave: bool, in_process: bool,
                     recording: dict[str, Any] | None, metrics_port: int | None = None) -> int:
    import fastvoice
    from fastvoice import ConnConfig, GatewayConfig, Manager
    from fastvoice.testing import MainGatewayStandIn, VoiceServer, VoiceServerProcess

    from ._demo_speakers import SpeakerBot, SpeakerBotProcess
    from .testing._sockbuf import receive_drops_by_port

    clip = load_clip()
    frames = [clip[i % len(clip)] for i in range(max(1, int(seconds * 50)))]
    where = "the demo's process" if in_process else "a process of its own"
    print(f"fastvoice {fastvoice.__version__} demo: {calls} calls, {len(frames) * 0.02:.2f} s of audio each, "
          f"DAVE {'on' if dave else 'off'}, {'compiled' if fastvoice.speedups_enabled() else 'pure-Python'} core; "
          f"local server, speaker bot and listener bot {'on one event loop' if in_process else 'each in its own process'}")
    # The server counts what it reads from each speaker (no per-packet recording: a thousand
    # calls of it would cost the server more than the forwarding).
    options: dict[str, Any] = dict(dave_protocol_version=1 if dave else 0, require_dave=dave,
                                   media_recording="counts", record_packets=100)
    server: VoiceServer | VoiceServerProcess
    server = VoiceServer(**options) if in_process else VoiceServerProcess(**options)
    view: _InProcess | VoiceServerProcess = _InProcess(server) if isinstance(server, VoiceServer) else server
    async with server:
        main = MainGatewayStandIn(server, LISTENER)
        config = ConnConfig(open_timeout=60, gateway_config=GatewayConfig(max_dave_protocol_version=1 if dave else 0))
        bot = Manager(main.update_voice_state, LISTENER, conn_config=config)
        main.attach(bot)
        # The speaker bot's sessions, registered here: its main gateway is this process.
        setup_calls = []
        for i in range(calls):
            state, update = server.voice_updates(10_000 + i, SPEAKER, 20_000 + i)
            setup_calls.append({"guild_id": 10_000 + i, "channel_id": 20_000 + i, "state": state, "server": update})
        await view.stats()  # every registration has reached the server
        speakers: _Local | SpeakerBotProcess
        if in_process:
            speakers = _Local(SpeakerBot(SPEAKER, setup_calls, seconds, dave))
        else:
            speakers = SpeakerBotProcess({"user_id": SPEAKER, "calls": setup_calls, "seconds": seconds, "dave": dave,
                                          "metrics": metrics_port is not None})
        try:
            if isinstance(speakers, SpeakerBotProcess):
                await speakers.start()
            return await _stream(calls, frames, dave, speakers, bot, view, recording, metrics_port, where,
                                 receive_drops_by_port)
        finally:
            await speakers.close()
            await bot.close()


async def _stream(calls: int, frames: list[bytes], dave: bool, speakers: Any, bot: Any, view: Any,
                  recording: dict[str, Any] | None, metrics_port: int | None, where: str,
                  receive_drops_by_port: Callable[[set[int]], int | None]) -> int:
    """Open the listeners beside the speakers, stream the clip, count, summarise."""
    metrics = None
    if metrics_port is not None:
        from .prometheus import start_metrics_server

        metrics = await start_metrics_server([bot] + ([speakers.bot.manager] if isinstance(speakers, _Local) else []),
                                             metrics_port)
    try:
        return await _stream_and_count(calls, frames, dave, speakers, bot, view, recording, metrics, where,
                                       receive_drops_by_port)
    finally:
        if metrics is not None:
            await metrics.close()


async def _stream_and_count(calls: int, frames: list[bytes], dave: bool, speakers: Any, bot: Any, view: Any,
                            recording: dict[str, Any] | None, metrics: Any, where: str,
                            receive_drops_by_port: Callable[[set[int]], int | None]) -> int:
    listeners = [Listener() for _ in range(calls)]
    hearers = []
    started = time.monotonic()
    opening = asyncio.ensure_future(speakers.ready())
    try:
        for start in range(0, calls, 50):
            batch = range(start, min(calls, start + 50))
            new = [bot.create_conn(10_000 + i) for i in batch]
            for conn, i in zip(new, batch):
                conn.set_opus_frame_receiver(listeners[i])
            await asyncio.gather(*(c.open(20_000 + i) for c, i in zip(new, batch)))
            hearers += new
        if dave:
            deadline = time.monotonic() + 60
            while not all(c.dave is not None and c.dave.ready for c in hearers):
                if time.monotonic() > deadline:
                    raise TimeoutError("the listeners' DAVE groups did not form within 60 s")
                await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.shield(opening), 120)
    except Exception as exc:
        print(f"  the calls did not open: {str(exc)[:300]}", file=sys.stderr)
        return LOST
    finally:
        if not opening.done():
            opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
    print(f"  {2 * calls} connections ready in {time.monotonic() - started:.1f} s")
    if metrics is not None:
        print(f"  Prometheus metrics at http://127.0.0.1:{metrics.port}/metrics"
              + (f" (the speaker bot's at {speakers.metrics_url})" if speakers.metrics_url else ""), flush=True)

    drops_before = (await view.stats())["udp_receive_drops"]
    ports = {conn.udp.local_addr[1] for conn in hearers if conn.udp is not None and conn.udp.local_addr}
    listener_drops_before = receive_drops_by_port(ports)
    cpu0, server_cpu0 = _cpu_self(), view.cpu_seconds()
    recorders: list[Any] = []
    if recording is not None:
        from ._demo_record import Tee, start_recorders

        recorders = start_recorders(recording["directory"], calls)
        for conn, lst, recorder in zip(hearers, listeners, recorders):
            conn.set_opus_frame_receiver(Tee(lst, recorder))
        await asyncio.sleep(0.1)  # the recordings start before the speakers do
    wall0 = time.monotonic()
    speakers.go()
    expected = len(frames) + 5  # the clip, then five silence frames
    last, warning, checked = wall0, None, False
    machine_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    while speakers.streaming() or any(len(lst.frames) < expected for lst in listeners):
        await asyncio.sleep(0.1)
        now = time.monotonic()
        if now - last >= 1.0:
            last = now
            got = sum(len(lst.frames) for lst in listeners)
            print(f"  {now - wall0:5.1f} s  sent {speakers.sent:>8}  received {got:>8}", flush=True)
        # Once every process has a figure (a busy speaker bot reports late): two seconds in.
        if not checked and now - wall0 >= 2.0 and (isinstance(speakers, _Local) or speakers.wall > 0
                                                    or not speakers.streaming()):
            checked = True  # is this machine large enough? Said now, before any failure.
            cores = _cores_now(speakers, view, cpu0, server_cpu0, now - wall0)
            warning = capacity_warning(calls, cores, machine_cores)
            if warning is not None:
                print(warning, flush=True)
        if now - wall0 > len(frames) * 0.02 + 10:
            break
    if recording is not None:
        await asyncio.sleep(0.5)  # what the recorders' playout buffers hold plays out
    wall = time.monotonic() - wall0
    cpu, server_cpu1 = _cpu_self() - cpu0, view.cpu_seconds()
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    listener_drops_after = receive_drops_by_port(ports)
    try:
        report = await asyncio.wait_for(speakers.finished(), 30)
    except Exception as exc:
        print(f"  the speaker bot did not report: {str(exc)[:300]}", file=sys.stderr)
        return LOST
    after = await view.stats()
    counts = {int(ssrc): int(n) for ssrc, n in after["packets"].items()}

    want = frames + [SILENCE] * 5
    outcome = Outcome(calls=calls, speakers_where=where, expected=expected, dave=dave, wall=wall)
    deficits = []
    for call, lst in zip(report["done"], listeners):
        outcome.sent += call["sent"]
        deficits.append(call["deficit"])
        at_server = counts.get(call["ssrc"], 0) if call["ssrc"] is not None else 0
        outcome.at_server += at_server
        one = account(call["first"], want, call["sent"], at_server, lst.sequences, lst.frames)
        for name in ("not_sent", "before_server", "after_server", "changed"):
            setattr(outcome.loss, name, getattr(outcome.loss, name) + getattr(one, name))
    outcome.deficit = sum(deficits)
    outcome.tick_late = (report.get("tick_late_p50_ms"), report.get("tick_late_p99_ms"))
    outcome.received = sum(len(lst.frames) for lst in listeners)
    outcome.intact = sum(1 for lst in listeners if lst.frames == want)
    drops_after = after["udp_receive_drops"]
    outcome.server_socket_drops = (None if drops_before is None or drops_after is None
                                   else drops_after - drops_before)
    outcome.server_buffer_kib = after["udp_receive_buffer"] // 2 // 1024
    outcome.fault_drops = int(after.get("udp_lost", 0))
    outcome.listener_socket_drops = (None if listener_drops_before is None or listener_drops_after is None
                                     else listener_drops_after - listener_drops_before)
    intervals = [abs((b - a) - 0.020) * 1000 for lst in listeners for a, b in zip(lst.arrivals, lst.arrivals[1:])]
    outcome.jitter = (_percentile(intervals, 0.5), _percentile(intervals, 0.99))
    outcome.plaintext = after["dave_plaintext_packets"] if dave else 0
    if isinstance(speakers, _Local):
        outcome.cpu = {"demo's process" + (" (both bots)" if server_cpu is not None else " (server and both bots)"): cpu}
    else:
        outcome.cpu = {"speaker bot": speakers.cpu, "listener bot": cpu}
    if server_cpu is not None:
        outcome.cpu["test server"] = server_cpu
    outcome.warning = warning
    if recording is not None:
        late: list[dict[str, int]] = []
        for recorder in recorders:
            try:
                stats = recorder.playout.stats(SPEAKER)
                late.append({"late": stats.late, "dropped to shrink the delay": stats.dropped,
                             "overflowed": stats.overflow})
            except KeyError:
                late.append({})
            recorder.close()
        await asyncio.gather(*(recorder.wait_closed(60) for recorder in recorders))
        recording.update(recorders=recorders, sent=frames, late=late,
                         heard=[sum(1 for f in lst.frames if f != SILENCE) for lst in listeners])
    return summarise(outcome)


def _cores_now(speakers: Any, view: Any, cpu0: float, server_cpu0: float | None, elapsed: float) -> dict[str, float]:
    """Each process's share of a core since the speakers started."""
    cores = {}
    if isinstance(speakers, _Local):
        cores["demo's process"] = (_cpu_self() - cpu0) / elapsed
    else:
        cores["listener bot"] = (_cpu_self() - cpu0) / elapsed
        if speakers.wall > 0 and speakers.cpu is not None:
            cores["speaker bot"] = speakers.cpu / speakers.wall
    server_cpu = view.cpu_seconds()
    if server_cpu is not None and server_cpu0 is not None:
        cores["test server"] = (server_cpu - server_cpu0) / elapsed
    return cores


def _calls(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_CALLS:
        raise argparse.ArgumentTypeError(f"expected a whole number of calls from 1 to {MAX_CALLS}, got {text[:40]!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not MIN_SECONDS <= value <= MAX_SECONDS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected seconds of audio from {MIN_SECONDS:g} (one 20 ms frame) to {MAX_SECONDS:g}, got {text[:40]!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 0 to 65535, got {text[:40]!r}")
    return value


def server_limit() -> str:
    """One paragraph for --help: the receive buffer the local server gets on this machine."""
    from .testing._sockbuf import DEFAULT_RECEIVE_BUFFER, enlarge_receive_buffer, rmem_max

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        granted = enlarge_receive_buffer(probe.fileno()) // 2  # the kernel reports twice the size
    finally:
        probe.close()
    cap = rmem_max()
    if granted >= DEFAULT_RECEIVE_BUFFER:
        how = "SO_RCVBUFFORCE: this process may exceed net.core.rmem_max"
    elif cap is not None:
        how = f"capped by net.core.rmem_max = {cap // 1024} KiB; root or a larger rmem_max gives it more"
    else:
        how = "the most this system grants"
    return textwrap.fill(
        "The local test server runs in its own process (with --in-process: on the demo's event loop) "
        "and decrypts, counts and re-encrypts every packet for its listener, in batches, with the "
        "compiled core (a few microseconds each). Each 20 ms tick "
        "the speakers' packets wait in its UDP receive buffer until it reads them: "
        f"{granted // 1024} KiB on this machine ({how}). When the server falls behind and its socket "
        "overflows, the summary counts those packets as lost before the test server (not fastvoice's "
        "loss) and the demo exits 3.", width=92)


DESCRIPTION = """\
Joins N guild calls with a "speaker" bot and N with a "listener" bot against a local voice
server (one of each per call, DAVE end-to-end encryption on by default), streams the bundled
Opus clip from every speaker, receives it on every listener, and prints, per direction,
packets, loss and where it happened, jitter, missed ticks, and the CPU of each process. The
server, the speaker bot and the listener bot each run in a process of their own, as they would
in production: a bot's calls share one event loop, which runs on one core. When the machine is
too small for the calls asked for, the demo says so while it runs, before any failure.

{limit}
"""

EPILOG = """\
exit status: 0 every frame arrived, in order; 1 frames were lost or changed after the test
server forwarded them (or a DAVE call carried plaintext); 3 only the test server's socket
dropped packets; 2 bad arguments; 4 a recording (--record) lacks frames the listener received.
"""


def parser() -> argparse.ArgumentParser:
    """The demo's command line (plain-text help)."""
    p = argparse.ArgumentParser(prog="python -m fastvoice demo", description=DESCRIPTION.format(limit=server_limit()),
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--calls", "--connections", dest="calls", type=_calls, default=200, metavar="N",
                   help=f"calls to run, each a speaker and a listener connection (1 to {MAX_CALLS}; default 200)")
    p.add_argument("-s", "--seconds", type=_seconds, default=10.0,
                   help=f"seconds of audio per call ({MIN_SECONDS:g} to {MAX_SECONDS:g}; default 10)")
    p.add_argument("--no-dave", action="store_true", help="run the calls without DAVE end-to-end encryption")
    p.add_argument("--pure", action="store_true", help="use the pure-Python packet core")
    p.add_argument("--in-process", action="store_true",
                   help="run the local server and both bots on the demo's own event loop instead of a "
                        "process each")
    p.add_argument("--record", metavar="DIR",
                   help="record each listener's call into DIR/call-NNNN/ (the speaker's Ogg Opus track and a "
                        "mix.wav, with fastvoice.record.CallRecorder) and check every recording against the clip "
                        "sent: all its frames, aligned on consecutive ticks, the same PCM (needs libopus)")
    p.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the demo runs "
                        "(needs fastvoice[metrics]; 0: any free port)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.pure and os.environ.get("FASTVOICE_NO_EXTENSIONS") != "1":
        # The core is chosen at import: run again with the switch set.
        env = dict(os.environ, FASTVOICE_NO_EXTENSIONS="1")
        os.execve(sys.executable, [sys.executable, "-m", "fastvoice", "demo", *(argv or sys.argv[2:])], env)
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.metrics_port is not None:
        from .prometheus import MetricsUnavailableError, require_prometheus_client

        try:
            require_prometheus_client()
        except MetricsUnavailableError as exc:
            print(f"python -m fastvoice demo: {exc}", file=sys.stderr)
            return 2
    return runner(run(args.calls, args.seconds, not args.no_dave, in_process=args.in_process, record=args.record,
                      metrics_port=args.metrics_port))
