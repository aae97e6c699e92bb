"""A VoiceServer in its own process for the connection benchmarks.

Prints its URL (and, with ``--tls``, its endpoint and CA file on the same line), serves
until a line arrives on stdin, then prints one JSON line: per SSRC, the packet count, the
gaps (ms) between arrivals of consecutive sequence numbers, as the server saw them, and the
number of breaks in the sequence (losses, reordering).

The full server decrypts, records and forwards every packet in Python (~20 us each),
which caps what it can receive near 12,000 packets/s. For the benchmark the audio path
is replaced by a record-only one (SSRC and arrival time, no decryption): the gateway,
IP discovery and everything else stay the VoiceServer's.

Arrival times are the kernel's receive timestamps where Linux gives them (read back per
datagram with the SIOCGSTAMPNS ioctl right after the event loop received it, see
``fastvoice.testing.kernel_receive_clock``), so the jitter figure is the sender's, not this
process's scheduling delay. The first output line (stderr) says which clock was used, and
the report counts datagrams that had no kernel stamp.
"""

import asyncio
import json
import socket
import struct
import sys
import time
from collections import defaultdict

from fastvoice.testing import VoiceServer, kernel_receive_clock


def kernel_clock(server: VoiceServer):
    """A function returning the kernel receive time of the datagram just read, or None."""
    stamp = kernel_receive_clock(server._udp)
    if stamp is None:
        return None
    wall = time.time  # the same clock (CLOCK_REALTIME) as the kernel's stamps
    missing = [0]

    def arrival() -> float:
        t = stamp()
        if t is None:  # no stamp for this datagram: counted and reported
            missing[0] += 1
            return wall()
        return t

    arrival.missing = missing
    return arrival


def enlarge_receive_buffer(server: VoiceServer, size: int = 32 << 20) -> None:
    """A deep socket buffer, so a descheduled server process loses no datagram."""
    sock = socket.socket(fileno=server._udp.get_extra_info("socket").fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            pass
    finally:
        sock.detach()


def record_only(server: VoiceServer, clock) -> dict:
    arrivals: dict[int, list[tuple[int, float]]] = defaultdict(list)
    full_path = server._on_datagram
    seq_ssrc = struct.Struct(">HxxxxI").unpack_from

    def on_datagram(data: bytes, addr) -> None:
        if len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0x78:
            seq, ssrc = seq_ssrc(data, 2)
            arrivals[ssrc].append((seq, clock()))
            return
        full_path(data, addr)

    server._on_datagram = on_datagram
    return arrivals


async def main() -> None:
    tls = "--tls" in sys.argv
    async with VoiceServer(heartbeat_interval=30000, tls=tls) as server:
        clock = kernel_clock(server)
        print("clock: kernel receive timestamps" if clock else "clock: time.monotonic at delivery", file=sys.stderr)
        enlarge_receive_buffer(server)
        arrivals = record_only(server, clock or time.monotonic)
        print(server.url if not tls else f"{server.url} {server.endpoint} {server.ca_file}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        # Gaps between consecutive sequence numbers only: a datagram lost on the way (or
        # reordered) says nothing about pacing, and is counted apart.
        result = {
            ssrc: {
                "packets": len(seen),
                "gaps_ms": [round((b - a) * 1000, 3) for (sa, a), (sb, b) in zip(seen, seen[1:])
                            if (sb - sa) & 0xFFFF == 1],
                "breaks": sum(1 for (sa, _), (sb, _) in zip(seen, seen[1:]) if (sb - sa) & 0xFFFF != 1),
            }
            for ssrc, seen in arrivals.items()
        }
        if clock is not None and clock.missing[0]:
            print(f"kernel stamps missing for {clock.missing[0]} datagrams (wall clock used)", file=sys.stderr)
        print(json.dumps(result), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
