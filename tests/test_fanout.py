"""FanOut: one source, read once per tick, the same frames in every subscription."""

from __future__ import annotations

import asyncio
import io
import os
import random
import struct
import time

import pytest

from _calls import Collect
from fastvoice import FanOut, OpusFrameProvider
from fastvoice.audio import AudioSender, SendClock
from fastvoice.conn import ConnConfig
from fastvoice.rtp import SendTarget
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.opus import OpusReader
from fastvoice.testing import MainGatewayStandIn, VoiceServer

SILENCE = b"\xf8\xff\xfe"
FRAMES = [os.urandom(20) + i.to_bytes(2, "big") for i in range(40)]


class Source:
    """Plays ``items`` (bytes: a frame, None: nothing now, an exception: raised), then EOF;
    records every read and, if given a clock, the tick of each read."""

    def __init__(self, items, clock=None):
        self.items = list(items)
        self.clock = clock
        self.reads = 0
        self.read_ticks = []
        self.closed = False

    def provide_opus_frame(self):
        self.reads += 1
        if self.clock is not None:
            self.read_ticks.append(self.clock.ticks)
        if not self.items:
            raise EOFError
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self.closed = True


def ask(subscription):
    """One provider call as the sender makes it: a frame, None, 'EOF' or the exception."""
    try:
        return subscription.provide_opus_frame()
    except EOFError:
        return "EOF"
    except Exception as exc:  # noqa: BLE001 - recorded for the assertion
        return exc


def test_every_subscription_gets_the_same_frames_in_any_call_order():
    source = Source(FRAMES)
    fanout = FanOut(source)
    subscriptions = [fanout.subscribe() for _ in range(50)]
    assert all(isinstance(s, OpusFrameProvider) for s in subscriptions)
    got = {s: [] for s in subscriptions}
    rng = random.Random(7)
    for tick in range(len(FRAMES) + 1):
        order = subscriptions[:]
        rng.shuffle(order)
        for s in order:
            got[s].append(ask(s))
        assert source.reads == tick + 1  # one read per tick, whoever asks first
    for s in subscriptions:
        assert got[s] == FRAMES + ["EOF"]
    assert fanout.source_reads == source.reads == len(FRAMES) + 1


def test_none_and_errors_of_the_source_are_one_read_per_tick():
    boom = RuntimeError("decoder hiccup")
    source = Source([b"a", None, boom, b"b"])
    fanout = FanOut(source)
    first, second, third = (fanout.subscribe() for _ in range(3))
    ticks = [[ask(s) for s in (first, second, third)] for _ in range(5)]
    assert ticks[0] == [b"a"] * 3
    assert ticks[1] == [None] * 3
    assert ticks[2] == [boom, None, None]  # the one that asked sees (and its sender logs) the error
    assert ticks[3] == [b"b"] * 3
    assert ticks[4] == ["EOF"] * 3
    assert source.reads == 5


def test_late_subscription_starts_at_the_current_frame():
    source = Source(FRAMES)
    fanout = FanOut(source)
    early = fanout.subscribe()
    for _ in range(5):
        ask(early)  # frames 0..4
    after = fanout.subscribe()  # joins between ticks: asked after the others
    before = fanout.subscribe()  # joins between ticks: asked before the others
    tick = [ask(before), ask(early), ask(after)]
    assert tick == [FRAMES[4], FRAMES[5], FRAMES[5]]  # `before` starts at the frame of the last tick
    rest = [[ask(before), ask(early), ask(after)] for _ in range(3)]
    assert [r[1] for r in rest] == FRAMES[6:9] == [r[2] for r in rest]
    assert [r[0] for r in rest] == FRAMES[5:8]  # in order, nothing repeated or skipped
    assert source.reads == 9


def test_a_subscription_that_skips_ticks_resumes_at_the_current_frame():
    source = Source(FRAMES)
    fanout = FanOut(source)
    steady, idle = fanout.subscribe(), fanout.subscribe()
    assert [ask(steady), ask(idle)] == [FRAMES[0]] * 2
    for _ in range(10):
        ask(steady)  # idle is not asked (its sender was in a silence tail)
    assert ask(idle) == FRAMES[10] and ask(steady) == FRAMES[11]
    assert source.reads == 12


def test_closing_a_subscription_leaves_the_others_and_the_source():
    source = Source(FRAMES)
    fanout = FanOut(source)
    a, b = fanout.subscribe(), fanout.subscribe()
    assert [ask(a), ask(b)] == [FRAMES[0]] * 2
    a.close()
    assert ask(a) == "EOF" and fanout.subscriptions == 1 and not source.closed
    assert [ask(b) for _ in range(3)] == FRAMES[1:4]
    assert source.reads == 4


def test_end_of_source_reaches_every_subscription_after_its_last_frame():
    source = Source(FRAMES[:3])
    fanout = FanOut(source)
    a, b = fanout.subscribe(), fanout.subscribe()
    assert [ask(a), ask(b)] == [FRAMES[0]] * 2
    assert [ask(a), ask(a)] == FRAMES[1:3]  # b was not asked for two ticks
    assert ask(a) == "EOF" and fanout.ended
    assert ask(b) == FRAMES[2]  # the last frame it has not played yet
    assert ask(b) == "EOF" and ask(b) == "EOF"
    assert ask(fanout.subscribe()) == "EOF"  # subscribing after the end: nothing to play
    assert source.reads == 4  # EOF was read once


def test_closing_the_fanout_closes_the_source_and_ends_everyone():
    source = Source(FRAMES)
    fanout = FanOut(source)
    subscriptions = [fanout.subscribe() for _ in range(3)]
    assert [ask(s) for s in subscriptions] == [FRAMES[0]] * 3
    fanout.close()
    assert source.closed and fanout.ended
    assert [ask(s) for s in subscriptions] == ["EOF"] * 3
    with pytest.raises(RuntimeError, match="closed"):
        fanout.subscribe()
    with pytest.raises(TypeError):
        FanOut(object())


class FakeUDP:
    """Stands in for UDPConn: 'packs' a frame as itself and records what is sent."""

    def __init__(self):
        self.packetizer = self
        self.sent = []
        self.send_target = SendTarget()  # no socket (fd -1): the clock sends through send_datagram

    def packetize(self, frame, *, marker=False):
        return frame

    def send_datagram(self, datagram):
        self.sent.append(datagram)

    def restart_keepalive(self):
        pass


class FakeConn:
    def __init__(self):
        self.udp = FakeUDP()

    async def set_speaking(self, flags):
        pass


async def run_ticks(clock, n):
    for _ in range(n):
        clock.run_tick()
        for _ in range(3):
            await asyncio.sleep(0)  # let the Speaking tasks of this tick finish


async def test_many_senders_on_the_send_clock_read_the_source_once_per_frame():
    clock = SendClock(asyncio.get_running_loop(), autostart=False)
    source = Source(FRAMES, clock)
    fanout = FanOut(source)
    conns = [FakeConn() for _ in range(200)]
    senders = [AudioSender(fanout.subscribe(), conn, clock=clock) for conn in conns]
    for sender in senders[:150]:
        sender.open()
    await run_ticks(clock, 10)
    for sender in senders[150:]:  # 50 calls join while the stream plays
        sender.open()
    await run_ticks(clock, len(FRAMES) + 20)
    assert clock.live_senders == 0  # everyone reached the end and went idle
    assert source.reads == len(FRAMES) + 1  # every frame read once, then the EOF
    assert len(source.read_ticks) == len(set(source.read_ticks))  # never twice in a tick
    for conn in conns[:150]:
        assert conn.udp.sent == FRAMES + [SILENCE] * 5
    late = conns[150].udp.sent
    start = FRAMES.index(late[0])
    assert 8 <= start <= 11  # from the frame current when it joined
    # Its sender plays that first frame in the tick after announcing Speaking, without asking
    # for one; the others moved on meanwhile, so it goes on with them from the current frame.
    assert late == [FRAMES[start]] + FRAMES[start + 2 :] + [SILENCE] * 5
    assert all(conn.udp.sent == late for conn in conns[150:])
    for sender in senders:
        sender.close()
    assert fanout.subscriptions == 0 and not source.closed


def make_manager(server, user_id):
    main = MainGatewayStandIn(server, user_id)
    config = ConnConfig(open_timeout=5, gateway_config=GatewayConfig(backoff_base=0.05))
    manager = Manager(main.update_voice_state, user_id, conn_config=config)
    main.attach(manager)
    return manager


async def test_one_stream_into_several_real_calls():
    frames = FRAMES[:30]
    reader = OpusReader(io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames)))

    class Counting:
        reads = 0

        def provide_opus_frame(self):
            Counting.reads += 1
            return reader.provide_opus_frame()

        def close(self):
            reader.close()

    async with VoiceServer() as server:
        bots, listeners = make_manager(server, 3001), make_manager(server, 3002)
        guilds = [41, 42, 43]
        speakers = [bots.create_conn(g) for g in guilds]
        hearers = [listeners.create_conn(g) for g in guilds]
        sinks = [Collect() for _ in guilds]
        for hearer, sink in zip(hearers, sinks):
            hearer.set_opus_frame_receiver(sink)
        await asyncio.gather(*(c.open(g * 10) for c, g in zip(speakers + hearers, guilds + guilds)))
        fanout = FanOut(Counting())
        for speaker in speakers:
            speaker.set_opus_frame_provider(fanout.subscribe())
        deadline = time.monotonic() + 10
        while not all(len(s.opus) >= len(frames) + 5 for s in sinks):
            assert time.monotonic() < deadline, [len(s.opus) for s in sinks]
            await asyncio.sleep(0.02)
        for sink in sinks:
            assert sink.opus == frames + [SILENCE] * 5
        assert Counting.reads == len(frames) + 1
        fanout.close()
        await bots.close()
        await listeners.close()
