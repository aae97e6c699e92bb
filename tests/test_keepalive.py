"""UDP keepalives (PROTOCOL.md 4.3): the datagram, the shared scheduler, the client's sending
and receiving, and the local server's recording and lapse reports."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from fastvoice.ipdiscovery import build_ip_discovery_response
from fastvoice.keepalive import KEEPALIVE_INTERVAL, KeepaliveScheduler, build_keepalive, is_keepalive
from fastvoice.testing import VoiceServer
from fastvoice.udp import UDPConn, UDPConnConfig

from _calls import Collect, make_manager, opus_stream, wait_until

XCHACHA = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(32))
INTERVAL = 0.1


# -- the datagram ---------------------------------------------------------------------------


def test_keepalive_layout():
    # PROTOCOL.md 4.3: a u32 little-endian counter followed by four zero bytes.
    assert build_keepalive(0) == bytes(8)
    assert build_keepalive(1) == b"\x01\x00\x00\x00\x00\x00\x00\x00"
    assert build_keepalive(0x01020304) == b"\x04\x03\x02\x01" + bytes(4)
    assert build_keepalive(2**32 - 1) == b"\xff\xff\xff\xff" + bytes(4)
    assert KEEPALIVE_INTERVAL == 5.0
    for bad in (-1, 2**32, 1.0, True, "1"):
        with pytest.raises(ValueError, match="counter must be an int"):
            build_keepalive(bad)


def test_keepalive_shape():
    assert is_keepalive(build_keepalive(7))
    assert not is_keepalive(b"\x07\x00\x00\x00\x00\x00\x00\x01")  # the tail must be zero
    assert not is_keepalive(bytes(7)) and not is_keepalive(bytes(9))


# -- the scheduler ----------------------------------------------------------------------------


class Member:
    """Records its visits and asks for the next one ``every`` seconds later (None: leave)."""

    def __init__(self, every=1.0):
        self.every = every
        self.visits = []

    def _keepalive_visit(self, now):
        self.visits.append(now)
        return None if self.every is None else now + self.every


async def test_scheduler_visits_members_when_due():
    scheduler = KeepaliveScheduler(asyncio.get_running_loop(), slack=0, autostart=False)  # no grid
    t0 = scheduler.time()
    a, b, gone = Member(1.0), Member(2.0), Member(None)
    scheduler.schedule(a, 1.0)
    scheduler.schedule(b, 1.5)
    scheduler.schedule(gone, 0.5)
    # (Visits are due `delay` after schedule() read the loop's clock, a hair after t0.)
    assert scheduler.run_due(t0) == 0 and scheduler.members == 3
    assert scheduler.run_due(t0 + 1.05) == 2  # `gone` leaves after its visit
    assert gone.visits and scheduler.members == 2
    assert scheduler.run_due(t0 + 1.6) == 1 and len(b.visits) == 1
    assert scheduler.run_due(t0 + 2.1) == 1 and len(a.visits) == 2
    scheduler.cancel(a)
    scheduler.cancel(a)  # idempotent
    assert scheduler.run_due(t0 + 10) == 1 and len(a.visits) == 2 and len(b.visits) == 2
    # Rescheduling replaces the earlier visit rather than adding one.
    scheduler.schedule(b, 100)
    assert scheduler.run_due(t0 + 50) == 0


async def test_scheduler_heap_stays_bounded_under_churn():
    scheduler = KeepaliveScheduler(asyncio.get_running_loop(), autostart=False)
    members = [Member() for _ in range(10)]
    for _ in range(1000):
        for m in members:
            scheduler.schedule(m, 5.0)
        scheduler.cancel(members[0])
    assert len(scheduler._heap) <= 2 * len(members) + 64 + 1
    for _ in range(1000):
        for m in members:
            scheduler.schedule(m, 5.0 + len(scheduler._heap) / 1000)  # a new time each round
    assert len(scheduler._heap) <= 2 * len(members) + 64 + 1


async def test_a_failing_member_is_dropped_not_fatal(caplog):
    class Broken:
        def _keepalive_visit(self, now):
            raise RuntimeError("bug")

    scheduler = KeepaliveScheduler(asyncio.get_running_loop(), autostart=False)
    ok = Member(1.0)
    scheduler.schedule(Broken(), 0)
    scheduler.schedule(ok, 0)
    assert scheduler.run_due(scheduler.time() + 0.1) == 2
    assert scheduler.members == 1 and ok.visits
    assert "keepalive visit failed" in caplog.text


async def test_visits_are_rounded_up_to_a_coarse_grid():
    scheduler = KeepaliveScheduler(asyncio.get_running_loop(), slack=0.25, autostart=False)
    members = [Member() for _ in range(100)]
    asked = []
    for i, m in enumerate(members):
        now = scheduler.time()
        scheduler.schedule(m, 5.0 + 0.25 * i / 100)
        asked.append(now + 5.0 + 0.25 * i / 100)
    due = [scheduler._due[m] for m in members]
    assert all(0 <= d - a < 0.25 for d, a in zip(due, asked))  # never early, at most a step late
    assert len(set(due)) <= 2  # a quarter second of visits: one or two wake-ups
    # A short delay gets a finer grid (an eighth of it), so it is not stretched much.
    scheduler.schedule(members[0], 0.08)
    assert scheduler._due[members[0]] - scheduler.time() < 0.08 + 0.01 + 0.001


async def test_one_timer_wakes_for_many_members():
    # 300 members due within 0.1 s share a handful of wake-ups (one per grid step).
    loop = asyncio.get_running_loop()
    scheduler = KeepaliveScheduler(loop, slack=0.05)
    members = [Member(None) for _ in range(300)]
    for i, m in enumerate(members):
        scheduler.schedule(m, 0.4 + 0.1 * i / 300)
    await wait_until(lambda: all(m.visits for m in members), timeout=3)
    assert scheduler.visits == 300
    assert scheduler.wakeups <= 4, scheduler.wakeups
    assert scheduler._timer is None  # nothing left: no timer armed
    scheduler.close()


def test_scheduler_rejects_a_bad_slack():
    loop = asyncio.new_event_loop()
    try:
        for bad in (-1, 61, True, "0.1"):
            with pytest.raises(ValueError, match="slack"):
                KeepaliveScheduler(loop, slack=bad)
    finally:
        loop.close()


def test_udp_config_rejects_a_bad_interval():
    for bad in (0, -1, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="keepalive_interval"):
            UDPConnConfig(keepalive_interval=bad)
    assert UDPConnConfig().keepalive_interval == 5.0
    assert UDPConnConfig(keepalive_interval=None).keepalive_interval is None


# -- receiving: both twins' routers --------------------------------------------------------


def test_router_counts_keepalives_apart_from_garbage(rtp):
    got = []
    slow = []
    router = rtp.DatagramRouter(lambda data, addr: slow.append(data) or True, 4096, None)
    router.remote = ("127.0.0.1", 5000)
    router.route(rtp.Depacketizer(XCHACHA, KEY), rtp.SSRCTable(), got.append)
    server = ("127.0.0.1", 5000)
    router.datagram_received(build_keepalive(0), server)
    router.datagram_received(build_keepalive(2**32 - 1), server)
    assert (router.keepalives, router.ignored, router.decrypt_failures) == (2, 0, 0)
    router.datagram_received(b"\x01\x00\x00\x00\x00\x00\x00\x01", server)  # 8 bytes, not a keepalive
    router.datagram_received(build_keepalive(3), ("127.0.0.1", 5001))  # from elsewhere
    assert (router.keepalives, router.ignored, router.decrypt_failures) == (2, 2, 0)
    router.datagram_received(rtp.Packetizer(9, XCHACHA, KEY).packetize(b"opus"), server)
    assert [p.opus for p in got] == [b"opus"] and not slow


async def test_client_drops_keepalives_from_the_server_without_counting_them_as_garbage():
    async with VoiceServer() as server:
        _, bots = make_manager(server, 31)
        conn = bots.create_conn(1)
        await conn.open(2)
        session = server.session_for_user(31)
        udp = conn.udp
        # Slow path (no receiver set: datagrams go to the read queue) ...
        await session.inject_datagram(build_keepalive(1))
        await wait_until(lambda: udp.keepalives_received == 1)
        # ... and the routed fast path once a receiver is set.
        conn.set_opus_frame_receiver(Collect())
        assert udp._router.fast
        await session.inject_datagram(build_keepalive(2))
        await wait_until(lambda: udp.keepalives_received == 2)
        assert (udp.ignored, udp.decrypt_failures) == (0, 0)
        await bots.close()


# -- sending, as the local server records it ---------------------------------------------


def _manager(server, user_id, interval=INTERVAL):
    return make_manager(server, user_id, udp_config=UDPConnConfig(keepalive_interval=interval))


async def test_an_idle_connection_sends_a_keepalive_every_interval():
    async with VoiceServer(expect_keepalive=10 * INTERVAL) as server:
        _, bots = _manager(server, 41)
        conn = bots.create_conn(1)
        await conn.open(2)
        session = server.session_for_user(41)
        await server.wait_for(lambda: len(session.keepalives) >= 6, timeout=5)
        kept = list(session.keepalives)
        assert [k.counter for k in kept] == list(range(len(kept)))  # 0, 1, 2, ... from this socket
        assert {k.address for k in kept} == {session.udp_address}
        gaps = sorted(b.arrival - a.arrival for a, b in zip(kept, kept[1:]))
        # Never early; the shared timer may run a visit up to its slack late (plus load).
        assert gaps[0] >= INTERVAL * 0.9, gaps
        assert conn.udp.keepalives_sent >= len(kept)
        assert server.rejected_datagrams == []  # accepted silently
        assert server.keepalive_lapses == [] and server.silent_sessions() == []
        await bots.close()


async def test_no_keepalive_while_audio_flows_and_they_resume_after():
    async with VoiceServer() as server:
        _, bots = _manager(server, 42)
        conn = bots.create_conn(1)
        await conn.open(2)
        session = server.session_for_user(42)
        await server.wait_for(lambda: len(session.keepalives) >= 2)
        frames = [os.urandom(30) for _ in range(50)]  # one second, ten keepalive intervals
        conn.set_opus_frame_provider(opus_stream(frames))
        await server.wait_for(lambda: len(session.packets) == 55, timeout=5)  # + the silence tail
        first, last = session.packets[0].arrival, session.packets[-1].arrival
        await server.wait_for(lambda: any(k.arrival > last for k in session.keepalives), timeout=3)
        during = [k for k in session.keepalives if first <= k.arrival <= last]
        assert during == []
        after = [k.arrival for k in session.keepalives if k.arrival > last]
        # The first keepalive after the stream comes an interval after its last packet.
        assert after[0] - last >= INTERVAL * 0.9
        counters = [k.counter for k in session.keepalives]
        assert counters == list(range(len(counters)))  # one counter over the whole connection
        await bots.close()


async def test_a_listening_bot_keeps_its_binding_alive():
    # A member that only listens sends no audio at all: keepalives are all it sends.
    async with VoiceServer() as server:
        _, speakers = _manager(server, 43)
        _, listeners = _manager(server, 44)
        speaker, listener = speakers.create_conn(1), listeners.create_conn(1)
        sink = Collect()
        listener.set_opus_frame_receiver(sink)
        await asyncio.gather(speaker.open(5), listener.open(5))
        speaker.set_opus_frame_provider(opus_stream([os.urandom(20) for _ in range(40)]))
        ears = server.session_for_user(44)
        await wait_until(lambda: len(sink.frames) >= 45)
        await server.wait_for(lambda: len(ears.keepalives) >= 5, timeout=5)
        assert ears.packets == []
        assert listener.udp.ignored == 0 and listener.udp.decrypt_failures == 0
        await speakers.close()
        await listeners.close()


async def test_the_server_reports_a_session_whose_keepalives_stopped():
    async with VoiceServer(expect_keepalive=0.3) as server:
        _, quiet = _manager(server, 45, interval=None)  # sends no keepalive at all
        _, chatty = _manager(server, 46)
        silent_conn, live_conn = quiet.create_conn(1), chatty.create_conn(1)
        await asyncio.gather(silent_conn.open(7), live_conn.open(7))
        silent, live = server.session_for_user(45), server.session_for_user(46)
        await server.wait_for(lambda: silent in server.silent_sessions(), timeout=3)
        assert server.silent_sessions() == [silent]
        lapses = server.keepalive_lapses
        assert [(lapse.session, lapse.silent_until) for lapse in lapses] == [(silent, None)]
        assert silent.keepalives == [] and live.keepalives
        server.expect_keepalive = None
        assert server.keepalive_lapses == []  # no expectation, nothing reported
        assert server.silent_sessions(0.3) == [silent]
        with pytest.raises(ValueError, match="needs seconds"):
            server.silent_sessions()
        with pytest.raises(ValueError, match="expect_keepalive"):
            server.expect_keepalive = 0
        await quiet.close()
        await chatty.close()


async def test_a_gap_in_keepalives_becomes_a_lapse_with_its_length():
    async with VoiceServer(expect_keepalive=0.25) as server:
        _, bots = _manager(server, 47)
        conn = bots.create_conn(1)
        await conn.open(2)
        session = server.session_for_user(47)
        await server.wait_for(lambda: len(session.keepalives) >= 2)
        scheduler = conn.udp._keepalive
        scheduler.cancel(conn.udp)  # keepalives stop for a while
        await asyncio.sleep(0.4)
        assert server.silent_sessions() == [session]
        scheduler.schedule(conn.udp, 0)  # and start again
        await server.wait_for(lambda: server.silent_sessions() == [], timeout=3)
        lapses = server.keepalive_lapses
        assert len(lapses) == 1 and lapses[0].session is session
        assert lapses[0].seconds >= 0.35
        await bots.close()


async def test_a_keepalive_from_an_unknown_address_is_rejected():
    async with VoiceServer() as server:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", server.udp_port)
        )
        try:
            transport.sendto(build_keepalive(0))
            await server.wait_for(lambda: server.rejected_datagrams)
            assert "keepalive from an address no session uses" in server.rejected_datagrams[0].reason
        finally:
            transport.close()


async def test_keepalives_stop_with_the_connection():
    async with VoiceServer() as server:
        _, bots = _manager(server, 48)
        conn = bots.create_conn(1)
        await conn.open(2)
        udp = conn.udp
        scheduler = KeepaliveScheduler.for_loop()
        assert udp._keepalive is scheduler and udp in scheduler._due
        await bots.close()
        assert udp not in scheduler._due  # closing leaves nothing on the shared timer
        assert udp._keepalive_visit(scheduler.time()) is None


async def test_keepalives_wait_for_an_interval_without_audio():
    # Deterministic: the shared scheduler driven by hand, audio written straight to the socket.
    loop = asyncio.get_running_loop()
    scheduler = KeepaliveScheduler(loop, slack=0, autostart=False)
    KeepaliveScheduler._schedulers[loop] = scheduler
    transport, sink = await loop.create_datagram_endpoint(DiscoverySink, local_addr=("127.0.0.1", 0))
    udp = UDPConn(keepalive_interval=1.0)
    try:
        await udp.open("127.0.0.1", transport.get_extra_info("sockname")[1], 99)
        udp.set_secret_key(XCHACHA, KEY)
        t = scheduler.time()
        udp.write(b"audio")
        assert scheduler.run_due(t + 1.01) == 1 and udp.keepalives_sent == 0  # audio went out: none
        assert scheduler.run_due(t + 2.02) == 1 and udp.keepalives_sent == 1  # a silent interval: one
        udp.write(b"more audio")
        udp.restart_keepalive()  # the stream ended now (the sender calls it after its silence tail)
        t = scheduler.time()
        assert scheduler.run_due(t + 0.9) == 0  # not before an interval from the end of audio
        assert scheduler.run_due(t + 1.01) == 1 and udp.keepalives_sent == 2
        await wait_until(lambda: len(sink.received) == 4)
        assert [d for d in sink.received if len(d) == 8] == [build_keepalive(0), build_keepalive(1)]
    finally:
        udp.close()
        transport.close()
        del KeepaliveScheduler._schedulers[loop]


class DiscoverySink(asyncio.DatagramProtocol):
    """Answers IP discovery and keeps every other datagram."""

    def __init__(self):
        self.received = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) == 74:
            ssrc = struct.unpack_from(">I", data, 4)[0]
            self.transport.sendto(build_ip_discovery_response(ssrc, "127.0.0.1", addr[1]), addr)
        else:
            self.received.append(data)


async def test_a_bare_udp_conn_sends_keepalives_before_and_after_its_key():
    # The keepalive depends neither on a Conn nor on Session Description.
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(DiscoverySink, local_addr=("127.0.0.1", 0))
    sent = sink.received
    udp = UDPConn(keepalive_interval=INTERVAL)
    try:
        await udp.open("127.0.0.1", transport.get_extra_info("sockname")[1], 99)
        await wait_until(lambda: len(sent) >= 2, timeout=3)
        udp.set_secret_key(XCHACHA, KEY)
        await wait_until(lambda: len(sent) >= 4, timeout=3)
        assert sent[:4] == [build_keepalive(i) for i in range(4)]
        assert udp.keepalives_sent >= 4
    finally:
        udp.close()
        transport.close()
