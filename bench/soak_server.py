"""A VoiceServer in its own process for the soak benchmark, driven by commands on stdin.

Prints its URL, then reads one JSON command per line on stdin and answers each with one
JSON line on stdout. Commands (``fraction`` picks that share of the live sessions, at
least one):

- ``{"op": "drop", "fraction": 0.05}``: cut the websocket of those sessions (no close frame).
- ``{"op": "close", "code": 4015, "fraction": 0.05}``: close their websocket with ``code``.
- ``{"op": "refuse_resume", "fraction": 0.02}``: drop them and refuse their resume (4006),
  so each must identify a new session.
- ``{"op": "zombie", "fraction": 0.05}``: stop acknowledging heartbeats on their current
  websocket (the next websocket of the session is acknowledged again).
- ``{"op": "udp", "loss": 0.3, "duplicate": 0.3, "reorder": 0.1, "seconds": 5}``: apply
  those fault rates to every datagram sent to clients for ``seconds``, then clear them.
- ``{"op": "status"}``: per guild, the live session's SSRC, whether its websocket is
  connected, the audio packets received from it and the seconds since the last one.
- ``{"op": "quit"}``: close the server and exit (so does end of input).

Answers to fault commands name the guilds they touched.

The audio path is a lean one: each packet is counted per SSRC and echoed back to its
sender under a second SSRC (announced with op 5 as user ``ECHO_USER_ID``) with the
session's key, so the client's receive path runs too and the UDP fault rates apply to a
real stream. The full path records every packet forever, which a ten-minute run at 10,000
packets/s cannot afford; IP discovery and everything else stay the VoiceServer's.

    python bench/soak_server.py [--heartbeat-ms 5000] [--seed N] [--no-echo]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import struct
import sys
import time
from typing import Any

from fastvoice.errors import DecryptionFailedError
from fastvoice.gateway_messages import GatewayMessageDataSpeaking, Opcode, SpeakingFlags
from fastvoice.rtp import Depacketizer, Packetizer
from fastvoice.testing import VoiceServer

#: The user id the echoed audio comes from, as the client sees it.
ECHO_USER_ID = 4242

_ssrc_of = struct.Struct(">I").unpack_from


class SoakServer:
    """Wraps a started VoiceServer: the lean audio path, the echo and the fault commands."""

    def __init__(self, server: VoiceServer, *, seed: int | None = None, echo: bool = True) -> None:
        self.server = server
        self.echo = echo
        self.rng = random.Random(seed)
        #: ssrc -> [packets received, monotonic time of the last one]
        self.audio: dict[int, list[float]] = {}
        #: session ssrc -> (depacketizer of its key, packetizer of the echo stream)
        self.echoes: dict[int, tuple[Any, Any]] = {}
        #: guild -> the echo stream's SSRC (kept across the guild's sessions, as another
        #: member's SSRC is when we reconnect)
        self.echo_ssrcs: dict[int, int] = {}
        self.echoed = 0
        self.unknown = 0
        self.undecryptable = 0
        self._udp_reset: asyncio.TimerHandle | None = None
        self._full_datagram_path = server._on_datagram
        self._full_select_protocol = server._on_select_protocol
        server._on_datagram = self._on_datagram  # type: ignore[method-assign]
        server._on_select_protocol = self._on_select_protocol  # type: ignore[method-assign]

    # -- audio ---------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0x78:
            ssrc = _ssrc_of(data, 8)[0]
            session = self.server._by_ssrc.get(ssrc)
            if session is None or session.secret_key is None:
                self.unknown += 1
                return
            entry = self.audio.get(ssrc)
            if entry is None:
                entry = self.audio[ssrc] = [0, 0.0]
            entry[0] += 1
            entry[1] = time.monotonic()
            session.udp_address = addr
            pair = self.echoes.get(ssrc)
            if pair is not None:
                try:
                    packet = pair[0].depacketize(data)
                except DecryptionFailedError:
                    self.undecryptable += 1
                    return
                if packet is not None:
                    self.server._udp_send(addr, pair[1].packetize(packet.opus))
                    self.echoed += 1
            return
        self._full_datagram_path(data, addr)

    async def _on_select_protocol(self, conn: Any, data: Any) -> None:
        await self._full_select_protocol(conn, data)
        session = conn.session
        if not self.echo or session is None or session.secret_key is None or session.mode is None:
            return
        for ssrc in [s for s in self.echoes if s not in self.server._by_ssrc]:
            del self.echoes[ssrc]  # sessions that ended
        echo_ssrc = self.echo_ssrcs.get(session.guild_id)
        if echo_ssrc is None:
            echo_ssrc = self.echo_ssrcs[session.guild_id] = self._new_echo_ssrc()
        self.echoes[session.ssrc] = (
            Depacketizer(session.mode, session.secret_key),
            Packetizer(echo_ssrc, session.mode, session.secret_key),
        )
        await session.send(
            Opcode.SPEAKING,
            GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE, echo_ssrc, user_id=ECHO_USER_ID),
        )

    def _new_echo_ssrc(self) -> int:
        taken = set(self.echo_ssrcs.values())
        while True:
            ssrc = self.rng.randrange(1, 2**32)
            if ssrc not in self.server._by_ssrc and ssrc not in taken:
                return ssrc

    # -- faults ------------------------------------------------------------------------

    def live_sessions(self) -> list[Any]:
        """The current session of every guild, if its websocket is connected."""
        return [s for s in self.server.sessions if not s.ended and s.connection is not None]

    def _pick(self, fraction: Any) -> list[Any]:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        live = self.live_sessions()
        if not live:
            raise ValueError("no live session to inject a fault into")
        count = max(1, round(fraction * len(live)))
        return self.rng.sample(live, min(count, len(live)))

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one command; return its answer."""
        op = command.get("op")
        if op == "drop":
            chosen = self._pick(command.get("fraction", 0.05))
            for session in chosen:
                session.drop()
            return {"op": op, "guilds": [s.guild_id for s in chosen]}
        if op == "close":
            code = command.get("code", 4015)
            if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
                raise ValueError(f"code must be a voice close code 4000-4999, got {code!r}")
            chosen = self._pick(command.get("fraction", 0.05))
            await asyncio.gather(*(s.close(code, "soak fault") for s in chosen))
            return {"op": op, "code": code, "guilds": [s.guild_id for s in chosen]}
        if op == "refuse_resume":
            chosen = self._pick(command.get("fraction", 0.02))
            self.server.refuse_next_resume(len(chosen))
            for session in chosen:
                session.drop()
            return {"op": op, "guilds": [s.guild_id for s in chosen]}
        if op == "zombie":
            chosen = self._pick(command.get("fraction", 0.05))
            for session in chosen:
                live = session.connection
                if live is not None:
                    live.withhold_heartbeat_acks = True
            return {"op": op, "guilds": [s.guild_id for s in chosen]}
        if op == "udp":
            seconds = command.get("seconds", 5.0)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ValueError(f"seconds must be a positive number, got {seconds!r}")
            self.server.udp_loss = command.get("loss", 0.0)
            self.server.udp_duplicate = command.get("duplicate", 0.0)
            self.server.udp_reorder = command.get("reorder", 0.0)
            if self._udp_reset is not None:
                self._udp_reset.cancel()
            self._udp_reset = asyncio.get_running_loop().call_later(seconds, self._clear_udp_faults)
            return {"op": op, "guilds": sorted({s.guild_id for s in self.live_sessions()}), "seconds": seconds}
        if op == "status":
            return self.status()
        raise ValueError(f"unknown op {op!r}; expected drop, close, refuse_resume, zombie, udp, status or quit")

    def _clear_udp_faults(self) -> None:
        self._udp_reset = None
        self.server.udp_loss = self.server.udp_duplicate = self.server.udp_reorder = 0.0

    def status(self) -> dict[str, Any]:
        """Per guild: the newest live session's audio and websocket state."""
        now = time.monotonic()
        guilds: dict[str, dict[str, Any]] = {}
        sessions: dict[int, int] = {}
        connections: dict[int, int] = {}
        for session in self.server.sessions:
            sessions[session.guild_id] = sessions.get(session.guild_id, 0) + 1
            connections[session.guild_id] = connections.get(session.guild_id, 0) + len(session.connections)
            if session.ended:
                continue
            packets, last = self.audio.get(session.ssrc, (0, 0.0))
            guilds[str(session.guild_id)] = {
                "ssrc": session.ssrc,
                "connected": session.connection is not None,
                "packets": int(packets),
                "age": round(now - last, 3) if packets else None,
            }
        for key, entry in guilds.items():
            entry["sessions"] = sessions[int(key)]
            entry["connections"] = connections[int(key)]
        return {
            "op": "status",
            "guilds": guilds,
            "echoed": self.echoed,
            "unknown_ssrc": self.unknown,
            "undecryptable": self.undecryptable,
            "websockets": len(self.server.connections),
        }


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with VoiceServer(heartbeat_interval=args.heartbeat_ms, session_timeout=60.0, seed=args.seed) as server:
        soak = SoakServer(server, seed=args.seed, echo=not args.no_echo)
        print(server.url, flush=True)
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                command = json.loads(line)
                if not isinstance(command, dict):
                    raise ValueError(f"a command must be a JSON object, got {type(command).__name__}")
                if command.get("op") == "quit":
                    print(json.dumps({"op": "quit"}), flush=True)
                    return
                answer = await soak.handle(command)
            except (ValueError, TypeError) as exc:
                answer = {"error": str(exc)}
            print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="VoiceServer for the soak benchmark (commands on stdin)")
    parser.add_argument("--heartbeat-ms", type=float, default=5000.0, help="heartbeat interval sent in Hello")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault picker and SSRCs")
    parser.add_argument("--no-echo", action="store_true", help="do not echo audio back to its sender")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
