"""The gateway messages' wire format, frozen: every encoding and every decode outcome (value or
error message) of a few thousand generated frames must stay byte for byte what it was.

The cases are generated here; a digest of each case and of its outcome was recorded in
``golden/gateway_messages.json`` (``python tests/test_messages_golden.py`` writes the file
anew, after a deliberate change of the wire format only). The field-by-field readers and
writers of ``fastvoice.gateway_messages`` can then be rewritten without changing a byte or an
error message.
"""

from __future__ import annotations

import hashlib
import json
import re
import os

import pytest

from fastvoice import gateway_messages as gm
from fastvoice.errors import GatewayDecodeError

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "gateway_messages.json")

# A valid ``d`` per JSON op (PROTOCOL.md section 2), which the cases below break field by field.
VALID = {
    0: {"server_id": "41771983423143937", "user_id": "104694319306248192", "session_id": "s", "token": "t",
        "max_dave_protocol_version": 1},
    1: {"protocol": "udp", "data": {"address": "1.2.3.4", "port": 5000, "mode": "aead_xchacha20_poly1305_rtpsize"}},
    2: {"ssrc": 1, "ip": "127.0.0.1", "port": 1234, "modes": ["aead_aes256_gcm_rtpsize", "xsalsa20_poly1305"]},
    3: {"t": 1501184119561, "seq_ack": 10},
    4: {"mode": "aead_aes256_gcm_rtpsize", "secret_key": list(range(32)), "dave_protocol_version": 1},
    5: {"speaking": 5, "delay": 0, "ssrc": 7, "user_id": "123"},
    6: {"t": 1234},
    7: {"server_id": "5", "session_id": "s", "token": "t", "seq_ack": 17},
    8: {"heartbeat_interval": 13750.5},
    9: None,
    11: {"user_ids": ["1", "18446744073709551615"]},
    12: {"user_id": "7", "audio_codec": "opus", "video_codec": "H264"},
    13: {"user_id": "9"},
    21: {"protocol_version": 1, "transition_id": 3},
    22: {"transition_id": 3},
    23: {"transition_id": 65535},
    24: {"protocol_version": 1, "epoch": 1},
    31: {"transition_id": 0},
}

BAD = [None, True, 0, -1, 1.5, 2**64, 10**30, "", "x", "12", "\ud800", "9" * 21, [], ["1", 2], {}, {"a": 1},
       list(range(32)), list(range(31)) + [256]]


def _outcome(decode, frame):
    try:
        msg = decode(frame)
    except GatewayDecodeError as exc:
        return ["error", str(exc), exc.seq]
    again = None
    if not msg.binary:
        again = gm.encode_message(msg.op, msg.d, msg.seq)
    return ["ok", _canonical(repr(msg)), type(msg.d).__name__, again]


def _canonical(text: str) -> str:
    """``text`` with combined SpeakingFlags written in one order: Python 3.10 lists the members of
    a flag repr from the highest value, 3.11 on from the lowest (the outcomes were recorded on 3.11)."""
    def members(match: re.Match) -> str:
        names = sorted(match.group(1).split("|"), key=lambda name: gm.SpeakingFlags[name].value)
        return f"<SpeakingFlags.{'|'.join(names)}: {match.group(2)}>"

    return re.sub(r"<SpeakingFlags\.([A-Z_|]+): (\d+)>", members, text)


def _json_frames():
    frames = []
    for op, d in VALID.items():
        frames.append(json.dumps({"op": op, "d": d, "seq": 4}))
        for other in (None, 5, "s", [], {}):
            frames.append(json.dumps({"op": op, "d": other}))
        if not isinstance(d, dict):
            continue
        names = list(d)
        for name in names:
            broken = dict(d)
            del broken[name]
            frames.append(json.dumps({"op": op, "d": broken}))
            for value in BAD:
                frames.append(json.dumps({"op": op, "d": {**d, name: value}}))
        for i, first in enumerate(names):  # two faults: which one is reported
            for second in names[i + 1:]:
                for value in ([], "x", None):
                    frames.append(json.dumps({"op": op, "d": {**d, first: value, second: value}}))
                broken = {k: v for k, v in d.items() if k not in (first, second)}
                frames.append(json.dumps({"op": op, "d": broken}))
        if op == 1:
            for name in VALID[1]["data"]:
                for value in BAD:
                    frames.append(json.dumps({"op": 1, "d": {**d, "data": {**d["data"], name: value}}}))
    frames += [json.dumps({"op": op, "d": {"transition_id": 1}}) for op in range(25, 32)]
    frames += [json.dumps({"op": 12, "d": {"audio_ssrc": 5}}), '{"op":3,"d":99}', '{"op":6,"d":99}',
               '{"op":3,"d":true}', '{"op":6,"d":1.5}', '{"op":18,"d":{"x":[1]},"seq":2}']
    return frames


def _binary_frames():
    payloads = [b"", b"\x00", b"\x01", b"\x02", b"\x00\x07", b"\x01props", b"\xff\xffcommit", b"\x00\x07w", b"ext"]
    return [bytes([op]) + p for op in (5, 18, 25, 26, 27, 28, 29, 30, 31, 99) for p in payloads]


def _typed():
    key = bytes(range(32))
    return [
        gm.GatewayMessageDataIdentify(1, 2, "s", "t"),
        gm.GatewayMessageDataIdentify(2**64 - 1, 0, "s", "t", 0),
        gm.GatewayMessageDataIdentify(-1, 2, "s", "t"),
        gm.GatewayMessageDataIdentify(1, True, "s", "t"),
        gm.GatewayMessageDataSelectProtocol(gm.Protocol.UDP, gm.GatewayMessageDataSelectProtocolData("::1", 1, "m")),
        gm.GatewayMessageDataSelectProtocol("tcp", gm.GatewayMessageDataSelectProtocolData("a", 65535, "m")),
        gm.GatewayMessageDataReady(1, "1.2.3.4", 5, ["a", "b"]),
        gm.GatewayMessageDataReady(1, "1.2.3.4", 5, []),
        gm.GatewayMessageDataHeartbeat(5),
        gm.GatewayMessageDataHeartbeat(5, -1),
        gm.GatewayMessageDataSessionDescription("m", key),
        gm.GatewayMessageDataSessionDescription("m", key, 1),
        gm.GatewayMessageDataSessionDescription("m", b"short"),
        gm.GatewayMessageDataSpeaking(gm.SpeakingFlags.MICROPHONE, 7),
        gm.GatewayMessageDataSpeaking(gm.SpeakingFlags(5), 7, 0, 123),
        gm.GatewayMessageDataSpeaking(gm.SpeakingFlags(0), 7, None, -5),
        gm.GatewayMessageDataHeartbeatACK(9),
        gm.GatewayMessageDataResume(5, "s", "t"),
        gm.GatewayMessageDataResume(5, "s", "t", None),
        gm.GatewayMessageDataResume(5, "s", "t", 17),
        gm.GatewayMessageDataHello(13750.5),
        gm.GatewayMessageDataHello(1),
        gm.GatewayMessageDataResumed(),
        gm.GatewayMessageDataClientsConnect([]),
        gm.GatewayMessageDataClientsConnect([1, 2**64 - 1]),
        gm.GatewayMessageDataClientsConnect([1, 2**64]),
        gm.GatewayMessageDataClientConnect(5),
        gm.GatewayMessageDataClientConnect(5, "opus", "H264"),
        gm.GatewayMessageDataClientDisconnect(9),
        gm.GatewayMessageDataClientDisconnect(-9),
        gm.GatewayMessageDataDavePrepareTransition(1, 3),
        gm.GatewayMessageDataDaveExecuteTransition(3),
        gm.GatewayMessageDataDaveTransitionReady(3),
        gm.GatewayMessageDataDavePrepareEpoch(1, 1),
        gm.GatewayMessageDataDaveMLSInvalidCommitWelcome(65535),
        gm.GatewayMessageDataDaveMLSExternalSender(b"ext"),
        gm.GatewayMessageDataDaveMLSKeyPackage(b"kp"),
        gm.GatewayMessageDataDaveMLSProposals(0, b""),
        gm.GatewayMessageDataDaveMLSProposals(1, b"props"),
        gm.GatewayMessageDataDaveMLSProposals(2, b""),
        gm.GatewayMessageDataDaveMLSCommitWelcome(b"cw"),
        gm.GatewayMessageDataDaveMLSAnnounceCommitTransition(0x0102, b"commit"),
        gm.GatewayMessageDataDaveMLSAnnounceCommitTransition(65536, b"commit"),
        gm.GatewayMessageDataDaveMLSWelcome(7, b"w"),
        gm.GatewayMessageDataDaveMLSWelcome(-1, b"w"),
        gm.GatewayMessageDataUnknown(18, {"a": [1]}),
        gm.GatewayMessageDataUnknown(40, b"\x01\x02"),
    ]


def _encoded(data):
    out = []
    for encode in (
        lambda: gm.encode_message(data.OPCODE if data.OPCODE >= 0 else data.op, data, 3),
        lambda: gm.encode_client_binary(data.OPCODE if data.OPCODE >= 0 else data.op, data).hex(),
        lambda: gm.encode_server_binary(70000, data.OPCODE if data.OPCODE >= 0 else data.op, data).hex(),
    ):
        try:
            out.append(encode())
        except (TypeError, ValueError) as exc:
            out.append([type(exc).__name__, str(exc)])
    return out


def outcomes():
    """Every case's outcome, keyed by a readable description of the case."""
    found = {}
    for frame in _json_frames():
        found["json " + frame] = _outcome(gm.decode_message, frame)
    for frame in _binary_frames():
        found["client " + frame.hex()] = _outcome(gm.decode_client_binary, frame)
        found["server " + frame.hex()] = _outcome(gm.decode_server_binary, b"\x01\x02" + frame)
    for data in _typed():
        found["encode " + _canonical(repr(data))] = _encoded(data)
    return found


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def digests(found):
    return {_digest(key): _digest(value) for key, value in found.items()}


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN, encoding="utf-8") as fh:
        return json.load(fh)


def test_the_cases_cover_every_message_class():
    found = outcomes()
    kinds = {v[2] for v in found.values() if v[0] == "ok"}
    encoded = {k.split("(")[0].removeprefix("encode ") for k in found if k.startswith("encode ")}
    for name in gm.__all__:
        nested = ("GatewayMessageData", "GatewayMessageDataSelectProtocolData")
        if name.startswith("GatewayMessageData") and name not in nested:
            assert name in kinds | encoded, name
    assert len(found) > 1000
    assert sum(v[0] == "error" for v in found.values() if isinstance(v[0], str)) > 800


def test_every_outcome_is_what_was_recorded(golden):
    found = outcomes()
    now = digests(found)
    assert len(now) == len(found) == len(golden)
    missing = [key for key in found if _digest(key) not in golden]
    assert not missing, f"{len(missing)} cases were not recorded, e.g. {missing[0]!r}"
    changed = [key for key in found if golden[_digest(key)] != now[_digest(key)]]
    assert not changed, f"{len(changed)} outcomes changed, e.g. {changed[0]!r} now gives {found[changed[0]]}"


if __name__ == "__main__":
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w", encoding="utf-8") as fh:
        json.dump(digests(outcomes()), fh, indent=0, sort_keys=True)
        fh.write("\n")
    print(f"wrote {GOLDEN}")


# The ``d`` keys of every JSON op as PROTOCOL.md section 2's table writes them.
PROTOCOL_KEYS = [
    (gm.GatewayMessageDataIdentify(1, 2, "s", "t", 1),
     ["server_id", "user_id", "session_id", "token", "max_dave_protocol_version"]),
    (gm.GatewayMessageDataSelectProtocol("udp", gm.GatewayMessageDataSelectProtocolData("a", 1, "m")),
     ["protocol", "data"]),
    (gm.GatewayMessageDataReady(1, "a", 2, ["m"]), ["ssrc", "ip", "port", "modes"]),
    (gm.GatewayMessageDataHeartbeat(1, -1), ["t", "seq_ack"]),
    (gm.GatewayMessageDataSessionDescription("m", bytes(32), 1), ["mode", "secret_key", "dave_protocol_version"]),
    (gm.GatewayMessageDataSpeaking(gm.SpeakingFlags(1), 3, delay=0), ["speaking", "delay", "ssrc"]),
    (gm.GatewayMessageDataSpeaking(gm.SpeakingFlags(1), 3, user_id=4), ["speaking", "ssrc", "user_id"]),
    (gm.GatewayMessageDataHeartbeatACK(1), ["t"]),
    (gm.GatewayMessageDataResume(1, "s", "t", 5), ["server_id", "session_id", "token", "seq_ack"]),
    (gm.GatewayMessageDataHello(1.5), ["heartbeat_interval"]),
    (gm.GatewayMessageDataClientsConnect([1]), ["user_ids"]),
    (gm.GatewayMessageDataClientDisconnect(1), ["user_id"]),
    (gm.GatewayMessageDataDavePrepareTransition(1, 2), ["protocol_version", "transition_id"]),
    (gm.GatewayMessageDataDaveExecuteTransition(2), ["transition_id"]),
    (gm.GatewayMessageDataDaveTransitionReady(2), ["transition_id"]),
    (gm.GatewayMessageDataDavePrepareEpoch(1, 1), ["protocol_version", "epoch"]),
    (gm.GatewayMessageDataDaveMLSInvalidCommitWelcome(2), ["transition_id"]),
]


@pytest.mark.parametrize("data, keys", PROTOCOL_KEYS, ids=[type(d).__name__ for d, _ in PROTOCOL_KEYS])
def test_every_json_payload_has_the_keys_protocol_md_lists_in_its_order(data, keys):
    wire = json.loads(gm.encode_message(data.OPCODE, data))
    assert wire["op"] == data.OPCODE and list(wire["d"]) == keys
    assert gm.decode_message(gm.encode_message(data.OPCODE, data)).d == data


def test_the_transition_id_messages_stay_distinct_types():
    shared = [gm.GatewayMessageDataDaveExecuteTransition, gm.GatewayMessageDataDaveTransitionReady,
              gm.GatewayMessageDataDaveMLSInvalidCommitWelcome]
    assert len({cls.OPCODE for cls in shared}) == 3
    assert shared[0](3) != shared[1](3)
    assert repr(shared[2](3)) == "GatewayMessageDataDaveMLSInvalidCommitWelcome(transition_id=3)"
    for cls in shared:
        assert gm.message_data_type(cls.OPCODE) is cls
        assert type(gm.decode_message(json.dumps({"op": cls.OPCODE, "d": {"transition_id": 3}})).d) is cls
