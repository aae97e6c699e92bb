"""DAVE as the field breaks it, client side, in memory: early frames, recovery, versions, epoch timing, verification.

Members are davey sessions driven by DaveSession and joined by the server's DaveCallGroup
(``test_dave.Call``); a fake clock makes holds and backoffs exact. The same behaviours against
the local VoiceServer and its fault knobs are in test_dave_field_server.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import davey
import pytest

from fastvoice.dave import DaveConfig, DaveSession
from fastvoice.gateway_messages import (
    GatewayMessageData,
    GatewayMessageDataDaveExecuteTransition,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSInvalidCommitWelcome,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataDavePrepareTransition,
    GatewayMessageDataDaveTransitionReady,
    Opcode,
)
from fastvoice.rtp import Packet
from fastvoice.testing._mls import parse_key_package
from test_dave import ALICE, BOB, CAROL, CHANNEL, Call, exchange, opus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Inbox:
    """A deliver() target: what a receiver got, in order."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def __call__(self, user_id: int, packet: Packet) -> None:
        self.frames.append((user_id, packet.opus))


def packet(frame: bytes, sequence: int = 0) -> Packet:
    return Packet(sequence, sequence * 960, 1234, frame)


def receive(manager: DaveSession, user_id: int, frame: bytes, inbox: Inbox, sequence: int = 0) -> None:
    """What the AudioReceiver does with a packet: deliver now if the hook says so."""
    p = packet(frame, sequence)
    if manager.receive_packet(user_id, p, inbox):
        inbox(user_id, p)


async def join_with(call: Call, user_id: int, config: DaveConfig, clock: Clock) -> DaveSession:
    """call.join, with a DaveSession built with ``config`` and ``clock``."""
    original = DaveSession.__init__

    def init(self, *args, **kwargs):
        original(self, *args, config=config, clock=clock, **kwargs)

    DaveSession.__init__ = init  # type: ignore[method-assign]
    try:
        return await call.join(user_id)
    finally:
        DaveSession.__init__ = original  # type: ignore[method-assign]


class Withheld:
    """Holds back every server message to one member from the first op 29 on (it processes commits late)."""

    def __init__(self, call: Call, user_id: int) -> None:
        self.call, self.user_id = call, user_id
        self.messages: list[GatewayMessageData] = []
        call.tamper = self

    def __call__(self, uid: int, message: GatewayMessageData) -> GatewayMessageData | None:
        commit = isinstance(message, GatewayMessageDataDaveMLSAnnounceCommitTransition)
        if uid == self.user_id and (self.messages or commit):
            self.messages.append(message)
            return None
        return message

    async def release(self) -> None:
        self.call.tamper = None
        manager = self.call.clients[self.user_id]
        for message in self.messages:
            self.call.to_client.append((self.user_id, message))
            await manager.on_event(message.OPCODE, message)
        await self.call.pump()


# --- 4: early frames ---------------------------------------------------------------------------


async def test_frames_that_come_before_their_key_are_held_then_decrypted_in_order() -> None:
    clock = Clock()
    call = Call()
    alice = await call.join(ALICE)
    bob = await join_with(call, BOB, DaveConfig(), clock)
    late = Withheld(call, BOB)  # Bob will process Carol's commit late
    carol = await call.join(CAROL)
    assert carol.e2ee and alice.epoch == carol.epoch == 2 and bob.epoch == 1
    inbox = Inbox()
    sent = [(CAROL, opus(i)) for i in range(5)] + [(ALICE, opus(i)) for i in range(5, 10)]
    for i, (uid, frame) in enumerate(sent):
        clock.now += 0.02
        receive(bob, uid, (carol if uid == CAROL else alice).encrypt_frame(frame), inbox, i)
    # Carol's first frames and Alice's new-epoch frames: no key yet, so held rather than dropped.
    assert inbox.frames == [] and bob.stats.early_frames_held == 10 and bob.stats.decrypt_failures == 0
    await late.release()
    assert inbox.frames == sent  # every one, in order, once the commit is processed
    assert bob.stats.early_frames_decrypted == 10 and bob.stats.early_frames_dropped == 0
    exchange(bob, [alice, carol])


async def test_early_frames_are_bounded_by_count_and_age() -> None:
    clock = Clock()
    call = Call()
    alice = await call.join(ALICE)
    bob = await join_with(call, BOB, DaveConfig(hold_frames=4, hold_seconds=0.25), clock)
    late = Withheld(call, BOB)
    carol = await call.join(CAROL)
    inbox = Inbox()
    frames = [carol.encrypt_frame(opus(i)) for i in range(6)]
    for i, frame in enumerate(frames):
        receive(bob, CAROL, frame, inbox, i)
    # At most 4 per user: the two oldest went, counted as failures.
    assert bob.stats.early_frames_held == 6 and bob.stats.early_frames_dropped == 2
    assert bob.stats.decrypt_failures == 2
    clock.now += 0.3  # the rest waited longer than hold_seconds
    alice_frame = opus(99)
    receive(bob, ALICE, alice.encrypt_frame(alice_frame), inbox)  # any packet lets them expire
    assert bob.stats.early_frames_dropped == 6
    await late.release()
    assert [f for u, f in inbox.frames if u == CAROL] == []  # expired frames never come back
    assert inbox.frames == [(ALICE, alice_frame)]  # the held Alice frame, decrypted after the commit
    # Frames that are not DAVE frames are never held.
    receive(bob, CAROL, b"\xfc" + bytes(30), inbox)
    assert bob.stats.early_frames_held == 7


async def test_holding_can_be_turned_off() -> None:
    call = Call()
    await call.join(ALICE)
    bob = await join_with(call, BOB, DaveConfig(hold_frames=0), Clock())
    Withheld(call, BOB)
    carol = await call.join(CAROL)
    inbox = Inbox()
    receive(bob, CAROL, carol.encrypt_frame(opus(1)), inbox)
    assert inbox.frames == [] and bob.stats.early_frames_held == 0 and bob.stats.decrypt_failures == 1


# --- 5: recovery ----------------------------------------------------------------------------------


def broken_frame(sender: DaveSession, i: int) -> bytes:
    frame = bytearray(sender.encrypt_frame(opus(i)) or b"")
    frame[3] ^= 0xFF  # ciphertext: no key opens it
    return bytes(frame)


async def settle(call: Call) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await call.pump()


async def test_a_run_of_undecryptable_frames_triggers_op_31_with_backoff_and_a_bound() -> None:
    clock = Clock()
    config = DaveConfig(failure_threshold=5, recovery_backoff=1.0, max_recoveries=2)
    call = Call()
    alice = await call.join(ALICE)
    bob = await join_with(call, BOB, config, clock)

    for i in range(4):
        assert bob.decrypt_frame(ALICE, broken_frame(alice, i)) is None
    transition = bob._last_transition_id
    await settle(call)
    assert call.sent(GatewayMessageDataDaveMLSInvalidCommitWelcome, BOB) == []  # 4 < threshold
    assert bob.decrypt_frame(ALICE, broken_frame(alice, 4)) is None
    await settle(call)
    flagged = call.sent(GatewayMessageDataDaveMLSInvalidCommitWelcome, BOB)
    assert len(flagged) == 1 and flagged[0].transition_id == transition != 0
    assert bob.stats.recoveries == 1
    # The server removed and re-added Bob: one group again, audio flows.
    assert call.group.members == {ALICE, BOB} and bob.e2ee and bob.epoch == alice.epoch == 3
    exchange(alice, [bob])

    # Still broken right away: no second recovery inside the backoff...
    for i in range(10):
        bob.decrypt_frame(ALICE, broken_frame(alice, i))
    await settle(call)
    assert bob.stats.recoveries == 1
    # ...one after it, and then no more: recovery gives up instead of looping.
    clock.now += 1.5
    bob.decrypt_frame(ALICE, broken_frame(alice, 0))
    await settle(call)
    assert bob.stats.recoveries == 2
    clock.now += 100
    for i in range(50):
        bob.decrypt_frame(ALICE, broken_frame(alice, i))
    await settle(call)
    assert bob.stats.recoveries == 2 and bob.stats.recoveries_abandoned == 1
    assert len(call.sent(GatewayMessageDataDaveMLSInvalidCommitWelcome, BOB)) == 2
    # Frames that decrypt again reset it.
    exchange(alice, [bob])
    for i in range(5):
        bob.decrypt_frame(ALICE, broken_frame(alice, i))
    await settle(call)
    assert bob.stats.recoveries == 3


async def test_failures_during_a_transition_or_from_a_leaver_do_not_count() -> None:
    clock = Clock()
    call = Call()
    alice = await call.join(ALICE)
    bob = await join_with(call, BOB, DaveConfig(failure_threshold=3), clock)
    bob._pending_transitions[77] = 1  # a transition in progress: keys are moving
    for i in range(10):
        bob.decrypt_frame(ALICE, broken_frame(alice, i))
    await settle(call)
    assert bob.stats.recoveries == 0 and bob.stats.decrypt_failures == 10
    bob._pending_transitions.clear()
    for i in range(2):
        bob.decrypt_frame(ALICE, broken_frame(alice, i))
    await call.leave(ALICE)  # op 13 forgets Alice's run
    bob.decrypt_frame(ALICE, broken_frame(alice, 0))
    await settle(call)
    assert bob.stats.recoveries == 0


async def test_commits_that_cannot_be_processed_are_answered_with_backoff_then_abandoned() -> None:
    sent: list[GatewayMessageData] = []

    async def send(opcode: Opcode, data: GatewayMessageData) -> None:
        sent.append(data)

    manager = DaveSession(ALICE, CHANNEL, 1, send=send, config=DaveConfig(recovery_backoff=0.01, max_recoveries=3))
    await manager.on_session_description(1)
    for tid in range(1, 8):
        await manager.on_event(Opcode.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION,
                               GatewayMessageDataDaveMLSAnnounceCommitTransition(tid, b"\x00\x01junk"))
    await asyncio.sleep(0.2)
    flags = [m.transition_id for m in sent if isinstance(m, GatewayMessageDataDaveMLSInvalidCommitWelcome)]
    assert flags == [1, 2, 3]  # the first at once, two more after a backoff, then no more
    assert manager.stats.invalid_commits == 7 and manager.stats.recoveries_abandoned == 1
    assert sum(isinstance(m, GatewayMessageDataDaveMLSKeyPackage) for m in sent) == 4
    manager.close()


# --- 6: versions ------------------------------------------------------------------------------------


async def test_an_unsupported_version_is_refused_without_a_traceback(caplog) -> None:
    manager = DaveSession(ALICE, CHANNEL, 1)
    with caplog.at_level(logging.DEBUG, logger="fastvoice.dave"):
        await manager.on_session_description(99)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "99" in errors[0].getMessage() and errors[0].exc_info is None
    assert manager.encrypt_frame(opus(1)) is None  # held, never plaintext
    assert manager.stats.key_packages_sent == 0
    # Mid-call, a transition to a version it does not speak is not acknowledged either.
    sent: list[GatewayMessageData] = []

    async def send(opcode: Opcode, data: GatewayMessageData) -> None:
        sent.append(data)

    call = Call()
    alice = await call.join(ALICE)
    await call.join(BOB)
    alice._send = send
    await alice.on_event(Opcode.DAVE_PREPARE_TRANSITION, GatewayMessageDataDavePrepareTransition(99, 5))
    assert sent == [] and alice.pending_transitions == {} and alice.protocol_version == 1 and alice.e2ee


# --- 7: the epoch switch ----------------------------------------------------------------------------


async def test_davey_switches_the_sender_key_at_the_commit_and_keeps_old_keys_on_receive() -> None:
    """What DAVE says (senders switch at op 22) and what davey does (at op 29) differ; this pins davey's way.

    If this starts failing, davey defers the switch: fastvoice should then switch at execute.
    """
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    first, second = opus(1), opus(2)
    old_epoch_frame = alice.encrypt_frame(first)
    late = Withheld(call, BOB)
    await call.join(CAROL)
    assert alice.epoch == 2 and bob.epoch == 1
    assert alice.pending_transitions == call.group.pending_transitions != {}  # processed, not executed
    before_execute = alice.encrypt_frame(second)
    assert bob.decrypt_frame(ALICE, before_execute) is None  # already the new epoch's key
    await late.release()
    assert bob.epoch == 2
    # The previous epoch's frames still decrypt after the switch (davey keeps old keys 10 s).
    assert bob.decrypt_frame(ALICE, old_epoch_frame) == first
    assert bob.decrypt_frame(ALICE, before_execute) == second


async def test_an_execute_that_comes_before_the_commit_is_applied_when_the_commit_arrives() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    late = Withheld(call, BOB)
    await call.join(CAROL)
    tid = alice._last_transition_id
    # The gateway timed out waiting for Bob and executed: op 22 reaches Bob before op 29.
    await bob.on_event(Opcode.DAVE_EXECUTE_TRANSITION, GatewayMessageDataDaveExecuteTransition(tid))
    assert bob.stats.early_executes == 1
    commit = next(m for m in late.messages if isinstance(m, GatewayMessageDataDaveMLSAnnounceCommitTransition))
    await bob.on_event(commit.OPCODE, commit)
    assert bob.pending_transitions == {} and bob.epoch == 2  # not left waiting for an op 22 that came
    await call.pump()
    assert [m.transition_id for m in call.sent(GatewayMessageDataDaveTransitionReady, BOB)][-1] == tid


# --- 8: verification --------------------------------------------------------------------------------


def displayable(data: bytes, length: int, group: int = 5) -> str:
    """The DAVE whitepaper's displayable code, written from its text."""
    assert len(data) >= length and length % group == 0
    return "".join(
        str(int.from_bytes(data[i * group:(i + 1) * group], "big") % 10**group).zfill(group)
        for i in range(length // group)
    )


def pairwise(key_a: bytes, user_a: int, key_b: bytes, user_b: int) -> bytes:
    """The whitepaper's pairwise fingerprint (version 0), with hashlib's scrypt."""
    buffers = sorted(b"\x00\x00" + key + user.to_bytes(8, "big") for key, user in ((key_a, user_a), (key_b, user_b)))
    return hashlib.scrypt(b"".join(buffers), salt=bytes.fromhex("24cab17a7af8ec2b82b412b92dab192e"),
                          n=16384, r=8, p=2, dklen=64, maxmem=64 * 1024 * 1024)


async def test_both_sides_show_the_same_codes_and_they_follow_the_whitepaper() -> None:
    call = Call()
    alice = await call.join(ALICE)
    bob = await call.join(BOB)
    carol = await call.join(CAROL)
    # Both members of a pair compute the same verification code, and every member the same privacy code.
    assert alice.verification_code(BOB) == bob.verification_code(ALICE)
    assert carol.verification_code(ALICE) == alice.verification_code(CAROL) != alice.verification_code(BOB)
    assert alice.voice_privacy_code == bob.voice_privacy_code == carol.voice_privacy_code
    assert alice.verification_codes == {BOB: alice.verification_code(BOB), CAROL: alice.verification_code(CAROL)}
    # Independently: the identity keys the server saw in the key packages, and the whitepaper's algorithm.
    keys = {uid: parse_key_package(m.key_package).leaf.signature_key
            for uid, m in call.from_client if isinstance(m, GatewayMessageDataDaveMLSKeyPackage)}
    fingerprint = pairwise(keys[ALICE], ALICE, keys[BOB], BOB)
    assert alice.pairwise_fingerprint(BOB) == bob.pairwise_fingerprint(ALICE) == fingerprint
    assert alice.verification_code(BOB) == displayable(fingerprint, 45)
    assert len(alice.verification_code(BOB)) == 45
    authenticator = alice._session.get_epoch_authenticator()
    assert alice.voice_privacy_code == displayable(authenticator, 30)
    # A new epoch, a new privacy code; the pairwise codes stay (same identity keys).
    code = alice.voice_privacy_code
    pair = alice.verification_code(BOB)
    await call.leave(CAROL)
    assert alice.voice_privacy_code == bob.voice_privacy_code != code
    assert alice.verification_code(BOB) == pair and alice.verification_code(CAROL) is None
    assert alice.pairwise_fingerprint(999) is None and DaveSession(ALICE, CHANNEL).verification_codes == {}


def test_dave_config_names_bad_values() -> None:
    with pytest.raises(ValueError, match="hold_frames.*-1"):
        DaveConfig(hold_frames=-1)
    with pytest.raises(ValueError, match="failure_threshold.*0"):
        DaveConfig(failure_threshold=0)
    with pytest.raises(ValueError, match="hold_seconds.*inf"):
        DaveConfig(hold_seconds=float("inf"))
    with pytest.raises(TypeError, match="DaveConfig"):
        DaveSession(ALICE, CHANNEL, config={"hold_frames": 3})
    assert DaveConfig().backoff(0) == 0 and DaveConfig().backoff(3) == 4.0
    assert DaveConfig(recovery_backoff_max=3).backoff(10) == 3
    assert davey.DAVE_PROTOCOL_VERSION == 1
