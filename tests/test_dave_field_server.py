"""DAVE as the field breaks it, end to end: Conns on the local VoiceServer with its DAVE fault knobs.

Late DAVE messages for one member (``server.dave.pause`` / ``resume``), a corrupted or lost
commit (``server.dave.tamper``), a transition some member never answers
(``server.dave.transition_timeout``), a version the client does not speak
(``server.dave.announce_version``), and a member without DAVE joining an encrypted call.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from _calls import Collect
from fastvoice.conn import ConnConfig, ConnOpenError
from fastvoice.dave import DaveConfig
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.testing import MainGatewayStandIn, VoiceServer
from fastvoice.testing._mls import is_dave_frame, parse_key_package
from test_dave_conn import SILENCE, Endless, wait_until
from test_dave_field import displayable, pairwise

GUILD, CHANNEL = 78, 600
SPEAKER, LISTENER, JOINER = 2001, 2002, 2003


def make_manager(server, user_id, dave_config=None, **gateway_options):
    main = MainGatewayStandIn(server, user_id)
    config = ConnConfig(open_timeout=5, gateway_config=GatewayConfig(backoff_base=0.05, **gateway_options),
                        dave_config=dave_config or DaveConfig())
    manager = Manager(main.update_voice_state, user_id, conn_config=config)
    main.attach(manager)
    return manager


async def join(server, user_id, sink=None, provider=None, **options):
    manager = make_manager(server, user_id, **options)
    conn = manager.create_conn(GUILD)
    if sink is not None:
        conn.set_opus_frame_receiver(sink)
    await conn.open(CHANNEL)
    if provider is not None:
        conn.set_opus_frame_provider(provider)
    return manager, conn


def numbers(sink, user_id):
    return [int.from_bytes(f[-4:], "big") for u, f in sink.frames if u == user_id and f != SILENCE]


def ops_in(server, user_id, op):
    sessions = [s for s in server.sessions if s.user_id == user_id]
    return [m for s in sessions for m in s.messages if m.direction == "in" and m.op == op]


async def test_a_joiners_first_frames_wait_for_the_listeners_commit_and_none_is_lost():
    async with VoiceServer(dave_protocol_version=1) as server:
        sink = Collect()
        speaker_bots, speaker = await join(server, SPEAKER)
        listener_bots, listener = await join(server, LISTENER, sink,
                                             dave_config=DaveConfig(hold_frames=64, hold_seconds=5.0))
        await wait_until(lambda: speaker.dave.e2ee and listener.dave.e2ee)
        server.dave.pause(LISTENER)  # the listener will process the joiner's commit late
        provider = Endless()
        joiner_bots, joiner = await join(server, JOINER, provider=provider)
        await wait_until(lambda: joiner.dave.e2ee)
        # The joiner speaks at once; its frames reach the listener before the commit does.
        await server.wait_for(lambda: sum(is_dave_frame(p.opus) for p in server.packets(joiner.udp.ssrc)) >= 8)
        # The server relayed them; the listener takes them in a moment later.
        await wait_until(lambda: listener.dave.stats.early_frames_held >= 8)
        assert numbers(sink, JOINER) == []
        assert listener.dave.epoch == 1
        server.dave.resume(LISTENER)
        await wait_until(lambda: len(numbers(sink, JOINER)) >= 20)
        got = numbers(sink, JOINER)
        first_sent = joiner.dave.stats.frames_held + 1  # the joiner held its frames until it had keys
        assert got == list(range(first_sent, first_sent + len(got)))  # from its first frame on, no gap
        assert listener.dave.stats.early_frames_dropped == 0
        assert listener.dave.stats.early_frames_decrypted >= 8
        for bots in (speaker_bots, listener_bots, joiner_bots):
            await bots.close()


async def test_a_corrupted_commit_is_flagged_with_op_31_and_the_member_is_re_added():
    async with VoiceServer(dave_protocol_version=1) as server:
        sink = Collect()
        speaker_bots, speaker = await join(server, SPEAKER, provider=Endless())
        listener_bots, listener = await join(server, LISTENER, sink)
        await wait_until(lambda: listener.dave.e2ee and len(sink.frames) >= 5)
        server.dave.tamper(LISTENER, 29, "corrupt")
        joiner_bots, joiner = await join(server, JOINER)
        await wait_until(lambda: listener.dave.stats.invalid_commits == 1)
        group = server.dave_group(GUILD, CHANNEL)
        await wait_until(lambda: listener.dave.e2ee and group.members == {SPEAKER, LISTENER, JOINER}
                         and listener.dave.epoch == speaker.dave.epoch == group.epoch)
        flags = ops_in(server, LISTENER, 31)
        assert len(flags) == 1 and flags[0].data["transition_id"] != 0
        before = len(numbers(sink, SPEAKER))
        await wait_until(lambda: len(numbers(sink, SPEAKER)) >= before + 10)
        assert listener.dave.stats.recoveries == 0  # the commit path, not the frame path
        for bots in (speaker_bots, listener_bots, joiner_bots):
            await bots.close()


async def test_a_member_that_missed_a_commit_recovers_once_and_does_not_loop():
    async with VoiceServer(dave_protocol_version=1) as server:
        server.dave.transition_timeout = 0.3  # the lost commit's transition executes without the listener
        sink = Collect()
        speaker_bots, speaker = await join(server, SPEAKER, provider=Endless())
        listener_bots, listener = await join(server, LISTENER, sink, dave_config=DaveConfig(failure_threshold=10))
        await wait_until(lambda: listener.dave.e2ee and len(sink.frames) >= 5)
        server.dave.tamper(LISTENER, 29, "drop")
        joiner_bots, joiner = await join(server, JOINER)
        # The speaker moves to the new epoch; the listener never learns of it and its frames stop decrypting.
        await wait_until(lambda: listener.dave.stats.recoveries == 1, timeout=10)
        group = server.dave_group(GUILD, CHANNEL)
        assert group.expired_transitions >= 1
        await wait_until(lambda: listener.dave.e2ee and listener.dave.epoch == speaker.dave.epoch == group.epoch)
        before = len(numbers(sink, SPEAKER))
        await wait_until(lambda: len(numbers(sink, SPEAKER)) >= before + 25)
        got = numbers(sink, SPEAKER)[before:]
        assert got == list(range(got[0], got[0] + len(got)))  # whole again
        assert listener.dave.stats.recoveries == 1 and len(ops_in(server, LISTENER, 31)) == 1
        for bots in (speaker_bots, listener_bots, joiner_bots):
            await bots.close()


async def test_a_transition_a_member_never_answers_is_executed_after_the_timeout():
    async with VoiceServer(dave_protocol_version=1) as server:
        server.dave.transition_timeout = 0.3
        speaker_bots, speaker = await join(server, SPEAKER)
        listener_bots, listener = await join(server, LISTENER)
        await wait_until(lambda: speaker.dave.e2ee and listener.dave.e2ee)
        server.dave.pause(LISTENER)  # its op 23 will not come in time
        joiner_bots, joiner = await join(server, JOINER)
        group = server.dave_group(GUILD, CHANNEL)
        await wait_until(lambda: group.expired_transitions == 1 and not group.pending_transitions)
        await wait_until(lambda: speaker.dave.pending_transitions == {} == joiner.dave.pending_transitions)
        server.dave.resume(LISTENER)  # it catches up: commit, then the op 22 it got early
        await wait_until(lambda: listener.dave.epoch == 2 and listener.dave.pending_transitions == {})
        for bots in (speaker_bots, listener_bots, joiner_bots):
            await bots.close()


async def test_open_fails_at_once_naming_a_dave_version_the_client_does_not_speak(caplog):
    async with VoiceServer(dave_protocol_version=1) as server:
        server.dave.announce_version = 99
        bots = make_manager(server, SPEAKER)
        conn = bots.create_conn(GUILD)
        started = time.monotonic()
        refused = pytest.raises(ConnOpenError, match="DAVE protocol version 99.* at most 1")
        with caplog.at_level(logging.WARNING), refused:
            await conn.open(CHANNEL)
        assert time.monotonic() - started < 3
        assert not [r for r in caplog.records if r.exc_info]  # a clear error, no traceback
        assert conn.udp is None
        await bots.close()


async def test_both_conns_show_the_same_codes_as_the_whitepaper_computes():
    async with VoiceServer(dave_protocol_version=1) as server:
        a_bots, a = await join(server, SPEAKER)
        b_bots, b = await join(server, LISTENER)
        await wait_until(lambda: a.dave.e2ee and b.dave.e2ee)
        assert a.dave.voice_privacy_code == b.dave.voice_privacy_code
        assert a.dave.verification_code(LISTENER) == b.dave.verification_code(SPEAKER)
        keys = {uid: parse_key_package(ops_in(server, uid, 26)[-1].data).leaf.signature_key
                for uid in (SPEAKER, LISTENER)}
        expected = displayable(pairwise(keys[SPEAKER], SPEAKER, keys[LISTENER], LISTENER), 45)
        assert a.dave.verification_codes == {LISTENER: expected}
        assert b.dave.verification_codes == {SPEAKER: expected}
        for bots in (a_bots, b_bots):
            await bots.close()


async def test_a_member_without_dave_takes_the_call_to_protocol_0_and_never_gets_ciphertext():
    async with VoiceServer(dave_protocol_version=1) as server:
        sink, plain_sink = Collect(), Collect()
        speaker_bots, speaker = await join(server, SPEAKER, provider=Endless())
        listener_bots, listener = await join(server, LISTENER, sink)
        await wait_until(lambda: listener.dave.e2ee and len(sink.frames) >= 5)
        legacy_bots, legacy = await join(server, JOINER, plain_sink, max_dave_protocol_version=0)
        assert legacy.dave is None
        group = server.dave_group(GUILD, CHANNEL)
        await wait_until(lambda: group.protocol_version == 0 and speaker.dave.protocol_version == 0
                         and listener.dave.protocol_version == 0)
        await wait_until(lambda: len(numbers(plain_sink, SPEAKER)) >= 10)
        assert not any(is_dave_frame(f) for _, f in plain_sink.frames)
        before = len(numbers(sink, SPEAKER))
        await wait_until(lambda: len(numbers(sink, SPEAKER)) >= before + 5)  # the DAVE members still hear
        # It leaves: the call is end-to-end encrypted again.
        await legacy_bots.close()
        await wait_until(lambda: group.protocol_version == 1 and speaker.dave.e2ee and listener.dave.e2ee)
        before = len(numbers(sink, SPEAKER))
        await wait_until(lambda: len(numbers(sink, SPEAKER)) >= before + 5)
        session = server.session_for_ssrc(speaker.udp.ssrc)
        assert session.dave_plaintext_packets == 0
        got = numbers(sink, SPEAKER)
        assert got == sorted(got) and all(f[0] == 0xFC for u, f in sink.frames if f != SILENCE)
        for bots in (speaker_bots, listener_bots):
            await bots.close()


async def test_the_server_never_forwards_dave_frames_to_a_member_without_dave():
    async with VoiceServer(dave_protocol_version=1) as server:
        server.dave.transition_timeout = None
        speaker_bots, speaker = await join(server, SPEAKER, provider=Endless())
        listener_bots, listener = await join(server, LISTENER)
        await wait_until(lambda: speaker.dave.e2ee and listener.dave.e2ee)
        server.dave.pause(SPEAKER)  # the speaker keeps encrypting: the downgrade cannot execute
        plain_sink = Collect()
        legacy_bots, legacy = await join(server, JOINER, plain_sink, max_dave_protocol_version=0)
        legacy_session = server.session_for_user(JOINER)
        await server.wait_for(lambda: legacy_session.dave_frames_withheld >= 10)
        assert plain_sink.frames == [] or not any(is_dave_frame(f) for _, f in plain_sink.frames)
        server.dave.resume(SPEAKER)
        await wait_until(lambda: len(numbers(plain_sink, SPEAKER)) >= 5)
        assert not any(is_dave_frame(f) for _, f in plain_sink.frames)
        for bots in (speaker_bots, listener_bots, legacy_bots):
            await bots.close()
    await asyncio.sleep(0)
