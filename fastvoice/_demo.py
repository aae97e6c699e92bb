"""``python -m fastvoice demo``: many voice calls against the local voice server, end to end.

Starts a :class:`fastvoice.testing.VoiceServer` in its own process, joins N guild calls with a "speaker" bot
and N with a "listener" bot (one speaker and one listener per call), streams the bundled
Opus clip from every speaker, receives it on every listener, and prints a summary that says
where any lost packet went missing: before the test server read it (its socket overflowed:
the server's limit, not fastvoice's) or between the server and the listeners.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import resource
import socket
import struct
import sys
import textwrap
import time
from dataclasses import dataclass
from importlib import resources
from collections.abc import Callable, Coroutine
from typing import Any

SPEAKER, LISTENER = 1001, 1002
SILENCE = b"\xf8\xff\xfe"
MAX_CALLS = 5000
MIN_SECONDS, MAX_SECONDS = 0.02, 3600.0
#: Exit statuses.
OK, LOST, USAGE, SERVER_DROPPED, RECORDING_FAILED = 0, 1, 2, 3, 4


def load_clip() -> list[bytes]:
    """The bundled clip's Opus frames (``data/demo_clip.dca``: each frame after its length as a
    4-byte little-endian integer, the format of ``OpusReader``)."""
    data = resources.files("fastvoice").joinpath("data/demo_clip.dca").read_bytes()
    frames, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        frames.append(data[offset + 4: offset + 4 + length])
        offset += 4 + length
    return frames


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


@dataclass
class CallLoss:
    """Where one call's packets went missing, by RTP sequence number."""

    not_sent: int = 0  # frames the speaker never sent
    before_server: int = 0  # sent, never read by the test server
    after_server: int = 0  # read (and forwarded) by the server, never delivered to the listener
    changed: int = 0  # delivered with other bytes than were sent


def account(first: int, want: list[bytes], sent_count: int, server_seqs: list[int], heard_seqs: list[int],
            heard_frames: list[bytes]) -> CallLoss:
    """Compare what the speaker should send (``want``) and sent (``sent_count`` packets from
    sequence ``first`` on), what the server read (``server_seqs``) and what the listener got
    (``heard_seqs`` / ``heard_frames``)."""
    sent = {(first + i) & 0xFFFF for i in range(min(sent_count, len(want)))}
    at_server = set(server_seqs) & sent
    heard = set(heard_seqs)
    loss = CallLoss(not_sent=max(0, len(want) - sent_count), before_server=len(sent - at_server),
                    after_server=len(at_server - heard))
    for seq, frame in zip(heard_seqs, heard_frames):
        position = (seq - first) & 0xFFFF
        if position >= len(want) or want[position] != frame:
            loss.changed += 1
    return loss


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
        server = self.server
        return {"udp_receive_drops": server.udp_receive_drops, "udp_receive_buffer": server.udp_receive_buffer,
                "dave_plaintext_packets": sum(s.dave_plaintext_packets for s in server.sessions)}

    async def sequences(self, ssrcs: list[int]) -> dict[int, list[int]]:
        return {ssrc: [p.sequence for p in self.server.packets(ssrc)] for ssrc in ssrcs}

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
    from fastvoice import ConnConfig, GatewayConfig, Manager, OpusReader
    from fastvoice.testing import MainGatewayStandIn, VoiceServer, VoiceServerProcess

    clip = load_clip()
    frames = [clip[i % len(clip)] for i in range(max(1, int(seconds * 50)))]
    stream = b"".join(struct.pack("<I", len(f)) + f for f in frames)
    print(f"fastvoice {fastvoice.__version__} demo: {calls} calls, {len(frames) * 0.02:.2f} s of audio each, "
          f"DAVE {'on' if dave else 'off'}, {'compiled' if fastvoice.speedups_enabled() else 'pure-Python'} core, "
          f"local server {'on this event loop' if in_process else 'in its own process'}")
    # The demo checks every packet the server read: its recordings must hold the whole run.
    options: dict[str, Any] = dict(dave_protocol_version=1 if dave else 0, require_dave=dave,
                                   record_packets=len(frames) + 100)
    server: VoiceServer | VoiceServerProcess
    server = VoiceServer(**options) if in_process else VoiceServerProcess(**options)
    view: _InProcess | VoiceServerProcess = _InProcess(server) if isinstance(server, VoiceServer) else server
    async with server:
        bots = {}
        for user in (SPEAKER, LISTENER):
            main = MainGatewayStandIn(server, user)
            config = ConnConfig(open_timeout=60, gateway_config=GatewayConfig(max_dave_protocol_version=1 if dave else 0))
            bots[user] = Manager(main.update_voice_state, user, conn_config=config)
            main.attach(bots[user])
        metrics = None
        if metrics_port is not None:
            from .prometheus import start_metrics_server

            metrics = await start_metrics_server(list(bots.values()), metrics_port)
            print(f"  Prometheus metrics at http://127.0.0.1:{metrics.port}/metrics", flush=True)
        listeners = [Listener() for _ in range(calls)]
        speakers, hearers = [], []
        started = time.monotonic()
        for start in range(0, calls, 50):
            batch = range(start, min(calls, start + 50))
            new_speakers = [bots[SPEAKER].create_conn(10_000 + i) for i in batch]
            new_hearers = [bots[LISTENER].create_conn(10_000 + i) for i in batch]
            for conn, i in zip(new_hearers, batch):
                conn.set_opus_frame_receiver(listeners[i])
            await asyncio.gather(*(c.open(20_000 + i) for c, i in zip(new_speakers, batch)),
                                 *(c.open(20_000 + i) for c, i in zip(new_hearers, batch)))
            speakers += new_speakers
            hearers += new_hearers
        if dave:
            deadline = time.monotonic() + 30
            while not all(c.dave is not None and c.dave.ready for c in speakers + hearers):
                if time.monotonic() > deadline:
                    print("DAVE groups did not form within 30 s", file=sys.stderr)
                    if metrics is not None:
                        await metrics.close()
                    await asyncio.gather(bots[SPEAKER].close(), bots[LISTENER].close())
                    return LOST
                await asyncio.sleep(0.05)
        print(f"  {2 * calls} connections ready in {time.monotonic() - started:.1f} s")

        drops_before = (await view.stats())["udp_receive_drops"]
        cpu0, server_cpu0 = _cpu_self(), view.cpu_seconds()
        wall0 = time.monotonic()
        recorders: list[Any] = []
        if recording is not None:
            from ._demo_record import Tee, start_recorders

            recorders = start_recorders(recording["directory"], calls)
            for conn, lst, recorder in zip(hearers, listeners, recorders):
                conn.set_opus_frame_receiver(Tee(lst, recorder))
            await asyncio.sleep(0.1)  # the recordings start before the speakers do
        for conn in speakers:
            conn.set_opus_frame_provider(OpusReader(io.BytesIO(stream)))
        expected = len(frames) + 5  # the clip, then five silence frames
        last = 0.0
        while any(c.sender is not None and c.sender.live for c in speakers) or \
                any(len(lst.frames) < expected for lst in listeners):
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if now - last >= 1.0:
                last = now
                sent = sum(c.sender.stats.sent for c in speakers if c.sender)
                got = sum(len(lst.frames) for lst in listeners)
                print(f"  {now - wall0:5.1f} s  sent {sent:>8}  received {got:>8}", flush=True)
            if now - wall0 > len(frames) * 0.02 + 10:
                break
        if recording is not None:
            await asyncio.sleep(0.5)  # what the recorders' playout buffers hold plays out
        wall = time.monotonic() - wall0
        cpu, server_cpu1 = _cpu_self() - cpu0, view.cpu_seconds()
        server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
        seen = await view.sequences([c.udp.ssrc for c in speakers if c.udp is not None])

        sent = sum(c.sender.stats.sent for c in speakers if c.sender)
        deficit = sum(c.sender.stats.deficit for c in speakers if c.sender)
        received = sum(len(lst.frames) for lst in listeners)
        want = frames + [SILENCE] * 5
        intact = sum(1 for lst in listeners if lst.frames == want)
        loss = CallLoss()
        at_server = 0
        for conn, lst in zip(speakers, listeners):
            counters = conn.udp.stream_counters if conn.udp is not None else None
            call_sent = conn.sender.stats.sent if conn.sender is not None else 0
            first = 0 if counters is None else (counters[0] - call_sent) & 0xFFFF
            server_seqs = seen.get(conn.udp.ssrc, []) if conn.udp is not None else []
            at_server += len(server_seqs)
            one = account(first, want, call_sent, server_seqs, lst.sequences, lst.frames)
            loss.not_sent += one.not_sent
            loss.before_server += one.before_server
            loss.after_server += one.after_server
            loss.changed += one.changed
        after = await view.stats()
        drops_after = after["udp_receive_drops"]
        socket_drops = None if drops_before is None or drops_after is None else drops_after - drops_before
        jitter = [abs((b - a) - 0.020) * 1000 for lst in listeners for a, b in zip(lst.arrivals, lst.arrivals[1:])]
        plaintext = after["dave_plaintext_packets"] if dave else 0
        buffer_kib = after["udp_receive_buffer"] // 2 // 1024
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
        if metrics is not None:
            await metrics.close()
        await asyncio.gather(bots[SPEAKER].close(), bots[LISTENER].close())

    server_row = f"{at_server} of {sent}"
    if socket_drops is not None:
        server_row += f" (its socket dropped {socket_drops}; receive buffer {buffer_kib} KiB)"
    rows = [
        ("connections", f"{2 * calls} ({calls} speakers, {calls} listeners)"),
        ("packets sent", f"{sent}"),
        ("read by the test server", server_row),
        ("frames received", f"{received} of {expected * calls}"),
        ("calls received intact", f"{intact} of {calls}"),
        ("jitter p50 / p99 at listeners", f"{_percentile(jitter, 0.5):.2f} / {_percentile(jitter, 0.99):.2f} ms"),
        ("deficit", f"{deficit} ticks"),
        ("CPU, fastvoice" if server_cpu is not None else "CPU",
         f"{cpu:.2f} s over {wall:.1f} s ({cpu / wall:.2f} cores)"),
        *([("CPU, test server", f"{server_cpu:.2f} s ({server_cpu / wall:.2f} cores)")] if server_cpu is not None
          else []),
        ("DAVE", f"on, {plaintext} plaintext packets in E2EE calls" if dave else "off"),
    ]
    # Loss before the server is the server's own when its socket's drop counter covers it.
    server_dropped = loss.before_server and (socket_drops is None or socket_drops >= loss.before_server)
    if loss.not_sent or loss.before_server or loss.after_server or loss.changed:
        rows += [
            ("not sent by speakers", f"{loss.not_sent} frames"),
            ("lost before the test server", f"{loss.before_server} packets" + (
                " (its socket overflowed: the server's limit, not fastvoice's)" if server_dropped else "")),
            ("lost between server and listeners", f"{loss.after_server} packets"),
            ("delivered changed", f"{loss.changed} frames"),
        ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if intact == calls and plaintext == 0:
        print("\n  OK: every frame arrived, in order")
        return OK
    if server_dropped and not (loss.not_sent or loss.after_server or loss.changed or plaintext):
        print("\n" + textwrap.fill(
            f"INCOMPLETE: the local test server did not read {loss.before_server} packets (its UDP socket "
            "overflowed while the server was busy); fastvoice delivered every packet the server "
            "forwarded. Run fewer calls (-n) to check every frame; see --help for this server's limit.",
            width=92, initial_indent="  ", subsequent_indent="  "))
        return SERVER_DROPPED
    causes = []
    if loss.not_sent:
        causes.append(f"{loss.not_sent} frames were never sent")
    if loss.before_server and not server_dropped:
        causes.append(f"{loss.before_server} packets were lost before the test server, more than its socket "
                      f"dropped ({socket_drops})")
    if loss.after_server:
        causes.append(f"{loss.after_server} packets were lost between the test server and the listeners")
    if loss.changed:
        causes.append(f"{loss.changed} frames arrived changed")
    if plaintext:
        causes.append(f"{plaintext} packets of DAVE calls were plaintext")
    print("\n" + textwrap.fill("FAILED: " + "; ".join(causes), width=92, initial_indent="  ", subsequent_indent="  "))
    return LOST


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
        "and decrypts, records and forwards every packet in Python, near 20 us each. Each 20 ms tick "
        "the speakers' packets wait in its UDP receive buffer until it reads them: "
        f"{granted // 1024} KiB on this machine ({how}). When the server falls behind and its socket "
        "overflows, the summary counts those packets as lost before the test server (not fastvoice's "
        "loss) and the demo exits 3.", width=92)


DESCRIPTION = """\
Joins N guild calls with a "speaker" bot and N with a "listener" bot against a local voice
server (one of each per call, DAVE end-to-end encryption on by default), streams the bundled
Opus clip from every speaker, receives it on every listener, and prints packets, jitter,
missed ticks and CPU.

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
                   help="run the local server on the demo's own event loop instead of in its own process")
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
