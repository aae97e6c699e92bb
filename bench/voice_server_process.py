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

Media is read by a thread that drains the socket every millisecond (see
``PollingReceiver``), so that on loopback the senders do not pay for waking this process;
``--receiver=epoll`` (or FASTVOICE_BENCH_RECEIVER=epoll) reads it from the event loop.
"""

import asyncio
import json
import os
import socket
import struct
import sys
import threading
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


def is_audio(data: bytes) -> bool:
    return len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0x78


SEQ_SSRC = struct.Struct(">HxxxxI").unpack_from


def record_only(server: VoiceServer, clock, on_first_audio=None) -> dict:
    arrivals: dict[int, list[tuple[int, float]]] = defaultdict(list)
    full_path = server._on_datagram

    def on_datagram(data: bytes, addr) -> None:
        if is_audio(data):
            seq, ssrc = SEQ_SSRC(data, 2)
            arrivals[ssrc].append((seq, clock()))
            if on_first_audio is not None:
                on_first_audio()
            return
        full_path(data, addr)

    server._on_datagram = on_datagram
    return arrivals


class PollingReceiver:
    """Reads the media socket from a thread that drains it every millisecond.

    On loopback the kernel runs the receiving side of every datagram inside the *sender's*
    system call, and that includes waking a receiver that sleeps in epoll on the socket.
    Measured here at 1,000 connections, that wake-up makes the sender's send phase about
    half as long again (4.4 ms vs 6.5 ms per tick at the median), a cost that a sender on a
    real network does not pay and that adds its variance to the jitter. A receiver that
    sleeps on a timer instead of on the socket is never woken by a datagram (as a NIC
    coalesces interrupts); the kernel still stamps each datagram when it arrives, so the
    arrival times are as exact. The event loop stops watching the socket once audio flows;
    IP discovery and anything else that is not audio is handed back to it.
    """

    def __init__(self, server: VoiceServer, arrivals: dict, clock) -> None:
        self.server, self.arrivals, self.clock = server, arrivals, clock
        self.loop = asyncio.get_running_loop()
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def start(self) -> None:
        if self.thread is not None:
            return
        fd = self.server._udp.get_extra_info("socket").fileno()
        self.loop._remove_reader(fd)  # selector loop (this mode runs without uvloop)
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)
        self.thread = threading.Thread(target=self._run, args=(sock,), name="polling-receiver", daemon=True)
        self.thread.start()

    def _run(self, sock: socket.socket) -> None:
        recvfrom, arrivals, clock, stop = sock.recvfrom, self.arrivals, self.clock, self.stop
        sleep = time.sleep
        hand_back = self.server._on_datagram
        try:
            while not stop.is_set():
                try:
                    data, addr = recvfrom(4096)
                except BlockingIOError:
                    sleep(0.001)
                    continue
                except OSError:
                    return
                if is_audio(data):
                    seq, ssrc = SEQ_SSRC(data, 2)
                    arrivals[ssrc].append((seq, clock()))
                else:
                    self.loop.call_soon_threadsafe(hand_back, data, addr)
        finally:
            sock.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


async def stdin_reader() -> asyncio.StreamReader:
    """stdin as an asyncio stream: waiting on it keeps no thread (an executor thread blocked in
    ``readline`` would keep this process alive after Ctrl-C until a line came)."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def main() -> None:
    tls = "--tls" in sys.argv
    commands = await stdin_reader()
    async with VoiceServer(heartbeat_interval=30000, tls=tls) as server:
        clock = kernel_clock(server)
        print("clock: kernel receive timestamps" if clock else "clock: time.monotonic at delivery", file=sys.stderr)
        enlarge_receive_buffer(server)
        polling: PollingReceiver | None = None
        arrivals = record_only(server, clock or time.monotonic,
                               on_first_audio=(lambda: polling.start()) if POLLING else None)
        if POLLING:
            polling = PollingReceiver(server, arrivals, clock or time.monotonic)
            print("receiver: a thread draining the socket every millisecond once audio flows", file=sys.stderr)
        else:
            print("receiver: the event loop, woken by each datagram", file=sys.stderr)
        print(server.url if not tls else f"{server.url} {server.endpoint} {server.ca_file}", flush=True)
        await commands.readline()
        if polling is not None:
            polling.close()
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
        await commands.read()


#: How media is read: "poll" (default, see :class:`PollingReceiver`) or "epoll" (the event
#: loop woken per datagram): ``--receiver=epoll`` or FASTVOICE_BENCH_RECEIVER=epoll (the
#: benchmark clients pass their environment on).
RECEIVER = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--receiver=")),
                os.environ.get("FASTVOICE_BENCH_RECEIVER", "poll"))
if RECEIVER not in ("poll", "epoll"):
    raise SystemExit(f"receiver must be 'poll' or 'epoll', got {RECEIVER!r}")
POLLING = RECEIVER == "poll"

if __name__ == "__main__":
    if not POLLING:  # the polling receiver takes the socket from a selector loop
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C: leave quietly (the server closed on the way out)
        sys.exit(130)
