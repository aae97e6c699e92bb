"""The local server's DAVE group follows the rules the DAVE protocol gives the voice gateway.

Key package validation (signatures, lifetime), commits that must reference exactly the open
proposals and keep the committer's identity, op 31 handled as remove-then-re-add, transitions
that time out, a member without DAVE taking the call to protocol 0 and back, and the rarer
paths a client must handle (transition id 0 in ops 29/30, op 24 with an epoch other than 1).
Clients are real davey members driven by DaveSession (``test_dave.Call``).
"""

from __future__ import annotations

import davey
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fastvoice.gateway_messages import (
    GatewayMessageDataDaveExecuteTransition,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSCommitWelcome,
    GatewayMessageDataDaveMLSExternalSender,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataDaveMLSProposals,
    GatewayMessageDataDaveMLSWelcome,
    GatewayMessageDataDavePrepareEpoch,
    GatewayMessageDataDavePrepareTransition,
    GatewayMessageDataDaveTransitionReady,
)
from fastvoice.testing._dave import DaveCallGroup, MLSDecodeError, parse_commit_welcome
from fastvoice.testing._mls import MAX_LIFETIME, MLSValidationError, _Reader, validate_key_package, vec
from test_dave import ALICE, BOB, CAROL, CHANNEL, Call, exchange

DAVE, EVE = 4004, 5005


# --- key packages -------------------------------------------------------------------------


def resign_key_package(key_package: bytes, lifetime: tuple[int, int], key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key_package`` rebuilt with ``lifetime`` and ``key`` as its signature key, both signatures remade."""
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    r = _Reader(key_package, "kp")
    head = r.take(4)
    init_key = r.vec()
    encryption_key = r.vec()
    r.vec()  # the old signature key
    credential = r.take(2) + vec(r.vec())
    capabilities = b"".join(vec(r.vec()) for _ in range(5))
    assert r.uint(1) == 1  # source: key_package
    r.take(16)
    leaf_extensions = r.vec()
    r.vec()  # the old leaf signature
    extensions = r.vec()

    def sign(label: bytes, content: bytes) -> bytes:
        return key.sign(vec(b"MLS 1.0 " + label) + vec(content), ec.ECDSA(hashes.SHA256()))

    leaf_tbs = (vec(encryption_key) + vec(public) + credential + capabilities + b"\x01"
                + lifetime[0].to_bytes(8, "big") + lifetime[1].to_bytes(8, "big") + vec(leaf_extensions))
    tbs = head + vec(init_key) + leaf_tbs + vec(sign(b"LeafNodeTBS", leaf_tbs)) + vec(extensions)
    return tbs + vec(sign(b"KeyPackageTBS", tbs))


def test_key_packages_need_valid_signatures_and_the_maximum_lifetime() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    original = davey.DaveSession(1, ALICE, CHANNEL).get_serialized_key_package()
    assert validate_key_package(original).leaf.lifetime == MAX_LIFETIME  # davey's own pass
    good = resign_key_package(original, MAX_LIFETIME, key)
    assert validate_key_package(good).user_id == ALICE  # the rebuild itself is sound
    short = resign_key_package(original, (0, 2**63), key)
    with pytest.raises(MLSValidationError, match="lifetime"):
        validate_key_package(short)
    forged = bytearray(good)
    forged[-10] ^= 0x01  # inside the key package signature
    with pytest.raises(MLSValidationError, match="signature"):
        validate_key_package(bytes(forged))
    leaf_forged = bytearray(good)
    leaf_forged[leaf_forged.index(ALICE.to_bytes(8, "big")) + 7] ^= 0x01  # the credential: user 1001 -> 1000
    with pytest.raises(MLSDecodeError):
        validate_key_package(bytes(leaf_forged))

    group = DaveCallGroup(CHANNEL)
    bob = davey.DaveSession(1, BOB, CHANNEL)
    for uid in (ALICE, BOB):
        group.join(uid)
    assert group.key_package(ALICE, short) == [] and group.key_package(ALICE, bytes(forged)) == []
    assert group.key_package(BOB, bob.get_serialized_key_package()) == []  # only one valid package: no group yet
    assert group.rejected_key_packages == 2
    out = group.key_package(ALICE, good)  # the valid one is proposed
    assert sorted(uid for uid, m in out if isinstance(m, GatewayMessageDataDaveMLSProposals)) == [ALICE, BOB]
    assert group.rejected_key_packages == 2


# --- commits ------------------------------------------------------------------------------


def drop_last_ref(commit: bytes) -> bytes:
    """The commit with the last ProposalRef left out of its proposals vector (its signature no longer matters)."""
    r = _Reader(commit, "commit")
    r.take(4)
    r.vec()
    r.take(13)
    r.vec()
    r.take(1)
    start = r.pos
    proposals = _Reader(r.vec(), "proposals")
    end = r.pos
    refs = []
    while proposals.pos < len(proposals.data):
        assert proposals.uint(1) == 2
        refs.append(proposals.vec())
    return commit[:start] + vec(b"".join(b"\x02" + vec(ref) for ref in refs[:-1])) + commit[end:]


async def test_a_commit_must_reference_every_open_proposal() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    # Carol joins; while the commits adding her are held, Dave and Eve send their key packages.
    for uid in (CAROL, DAVE, EVE):
        await call.join(uid, pump=False)
    held = dict(await call.pump(hold=GatewayMessageDataDaveMLSCommitWelcome))
    assert sorted(held) == [ALICE, BOB]
    call._server_out(call.group.commit_welcome(ALICE, held[ALICE].commit_welcome))
    held = dict(await call.pump(hold=GatewayMessageDataDaveMLSCommitWelcome))
    assert sorted(held) == [ALICE, BOB, CAROL]  # the next epoch: Dave's and Eve's Adds, open for all three
    blob = held[ALICE].commit_welcome
    commit = parse_commit_welcome(blob)
    assert len(commit.proposal_refs) == 2
    partial = drop_last_ref(commit.commit) + (commit.welcome or b"")
    assert len(parse_commit_welcome(partial).proposal_refs) == 1
    rejected = call.group.rejected_commits
    assert call.group.commit_welcome(ALICE, partial) == []
    assert call.group.commit_welcome(BOB, blob) == []  # Alice's commit sent by Bob: not Bob's leaf
    assert call.group.rejected_commits == rejected + 2 and call.group.epoch == 2
    call._server_out(call.group.commit_welcome(ALICE, blob))
    await call.pump()
    assert call.group.members == {ALICE, BOB, CAROL, DAVE, EVE} and call.group.epoch == 3
    exchange(call.clients[EVE], [alice, bob, call.clients[CAROL], call.clients[DAVE]])


async def test_a_commit_may_not_change_the_committers_identity() -> None:
    call = Call()
    await call.join(ALICE)
    await call.join(BOB)
    await call.join(CAROL)
    # Carol leaves: Alice and Bob get her Remove and both commit (with an update path), held here.
    call._server_out(call.group.leave(CAROL))
    del call.clients[CAROL]
    held = dict(await call.pump(hold=GatewayMessageDataDaveMLSCommitWelcome))
    blob = held[ALICE].commit_welcome
    leaf = parse_commit_welcome(blob).path_leaf
    assert leaf is not None and leaf.identity == ALICE.to_bytes(8, "big")
    at = blob.index(leaf.signature_key)
    other_key = bytearray(blob)
    other_key[at + 20] ^= 0x01
    identity_at = at + len(leaf.signature_key) + 3  # after the key: credential type (2), identity length (1)
    other_user = blob[:identity_at] + BOB.to_bytes(8, "big") + blob[identity_at + 8:]
    rejected = call.group.rejected_commits
    assert call.group.commit_welcome(ALICE, bytes(other_key)) == []
    assert call.group.commit_welcome(ALICE, other_user) == []
    assert call.group.commit_welcome(BOB, blob) == []  # Alice's commit from Bob: not Bob's leaf
    assert call.group.rejected_commits == rejected + 3
    call._server_out(call.group.commit_welcome(ALICE, blob))
    await call.pump()
    assert call.group.members == {ALICE, BOB} and call.group.epoch == 3
    exchange(call.clients[ALICE], [call.clients[BOB]])


# --- op 31 --------------------------------------------------------------------------------


async def test_op_31_in_a_two_member_call_removes_and_re_adds_the_flagging_member() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    alice_packages = alice.stats.key_packages_sent
    before = len(call.to_client)
    # Bob cannot process a commit: op 31, then a fresh key package.
    await bob.on_event(GatewayMessageDataDaveMLSAnnounceCommitTransition.OPCODE,
                       GatewayMessageDataDaveMLSAnnounceCommitTransition(7, b"\x00\x01broken"))
    await call.pump()
    to_alice = [m for uid, m in call.to_client[before:] if uid == ALICE]
    # Alice is not reset: she gets Bob's Remove, then his re-Add, and commits both.
    assert not any(isinstance(m, GatewayMessageDataDavePrepareEpoch) for m in to_alice)
    assert alice.stats.key_packages_sent == alice_packages
    proposals = [m for m in to_alice if isinstance(m, GatewayMessageDataDaveMLSProposals)]
    assert len(proposals) == 2
    assert call.group.members == {ALICE, BOB} and alice.epoch == bob.epoch == 3
    assert len(call.received(GatewayMessageDataDaveMLSWelcome, BOB)) == 2
    exchange(alice, [bob])
    exchange(bob, [alice])


# --- transitions ----------------------------------------------------------------------------


async def test_a_transition_executes_after_its_timeout_when_a_member_never_answers() -> None:
    now = [100.0]
    call = Call()
    call.group = DaveCallGroup(CHANNEL, transition_timeout=2.0, clock=lambda: now[0])
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    assert alice.e2ee and bob.e2ee
    # Carol joins; Bob's op 23 for her transition never reaches the server.
    handle = call._server_handle

    def lose_bobs_ready(uid, message):
        if uid == BOB and isinstance(message, GatewayMessageDataDaveTransitionReady):
            return []
        return handle(uid, message)

    call._server_handle = lose_bobs_ready
    carol = await call.join(CAROL)
    call._server_handle = handle
    tid = next(iter(call.group.pending_transitions))
    assert call.group.next_deadline() == pytest.approx(102.0)
    now[0] = 101.9
    assert call.group.expire_transitions() == []
    now[0] = 102.1
    out = call.group.expire_transitions()
    assert sorted((uid, m.transition_id) for uid, m in out) == [(ALICE, tid), (BOB, tid), (CAROL, tid)]
    assert all(isinstance(m, GatewayMessageDataDaveExecuteTransition) for _, m in out)
    assert call.group.expired_transitions == 1 and call.group.pending_transitions == {}
    call._server_out(out)
    await call.pump()
    assert alice.pending_transitions == bob.pending_transitions == carol.pending_transitions == {}
    assert call.group.transition_ready(BOB, tid) == []  # the late answer is harmless
    exchange(carol, [alice, bob])
    # Without a timeout a transition waits forever.
    call.group.transition_timeout = None
    assert call.group.next_deadline() is None and call.group.expire_transitions() == []


async def test_transition_id_zero_in_commit_and_welcome_takes_effect_at_once() -> None:
    call = Call()
    call.group.zero_transition_ids = True
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    carol = await call.join(CAROL)
    commits = call.received(GatewayMessageDataDaveMLSAnnounceCommitTransition)
    welcomes = call.received(GatewayMessageDataDaveMLSWelcome)
    assert commits and welcomes and {m.transition_id for m in commits + welcomes} == {0}
    assert call.sent(GatewayMessageDataDaveTransitionReady) == []  # no op 23 for transition 0
    assert call.received(GatewayMessageDataDaveExecuteTransition) == []
    assert alice.pending_transitions == bob.pending_transitions == carol.pending_transitions == {}
    assert alice.epoch == bob.epoch == carol.epoch == 2
    exchange(alice, [bob, carol])
    exchange(carol, [alice, bob])


async def test_prepare_epoch_with_the_current_epoch_keeps_the_group() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    with pytest.raises(RuntimeError, match="past epoch 1"):
        call.group.prepare_epoch()  # at epoch 1 it would mean "new group"
    carol = await call.join(CAROL)
    packages = len(call.sent(GatewayMessageDataDaveMLSKeyPackage))
    code = alice.voice_privacy_code
    out = call.group.prepare_epoch()
    assert sorted(uid for uid, _ in out) == [ALICE, BOB, CAROL]
    assert {(m.protocol_version, m.epoch) for _, m in out} == {(1, 2)}
    call._server_out(out)
    await call.pump()
    assert len(call.sent(GatewayMessageDataDaveMLSKeyPackage)) == packages  # nobody reset
    assert alice.epoch == bob.epoch == carol.epoch == 2 and alice.voice_privacy_code == code
    exchange(bob, [alice, carol])


# --- members without DAVE -------------------------------------------------------------------


async def test_a_member_without_dave_downgrades_the_call_until_it_leaves() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    exchange(alice, [bob])
    # A client without DAVE joins: every DAVE member is told to go to protocol 0.
    out = call.group.join(DAVE, dave=False)
    assert [(uid, type(m)) for uid, m in out] == [(ALICE, GatewayMessageDataDavePrepareTransition),
                                                   (BOB, GatewayMessageDataDavePrepareTransition)]
    assert {m.protocol_version for _, m in out} == {0}
    call._server_out(out)
    await call.pump()
    assert call.group.protocol_version == 0 and alice.protocol_version == bob.protocol_version == 0
    assert call.group.members == set()
    plain = b"\xfc" + bytes(20)
    assert alice.encrypt_frame(plain) == plain
    # Carol joins the downgraded call: no external sender, no key package yet.
    carol = await call.join(CAROL)
    assert carol.protocol_version == 0 or carol.stats.key_packages_sent == 1
    assert not call.received(GatewayMessageDataDaveMLSExternalSender, CAROL)
    # The member without DAVE leaves: the call is upgraded (Carol gets the external sender first).
    out = call.group.leave(DAVE)
    to_carol = [type(m) for uid, m in out if uid == CAROL]
    assert to_carol == [GatewayMessageDataDaveMLSExternalSender, GatewayMessageDataDavePrepareEpoch]
    call._server_out(out)
    await call.pump()
    assert call.group.protocol_version == 1 and call.group.members == {ALICE, BOB, CAROL}
    assert alice.e2ee and bob.e2ee and carol.e2ee
    exchange(carol, [alice, bob])


async def test_a_manual_downgrade_is_not_undone_when_a_member_without_dave_leaves() -> None:
    call = Call()
    await call.join(ALICE)
    await call.join(BOB)
    call._server_out(call.group.downgrade())
    await call.pump()
    assert call.group.join(DAVE, dave=False) == []  # already at protocol 0
    assert call.group.leave(DAVE) == []
    assert call.group.protocol_version == 0
