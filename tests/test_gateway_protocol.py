"""The sans-I/O voice gateway protocol object, driven directly: no socket, no event loop, no clock."""

from __future__ import annotations

import json

import pytest

from fastvoice.close_codes import CloseBehaviour
from fastvoice.gateway_messages import Opcode, encode_server_binary
from fastvoice.gateway_protocol import (
    MIN_HEARTBEAT_INTERVAL,
    CloseAction,
    FrameDropped,
    GatewayProtocol,
    HeartbeatAcked,
    HelloReceived,
    MessageReceived,
    ReadyRepeated,
    SessionReady,
    State,
    Status,
    backoff_delay,
    encode_frame,
)

GUILD, USER = 111111111111111111, 222222222222222222
STATE = State(GUILD, USER, session_id="sess-secret", token="tok-secret", endpoint="voice.example:443")

# PROTOCOL.md section 2, "Close codes", as written there (None = no close frame).
RESUME_CODES = [None, 1006, 1001, 4000, 4015, 3999]
NEW_SESSION_CODES = [4001, 4002, 4003, 4005, 4006, 4009, 4011, 4020]
STOP_CODES = [4004, 4012, 4014, 4016, 4017, 4021, 4022]
CLIENT_BUG_CODES = {4001, 4002, 4003, 4005, 4012, 4020}


def frame(op, d, seq=None):
    obj = {"op": op, "d": d}
    if seq is not None:
        obj["seq"] = seq
    return json.dumps(obj)


def hello(ms=13750.0):
    return frame(8, {"heartbeat_interval": ms})


def ready(ssrc=42, seq=None):
    return frame(2, {"ssrc": ssrc, "ip": "127.0.0.1", "port": 5000, "modes": ["aead_xchacha20_poly1305_rtpsize"]},
                 seq)


def connected(protocol=None, **options):
    protocol = protocol or GatewayProtocol(**options)
    protocol.start(STATE)
    protocol.connecting()
    protocol.connected()
    return protocol


def ready_session(**options):
    protocol = connected(**options)
    protocol.receive_text(hello(), 0.0)
    protocol.data_to_send()
    protocol.receive_text(ready(), 0.0)
    return protocol


def test_hello_sends_identify_as_protocol_md_writes_it_and_starts_heartbeats_at_once():
    protocol = connected(max_dave_protocol_version=1)
    assert protocol.status is Status.WAITING_FOR_HELLO
    events = protocol.receive_text(hello(13750.5), 100.0)
    assert [type(e) for e in events] == [HelloReceived, MessageReceived]
    assert events[0].interval == pytest.approx(13.7505)
    [identify] = protocol.data_to_send()
    assert json.loads(identify) == {
        "op": 0,
        "d": {"server_id": str(GUILD), "user_id": str(USER), "session_id": "sess-secret", "token": "tok-secret",
              "max_dave_protocol_version": 1},
    }
    assert protocol.data_to_send() == []  # taken once
    assert protocol.status is Status.IDENTIFYING
    protocol.frames_sent()
    assert protocol.status is Status.WAITING_FOR_READY
    assert protocol.heartbeat_due(100.0) and protocol.next_heartbeat_at == 100.0


def test_a_tiny_heartbeat_interval_is_floored():
    protocol = connected()
    [event, _] = protocol.receive_text(hello(0.001), 0.0)
    assert event.interval == MIN_HEARTBEAT_INTERVAL


def test_ready_then_a_repeated_ready_is_dropped():
    protocol = connected()
    protocol.receive_text(hello(), 0.0)
    events = protocol.receive_text(ready(ssrc=7), 0.0)
    assert [type(e) for e in events] == [SessionReady, MessageReceived]
    assert events[0] == SessionReady(resumed=False, ssrc=7)
    assert protocol.status is Status.READY and protocol.ssrc == 7 and protocol.session_ready
    assert protocol.receive_text(ready(ssrc=8), 0.0) == [ReadyRepeated(8)]
    assert protocol.ssrc == 7


def test_seq_ack_follows_json_binary_and_undecodable_frames():
    protocol = ready_session()
    assert protocol.seq_ack == -1
    protocol.receive_text(frame(5, {"speaking": 1, "ssrc": 9, "user_id": "5"}, seq=10), 0.0)
    assert protocol.seq_ack == 10
    events = protocol.receive_bytes(encode_server_binary(11, 25, b"sender"))
    assert isinstance(events[0], MessageReceived) and events[0].binary and events[0].size == 9
    assert protocol.seq_ack == 11
    # A frame whose payload is malformed but whose seq is readable still counts as seen.
    [dropped] = protocol.receive_text(frame(5, {"speaking": "loud"}, seq=12), 0.0)
    assert isinstance(dropped, FrameDropped) and not dropped.binary
    assert protocol.seq_ack == 12
    [dropped] = protocol.receive_bytes(encode_server_binary(13, 27, b"\x07"))
    assert isinstance(dropped, FrameDropped) and dropped.binary
    assert protocol.seq_ack == 13
    # Garbage with no seq changes nothing.
    assert isinstance(protocol.receive_text("{not json", 0.0)[0], FrameDropped)
    assert isinstance(protocol.receive_bytes(b"\x00"), list)
    assert protocol.seq_ack == 13
    beat = json.loads(protocol.heartbeat(1.0, 1_700_000_000.0))
    assert beat == {"op": 3, "d": {"t": 1_700_000_000_000, "seq_ack": 13}}


def test_heartbeats_schedule_ack_latency_and_zombie_detection():
    protocol = ready_session(max_missed_heartbeat_acks=2)
    protocol.receive_text(hello(1000), 50.0)
    assert protocol.heartbeat_due(50.0)
    first = json.loads(protocol.heartbeat(50.0, 1000.0))["d"]["t"]
    assert protocol.next_heartbeat_at == 51.0
    assert not protocol.heartbeat_due(50.999) and protocol.heartbeat_due(51.0)
    assert protocol.missed_heartbeat_acks == 1 and not protocol.is_zombie()
    # The wall clock stepped back: nonces still grow.
    second = json.loads(protocol.heartbeat(51.0, 999.0))["d"]["t"]
    assert second == first + 1
    assert protocol.is_zombie()  # two beats unacknowledged
    # An ACK of the newer beat vouches for the older one too.
    events = protocol.receive_text(frame(6, {"t": second}), 51.25)
    assert events[0] == HeartbeatAcked(latency=0.25)
    assert protocol.missed_heartbeat_acks == 0 and not protocol.is_zombie()
    assert protocol.receive_text(frame(6, {"t": 12345}), 52.0)[0] == HeartbeatAcked(latency=None)


def test_a_new_connection_forgets_pending_beats_and_the_schedule():
    protocol = ready_session()
    protocol.heartbeat(0.0, 0.0)
    assert protocol.is_zombie()
    protocol.connecting()
    assert protocol.missed_heartbeat_acks == 0 and protocol.next_heartbeat_at is None
    assert not protocol.heartbeat_due(1e9)


@pytest.mark.parametrize("code", RESUME_CODES)
def test_resume_codes_resume_a_ready_session_with_the_last_seq(code):
    protocol = ready_session()
    protocol.receive_text(frame(5, {"speaking": 1, "ssrc": 9}, seq=77), 0.0)
    decision = protocol.on_close(code)
    assert decision.action is CloseAction.RESUME and decision.behaviour is CloseBehaviour.RESUME
    assert decision.attempts == 1 and not decision.new_session
    assert protocol.status is Status.DISCONNECTED
    protocol.connecting()
    protocol.connected()
    protocol.receive_text(hello(), 0.0)
    assert protocol.status is Status.RESUMING
    [resume] = protocol.data_to_send()
    assert json.loads(resume) == {
        "op": 7, "d": {"server_id": str(GUILD), "session_id": "sess-secret", "token": "tok-secret", "seq_ack": 77},
    }
    events = protocol.receive_text(frame(9, None), 0.0)
    assert events[0] == SessionReady(resumed=True, ssrc=42) and protocol.status is Status.READY


@pytest.mark.parametrize("code", RESUME_CODES)
def test_resume_codes_identify_when_no_session_was_ready(code):
    protocol = connected()
    decision = protocol.on_close(code)
    assert decision.action is CloseAction.IDENTIFY and decision.behaviour is CloseBehaviour.RESUME


@pytest.mark.parametrize("code", NEW_SESSION_CODES)
def test_new_session_codes_identify_again_from_seq_minus_one(code):
    protocol = ready_session()
    protocol.receive_text(frame(5, {"speaking": 1, "ssrc": 9}, seq=5), 0.0)
    decision = protocol.on_close(code)
    assert decision.action is CloseAction.IDENTIFY and decision.new_session
    assert decision.entry.client_bug == (code in CLIENT_BUG_CODES)
    assert not protocol.session_ready
    protocol.connecting()
    protocol.connected()
    protocol.receive_text(hello(), 0.0)
    [identify] = protocol.data_to_send()
    assert json.loads(identify)["op"] == Opcode.IDENTIFY
    assert protocol.seq_ack == -1
    assert json.loads(protocol.heartbeat(0.0, 0.0))["d"]["seq_ack"] == -1


@pytest.mark.parametrize("code", STOP_CODES)
def test_stop_codes_stop(code):
    protocol = ready_session()
    decision = protocol.on_close(code)
    assert decision.action is CloseAction.STOP and decision.detail == "Not retrying."
    assert decision.entry.code == code


@pytest.mark.parametrize("code", STOP_CODES + NEW_SESSION_CODES)
def test_a_zombie_connection_resumes_whatever_the_code(code):
    protocol = ready_session()
    assert protocol.on_close(code, zombie=True).action is CloseAction.RESUME


def test_client_bug_codes_are_retried_a_bounded_number_of_times():
    protocol = ready_session(max_client_bug_retries=2)
    assert protocol.on_close(4001).action is CloseAction.IDENTIFY
    assert protocol.on_close(4020).action is CloseAction.IDENTIFY
    decision = protocol.on_close(4002)
    assert decision.action is CloseAction.STOP and "2 retries for client-bug" in decision.detail


def test_reconnect_attempts_are_bounded_and_reset_by_a_ready_connection():
    protocol = ready_session(max_reconnect_attempts=2)
    assert [protocol.on_close(None).attempts for _ in range(2)] == [1, 2]
    # A connection that reached Ready starts the count again.
    protocol.connecting()
    protocol.connected()
    protocol.receive_text(frame(9, None), 0.0)
    assert protocol.on_close(None).attempts == 1
    protocol.connecting()
    assert protocol.on_close(None).attempts == 2
    protocol.connecting()
    decision = protocol.on_close(None)
    assert decision.action is CloseAction.STOP and decision.attempts == 2
    assert "2 reconnect attempts" in decision.detail


def test_auto_reconnect_off_stops_on_a_resumable_code():
    protocol = ready_session(auto_reconnect=False)
    decision = protocol.on_close(4015)
    assert decision.action is CloseAction.STOP and decision.detail == "Auto-reconnect is off."


def test_start_forgets_the_last_session():
    protocol = ready_session()
    protocol.receive_text(frame(5, {"speaking": 1, "ssrc": 9}, seq=5), 0.0)
    protocol.on_close(None)
    protocol.start(STATE)
    assert (protocol.seq_ack, protocol.ssrc, protocol.session_ready, protocol.attempts) == (-1, None, False, 0)
    assert protocol.status is Status.CONNECTING


def test_a_second_hello_restarts_heartbeats_without_identifying_again():
    protocol = ready_session()
    events = protocol.receive_text(hello(500), 10.0)
    assert isinstance(events[0], HelloReceived) and events[0].interval == 0.5
    assert protocol.data_to_send() == [] and protocol.next_heartbeat_at == 10.0


def test_events_and_protocol_never_show_the_token_or_session_id():
    protocol = connected()
    shown = [repr(e) for e in protocol.receive_text(hello(), 0.0)]
    shown += [repr(e) for e in protocol.receive_text(ready(), 0.0)]
    shown += [repr(protocol.on_close(4006)), repr(protocol.state), repr(protocol)]
    for text in shown:
        assert "tok-secret" not in text and "sess-secret" not in text


def test_backoff_delay_grows_caps_and_jitters():
    assert [backoff_delay(n, 0.5, 30.0, 1.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(100, 0.5, 30.0, 1.0) == 30.0
    assert backoff_delay(1, 0.5, 30.0, 0.5) == 0.25


def test_encode_frame_picks_binary_for_binary_ops_and_bytes():
    from fastvoice.gateway_messages import GatewayMessageDataDaveMLSKeyPackage, GatewayMessageDataUnknown

    assert encode_frame(26, GatewayMessageDataDaveMLSKeyPackage(b"kp")) == b"\x1akp"
    assert encode_frame(40, b"\x01") == b"(\x01"
    assert encode_frame(40, GatewayMessageDataUnknown(40, b"\x02")) == b"(\x02"
    assert json.loads(encode_frame(5, {"speaking": 1, "delay": 0, "ssrc": 3})) == {
        "op": 5, "d": {"speaking": 1, "delay": 0, "ssrc": 3}
    }


def _fuzz_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ci", "fuzz.py")
    spec = importlib.util.spec_from_file_location("_fuzz_gateway_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fuzz_target_runs_its_seeds_and_catches_a_wrong_decision(monkeypatch):
    fuzz = _fuzz_module()
    seeds = fuzz.corpus("gateway_protocol")
    assert len(seeds) >= 3
    for seed in seeds:
        fuzz.fuzz_gateway_protocol(seed)

    # A protocol that resumes a session that was never ready (or after a new-session code) is caught.
    original = GatewayProtocol.on_close

    def resumes_too_often(self, code, zombie=False):
        decision = original(self, code, zombie)
        if decision.action is CloseAction.IDENTIFY:
            self.resume = True
            return type(decision)(CloseAction.RESUME, decision.entry, decision.behaviour, decision.attempts)
        return decision

    monkeypatch.setattr(GatewayProtocol, "on_close", resumes_too_often)
    with pytest.raises(AssertionError):
        for seed in seeds:
            fuzz.fuzz_gateway_protocol(seed)
