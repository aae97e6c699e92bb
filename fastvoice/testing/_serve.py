"""The child side of :class:`fastvoice.testing.VoiceServerProcess`: a VoiceServer serving in this process.

Run as ``python -m fastvoice.testing._serve '{"dave_protocol_version": 1}'`` (the JSON object holds
VoiceServer keyword arguments). The first line on stdout describes the server (JSON); then each
line on stdin is a request ``{"id": N, "op": ..., ...}`` answered by one line
``{"id": N, "result": ...}`` or ``{"id": N, "error": "..."}``. The end of stdin (the parent
closed it, or died) closes the server and ends the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from .._shown import cut
from ._server import VoiceServer

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    uvloop = None  # type: ignore[assignment]

__all__: list[str] = []

# VoiceServer options a parent may pass (JSON values only), and knobs it may change later.
OPTIONS = frozenset({
    "tls", "heartbeat_interval", "modes", "require_dave", "dave_protocol_version", "strict_auth",
    "session_timeout", "seed", "expect_keepalive", "record_messages", "record_message_bytes", "record_packets",
    "media_recording",
})
KNOBS = frozenset({
    "udp_loss", "udp_duplicate", "udp_reorder", "udp_reorder_window", "udp_delay", "udp_jitter",
    "heartbeat_interval", "require_dave", "strict_auth", "expect_keepalive", "media_recording",
})


def stats(server: VoiceServer) -> dict[str, Any]:
    """What the server saw: live sessions (user -> SSRC), audio packets received per SSRC, socket
    drops, DAVE plaintext and what the loss knob dropped."""
    live = [s for s in server.sessions if not s.ended]
    return {
        "sessions": len(live),
        "ssrcs": {str(s.user_id): s.ssrc for s in live},
        # Counted by the media engine or the Python path (with media_recording "counts" or "full").
        "packets": {str(s.ssrc): server.packets_received(s.ssrc) for s in live},
        "udp_receive_drops": server.udp_receive_drops,
        "udp_receive_buffer": server.udp_receive_buffer,
        "dave_plaintext_packets": sum(s.dave_plaintext_packets for s in server.sessions),
        # Datagrams the udp_loss knob dropped (the newest 65,536).
        "udp_lost": len(server.udp_lost),
    }


async def answer(server: VoiceServer, request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "register":
        server.voice_updates(
            int(request["guild_id"]), int(request["user_id"]), int(request["channel_id"]),
            session_id=str(request["session_id"]), token=str(request["token"]),
        )
        return True
    if op == "close_sessions":
        keep = request.get("keep_channel")
        return await server.close_voice_sessions(
            int(request["user_id"]), int(request["guild_id"]), keep_channel=None if keep is None else int(keep),
            code=int(request.get("code", 4014)), reason=str(request.get("reason", "disconnected")),
        )
    if op == "stats":
        return stats(server)
    if op == "sequences":
        return {str(ssrc): [p.sequence for p in server.packets(int(ssrc))] for ssrc in request["ssrcs"]}
    if op == "set":
        name = request.get("name")
        if name not in KNOBS:
            raise ValueError(f"unknown knob {cut(repr(name), 40)}; expected one of {sorted(KNOBS)}")
        setattr(server, str(name), request.get("value"))
        return True
    raise ValueError(f"unknown op {cut(repr(op), 40)}")


async def serve(options: dict[str, Any]) -> None:
    unknown = set(options) - OPTIONS
    if unknown:
        raise SystemExit(f"unknown VoiceServer options {sorted(unknown)}; expected some of {sorted(OPTIONS)}")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with VoiceServer(**options) as server:
        print(json.dumps({
            "url": server.url, "endpoint": server.endpoint, "tls": server.tls, "host": server.host,
            "udp_port": server.udp_port, "ca_file": server.ca_file, "pid": os.getpid(),
        }), flush=True)

        async def requests() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    request = json.loads(line)
                    reply = {"id": request["id"], "result": await answer(server, request)}
                except Exception as exc:  # one bad request is answered, not fatal
                    reply = {"id": request.get("id") if isinstance(request, dict) else None,
                             "error": cut(f"{type(exc).__name__}: {exc}", 200)}
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()

        served = loop.create_task(requests())
        stopped = loop.create_task(stop.wait())
        try:
            await asyncio.wait({served, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            served.cancel()
            stopped.cancel()
            await asyncio.gather(served, stopped, return_exceptions=True)


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if not isinstance(options, dict):
        raise SystemExit("the argument must be a JSON object of VoiceServer options")
    if uvloop is None:
        asyncio.run(serve(options))
    else:
        uvloop.run(serve(options))


if __name__ == "__main__":
    main()
