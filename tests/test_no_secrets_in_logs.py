"""Tokens, session ids and secret keys never appear in logs (at any level), reprs or exception messages.

Each test runs whole sessions against the local voice server - the happy path and the error paths
(a refused resume, stop close codes, opens that time out or fail) - with every logger at DEBUG, then
searches everything that was logged, the messages, reprs and tracebacks of every exception raised
or logged, and the reprs of every object that holds a secret, for each secret in every textual
form it could take.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets as secrets_module
import struct
import time
import traceback

import pytest

from fastvoice.conn import ConnConfig, ConnOpenError, VoiceServerUpdate, VoiceStateUpdate
from fastvoice.errors import GatewayClosedError, GatewayDecodeError
from fastvoice.gateway import GatewayConfig, State
from fastvoice.gateway_messages import (
    GatewayMessage,
    GatewayMessageDataIdentify,
    GatewayMessageDataResume,
    GatewayMessageDataSessionDescription,
    Opcode,
    decode_message,
    encode_message,
)
from fastvoice.manager import Manager
from fastvoice.opus import OpusReader
from fastvoice.testing import MainGatewayStandIn, VoiceServer

from _calls import Collect, wait_until

GUILD = 30
CHANNEL = 31
USER = 3
LISTENER = 4

#: A key window is at least this many ints, and at least this many characters as compact text
#: ("1,2,3"): short runs of small numbers could turn up in any log by chance.
KEY_WINDOW_INTS = 8
KEY_WINDOW_CHARS = 20


# -- what to look for ---------------------------------------------------------------------------


def key_forms(key: bytes) -> list[tuple[str, str]]:
    """``(kind, text)`` for every way a 32-byte key, or a run of it, could be written out."""
    assert len(key) == 32
    # A key of few distinct bytes would make short windows ambiguous; os.urandom keys have ~30.
    assert len(set(key)) >= 16, "the key is not distinctive enough to search for"
    ints = list(key)
    forms = [
        ("key as hex", key.hex()),
        ("key as upper-case hex", key.hex().upper()),
        ("key as bytes repr", repr(key)),
        ("key as base64", base64.b64encode(key).decode()),
        ("key as a list", str(ints)),
    ]
    for start in range(len(ints)):
        end = start + KEY_WINDOW_INTS
        while end <= len(ints) and len(",".join(map(str, ints[start:end]))) < KEY_WINDOW_CHARS:
            end += 1
        if end > len(ints):
            continue
        window = ints[start:end]
        forms.append(("a run of the key as list text", ", ".join(map(str, window))))
        forms.append(("a run of the key as compact list text", ",".join(map(str, window))))
        forms.append(("a run of the key as hex", bytes(window).hex()))
        forms.append(("a run of the key as a bytes repr", repr(bytes(window))[2:-1]))
    return forms


def text_forms(kind: str, value: str) -> list[tuple[str, str]]:
    assert len(value) >= 16, f"a {kind} this short could turn up in a log by chance"
    return [(kind, value), (f"the first 12 characters of a {kind}", value[:12])]


class Secrets:
    """Every token, session id and key a test handed out or saw go by."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.session_ids: set[str] = set()
        self.keys: set[bytes] = set()

    def note_payload(self, payload: dict) -> None:
        if payload.get("token"):
            self.tokens.add(payload["token"])
        if payload.get("session_id"):
            self.session_ids.add(payload["session_id"])

    def note_server(self, server: VoiceServer) -> None:
        for session in server.sessions:
            self.tokens.add(session.token)
            self.session_ids.add(session.session_id)
            if session.secret_key is not None:
                self.keys.add(session.secret_key)

    def forms(self) -> list[tuple[str, str]]:
        forms = []
        for token in self.tokens:
            forms += text_forms("token", token)
        for session_id in self.session_ids:
            forms += text_forms("session id", session_id)
        for key in self.keys:
            forms += key_forms(key)
        return forms


# -- where to look ------------------------------------------------------------------------------


class Evidence:
    """Labelled texts to search: log messages, exception texts, reprs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, label: str, text: str) -> None:
        self.items.append((label, text))

    def obj(self, label: str, value: object) -> None:
        self.add(f"repr of {label}", repr(value))
        self.add(f"str of {label}", str(value))

    def exception(self, label: str, exc: BaseException) -> None:
        """str, repr and args of ``exc`` and of every exception chained to it, and the traceback."""
        self.add(f"traceback of {label}", "".join(traceback.format_exception(exc)))
        pending, seen = [exc], set()
        while pending:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            name = f"{label} ({type(current).__name__})"
            self.obj(name, current)
            self.add(f"args of {name}", repr(current.args))
            pending += [e for e in (current.__cause__, current.__context__) if e is not None]
            pending += list(getattr(current, "exceptions", ()))

    def records(self, records: list[logging.LogRecord], formatted: str) -> None:
        for record in records:
            label = f"a {record.levelname} log record of {record.name}"
            self.add(label, record.getMessage())
            if record.exc_info and record.exc_info[1] is not None:
                self.exception(f"the exception logged by {label}", record.exc_info[1])
            if record.exc_text:
                self.add(f"exception text of {label}", record.exc_text)
            if record.stack_info:
                self.add(f"stack of {label}", record.stack_info)
        self.add("the formatted log", formatted)

    def assert_clean(self, secrets: Secrets) -> None:
        forms = secrets.forms()
        assert forms, "no secret to search for"
        for label, text in self.items:
            for kind, form in forms:
                assert form not in text, f"{kind} appears in {label}"


class Capture:
    """The log records of a test, every logger at DEBUG."""

    def __init__(self, caplog) -> None:
        self._caplog = caplog

    @property
    def records(self) -> list[logging.LogRecord]:
        return self._caplog.records

    def into(self, evidence: Evidence) -> Evidence:
        """Add everything logged so far to ``evidence`` (once, at the end of a test)."""
        names = {r.name.split(".")[0] for r in self.records if r.levelno == logging.DEBUG}
        assert "fastvoice" in names, "no DEBUG record of fastvoice was captured"
        evidence.records(self.records, self._caplog.text)
        return evidence


@pytest.fixture
def capture(caplog) -> Capture:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="fastvoice")
    return Capture(caplog)


def open_manager(server, secrets, *, user_id=USER, open_timeout=5.0, rewrite_server_update=None,
                 drop_server_update=False):
    """A Manager whose op 4 the stand-in main gateway answers; the dispatches pass through ``secrets``."""
    main = MainGatewayStandIn(server, user_id)
    bots = Manager(main.update_voice_state, user_id, conn_config=ConnConfig(
        open_timeout=open_timeout,
        gateway_config=GatewayConfig(backoff_base=0.01, backoff_max=0.05),
    ))

    def on_state(payload):
        secrets.note_payload(payload)
        bots.handle_voice_state_update(payload)

    def on_server(payload):
        secrets.note_payload(payload)
        if drop_server_update:
            return
        if rewrite_server_update is not None:
            payload = rewrite_server_update(dict(payload))
            secrets.note_payload(payload)
        bots.handle_voice_server_update(payload)

    main.attach(on_voice_state_update=on_state, on_voice_server_update=on_server)
    return main, bots


def silence_frames(count: int = 400) -> OpusReader:
    return OpusReader(io.BytesIO(b"".join(struct.pack("<I", 20) + bytes(20) for _ in range(count))))


async def open_listener(server, secrets, evidence_later: list) -> Manager:
    """A second member of the call (with DAVE, the group then forms and audio flows end to end)."""
    _, bots = open_manager(server, secrets, user_id=LISTENER)
    conn = bots.create_conn(GUILD)
    conn.set_opus_frame_receiver(Collect())
    await conn.open(CHANNEL)
    evidence_later.append((bots, conn))
    return bots


def add_session_objects(evidence: Evidence, bots: Manager, conn) -> None:
    """Reprs of the live objects of a connection that hold (or held) a secret."""
    evidence.obj("the Manager", bots)
    evidence.obj("the Conn", conn)
    evidence.obj("the DaveSession", conn.dave)
    evidence.obj("the Gateway", conn.gateway)
    if conn.gateway is not None:
        evidence.obj("the gateway State", conn.gateway.state)
        evidence.obj("the GatewayConfig", conn.gateway.config)
    evidence.obj("the UDPConn", conn.udp)
    if conn.udp is not None:
        evidence.obj("the Packetizer", conn.udp.packetizer)
    evidence.obj("the AudioSender", conn.sender)


def add_recorded_frames(evidence: Evidence, server: VoiceServer) -> None:
    """Reprs of the Identify, Resume and Session Description frames of every connection, decoded."""
    for connection in server.connections:
        for message in connection.messages:
            if message.op in (Opcode.IDENTIFY, Opcode.RESUME, Opcode.SESSION_DESCRIPTION) and isinstance(
                message.raw, str
            ):
                decoded = decode_message(message.raw)
                evidence.obj(f"a decoded op {message.op}", decoded)
                evidence.obj(f"the payload of a decoded op {message.op}", decoded.d)


def failed_open_evidence(error: BaseException, bots: Manager, conn, server: VoiceServer) -> Evidence:
    """What a failed ``open()`` leaves to search: its error, the connection's objects, the frames."""
    evidence = Evidence()
    evidence.exception("the error open() raised", error)
    add_session_objects(evidence, bots, conn)
    add_recorded_frames(evidence, server)
    return evidence


# -- the happy path, with a resume ----------------------------------------------------------------


@pytest.mark.parametrize("dave", [0, 1])
async def test_debug_logs_of_a_whole_session_hold_no_secret(capture, dave):
    secrets = Secrets()
    members: list = []
    async with VoiceServer(heartbeat_interval=50.0, dave_protocol_version=dave) as server:
        listener = await open_listener(server, secrets, members)
        _, bots = open_manager(server, secrets)
        conn = bots.create_conn(GUILD)
        await conn.open(CHANNEL)
        members.append((bots, conn))
        conn.set_opus_frame_provider(silence_frames(100))
        session = server.session_for_ssrc(conn.udp.ssrc)
        await wait_until(lambda: len(server.packets(conn.udp.ssrc)) >= 5, what="audio before the drop")
        session.drop()  # a resume (session id and token go out again)
        await server.wait_for(lambda: len(session.connections) >= 2 and session.connection is not None, timeout=5)
        sent = len(server.packets(conn.udp.ssrc))
        await wait_until(lambda: len(server.packets(conn.udp.ssrc)) >= sent + 5, what="audio after the resume")
        if dave:
            assert conn.dave.e2ee and server.session_for_ssrc(conn.udp.ssrc).dave_plaintext_packets == 0
        evidence = Evidence()
        for member_bots, member in members:
            add_session_objects(evidence, member_bots, member)
        add_recorded_frames(evidence, server)
        evidence.obj("the server session", session)
        await bots.close()
        await listener.close()
        secrets.note_server(server)
    assert len(secrets.keys) == 2 and session.token in secrets.tokens
    assert any(r.levelno == logging.DEBUG and r.name.startswith("fastvoice") and "RESUMED" in r.getMessage()
               for r in capture.records)
    capture.into(evidence).assert_clean(secrets)


# -- error paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dave", [0, 1])
async def test_a_refused_resume_and_the_new_session_leak_no_secret(capture, dave):
    secrets = Secrets()
    members: list = []
    async with VoiceServer(dave_protocol_version=dave) as server:
        listener = await open_listener(server, secrets, members)
        main, bots = open_manager(server, secrets)
        conn = bots.create_conn(GUILD)
        await conn.open(CHANNEL)
        members.append((bots, conn))
        conn.set_opus_frame_provider(silence_frames())
        old_udp = conn.udp
        await wait_until(lambda: len(server.packets(old_udp.ssrc)) >= 3, what="audio before the drop")
        server.refuse_next_resume()
        server.session_for_ssrc(old_udp.ssrc).drop()  # the resume is refused with 4006: op 4, then Identify
        await wait_until(lambda: conn.udp is not None and conn.udp is not old_udp
                         and len(server.packets(conn.udp.ssrc)) >= 3, timeout=10, what="audio on a new session")
        assert any(c.close_code == 4006 for c in server.connections)
        assert len(main.requests) == 2
        evidence = Evidence()
        for member_bots, member in members:
            add_session_objects(evidence, member_bots, member)
        add_recorded_frames(evidence, server)
        await bots.close()
        await listener.close()
        secrets.note_server(server)
    assert len(secrets.keys) == 3  # the listener's, and the speaker's two sessions'
    assert any("4006" in r.getMessage() for r in capture.records)
    capture.into(evidence).assert_clean(secrets)


def wrong_token(payload: dict) -> dict:
    payload["token"] = secrets_module.token_hex(8)
    return payload


@pytest.mark.parametrize("code", [4004, 4017, 4022])
async def test_a_stop_close_code_at_open_leaks_no_secret(capture, code):
    secrets = Secrets()
    async with VoiceServer() as server:
        if code == 4004:
            # A real authentication failure: the bot identifies with a token the server did not hand out.
            _, bots = open_manager(server, secrets, rewrite_server_update=wrong_token)
        else:
            _, bots = open_manager(server, secrets)
            server.close_next_connection(code, after_messages=1, reason="closed right after Identify")
        conn = bots.create_conn(GUILD)
        with pytest.raises(GatewayClosedError) as raised:
            await conn.open(CHANNEL)
        assert raised.value.code == code
        assert server.connections[0].messages_in(Opcode.IDENTIFY)
        evidence = failed_open_evidence(raised.value, bots, conn, server)
        await bots.close()
        secrets.note_server(server)
    assert len(secrets.tokens) == (2 if code == 4004 else 1)  # 4004: the real token and the wrong one
    assert any(str(code) in r.getMessage() and r.levelno >= logging.WARNING for r in capture.records)
    capture.into(evidence).assert_clean(secrets)


@pytest.mark.parametrize("code", [4004, 4014])
async def test_a_stop_close_code_mid_call_leaks_no_secret(capture, code):
    secrets = Secrets()
    async with VoiceServer() as server:
        _, bots = open_manager(server, secrets)
        conn = bots.create_conn(GUILD)
        await conn.open(CHANNEL)
        conn.set_opus_frame_provider(silence_frames())
        udp = conn.udp
        await wait_until(lambda: len(server.packets(udp.ssrc)) >= 3, what="audio before the close")
        await server.session_for_ssrc(udp.ssrc).close(code, "closed mid-call")
        await wait_until(lambda: conn.udp is None, what="the session ended")
        evidence = Evidence()
        add_session_objects(evidence, bots, conn)
        evidence.obj("the closed UDPConn", udp)
        await bots.close()
        secrets.note_server(server)
    assert len(secrets.keys) == 1
    assert any("voice gateway stopped" in r.getMessage() for r in capture.records)
    capture.into(evidence).assert_clean(secrets)


async def _never_answer(self, conn, data):
    """Stands in for a VoiceServer handler: the request gets no answer."""


@pytest.mark.parametrize("stage", ["no server update", "no Ready", "no Session Description"])
async def test_an_open_that_times_out_leaks_no_secret(capture, monkeypatch, stage):
    secrets = Secrets()
    if stage == "no Ready":
        monkeypatch.setattr(VoiceServer, "_on_identify", _never_answer)
    elif stage == "no Session Description":
        monkeypatch.setattr(VoiceServer, "_on_select_protocol", _never_answer)
    async with VoiceServer() as server:
        _, bots = open_manager(server, secrets, open_timeout=1.0, drop_server_update=stage == "no server update")
        conn = bots.create_conn(GUILD)
        started = time.monotonic()
        with pytest.raises(ConnOpenError) as raised:
            await conn.open(CHANNEL)
        assert time.monotonic() - started < 3
        if stage != "no server update":
            assert server.connections[0].messages_in(Opcode.IDENTIFY)
        evidence = failed_open_evidence(raised.value, bots, conn, server)
        await bots.close()
    assert secrets.tokens and secrets.session_ids
    capture.into(evidence).assert_clean(secrets)


async def test_an_unusable_session_description_leaks_no_key(capture, monkeypatch):
    # The server keys the session but names a mode nobody selected: the client holds the key when
    # open() fails.
    import fastvoice.testing._gateway_side as server_module

    real = server_module.GatewayMessageDataSessionDescription
    monkeypatch.setattr(server_module, "GatewayMessageDataSessionDescription",
                        lambda mode, key, dave: real("no_such_mode", key, dave))
    secrets = Secrets()
    async with VoiceServer() as server:
        _, bots = open_manager(server, secrets)
        conn = bots.create_conn(GUILD)
        with pytest.raises(ConnOpenError, match="unusable") as raised:
            await conn.open(CHANNEL)
        evidence = failed_open_evidence(raised.value, bots, conn, server)
        await bots.close()
        secrets.note_server(server)
    assert len(secrets.keys) == 1
    capture.into(evidence).assert_clean(secrets)


# -- reprs and decode errors, with secrets chosen by the test ---------------------------------------


def made_up_secrets() -> tuple[Secrets, str, str, bytes]:
    found = Secrets()
    token, session_id = secrets_module.token_hex(12), secrets_module.token_hex(16)
    key = secrets_module.token_bytes(32)
    while len(set(key)) < 16:
        key = secrets_module.token_bytes(32)
    found.tokens.add(token)
    found.session_ids.add(session_id)
    found.keys.add(key)
    return found, token, session_id, key


def test_reprs_of_every_object_holding_a_secret(rtp):
    found, token, session_id, key = made_up_secrets()
    identify = GatewayMessageDataIdentify(GUILD, USER, session_id, token, max_dave_protocol_version=1)
    resume = GatewayMessageDataResume(GUILD, session_id, token, seq_ack=5)
    description = GatewayMessageDataSessionDescription("aead_xchacha20_poly1305_rtpsize", key, 1)
    evidence = Evidence()
    for label, value in [
        ("State", State(GUILD, USER, CHANNEL, session_id=session_id, token=token, endpoint="example.test:443")),
        ("Identify", identify),
        ("Resume", resume),
        ("SessionDescription", description),
        ("VoiceStateUpdate", VoiceStateUpdate.from_dict(
            {"guild_id": str(GUILD), "user_id": str(USER), "channel_id": str(CHANNEL), "session_id": session_id})),
        ("VoiceServerUpdate", VoiceServerUpdate.from_dict(
            {"guild_id": str(GUILD), "token": token, "endpoint": "example.test:443"})),
        ("Packetizer", rtp.Packetizer(1234, "aead_xchacha20_poly1305_rtpsize", key)),
        ("Depacketizer", rtp.Depacketizer("aead_xchacha20_poly1305_rtpsize", key)),
    ]:
        evidence.obj(label, value)
    for data in (identify, resume, description):
        frame = encode_message(data.OPCODE, data, seq=1)
        evidence.obj(f"a GatewayMessage of {type(data).__name__}", GatewayMessage(Opcode(data.OPCODE), data, 1))
        evidence.obj(f"a decoded {type(data).__name__}", decode_message(frame))
    evidence.assert_clean(found)


def test_decode_errors_of_frames_carrying_secrets_do_not_show_them():
    found, token, session_id, key = made_up_secrets()
    ints = list(key)
    identify = {"server_id": str(GUILD), "user_id": str(USER), "session_id": session_id, "token": token}
    description = {"mode": "aead_xchacha20_poly1305_rtpsize", "secret_key": ints, "dave_protocol_version": 0}
    # A token sent as a number is still a token: its digits are not to be shown either.
    numeric_token = int.from_bytes(key[:12], "big") | 1 << 90
    found.tokens.add(str(numeric_token))
    # Each frame carries secrets in their own fields and is malformed elsewhere (or in a secret field).
    bad_frames = [
        encode_message(0, identify)[:-3],  # cut short: not JSON
        encode_message(0, {**identify, "token": numeric_token}),
        encode_message(7, {"server_id": str(GUILD), "session_id": session_id, "token": numeric_token}),
        encode_message(0, {**identify, "user_id": "not a snowflake"}),
        encode_message(0, {**identify, "token": ints}),
        encode_message(0, {**identify, "session_id": list(session_id)}),
        encode_message(7, {"server_id": str(GUILD), "session_id": session_id, "token": token, "seq_ack": "x"}),
        encode_message(7, {"server_id": str(GUILD), "session_id": session_id, "token": {"value": token}}),
        encode_message(4, {**description, "secret_key": ints[:31]}),
        encode_message(4, {**description, "secret_key": ints + [256]}),
        encode_message(4, {**description, "secret_key": ints[:-1] + [256]}),
        encode_message(4, {**description, "secret_key": key.hex()}),
        encode_message(4, {**description, "mode": 5}),
        encode_message(4, {**description, "dave_protocol_version": "one"}),
        encode_message(4, description).replace('"mode"', '"mode" "'),  # not JSON, a key inside
    ]
    evidence = Evidence()
    for frame in bad_frames:
        with pytest.raises(GatewayDecodeError) as raised:
            decode_message(frame)
        evidence.exception("a decode error", raised.value)
    evidence.assert_clean(found)
