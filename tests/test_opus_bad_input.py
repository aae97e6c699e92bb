"""Whatever bytes arrive, OpusDecoder.decode returns PCM or raises OpusDecodeError, as libopus decides."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opus_reference as ref
from fastvoice import OpusDecodeError
from test_opus_decoder import stream

OPUS_BAD_ARG, OPUS_INVALID_PACKET = -1, -4


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


def _truncated_multi_frame() -> bytes:
    packet = stream("multi-frame-120ms")[1]
    assert packet[0] & 3 == 3 and packet[1] & 0x80  # code 3, VBR: frame lengths precede the frames
    return packet[: len(packet) // 2]


BAD = {
    "empty": (b"", OPUS_BAD_ARG),
    "code 3 without its frame count": (b"\x03", OPUS_INVALID_PACKET),
    "code 3 with zero frames": (b"\x03\x00", OPUS_INVALID_PACKET),
    "code 1 with an odd body": (b"\x01\x00", OPUS_INVALID_PACKET),
    "code 2 with a cut length": (b"\x02\xff", OPUS_INVALID_PACKET),
    "code 2 with a length past the end": (b"\x02\x10\x00", OPUS_INVALID_PACKET),
    "180 ms (3 x 60 ms)": (bytes([3 << 3 | 3, 3]) + bytes(3), OPUS_INVALID_PACKET),
    "122.5 ms (49 x 2.5 ms)": (bytes([16 << 3 | 3, 49]) + bytes(49), OPUS_INVALID_PACKET),
    "code 3 padding past the end": (bytes([31 << 3 | 3, 0x41, 0xFF, 0xFF]), OPUS_INVALID_PACKET),
    "truncated code 3 packet": (None, OPUS_INVALID_PACKET),
    "over 1 MiB": (b"\xfc" + bytes(1 << 20), OPUS_BAD_ARG),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_packet_raises_a_named_error(opus, name):
    packet, code = BAD[name]
    if packet is None:
        packet = _truncated_multi_frame()
    decoder = opus.OpusDecoder()
    for fec in (False, True):
        with pytest.raises(OpusDecodeError) as info:
            decoder.decode(packet, fec=fec)
        assert info.value.code == code
        assert {-1: "OPUS_BAD_ARG", -4: "OPUS_INVALID_PACKET"}[code] in str(info.value)
        assert f"{len(packet)}-byte" in str(info.value) or len(packet) in (0, (1 << 20) + 1)
    if 0 < len(packet) < (1 << 20):
        assert ref.Decoder().decode(packet) == code  # libopus itself refuses it with the same code


def test_longest_packet_decodes(opus):
    # 2 x 60 ms (code 1): 120 ms, the most a packet may hold.
    packet = bytes([3 << 3 | 1]) + bytes(10)
    assert len(opus.OpusDecoder().decode(packet)) == 5760 * 2 * 2
    assert len(opus.OpusDecoder(8000, 1).decode(packet)) == 960 * 2


def test_state_unchanged_by_a_refused_packet(opus):
    packets = stream("silk-wideband-stereo-40ms")[:6]
    decoder, oracle = opus.OpusDecoder(), ref.Decoder()
    for i, packet in enumerate(packets):
        if i == 3:
            for bad, _ in BAD.values():
                if bad is not None:
                    with pytest.raises(OpusDecodeError):
                        decoder.decode(bad)
            assert len(decoder.decode(None)) == len(oracle.decode(None))  # still the last good duration
        assert decoder.decode(packet) == oracle.decode(packet)


@pytest.mark.parametrize("value", ["text", 5, 1.5, [1, 2], object()])
def test_not_bytes_is_a_type_error(opus, value):
    with pytest.raises(TypeError, match="bytes-like object or None, not"):
        opus.OpusDecoder().decode(value)


def _outcome(decoder, packet, fec=False):
    try:
        return decoder.decode(packet, fec=fec)
    except OpusDecodeError as exc:
        return exc.code, str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=400), st.booleans())
def test_random_bytes_as_libopus_decides(opus, packet, fec):
    decoder, oracle = opus.OpusDecoder(), ref.Decoder()
    got, expected = _outcome(decoder, packet, fec), oracle.decode(packet, fec=fec)
    if isinstance(expected, int):
        assert isinstance(got, tuple) and got[0] == expected
    else:
        assert got == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_packets_as_libopus_decides(opus, data):
    # Valid packets with a few bytes changed, cut or added: deeper into the decoder than random bytes.
    name = data.draw(st.sampled_from(["celt-fullband-stereo-64k-20ms", "silk-fec-20ms", "multi-frame-120ms",
                                      "hybrid-fullband-10ms"]))
    packets = stream(name)
    decoder, oracle = opus.OpusDecoder(), ref.Decoder()
    for _ in range(data.draw(st.integers(1, 6))):
        packet = bytearray(data.draw(st.sampled_from(packets)))
        for _ in range(data.draw(st.integers(0, 4))):
            pos = data.draw(st.integers(0, len(packet) - 1))
            action = data.draw(st.sampled_from(["set", "cut", "insert"]))
            if action == "set":
                packet[pos] = data.draw(st.integers(0, 255))
            elif action == "cut":
                del packet[pos:]
            else:
                packet.insert(pos, data.draw(st.integers(0, 255)))
            if not packet:
                packet.append(0)
        fec = data.draw(st.booleans())
        expected = oracle.decode(bytes(packet), fec=fec)
        got = _outcome(decoder, bytes(packet), fec)
        assert got == expected if not isinstance(expected, int) else got[0] == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["decode", "plc", "fec", "reset"]), st.integers(0, 40)), max_size=40),
       st.sampled_from([(48000, 2), (16000, 1), (8000, 2)]))
def test_any_sequence_of_calls_as_libopus(opus, calls, output):
    packets = stream("silk-fec-20ms") + stream("celt-lowdelay-5ms")[:8] + stream("silk-narrowband-mono-60ms")[:4]
    decoder, oracle = opus.OpusDecoder(*output), ref.Decoder(*output)
    for op, i in calls:
        packet = packets[i % len(packets)]
        if op == "reset":
            decoder.reset()
            oracle = ref.Decoder(*output)
            continue
        if op == "plc":
            packet = None
        assert decoder.decode(packet, fec=op == "fec") == oracle.decode(packet, fec=op == "fec")


def test_twins_agree_on_random_bytes(opus_c, opus_py):
    import random

    rng = random.Random(20261205)
    c, py = opus_c.OpusDecoder(), opus_py.OpusDecoder()
    for _ in range(3000):
        packet = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        fec = rng.random() < 0.2
        assert _outcome(c, packet, fec) == _outcome(py, packet, fec)


def _fuzz_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ci", "fuzz.py")
    spec = importlib.util.spec_from_file_location("_fuzz_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._init()
    return module


def test_fuzz_target_runs_its_seeds_and_catches_disagreeing_twins(opus_c, opus_py):
    fuzz = _fuzz_module()
    assert [t.IMPLEMENTATION for t in fuzz.OPUS_TWINS] == ["c", "py"]
    seeds = fuzz.corpus("opus")
    assert any(s[0] & fuzz.OPUS_RAW for s in seeds) and any(not s[0] & fuzz.OPUS_RAW for s in seeds)
    for seed in seeds:
        fuzz.fuzz_opus(seed)
    # a patched input decodes a real packet changed where it says
    base = fuzz.OPUS_BASES[0]
    assert fuzz._patched_packet(bytes([0, 1, 0xFF])) == base[:1] + bytes([base[1] ^ 0xFF]) + base[2:]
    assert fuzz._patched_packet(bytes([0, 7])) == base[:7]

    class Wrong:
        def decode(self, packet, fec=False):
            return b"not what libopus says"

        def reset(self):
            pass

    fuzz.OPUS_DECODERS[0][1] = Wrong()  # 0x24 % 6 == 0: the first output format's pair
    with pytest.raises(AssertionError, match="opus twins disagree"):
        fuzz.fuzz_opus(bytes([fuzz.OPUS_RAW | 4]) + stream("celt-fullband-stereo-64k-20ms")[0])
