"""fastvoice and Discord's libdave in one DAVE call: each member hears every frame of the other.

The other member (``interop_libdave.LibdaveMember``) is a voice client of its own whose DAVE
is libdave (C++, PyPI ``dave.py``): its own MLS (mlspp), its own frame encryption, its own
state machine with libdave's epoch timing (the sender switches at op 22). Skipped when
``dave.py`` is not installed, unless FASTVOICE_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import asyncio

import pytest

from _interop import (
    HOLD_FRAMES,
    SILENCE,
    FastvoiceMember,
    assert_consecutive,
    assert_only_ciphertext,
    digits,
    make_frames,
    undecrypted_runs,
    wait_until,
    watch_codes,
)
from fastvoice.testing import VoiceServer

try:
    import dave  # noqa: F401
except ImportError:
    from _interop import peer_missing

    peer_missing("libdave's Python binding is not installed (pip install dave.py==1.1.0)")

from interop_libdave import AES_GCM, XCHACHA, LibdaveMember  # noqa: E402

BOT, PEER, THIRD = 2001, 2002, 2003
GUILD, CHANNEL = 70, 71


@pytest.fixture
async def server():
    async with VoiceServer(require_dave=True, dave_protocol_version=1, seed=13) as srv:
        yield srv


async def start_call(server, mode):
    """The libdave member, then the fastvoice member, in one call; both end-to-end encrypted."""
    peer = LibdaveMember(server, GUILD, CHANNEL, PEER, mode=mode)
    bot = FastvoiceMember(server, BOT, GUILD)
    try:
        await peer.join()
        await bot.open(CHANNEL)
        await wait_until(lambda: bot.e2ee and peer.ready, 10, "both members end-to-end encrypted")
    except BaseException:
        await bot.close()
        await peer.close()
        raise
    return peer, bot


@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA])
async def test_fastvoice_and_libdave_hear_every_frame_of_each_other(server, mode):
    peer, bot = await start_call(server, mode)
    try:
        # One group, one epoch: the same voice privacy code, the same pairwise verification code.
        assert bot.dave.epoch == 1
        assert len(peer.privacy_codes) == 1
        assert digits(bot.dave.voice_privacy_code) == peer.privacy_codes[0]
        verification = await peer.verification_code(BOT)
        assert verification is not None and len(verification) == 45
        assert digits(bot.dave.verification_code(PEER)) == verification

        bot_frames, peer_frames = make_frames(BOT, 100), make_frames(PEER, 100)
        bot.play(bot_frames)
        await peer.play(peer_frames)
        await wait_until(
            lambda: len(bot.heard.of(PEER, silence=True)) >= len(peer_frames) + 5
            and len(peer.frames.get(BOT, [])) >= len(bot_frames) and peer.silence.get(BOT, 0) >= 5,
            10, "both streams received",
        )
        # Every packet arrived (consecutive RTP sequence numbers, none missing)...
        assert_consecutive(bot.heard.sequences[PEER], len(peer_frames) + 5)
        assert_consecutive(peer.sequences[BOT], len(bot_frames) + 5)
        # ...and every frame decrypted, byte for byte, in order: libdave's by fastvoice, fastvoice's by libdave.
        assert bot.heard.of(PEER, silence=True) == peer_frames + [SILENCE] * 5
        assert peer.frames[BOT] == bot_frames
        assert peer.early == {} and peer.silence[BOT] == 5
        assert bot.dave.stats.decrypt_failures == 0 and bot.dave.stats.early_frames_held == 0
        # The server saw DAVE ciphertext only, from both.
        assert_only_ciphertext(server, bot.ssrc, len(bot_frames))
        assert_only_ciphertext(server, peer.ssrc, len(peer_frames))
        assert peer.stats.encrypt_failures == 0 and peer.stats.mls_failures == []
        assert peer.ignored_datagrams == {}
    finally:
        await bot.close()
        await peer.close()


@pytest.mark.parametrize("lag", [0.0, 0.06], ids=["in-step", "libdave-60ms-late"])
async def test_a_third_member_joins_and_leaves_while_both_stream(server, lag):
    """Two epoch changes mid-stream (a fastvoice member joins, then leaves): no frame is lost
    beyond what fastvoice's sender-side timing explains (architecture.md, "DAVE epoch switch").

    With ``lag`` the server delivers the libdave member's DAVE messages late, so it processes
    each commit after fastvoice has switched its sender key.
    """
    peer, bot = await start_call(server, AES_GCM)
    server.dave.delay[PEER] = lag
    third = FastvoiceMember(server, THIRD, GUILD)
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(watch_codes([bot, third], stop))
    try:
        bot_frames, peer_frames = make_frames(BOT, 150), make_frames(PEER, 150)
        bot.play(bot_frames)
        playing = asyncio.get_running_loop().create_task(peer.play(peer_frames))
        await asyncio.sleep(0.6)
        await third.open(CHANNEL)
        await wait_until(lambda: third.e2ee and bot.dave.epoch == 2 and len(peer.privacy_codes) == 2, 10, "epoch 2")
        await wait_until(lambda: not server.dave_group(GUILD, CHANNEL).pending_transitions, 5, "transition executed")
        await asyncio.sleep(0.4)
        await third.close()
        await wait_until(lambda: bot.dave.epoch == 3 and len(peer.privacy_codes) == 3, 10, "epoch 3")
        await playing
        await wait_until(
            lambda: len(bot.heard.of(PEER, silence=True)) >= len(peer_frames) + 5 and peer.silence.get(BOT, 0) >= 5,
            10, "both streams received",
        )
        stop.set()
        await watcher

        # The group went through epochs 1, 2, 3 and every member showed the same code in each.
        assert [digits(c) for c in bot.privacy_codes] == peer.privacy_codes
        assert len(set(peer.privacy_codes)) == 3
        assert digits(third.privacy_codes[0]) == peer.privacy_codes[1]
        assert peer.stats.welcomes_processed + peer.stats.commits_processed == 3
        assert peer.stats.transitions_executed == 3 and peer.stats.mls_failures == []

        # Every packet arrived both ways across the two epoch changes.
        assert_consecutive(bot.heard.sequences[PEER], len(peer_frames) + 5)
        assert_consecutive(peer.sequences[BOT], len(bot_frames) + 5)
        # fastvoice heard every frame libdave sent: libdave switches keys at op 22, when
        # every member is ready, so nothing arrives before fastvoice has the key.
        assert bot.heard.of(PEER, silence=True) == peer_frames + [SILENCE] * 5
        assert bot.dave.stats.decrypt_failures == 0

        # libdave decrypted every frame fastvoice sent, in order...
        heard = peer.frames[BOT]
        assert heard == bot_frames
        # ...but some only once it had processed the commit: davey (under fastvoice) switches
        # its sender key when it processes a commit, not at op 22. A libdave client without a
        # hold loses those. They must be the last frames before a key change, and fewer than
        # fastvoice's own hold absorbs.
        early = sorted(peer.early.get(BOT, set()))
        explained, unexplained = undecrypted_runs(peer.events, BOT)
        assert unexplained == []
        assert sorted(i for run in explained for i in run) == early
        assert all(len(run) <= HOLD_FRAMES for run in explained), explained
        print(f"libdave interop (lag {lag * 1000:.0f} ms): {len(heard)} + {len(peer_frames)} frames exchanged over "
              f"3 epochs; {len(early)} of fastvoice's frames came before libdave had processed the commit")
    finally:
        stop.set()
        await watcher
        await third.close()
        await bot.close()
        await peer.close()
