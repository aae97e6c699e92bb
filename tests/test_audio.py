"""AudioSender on the shared SendClock, and AudioReceiver, over a real UDP socket pair."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time

import pytest

from _calls import Collect, wait_until
from fastvoice.audio import AudioReceiver, AudioSender, SendClock
from fastvoice.ipdiscovery import build_ip_discovery_response
from fastvoice.opus import OpusReader
from fastvoice.rtp import Depacketizer, Packet, Packetizer, SSRCTable
from fastvoice.udp import UDPConn

MODE = "aead_xchacha20_poly1305_rtpsize"
KEY = os.urandom(32)
SILENCE = b"\xf8\xff\xfe"


class Server(asyncio.DatagramProtocol):
    """A voice server's UDP side reduced to what these tests need."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, Packet]] = []
        self.client = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.client = addr
        if len(data) == 74 and data[:2] == b"\x00\x01":
            ssrc = struct.unpack_from(">I", data, 4)[0]
            self.transport.sendto(build_ip_discovery_response(ssrc, addr[0], addr[1]), addr)
            return
        self.packets.append((time.monotonic(), Depacketizer(MODE, KEY).depacketize(data)))


class FakeConn:
    """The two things an AudioSender needs from a Conn, with Speaking calls recorded."""

    def __init__(self, udp: UDPConn, server: Server) -> None:
        self.udp = udp
        self.server = server
        self.speaking: list[tuple[int, int]] = []  # (flags, packets sent before it)
        self.sender = None

    async def set_speaking(self, flags: int) -> None:
        self.speaking.append((flags, self.sender.stats.sent))


@pytest.fixture
async def link():
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    udp = UDPConn()
    await udp.open("127.0.0.1", transport.get_extra_info("sockname")[1], 4321)
    udp.set_secret_key(MODE, KEY)
    yield FakeConn(udp, server)
    udp.close()
    transport.close()


def opus_file(frames):
    return io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames))


async def test_stream_file_then_silence_and_stop(link):
    frames = [os.urandom(60) + bytes([i]) for i in range(25)]
    sender = link.sender = AudioSender(OpusReader(opus_file(frames)), link)
    sender.open()
    clock = SendClock.for_loop()
    await wait_until(lambda: not sender.live)
    await wait_until(lambda: len(link.server.packets) == 30)
    got = [p.opus for _, p in link.server.packets]
    assert got == frames + [SILENCE] * 5
    first = link.server.packets[0][1]
    assert [(p.sequence - first.sequence) & 0xFFFF for _, p in link.server.packets] == list(range(30))
    # One talkspurt: the marker on its first packet only, timestamps 960 apart throughout.
    assert [p.marker for _, p in link.server.packets] == [True] + [False] * 29
    assert [(p.timestamp - first.timestamp) & 0xFFFFFFFF for _, p in link.server.packets] == [
        960 * i for i in range(30)
    ]
    # Speaking 1 before the first packet; Speaking 0 after the five silence frames.
    assert link.speaking == [(1, 0), (0, 30)]
    assert (sender.stats.sent, sender.stats.silence, sender.stats.errors) == (30, 5, 0)
    await wait_until(lambda: not clock.running)  # nothing live: the clock task ends
    arrivals = [t for t, _ in link.server.packets]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.020, abs=0.004)
    sender.close()


class Script:
    """A provider that plays a list: bytes are frames, None is 'nothing now', an exception is raised."""

    def __init__(self, items):
        self.items = list(items)
        self.closed = False

    def provide_opus_frame(self):
        if not self.items:
            raise EOFError
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self.closed = True


async def test_pause_resume_and_provider_errors(link):
    script = Script([b"a", b"b", None, None, None, None, None, None, None, RuntimeError("boom"), b"c"])
    sender = link.sender = AudioSender(script, link)
    sender.open()
    await wait_until(lambda: not sender.live)
    payloads = [p.opus for _, p in link.server.packets]
    assert payloads == [b"a", b"b"] + [SILENCE] * 5 + [b"c"] + [SILENCE] * 5
    assert [f for f, _ in link.speaking] == [1, 0, 1, 0]
    # each Speaking 1 came before the packets it announces
    assert link.speaking[2][1] == 7
    assert sender.stats.errors == 1 and sender.stats.nulled > 0
    sender.close()
    assert script.closed


async def test_removing_the_provider_takes_the_sender_off_the_clock(link):
    # Idle connections cost nothing per tick: after the silence tail a sender without a
    # provider leaves the clock, and a new provider brings it back.
    sender = link.sender = AudioSender(Script([b"a"] * 1000), link)
    sender.open()
    await wait_until(lambda: len(link.server.packets) >= 3)
    clock = sender._clock
    sender.set_provider(None)
    await wait_until(lambda: not sender.live)
    assert clock.live_senders == 0 and not sender.speaking
    sent = len(link.server.packets)
    assert [p.opus for _, p in link.server.packets][-5:] == [SILENCE] * 5
    await asyncio.sleep(0.1)
    assert len(link.server.packets) == sent  # nothing more, and no tick works for it
    sender.set_provider(Script([b"z"]))
    assert sender.live
    await wait_until(lambda: not sender.live)
    assert [p.opus for _, p in link.server.packets][sent:] == [b"z"] + [SILENCE] * 5
    sender.close()


async def test_no_key_means_nothing_sent(link):
    link.udp._packetizer = None  # as before Session Description
    sender = AudioSender(Script([b"x"] * 5), link)
    sender.open()
    await asyncio.sleep(0.15)
    assert link.server.packets == [] and sender.stats.sent == 0 and sender.stats.nulled >= 5
    sender.close()


async def test_stall_resyncs_without_burst(link):
    sender = AudioSender(Script([os.urandom(40) for _ in range(60)]), link)
    sender.open()
    await wait_until(lambda: len(link.server.packets) >= 10)
    time.sleep(0.15)  # user code blocking the event loop for 150 ms
    stalled_at = time.monotonic()
    await asyncio.sleep(0.1)
    after = [t for t, _ in link.server.packets if t > stalled_at]
    # No burst: at most the one tick due on wake-up plus regular 20 ms ticks in 100 ms.
    assert len(after) <= 7
    assert sender.stats.deficit >= 4
    assert SendClock.for_loop().resyncs >= 1
    sender.close()


async def test_deterministic_ticks(link):
    clock = SendClock(asyncio.get_running_loop(), autostart=False)
    sender = link.sender = AudioSender(Script([b"1", b"2"]), link, clock=clock)
    sender.open()
    clock.run_tick()  # frame 1 held while Speaking goes out
    assert sender._slot.datagram is None and sender._held == b"1"
    await asyncio.sleep(0)  # Speaking sent
    clock.run_tick()  # prepares 1
    clock.run_tick()  # sends 1, prepares 2
    await wait_until(lambda: len(link.server.packets) == 1)
    assert link.server.packets[0][1].opus == b"1"
    sender.close()
    assert clock.live_senders == 0


def sequenced(sink):
    """``(user_id, sequence, opus)`` of every frame a Collect received."""
    return [(user_id, p.sequence, p.opus) for user_id, p in sink.packets]


async def test_receiver_maps_holds_and_filters(link):
    table = SSRCTable()
    sink = Collect(fail_for={66})
    receiver = AudioReceiver(sink, link.udp, table, user_filter=lambda uid: uid != 55, hold_seconds=0.2)
    receiver.open()
    server = link.server
    alice, bob, eve, mallory = (Packetizer(s, MODE, KEY) for s in (1, 2, 3, 4))
    table.set(1, 11)
    table.set(3, 55)
    table.set(4, 66)
    for p in (alice, bob, alice, eve, mallory, bob):
        server.transport.sendto(p.packetize(b"f%d" % p.ssrc), server.client)
    await wait_until(lambda: len(sink.frames) == 2 and receiver.errors == 1)
    assert sequenced(sink) == [(11, 0, b"f1"), (11, 1, b"f1")]
    table.set(2, 22)  # op 5 for bob arrives after his audio
    receiver.ssrc_mapped(2)
    assert sequenced(sink)[2:] == [(22, 0, b"f2"), (22, 1, b"f2")]
    # an SSRC never mapped is dropped after the hold time
    unknown = Packetizer(9, MODE, KEY)
    server.transport.sendto(unknown.packetize(b"?"), server.client)
    await asyncio.sleep(0.35)
    assert receiver.dropped == 1 and receiver._pending == {}
    receiver.cleanup_user(11)
    assert sink.cleaned == [11] and table.lookup(1) is None
    receiver.close()


async def test_pacing_of_one_connection(link):
    """One datagram per tick, never two, and no tick lost: the pacing logic on a hand-driven clock.

    (How evenly the ticks fall in wall-clock time depends on the machine's load: bench/ measures
    it, see bench/README.md; a test only checks what the sender does on each tick.)
    """
    clock = SendClock(asyncio.get_running_loop(), autostart=False)
    frames = [os.urandom(100) for _ in range(250)]
    sender = link.sender = AudioSender(Script(frames), link, clock=clock)
    sender.open()
    clock.run_tick()  # the first frame is held while Speaking goes out
    assert sender.stats.sent == 0
    await asyncio.sleep(0)  # Speaking sent
    clock.run_tick()  # prepares the first frame
    assert sender.stats.sent == 0
    per_tick = []
    while sender.live:
        before = sender.stats.sent
        clock.run_tick()
        per_tick.append(sender.stats.sent - before)
        assert len(per_tick) <= 300, "the sender never stopped"
        await asyncio.sleep(0)  # the loop runs between ticks (Speaking 0 goes out there)
    # 250 frames, then 5 silence frames, one per tick; then Speaking 0 and off the clock
    assert per_tick[:255] == [1] * 255 and set(per_tick[255:]) <= {0} and len(per_tick) <= 258, per_tick[250:]
    assert sender.stats.deficit == 0 and sender.stats.silence == 5
    await wait_until(lambda: len(link.server.packets) == 255)
    packets = [p for _, p in link.server.packets]
    assert [p.opus for p in packets] == frames + [SILENCE] * 5
    first = packets[0]
    assert [p.sequence for p in packets] == [(first.sequence + i) & 0xFFFF for i in range(255)]
    assert [p.timestamp for p in packets] == [(first.timestamp + 960 * i) & 0xFFFFFFFF for i in range(255)]
    sender.close()
