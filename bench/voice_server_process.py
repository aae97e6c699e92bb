"""A VoiceServer in its own process for the connection benchmarks.

Prints its URL (and, with ``--tls``, its endpoint and CA file on the same line), serves
until a line arrives on stdin, then prints one JSON line: per SSRC, the packet count and
the gaps between consecutive arrivals (ms), as the server saw them.
"""

import asyncio
import json
import sys

from fastvoice.testing import VoiceServer


async def main() -> None:
    tls = "--tls" in sys.argv
    async with VoiceServer(heartbeat_interval=30000, tls=tls) as server:
        print(server.url if not tls else f"{server.url} {server.endpoint} {server.ca_file}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        result = {}
        for session in server.sessions:
            packets = server.packets(session.ssrc)
            arrivals = [p.arrival for p in packets]
            result[session.ssrc] = {
                "packets": len(packets),
                "gaps_ms": [round((b - a) * 1000, 3) for a, b in zip(arrivals, arrivals[1:])],
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
