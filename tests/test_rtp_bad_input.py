"""Whatever bytes arrive, depacketize returns a Packet, None, or raises DecryptionFailedError."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
from fastvoice import DecryptionFailedError
from fastvoice.ipdiscovery import build_ip_discovery_response

KEY = bytes(range(32))
modes = pytest.mark.parametrize("mode", ref.ALL_MODES)
needs_aes = pytest.mark.skipif(
    not __import__("fastvoice").rtp.aes256gcm_available(), reason="CPU lacks AES-GCM support in libsodium"
)

#: The hypothesis tests draw their mode from one of two groups, so that on a CPU without
#: AES-GCM its group is reported as skipped instead of passing without testing anything.
mode_groups = pytest.mark.parametrize("modes", [
    pytest.param((ref.AES,), marks=needs_aes, id="aes-gcm"),
    pytest.param(tuple(m for m in ref.ALL_MODES if m != ref.AES), id="other-modes"),
])


def _skip_aes(rtp, mode):
    if mode == ref.AES and not rtp.aes256gcm_available():
        pytest.skip("no AES-GCM on this CPU")


def outcome(depacketizer, data):
    """'packet', 'none' or 'failed' - any other exception fails the test."""
    try:
        result = depacketizer.depacketize(data)
    except DecryptionFailedError:
        return "failed"
    return "none" if result is None else "packet"


@modes
def test_not_audio_is_none(rtp, mode):
    _skip_aes(rtp, mode)
    d = rtp.Depacketizer(mode, KEY)
    good = ref.build_packet(mode, KEY, 1, 2, 3, b"opus", suffix_nonce=bytes(24))
    assert outcome(d, b"") == "none"
    assert outcome(d, good[:11]) == "none"  # shorter than an RTP header
    assert outcome(d, bytes([0x40]) + good[1:]) == "none"  # version 1
    assert outcome(d, bytes([good[0], 0x60]) + good[2:]) == "none"  # payload type 96
    for pt in range(200, 205):  # RTCP, tested on the unmasked byte
        assert outcome(d, bytes([0x80, pt]) + bytes(30)) == "none"
    assert outcome(d, build_ip_discovery_response(3, "203.0.113.9", 50000)) == "none"
    marked = bytes([good[0], 0xF8]) + good[2:]  # marker bit set: still audio, but the AAD changed
    assert outcome(d, marked) == ("failed" if mode in ref.RTPSIZE_MODES or mode == ref.XSALSA else "packet")


@modes
def test_forged_truncated_wrong_key(rtp, mode):
    _skip_aes(rtp, mode)
    d = rtp.Depacketizer(mode, KEY)
    good = ref.build_packet(mode, KEY, 1, 2, 3, b"some opus bytes", suffix_nonce=os.urandom(24), csrcs=(9,),
                            ext_profile=0xBEDE, ext_body=b"\x00" * 8)
    assert outcome(d, good) == "packet"
    # The AEAD modes authenticate the header (AAD) and xsalsa20_poly1305 uses it as the nonce;
    # the suffix and lite modes leave the fixed header unauthenticated, by design.
    first = 0 if mode in ref.RTPSIZE_MODES or mode == ref.XSALSA else 12
    for i in range(first, len(good)):
        # Flip each byte in turn.
        forged = bytearray(good)
        forged[i] ^= 0x01
        assert outcome(d, bytes(forged)) in ("failed", "none")
    for cut in range(12, len(good)):
        assert outcome(d, good[:cut]) in ("failed", "none")
    assert outcome(rtp.Depacketizer(mode, bytes(32)), good) == "failed"


@modes
def test_authenticated_but_inconsistent(rtp, mode):
    # A sender with the key can still write lies into the header: an extension or padding
    # longer than what was encrypted. That is a DecryptionFailedError, never an IndexError.
    _skip_aes(rtp, mode)
    d = rtp.Depacketizer(mode, KEY)
    lying_extension = struct.pack(">HH", 0xBEDE, 100)  # claims 400 bytes of extension body
    with pytest.raises(DecryptionFailedError, match="extension"):
        d.depacketize(_seal(mode, ref.rtp_header(1, 2, 3, extension=True), lying_extension, b"abc"))
    for count in (0, 200):  # a padding count of zero, and one longer than the payload
        with pytest.raises(DecryptionFailedError, match="padding"):
            d.depacketize(_seal(mode, ref.rtp_header(1, 2, 3, padding=True), b"", b"xyz" + bytes([count])))
    honest = _seal(mode, ref.rtp_header(1, 2, 3, padding=True), b"", b"xyz\x00\x02")
    assert d.depacketize(honest).opus == b"xyz"


def _seal(mode, header, preamble, plaintext):
    """Seal ``plaintext`` under ``header`` by the mode's rules, whatever the header claims.

    ``preamble`` is the extension preamble: part of the AAD in the rtpsize modes, the
    start of the encrypted part in the legacy ones.
    """
    import nacl.secret
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    suffix = b"\x00\x00\x00\x07"
    if mode == ref.AES:
        return header + preamble + AESGCM(KEY).encrypt(suffix + bytes(8), plaintext, header + preamble) + suffix
    if mode == ref.XCHACHA:
        return header + preamble + ref.xchacha_encrypt(KEY, suffix + bytes(20), plaintext, header + preamble) + suffix
    box = nacl.secret.SecretBox(KEY)
    if mode == ref.XSALSA:
        return header + box.encrypt(preamble + plaintext, header + bytes(12)).ciphertext
    if mode == ref.XSALSA_SUFFIX:
        return header + box.encrypt(preamble + plaintext, bytes(24)).ciphertext + bytes(24)
    return header + box.encrypt(preamble + plaintext, suffix + bytes(20)).ciphertext + suffix


@modes
def test_random_bytes_every_length(rtp, mode):
    _skip_aes(rtp, mode)
    d = rtp.Depacketizer(mode, KEY)
    rng = random.Random(20261123)
    seen = set()
    for n in range(0, 2001):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        seen.add(outcome(d, data))
        # and the same bytes dressed as RTP audio, so they reach the decryption stage
        if n >= 2:
            dressed = bytes([0x80 | (data[0] & 0x3F), 0x78 | (data[1] & 0x80)]) + data[2:]
            assert outcome(d, dressed) in ("none", "failed")
    assert "none" in seen


@mode_groups
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), draw=st.data())
def test_hypothesis_garbage(rtp, modes, data, draw):
    mode = draw.draw(st.sampled_from(modes), label="mode")
    d = rtp.Depacketizer(mode, KEY)
    assert outcome(d, data) in ("none", "failed")
    if len(data) >= 2:
        assert outcome(d, bytes([0x80 | (data[0] & 0x3F), 0x78]) + data[2:]) in ("none", "failed")


def test_non_buffer_input_is_type_error(rtp):
    d = rtp.Depacketizer(ref.XCHACHA, KEY)
    for bad in (None, 5, "text"):
        with pytest.raises(TypeError):
            d.depacketize(bad)
