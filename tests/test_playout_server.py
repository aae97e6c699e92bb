"""PlayoutReceiver end to end: a fastvoice sender plays a known Opus stream through the local
voice server's faults (5 % loss, 5 % reordering, jitter, duplication, a 200 ms stall) to a
fastvoice listener whose PlayoutReceiver decodes in the shared pool on the real clock.

Nothing here is timed: what the listener made of the stream is checked against what the
server saw and did (the packets it forwarded, the ones it dropped), tick by tick.
"""

from __future__ import annotations

import asyncio

import pytest

import opus_reference as ref
from _calls import make_manager, opus_stream, seq_ahead, wait_until
from _playout import SILENCE, dominant, step_frequency, stepped_tone_packets
from fastvoice.playout_receiver import PlayoutReceiver
from fastvoice.testing import VoiceServer

GUILD, CHANNEL, SPEAKER, LISTENER = 5151, 5252, 2001, 2002
FRAMES = 250


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


async def _run_call(**faults) -> dict:
    packets = stepped_tone_packets(FRAMES)
    async with VoiceServer(seed=16) as server:
        _, speaker_bots = make_manager(server, SPEAKER)
        _, listener_bots = make_manager(server, LISTENER)
        try:
            speaker = speaker_bots.create_conn(GUILD)
            listener = listener_bots.create_conn(GUILD)
            rx = PlayoutReceiver(decode_threads=2)
            ticks = []
            rx.add_listener(ticks.append)
            listener.set_opus_frame_receiver(rx)
            await asyncio.gather(speaker.open(CHANNEL), listener.open(CHANNEL))
            for name, value in faults.items():
                setattr(server, name, value)
            speaker.set_opus_frame_provider(opus_stream(packets))
            await asyncio.sleep(2.5)
            server.stall_udp(0.2)
            await wait_until(lambda: not speaker.sender.live, timeout=15, what="end of the stream")
            await asyncio.sleep(0.8)  # the stall, reordered and jittered packets drain; the buffer plays out
            ssrc = speaker.udp.ssrc
            return dict(
                packets=packets,
                ticks=ticks,
                stats=rx.stats(SPEAKER),
                rx=rx,
                sent=server.packets(ssrc),
                server_lost=[seq for _, lost_ssrc, seq in server.udp_lost if lost_ssrc == ssrc],
                udp_duplicates=listener.udp.duplicates,
            )
        finally:
            await speaker_bots.close()
            await listener_bots.close()


_RUN: dict = {}


async def _faulty_call() -> dict:
    if not _RUN:
        _RUN.update(await _run_call(udp_loss=0.05, udp_reorder=0.05, udp_reorder_window=2, udp_jitter=0.02,
                                    udp_duplicate=0.05))
    return _RUN


async def test_every_tick_in_order_and_the_known_signal_through_the_servers_faults():
    run = await _faulty_call()
    ticks, packets, stats = run["ticks"], run["packets"], run["stats"]
    rx = run["rx"]
    assert rx.closed and rx.skipped_ticks == 0 and rx.dropped_ticks == 0 and rx.errors == 0
    assert [t.index for t in ticks] == list(range(ticks[0].index, ticks[0].index + len(ticks)))
    number = {p: k for k, p in enumerate(packets)}
    played = [(t.index, number[t.packets[SPEAKER]]) for t in ticks
              if SPEAKER in t.speaking and t.packets[SPEAKER] is not None]
    frames = [k for _, k in played]
    assert frames == sorted(set(frames)), "each frame at most once, in order"
    assert len(frames) >= 0.8 * FRAMES
    # Frames keep their distance on the timeline: the offset moves only where the buffer
    # re-anchored, grew or shrank its delay.
    offsets = [index - k for index, k in played]
    moves = sum(1 for a, b in zip(offsets, offsets[1:]) if a != b)
    assert moves <= stats.resyncs + stats.dropped + stats.stretched
    # And each tick's audio is its frame: the frequency of frame k (where the tick before
    # played frame k - 1, so that no concealment leaks into it).
    pcm_of = {t.index: t.speaking[SPEAKER] for t in ticks if SPEAKER in t.speaking}
    checked = 0
    for (i0, k0), (i1, k1) in zip(played, played[1:]):
        if k1 == k0 + 1 and i1 == i0 + 1:
            assert dominant(pcm_of[i1]) == step_frequency(k1), f"tick {i1}, frame {k1}"
            checked += 1
    assert checked >= 0.6 * FRAMES


async def test_concealed_frames_match_the_loss_counted_at_the_server():
    run = await _faulty_call()
    stats, sent, ticks = run["stats"], run["sent"], run["ticks"]
    # The server dropped these (5 % loss); the listener never had them. Those before the last
    # packet played are skipped on its timeline; each other skipped one came too late.
    seq_of = {p.opus: p.sequence for p in sent if p.opus != SILENCE}
    played_seqs = [seq_of[t.packets[SPEAKER]] for t in ticks
                   if t.packets.get(SPEAKER) is not None and t.packets[SPEAKER] != SILENCE]
    first, last = played_seqs[0], played_seqs[-1]
    lost_inside = [s for s in run["server_lost"] if 0 < seq_ahead(first, s) < seq_ahead(first, last)]
    assert len(run["server_lost"]) >= 5, "the server really dropped packets"
    assert stats.lost == stats.late + len(lost_inside)
    assert stats.lost == stats.concealed + stats.recovered + stats.muted - stats.stretched
    # Every tick concealed is a tick whose packet did not play (None in tick.packets).
    concealed_ticks = sum(1 for t in ticks if SPEAKER in t.packets and t.packets[SPEAKER] is None)
    assert concealed_ticks == stats.concealed + stats.recovered
    # Duplicates the server made were dropped below the receiver or by it.
    assert run["udp_duplicates"] + stats.duplicate > 0
    assert stats.played + stats.late + stats.duplicate + stats.overflow + stats.invalid + stats.dropped \
        == stats.received


async def test_the_stall_is_absorbed_and_nothing_plays_twice():
    run = await _faulty_call()
    stats, ticks = run["stats"], run["ticks"]
    # 200 ms without packets: concealment, then the burst; either the late ones are dropped or
    # the buffer re-anchors on them, and it sheds the delay again afterwards.
    assert stats.concealed >= 5
    assert stats.late >= 1 or stats.resyncs >= 1
    assert stats.delay <= 0.2
    opus = [t.packets[SPEAKER] for t in ticks if t.packets.get(SPEAKER) is not None]
    assert len(opus) == len(set(opus))
