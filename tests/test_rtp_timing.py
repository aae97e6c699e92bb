"""RTP header timing (PROTOCOL.md 4.1): random initial sequence number and timestamp per
connection, the marker bit on a talkspurt's first packet, and timestamps that keep
wall-clock time across pauses, stalls and reconnects."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

import reference as ref
from fastvoice import udp as udp_module
from fastvoice.audio import AudioSender, SendClock
from fastvoice.ipdiscovery import build_ip_discovery_response
from fastvoice.rtp import Depacketizer
from fastvoice.testing import VoiceServer
from fastvoice.udp import UDPConn

from _calls import make_manager, opus_stream, wait_until

KEY = bytes(range(1, 33))
SSRC = 0xDEADBEEF
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
SILENCE = b"\xf8\xff\xfe"

needs_aes = pytest.mark.skipif(
    not __import__("fastvoice").rtp.aes256gcm_available(), reason="CPU lacks AES-GCM support in libsodium"
)
MODES = [pytest.param(m, marks=needs_aes) if m == ref.AES else m for m in ref.ALL_MODES]


def wrapped(a: int, b: int, bits: int) -> int:
    """``b - a`` modulo 2**bits (how far ``b`` is ahead of ``a`` on a wrapping counter)."""
    return (b - a) & ((1 << bits) - 1)


# -- the Packetizer's marker bit (both twins) -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_marker_packet_matches_the_reference(rtp, monkeypatch, mode):
    nonce = bytes(range(24))
    monkeypatch.setattr(rtp.core, "_urandom", lambda n: nonce)
    p = rtp.Packetizer(SSRC, mode, KEY, sequence=65535, timestamp=2**32 - 960, nonce=9)
    marked = p.packetize(b"talkspurt", marker=True)
    plain = p.packetize(b"next")
    assert marked[1] == 0xF8 and plain[1] == 0x78  # the marker is for that one packet
    assert marked == ref.build_packet(mode, KEY, 65535, 2**32 - 960, SSRC, b"talkspurt", counter=9, marker=True,
                                      suffix_nonce=nonce)
    assert plain == ref.build_packet(mode, KEY, 0, 0, SSRC, b"next", counter=10, suffix_nonce=nonce)
    got = rtp.Depacketizer(mode, KEY).depacketize(marked)
    assert got.marker is True and got.opus == b"talkspurt" and got.payload_type == 0x78


def test_twins_mark_identically(rtp_c, rtp_py):
    for mode in (XCHACHA, ref.XSALSA_LITE, ref.XSALSA):
        c = rtp_c.Packetizer(7, mode, KEY, sequence=3, timestamp=5)
        py = rtp_py.Packetizer(7, mode, KEY, sequence=3, timestamp=5)
        for marker in (True, False, True, False):
            assert c.packetize(b"x" * 40, marker=marker) == py.packetize(b"x" * 40, marker=marker)


def test_marker_is_keyword_only(rtp):
    p = rtp.Packetizer(1, XCHACHA, KEY)
    with pytest.raises(TypeError):
        p.packetize(b"x", True)


def test_a_set_timestamp_is_the_next_packets(rtp):
    # What a sender does after a pause: move the timestamp on, then pack.
    p = rtp.Packetizer(SSRC, XCHACHA, KEY, timestamp=1000)
    p.packetize(b"a")
    p.timestamp = (p.timestamp + 960 * 24) & 0xFFFFFFFF
    assert rtp.Depacketizer(XCHACHA, KEY).depacketize(p.packetize(b"b")).timestamp == 1000 + 960 * 25


# -- random initial counters --------------------------------------------------------------


def _keyed_udp() -> UDPConn:
    udp = UDPConn()
    udp._ssrc = 5
    udp.set_secret_key(XCHACHA, KEY)
    return udp


def test_each_connection_starts_its_stream_at_random_counters():
    starts = {_keyed_udp().stream_counters for _ in range(8)}
    assert len(starts) == 8  # 48 random bits each: a repeat would be a 1 in 2**40 event
    assert all(nonce == 0 for _, _, nonce in starts)
    assert (0, 0, 0) not in starts
    sequences = {s for s, _, _ in starts}
    timestamps = {t for _, t, _ in starts}
    assert len(sequences) > 1 and len(timestamps) > 1


def test_the_random_start_comes_from_the_layer_that_makes_the_packetizer(monkeypatch):
    monkeypatch.setattr(udp_module, "_random_stream_start", lambda: (65535, 2**32 - 1))
    udp = _keyed_udp()
    assert udp.stream_counters == (65535, 2**32 - 1, 0)
    datagram = udp.packetizer.packetize(b"a")
    packet = Depacketizer(XCHACHA, KEY).depacketize(datagram)
    assert (packet.sequence, packet.timestamp) == (65535, 2**32 - 1)
    # A new key on the same connection continues its stream; ``counters`` continues another's.
    udp.set_secret_key(XCHACHA, bytes(32))
    assert udp.stream_counters == (0, 959, 1)
    udp.set_secret_key(XCHACHA, KEY, counters=(10, 20, 30))
    assert udp.stream_counters == (10, 20, 30)
    # The random source covers the whole ranges.
    monkeypatch.undo()
    seen = [udp_module._random_stream_start() for _ in range(64)]
    assert all(0 <= s < 2**16 and 0 <= t < 2**32 for s, t in seen)
    assert max(t for _, t in seen) > 2**31 and min(t for _, t in seen) < 2**31


async def test_two_connections_on_the_server_start_apart_and_a_reconnect_continues():
    async with VoiceServer() as first, VoiceServer() as second:
        main, bots = make_manager(first, 50)
        _, others = make_manager(first, 51)
        conn, other = bots.create_conn(1), others.create_conn(1)
        await asyncio.gather(conn.open(2), other.open(2))
        conn.set_opus_frame_provider(opus_stream([os.urandom(20) for _ in range(400)]))
        other.set_opus_frame_provider(opus_stream([os.urandom(20) for _ in range(5)]))
        old_udp = conn.udp
        await wait_until(lambda: len(first.packets(old_udp.ssrc)) >= 10 and len(first.packets(other.udp.ssrc)) >= 5)
        a, b = first.packets(old_udp.ssrc)[0], first.packets(other.udp.ssrc)[0]
        assert (a.sequence, a.timestamp) != (b.sequence, b.timestamp)
        assert (a.sequence, a.timestamp) != (0, 0) and (b.sequence, b.timestamp) != (0, 0)
        # Moved to another voice server: a new UDP connection continues the stream's counters.
        state, server_update = second.voice_updates(1, 50, 2, session_id=main.session_id)
        bots.handle_voice_state_update(state)
        bots.handle_voice_server_update(server_update)
        await wait_until(lambda: conn.udp is not None and conn.udp is not old_udp
                         and len(second.packets(conn.udp.ssrc)) >= 5)
        old_last, new_first = first.packets(old_udp.ssrc)[-1], second.packets(conn.udp.ssrc)[0]
        assert 0 < wrapped(old_last.sequence, new_first.sequence, 16) < 200
        # The timestamp counted the time the move took (48 per ms on the send schedule).
        ts_ms = wrapped(old_last.timestamp, new_first.timestamp, 32) / 48
        arrival_ms = (new_first.arrival - old_last.arrival) * 1000
        assert abs(ts_ms - arrival_ms) <= 80, (ts_ms, arrival_ms)
        assert new_first.marker  # a new session's first packet starts a talkspurt
        await bots.close()
        await others.close()


# -- timestamps across pauses, deterministically on a hand-driven clock ---------------------


class Script:
    """A provider playing a list: bytes are frames, ``None`` is 'nothing now'; then EOF."""

    def __init__(self, items):
        self.items = list(items)

    def provide_opus_frame(self):
        if not self.items:
            raise EOFError
        return self.items.pop(0)

    def close(self):
        pass


class Sink(asyncio.DatagramProtocol):
    """The server's UDP side reduced to IP discovery and decrypting what arrives."""

    def __init__(self):
        self.packets = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) == 74:
            ssrc = struct.unpack_from(">I", data, 4)[0]
            self.transport.sendto(build_ip_discovery_response(ssrc, addr[0], addr[1]), addr)
        elif len(data) > 12:
            self.packets.append(Depacketizer(XCHACHA, KEY).depacketize(data))


class Link:
    def __init__(self, udp, sink):
        self.udp = udp
        self.sink = sink

    async def set_speaking(self, flags):
        pass


@pytest.fixture
async def link():
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    udp = UDPConn(keepalive_interval=None)
    await udp.open("127.0.0.1", transport.get_extra_info("sockname")[1], SSRC)
    udp.set_secret_key(XCHACHA, KEY)
    yield Link(udp, sink)
    udp.close()
    transport.close()


class Driver:
    """Runs a hand-driven clock and notes, for each datagram sent, the schedule tick that
    prepared it (a tick sends what the tick run before it prepared)."""

    def __init__(self, clock, sender):
        self.clock, self.sender = clock, sender
        self.schedule = 0  # ticks on the schedule: run or skipped
        self.last_run = 0
        self.prepared_at = []

    async def ticks(self, n):
        for _ in range(n):
            before = self.sender.stats.sent
            self.clock.run_tick()
            self.schedule += 1
            self.prepared_at += [self.last_run] * (self.sender.stats.sent - before)
            self.last_run = self.schedule
            for _ in range(3):
                await asyncio.sleep(0)  # the Speaking tasks of this tick

    def skip(self, n):
        self.clock.skip(n)
        self.schedule += n


def assert_timestamps_follow_the_schedule(packets, prepared_at):
    assert len(packets) == len(prepared_at)
    for (a, ta), (b, tb) in zip(zip(packets, prepared_at), zip(packets[1:], prepared_at[1:])):
        assert wrapped(a.timestamp, b.timestamp, 32) == 960 * (tb - ta), (a, b, ta, tb)
        assert wrapped(a.sequence, b.sequence, 16) == 1


async def test_a_pause_moves_the_timestamp_on_and_marks_the_next_talkspurt(link):
    clock = SendClock(asyncio.get_running_loop(), autostart=False)
    script = Script([b"a1", b"a2", b"a3"] + [None] * 20 + [b"b1", b"b2"])
    sender = AudioSender(script, link, clock=clock)
    quiet_from = []
    link.udp.restart_keepalive = lambda: quiet_from.append(clock.position)
    sender.open()
    drive = Driver(clock, sender)
    await drive.ticks(45)
    assert not sender.live
    await wait_until(lambda: len(link.sink.packets) == len(drive.prepared_at))
    packets = link.sink.packets
    assert [p.opus for p in packets] == [b"a1", b"a2", b"a3"] + [SILENCE] * 5 + [b"b1", b"b2"] + [SILENCE] * 5
    assert_timestamps_follow_the_schedule(packets, drive.prepared_at)
    pause = drive.prepared_at[8] - drive.prepared_at[7]
    assert pause > 20  # the 20 empty ticks and the Speaking changes around them
    assert wrapped(packets[7].timestamp, packets[8].timestamp, 32) == 960 * pause
    # The marker is on each talkspurt's first packet, and only there.
    assert [i for i, p in enumerate(packets) if p.marker] == [0, 8]
    # Keepalives count their interval from the tick that sent each talkspurt's last packet.
    assert quiet_from == [drive.prepared_at[7] + 1, drive.prepared_at[-1] + 1]
    sender.close()


async def test_a_stall_the_clock_skipped_moves_the_timestamp_on_without_a_marker(link):
    clock = SendClock(asyncio.get_running_loop(), autostart=False)
    sender = AudioSender(Script([bytes([i]) * 10 for i in range(10)]), link, clock=clock)
    sender.open()
    drive = Driver(clock, sender)
    await drive.ticks(5)
    drive.skip(7)  # the event loop was blocked for 7 frames
    assert sender.stats.deficit == 7
    await drive.ticks(20)
    await wait_until(lambda: len(link.sink.packets) == len(drive.prepared_at))
    packets = link.sink.packets
    assert_timestamps_follow_the_schedule(packets, drive.prepared_at)
    jumps = [wrapped(a.timestamp, b.timestamp, 32) for a, b in zip(packets, packets[1:])]
    assert jumps.count(960 * 8) == 1 and set(jumps) == {960, 960 * 8}
    assert [i for i, p in enumerate(packets) if p.marker] == [0]  # a stall is not a new talkspurt
    sender.close()


async def test_an_idle_sender_comes_back_with_the_time_it_was_away(link):
    clock = SendClock(asyncio.get_running_loop(), autostart=False)
    sender = AudioSender(Script([b"a"]), link, clock=clock)
    sender.open()
    drive = Driver(clock, sender)
    await drive.ticks(12)
    assert not sender.live  # ended: off the clock
    await drive.ticks(30)  # the clock runs for others meanwhile
    sender.set_provider(Script([b"b"]))
    await drive.ticks(12)
    await wait_until(lambda: len(link.sink.packets) == len(drive.prepared_at) == 12)
    packets = link.sink.packets
    assert_timestamps_follow_the_schedule(packets, drive.prepared_at)
    assert [i for i, p in enumerate(packets) if p.marker] == [0, 6]
    sender.close()


# -- the same, as the local server records it on the wall clock -------------------------------


class Paused:
    """Frames, then ``None`` for ``pause`` ticks, then frames: a provider that pauses."""

    def __init__(self, before, pause, after):
        self.items = [os.urandom(30) for _ in range(before)] + [None] * pause + [os.urandom(30) for _ in range(after)]

    def provide_opus_frame(self):
        if not self.items:
            raise EOFError
        return self.items.pop(0)

    def close(self):
        pass


def assert_gap_matches_the_wall_clock(before, after):
    ts_ms = wrapped(before.timestamp, after.timestamp, 32) / 48
    arrival_ms = (after.arrival - before.arrival) * 1000
    # The bound allows the send clock's catch-up of late ticks (up to 3 frames) and jitter;
    # without the timestamp moving on, ts_ms would be 20 against a gap of hundreds of ms.
    assert abs(ts_ms - arrival_ms) <= 80, (ts_ms, arrival_ms)
    return ts_ms


async def test_server_recording_paused_provider():
    async with VoiceServer(kernel_stamps=True) as server:
        _, bots = make_manager(server, 60)
        conn = bots.create_conn(1)
        await conn.open(2)
        conn.set_opus_frame_provider(Paused(10, 30, 10))
        ssrc = conn.udp.ssrc
        await server.wait_for(lambda: len(server.packets(ssrc)) == 30, timeout=5)
        packets = server.packets(ssrc)
        assert [i for i, p in enumerate(packets) if p.marker] == [0, 15]
        ts_ms = assert_gap_matches_the_wall_clock(packets[14], packets[15])
        assert ts_ms >= 400  # 30 empty ticks at least, plus the Speaking changes
        for a, b in zip(packets[:14], packets[1:15]):
            assert wrapped(a.timestamp, b.timestamp, 32) % 960 == 0
        await bots.close()


async def test_server_recording_provider_removed_and_given_back():
    # With no sender live the clock's task stops; its schedule still counts the idle time.
    async with VoiceServer(kernel_stamps=True) as server:
        _, bots = make_manager(server, 61)
        conn = bots.create_conn(1)
        await conn.open(2)
        conn.set_opus_frame_provider(opus_stream([os.urandom(30) for _ in range(5)]))
        ssrc = conn.udp.ssrc
        await server.wait_for(lambda: len(server.packets(ssrc)) == 10, timeout=5)
        clock = SendClock.for_loop()
        await wait_until(lambda: not clock.running)
        await asyncio.sleep(0.5)
        conn.set_opus_frame_provider(opus_stream([os.urandom(30) for _ in range(5)]))
        await server.wait_for(lambda: len(server.packets(ssrc)) == 20, timeout=5)
        packets = server.packets(ssrc)
        assert [i for i, p in enumerate(packets) if p.marker] == [0, 10]
        assert assert_gap_matches_the_wall_clock(packets[9], packets[10]) >= 450
        await bots.close()
