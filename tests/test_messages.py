"""Voice gateway message encoding and decoding (PROTOCOL.md section 2)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvoice.errors import GatewayDecodeError, VoiceError
from fastvoice.gateway_messages import (
    BINARY_OPCODES,
    GatewayMessageData,
    GatewayMessageDataClientConnect,
    GatewayMessageDataClientDisconnect,
    GatewayMessageDataClientsConnect,
    GatewayMessageDataDaveExecuteTransition,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSCommitWelcome,
    GatewayMessageDataDaveMLSExternalSender,
    GatewayMessageDataDaveMLSInvalidCommitWelcome,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataDaveMLSProposals,
    GatewayMessageDataDaveMLSWelcome,
    GatewayMessageDataDavePrepareEpoch,
    GatewayMessageDataDavePrepareTransition,
    GatewayMessageDataDaveTransitionReady,
    GatewayMessageDataHeartbeat,
    GatewayMessageDataHeartbeatACK,
    GatewayMessageDataHello,
    GatewayMessageDataIdentify,
    GatewayMessageDataReady,
    GatewayMessageDataResume,
    GatewayMessageDataResumed,
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSelectProtocolData,
    GatewayMessageDataSessionDescription,
    GatewayMessageDataSpeaking,
    GatewayMessageDataUnknown,
    Opcode,
    Protocol,
    SpeakingFlags,
    decode_client_binary,
    decode_message,
    decode_server_binary,
    encode_client_binary,
    encode_message,
    encode_server_binary,
    message_data_type,
)

PROTOCOL_OPS = {
    0: "IDENTIFY", 1: "SELECT_PROTOCOL", 2: "READY", 3: "HEARTBEAT", 4: "SESSION_DESCRIPTION", 5: "SPEAKING",
    6: "HEARTBEAT_ACK", 7: "RESUME", 8: "HELLO", 9: "RESUMED", 11: "CLIENTS_CONNECT", 13: "CLIENT_DISCONNECT",
    21: "DAVE_PREPARE_TRANSITION", 22: "DAVE_EXECUTE_TRANSITION", 23: "DAVE_TRANSITION_READY",
    24: "DAVE_PREPARE_EPOCH", 25: "DAVE_MLS_EXTERNAL_SENDER", 26: "DAVE_MLS_KEY_PACKAGE", 27: "DAVE_MLS_PROPOSALS",
    28: "DAVE_MLS_COMMIT_WELCOME", 29: "DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION", 30: "DAVE_MLS_WELCOME",
    31: "DAVE_MLS_INVALID_COMMIT_WELCOME",
}


def test_opcodes_match_the_protocol_table():
    for value, name in PROTOCOL_OPS.items():
        assert Opcode(value).name == name
        assert message_data_type(value) is not None, value
    # the seed's name for op 11 stays importable and means Clients Connect
    assert Opcode.GUILD_SYNC is Opcode.CLIENTS_CONNECT
    assert BINARY_OPCODES == {25, 26, 27, 28, 29, 30}
    for unknown in (10, 14, 15, 16, 17, 18, 19, 20, 32, 255):
        assert message_data_type(unknown) is None


def test_speaking_flags_and_protocol():
    assert SpeakingFlags.MICROPHONE == 1 and SpeakingFlags.SOUNDSHARE == 2 and SpeakingFlags.PRIORITY == 4
    assert SpeakingFlags.NONE == 0
    assert str(Protocol.UDP) == "udp"


def _wire(op, data, seq=None):
    return json.loads(encode_message(op, data, seq))


def test_identify_exact_json_with_string_snowflakes():
    data = GatewayMessageDataIdentify(
        guild_id=41771983423143937, user_id=104694319306248192, session_id="sess", token="tok",
        max_dave_protocol_version=1,
    )
    assert _wire(Opcode.IDENTIFY, data) == {
        "op": 0,
        "d": {
            "server_id": "41771983423143937",
            "user_id": "104694319306248192",
            "session_id": "sess",
            "token": "tok",
            "max_dave_protocol_version": 1,
        },
    }
    decoded = decode_message(encode_message(Opcode.IDENTIFY, data)).d
    assert decoded == data
    assert isinstance(decoded.guild_id, int)
    # the token and session id never show in a repr (logs)
    assert "tok" not in repr(data) and "sess" not in repr(data)


def test_identify_without_dave_leaves_the_field_out():
    data = GatewayMessageDataIdentify(1, 2, "s", "t")
    assert "max_dave_protocol_version" not in _wire(0, data)["d"]
    assert decode_message(encode_message(0, data)).d.max_dave_protocol_version is None


def test_resume_carries_seq_ack_not_seq():
    data = GatewayMessageDataResume(guild_id=5, session_id="s", token="t", seq_ack=17)
    assert _wire(Opcode.RESUME, data)["d"] == {"server_id": "5", "session_id": "s", "token": "t", "seq_ack": 17}
    assert decode_message(encode_message(7, data)).d == data


def test_heartbeat_v8_and_v4_forms():
    assert _wire(3, GatewayMessageDataHeartbeat(t=1501184119561, seq_ack=10))["d"] == {
        "t": 1501184119561, "seq_ack": 10,
    }
    assert _wire(3, GatewayMessageDataHeartbeat(t=99))["d"] == 99
    assert decode_message('{"op":3,"d":1234}').d == GatewayMessageDataHeartbeat(1234)
    assert decode_message('{"op":6,"d":{"t":1234}}').d == GatewayMessageDataHeartbeatACK(1234)
    assert decode_message('{"op":6,"d":1234}').d == GatewayMessageDataHeartbeatACK(1234)


def test_ready_ignores_heartbeat_interval_and_keeps_modes():
    msg = decode_message(
        '{"op":2,"d":{"ssrc":1,"ip":"127.0.0.1","port":1234,"modes":["aead_aes256_gcm_rtpsize"],'
        '"heartbeat_interval":1},"seq":1}'
    )
    assert msg.op is Opcode.READY and msg.seq == 1
    assert msg.d == GatewayMessageDataReady(1, "127.0.0.1", 1234, ["aead_aes256_gcm_rtpsize"])


def test_session_description_key_as_32_ints():
    key = bytes(range(32))
    data = GatewayMessageDataSessionDescription("aead_aes256_gcm_rtpsize", key, 1)
    wire = _wire(4, data, seq=3)
    assert wire == {
        "op": 4, "seq": 3,
        "d": {"mode": "aead_aes256_gcm_rtpsize", "secret_key": list(range(32)), "dave_protocol_version": 1},
    }
    assert decode_message(json.dumps(wire)).d == data
    assert key.hex() not in repr(data) and "secret_key" not in repr(data)


def test_speaking_client_and_server_forms():
    client = GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE, ssrc=7, delay=0)
    assert _wire(5, client)["d"] == {"speaking": 1, "delay": 0, "ssrc": 7}
    server = decode_message('{"op":5,"d":{"speaking":5,"ssrc":7,"user_id":"123"},"seq":10}')
    assert server.seq == 10
    assert server.d == GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE | SpeakingFlags.PRIORITY, 7, None, 123)


def test_select_protocol_roundtrip():
    data = GatewayMessageDataSelectProtocol(
        Protocol.UDP, GatewayMessageDataSelectProtocolData("1.2.3.4", 5000, "aead_xchacha20_poly1305_rtpsize")
    )
    assert _wire(1, data)["d"] == {
        "protocol": "udp", "data": {"address": "1.2.3.4", "port": 5000, "mode": "aead_xchacha20_poly1305_rtpsize"},
    }
    assert decode_message(encode_message(1, data)).d == data


@pytest.mark.parametrize(
    "data",
    [
        GatewayMessageDataHello(13750.5),
        GatewayMessageDataResumed(),
        GatewayMessageDataClientsConnect([1, 2**64 - 1]),
        GatewayMessageDataClientConnect(5, "opus", "H264"),
        GatewayMessageDataClientDisconnect(9),
        GatewayMessageDataDavePrepareTransition(1, 3),
        GatewayMessageDataDaveExecuteTransition(3),
        GatewayMessageDataDaveTransitionReady(3),
        GatewayMessageDataDavePrepareEpoch(1, 1),
        GatewayMessageDataDaveMLSInvalidCommitWelcome(65535),
    ],
)
def test_json_roundtrip(data):
    text = encode_message(data.OPCODE, data, seq=4)
    msg = decode_message(text)
    assert msg.d == data and msg.seq == 4 and msg.op == data.OPCODE


def test_community_op_12_of_another_shape_is_kept_as_unknown():
    msg = decode_message('{"op":12,"d":{"audio_ssrc":5,"video_ssrc":0},"seq":2}')
    assert msg.op == 12 and msg.seq == 2
    assert msg.d == GatewayMessageDataUnknown(12, {"audio_ssrc": 5, "video_ssrc": 0})
    full = decode_message('{"op":12,"d":{"user_id":"7","audio_ssrc":5}}')
    assert full.d == GatewayMessageDataClientConnect(7, "", "")


def test_resumed_is_null_and_clients_connect_strings():
    assert _wire(9, GatewayMessageDataResumed())["d"] is None
    assert _wire(11, GatewayMessageDataClientsConnect([5]))["d"] == {"user_ids": ["5"]}


@pytest.mark.parametrize(
    "data, payload",
    [
        (GatewayMessageDataDaveMLSExternalSender(b"ext"), b"ext"),
        (GatewayMessageDataDaveMLSKeyPackage(b"kp"), b"kp"),
        (GatewayMessageDataDaveMLSProposals(1, b"props"), b"\x01props"),
        (GatewayMessageDataDaveMLSCommitWelcome(b"cw"), b"cw"),
        (GatewayMessageDataDaveMLSAnnounceCommitTransition(0x0102, b"commit"), b"\x01\x02commit"),
        (GatewayMessageDataDaveMLSWelcome(7, b"w"), b"\x00\x07w"),
    ],
)
def test_binary_frames(data, payload):
    assert encode_server_binary(0x1234, data.OPCODE, data) == b"\x12\x34" + bytes([data.OPCODE]) + payload
    assert encode_client_binary(data.OPCODE, data) == bytes([data.OPCODE]) + payload
    server = decode_server_binary(b"\x12\x34" + bytes([data.OPCODE]) + payload)
    assert server.seq == 0x1234 and server.d == data and server.binary
    client = decode_client_binary(bytes([data.OPCODE]) + payload)
    assert client.seq is None and client.d == data


def test_server_binary_seq_wraps_to_u16():
    assert encode_server_binary(65536 + 5, 25, b"x")[:2] == b"\x00\x05"


def test_unknown_ops_decode_to_unknown_and_never_raise():
    msg = decode_message('{"op":18,"d":{"any":[1,2]},"seq":3}')
    assert msg.op == 18 and msg.seq == 3
    assert msg.d == GatewayMessageDataUnknown(18, {"any": [1, 2]})
    assert decode_message('{"op":15}').d == GatewayMessageDataUnknown(15, None)
    binary = decode_server_binary(b"\x00\x01\x63abc")
    assert binary.d == GatewayMessageDataUnknown(0x63, b"abc") and binary.d.binary
    # a JSON-only op in a binary frame is refused rather than guessed at
    with pytest.raises(GatewayDecodeError, match="JSON message but came in a binary frame"):
        decode_server_binary(b"\x00\x01\x05{}")
    # an unknown message round-trips
    assert decode_message(encode_message(18, msg.d)).d == msg.d


@pytest.mark.parametrize(
    "frame, fragment",
    [
        ("not json", "not valid JSON"),
        ("[1,2]", "JSON object"),
        ('{"d":{}}', "'op'"),
        ('{"op":"2","d":{}}', "'op'"),
        ('{"op":true,"d":{}}', "'op'"),
        ('{"op":2,"d":{},"seq":"x"}', "'seq'"),
        ('{"op":2,"d":null}', "JSON object"),
        ('{"op":2,"d":{"ssrc":"1","ip":"x","port":1,"modes":[]}}', "'ssrc'"),
        ('{"op":2,"d":{"ssrc":1,"ip":"x","port":1}}', "'modes' is missing"),
        ('{"op":2,"d":{"ssrc":-1,"ip":"x","port":1,"modes":[]}}', "0..4294967295"),
        ('{"op":4,"d":{"mode":"m","secret_key":[1,2]}}', "32 ints"),
        ('{"op":4,"d":{"mode":"m","secret_key":"abc"}}', "32 ints"),
        ('{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":"12a"}}', "snowflake"),
        ('{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":"99999999999999999999"}}', "out of range"),
        ('{"op":8,"d":{"heartbeat_interval":-5}}', "positive"),
        ('{"op":8,"d":{"heartbeat_interval":"x"}}', "positive"),
        ('{"op":8,"d":{"heartbeat_interval":true}}', "positive"),
        ('{"op":0,"d":{"server_id":"1","user_id":"2","session_id":3,"token":"t"}}', "'session_id'"),
        ('{"op":25,"d":{}}', "binary-only"),
        ('{"op":11,"d":{"user_ids":"1"}}', "list"),
    ],
)
def test_bad_frames_raise_a_clear_decode_error(frame, fragment):
    with pytest.raises(GatewayDecodeError) as info:
        decode_message(frame)
    assert fragment in str(info.value)
    assert isinstance(info.value, VoiceError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x00", b"\x00\x01", b"\x00\x01\x1b", b"\x00\x01\x1b\x07", b"\x00\x01\x1d\x01", b"\x00\x01\x1e"],
)
def test_bad_binary_frames_raise_decode_error(frame):
    with pytest.raises(GatewayDecodeError):
        decode_server_binary(frame)


def test_decode_errors_do_not_echo_secrets():
    frame = '{"op":4,"d":{"mode":"m","secret_key":"SECRETKEYBYTES"}'
    with pytest.raises(GatewayDecodeError) as info:
        decode_message(frame)  # truncated JSON
    assert "SECRET" not in str(info.value) and "position" in str(info.value)
    with pytest.raises(GatewayDecodeError) as info:
        decode_message(frame + "}")
    assert "SECRET" not in str(info.value) and "got a str" in str(info.value)


@pytest.mark.parametrize("op, field", [(0, "token"), (0, "session_id"), (7, "token"), (7, "session_id")])
def test_a_malformed_secret_field_is_named_but_its_value_never_shown(op, field):
    d = {"server_id": "1", "user_id": "2", "session_id": "s", "token": "t", "seq_ack": 3}
    d[field] = ["SECRET-VALUE-1234"]  # the wrong type, so the reader rejects it
    with pytest.raises(GatewayDecodeError) as info:
        decode_message(json.dumps({"op": op, "d": d}))
    assert repr(field) in str(info.value) and "got a list" in str(info.value)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("value, shown", [
    ("z" * 5000, "(5000 characters)"),
    (list(range(10_000)), "got a list of 10000 items"),
    ({str(i): i for i in range(300)}, "got a dict of 300 items"),
    (10**1000, "(1001 characters)"),
])
def test_a_rejected_value_is_shown_in_bounded_length(value, shown):
    frame = json.dumps({"op": 5, "d": {"speaking": value, "ssrc": 1, "user_id": "2"}})
    with pytest.raises(GatewayDecodeError) as info:
        decode_message(frame)
    assert shown in str(info.value) and len(str(info.value)) < 200


def test_encode_rejects_mismatched_ops_and_bad_values():
    with pytest.raises(ValueError, match="belongs to op 8"):
        encode_message(2, GatewayMessageDataHello(1.0))
    with pytest.raises(ValueError, match="0..255"):
        encode_message(256, None)
    with pytest.raises(TypeError, match="binary"):
        encode_message(25, GatewayMessageDataDaveMLSExternalSender(b""))
    with pytest.raises(ValueError, match="snowflake"):
        encode_message(13, GatewayMessageDataClientDisconnect(-1))
    with pytest.raises(ValueError, match="32 bytes"):
        encode_message(4, GatewayMessageDataSessionDescription("m", b"short"))
    with pytest.raises(ValueError, match="operation_type"):
        encode_client_binary(27, GatewayMessageDataDaveMLSProposals(2, b""))


def test_every_message_class_is_documented():
    import fastvoice.gateway_messages as gm

    for name in gm.__all__:
        obj = getattr(gm, name)
        assert getattr(obj, "__doc__", None), name


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(op=st.integers(-5, 300), d=_json_values, seq=_json_values)
def test_fuzz_json_decode_only_raises_decode_error(op, d, seq):
    frame = json.dumps({"op": op, "d": d, "seq": seq})
    try:
        msg = decode_message(frame)
    except GatewayDecodeError:
        return
    assert isinstance(msg.d, GatewayMessageData)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_binary_and_text_garbage_only_raises_decode_error(blob):
    for decode in (decode_server_binary, decode_client_binary):
        try:
            decode(blob)
        except GatewayDecodeError:
            pass
    try:
        decode_message(blob)
    except GatewayDecodeError:
        pass
