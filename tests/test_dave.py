"""DAVE: the client state machine (fastvoice.dave) against the server's external sender (fastvoice.testing._dave).

Each client is a real ``davey`` MLS member driven by a DaveSession; the server side is the
DaveCallGroup the local voice server runs. Messages travel through an in-memory queue in
order, like a websocket per client, so each test controls exactly what is delivered.
"""

from __future__ import annotations

import collections
import logging
import os

import davey
import pytest

from fastvoice.constants import SILENCE_AUDIO_FRAME
from fastvoice.dave import DaveSession
from fastvoice.gateway_messages import (
    GatewayMessageData,
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
    Opcode,
)
from fastvoice.testing._dave import DaveCallGroup, is_dave_frame

CHANNEL = 1_234_567_890_123
ALICE, BOB, CAROL = 1001, 2002, 3003


class Call:
    """A DaveCallGroup and its DaveSession clients connected by ordered in-memory queues."""

    def __init__(self, protocol_version: int = 1) -> None:
        self.group = DaveCallGroup(CHANNEL, protocol_version)
        self.clients: dict[int, DaveSession] = {}
        self.queue: collections.deque[tuple[str, int, GatewayMessageData]] = collections.deque()
        self.to_client: list[tuple[int, GatewayMessageData]] = []
        self.from_client: list[tuple[int, GatewayMessageData]] = []
        #: Set to a callable (user_id, message) -> message | None to tamper with server messages.
        self.tamper = None

    def _server_out(self, out: list[tuple[int, GatewayMessageData]]) -> None:
        for uid, message in out:
            self.queue.append(("s", uid, message))

    async def join(self, user_id: int, pump: bool = True) -> DaveSession:
        async def send(opcode: Opcode, data: GatewayMessageData, uid: int = user_id) -> None:
            assert opcode == data.OPCODE
            self.queue.append(("c", uid, data))

        manager = DaveSession(user_id, CHANNEL, 1, send=send, logger=logging.getLogger(f"test.dave.{user_id}"))
        others = sorted(self.clients)
        self.clients[user_id] = manager
        if others:
            self.queue.append(("s", user_id, GatewayMessageDataClientsConnect(others)))
        for uid in others:
            self.queue.append(("s", uid, GatewayMessageDataClientsConnect([user_id])))
        self._server_out(self.group.join(user_id))
        await manager.on_session_description(self.group.target_version)
        if pump:
            await self.pump()
        return manager

    async def leave(self, user_id: int) -> None:
        del self.clients[user_id]
        for uid in self.clients:
            self.queue.append(("s", uid, GatewayMessageDataClientDisconnect(user_id)))
        self._server_out(self.group.leave(user_id))
        await self.pump()

    async def pump_one(self) -> None:
        direction, uid, message = self.queue.popleft()
        if direction == "s":
            if uid not in self.clients:
                return
            if self.tamper is not None:
                message = self.tamper(uid, message)
                if message is None:
                    return
            self.to_client.append((uid, message))
            await self.clients[uid].on_event(message.OPCODE, message)
        else:
            self.from_client.append((uid, message))
            self._server_out(self._server_handle(uid, message))

    async def pump(self, hold: type | None = None) -> list[tuple[int, GatewayMessageData]]:
        """Deliver everything queued; client messages of type ``hold`` are kept back and returned."""
        held = []
        for _ in range(10_000):
            if not self.queue:
                return held
            if hold is not None and self.queue[0][0] == "c" and isinstance(self.queue[0][2], hold):
                _, uid, message = self.queue.popleft()
                held.append((uid, message))
                continue
            await self.pump_one()
        raise AssertionError("messages kept flowing")

    def _server_handle(self, uid: int, message: GatewayMessageData) -> list[tuple[int, GatewayMessageData]]:
        if isinstance(message, GatewayMessageDataDaveMLSKeyPackage):
            return self.group.key_package(uid, message.key_package)
        if isinstance(message, GatewayMessageDataDaveMLSCommitWelcome):
            return self.group.commit_welcome(uid, message.commit_welcome)
        if isinstance(message, GatewayMessageDataDaveTransitionReady):
            return self.group.transition_ready(uid, message.transition_id)
        if isinstance(message, GatewayMessageDataDaveMLSInvalidCommitWelcome):
            return self.group.invalid_commit_welcome(uid, message.transition_id)
        raise AssertionError(f"unexpected client message {message!r}")

    def sent(self, cls: type, uid: int | None = None) -> list[GatewayMessageData]:
        return [m for u, m in self.from_client if isinstance(m, cls) and (uid is None or u == uid)]

    def received(self, cls: type, uid: int | None = None) -> list[GatewayMessageData]:
        return [m for u, m in self.to_client if isinstance(m, cls) and (uid is None or u == uid)]


def opus(i: int) -> bytes:
    """A distinct fake Opus frame (the DAVE layer does not parse Opus)."""
    return bytes([0x78, i & 0xFF]) + os.urandom(40) + i.to_bytes(4, "big")


def exchange(sender: DaveSession, receivers: list[DaveSession], count: int = 5) -> None:
    """Send ``count`` frames from ``sender``; each must cross as DAVE ciphertext and decrypt exactly."""
    for i in range(count):
        frame = opus(i)
        wire = sender.encrypt_frame(frame)
        assert wire is not None, "frame held although the group is ready"
        assert wire != frame and frame not in wire
        assert is_dave_frame(wire)
        for receiver in receivers:
            assert receiver.decrypt_frame(sender.user_id, wire) == frame


async def test_two_members_form_a_group_and_exchange_audio() -> None:
    call = Call()
    alice = await call.join(ALICE)
    assert not alice.ready and alice.encrypt_frame(opus(1)) is None  # alone: held, never plaintext
    assert alice.stats.frames_held == 1
    bob = await call.join(BOB)

    assert alice.e2ee and bob.e2ee
    assert alice.epoch == bob.epoch == call.group.epoch == 1
    assert call.group.members == {ALICE, BOB}
    assert call.group.accepted_commits == 1
    # Exactly one welcome went out (to the member whose commit lost or who was added).
    assert len(call.received(GatewayMessageDataDaveMLSWelcome)) == 1
    # Both members said they were ready for the transition; only then did the execute go to both.
    ready = call.sent(GatewayMessageDataDaveTransitionReady)
    executes = [(uid, m.transition_id) for uid, m in call.to_client
                if isinstance(m, GatewayMessageDataDaveExecuteTransition)]
    tid = ready[0].transition_id
    assert tid != 0 and [m.transition_id for m in ready] == [tid, tid]
    assert sorted(executes) == [(ALICE, tid), (BOB, tid)]
    assert alice.pending_transitions == {} == bob.pending_transitions

    exchange(alice, [bob])
    exchange(bob, [alice])
    assert alice.voice_privacy_code == bob.voice_privacy_code and alice.voice_privacy_code
    assert alice.verification_code(BOB) is not None and bob.verification_code(ALICE) is not None
    assert alice.verification_code(999) is None


async def test_every_key_package_is_fresh() -> None:
    call = Call()
    await call.join(ALICE)
    await call.join(BOB)
    await call.leave(BOB)  # Alice is alone: sole member reset sends a new key package
    await call.join(BOB)
    packages = [m.key_package for m in call.sent(GatewayMessageDataDaveMLSKeyPackage)]
    assert len(packages) == 4
    assert len(set(packages)) == len(packages)


async def test_third_member_joins_mid_stream_and_decrypts_after_welcome() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    exchange(alice, [bob])
    before = alice.encrypt_frame(opus(99))
    assert before is not None

    carol = await call.join(CAROL)
    assert call.group.epoch == 2 and call.group.members == {ALICE, BOB, CAROL}
    assert alice.epoch == bob.epoch == carol.epoch == 2
    assert len(call.received(GatewayMessageDataDaveMLSWelcome, CAROL)) == 1
    # Alice and Bob both committed; only one commit was relayed, the other was refused.
    assert call.group.rejected_commits >= 1
    assert len({m.commit for m in call.received(GatewayMessageDataDaveMLSAnnounceCommitTransition)
                if m.transition_id == call.received(GatewayMessageDataDaveMLSWelcome, CAROL)[0].transition_id}) == 1
    # A frame from the previous epoch cannot be read by the newcomer.
    assert carol.decrypt_frame(ALICE, before) is None
    assert carol.stats.decrypt_failures == 1
    exchange(alice, [bob, carol])
    exchange(carol, [alice, bob])
    assert alice.voice_privacy_code == carol.voice_privacy_code


async def test_member_leaves_and_the_rest_rekey() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    carol = await call.join(CAROL)
    old_code = alice.voice_privacy_code
    await call.leave(CAROL)
    assert call.group.members == {ALICE, BOB}
    assert call.group.leaves == [ALICE, BOB]
    assert alice.epoch == bob.epoch == 3
    assert alice.voice_privacy_code != old_code
    exchange(alice, [bob])
    exchange(bob, [alice])
    # The leaver still holds its old group state, but the others no longer accept its frames.
    from_leaver = carol.encrypt_frame(opus(8))
    assert from_leaver is not None
    assert alice.decrypt_frame(CAROL, from_leaver) is None
    assert alice.stats.decrypt_failures == 1


async def test_sole_member_resets_and_regroups() -> None:
    call = Call()
    alice = await call.join(ALICE)
    await call.join(BOB)
    packages_before = alice.stats.key_packages_sent
    await call.leave(BOB)
    assert call.received(GatewayMessageDataDavePrepareEpoch, ALICE)[-1].epoch == 1
    assert call.received(GatewayMessageDataDavePrepareTransition, ALICE)[-1].transition_id == 0
    assert alice.pending_transitions == {}  # transition 0 executes at once, with no op 23
    assert all(m.transition_id != 0 for m in call.sent(GatewayMessageDataDaveTransitionReady))
    assert alice.stats.key_packages_sent == packages_before + 1
    assert not alice.ready and alice.epoch == 0
    assert alice.encrypt_frame(opus(1)) is None  # alone and required: held
    bob = await call.join(BOB)
    assert alice.e2ee and bob.e2ee and alice.epoch == 1
    exchange(bob, [alice])


async def test_downgrade_to_zero_and_upgrade_back_never_sends_plaintext_under_e2ee() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    exchange(alice, [bob])

    # Until the downgrade executes, frames stay encrypted, even after its prepare arrived.
    call._server_out(call.group.downgrade())
    prepares = [m for _, _, m in call.queue if isinstance(m, GatewayMessageDataDavePrepareTransition)]
    assert [m.protocol_version for m in prepares] == [0, 0]
    await call.pump_one()  # the prepare reaches Alice only
    assert alice.protocol_version == 1 and alice.pending_transitions == {prepares[0].transition_id: 0}
    frame = opus(3)
    wire = alice.encrypt_frame(frame)
    assert wire is not None and wire != frame and is_dave_frame(wire)
    assert bob.decrypt_frame(ALICE, wire) == frame
    # Deliver until Alice has executed the downgrade but Bob has not.
    while alice.protocol_version != 0:
        await call.pump_one()
    assert bob.protocol_version == 1
    early = opus(30)
    assert alice.encrypt_frame(early) == early
    assert bob.decrypt_frame(ALICE, early) == early  # the downgrade's passthrough window
    await call.pump()
    assert alice.protocol_version == bob.protocol_version == call.group.protocol_version == 0
    assert not alice.e2ee
    plain = opus(4)
    assert alice.encrypt_frame(plain) == plain
    assert bob.decrypt_frame(ALICE, plain) == plain

    # Upgrade: a new group forms; as soon as the call requires E2EE again nothing leaves in plaintext.
    call._server_out(call.group.upgrade())
    sent_plain_after_required = []
    while call.queue:
        await call.pump_one()
        for manager in (alice, bob):
            frame = opus(5)
            out = manager.encrypt_frame(frame)
            if manager.protocol_version > 0 and out == frame:
                sent_plain_after_required.append(manager.user_id)
    assert sent_plain_after_required == []
    assert alice.protocol_version == bob.protocol_version == call.group.protocol_version == 1
    assert alice.e2ee and bob.e2ee
    exchange(alice, [bob])
    exchange(bob, [alice])


async def test_broken_commit_recovers_through_op_31() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)

    def corrupt(uid: int, message: GatewayMessageData) -> GatewayMessageData | None:
        if uid == BOB and isinstance(message, GatewayMessageDataDaveMLSAnnounceCommitTransition):
            call.tamper = None  # break only the first one
            broken = bytearray(message.commit)
            broken[-5] ^= 0xFF  # inside the membership tag
            return GatewayMessageDataDaveMLSAnnounceCommitTransition(message.transition_id, bytes(broken))
        return message

    call.tamper = corrupt
    carol = await call.join(CAROL)
    invalid = call.sent(GatewayMessageDataDaveMLSInvalidCommitWelcome, BOB)
    assert len(invalid) == 1 and invalid[0].transition_id != 0
    assert bob.stats.invalid_commits == 1
    # Bob was removed and re-added with a fresh key package; everyone ends in one group.
    assert call.group.members == {ALICE, BOB, CAROL}
    assert alice.epoch == bob.epoch == carol.epoch == call.group.epoch
    exchange(bob, [alice, carol])
    exchange(carol, [alice, bob])


async def test_decrypt_never_raises_and_counts_drops() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    assert bob.decrypt_frame(ALICE, SILENCE_AUDIO_FRAME) == SILENCE_AUDIO_FRAME
    for junk in (b"", b"\x00", opus(1), b"\x01" * 20 + b"\x10\xfa\xfa", os.urandom(200)):
        assert bob.decrypt_frame(ALICE, junk) is None
    assert bob.decrypt_frame(424242, alice.encrypt_frame(opus(2)) or b"") is None
    assert bob.stats.decrypt_failures == 6


async def test_proposals_for_an_unannounced_user_are_refused() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)

    def hide_carol(uid: int, message: GatewayMessageData) -> GatewayMessageData | None:
        if isinstance(message, GatewayMessageDataClientsConnect) and CAROL in message.user_ids:
            return None  # Alice and Bob never hear that Carol connected
        return message

    call.tamper = hide_carol
    carol = await call.join(CAROL)
    assert call.group.members == {ALICE, BOB}
    assert alice.stats.ignored_messages == 1 and bob.stats.ignored_messages == 1
    assert not carol.ready and alice.epoch == 1
    assert len(call.sent(GatewayMessageDataDaveMLSCommitWelcome, ALICE)) == 1  # only the group's creation


async def test_messages_before_a_session_and_garbage_are_ignored() -> None:
    sent: list[GatewayMessageData] = []

    async def send(opcode: Opcode, data: GatewayMessageData) -> None:
        sent.append(data)

    manager = DaveSession(ALICE, CHANNEL, 1, send=send)
    await manager.on_event(Opcode.DAVE_MLS_PROPOSALS, GatewayMessageDataDaveMLSProposals(0, b"\x05junk"))
    await manager.on_event(Opcode.DAVE_MLS_WELCOME, GatewayMessageDataDaveMLSWelcome(3, b"junk"))
    assert sent == [] and manager.stats.ignored_messages == 2
    await manager.on_session_description(1)
    assert [type(m) for m in sent] == [GatewayMessageDataDaveMLSKeyPackage]
    await manager.on_event(Opcode.DAVE_MLS_PROPOSALS, GatewayMessageDataDaveMLSProposals(0, b"\x05junk"))
    await manager.on_event(Opcode.DAVE_EXECUTE_TRANSITION, GatewayMessageDataDaveExecuteTransition(77))
    await manager.on_event(Opcode.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION,
                           GatewayMessageDataDaveMLSAnnounceCommitTransition(9, b"\x00\x01junk"))
    # The bad commit is answered with op 31 for its transition and a fresh key package.
    assert [type(m) for m in sent[1:]] == [GatewayMessageDataDaveMLSInvalidCommitWelcome, GatewayMessageDataDaveMLSKeyPackage]
    assert sent[1].transition_id == 9
    assert manager.stats.ignored_messages == 4 and manager.stats.invalid_commits == 1
    assert manager.protocol_version == 1 and manager.encrypt_frame(opus(1)) is None


async def test_send_failure_does_not_raise() -> None:
    async def send(opcode: Opcode, data: GatewayMessageData) -> None:
        raise ConnectionError("gateway is closed")

    manager = DaveSession(ALICE, CHANNEL, 1, send=send)
    await manager.on_session_description(1)
    assert manager.stats.key_packages_sent == 1 and manager.protocol_version == 1


async def test_protocol_zero_passes_through() -> None:
    manager = DaveSession(ALICE, CHANNEL, 0)
    await manager.on_session_description(0)
    frame = opus(1)
    assert manager.encrypt_frame(frame) == frame
    assert manager.decrypt_frame(BOB, frame) == frame
    assert not manager.e2ee and manager.epoch is None and manager.voice_privacy_code is None


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="user_id.*0"):
        DaveSession(0, CHANNEL)
    with pytest.raises(ValueError, match="max_protocol_version.*7"):
        DaveSession(ALICE, CHANNEL, 7)


async def test_joiner_leaving_before_the_commit_is_revoked() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    # Carol joins, but the members' commits adding her are held back ...
    carol = DaveSession(CAROL, CHANNEL, 1, send=None)
    call.clients[CAROL] = carol
    for uid in (ALICE, BOB):
        call.queue.append(("s", uid, GatewayMessageDataClientsConnect([CAROL])))
    call._server_out(call.group.join(CAROL))
    call._server_out(call.group.key_package(CAROL, davey.DaveSession(1, CAROL, CHANNEL).get_serialized_key_package()))
    held = await call.pump(hold=GatewayMessageDataDaveMLSCommitWelcome)
    assert sorted(uid for uid, _ in held) == [ALICE, BOB]
    # ... and she leaves first: the server revokes her Add, and the late commits are refused.
    await call.leave(CAROL)
    revokes = [m for m in call.received(GatewayMessageDataDaveMLSProposals) if m.operation_type == 1]
    assert len(revokes) == 2
    rejected = call.group.rejected_commits
    for uid, message in held:
        call.queue.append(("c", uid, message))
    await call.pump()
    assert call.group.rejected_commits == rejected + 2
    assert call.group.epoch == 1 and call.group.members == {ALICE, BOB}
    assert alice.epoch == bob.epoch == 1
    exchange(alice, [bob])
    # The group still takes new members.
    dave = await call.join(4004)
    assert call.group.members == {ALICE, BOB, 4004} and dave.e2ee
    exchange(dave, [alice, bob])


async def test_external_sender_again_while_in_a_group_is_ignored_quietly(caplog) -> None:
    call = Call()
    alice = await call.join(ALICE)
    await call.join(BOB)
    with caplog.at_level(logging.DEBUG, logger="test.dave"):
        await alice.on_event(Opcode.DAVE_MLS_EXTERNAL_SENDER,
                             GatewayMessageDataDaveMLSExternalSender(call.group.sender.payload))
    assert alice.stats.ignored_messages == 1 and alice.e2ee
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_random_server_messages_never_raise_or_leak_plaintext(caplog) -> None:
    import random

    rng = random.Random(11)
    call = Call()
    alice = await call.join(ALICE)
    await call.join(BOB)
    good_commit = call.received(GatewayMessageDataDaveMLSAnnounceCommitTransition, ALICE)[0].commit
    makers = [
        lambda b: GatewayMessageDataDaveMLSExternalSender(b),
        lambda b: GatewayMessageDataDaveMLSProposals(rng.randrange(2), b),
        lambda b: GatewayMessageDataDaveMLSAnnounceCommitTransition(rng.randrange(3), b),
        lambda b: GatewayMessageDataDaveMLSWelcome(rng.randrange(3), b),
        lambda b: GatewayMessageDataDavePrepareTransition(rng.randrange(2), rng.randrange(3)),
        lambda b: GatewayMessageDataDaveExecuteTransition(rng.randrange(3)),
        lambda b: GatewayMessageDataDavePrepareEpoch(1, rng.randrange(3)),
    ]
    caplog.set_level(logging.WARNING)
    for _ in range(300):
        blob = bytearray(good_commit if rng.random() < 0.3 else os.urandom(rng.randrange(0, 120)))
        if blob:
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        message = rng.choice(makers)(bytes(blob))
        await alice.on_event(message.OPCODE, message)
        frame = opus(rng.randrange(256))
        out = alice.encrypt_frame(frame)
        if alice.protocol_version > 0:
            assert out is None or (out != frame and is_dave_frame(out))
        assert alice.decrypt_frame(BOB, os.urandom(30)) is None or alice.protocol_version == 0
    # Bad input is answered (warnings, op 31) but never hits the "handling failed" error path.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert alice.stats.invalid_commits > 0 and alice.stats.ignored_messages > 0
