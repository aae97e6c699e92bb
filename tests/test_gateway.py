"""The voice gateway client against the local voice server: handshake, heartbeat, resume, close codes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import aiohttp
import pytest
from aiohttp import web

from fastvoice.close_codes import GATEWAY_CLOSE_EVENT_CODES, CloseBehaviour
from fastvoice.errors import (
    GatewayAlreadyConnectedError,
    GatewayClosedError,
    GatewayNotConnectedError,
    GatewayTimeoutError,
)
from fastvoice.gateway import Gateway, GatewayConfig, State, Status
from fastvoice.gateway_messages import (
    GatewayMessageDataClientsConnect,
    GatewayMessageDataDaveMLSExternalSender,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataReady,
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSelectProtocolData,
    GatewayMessageDataSessionDescription,
    GatewayMessageDataSpeaking,
    GatewayMessageDataUnknown,
    Opcode,
    Protocol,
    SpeakingFlags,
)
from fastvoice.testing import VoiceServer

GUILD = 111111111111111111
USER = 222222222222222222
OTHER = 333333333333333333


def fast_config(**overrides) -> GatewayConfig:
    values = dict(backoff_base=0.01, backoff_max=0.05, open_timeout=5.0, connect_timeout=5.0)
    values.update(overrides)
    return GatewayConfig(**values)


class Recorder:
    """Collects what a gateway reports through its two handlers."""

    def __init__(self) -> None:
        self.events: list[tuple[int, object]] = []
        self.closes: list[tuple[Gateway, BaseException]] = []
        self.changed = asyncio.Event()

    def on_event(self, op, data) -> None:
        self.events.append((op, data))
        self.changed.set()

    def on_close(self, gateway, error) -> None:
        self.closes.append((gateway, error))
        self.changed.set()

    def of(self, op: int) -> list[object]:
        return [d for o, d in self.events if o == op]

    async def wait(self, predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; events so far: {[o for o, _ in self.events]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.05))
            except asyncio.TimeoutError:
                pass


def make_gateway(recorder: Recorder, **config) -> Gateway:
    return Gateway(recorder.on_event, recorder.on_close, fast_config(**config))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def server():
    async with VoiceServer(heartbeat_interval=200.0, seed=1) as srv:
        yield srv


async def test_full_handshake(server):
    rec = Recorder()
    gw = make_gateway(rec)
    assert gw.status is Status.UNCONNECTED and gw.ssrc is None and gw.latency is None
    await gw.open(server.make_state(GUILD, USER))
    try:
        assert gw.status is Status.READY
        session = server.session_for_user(USER)
        assert gw.ssrc == session.ssrc
        identify = server.connections[0].messages_in(Opcode.IDENTIFY)[0].data
        assert identify == {
            "server_id": str(GUILD),
            "user_id": str(USER),
            "session_id": session.session_id,
            "token": identify["token"],
            "max_dave_protocol_version": 1,
        }
        assert [op for op, _ in rec.events][:2] == [Opcode.HELLO, Opcode.READY]
        ready = rec.of(Opcode.READY)[0]
        assert isinstance(ready, GatewayMessageDataReady) and ready.port == server.udp_port
        assert ready.modes == ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]

        await gw.send(
            Opcode.SELECT_PROTOCOL,
            GatewayMessageDataSelectProtocol(
                Protocol.UDP, GatewayMessageDataSelectProtocolData("127.0.0.1", 4000, "aead_xchacha20_poly1305_rtpsize")
            ),
        )
        await rec.wait(lambda: rec.of(Opcode.SESSION_DESCRIPTION))
        description = rec.of(Opcode.SESSION_DESCRIPTION)[0]
        assert isinstance(description, GatewayMessageDataSessionDescription)
        assert description.mode == "aead_xchacha20_poly1305_rtpsize"
        assert description.secret_key == session.secret_key and len(description.secret_key) == 32
        assert description.dave_protocol_version == 0
        await gw.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE, gw.ssrc, delay=0))
        await server.wait_for(lambda: session.speaking == SpeakingFlags.MICROPHONE)
        assert session.announced_address == ("127.0.0.1", 4000)
    finally:
        await gw.close()
    assert gw.status is Status.DISCONNECTED
    assert rec.closes == []  # a user close never reaches the close handler


async def test_heartbeat_seq_ack_and_latency(server):
    server.heartbeat_interval = 40.0
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        session = server.session_for_user(USER)
        conn = server.connections[0]
        await server.wait_for(lambda: len(conn.messages_in(Opcode.HEARTBEAT)) >= 4)
        beats = conn.messages_in(Opcode.HEARTBEAT)
        now_ms = time.time() * 1000
        for beat in beats:
            assert set(beat.data) == {"t", "seq_ack"}
            assert abs(beat.data["t"] - now_ms) < 10_000  # a unix-ms nonce
        nonces = [b.data["t"] for b in beats]
        assert nonces == sorted(set(nonces))
        gaps = [b.time - a.time for a, b in zip(beats[1:], beats[2:])]
        assert all(g < 1.0 for g in gaps), gaps
        assert (beats[-1].time - beats[1].time) / (len(beats) - 2) >= 0.035  # paced at the Hello interval
        assert beats[-1].data["seq_ack"] == session.seq == 1  # Ready was seq 1
        # every ACK echoed its nonce, so latency is measured
        await rec.wait(lambda: len(rec.of(Opcode.HEARTBEAT_ACK)) >= 2)
        assert gw.latency is not None and 0 <= gw.latency < 0.5
        # seq tracked from a JSON message and then from a binary frame
        await session.send(Opcode.CLIENTS_CONNECT, GatewayMessageDataClientsConnect([OTHER]))
        await session.send(Opcode.DAVE_MLS_EXTERNAL_SENDER, GatewayMessageDataDaveMLSExternalSender(b"sender"))
        await rec.wait(lambda: rec.of(Opcode.DAVE_MLS_EXTERNAL_SENDER))
        assert gw.seq_ack == 3
        assert rec.of(Opcode.DAVE_MLS_EXTERNAL_SENDER)[0].external_sender == b"sender"
        await server.wait_for(lambda: conn.messages_in(Opcode.HEARTBEAT)[-1].data["seq_ack"] == 3)
    finally:
        await gw.close()


async def test_binary_send_goes_out_as_op_byte_plus_payload(server):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        await gw.send(Opcode.DAVE_MLS_KEY_PACKAGE, GatewayMessageDataDaveMLSKeyPackage(b"\x01\x02kp"))
        conn = server.connections[0]
        await server.wait_for(lambda: conn.messages_in(Opcode.DAVE_MLS_KEY_PACKAGE))
        frame = conn.messages_in(Opcode.DAVE_MLS_KEY_PACKAGE)[0]
        assert frame.raw == b"\x1a\x01\x02kp"
    finally:
        await gw.close()


async def test_resume_after_dropped_socket_redelivers_missed_messages_once(server):
    rec_a, rec_b = Recorder(), Recorder()
    gw_a = make_gateway(rec_a, backoff_base=0.5, backoff_max=0.5)  # away for 0.25-0.5 s
    gw_b = make_gateway(rec_b)
    await gw_a.open(server.make_state(GUILD, USER))
    await gw_b.open(server.make_state(GUILD, OTHER))
    try:
        session_a = server.session_for_user(USER)
        await rec_a.wait(lambda: rec_a.of(Opcode.CLIENTS_CONNECT))  # B joined: seq 2 for A
        seq_before = gw_a.seq_ack
        assert seq_before == 2
        first = session_a.connections[0]
        first.drop()
        await server.wait_for(lambda: first.closed)
        # A is away: B speaks, which the server buffers for A
        await gw_b.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE, gw_b.ssrc, delay=0))
        await server.wait_for(lambda: session_a.seq == 3)
        assert session_a.connection is None
        await session_a.send(Opcode.DAVE_MLS_EXTERNAL_SENDER, GatewayMessageDataDaveMLSExternalSender(b"es"))
        await rec_a.wait(lambda: rec_a.of(Opcode.RESUMED) and rec_a.of(Opcode.DAVE_MLS_EXTERNAL_SENDER))
        second = session_a.connections[1]
        resume = second.messages_in(Opcode.RESUME)[0].data
        assert resume == {"server_id": str(GUILD), "session_id": session_a.session_id, "token": resume["token"],
                          "seq_ack": seq_before}
        assert second.messages_in(Opcode.IDENTIFY) == []
        # only what A missed came again, after Resumed
        assert [m.op for m in second.messages_out() if m.op != Opcode.HEARTBEAT_ACK][:4] == [
            Opcode.HELLO, Opcode.RESUMED, Opcode.SPEAKING, Opcode.DAVE_MLS_EXTERNAL_SENDER
        ]
        assert [m.seq for m in second.messages_out() if m.seq is not None] == [3, 4]
        assert second.messages_out(Opcode.DAVE_MLS_EXTERNAL_SENDER)[0].raw == b"\x00\x04\x19es"
        speaking = rec_a.of(Opcode.SPEAKING)
        assert len(speaking) == 1 and speaking[0].user_id == OTHER and speaking[0].ssrc == gw_b.ssrc
        assert len(rec_a.of(Opcode.READY)) == 1 and len(rec_a.of(Opcode.CLIENTS_CONNECT)) == 1
        assert gw_a.status is Status.READY and gw_a.seq_ack == 4 and gw_a.ssrc == session_a.ssrc
        await asyncio.sleep(0.1)
        assert len(rec_a.of(Opcode.SPEAKING)) == 1
        assert [d.external_sender for d in rec_a.of(Opcode.DAVE_MLS_EXTERNAL_SENDER)] == [b"es"]
        assert rec_a.closes == []
    finally:
        await gw_a.close()
        await gw_b.close()


RESUME_CODES = sorted(c for c, e in GATEWAY_CLOSE_EVENT_CODES.items() if e.behaviour is CloseBehaviour.RESUME)
NEW_SESSION_CODES = sorted(
    c for c, e in GATEWAY_CLOSE_EVENT_CODES.items() if e.behaviour is CloseBehaviour.NEW_SESSION
)
STOP_CODES = sorted(c for c, e in GATEWAY_CLOSE_EVENT_CODES.items() if e.behaviour is CloseBehaviour.STOP)


# codes outside the table are transport drops: resumed too
@pytest.mark.parametrize("code", RESUME_CODES + [1001, 1011, 3000, 4010, 4999])
async def test_resume_codes_resume_the_same_session(server, code):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        session = server.session_for_user(USER)
        await session.close(code)
        await rec.wait(lambda: rec.of(Opcode.RESUMED))
        assert len(session.connections) == 2
        assert session.connections[1].messages_in(Opcode.RESUME)
        assert gw.status is Status.READY and gw.ssrc == session.ssrc
        assert rec.closes == []
    finally:
        await gw.close()


@pytest.mark.parametrize("code", NEW_SESSION_CODES)
async def test_new_session_codes_identify_again(server, code):
    rec = Recorder()
    provided: list[State] = []
    first_state = server.make_state(GUILD, USER)

    def provider() -> State:
        provided.append(first_state)
        return first_state

    gw = make_gateway(rec, state_provider=provider)
    await gw.open(first_state)
    try:
        old = server.session_for_user(USER)
        await old.close(code)
        await rec.wait(lambda: len(rec.of(Opcode.READY)) == 2)
        new = server.sessions[-1]
        assert new is not old and old.ended
        assert server.connections[-1].messages_in(Opcode.IDENTIFY)
        assert not server.connections[-1].messages_in(Opcode.RESUME)
        assert gw.ssrc == new.ssrc != old.ssrc
        assert gw.seq_ack == 1  # seq restarts with the new session
        assert provided == [first_state]
        assert rec.closes == []
    finally:
        await gw.close()


@pytest.mark.parametrize("code", STOP_CODES)
async def test_stop_codes_reach_the_close_handler(server, code):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    session = server.session_for_user(USER)
    await session.close(code, "bye")
    await rec.wait(lambda: rec.closes)
    closed_gw, error = rec.closes[0]
    assert closed_gw is gw
    assert isinstance(error, GatewayClosedError)
    entry = GATEWAY_CLOSE_EVENT_CODES[code]
    assert error.code == code and error.close_event is entry
    assert str(code) in str(error) and entry.description in str(error) and "bye" in str(error)
    await asyncio.sleep(0.1)
    assert len(server.connections) == 1  # no retry
    assert gw.status is Status.DISCONNECTED
    with pytest.raises(GatewayNotConnectedError):
        await gw.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.NONE, 1))
    await gw.close()
    assert len(rec.closes) == 1
    assert {t for t in asyncio.all_tasks() if t.get_name().startswith("fastvoice")} == set()


async def test_4006_on_resume_gives_a_new_session(server):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        old = server.session_for_user(USER)
        server.refuse_next_resume()
        old.drop()
        await rec.wait(lambda: len(rec.of(Opcode.READY)) == 2)
        resumed_conn, identified_conn = server.connections[1], server.connections[2]
        assert resumed_conn.messages_in(Opcode.RESUME) and resumed_conn.close_code == 4006
        assert identified_conn.messages_in(Opcode.IDENTIFY)
        assert gw.ssrc == server.sessions[-1].ssrc != old.ssrc
        assert gw.status is Status.READY and rec.closes == []
    finally:
        await gw.close()


async def test_client_bug_codes_are_retried_a_bounded_number_of_times(server, caplog):
    rec = Recorder()
    gw = make_gateway(rec, max_client_bug_retries=2)
    await gw.open(server.make_state(GUILD, USER))
    for _ in range(5):
        server.close_next_connection(4020)
    with caplog.at_level(logging.ERROR, logger="fastvoice.gateway"):
        await server.session_for_user(USER).close(4020)
        await rec.wait(lambda: rec.closes)
    error = rec.closes[0][1]
    assert isinstance(error, GatewayClosedError) and error.code == 4020 and "2 retries" in str(error)
    assert len(server.connections) == 3  # the first one plus two retries
    assert any("client bug" in r.getMessage() for r in caplog.records)
    await gw.close()


async def test_reconnect_attempts_are_bounded(server):
    rec = Recorder()
    gw = make_gateway(rec, max_reconnect_attempts=3)
    await gw.open(server.make_state(GUILD, USER))
    for _ in range(10):
        server.close_next_connection(4015)
    await server.session_for_user(USER).close(4015)
    await rec.wait(lambda: rec.closes)
    error = rec.closes[0][1]
    assert isinstance(error, GatewayClosedError) and error.code == 4015 and error.attempts == 3
    assert len(server.connections) == 4
    await gw.close()


async def test_reconnect_counter_resets_after_a_successful_resume(server):
    rec = Recorder()
    gw = make_gateway(rec, max_reconnect_attempts=1)
    await gw.open(server.make_state(GUILD, USER))
    try:
        session = server.session_for_user(USER)
        for round_ in range(3):
            await session.close(4015)
            await rec.wait(lambda: len(rec.of(Opcode.RESUMED)) == round_ + 1)
        assert rec.closes == [] and gw.status is Status.READY
    finally:
        await gw.close()


async def test_zombie_connection_is_detected_and_resumed(server):
    server.heartbeat_interval = 50.0
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        session = server.session_for_user(USER)
        session.connection.withhold_heartbeat_acks = True  # this connection goes silent on ACKs
        await rec.wait(lambda: rec.of(Opcode.RESUMED), timeout=3.0)
        assert len(session.connections) == 2
        assert session.connections[0].close_code == 4000  # closed by the client, resumable
        assert gw.status is Status.READY and rec.closes == []
    finally:
        await gw.close()


async def test_auto_reconnect_off_reports_a_resumable_close(server):
    rec = Recorder()
    gw = make_gateway(rec, auto_reconnect=False)
    await gw.open(server.make_state(GUILD, USER))
    await server.session_for_user(USER).close(4015)
    await rec.wait(lambda: rec.closes)
    error = rec.closes[0][1]
    assert isinstance(error, GatewayClosedError) and error.code == 4015 and "Auto-reconnect is off" in str(error)
    await gw.close()


async def test_fatal_code_ends_open_at_once(server):
    server.require_dave = True
    rec = Recorder()
    gw = make_gateway(rec, max_dave_protocol_version=0, open_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(GatewayClosedError) as info:
        await gw.open(server.make_state(GUILD, USER))
    assert time.monotonic() - started < 2.0
    assert info.value.code == 4017 and "DAVE" in str(info.value)
    assert rec.closes and rec.closes[0][1] is info.value
    assert gw.status is Status.DISCONNECTED
    assert {t for t in asyncio.all_tasks() if t.get_name().startswith("fastvoice")} == set()
    await gw.close()


async def test_dave_identify_passes_require_dave(server):
    server.require_dave = True
    gw = make_gateway(Recorder())
    await gw.open(server.make_state(GUILD, USER))
    assert gw.status is Status.READY
    await gw.close()


async def test_open_twice_and_send_when_not_connected(server):
    gw = make_gateway(Recorder())
    with pytest.raises(GatewayNotConnectedError):
        await gw.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.NONE, 1))
    state = server.make_state(GUILD, USER)
    await gw.open(state)
    with pytest.raises(GatewayAlreadyConnectedError):
        await gw.open(state)
    await gw.close()
    await gw.close()  # idempotent
    with pytest.raises(GatewayNotConnectedError):
        await gw.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.NONE, 1))
    # a closed gateway can be opened again
    await gw.open(server.make_state(GUILD, USER))
    assert gw.status is Status.READY
    await gw.close()


async def test_bad_state_is_rejected_with_a_clear_error():
    gw = Gateway()
    with pytest.raises(ValueError, match="endpoint is empty"):
        await gw.open(State(guild_id=1, user_id=2, session_id="s", token="t", endpoint=""))
    with pytest.raises(TypeError, match="State"):
        await gw.open({"endpoint": "x"})  # type: ignore[arg-type]
    state = State(1, 2, None, "secret-session", "secret-token", "voice.example:443")
    assert "secret" not in repr(state)
    assert state.url() == "wss://voice.example:443/?v=8"


async def test_open_times_out_against_a_silent_server():
    async def silent(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", silent)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        gw = make_gateway(Recorder(), open_timeout=0.3)
        with pytest.raises(GatewayTimeoutError, match="WAITING_FOR_HELLO"):
            await gw.open(State(GUILD, USER, None, "s", "t", f"ws://127.0.0.1:{port}"))
        assert gw.status is Status.DISCONNECTED
        assert {t for t in asyncio.all_tasks() if "fastvoice" in t.get_name()} == set()
    finally:
        await runner.cleanup()


async def test_unreachable_endpoint_gives_up_after_bounded_attempts():
    sock_port = _free_port()
    rec = Recorder()
    gw = make_gateway(rec, max_reconnect_attempts=2)
    with pytest.raises(GatewayClosedError, match="2 reconnect attempts"):
        await gw.open(State(GUILD, USER, None, "s", "t", f"ws://127.0.0.1:{sock_port}"))
    assert rec.closes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_close_from_the_event_handler(server):
    done = asyncio.Event()
    gw: Gateway

    async def handler(op, data):
        if op == Opcode.READY:
            await gw.close()
            done.set()

    gw = Gateway(handler, None, fast_config())
    await gw.open(server.make_state(GUILD, USER))
    await asyncio.wait_for(done.wait(), 2)
    await gw.close()
    assert gw.status is Status.DISCONNECTED
    await server.wait_for(lambda: server.connections[0].closed)
    assert server.sessions[0].ended  # closed with 1000: the session is over


async def test_handler_exceptions_are_logged_not_fatal(server, caplog):
    def bad_handler(op, data):
        raise RuntimeError("handler bug")

    gw = Gateway(bad_handler, None, fast_config())
    with caplog.at_level(logging.ERROR, logger="fastvoice.gateway"):
        await gw.open(server.make_state(GUILD, USER))
    assert gw.status is Status.READY
    assert any("event handler raised" in r.getMessage() for r in caplog.records)
    await gw.close()


async def test_bad_input_from_the_server_is_survived(server, caplog):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        session = server.session_for_user(USER)
        conn = session.connection
        with caplog.at_level(logging.WARNING, logger="fastvoice.gateway"):
            for frame in [
                "{not json",
                "[]",
                '{"op": "five"}',
                '{"op": 5, "d": {"speaking": "loud"}}',
                '{"op": 2, "d": {"ssrc": 1}}',
                '{"op": 4, "d": {"mode": "x", "secret_key": [1]}}',
                '{"op": 8, "d": {"heartbeat_interval": -1}}',
                '{"op": 6, "d": {"t": "nonce"}}',
                '{"op": 5, "d": null, "seq": -4}',
                b"\x00",
                b"\x00\x01\x1b",
                b"\xff\xff\x1d\x01",
                "\ud7ff" * 10,
            ]:
                await conn.send_raw(frame)
            await conn.send_raw('{"op": 17, "d": {"surprise": true}, "seq": 9}')
            await conn.send_raw(b"\x00\x0a\x63binary-unknown")
            await rec.wait(lambda: any(isinstance(d, GatewayMessageDataUnknown) and d.op == 0x63 for _, d in rec.events))
        unknown = [d for _, d in rec.events if isinstance(d, GatewayMessageDataUnknown)]
        assert [u.op for u in unknown] == [17, 0x63]
        assert unknown[0].raw == {"surprise": True} and unknown[1].raw == b"binary-unknown"
        assert gw.seq_ack == 10  # seq still tracked, from JSON (9) then binary (10)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("undecodable" in w for w in warnings) == 13  # one per bad frame
        assert gw.status is Status.READY and len(session.connections) == 1
        # still alive: heartbeats keep being acknowledged
        acks = len(rec.of(Opcode.HEARTBEAT_ACK))
        await rec.wait(lambda: len(rec.of(Opcode.HEARTBEAT_ACK)) > acks)
    finally:
        await gw.close()


async def test_undecodable_frames_are_acknowledged_and_logged_in_bounded_lines(server, caplog):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        conn = server.session_for_user(USER).connection
        with caplog.at_level(logging.WARNING, logger="fastvoice.gateway"):
            # A frame whose payload is unusable was still seen: its seq is acknowledged, so a
            # resume does not replay it.
            await conn.send_raw('{"op": 5, "d": {"speaking": "loud"}, "seq": 21}')
            await rec.wait(lambda: gw.seq_ack == 21)
            await conn.send_raw(b"\x00\x16\x1b")  # binary op 27 with no payload, seq 22
            await rec.wait(lambda: gw.seq_ack == 22)
            # A hostile value of megabytes ends as a short log line.
            await conn.send_raw('{"op": 11, "d": {"user_ids": "' + "x" * 3_000_000 + '"}}')
            await conn.send_raw('{"op": 8, "d": {"heartbeat_interval": "' + "y" * 100_000 + '"}}')
            await rec.wait(lambda: sum("undecodable" in r.getMessage() for r in caplog.records) == 4)
        lines = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
        assert max(len(line) for line in lines) < 300, lines
        assert "'user_ids' must be a list, got 'xxx" in lines[2] and "(3000000 characters)" in lines[2]
        assert "(100000 characters)" in lines[3]
        assert gw.seq_ack == 22 and gw.status is Status.READY
    finally:
        await gw.close()


async def test_oversized_frame_drops_the_connection_and_resumes(server, caplog):
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    try:
        session = server.session_for_user(USER)
        big = json.dumps({"op": 99, "d": "x" * (10 * 1024 * 1024)})
        with caplog.at_level(logging.WARNING, logger="fastvoice.gateway"):
            await session.connection.send_raw(big)
            await rec.wait(lambda: rec.of(Opcode.RESUMED), timeout=10)
        assert not any(isinstance(d, GatewayMessageDataUnknown) for _, d in rec.events)
        assert session.connections[0].close_code == 1009  # message too big
        assert gw.status is Status.READY and rec.closes == []
    finally:
        await gw.close()


async def test_wss_with_a_self_signed_certificate():
    async with VoiceServer(tls=True) as server:
        assert server.url.startswith("wss://") and os.path.exists(server.ca_file)
        state_update, server_update = server.voice_updates(GUILD, USER)
        state = State(GUILD, USER, int(state_update["channel_id"]), state_update["session_id"],
                      server_update["token"], server_update["endpoint"])
        assert "://" not in state.endpoint
        gw = make_gateway(Recorder(), ssl=server.ssl_context)
        await gw.open(state)
        assert gw.status is Status.READY
        await gw.close()
        # without trusting the certificate the handshake is refused, then retries run out
        rec = Recorder()
        untrusted = make_gateway(rec, max_reconnect_attempts=1)
        with pytest.raises(GatewayClosedError):
            await untrusted.open(server.make_state(GUILD, OTHER))
        assert "certificate" in rec.closes[0][1].reason.lower() or "ssl" in rec.closes[0][1].reason.lower()


async def test_no_leaked_tasks_or_sockets_after_close(server):
    await asyncio.sleep(0)
    baseline_fds = open_fds()
    baseline_tasks = asyncio.all_tasks()
    rec = Recorder()
    gw = make_gateway(rec)
    await gw.open(server.make_state(GUILD, USER))
    session = server.session_for_user(USER)
    session.drop()  # exercise a reconnect too
    await rec.wait(lambda: rec.of(Opcode.RESUMED))
    assert open_fds() > baseline_fds
    await gw.close()
    await server.wait_for(lambda: all(c.closed for c in server.connections))
    await asyncio.sleep(0.05)
    assert asyncio.all_tasks() == baseline_tasks
    assert open_fds() == baseline_fds


async def test_shared_session_is_not_closed(server):
    async with aiohttp.ClientSession() as http:
        gw = make_gateway(Recorder(), session=http)
        await gw.open(server.make_state(GUILD, USER))
        await gw.close()
        assert not http.closed


def test_backoff_is_exponential_jittered_and_capped():
    gw = Gateway(config=GatewayConfig(backoff_base=1.0, backoff_max=5.0))
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0), (1000, 5.0)]:
        values = [gw._backoff(attempt) for _ in range(300)]
        assert all(full * 0.5 <= v <= full for v in values), (attempt, min(values), max(values))
        assert max(values) - min(values) > 0.2 * full  # jittered, not a fixed delay


async def test_a_tiny_hello_interval_does_not_flood(server):
    server.heartbeat_interval = 0.001  # 1 microsecond
    gw = make_gateway(Recorder())
    await gw.open(server.make_state(GUILD, USER))
    try:
        await asyncio.sleep(0.3)
        beats = len(server.connections[0].messages_in(Opcode.HEARTBEAT))
        assert 3 <= beats <= 40  # floored at 10 ms
        assert gw.status is Status.READY
    finally:
        await gw.close()


def test_public_names_are_documented():
    import inspect
    import typing

    import fastvoice.close_codes as close_codes
    import fastvoice.gateway as gateway
    import fastvoice.testing as testing

    missing = []
    for module in (gateway, close_codes, testing):
        for name in module.__all__:
            obj = getattr(module, name)
            # typing.get_origin: a type alias (Callable[...]), which Python 3.10's isclass() takes for a class
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or typing.get_origin(obj) is not None:
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    if not inspect.getdoc(member):
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert missing == []


@pytest.mark.parametrize(
    "field, value",
    [("open_timeout", 0), ("connect_timeout", -1), ("backoff_base", -0.1), ("max_reconnect_attempts", -1),
     ("max_missed_heartbeat_acks", 0), ("max_dave_protocol_version", "1"), ("open_timeout", True)],
)
def test_config_rejects_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=f"GatewayConfig.{field} must be .* got {value!r}"):
        GatewayConfig(**{field: value})


async def test_reopen_from_the_close_handler_in_a_new_task(server):
    reopened: list[asyncio.Task] = []
    rec = Recorder()

    def on_close(gateway, error):
        rec.on_close(gateway, error)
        # e.g. 4014 after a channel move: connect again with the new state
        reopened.append(asyncio.get_running_loop().create_task(gateway.open(server.make_state(GUILD, USER))))

    gw = Gateway(rec.on_event, on_close, fast_config())
    await gw.open(server.make_state(GUILD, USER))
    await server.session_for_user(USER).close(4014)
    await rec.wait(lambda: reopened)
    await reopened[0]
    assert gw.status is Status.READY and len(rec.of(Opcode.READY)) == 2
    assert gw.ssrc == server.sessions[-1].ssrc
    await gw.close()


async def test_status_follows_the_seed_states(server):
    seen: list[tuple[int, Status]] = []
    gw: Gateway

    def handler(op, data):
        seen.append((op, gw.status))

    gw = Gateway(handler, None, fast_config())
    await gw.open(server.make_state(GUILD, USER))
    try:
        assert seen[:2] == [(Opcode.HELLO, Status.WAITING_FOR_READY), (Opcode.READY, Status.READY)]
        seen.clear()
        server.session_for_user(USER).drop()
        await server.wait_for(lambda: any(op == Opcode.RESUMED for op, _ in seen))
        assert [s for s in seen if s[0] in (Opcode.HELLO, Opcode.RESUMED)] == [
            (Opcode.HELLO, Status.RESUMING), (Opcode.RESUMED, Status.READY)
        ]
    finally:
        await gw.close()
    assert gw.status is Status.DISCONNECTED


def test_closed_error_text_for_a_code_and_for_a_drop():
    from fastvoice.close_codes import gateway_close_event_code_by_code

    error = GatewayClosedError(4017, gateway_close_event_code_by_code(4017), "e2ee required", 0, "Not retrying.")
    assert str(error).startswith("voice gateway closed with code 4017 (E2EE/DAVE protocol required)")
    assert "Reason: 'e2ee required'." in str(error) and str(error).endswith("Not retrying.")
    dropped = GatewayClosedError(None, gateway_close_event_code_by_code(None), "connect failed: refused")
    assert str(dropped).startswith("voice gateway connection failed or dropped without a close code.")
    assert dropped.code is None and dropped.close_event.behaviour is CloseBehaviour.RESUME


def test_one_event_handler_type_for_the_gateway_and_the_connection():
    import typing

    import fastvoice
    import fastvoice.conn
    import fastvoice.gateway as gateway_module

    handler_type = gateway_module.EventHandlerFunc
    assert fastvoice.EventHandlerFunc is handler_type
    # the older names are the same objects, not look-alikes
    assert gateway_module.EventHandler is handler_type
    assert gateway_module.CloseHandler is gateway_module.CloseHandlerFunc
    assert gateway_module.StateProvider is gateway_module.StateProviderFunc
    expected = typing.Optional[handler_type]
    assert typing.get_type_hints(fastvoice.conn.ConnConfig)["event_handler_func"] == expected
    assert typing.get_type_hints(fastvoice.conn.Conn.set_event_handler_func)["handler"] == expected
    assert typing.get_type_hints(Gateway.__init__)["event_handler"] == expected
    assert not hasattr(fastvoice.conn, "ConnEventHandler")


def _refused_endpoint() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}"  # nothing listens there: every connect is refused


async def test_a_cancelled_close_during_reconnect_backoff_still_ends_a_pending_open():
    """close() cancels the runner at once; if close() itself is cancelled before it finishes, the
    pending open() must still end with GatewayNotConnectedError, not wait for its open_timeout."""
    gw = Gateway(None, None, GatewayConfig(backoff_base=30.0, backoff_max=30.0, open_timeout=120.0))
    opening = asyncio.ensure_future(gw.open(State(GUILD, USER, session_id="s", token="t",
                                                  endpoint=_refused_endpoint())))
    await asyncio.sleep(0.2)  # refused once: now in the reconnect backoff
    assert not opening.done() and gw.status is Status.DISCONNECTED
    closing = asyncio.ensure_future(gw.close())
    await asyncio.sleep(0)  # close() has cancelled the runner and waits for it
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    try:
        with pytest.raises(GatewayNotConnectedError):
            await asyncio.wait_for(opening, 10.0)  # a bound for a hang, not a timing assertion
    finally:
        opening.cancel()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("fastvoice-gateway")] == []
