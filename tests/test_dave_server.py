"""The local server's MLS pieces on their own: encodings, signatures, parsing, and bad input."""

from __future__ import annotations

import os
import random

import davey
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fastvoice.testing._dave import (
    DaveCallGroup,
    DaveExternalSender,
    MLSDecodeError,
    is_dave_frame,
    key_package_user_id,
    parse_commit_welcome,
    proposal_ref,
)

CHANNEL = 987_654_321
GROUP_ID = CHANNEL.to_bytes(8, "big")


def test_external_sender_payload_is_the_mls_struct() -> None:
    sender = DaveExternalSender()
    payload = sender.payload
    # <V> with a 2-byte length (65 >= 64) holding an uncompressed P-256 point
    assert payload[:3] == b"\x40\x41\x04"
    assert payload[2:67] == sender.public_key
    assert payload[67:69] == b"\x00\x01"  # basic credential
    assert payload[69] == len(sender.identity) and payload[70:] == sender.identity


def test_add_proposal_is_signed_over_framed_content_tbs() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sender = DaveExternalSender(key)
    member = davey.DaveSession(1, 42, CHANNEL)
    key_package = member.get_serialized_key_package()
    message = sender.propose_add(GROUP_ID, 5, key_package)
    # version, wire format (public message), group id, epoch, sender external #0, no aad, proposal, Add
    head = b"\x00\x01\x00\x01" + b"\x08" + GROUP_ID + (5).to_bytes(8, "big") + b"\x02" + b"\x00" * 4 + b"\x00\x02\x00\x01"
    assert message.startswith(head + key_package)
    tbs = message[: len(head) + len(key_package)]
    signature = message[len(tbs) + 2:]
    assert message[len(tbs):len(tbs) + 2] == (0x4000 | len(signature)).to_bytes(2, "big")
    label = b"MLS 1.0 FramedContentTBS"
    key.public_key().verify(signature, _vec(label) + _vec(tbs), ec.ECDSA(hashes.SHA256()))
    assert len(proposal_ref(message)) == 32


def _vec(data: bytes) -> bytes:
    n = len(data)
    return (bytes([n]) if n < 64 else (0x4000 | n).to_bytes(2, "big")) + data


def test_davey_accepts_the_external_senders_proposals() -> None:
    sender = DaveExternalSender()
    alice, bob = davey.DaveSession(1, 1, CHANNEL), davey.DaveSession(1, 2, CHANNEL)
    alice.get_serialized_key_package()
    bob_package = bob.get_serialized_key_package()
    alice.set_external_sender(sender.payload)
    bob.set_external_sender(sender.payload)
    proposal = sender.propose_add(GROUP_ID, 0, bob_package)
    result = alice.process_proposals(davey.ProposalsOperationType.append, _vec(proposal), [1, 2])
    assert result is not None and result.welcome
    parsed = parse_commit_welcome(result.commit + result.welcome)
    assert parsed.commit == result.commit and parsed.welcome == result.welcome
    assert parsed.epoch == 0 and parsed.group_id == GROUP_ID and parsed.sender_leaf == 0
    assert parsed.proposal_refs == (proposal_ref(proposal),)
    # A proposal signed by another key is refused by the member.
    impostor = DaveExternalSender().propose_add(GROUP_ID, 0, bob_package)
    carol = davey.DaveSession(1, 3, CHANNEL)
    carol.get_serialized_key_package()
    carol.set_external_sender(sender.payload)
    with pytest.raises(ValueError):
        carol.process_proposals(davey.ProposalsOperationType.append, _vec(impostor), [2, 3])


def test_key_package_user_id() -> None:
    package = davey.DaveSession(1, 1_000_000_000_000_000_001, CHANNEL).get_serialized_key_package()
    assert key_package_user_id(package) == 1_000_000_000_000_000_001
    with pytest.raises(MLSDecodeError, match="truncated"):
        key_package_user_id(package[:-3])
    with pytest.raises(MLSDecodeError, match="trailing"):
        key_package_user_id(package + b"\x00")
    with pytest.raises(MLSDecodeError, match="protocol version"):
        key_package_user_id(b"\x00\x02" + package[2:])


def test_parsers_raise_only_decode_errors_on_garbage() -> None:
    rng = random.Random(5)
    package = davey.DaveSession(1, 9, CHANNEL).get_serialized_key_package()
    for _ in range(500):
        blob = bytearray(package if rng.random() < 0.5 else os.urandom(rng.randrange(0, 300)))
        for _ in range(rng.randrange(1, 4)):
            if blob:
                blob[rng.randrange(len(blob))] = rng.randrange(256)
        for parse in (key_package_user_id, parse_commit_welcome):
            try:
                parse(bytes(blob))
            except MLSDecodeError:
                pass


def test_group_ignores_bad_client_input() -> None:
    group = DaveCallGroup(CHANNEL)
    group.join(1)
    assert group.key_package(1, b"\x00\x01junk") == []
    other = davey.DaveSession(1, 2, CHANNEL).get_serialized_key_package()
    assert group.key_package(1, other) == []  # a key package naming another user
    assert group.commit_welcome(1, os.urandom(64)) == [] and group.rejected_commits == 1
    assert group.transition_ready(1, 77) == []
    assert group.invalid_commit_welcome(1, 3) == []
    assert group.members == set() and group.epoch is None
    with pytest.raises(ValueError, match="channel_id"):
        DaveCallGroup(-1)
    with pytest.raises(ValueError, match="protocol_version"):
        DaveCallGroup(CHANNEL, 3)
    with pytest.raises(ValueError, match="SECP256R1"):
        DaveExternalSender(signing_key="not a key")


def test_group_rejects_a_commit_for_the_wrong_epoch() -> None:
    group = DaveCallGroup(CHANNEL)
    sessions = {u: davey.DaveSession(1, u, CHANNEL) for u in (1, 2)}
    out = []
    for uid, session in sessions.items():
        out += group.join(uid)
        session.set_external_sender(group.sender.payload)
    for uid, session in sessions.items():
        out += group.key_package(uid, session.get_serialized_key_package())
    proposals = [m for uid, m in out if uid == 1 and m.OPCODE == 27]
    assert len(proposals) == 1
    result = sessions[1].process_proposals(davey.ProposalsOperationType.append, proposals[0].proposals, [1, 2])
    assert result is not None
    # Same commit with its epoch bytes changed: refused (and the real one is still accepted after).
    forged = bytearray(result.commit)
    forged[4 + 1 + 8 + 7] = 9
    assert group.commit_welcome(1, bytes(forged) + (result.welcome or b"")) == []
    accepted = group.commit_welcome(1, result.commit + (result.welcome or b""))
    assert {(uid, m.OPCODE) for uid, m in accepted} == {(1, 29), (2, 30)}
    assert group.epoch == 1 and group.leaves == [1, 2]
    assert group.commit_welcome(1, result.commit + (result.welcome or b"")) == []  # only the first counts


def test_is_dave_frame() -> None:
    a, b = davey.DaveSession(1, 1, CHANNEL), davey.DaveSession(1, 2, CHANNEL)
    sender = DaveExternalSender()
    a.get_serialized_key_package()
    a.set_external_sender(sender.payload)
    result = a.process_proposals(
        davey.ProposalsOperationType.append, _vec(sender.propose_add(GROUP_ID, 0, b.get_serialized_key_package())), [1, 2]
    )
    a.process_commit(result.commit)
    frame = a.encrypt_opus(b"\xfc" + bytes(60))
    assert is_dave_frame(frame)
    assert not is_dave_frame(b"\xfc" + bytes(60))
    assert not is_dave_frame(b"\xf8\xff\xfe")
    assert not is_dave_frame(bytes(20) + b"\x40\xfa\xfa")  # supplemental size larger than the frame


def test_builtin_p256_signer_agrees_with_cryptography() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from fastvoice.testing._p256 import N, P256SigningKey

    rng = random.Random(11)
    scalars = [1, 2, 15, 16, 17, N - 1, N - 2, 2**255, 15 << 252] + [rng.randrange(1, N) for _ in range(40)]
    for d in scalars:
        key = P256SigningKey(d)
        reference = ec.derive_private_key(d, ec.SECP256R1()).public_key()
        assert key.public_key == reference.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        message = os.urandom(rng.randrange(0, 300))
        signature = key.sign(message)
        reference.verify(signature, message, ec.ECDSA(hashes.SHA256()))  # raises if wrong
        _, s = decode_dss_signature(signature)  # strict DER
        assert s <= N // 2
    for bad in (0, N, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="private_value"):
            P256SigningKey(bad)  # type: ignore[arg-type]


def test_default_external_sender_signs_with_the_builtin_code() -> None:
    sender = DaveExternalSender()
    member = davey.DaveSession(1, 42, CHANNEL)
    key_package = member.get_serialized_key_package()
    message = sender.propose_add(GROUP_ID, 3, key_package)
    # framing, group id <V>, epoch, sender, aad <V>, content type, proposal type, key package; then the signature <V>
    head = 4 + 1 + len(GROUP_ID) + 8 + 1 + 4 + 1 + 1 + 2 + len(key_package)
    tbs, rest = message[:head], message[head:]
    assert len(rest) == 2 + (int.from_bytes(rest[:2], "big") & 0x3FFF)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender.public_key)
    public.verify(rest[2:], _vec(b"MLS 1.0 FramedContentTBS") + _vec(tbs), ec.ECDSA(hashes.SHA256()))


def test_the_server_side_of_dave_needs_no_cryptography_package() -> None:
    # A plain install has no `cryptography`: the external sender and a whole call group still work.
    code = """
import sys
sys.modules["cryptography"] = None  # import cryptography now raises ImportError
import davey
from fastvoice.testing._dave import DaveCallGroup
group = DaveCallGroup(5)
sessions = {u: davey.DaveSession(1, u, 5) for u in (1, 2)}
out = []
for uid, session in sessions.items():
    out += group.join(uid)
    session.set_external_sender(group.sender.payload)
for uid, session in sessions.items():
    out += group.key_package(uid, session.get_serialized_key_package())
proposals = [m for uid, m in out if uid == 1 and m.OPCODE == 27]
result = sessions[1].process_proposals(davey.ProposalsOperationType.append, proposals[0].proposals, [1, 2])
accepted = group.commit_welcome(1, result.commit + (result.welcome or b""))
assert group.epoch == 1, group
print("ok")
"""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_builtin_p256_verifier_agrees_with_cryptography() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    from fastvoice.testing._p256 import N, verify

    rng = random.Random(13)
    for _ in range(12):
        private = ec.generate_private_key(ec.SECP256R1())
        public = private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        message = os.urandom(rng.randrange(0, 200))
        signature = private.sign(message, ec.ECDSA(hashes.SHA256()))
        assert verify(public, message, signature)
        r, s = decode_dss_signature(signature)
        assert verify(public, message, encode_dss_signature(r, N - s))  # ECDSA accepts both s
        assert not verify(public, message + b"x", signature)
        assert not verify(public, message, encode_dss_signature(r, (s % (N - 1)) + 1))
        assert not verify(public, message, encode_dss_signature((r % (N - 1)) + 1, s))
        flipped = bytearray(public)
        flipped[-1] ^= 1  # no longer on the curve
        assert not verify(bytes(flipped), message, signature)
        for broken in (b"", signature[:-1], signature + b"\x00", b"\x30\x00", bytes(len(signature)),
                       encode_dss_signature(0, s), encode_dss_signature(r, N)):
            assert not verify(public, message, broken)
    assert not verify(b"\x04" + bytes(64), b"m", b"\x30\x06\x02\x01\x01\x02\x01\x01")


def test_key_packages_are_checked_without_the_cryptography_package() -> None:
    # Validation of members' key packages (signatures included) works from a plain install too.
    code = """
import sys
sys.modules["cryptography"] = None
import davey
from fastvoice.testing._mls import MLSValidationError, validate_key_package
good = davey.DaveSession(1, 7, 5).get_serialized_key_package()
assert validate_key_package(good).user_id == 7
bad = bytearray(good)
bad[-5] ^= 0x01  # inside the key package's own signature
try:
    validate_key_package(bytes(bad))
except MLSValidationError as exc:
    print("refused:", exc)
"""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "refused: key package signature does not verify" in run.stdout, (
        run.stdout + run.stderr[-2000:])
