"""``python -m fastvoice demo``: many voice calls against the local voice server, end to end.

Starts a :class:`fastvoice.testing.VoiceServer`, joins N guild calls with a "speaker" bot
and N with a "listener" bot (one speaker and one listener per call), streams the bundled
Opus clip from every speaker, receives it on every listener, and prints a summary. The exit
status is non-zero if any listener missed or garbled a frame.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import struct
import sys
import time
from importlib import resources

SPEAKER, LISTENER = 1001, 1002
SILENCE = b"\xf8\xff\xfe"


def load_clip() -> list[bytes]:
    """The bundled clip's Opus frames (length-prefixed file, the seed's OpusReader format)."""
    data = resources.files("fastvoice").joinpath("data/demo_clip.dca").read_bytes()
    frames, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        frames.append(data[offset + 4: offset + 4 + length])
        offset += 4 + length
    return frames


class Listener:
    """An OpusFrameReceiver that keeps every frame with its arrival time."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrivals: list[float] = []

    def receive_opus_frame(self, user_id: int, packet) -> None:
        self.frames.append(packet.opus)
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


async def run(connections: int, seconds: float, dave: bool) -> int:
    import fastvoice
    from fastvoice import ConnConfig, GatewayConfig, Manager, OpusReader
    from fastvoice.testing import MainGatewayStandIn, VoiceServer

    clip = load_clip()
    frames = [clip[i % len(clip)] for i in range(max(1, int(seconds * 50)))]
    stream = b"".join(struct.pack("<I", len(f)) + f for f in frames)
    print(f"fastvoice {fastvoice.__version__} demo: {connections} calls, {len(frames) * 0.02:.1f} s of audio each, "
          f"DAVE {'on' if dave else 'off'}, {'compiled' if fastvoice.speedups_enabled() else 'pure-Python'} core")
    async with VoiceServer(dave_protocol_version=1 if dave else 0, require_dave=dave) as server:
        bots = {}
        for user in (SPEAKER, LISTENER):
            main = MainGatewayStandIn(server, user)
            config = ConnConfig(open_timeout=60, gateway_config=GatewayConfig(max_dave_protocol_version=1 if dave else 0))
            bots[user] = Manager(main.update_voice_state, user, conn_config=config)
            main.attach(bots[user])
        listeners = [Listener() for _ in range(connections)]
        speakers, hearers = [], []
        started = time.monotonic()
        for start in range(0, connections, 50):
            batch = range(start, min(connections, start + 50))
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
                    return 1
                await asyncio.sleep(0.05)
        print(f"  {2 * connections} connections ready in {time.monotonic() - started:.1f} s")

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.monotonic()
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
        wall = time.monotonic() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

        sent = sum(c.sender.stats.sent for c in speakers if c.sender)
        deficit = sum(c.sender.stats.deficit for c in speakers if c.sender)
        received = sum(len(lst.frames) for lst in listeners)
        want = frames + [SILENCE] * 5
        intact = sum(1 for lst in listeners if lst.frames == want)
        jitter = [abs((b - a) - 0.020) * 1000 for lst in listeners for a, b in zip(lst.arrivals, lst.arrivals[1:])]
        plaintext = sum(s.dave_plaintext_packets for s in server.sessions) if dave else 0
        await asyncio.gather(bots[SPEAKER].close(), bots[LISTENER].close())

    rows = [
        ("connections", f"{2 * connections} ({connections} speakers, {connections} listeners)"),
        ("packets sent", f"{sent}"),
        ("frames received", f"{received} of {expected * connections}"),
        ("calls received intact", f"{intact} of {connections}"),
        ("jitter p50 / p99 at listeners", f"{_percentile(jitter, 0.5):.2f} / {_percentile(jitter, 0.99):.2f} ms"),
        ("deficit", f"{deficit} ticks"),
        ("CPU", f"{cpu:.2f} s over {wall:.1f} s ({cpu / wall:.2f} cores)"),
        ("DAVE", f"on, {plaintext} plaintext packets in E2EE calls" if dave else "off"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    ok = intact == connections and plaintext == 0
    print("\n  OK: every frame arrived, in order" if ok else "\n  FAILED: frames were lost or changed")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastvoice demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--connections", type=int, default=50, help="calls to run (default 50)")
    parser.add_argument("-s", "--seconds", type=float, default=10.0, help="seconds of audio per call (default 10)")
    parser.add_argument("--no-dave", action="store_true", help="run the calls without DAVE end-to-end encryption")
    parser.add_argument("--pure", action="store_true", help="use the pure-Python packet core")
    args = parser.parse_args(argv)
    if args.connections < 1:
        parser.error(f"--connections must be >= 1, got {args.connections}")
    if args.pure and os.environ.get("FASTVOICE_NO_EXTENSIONS") != "1":
        # The core is chosen at import: run again with the switch set.
        env = dict(os.environ, FASTVOICE_NO_EXTENSIONS="1")
        os.execve(sys.executable, [sys.executable, "-m", "fastvoice", "demo", *(argv or sys.argv[2:])], env)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(run(args.connections, args.seconds, not args.no_dave))
