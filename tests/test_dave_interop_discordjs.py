"""fastvoice and @discordjs/voice in one DAVE call: each member hears every frame of the other.

The other member is @discordjs/voice 0.19.2 in Node (``tests/interop/discordjs_member.mjs``,
through ``interop_discordjs.DiscordjsMember``): its own gateway, UDP, transport encryption,
AudioPlayer and receiver, and its own DAVE state machine on @snazzah/davey. Skipped when
``node`` or the packages (``bench/discordjs/node_modules``, or ``FASTVOICE_DISCORDJS_DIR``)
are missing, unless FASTVOICE_REQUIRE_INTEROP=1.
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
    lost_runs,
    make_frames,
    peer_missing,
    undecrypted_runs,
    wait_until,
    watch_codes,
)
from interop_discordjs import DiscordjsMember, discordjs_missing

_missing = discordjs_missing()
if _missing is None:
    try:
        import cryptography  # noqa: F401  (VoiceServer(tls=True): @discordjs/voice speaks wss:// only)
    except ImportError:
        _missing = "the cryptography package is not installed (VoiceServer(tls=True) needs it)"
if _missing is not None:
    peer_missing(f"@discordjs/voice member not set up: {_missing}")

import fastvoice  # noqa: E402
from fastvoice.testing import VoiceServer  # noqa: E402

BOT, PEER, THIRD = 3001, 3002, 3003
GUILD, CHANNEL = 80, 81


@pytest.fixture
async def server():
    async with VoiceServer(tls=True, require_dave=True, dave_protocol_version=1, seed=17) as srv:
        yield srv


async def start_call(server):
    """The @discordjs/voice member, then the fastvoice member; both end-to-end encrypted."""
    peer = DiscordjsMember(server, GUILD, CHANNEL, PEER, peers=[BOT, THIRD])
    bot = FastvoiceMember(server, BOT, GUILD)
    try:
        await peer.join()
        await bot.open(CHANNEL)
        await wait_until(lambda: bot.e2ee and peer.privacy_codes, 10, "both members end-to-end encrypted")
    except BaseException:
        await bot.close()
        await peer.close()
        raise
    return peer, bot


async def announce(bot, peer):
    """fastvoice's op 5 before its audio, and wait until the peer's receiver has the SSRC.

    @discordjs/voice's receiver drops audio from an SSRC that no op 5 has named yet, and a
    sender's first packets (UDP) can overtake the relayed op 5 (a TLS websocket): a bot
    that starts speaking at once may lose its first frames at such a receiver, whoever
    sends them. fastvoice's own receiver holds such packets until the op 5 comes.
    """
    await bot.conn.set_speaking(fastvoice.SpeakingFlags.MICROPHONE)
    await wait_until(lambda: BOT in peer.speakers, 5, "the peer knows fastvoice's SSRC")


async def heard_everything(server, bot, peer_frames):
    """Wait until fastvoice received every packet the server took from the peer; their sequence numbers.

    The AudioPlayer ends a stream with a few silence frames (4 in 0.19.2: its fifth is
    prepared but not sent when the player stops); the server's record says how many came.
    """
    peer_ssrc = server.session_for_user(PEER).ssrc
    await asyncio.sleep(0.1)  # the player is idle: its last packets on their way
    await wait_until(lambda: len(bot.heard.of(PEER, silence=True)) >= len(server.packets(peer_ssrc)) > len(peer_frames),
                     10, "fastvoice heard the @discordjs/voice stream")
    return [p.sequence for p in server.packets(peer_ssrc)]


async def test_fastvoice_and_discordjs_hear_every_frame_of_each_other(server):
    peer, bot = await start_call(server)
    try:
        # One group, one epoch: the same voice privacy code, the same pairwise verification code.
        assert bot.dave.epoch == 1
        assert [digits(c) for c in peer.privacy_codes] == [digits(bot.dave.voice_privacy_code)]
        verification = await peer.verification_code(BOT)
        assert verification is not None and len(digits(verification)) == 45
        assert digits(bot.dave.verification_code(PEER)) == digits(verification)

        bot_frames, peer_frames = make_frames(BOT, 100), make_frames(PEER, 100)
        await announce(bot, peer)
        bot.play(bot_frames)
        await peer.play(peer_frames)
        await peer.expect("played", 20)
        sent = await heard_everything(server, bot, peer_frames)
        await server.wait_for(lambda: len(server.packets(bot.ssrc)) >= len(bot_frames) + 5, timeout=10)
        await asyncio.sleep(0.1)  # the last packets on their way to Node
        frames, log = await peer.report()

        # Every packet arrived (consecutive RTP sequence numbers: fastvoice heard each one the
        # server took from the peer, and the peer each of fastvoice's frames and 5 silence frames)...
        assert_consecutive(sent, len(sent))
        assert bot.heard.sequences[PEER] == sent
        assert_consecutive([entry[2] for entry in log if entry[0] == "packet" and entry[1] == BOT], len(bot_frames) + 5)
        # ...and every frame decrypted, byte for byte, in order, both ways.
        assert frames[BOT] == bot_frames + [SILENCE] * 5
        tail = len(sent) - len(peer_frames)
        assert bot.heard.of(PEER, silence=True) == peer_frames + [SILENCE] * tail and 1 <= tail <= 5
        assert all(entry[3] for entry in log if entry[0] == "packet")
        assert bot.dave.stats.decrypt_failures == 0 and bot.dave.stats.early_frames_held == 0
        # The server saw DAVE ciphertext only, from both.
        assert_only_ciphertext(server, bot.ssrc, len(bot_frames))
        peer_ssrc = server.session_for_user(PEER).ssrc
        assert_only_ciphertext(server, peer_ssrc, len(peer_frames))
        print(f"@discordjs/voice interop: {len(bot_frames)} + {len(peer_frames)} frames exchanged; "
              "privacy code and verification code equal")
    finally:
        await bot.close()
        await peer.close()


@pytest.mark.parametrize("lag", [0.0, 0.06], ids=["in-step", "fastvoice-60ms-late"])
async def test_a_third_member_joins_and_leaves_while_both_stream(server, lag):
    """Two epoch changes mid-stream (a fastvoice member joins, then leaves): no frame is lost
    beyond what fastvoice's documented hold explains (architecture.md, "DAVE epoch switch").

    @discordjs/voice (davey) switches its sender key when it processes a commit, and so does
    fastvoice. With ``lag`` the server delivers fastvoice's DAVE messages late: the peer's
    new-key frames then reach fastvoice before fastvoice has the key, and its hold must keep them.
    """
    peer, bot = await start_call(server)
    server.dave.delay[BOT] = lag
    third = FastvoiceMember(server, THIRD, GUILD)
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(watch_codes([bot, third], stop))
    try:
        bot_frames, peer_frames = make_frames(BOT, 150), make_frames(PEER, 150)
        await announce(bot, peer)
        bot.play(bot_frames)
        await peer.play(peer_frames)
        await asyncio.sleep(0.6)
        await third.open(CHANNEL)
        await wait_until(lambda: third.e2ee and bot.dave.epoch == 2 and len(peer.privacy_codes) == 2, 10, "epoch 2")
        await wait_until(lambda: not server.dave_group(GUILD, CHANNEL).pending_transitions, 5, "transition executed")
        await asyncio.sleep(0.4)
        await third.close()
        await wait_until(lambda: bot.dave.epoch == 3 and len(peer.privacy_codes) == 3, 10, "epoch 3")
        await peer.expect("played", 20)
        sent = await heard_everything(server, bot, peer_frames)
        await server.wait_for(lambda: len(server.packets(bot.ssrc)) >= len(bot_frames) + 5, timeout=10)
        await asyncio.sleep(0.1)
        frames, log = await peer.report()
        stop.set()
        await watcher

        # Epochs 1, 2, 3: every member showed the same code in each.
        assert [digits(c) for c in bot.privacy_codes] == [digits(c) for c in peer.privacy_codes]
        assert len(set(peer.privacy_codes)) == 3
        assert digits(third.privacy_codes[0]) == digits(peer.privacy_codes[1])

        # Every packet arrived both ways across the two epoch changes.
        assert_consecutive(sent, len(sent))
        assert bot.heard.sequences[PEER] == sent
        assert_consecutive([entry[2] for entry in log if entry[0] == "packet" and entry[1] == BOT], len(bot_frames) + 5)
        # fastvoice heard every frame @discordjs/voice sent, in order: frames that came before
        # fastvoice had the new key were held and decrypted once it had.
        tail = len(sent) - len(peer_frames)
        assert bot.heard.of(PEER, silence=True) == peer_frames + [SILENCE] * tail and 1 <= tail <= 5
        stats = bot.dave.stats
        assert stats.decrypt_failures == 0 and stats.early_frames_dropped == 0
        assert stats.early_frames_decrypted == stats.early_frames_held

        # @discordjs/voice has no such hold: fastvoice's frames encrypted with a new key that
        # reached it before it processed that commit are lost. They must be the last frames
        # before its key change, fewer than a hold absorbs; every other frame arrived, in order.
        received = frames[BOT]
        assert received[-5:] == [SILENCE] * 5
        lost = lost_runs(received[:-5], bot_frames)
        explained, unexplained = undecrypted_runs(log, BOT)
        assert unexplained == []
        assert [len(run) for run in explained] == [len(run) for run in lost]
        assert all(len(run) <= HOLD_FRAMES for run in explained), explained
        print(f"@discordjs/voice interop (fastvoice lag {lag * 1000:.0f} ms): {len(bot_frames)} + {len(peer_frames)} "
              f"frames over 3 epochs; fastvoice held {stats.early_frames_held} early frames and lost none; "
              f"@discordjs/voice lost {sum(map(len, lost))} frames sent before it had processed a commit")
    finally:
        stop.set()
        await watcher
        await third.close()
        await bot.close()
        await peer.close()
