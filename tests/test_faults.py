"""The fault matrix: faults injected into streaming calls, each with its outcome asserted.

Every test streams a call through Manager -> Conn against the local VoiceServer: a speaker
whose Opus frames carry a counter (so each frame is identifiable end to end) and a listener
connection, or the server's own recording, on the receiving side.  Faults come from the
server's knobs; what the client must do comes from PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import statistics
import struct
import time
from dataclasses import dataclass, field

import pytest

import fastvoice.gateway_protocol
from fastvoice.audio import SendClock
from fastvoice.close_codes import GATEWAY_CLOSE_EVENT_CODE_SESSION_NO_LONGER_VALID, gateway_close_event_code_by_code
from fastvoice.gateway import GatewayConfig, Status
from fastvoice.gateway_messages import GatewayMessageDataClientsConnect, Opcode
from fastvoice.opus import ThreadedOpusFrameReceiver
from fastvoice.rtp import Packetizer
from fastvoice.testing import VoiceServer

from _calls import SILENCE, consecutive, continues, make_manager, wait_until

GUILD = 4242
CHANNEL = 4343
SPEAKER = 1001
LISTENER = 1002
STRANGER = 1003

MAGIC = b"FVCT"


def counter_frame(n: int, tag: bytes = b"A") -> bytes:
    """A 40-byte stand-in Opus frame carrying ``tag`` and the counter ``n``."""
    return MAGIC + tag + struct.pack(">I", n) + bytes(31)


def read_counter(opus: bytes) -> tuple[bytes, int] | None:
    if len(opus) == 40 and opus.startswith(MAGIC):
        return opus[4:5], struct.unpack_from(">I", opus, 5)[0]
    return None


class CounterProvider:
    """Frames 0, 1, 2... (``limit`` of them, or endless) carrying their counter; remembers when each was taken."""

    def __init__(self, limit: int | None = None, tag: bytes = b"A") -> None:
        self.limit = limit
        self.tag = tag
        self.provided: list[tuple[int, float]] = []

    def provide_opus_frame(self) -> bytes:
        n = len(self.provided)
        if self.limit is not None and n >= self.limit:
            raise EOFError
        self.provided.append((n, time.monotonic()))
        return counter_frame(n, self.tag)

    def taken_between(self, start: float, end: float) -> set[int]:
        return {n for n, t in self.provided if start <= t <= end}

    def close(self) -> None:
        pass


@dataclass
class Received:
    user_id: int
    ssrc: int
    sequence: int
    tag: bytes
    counter: int
    time: float


class CounterSink:
    """An OpusFrameReceiver recording every counter frame; ``on_frame`` runs as user code inside the callback."""

    def __init__(self, on_frame=None) -> None:
        self.frames: list[Received] = []
        self.silence = 0
        self.other = 0
        self.on_frame = on_frame

    def receive_opus_frame(self, user_id, packet) -> None:
        if packet.opus == SILENCE:
            self.silence += 1
            return
        decoded = read_counter(packet.opus)
        if decoded is None:
            self.other += 1
            return
        tag, n = decoded
        self.frames.append(Received(user_id, packet.ssrc, packet.sequence, tag, n, time.monotonic()))
        if self.on_frame is not None:
            self.on_frame(n)

    def counters(self, tag: bytes = b"A") -> list[int]:
        return [f.counter for f in self.frames if f.tag == tag]

    def cleanup_user(self, user_id) -> None:
        pass

    def close(self) -> None:
        pass


def gateway_config(backoff: float = 0.02) -> GatewayConfig:
    return GatewayConfig(backoff_base=backoff, backoff_max=backoff, open_timeout=5.0, connect_timeout=5.0)


@dataclass
class Call:
    """A speaker and (optionally) a listener in one channel of one server."""

    server: VoiceServer
    speaker_main: object
    speaker_bots: object
    speaker: object
    listener_main: object = None
    listener_bots: object = None
    listener: object = None
    sink: CounterSink | None = None
    events: list = field(default_factory=list)

    def move_to(self, server: VoiceServer) -> None:
        """Discord moves the call to ``server``: both bots get a new token and its endpoint."""
        for main, bots, user in ((self.speaker_main, self.speaker_bots, SPEAKER),
                                 (self.listener_main, self.listener_bots, LISTENER)):
            state, server_update = server.voice_updates(GUILD, user, CHANNEL, session_id=main.session_id)
            bots.handle_voice_state_update(state)
            bots.handle_voice_server_update(server_update)

    async def close(self) -> None:
        for bots in (self.speaker_bots, self.listener_bots):
            if bots is not None:
                await bots.close()


async def open_call(server, *, listener=True, sink=None, backoff=0.02, guild=GUILD, channel=CHANNEL,
                    speaker_id=SPEAKER, listener_id=LISTENER, self_deaf=False) -> Call:
    events: list = []
    speaker_main, speaker_bots = make_manager(
        server, speaker_id, gateway_config=gateway_config(backoff),
        event_handler_func=lambda op, data: events.append((op, data)),
    )
    call = Call(server, speaker_main, speaker_bots, speaker_bots.create_conn(guild), events=events)
    opens = [call.speaker.open(channel, self_deaf=self_deaf)]
    if listener:
        call.listener_main, call.listener_bots = make_manager(server, listener_id, gateway_config=gateway_config(backoff))
        call.listener = call.listener_bots.create_conn(guild)
        call.sink = sink if sink is not None else CounterSink()
        call.listener.set_opus_frame_receiver(call.sink)
        opens.append(call.listener.open(channel))
    try:
        await asyncio.gather(*opens)
    except BaseException:
        await call.close()
        raise
    return call


def intervals_ms(packets) -> list[float]:
    return [(b.arrival - a.arrival) * 1000 for a, b in itertools.pairwise(packets)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: The send clock prepares each datagram one tick before sending it: a frame taken just before a
#: reconnect belongs to the old session and goes with it.
PREPARED_AHEAD = 0.025


def assert_stream_integrity(received: list[int], provider: CounterProvider, outage: tuple[float, float]) -> None:
    """No frame twice, order kept, and every missing frame was taken from the provider during ``outage``."""
    assert len(received) == len(set(received)), f"duplicates delivered: {sorted(received)}"
    assert received == sorted(received), f"frames delivered out of order: {received}"
    missing = set(range(received[0], received[-1] + 1)) - set(received)
    during = provider.taken_between(*outage)
    assert missing <= during, (
        f"frames {sorted(missing - during)} were lost outside the outage "
        f"(outage lasted {(outage[1] - outage[0]) * 1000:.0f} ms)"
    )


def assert_stream_moved(call: Call, provider: CounterProvider, outage: tuple[float, float],
                        old_packets: list, new_packets: list) -> None:
    """The 150-frame stream went on from the new server: nothing twice, only frames of ``outage``
    (from the move to the first frame via the new server) missing, and the sequence continued."""
    received = call.sink.counters()
    assert_stream_integrity(received, provider, (outage[0] - PREPARED_AHEAD, outage[1]))
    assert received[-1] == 149
    new_ssrc = new_packets[0].ssrc
    after = [f for f in call.sink.frames if f.tag == b"A" and f.time > outage[1]]
    assert len(after) >= 50 and {f.ssrc for f in after} == {new_ssrc}
    assert continues(old_packets[-1].sequence, new_packets[0].sequence)


@pytest.fixture(autouse=True)
async def loop_errors():
    """Every unhandled task exception or callback error of the test's loop fails the test."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
        gc.collect()  # a task that died with an exception nobody retrieved reports it when collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert errors == [], f"unhandled errors on the event loop: {[c.get('message') for c in errors]}"


# -- 1. and 5. a resumable outage: websocket dropped (no close frame), voice server crashed (4015) ------------


@pytest.mark.parametrize(
    "how, dave", [("drop", 0), (4015, 0), ("drop", 1)], ids=["ws-dropped", "server-crash-4015", "ws-dropped-dave"]
)
async def test_resumable_outage_resumes_with_seq_ack_and_audio_never_stops(how, dave):
    async with VoiceServer(dave_protocol_version=dave) as server:
        call = await open_call(server, backoff=0.25)  # away for 0.125-0.25 s
        try:
            if dave:
                await wait_until(lambda: call.speaker.dave.e2ee and call.listener.dave.e2ee, what="DAVE group")
            provider = CounterProvider(limit=80)
            call.speaker.set_opus_frame_provider(provider)
            await wait_until(lambda: len(call.sink.counters()) >= 15, what="audio before the outage")
            gateway, udp = call.speaker.gateway, call.speaker.udp
            session = server.session_for_ssrc(udp.ssrc)
            await wait_until(lambda: gateway.seq_ack == session.seq, what="client caught up with the server's seq")
            seq_before = gateway.seq_ack
            assert seq_before >= 2  # Ready, Session Description and the listener's arrival were seen
            first = session.connection
            if how == "drop":
                first.drop()
            else:
                await first.close(how, "voice server crashed")
            await server.wait_for(lambda: first.closed)
            # News while the client is away is buffered and re-delivered once on resume.
            news_seq = await session.send(Opcode.CLIENTS_CONNECT, GatewayMessageDataClientsConnect([STRANGER]))
            assert news_seq == seq_before + 1
            await server.wait_for(
                lambda: len(session.connections) == 2 and session.connections[1].messages_out(Opcode.RESUMED)
            )
            second = session.connections[1]
            outage = (first.closed_at, second.messages_out(Opcode.RESUMED)[0].time)

            resumes = second.messages_in(Opcode.RESUME)
            assert len(resumes) == 1 and resumes[0].data["seq_ack"] == seq_before
            assert resumes[0].data["session_id"] == session.session_id
            assert second.messages_in(Opcode.IDENTIFY) == []
            await wait_until(lambda: gateway.seq_ack == news_seq, what="buffered message re-delivered")
            assert [d.user_ids for op, d in call.events if op == Opcode.CLIENTS_CONNECT].count([STRANGER]) == 1
            assert STRANGER in call.speaker.connected_users
            # Same session, same socket, no op 4 on the main gateway.
            await wait_until(lambda: gateway.status is Status.READY, what="the client back to READY")
            assert call.speaker.gateway is gateway
            assert call.speaker.udp is udp and udp.is_open
            assert len(call.speaker_main.requests) == 1

            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, what="end of stream")
            # UDP does not depend on the websocket: nothing was lost, not even during the outage.
            assert call.sink.counters() == list(range(80))
            during = provider.taken_between(*outage)
            assert len(during) >= 3, f"only {len(during)} frames were taken during the outage"
            assert {f.ssrc for f in call.sink.frames} == {udp.ssrc}
            if dave:  # the end-to-end encryption survived the resume: no frame crossed in plaintext
                assert session.dave_plaintext_packets == 0 and call.speaker.dave.e2ee
                assert call.listener.dave.stats.frames_decrypted >= 80
        finally:
            await call.close()


# -- 2. every close code of PROTOCOL.md's table, on a streaming call -------------------------------------------

# Written from PROTOCOL.md section 2 ("Close codes"), NOT from fastvoice.close_codes, so that a wrong
# entry there shows up here.  (code, behaviour, client bug: log loudly).  ``None`` is a dropped
# socket with no close frame; 1011 stands for "other < 4000".
PROTOCOL_CLOSE_CODES = [
    (None, "resume", False),
    (1000, "resume", False),  # the seed's "Heartbeat timeout"
    (1011, "resume", False),
    (4000, "resume", False),
    (4001, "new_session", True),
    (4002, "new_session", True),
    (4003, "new_session", True),
    (4004, "stop", False),
    (4005, "new_session", True),
    (4006, "new_session", False),
    (4009, "new_session", False),
    (4011, "new_session", False),
    (4012, "stop", True),
    (4014, "stop", False),
    (4015, "resume", False),
    (4016, "stop", False),
    (4017, "stop", False),
    (4020, "new_session", True),
    (4021, "stop", False),
    (4022, "stop", False),
]


@dataclass
class CloseOutcome:
    behaviour: str
    conn: object
    main: object
    bots: object
    old_udp: object
    old_session: object
    seq_before: int
    requests_before: int
    connections_before: int
    gateway: object


async def close_mid_stream(server, code, records) -> CloseOutcome:
    """Stream, then close the speaker's websocket with ``code`` and see what the client does next.

    ``resume`` / ``new_session``: the first message of the client's next connection (op 7 / op 0);
    ``stop``: the connection reported that its gateway stopped and no new connection came.
    """
    main, bots = make_manager(server, SPEAKER, gateway_config=gateway_config())
    conn = bots.create_conn(GUILD)
    await conn.open(CHANNEL)
    conn.set_opus_frame_provider(CounterProvider())
    old_udp = conn.udp
    await wait_until(lambda: len(server.packets(old_udp.ssrc)) >= 3, what="audio before the close")
    session = server.session_for_ssrc(old_udp.ssrc)
    gateway = conn.gateway
    await wait_until(lambda: gateway.seq_ack == session.seq)
    seq_before = gateway.seq_ack
    connections_before, requests_before = len(server.connections), len(main.requests)
    if code is None:
        session.drop()
    else:
        await session.close(code, "closed by the fault matrix")

    def stopped() -> bool:
        return any(r.name == "fastvoice.conn" and "voice gateway stopped" in r.getMessage() for r in records)

    def next_step():
        for connection in server.connections[connections_before:]:
            ops = [m.op for m in connection.messages_in() if m.op != Opcode.HEARTBEAT]
            if ops:
                return {Opcode.RESUME: "resume", Opcode.IDENTIFY: "new_session"}.get(ops[0], f"op {ops[0]}")
        return "stop" if stopped() else None

    behaviour = await server.wait_for(next_step, timeout=5.0)
    return CloseOutcome(behaviour, conn, main, bots, old_udp, session, seq_before, requests_before,
                        connections_before, gateway)


@pytest.mark.parametrize(
    "code, expected, loud", PROTOCOL_CLOSE_CODES, ids=[str(c or "no-close-frame") for c, _, _ in PROTOCOL_CLOSE_CODES]
)
async def test_close_code_gives_its_documented_behaviour_on_a_streaming_call(code, expected, loud, caplog):
    caplog.set_level(logging.INFO, logger="fastvoice")
    async with VoiceServer() as server:
        out = await close_mid_stream(server, code, caplog.records)
        conn, old_ssrc = out.conn, out.old_udp.ssrc
        try:
            assert out.behaviour == expected, f"close {code}: PROTOCOL.md says {expected}, the client did {out.behaviour}"
            loud_records = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "fastvoice.gateway"]
            assert bool(loud_records) is loud, f"client-bug logging for {code}: {[r.getMessage() for r in loud_records]}"
            if expected == "resume":
                resume = server.connections[out.connections_before].messages_in(Opcode.RESUME)[0]
                assert resume.data["seq_ack"] == out.seq_before
                await wait_until(lambda: out.gateway.status is Status.READY, what="Resumed")
                assert server.connections[-1].session is out.old_session and not out.old_session.ended
                assert conn.gateway is out.gateway and conn.udp is out.old_udp and conn.udp.is_open
                assert len(out.main.requests) == out.requests_before  # no op 4: same session
                count = len(server.packets(old_ssrc))
                await wait_until(lambda: len(server.packets(old_ssrc)) >= count + 5, what="audio after resume")
                seqs = [p.sequence for p in server.packets(old_ssrc)]
                assert consecutive(seqs)  # not one packet missing or repeated
            elif expected == "new_session":
                assert len(out.main.requests) == out.requests_before + 1  # op 4 again on the main gateway
                assert out.main.requests[-1][:2] == (GUILD, CHANNEL)
                await wait_until(
                    lambda: conn.udp is not None and conn.udp is not out.old_udp and conn.udp.packetizer is not None
                    and len(server.packets(conn.udp.ssrc)) >= 5, what="audio on the new session",
                )
                new_session = server.session_for_ssrc(conn.udp.ssrc)
                assert new_session is not out.old_session and out.old_session.ended
                assert not out.old_udp.is_open
                old_last = server.packets(old_ssrc)[-1].sequence
                assert continues(old_last, server.packets(conn.udp.ssrc)[0].sequence)  # the stream continues
            else:
                await asyncio.sleep(0.3)
                assert len(server.connections) == out.connections_before, "a STOP code was retried"
                assert len(out.main.requests) == out.requests_before
                assert out.gateway.status is Status.DISCONNECTED
                reported = [r.getMessage() for r in caplog.records if "voice gateway stopped" in r.getMessage()]
                assert len(reported) == 1 and str(code) in reported[0], reported
                # Stopped means stopped: no more audio into the dead session, the socket is released.
                assert conn.udp is None and not out.old_udp.is_open
                sent = conn.sender.stats.sent
                await asyncio.sleep(0.1)
                assert conn.sender.stats.sent == sent
        finally:
            await out.bots.close()


async def test_the_close_code_matrix_catches_a_wrong_table_entry(monkeypatch, caplog):
    """With 4015 wrongly marked "new session" in the library's table, the matrix sees a re-identify."""
    caplog.set_level(logging.INFO, logger="fastvoice")

    def wrong_lookup(code):
        if code == 4015:
            return GATEWAY_CLOSE_EVENT_CODE_SESSION_NO_LONGER_VALID
        return gateway_close_event_code_by_code(code)

    monkeypatch.setattr(fastvoice.gateway_protocol, "gateway_close_event_code_by_code", wrong_lookup)
    expected = {code: behaviour for code, behaviour, _ in PROTOCOL_CLOSE_CODES}[4015]
    async with VoiceServer() as server:
        out = await close_mid_stream(server, 4015, caplog.records)
        try:
            assert out.behaviour == "new_session" != expected
        finally:
            await out.bots.close()


@pytest.mark.parametrize("code", [4014, 4022])
async def test_a_stop_code_followed_by_a_move_connects_to_the_new_channel(code, caplog):
    """4014/4022: STOP, unless a voice state/server update shows a move (here the update comes after the close)."""
    caplog.set_level(logging.INFO, logger="fastvoice")
    async with VoiceServer() as server:
        out = await close_mid_stream(server, code, caplog.records)
        conn = out.conn
        try:
            assert out.behaviour == "stop"
            assert conn.udp is None
            await out.main.update_voice_state(GUILD, CHANNEL + 1)  # Discord: the bot was moved
            await wait_until(lambda: conn.udp is not None and conn.udp.packetizer is not None
                             and len(server.packets(conn.udp.ssrc)) >= 5, what="audio in the new channel")
            assert conn.channel_id == CHANNEL + 1
            assert server.session_for_ssrc(conn.udp.ssrc).channel_id == CHANNEL + 1
            assert continues(server.packets(out.old_udp.ssrc)[-1].sequence, server.packets(conn.udp.ssrc)[0].sequence)
        finally:
            await out.bots.close()


# -- 3. resume refused (4006) -> a new session through the state-update function ----------------------------


async def test_refused_resume_identifies_a_new_session_and_audio_continues():
    async with VoiceServer() as server:
        call = await open_call(server, backoff=0.05, self_deaf=True)
        try:
            provider = CounterProvider(limit=100)
            call.speaker.set_opus_frame_provider(provider)
            await wait_until(lambda: len(call.sink.counters()) >= 15, what="audio before the outage")
            old_udp = call.speaker.udp
            old_session = server.session_for_ssrc(old_udp.ssrc)
            requests = len(call.speaker_main.requests)
            connections = len(server.connections)
            server.refuse_next_resume()
            old_session.drop()
            dropped_at = time.monotonic()
            await wait_until(
                lambda: call.speaker.udp is not None and call.speaker.udp is not old_udp
                and server.packets(call.speaker.udp.ssrc), timeout=5, what="audio on the new session",
            )
            back_at = server.packets(call.speaker.udp.ssrc)[0].arrival
            refused, identified = server.connections[connections], server.connections[connections + 1]
            assert refused.messages_in(Opcode.RESUME) and refused.close_code == 4006
            assert identified.messages_in(Opcode.IDENTIFY) and not identified.messages_in(Opcode.RESUME)
            # op 4 went out again through the state-update function, for the same channel
            assert len(call.speaker_main.requests) == requests + 1
            # ... for the same channel, keeping the mute/deafen state the bot joined with
            assert call.speaker_main.requests[-1] == (GUILD, CHANNEL, False, True)
            new_ssrc = call.speaker.udp.ssrc
            assert new_ssrc != old_udp.ssrc and old_session.ended
            assert not old_udp.is_open  # the audio now goes out on the new socket only

            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, timeout=5,
                             what="end of stream")
            received = call.sink.counters()
            assert_stream_integrity(received, provider, (dropped_at - PREPARED_AHEAD, back_at))
            assert received[-1] == 99
            assert {f.user_id for f in call.sink.frames} == {SPEAKER}
            assert {f.ssrc for f in call.sink.frames} == {old_udp.ssrc, new_ssrc}
            old_last = server.packets(old_udp.ssrc)[-1].sequence
            assert continues(old_last, server.packets(new_ssrc)[0].sequence)
        finally:
            await call.close()


# -- 4. heartbeat ACKs withheld: a zombie connection ---------------------------------------------------------


async def test_withheld_heartbeat_acks_are_detected_within_two_intervals_then_resumed(caplog):
    interval = 0.1
    caplog.set_level(logging.WARNING, logger="fastvoice.gateway")
    async with VoiceServer(heartbeat_interval=interval * 1000) as server:
        call = await open_call(server, backoff=0.02)
        try:
            provider = CounterProvider(limit=60)
            call.speaker.set_opus_frame_provider(provider)
            await wait_until(lambda: len(call.sink.counters()) >= 10, what="audio before the fault")
            session = server.session_for_ssrc(call.speaker.udp.ssrc)
            zombie = session.connection
            connections = len(session.connections)
            await server.wait_for(lambda: zombie.messages_out(Opcode.HEARTBEAT_ACK))
            zombie.withhold_heartbeat_acks = True
            withheld_at = time.monotonic()
            beats_before = len(zombie.messages_in(Opcode.HEARTBEAT))
            await server.wait_for(lambda: zombie.closed, timeout=2.0)
            assert any("zombie" in r.getMessage() for r in caplog.records), "the zombie was not reported"
            # The client gave up on the first heartbeat left without an ACK, when the next one was
            # due: detected within two intervals of the ACKs stopping, whatever the load.
            unacknowledged = zombie.messages_in(Opcode.HEARTBEAT)[beats_before:]
            assert len(unacknowledged) == 1, f"{len(unacknowledged)} heartbeats went unacknowledged"
            took = zombie.closed_at - withheld_at
            assert took <= 2 * interval + 0.15, f"zombie connection closed {took * 1000:.0f} ms after the last ACK"
            assert zombie.close_code == 4000  # closed by the client, resumable
            await server.wait_for(lambda: len(session.connections) > connections
                                  and session.connections[connections].messages_out(Opcode.RESUMED))
            assert session.connections[connections].messages_in(Opcode.RESUME)
            # RESUMED is on the wire: the client reads it on its next loop turn.
            await wait_until(lambda: call.speaker.gateway.status is Status.READY, what="the client back to READY")
            assert not session.ended

            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, what="end of stream")
            assert call.sink.counters() == list(range(60))  # audio never stopped
        finally:
            await call.close()


# -- 5. the voice server changes to a new endpoint mid-stream --------------------------------------------------


async def test_voice_server_change_moves_the_call_and_the_old_socket_is_never_read_again():
    async with VoiceServer() as first, VoiceServer() as second:
        call = await open_call(first, backoff=0.05)
        try:
            provider = CounterProvider(limit=150)
            call.speaker.set_opus_frame_provider(provider)
            await wait_until(lambda: len(call.sink.counters()) >= 15, what="audio on the first server")
            old_speaker_udp, old_listener_udp = call.speaker.udp, call.listener.udp
            old_listener_session = first.session_for_ssrc(old_listener_udp.ssrc)
            old_speaker_ssrc = old_speaker_udp.ssrc
            moved_at = time.monotonic()
            call.move_to(second)
            await wait_until(
                lambda: call.speaker.udp is not None and call.speaker.udp is not old_speaker_udp
                and any(f.ssrc == call.speaker.udp.ssrc for f in call.sink.frames), what="audio via the new server",
            )
            new_ssrc = call.speaker.udp.ssrc
            back_at = next(f.time for f in call.sink.frames if f.ssrc == new_ssrc)
            assert call.listener.udp is not old_listener_udp
            assert not old_speaker_udp.is_open and not old_listener_udp.is_open
            assert second.session_for_ssrc(new_ssrc).user_id == SPEAKER

            # The old socket is closed and never read again: a valid packet for it goes nowhere...
            def old_socket_reads():
                u = old_listener_udp
                return u.ignored, u.decrypt_failures, u.duplicates, len(u._queue)

            reads_before = old_socket_reads()
            forged = Packetizer(old_speaker_ssrc, old_listener_session.mode, old_listener_session.secret_key)
            await old_listener_session.inject_datagram(forged.packetize(counter_frame(7, b"X")))
            # ...while the same kind of packet on the new server's socket is delivered (the control).
            new_listener_session = second.session_for_ssrc(call.listener.udp.ssrc)
            control = Packetizer(new_ssrc, new_listener_session.mode, new_listener_session.secret_key)
            await new_listener_session.inject_datagram(control.packetize(counter_frame(8, b"Y")))
            await wait_until(lambda: call.sink.counters(b"Y"), what="the control packet")
            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, timeout=5,
                             what="end of stream")
            assert call.sink.counters(b"X") == [] and old_socket_reads() == reads_before
            assert call.sink.counters(b"Y") == [8]

            assert_stream_moved(call, provider, (moved_at, back_at), first.packets(old_speaker_ssrc),
                                second.packets(new_ssrc))
        finally:
            await call.close()


async def test_a_crashed_voice_server_replaced_by_a_new_endpoint_moves_the_call():
    """4015 from a server that then stays down: the resume cannot reach it, Discord names a new
    endpoint, and audio continues there; the old sockets are closed and never read again."""
    async with VoiceServer() as first, VoiceServer() as second:
        call = await open_call(first, backoff=0.05)
        try:
            provider = CounterProvider(limit=150)
            call.speaker.set_opus_frame_provider(provider)
            await wait_until(lambda: len(call.sink.counters()) >= 15, what="audio on the first server")
            old_udps = (call.speaker.udp, call.listener.udp)
            old_ssrc = old_udps[0].ssrc
            crashed_at = time.monotonic()
            for conn in (call.speaker, call.listener):
                await first.session_for_ssrc(conn.udp.ssrc).close(4015, "voice server crashed")
            await first.close()  # and it stays down: every resume attempt fails to connect
            await asyncio.sleep(0.15)
            call.move_to(second)
            await wait_until(
                lambda: call.speaker.udp is not None and call.speaker.udp is not old_udps[0]
                and any(f.ssrc == call.speaker.udp.ssrc for f in call.sink.frames), what="audio via the new server",
            )
            new_ssrc = call.speaker.udp.ssrc
            back_at = next(f.time for f in call.sink.frames if f.ssrc == new_ssrc)
            assert all(not udp.is_open for udp in old_udps)
            reads_before = [(u.ignored, u.decrypt_failures, u.duplicates, len(u._queue)) for u in old_udps]
            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, timeout=8,
                             what="end of stream")
            assert [(u.ignored, u.decrypt_failures, u.duplicates, len(u._queue)) for u in old_udps] == reads_before
            assert second.session_for_ssrc(new_ssrc).user_id == SPEAKER
            assert_stream_moved(call, provider, (crashed_at, back_at), first.packets(old_ssrc),
                                second.packets(new_ssrc))
        finally:
            await call.close()


# -- 6. UDP loss, duplication, reordering and stalls ---------------------------------------------------------

_UDP_FAULT_RUN: dict = {}


async def _run_udp_faults() -> dict:
    """One 3 s call through 10 % loss, 5 % duplication, reordering within 5 packets and two 200 ms stalls."""
    if _UDP_FAULT_RUN:
        return _UDP_FAULT_RUN
    frames = 150
    logger = logging.getLogger("fastvoice")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        async with VoiceServer(seed=7) as server:
            call = await open_call(server)
            try:
                server.udp_loss = 0.10
                server.udp_duplicate = 0.05
                server.udp_reorder = 0.10
                server.udp_reorder_window = 5
                provider = CounterProvider(limit=frames)
                call.speaker.set_opus_frame_provider(provider)
                await asyncio.sleep(1.0)
                server.stall_udp(0.2)
                await asyncio.sleep(1.0)
                server.stall_udp(0.2)
                await wait_until(lambda: not call.speaker.sender.live, timeout=5, what="end of stream")
                await asyncio.sleep(0.3)  # the last stall and reordered packets drain
                speaker_packets = server.packets(call.speaker.udp.ssrc)
                _UDP_FAULT_RUN.update(
                    frames=frames,
                    counters=call.sink.counters(),
                    arrivals=[f.time for f in call.sink.frames],
                    intervals=intervals_ms([p for p in speaker_packets if p.opus != SILENCE]),
                    stats=call.speaker.sender.stats,
                    receiver_errors=call.listener.receiver.errors,
                    duplicates_dropped=call.listener.udp.duplicates,
                )
            finally:
                await call.close()
    finally:
        logger.removeHandler(handler)
    _UDP_FAULT_RUN["records"] = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records
                                 if r.levelno >= logging.ERROR]
    return _UDP_FAULT_RUN


async def test_udp_faults_leave_the_sender_paced_and_raise_nothing():
    run = await _run_udp_faults()
    counters, frames = run["counters"], run["frames"]
    # Nothing raised: no error logs (the loop's exception handler is checked by the fixture).
    assert run["records"] == [] and run["receiver_errors"] == 0
    # The faults really happened on the way to the listener...
    unique = set(counters)
    assert unique <= set(range(frames))
    assert 0.75 * frames <= len(unique) < frames, f"{len(unique)} of {frames} frames arrived"
    assert any(b < a for a, b in itertools.pairwise(counters)), "no reordering was seen"
    gaps = [b - a for a, b in itertools.pairwise(run["arrivals"])]
    assert sum(1 for g in gaps if g >= 0.15) >= 2, "the two stalls were not seen"
    # ...while the speaker's stream, measured at the server before the faults, stayed paced.
    intervals = run["intervals"]
    assert len(intervals) == frames - 1
    assert 19.0 <= statistics.median(intervals) <= 21.0, statistics.median(intervals)
    assert percentile(intervals, 0.95) <= 30.0, sorted(intervals)[-10:]
    assert max(intervals) < 60.0, max(intervals)
    assert run["stats"].deficit == 0 and run["stats"].sent == frames + 5


async def test_udp_faults_deliver_each_packet_at_most_once():
    run = await _run_udp_faults()
    counters = run["counters"]
    twice = sorted({n for n in counters if counters.count(n) > 1})
    assert twice == [], f"{len(twice)} frames delivered more than once: {twice}"
    assert run["duplicates_dropped"] > 0, "the network duplicated nothing: the check above proved nothing"


# -- 7. the event loop blocked by user code ------------------------------------------------------------------


async def test_a_blocked_loop_resyncs_the_sender_without_a_burst_and_counts_the_deficit():
    stall = 0.15

    def user_code(n: int) -> None:
        if n == 30:
            time.sleep(stall)  # a callback that blocks the event loop

    async with VoiceServer() as server:
        call = await open_call(server, sink=CounterSink(on_frame=user_code))
        try:
            clock = SendClock.for_loop()
            resyncs = clock.resyncs
            call.speaker.set_opus_frame_provider(CounterProvider(limit=80))
            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, what="end of stream")
            packets = [p for p in server.packets(call.speaker.udp.ssrc) if p.opus != SILENCE]
            gaps = intervals_ms(packets)
            longest = max(range(len(gaps)), key=gaps.__getitem__)
            assert gaps[longest] >= 120, f"the loop stall was not seen: longest gap {gaps[longest]:.0f} ms"
            resumed_at = packets[longest + 1].arrival
            burst = [p for p in packets[longest + 1:] if p.arrival - resumed_at <= 0.005]
            assert len(burst) <= 3, f"{len(burst)} packets within 5 ms after the stall"
            after = gaps[longest + 1:longest + 11]
            assert statistics.median(after) >= 15.0, after  # paced again, not catching up
            stats = call.speaker.sender.stats
            assert 5 <= stats.deficit <= 9, stats
            assert clock.resyncs > resyncs
            # Skipped ticks are not skipped frames: the listener got every one.
            assert call.sink.counters() == list(range(80))
        finally:
            await call.close()


# -- 8. a slow frame receiver on one connection ----------------------------------------------------------------


async def test_a_slow_frame_receiver_does_not_disturb_other_connections_pacing():
    calls_made = []

    def slow(n: int) -> None:
        calls_made.append(n)
        time.sleep(0.01)

    async with VoiceServer() as server:
        slow_call = await open_call(server, sink=CounterSink(on_frame=slow))
        other = await open_call(server, listener=False, guild=GUILD + 1, channel=CHANNEL + 1, speaker_id=2001)
        try:
            slow_call.speaker.set_opus_frame_provider(CounterProvider(limit=120))
            other.speaker.set_opus_frame_provider(CounterProvider(limit=100, tag=b"B"))
            await wait_until(lambda: not other.speaker.sender.live and not slow_call.speaker.sender.live,
                             what="end of streams")
            assert len(calls_made) >= 100  # the slow receiver really ran, 10 ms a frame
            intervals = intervals_ms([p for p in server.packets(other.speaker.udp.ssrc) if p.opus != SILENCE])
            assert len(intervals) == 99
            assert 19.0 <= statistics.median(intervals) <= 21.0, statistics.median(intervals)
            assert percentile(intervals, 0.95) <= 32.0, sorted(intervals)[-10:]
            assert max(intervals) < 60.0, max(intervals)
            assert other.speaker.sender.stats.deficit == 0
            assert slow_call.speaker.sender.stats.deficit == 0
        finally:
            await other.close()
            await slow_call.close()


async def test_a_slow_receiver_run_in_its_own_thread_leaves_the_loop_free_even_when_it_cannot_keep_up():
    """Three speakers into a receiver taking 10 ms a frame: 1.5 s of work per second. Inline it
    would take the whole loop (another call's packets then leave up to 31 ms apart and a third of
    them overflow the server's socket); in a ThreadedOpusFrameReceiver it only queues."""
    calls_made = []

    def slow(n: int) -> None:
        calls_made.append(n)
        time.sleep(0.01)

    async with VoiceServer(kernel_stamps=True) as server:
        sink = CounterSink(on_frame=slow)
        threaded = ThreadedOpusFrameReceiver(sink, max_pending=1000)
        slow_call = await open_call(server, sink=threaded)
        more = [make_manager(server, uid, gateway_config=gateway_config()) for uid in (3001, 3002)]
        speakers = [slow_call.speaker] + [bots.create_conn(GUILD) for _, bots in more]
        await asyncio.gather(*(conn.open(CHANNEL) for conn in speakers[1:]))
        other = await open_call(server, listener=False, guild=GUILD + 1, channel=CHANNEL + 1, speaker_id=2001)
        try:
            for conn, tag in zip(speakers, (b"A", b"C", b"D")):
                conn.set_opus_frame_provider(CounterProvider(limit=100, tag=tag))
            other.speaker.set_opus_frame_provider(CounterProvider(limit=100, tag=b"B"))
            await wait_until(lambda: not other.speaker.sender.live and not any(c.sender.live for c in speakers),
                             timeout=15, what="end of streams")
            intervals = intervals_ms([p for p in server.packets(other.speaker.udp.ssrc) if p.opus != SILENCE])
            assert len(intervals) == 99  # every packet reached the server (its loop kept up)
            assert 19.0 <= statistics.median(intervals) <= 21.0, statistics.median(intervals)
            assert percentile(intervals, 0.95) <= 25.0, sorted(intervals)[-10:]
            assert max(intervals) < 45.0, max(intervals)
            assert other.speaker.sender.stats.deficit == 0
        finally:
            await other.close()
            for _, bots in more:
                await bots.close()
            await slow_call.close()
        assert await threaded.wait_closed(20)  # closing the call closed the receiver, after its queue
        # The receiver could not keep up with the audio, yet every frame it got arrived whole, in
        # order per speaker (a queued packet is never reused for the next datagram).
        assert len(calls_made) >= 200 and threaded.delivered >= 200
        for tag in (b"A", b"C", b"D"):
            counters = sink.counters(tag)
            assert counters == sorted(set(counters)) and len(counters) >= 60, (tag, counters[:10])


# -- hostile peers ---------------------------------------------------------------------------------------------


async def test_a_huge_websocket_frame_is_refused_from_its_header_and_the_call_resumes():
    async with VoiceServer() as server:
        call = await open_call(server)
        try:
            limit = call.speaker.gateway.config.max_message_size
            assert limit <= 16 * 1024 * 1024  # a clear limit, far below what a hostile peer can announce
            provider = CounterProvider(limit=60)
            call.speaker.set_opus_frame_provider(provider)
            await wait_until(lambda: len(call.sink.counters()) >= 10, what="audio before the frame")
            session = server.session_for_ssrc(call.speaker.udp.ssrc)
            hostile = session.connection
            announced_at = time.monotonic()
            hostile.announce_frame(1 << 40)  # 1 TiB announced; the payload never comes
            await server.wait_for(lambda: hostile.closed, timeout=2.0)
            # Refused from the header alone: the client did not wait for (or buffer) the payload.
            assert hostile.closed_at - announced_at < 0.5
            assert hostile.close_code == 1009  # message too big
            await server.wait_for(lambda: len(session.connections) == 2 and session.connections[1].messages_out(
                Opcode.RESUMED))
            await wait_until(lambda: not call.speaker.sender.live and call.sink.silence >= 5, what="end of stream")
            assert call.sink.counters() == list(range(60))
        finally:
            await call.close()


def test_new_fault_knobs_reject_bad_values_by_name():
    server = VoiceServer()
    with pytest.raises(ValueError, match="udp_reorder_window must be an int >= 1, got 0"):
        server.udp_reorder_window = 0
    with pytest.raises(ValueError, match="stall seconds must be a positive number, got 0"):
        server.stall_udp(0)
    server.udp_reorder_window = 5
    assert server.udp_reorder_window == 5
