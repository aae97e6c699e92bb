"""A VoiceServer in its own process for the connection benchmarks.

Prints its URL (and, with ``--tls``, its endpoint and CA file on the same line), serves
until a line arrives on stdin, then prints one JSON line: per SSRC, the packet count and
the gaps between consecutive arrivals (ms), as the server saw them.

The full server decrypts, records and forwards every packet in Python (~20 us each),
which caps what it can receive near 12,000 packets/s. For the benchmark the audio path
is replaced by a record-only one (SSRC and arrival time, no decryption): the gateway,
IP discovery and everything else stay the VoiceServer's.
"""

import asyncio
import json
import struct
import sys
import time
from collections import defaultdict

from fastvoice.testing import VoiceServer


def record_only(server: VoiceServer) -> dict:
    arrivals: dict[int, list[float]] = defaultdict(list)
    full_path = server._on_datagram
    ssrc_of = struct.Struct(">I").unpack_from
    clock = time.monotonic

    def on_datagram(data: bytes, addr) -> None:
        if len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0x78:
            arrivals[ssrc_of(data, 8)[0]].append(clock())
            return
        full_path(data, addr)

    server._on_datagram = on_datagram
    return arrivals


async def main() -> None:
    tls = "--tls" in sys.argv
    async with VoiceServer(heartbeat_interval=30000, tls=tls) as server:
        arrivals = record_only(server)
        print(server.url if not tls else f"{server.url} {server.endpoint} {server.ca_file}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        result = {
            ssrc: {
                "packets": len(times),
                "gaps_ms": [round((b - a) * 1000, 3) for a, b in zip(times, times[1:])],
            }
            for ssrc, times in arrivals.items()
        }
        print(json.dumps(result), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
