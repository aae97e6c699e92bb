"""The voice server of bench/test_bench_receive.py: a VoiceServer whose process also speaks.

Prints its URL (with ``--tls``: its URL, endpoint and CA file on one line) once it serves.
Then, on stdin:

- ``start SECONDS``: every session that has selected its protocol and been heard on UDP (the
  client's listeners) gets K speakers of its own (``FASTVOICE_BENCH_SPEAKERS``, default 1):
  user ids and SSRCs that no session owns, announced to it with one op 11 (connected,
  listing them) and an op 5 each (speaking, with the user id), as Discord announces members
  who talk. After a short pause a thread of this process sends each listener its speakers'
  audio: one packet per speaker every 20 ms for SECONDS, encrypted with the listener's key and
  mode, from the server's own UDP socket (the address the client checks).
  The server answers ``streaming`` when the first packet is about to go, and when the last
  has gone one JSON line: for each stream (``calls``, keyed by the listener's guild id with
  one speaker a call, by ``GUILD/K`` for its speaker K = 0, 1, ... with more) the guild, the
  speaker's SSRC and user id and the send time of every packet (``time.time()`` taken right
  before its ``sendto``, as microseconds after ``base``), and the CPU seconds this whole
  process (server and sender) used while sending.
- end of input: stop.

Packet ``k`` of a stream has RTP sequence number ``k`` and timestamp ``960 k`` (each speaker
its own stream: its own SSRC, sequence numbers and timestamps), and its payload starts with
``k`` as a 4-byte big-endian number (for receivers that hand out the payload only), followed
by random bytes (120 bytes in all); with ``--opus`` the payloads are instead the frames of
the clip fastvoice's demo plays (real Opus, stereo music, ~160 bytes), in turn, which a
decoding receiver can decode (the number is then not in them); the speakers of a call start
at different places in the clip.

The sender is paced on absolute deadlines (``time.sleep`` to each tick's start); a late
tick is sent when it can, never skipped, so a slow sender shows as latency, not loss.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import struct
import sys
import threading
import time

from fastvoice.gateway_messages import (
    GatewayMessageDataClientsConnect,
    GatewayMessageDataSpeaking,
    Opcode,
)
from fastvoice.rtp import Packetizer
from fastvoice.testing import VoiceServer

#: First user id of the speakers (counting up over the calls and their speakers); no listener uses these.
SPEAKER_BASE = 900_000_000_000_000_000
FRAME_BYTES = 120
#: The most speakers a call may have (Discord's voice channels hold up to 99 members).
MAX_SPEAKERS = 99


def speakers_per_call(environ=os.environ) -> int:
    """``FASTVOICE_BENCH_SPEAKERS`` (default 1): the speakers the server announces to each call."""
    text = environ.get("FASTVOICE_BENCH_SPEAKERS", "1")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SPEAKERS:
        raise SystemExit(f"FASTVOICE_BENCH_SPEAKERS must be an int from 1 to {MAX_SPEAKERS}, got {text[:40]!r}")
    return value


def stream_key(guild_id: int, speaker: int, speakers: int) -> str:
    """The key of a speaker's stream in the report: the guild id alone with one speaker a call."""
    return str(guild_id) if speakers == 1 else f"{guild_id}/{speaker}"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Speakers:
    """The speakers' audio, sent by a thread of this process through the server's UDP socket."""

    def __init__(self, server: VoiceServer, sessions: list, seconds: float, opus: list[bytes] | None,
                 speakers: int = 1) -> None:
        self.server = server
        self.count = max(1, round(seconds * 50))
        self.speakers = speakers
        # one entry per stream: (session, speaker number, ssrc, user id, packetizer, address, send times)
        self.calls = []
        taken = {s.ssrc for s in server.sessions}
        number = 0
        for session in sorted(sessions, key=lambda s: s.guild_id):
            for speaker in range(speakers):
                ssrc = server._new_ssrc()
                while ssrc in taken:
                    ssrc = server._new_ssrc()
                taken.add(ssrc)
                packetizer = Packetizer(ssrc, session.mode, session.secret_key)
                self.calls.append((session, speaker, ssrc, SPEAKER_BASE + number, packetizer, session.udp_address, []))
                number += 1
        self.opus = opus
        self.filler = os.urandom(FRAME_BYTES - 4)
        self.base = 0.0
        self.cpu = 0.0
        self.wall = 0.0
        self.late_ticks = 0
        self.started = threading.Event()

    async def announce(self) -> None:
        """One op 11 per listener naming its speakers, then op 5 for each, as Discord sends them."""
        by_session: dict = {}
        for session, _speaker, ssrc, user_id, *_ in self.calls:
            by_session.setdefault(session, []).append((ssrc, user_id))
        for session, speakers in by_session.items():
            await session.send(Opcode.CLIENTS_CONNECT, GatewayMessageDataClientsConnect([u for _, u in speakers]))
            for ssrc, user_id in speakers:
                await session.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(1, ssrc, user_id=user_id))

    def run(self, sock: socket.socket) -> None:
        sendto, now, sleep = sock.sendto, time.time, time.sleep
        pack = struct.Struct(">I").pack
        opus = self.opus
        offsets = [speaker * len(opus) // self.speakers for speaker in range(self.speakers)] if opus else []
        cpu_before = cpu_seconds()
        self.base = start = now() + 0.05
        self.started.set()
        for k in range(self.count):
            due = start + 0.02 * k
            wait = due - now()
            if wait > 0:
                sleep(wait)
            elif wait < -0.02:
                self.late_ticks += 1
            marker = k == 0
            if opus:  # each speaker of a call at its own place in the clip
                payloads = [opus[(k + offset) % len(opus)] for offset in offsets]
            else:
                payloads = [pack(k) + self.filler] * self.speakers
            for _session, speaker, _ssrc, _user, packetizer, address, times in self.calls:
                datagram = packetizer.packetize(payloads[speaker], marker=marker)
                times.append(now())
                try:
                    sendto(datagram, address)
                except OSError:  # a full send buffer (or a listener gone): not sent, no send time
                    times[-1] = -1.0
        self.cpu = cpu_seconds() - cpu_before
        self.wall = now() - start

    def report(self) -> dict:
        base = self.base
        return {
            "base": base,
            "packets_per_call": self.count,
            "speakers_per_call": self.speakers,
            "late_ticks": self.late_ticks,
            "sender_cpu_seconds": round(self.cpu, 3),
            "sender_seconds": round(self.wall, 3),
            "calls": {
                stream_key(session.guild_id, speaker, self.speakers): {
                    "guild": str(session.guild_id), "ssrc": ssrc, "user_id": user_id,
                    "sent_us": [round((t - base) * 1e6) if t >= 0 else None for t in times],
                }
                for session, speaker, ssrc, user_id, _p, _a, times in self.calls
            },
        }


def accept_speaking_without_ssrc(server: VoiceServer) -> None:
    """Take a client's op 5 that lacks ``ssrc`` as if it carried the session's own.

    py-cord 2.8 sends ``{speaking, delay}`` without the ``ssrc`` PROTOCOL.md lists, which the
    local server refuses (close 4002); Discord's servers take it. Only for that contender
    (``--speaking-without-ssrc``); nothing else is changed.
    """
    on_text = server._on_text

    async def lenient(conn, text: str) -> None:
        if conn.session is not None and '"ssrc"' not in text:
            try:
                message = json.loads(text)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("op") == 5 and isinstance(message.get("d"), dict):
                message["d"]["ssrc"] = conn.session.ssrc
                text = json.dumps(message)
        await on_text(conn, text)

    server._on_text = lenient


async def stdin_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2**20)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def enlarge_send_buffer(sock: socket.socket, size: int = 8 << 20) -> None:
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


async def main() -> None:
    tls = "--tls" in sys.argv
    mode = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--mode=")), "aead_xchacha20_poly1305_rtpsize")
    per_call = speakers_per_call()
    opus = None
    if "--opus" in sys.argv:
        from fastvoice._demo import load_clip

        opus = load_clip()
    commands = await stdin_reader()
    async with VoiceServer(heartbeat_interval=30000, tls=tls, modes=[mode]) as server:
        if "--speaking-without-ssrc" in sys.argv:
            accept_speaking_without_ssrc(server)
        print(server.url if not tls else f"{server.url} {server.endpoint} {server.ca_file}", flush=True)
        line = (await commands.readline()).decode().split()
        if not line or line[0] != "start":
            return
        seconds = float(line[1])
        listeners = [s for s in server.sessions
                     if not s.ended and s.secret_key is not None and s.udp_address is not None]
        speakers = Speakers(server, listeners, seconds, opus, per_call)
        await speakers.announce()
        await asyncio.sleep(0.5)  # the announcements reach every listener before its first packet
        fd = server._udp.get_extra_info("socket").fileno()
        sock = socket.socket(fileno=os.dup(fd))
        enlarge_send_buffer(sock)
        sock.setblocking(False)
        thread = threading.Thread(target=speakers.run, args=(sock,), name="speakers", daemon=True)
        try:
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, speakers.started.wait)
            print(f"streaming {len(listeners)}", flush=True)
            while thread.is_alive():
                await asyncio.sleep(0.05)
        finally:
            thread.join()
            sock.close()
        print(json.dumps(speakers.report()), flush=True)
        await commands.read()


if __name__ == "__main__":
    import logging

    # What the server refuses (an undecodable message, a bad datagram) goes to stderr.
    logging.basicConfig(level=os.environ.get("FASTVOICE_BENCH_SERVER_LOG", "WARNING").upper(), stream=sys.stderr)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
