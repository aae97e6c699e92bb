"""Decoding whatever a peer sends: GatewayDecodeError is the only exception, on both sides.

Hostile or broken JSON (numbers too large for a float, NaN/Infinity literals, deep nesting,
text that is not UTF-8, lone surrogates) must end as a dropped frame with a bounded message:
never an OverflowError that kills the client's reader, never a traceback in the test server.
"""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastvoice.errors import GatewayDecodeError, GatewayTimeoutError
from fastvoice.gateway import Gateway, GatewayConfig
from fastvoice.gateway_messages import (
    GatewayMessageData,
    Opcode,
    decode_client_binary,
    decode_message,
    decode_server_binary,
)
from fastvoice.testing import VoiceServer

HUGE = int("9" * 400)

# Every field name a known payload reads, so generated objects reach the field readers.
FIELDS = sorted({
    "server_id", "user_id", "session_id", "token", "max_dave_protocol_version", "protocol", "data", "address",
    "port", "mode", "ssrc", "ip", "modes", "t", "seq_ack", "secret_key", "dave_protocol_version", "speaking",
    "delay", "heartbeat_interval", "user_ids", "audio_codec", "video_codec", "protocol_version", "transition_id",
    "epoch",
})

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**450), max_value=10**450)
    | st.sampled_from([HUGE, -HUGE, 2**63, 2**64, -(2**63) - 1, 2**31, 0, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    # Every code point, lone surrogates included (json.dumps escapes them as \\udXXX).
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=6),
    max_leaves=12,
)
_payloads = _json | st.fixed_dictionaries({}, optional={name: _json for name in FIELDS})
_ops = st.sampled_from([int(op) for op in Opcode]) | st.integers(-3, 300) | st.sampled_from([HUGE, 2.5, "2", None])


# A valid ``d`` for every JSON op: the property test below replaces one field at a time.
VALID = {
    0: {"server_id": "1", "user_id": "2", "session_id": "s", "token": "t", "max_dave_protocol_version": 1},
    1: {"protocol": "udp", "data": {"address": "1.2.3.4", "port": 5, "mode": "aead_aes256_gcm_rtpsize"}},
    2: {"ssrc": 1, "ip": "1.2.3.4", "port": 5, "modes": ["aead_aes256_gcm_rtpsize"]},
    3: {"t": 1, "seq_ack": 2},
    4: {"mode": "aead_aes256_gcm_rtpsize", "secret_key": [1] * 32, "dave_protocol_version": 1},
    5: {"speaking": 1, "delay": 0, "ssrc": 1, "user_id": "3"},
    6: {"t": 1},
    7: {"server_id": "1", "session_id": "s", "token": "t", "seq_ack": 3},
    8: {"heartbeat_interval": 13750},
    9: None,
    11: {"user_ids": ["1", "2"]},
    12: {"user_id": "1", "audio_codec": "opus", "video_codec": ""},
    13: {"user_id": "1"},
    21: {"protocol_version": 1, "transition_id": 2},
    22: {"transition_id": 2},
    23: {"transition_id": 2},
    24: {"protocol_version": 1, "epoch": 1},
    31: {"transition_id": 2},
}
_hostile = (
    _scalars
    | st.sampled_from([
        HUGE, -HUGE, float("inf"), float("-inf"), float("nan"), 1e308, "\ud800", "a\udfffb", [float("nan")],
        [HUGE], {"data": HUGE}, ["\udbff"] * 3,
    ])
    | _json
)


def _replace_path(d, path, value):
    if not path:
        return value
    d = dict(d)
    d[path[0]] = _replace_path(d.get(path[0], {}), path[1:], value)
    return d


def _paths(d, prefix=()):
    if not isinstance(d, dict):
        return [prefix]
    out = [prefix]
    for key, value in d.items():
        out += _paths(value, prefix + (key,))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), op=st.sampled_from(sorted(VALID)), ensure_ascii=st.booleans())
def test_one_hostile_field_in_a_valid_payload_gives_only_gateway_decode_error(data, op, ensure_ascii):
    valid = VALID[op]
    decode_message(json.dumps({"op": op, "d": valid}))  # the baseline itself decodes
    path = data.draw(st.sampled_from(_paths(valid)), label="field")
    hostile = data.draw(_hostile, label="value")
    frame = json.dumps({"op": op, "d": _replace_path(valid, path, hostile), "seq": 1}, ensure_ascii=ensure_ascii)
    _decodes_or_refuses(decode_message, frame)


def _frame_text(op, d, seq, ensure_ascii: bool) -> str:
    frame = {"op": op, "d": d}
    if seq is not None:
        frame["seq"] = seq
    return json.dumps(frame, ensure_ascii=ensure_ascii)  # allow_nan: NaN/Infinity literals on purpose


def _decodes_or_refuses(decode, frame) -> None:
    try:
        message = decode(frame)
    except GatewayDecodeError as exc:
        assert len(str(exc)) < 300, "a decode error must stay short whatever the frame held"
        return
    assert isinstance(message.d, GatewayMessageData)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=_ops, d=_payloads, seq=st.none() | _scalars, ensure_ascii=st.booleans(), as_bytes=st.booleans())
def test_any_json_frame_decodes_or_raises_only_gateway_decode_error(op, d, seq, ensure_ascii, as_bytes):
    text = _frame_text(op, d, seq, ensure_ascii)
    if as_bytes:
        try:
            frame: str | bytes = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates unescaped: the bytes form is the "surrogatepass" one
            frame = text.encode("utf-8", "surrogatepass")
    else:
        frame = text
    _decodes_or_refuses(decode_message, frame)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
def test_arbitrary_bytes_and_text_only_raise_gateway_decode_error(blob):
    _decodes_or_refuses(decode_message, blob)
    if isinstance(blob, bytes):
        _decodes_or_refuses(decode_server_binary, blob)
        _decodes_or_refuses(decode_client_binary, blob)


@pytest.mark.parametrize("frame, expected", [
    ('{"op":8,"d":{"heartbeat_interval":%s}}' % ("9" * 400), "heartbeat_interval"),
    ('{"op":8,"d":{"heartbeat_interval":-%s}}' % ("9" * 400), "heartbeat_interval"),
    ('{"op":8,"d":{"heartbeat_interval":1e400}}', "out of the float range"),
    ('{"op":8,"d":{"heartbeat_interval":NaN}}', "NaN is not a JSON number"),
    ('{"op":8,"d":{"heartbeat_interval":Infinity}}', "Infinity is not a JSON number"),
    ('{"op":2,"d":{"ssrc":1,"ip":"1.2.3.4","port":-Infinity,"modes":[]}}', "Infinity"),
    ('{"op":99,"d":[NaN]}', "NaN"),
    ('{"op":2,"d":{"ssrc":%s,"ip":"1.2.3.4","port":1,"modes":[]}}' % ("9" * 4000), "ssrc"),
    ('{"op":6,"d":{"t":%s}}' % ("9" * 5000), "not valid JSON"),  # past Python's int digit limit
    ('{"op":2,"d":{"ssrc":1,"ip":"\\ud800","port":1,"modes":[]}}', "lone surrogate"),
    ('{"op":2,"d":{"ssrc":1,"ip":"1.2.3.4","port":1,"modes":["\\udfff"]}}', "lone surrogate"),
    ('{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"s","token":"\\udbff"}}', "lone surrogate"),
    ('{"op":8,"d":' + "[" * 100_000 + "]" * 100_000 + "}", "RecursionError"),
    ('{"op":8,"d":' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}", "RecursionError"),
    (b'{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":"\xff\xfe"}}', "UnicodeDecodeError"),
])
def test_hostile_numbers_literals_nesting_and_text_are_decode_errors(frame, expected):
    with pytest.raises(GatewayDecodeError) as info:
        decode_message(frame)
    assert expected in str(info.value)
    assert len(str(info.value)) < 300


def test_a_bug_in_a_payload_reader_still_surfaces_as_gateway_decode_error(monkeypatch):
    from fastvoice import gateway_messages

    def broken(cls, d):
        raise OverflowError("a reader forgot a case")

    monkeypatch.setattr(gateway_messages.GatewayMessageDataHello, "from_json", classmethod(broken))
    with pytest.raises(GatewayDecodeError, match=r"op 8 payload could not be decoded \(OverflowError\)") as info:
        decode_message('{"op":8,"d":{"heartbeat_interval":1},"seq":7}')
    assert info.value.seq == 7
    assert isinstance(info.value.__cause__, OverflowError)


async def test_a_hello_with_a_400_digit_interval_is_dropped_and_open_names_the_real_stall(caplog):
    """The client drops the frame with a warning; its reader lives on, so open() times out
    waiting for a Hello (what really happened), not blaming heartbeats."""
    caplog.set_level(logging.DEBUG, logger="fastvoice")
    async with VoiceServer() as server:
        server.heartbeat_interval = HUGE  # the knob is not re-validated: Hello carries it as is
        state = server.make_state(guild_id=1, user_id=2)
        gateway = Gateway(config=GatewayConfig(open_timeout=0.5, backoff_base=0.01))
        with pytest.raises(GatewayTimeoutError, match="WAITING_FOR_HELLO"):
            await gateway.open(state)
        assert gateway.status.name == "DISCONNECTED"
    dropped = [r for r in caplog.records if "undecodable frame" in r.getMessage()]
    assert dropped and "heartbeat_interval" in dropped[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], (
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    )
    assert not any("heartbeat" in r.getMessage() and "missed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("frame", [
    '{"op":8,"d":{"heartbeat_interval":%s}}' % ("9" * 400),
    '{"op":3,"d":{"t":%s,"seq_ack":-1}}' % ("9" * 400),
    '{"op":3,"d":{"t":NaN}}',
    '{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"s","token":"\\ud800"}}',
    '{"op":1,"d":' + "[" * 100_000 + "]" * 100_000 + "}",
])
async def test_the_test_server_answers_an_undecodable_client_frame_with_4002_and_no_traceback(frame, caplog):
    caplog.set_level(logging.DEBUG, logger="fastvoice")
    async with VoiceServer() as server:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "/?v=8") as ws:
                hello = await ws.receive_json(timeout=5)
                assert hello["op"] == 8
                await ws.send_str(frame)
                closed = await ws.receive(timeout=5)
                assert closed.type is aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 4002
        await server.wait_for(lambda: server.connections[0].closed)
        assert server.connections[0].close_code == 4002
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
