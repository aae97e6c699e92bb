"""The packet core against an independent implementation of PROTOCOL.md (both twins)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
from fastvoice import EncryptionMode

KEY = bytes(range(1, 33))
SSRC = 0xDEADBEEF

needs_aes = pytest.mark.skipif(
    not __import__("fastvoice").rtp.aes256gcm_available(), reason="CPU lacks AES-GCM support in libsodium"
)

#: The hypothesis tests draw their mode from one of two groups, so that on a CPU without
#: AES-GCM its group is reported as skipped instead of passing without testing anything.
mode_groups = pytest.mark.parametrize("modes", [
    pytest.param((ref.AES,), marks=needs_aes, id="aes-gcm"),
    pytest.param(tuple(m for m in ref.ALL_MODES if m != ref.AES), id="other-modes"),
])


def modes_param(modes=ref.ALL_MODES):
    return pytest.mark.parametrize(
        "mode", [pytest.param(m, marks=needs_aes) if m == ref.AES else m for m in modes]
    )


class FixedNonces:
    """Deterministic stand-in for os.urandom in the suffix mode."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, n: int) -> bytes:
        assert n == 24
        self.count += 1
        return struct.pack(">I", self.count) * 6


def expected_fields(pkt, seq, ts, payload, *, marker=False, csrcs=(), profile=None, ext=b""):
    assert pkt is not None
    assert pkt.sequence == seq
    assert pkt.timestamp == ts
    assert pkt.ssrc == SSRC
    assert pkt.opus == payload
    assert pkt.marker is marker
    assert pkt.payload_type == 0x78
    assert pkt.csrcs == tuple(csrcs)
    assert pkt.extension_profile == profile
    assert pkt.extension == ext


# --- known answers: fastvoice's packets equal the reference's, byte for byte ---

@modes_param()
@pytest.mark.parametrize(
    "seq, ts, counter",
    [(0, 0, 0), (65534, 4294967295 - 960, 4294967294), (12345, 987654321, 77)],
)
def test_packetize_matches_reference(rtp, monkeypatch, mode, seq, ts, counter):
    nonces = FixedNonces()
    monkeypatch.setattr(rtp.core, "_urandom", nonces)
    p = rtp.Packetizer(SSRC, mode, KEY, sequence=seq, timestamp=ts, nonce=counter)
    for i in range(4):
        payload = os.urandom(20 + i * 50)
        got = p.packetize(payload)
        s = (seq + i) & 0xFFFF
        t = (ts + 960 * i) & 0xFFFFFFFF
        c = (counter + i) & 0xFFFFFFFF
        want = ref.build_packet(mode, KEY, s, t, SSRC, payload, counter=c, suffix_nonce=struct.pack(">I", nonces.count) * 6)
        assert got == want, f"packet {i} differs in mode {mode}"
    assert p.sequence == (seq + 4) & 0xFFFF
    assert p.timestamp == (ts + 4 * 960) & 0xFFFFFFFF
    assert p.nonce == (counter + 4) & 0xFFFFFFFF


def test_xchacha_reference_agrees_with_pynacl_high_level():
    # The two independent XChaCha20 builders (cryptography+HChaCha20, PyNaCl's Aead) agree.
    payload = os.urandom(123)
    a = ref.build_packet(ref.XCHACHA, KEY, 7, 8, SSRC, payload, counter=9, csrcs=(1, 2), ext_profile=0xBEDE, ext_body=b"abcd", padding=3)
    b = ref.build_packet(ref.XCHACHA, KEY, 7, 8, SSRC, payload, counter=9, csrcs=(1, 2), ext_profile=0xBEDE, ext_body=b"abcd", padding=3, nacl_high_level=True)
    assert a == b


def test_hchacha20_draft_vector():
    # draft-irtf-cfrg-xchacha-03, section 2.2.1: validates the test-side XChaCha20.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert ref.hchacha20(key, nonce).hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"


@modes_param(ref.RTPSIZE_MODES)
def test_rtpsize_layout(rtp, mode):
    # header (AAD) || ciphertext || 16-byte tag || 4-byte big-endian nonce counter
    p = rtp.Packetizer(SSRC, mode, KEY, sequence=0x0102, timestamp=0x03040506, nonce=0x0A0B0C0D)
    payload = b"\x11" * 120
    pkt = p.packetize(payload)
    assert len(pkt) == 12 + 120 + 16 + 4
    assert pkt[:12] == bytes([0x80, 0x78, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0xDE, 0xAD, 0xBE, 0xEF])
    assert pkt[-4:] == bytes([0x0A, 0x0B, 0x0C, 0x0D])
    aad, plain = ref.open_rtpsize(mode, KEY, pkt)
    assert aad == pkt[:12] and plain == payload


# --- depacketize: everything a real server may send ---

@modes_param()
def test_depacketize_discord_style_packet(rtp, mode):
    # 0x90 first byte, a one-word 0xBEDE extension (the "8 unknown bytes" of py-cord), padding.
    payload = os.urandom(97)
    body = b"\x10\xff\x00\x00"
    dg = ref.build_packet(mode, KEY, 40000, 3_000_000_000, SSRC, payload, counter=5, suffix_nonce=os.urandom(24),
                          ext_profile=0xBEDE, ext_body=body, padding=7, marker=True, csrcs=(42,))
    pkt = rtp.Depacketizer(mode, KEY).depacketize(dg)
    expected_fields(pkt, 40000, 3_000_000_000, payload, marker=True, csrcs=(42,), profile=0xBEDE, ext=body)


@mode_groups
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    payload=st.binary(max_size=400),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    counter=st.integers(0, 0xFFFFFFFF),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    ext=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 8))),
    padding=st.integers(0, 255),
    marker=st.booleans(),
)
def test_depacketize_reference_property(rtp, modes, data, payload, seq, ts, counter, csrcs, ext, padding, marker):
    mode = data.draw(st.sampled_from(modes), label="mode")
    profile, words = ext if ext is not None else (None, 0)
    body = os.urandom(4 * words)
    dg = ref.build_packet(mode, KEY, seq, ts, SSRC, payload, counter=counter, suffix_nonce=os.urandom(24),
                          marker=marker, csrcs=tuple(csrcs), ext_profile=profile, ext_body=body, padding=padding)
    pkt = rtp.Depacketizer(mode, KEY).depacketize(dg)
    expected_fields(pkt, seq, ts, payload, marker=marker, csrcs=csrcs, profile=profile, ext=body if ext else b"")


@mode_groups
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    seq=st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0xFFFE, 0xFFFF])),
    ts=st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0xFFFFFFFF - 959, 0xFFFFFFFF - 960, 0xFFFFFFFF])),
    counter=st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0xFFFFFFFE, 0xFFFFFFFF])),
)
def test_round_trip_property(rtp, modes, data, payloads, seq, ts, counter):
    mode = data.draw(st.sampled_from(modes), label="mode")
    key = os.urandom(32)
    p = rtp.Packetizer(SSRC, mode, key, sequence=seq, timestamp=ts, nonce=counter)
    d = rtp.Depacketizer(mode, key)
    for i, payload in enumerate(payloads):
        pkt = d.depacketize(p.packetize(payload))
        expected_fields(pkt, (seq + i) & 0xFFFF, (ts + 960 * i) & 0xFFFFFFFF, payload)


@mode_groups
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    payload=st.binary(max_size=500),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    counter=st.integers(0, 0xFFFFFFFF),
)
def test_twins_byte_identical(rtp_c, rtp_py, monkeypatch, modes, data, payload, seq, ts, counter):
    mode = data.draw(st.sampled_from(modes), label="mode")
    key = os.urandom(32)
    nonce = os.urandom(24)
    monkeypatch.setattr(rtp_c.core, "_urandom", lambda n: nonce)
    monkeypatch.setattr(rtp_py.core, "_urandom", lambda n: nonce)
    pc = rtp_c.Packetizer(SSRC, mode, key, sequence=seq, timestamp=ts, nonce=counter)
    pp = rtp_py.Packetizer(SSRC, mode, key, sequence=seq, timestamp=ts, nonce=counter)
    a, b = pc.packetize(payload), pp.packetize(payload)
    assert a == b
    assert (pc.sequence, pc.timestamp, pc.nonce) == (pp.sequence, pp.timestamp, pp.nonce)
    qa = rtp_c.Depacketizer(mode, key).depacketize(b)
    qb = rtp_py.Depacketizer(mode, key).depacketize(a)
    assert repr(qa) == repr(qb) and qa.opus == qb.opus == payload


@modes_param()
def test_packetize_accepts_buffers(rtp, mode):
    key = os.urandom(32)
    d = rtp.Depacketizer(mode, key)
    p = rtp.Packetizer(SSRC, mode, key)
    for buf in (bytearray(b"abc"), memoryview(b"xyzw"), b""):
        assert d.depacketize(p.packetize(buf)).opus == bytes(buf)
    assert d.depacketize(bytearray(p.packetize(b"q"))).opus == b"q"
    assert d.depacketize(memoryview(p.packetize(b"r"))).opus == b"r"


# --- errors: construction ---

def test_bad_arguments(rtp):
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        rtp.Packetizer(1, ref.XCHACHA, bytes(31))
    with pytest.raises(TypeError, match="secret_key"):
        rtp.Packetizer(1, ref.XCHACHA, 32)
    with pytest.raises(ValueError, match="unknown encryption mode 'nope'"):
        rtp.Depacketizer("nope", KEY)
    with pytest.raises(ValueError, match="not supported by the packet core"):
        rtp.Packetizer(1, "aead_aes256_gcm", KEY)
    with pytest.raises(ValueError, match="ssrc must be in 0..4294967295, got -1"):
        rtp.Packetizer(-1, ref.XCHACHA, KEY)
    p = rtp.Packetizer(1, ref.XCHACHA, list(KEY))  # op 4 gives the key as a list of ints
    with pytest.raises(ValueError, match="sequence must be in 0..65535, got 65536"):
        p.sequence = 65536
    with pytest.raises(TypeError, match="timestamp must be an int"):
        p.timestamp = "1"
    with pytest.raises(ValueError, match="exceeds the maximum"):
        p.packetize(bytes(70000))
    assert p.mode is EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
    assert "Packetizer(ssrc=1" in repr(p) and str(list(KEY)) not in repr(p)


def test_packet_value_semantics(rtp):
    a = rtp.Packet(1, 2, 3, b"op", csrcs=[5])
    b = rtp.Packet(1, 2, 3, b"op", False, 0x78, (5,), None, b"")
    assert a == b and a.csrcs == (5,)
    assert a != rtp.Packet(1, 2, 3, b"oq")
    with pytest.raises(TypeError):
        hash(a)
    assert "opus=<2 bytes>" in repr(a)


def test_packet_fields_are_validated(rtp):
    p = rtp.Packet(65535, 2**32 - 1, 2**32 - 1, b"", marker=1, payload_type=127)
    assert (p.sequence, p.timestamp, p.ssrc, p.marker, p.payload_type) == (65535, 2**32 - 1, 2**32 - 1, True, 127)
    with pytest.raises(ValueError, match="sequence must be in 0..65535, got 65536"):
        rtp.Packet(65536, 0, 0, b"")
    with pytest.raises(ValueError, match="payload_type must be in 0..127"):
        rtp.Packet(0, 0, 0, b"", payload_type=128)
    with pytest.raises(TypeError, match="ssrc must be an int"):
        p.ssrc = "5"
    with pytest.raises(ValueError, match="timestamp"):
        p.timestamp = -1
    p.sequence, p.marker = 9, 0
    assert (p.sequence, p.marker) == (9, False)


def test_payload_size_limit_is_exact(rtp):
    from fastvoice._rtp_common import MAX_PAYLOAD

    p = rtp.Packetizer(1, ref.XCHACHA, KEY)
    assert len(p.packetize(bytes(MAX_PAYLOAD))) == 12 + MAX_PAYLOAD + 16 + 4
    with pytest.raises(ValueError, match=f"{MAX_PAYLOAD + 1} bytes exceeds the maximum of {MAX_PAYLOAD}"):
        p.packetize(bytes(MAX_PAYLOAD + 1))
