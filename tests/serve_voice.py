"""Run a VoiceServer in its own process (for load tests): prints its URL, serves until stdin closes."""

import asyncio
import sys

from fastvoice.testing import VoiceServer


async def main() -> None:
    async with VoiceServer(heartbeat_interval=float(sys.argv[1]) if len(sys.argv) > 1 else 13750.0) as server:
        print(server.url, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
