"""PlayoutReceiver driven by a test clock: ordering, wraps, loss and its concealment, FEC,
talkspurts, late and duplicate packets, delay adaptation, drift, memory bounds, users leaving.

Every signal is a known one: a tone whose frequency changes every frame, encoded by libopus,
so each tick's PCM says which frame it came from; tick by tick the PCM is also compared with
libopus decoding the same packets itself (tests/opus_reference.py), through the same calls.
"""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

import opus_reference as ref
from _playout import (
    SILENCE,
    Arrival,
    Harness,
    counter_packet,
    dominant,
    step_frequency,
    stepped_tone_packets,
    stream,
    voice_fec_packets,
)
from fastvoice.opus_packet import has_fec
from fastvoice.playout import PlayoutBuffer
from fastvoice.playout_receiver import PlayoutReceiver
from fastvoice.rtp import Packet
from fastvoice.timeline import PlayoutClock

pytestmark = pytest.mark.usefixtures("libopus")


@pytest.fixture
def libopus():
    ref.require_libopus()


USER, OTHER = 11, 22


def reference_decode(harness: Harness, user: int) -> list[bytes]:
    """What libopus gives when called by hand as the receiver says it did: the played packet,
    the next packet's FEC, or concealment, tick by tick (silence frames decoded too)."""
    decoder = ref.Decoder()
    out = []
    for tick in harness.ticks:
        if user in tick.speaking:
            packet = tick.packets[user]
            if packet is not None:
                out.append(decoder.decode(packet))
            else:
                out.append(tick.speaking[user])  # concealment: checked separately
                decoder.decode(None)
    return out


# -- order, alignment, the known signal ----------------------------------------------------------


def test_every_tick_in_order_and_each_frame_on_its_own_tick_despite_jitter_and_reordering():
    packets = stepped_tone_packets(150)
    harness = Harness()
    # Up to 45 ms of jitter: consecutive packets often arrive out of order.
    arrivals = stream(USER, packets, jitter=0.045, seed=5)
    assert any(b.sequence < a.sequence for a, b in zip(sorted(arrivals), sorted(arrivals)[1:])), "no reordering"
    harness.play(arrivals)

    assert [t.index for t in harness.ticks] == list(range(len(harness.ticks)))
    played = harness.frames_played(USER, packets)
    # every frame, once, in order; then 100 ms of concealment (the stream stopped without silence frames)
    assert [k for _, k in played] == list(range(150)) + [None] * 5
    played = played[:150]
    offsets = {index - k for index, k in played}
    assert len(offsets) == 1, f"frames drifted against the timeline: {sorted(offsets)}"
    frame_of = dict(played)
    for tick in harness.ticks:
        if USER in tick.speaking:
            k = frame_of.get(tick.index)
            if k is not None and k > 0:  # the first frame's start is the codec's warm-up
                assert dominant(tick.speaking[USER]) == step_frequency(k), f"tick {tick.index} frame {k}"
            assert tick.silent == set()
        elif tick.users:
            assert tick.silent == {USER} and tick.users == frozenset({USER})
        else:
            assert tick.index < 5 and tick.silent == set()  # before the first packet
    stats = harness.rx.stats(USER)
    assert (stats.received, stats.played, stats.lost, stats.late, stats.concealed) == (150, 150, 0, 0, 5)


def test_tick_pcm_is_what_libopus_gives_for_the_same_packets():
    packets = stepped_tone_packets(80)
    harness = Harness()
    harness.play(stream(USER, packets, jitter=0.03, seed=9, skip={20, 33, 34}))
    got = [t.speaking[USER] for t in harness.ticks if USER in t.speaking]
    expected = reference_decode(harness, USER)
    assert got == expected
    # and the concealed ticks are libopus's concealment at that point of the stream
    decoder, tick_pcm = ref.Decoder(), []
    for k in range(35):
        tick_pcm.append(decoder.decode(packets[k]) if k not in (20, 33, 34) else decoder.decode(None))
    assert got[:35] == tick_pcm


def test_sequence_and_timestamp_wrap_are_crossed_without_a_glitch():
    packets = stepped_tone_packets(150)
    # Both wrap inside the stream: the sequence number after 36 frames, the timestamp after 60.
    harness = Harness()
    harness.play(stream(USER, packets, sequence=65500, timestamp=2**32 - 60 * 960, jitter=0.03, seed=2))
    played = harness.frames_played(USER, packets)
    assert [k for _, k in played] == list(range(150)) + [None] * 5
    assert len({index - k for index, k in played[:150]}) == 1
    stats = harness.rx.stats(USER)
    assert (stats.lost, stats.late, stats.duplicate, stats.restarts, stats.invalid, stats.talkspurts) == (0, 0, 0, 0, 0, 1)


def test_no_drift_between_users_over_ten_minutes_of_simulated_time():
    count = 30_000  # 10 minutes of 20 ms frames
    a = [counter_packet(n, 1) for n in range(count)]
    b = [counter_packet(n, 2) for n in range(count)]
    harness = Harness()
    arrivals = (stream(USER, a, sequence=50_000, timestamp=2**32 - 5_000 * 960, jitter=0.04, seed=3)
                + stream(OTHER, b, sequence=7, timestamp=123, jitter=0.015, seed=4, start_time=0.013))
    harness.play(arrivals)
    assert [t.index for t in harness.ticks] == list(range(len(harness.ticks)))
    played_a = {k: i for i, k in harness.frames_played(USER, a) if k is not None}
    played_b = {k: i for i, k in harness.frames_played(OTHER, b) if k is not None}
    assert sorted(played_a) == list(range(count)) and sorted(played_b) == list(range(count))
    # Frames sent at the same time play on the same tick, or one apart (B was sent 13 ms later),
    # from the first minute to the tenth.
    differences = {played_b[k] - played_a[k] for k in range(count)}
    assert differences <= {0, 1} and len(differences) == 1, differences
    for user in (USER, OTHER):
        stats = harness.rx.stats(user)
        assert (stats.lost, stats.late, stats.concealed - 5, stats.restarts) == (0, 0, 0, 0), stats


@pytest.mark.parametrize("ppm", [-150.0, 150.0])
def test_a_sender_clock_running_slow_or_fast_keeps_a_bounded_delay(ppm):
    count = 30_000
    packets = [counter_packet(n) for n in range(count)]
    harness = Harness(max_delay=0.2)
    harness.play(stream(USER, packets, jitter=0.01, seed=6, ppm=ppm))
    played = harness.frames_played(USER, packets)
    offsets = [index - k for index, k in played if k is not None]
    # 150 ppm over 10 minutes is 90 ms (4.5 ticks) of drift; the buffer follows it a tick at a time.
    assert max(offsets) - min(offsets) <= 3
    stats = harness.rx.stats(USER)
    if ppm > 0:  # packets come ever earlier: ticks are dropped to keep the delay from growing
        assert offsets[0] - offsets[-1] >= 2 and stats.dropped == offsets[0] - offsets[-1]
        assert stats.lost == stats.late == 0 and stats.delay <= 0.12
    else:  # ever later: once they start being late, the delay grows
        assert offsets[-1] - offsets[0] >= 1 and stats.stretched == offsets[-1] - offsets[0]
        assert stats.late <= 15 and stats.lost == stats.late
    assert stats.recovered + stats.concealed + stats.muted == stats.lost + stats.stretched + 5


# -- loss and its concealment ---------------------------------------------------------------------


def test_lost_frames_are_concealed_and_counted_exactly_and_a_long_loss_goes_silent():
    packets = list(stepped_tone_packets(100)) + [SILENCE] * 5
    lost = {10, 20, 21, 40, 41, 42, 43, 44, 45, 46, 47, 60, 61, 62}
    harness = Harness()
    harness.play(stream(USER, packets, jitter=0.005, seed=8, skip=lost))
    stats = harness.rx.stats(USER)
    assert stats.lost == 14
    # 1 + 2 + 5 (then 3 muted: 100 ms of concealment at most) + 3
    assert (stats.concealed, stats.muted, stats.recovered) == (11, 3, 0)
    assert stats.lost == stats.concealed + stats.muted + stats.recovered
    by_index = {t.index: t for t in harness.ticks}
    first = next(t.index for t in harness.ticks if USER in t.speaking)
    for k in range(100):
        tick = by_index[first + k]
        if k in lost and k - 40 >= 5 and k < 50:
            assert USER in tick.silent, f"frame {k}: past 100 ms of loss the user is silent"
        elif k in lost:
            assert tick.packets[USER] is None, f"frame {k} concealed"
        else:
            assert tick.packets[USER] == packets[k]
    # the 5 silence frames end the talkspurt: silent, not concealed
    assert all(USER in by_index[first + k].silent for k in range(100, 130))


def test_a_sender_that_vanishes_is_concealed_for_100_ms_then_silent():
    packets = stepped_tone_packets(50)
    harness = Harness()
    harness.play(stream(USER, packets))
    spoken = [t.index for t in harness.ticks if USER in t.speaking]
    concealed = [t.index for t in harness.ticks if t.packets.get(USER, b"") is None]
    assert len(spoken) == 55 and concealed == spoken[-5:]
    assert all(USER in t.silent for t in harness.ticks if t.index > spoken[-1])
    assert harness.rx.stats(USER).concealed == 5 and harness.rx.stats(USER).lost == 0


def test_fec_recovers_a_lost_frame_when_the_next_packet_is_there_and_beats_concealment():
    count = 200
    packets, _ = voice_fec_packets(count)
    candidates = [k for k in range(20, count - 2, 9) if has_fec(packets[k + 1])]
    assert len(candidates) >= 10
    harness = Harness()
    harness.play(stream(USER, packets, jitter=0.005, skip=set(candidates)))
    stats = harness.rx.stats(USER)
    assert (stats.lost, stats.recovered, stats.concealed - 5) == (len(candidates), len(candidates), 0)

    # Quality: each recovered tick against the frame decoded without loss, and against what
    # concealment gives at the same point.
    played = harness.frames_played(USER, packets)
    tick_of = {}
    previous = None
    for index, k in played:
        if k is None and previous is not None:
            tick_of[previous + 1] = index
        previous = k if k is not None else (previous + 1 if previous is not None else None)
    by_index = {t.index: t for t in harness.ticks}
    fec_snr, plc_snr = [], []
    for k in candidates:
        clean = ref.Decoder()
        for p in packets[:k]:
            clean.decode(p)
        truth = ref.samples(clean.decode(packets[k]))
        concealer = ref.Decoder()
        for p in packets[:k]:
            concealer.decode(p)
        plc = ref.samples(concealer.decode(None))
        recovered = ref.samples(by_index[tick_of[k]].speaking[USER])
        fec_snr.append(ref.snr_db(truth, recovered))
        plc_snr.append(ref.snr_db(truth, plc))
    mean_fec, mean_plc = sum(fec_snr) / len(fec_snr), sum(plc_snr) / len(plc_snr)
    assert mean_fec > mean_plc + 3, (mean_fec, mean_plc)


def test_without_the_next_packet_or_without_fec_data_a_loss_is_concealed():
    count = 120
    packets, _ = voice_fec_packets(count)
    k = next(k for k in range(30, count) if has_fec(packets[k + 1]))
    # The packet after the lost one arrives too late to lend its FEC: concealment.
    arrivals = stream(USER, packets, skip={k})
    late = next(a for a in arrivals if a.sequence == (1000 + k + 1) & 0xFFFF)
    late.time += 0.035
    harness = Harness(min_delay=0.02, max_delay=0.04, delay=0.04)
    harness.play(arrivals)
    stats = harness.rx.stats(USER)
    assert (stats.recovered, stats.lost, stats.concealed - 5) == (0, 1, 1)
    # A CELT stream has no FEC: concealment too.
    harness = Harness()
    harness.play(stream(USER, stepped_tone_packets(60), skip={30}))
    assert (harness.rx.stats(USER).recovered, harness.rx.stats(USER).concealed) == (0, 1 + 5)


# -- talkspurts, late and duplicate packets --------------------------------------------------------


def test_a_paused_sender_is_a_talkspurt_boundary_not_loss():
    tone = list(stepped_tone_packets(60))
    first = stream(USER, tone[:30] + [SILENCE] * 5)
    # 1.5 s later (75 ticks: the timestamp moves on by the pause), the next talkspurt, marker set.
    second = stream(USER, tone[30:], sequence=1000 + 35, timestamp=50_000 + (35 + 75) * 960,
                    start_time=(35 + 75) * 0.02, jitter=0.01, seed=3)
    harness = Harness()
    harness.play(first + second)
    stats = harness.rx.stats(USER)
    assert (stats.lost, stats.concealed, stats.muted, stats.late, stats.talkspurts) == (0, 5, 0, 0, 2)
    played = [k for _, k in harness.frames_played(USER, tone)]
    assert played[:60] == list(range(60))
    indices = [i for i, k in harness.frames_played(USER, tone) if k is not None]
    gap = indices[30] - indices[29]
    assert 75 + 5 - 2 <= gap <= 75 + 5 + 2, "the pause keeps its length (within the delay's adaptation)"


def test_a_pause_without_silence_frames_or_marker_is_not_loss_either():
    tone = list(stepped_tone_packets(60))
    arrivals = stream(USER, tone[:30]) + stream(USER, tone[30:], sequence=1030, timestamp=50_000 + 80 * 960,
                                                 start_time=80 * 0.02, marker_first=False)
    harness = Harness()
    harness.play(arrivals)
    stats = harness.rx.stats(USER)
    # Concealment ran for 100 ms after each stop (nobody can tell a stop from a loss at once),
    # but nothing counts as lost: the sequence numbers did not skip.
    assert (stats.lost, stats.muted, stats.concealed, stats.talkspurts) == (0, 0, 10, 2)


def test_duplicate_and_late_packets_are_dropped_and_counted():
    packets = stepped_tone_packets(40)
    arrivals = stream(USER, packets)
    arrivals.append(Arrival(arrivals[10].time + 0.005, USER, arrivals[10].sequence, arrivals[10].timestamp,
                            packets[10]))  # a duplicate
    late = next(a for a in arrivals if a.sequence == 1020)
    late.time += 0.2  # long after its tick
    harness = Harness()
    harness.play(arrivals)
    stats = harness.rx.stats(USER)
    assert (stats.duplicate, stats.late, stats.lost, stats.concealed - 5, stats.played) == (1, 1, 1, 1, 39)
    assert [k for _, k in harness.frames_played(USER, packets)][:21] == list(range(20)) + [None]


def test_a_stall_is_concealed_then_the_stream_resyncs_and_later_sheds_the_extra_delay():
    packets = [counter_packet(n) for n in range(1500)]
    arrivals = stream(USER, packets, jitter=0.002)
    for a in arrivals:  # a 200 ms stall: what was sent during it arrives at its end, at once
        if 10.0 <= a.time < 10.2:
            a.time = 10.2 + (a.time - 10.0) * 1e-3
    harness = Harness()
    harness.play(arrivals)
    stats = harness.rx.stats(USER)
    # Ten ticks without packets: five concealed, five silent; then three newest packets came
    # late in a row: the first two are dropped, the stream re-anchors on the third, and the
    # ticks concealed beyond the two lost ones were the stall absorbed (stretched).
    assert (stats.resyncs, stats.late, stats.lost, stats.stretched) == (1, 2, 2, 3)
    assert stats.recovered + stats.concealed + stats.muted == stats.lost + stats.stretched + 5
    assert stats.dropped >= 3, "the delay the stall added is shed again"
    assert stats.delay <= 0.1


def test_a_new_stream_from_the_same_user_is_taken_up_not_dropped_as_late():
    tone = stepped_tone_packets(60)
    harness = Harness()
    # a reconnected sender: new random sequence number and timestamp
    harness.play(stream(USER, tone[:30]) + stream(USER, tone[30:], sequence=40_000, timestamp=7,
                                                   start_time=0.7, marker_first=False))
    stats = harness.rx.stats(USER)
    assert stats.restarts == 1 and stats.invalid == 1 and stats.played == 59


# -- delay adaptation ----------------------------------------------------------------------------


def test_delay_adapts_to_measured_jitter_within_its_bounds():
    harness = Harness(delay=0.06, min_delay=0.02, max_delay=0.3)
    t, seq, ts = 0.0, 1000, 0
    delays, lates = [], []
    for n, jitter in enumerate([0.002] * 3 + [0.15] * 4):
        frames = [counter_packet(k) for k in range(100)] + [SILENCE] * 5
        late_before = harness.rx.stats(USER).late if harness.rx.users else 0
        harness.play(stream(USER, frames, start_time=t, sequence=seq, timestamp=ts, jitter=jitter, seed=n),
                     until=t + (len(frames) + 25) * 0.02)
        stats = harness.rx.stats(USER)
        delays.append(stats.delay)
        lates.append(stats.late - late_before)
        seq += len(frames)
        ts += (len(frames) + 25) * 960
        t += (len(frames) + 25) * 0.02
    # A clean path: from the second talkspurt on the delay is the minimum (a tick, at most 40 ms
    # after the fastest arrival), and nothing is late.
    assert all(0.02 <= d <= 0.04 for d in delays[1:3]), delays
    assert lates[:3] == [0, 0, 0]
    # 0 to 150 ms of jitter: the first such talkspurt loses packets until the delay grows
    # (within it, a second at a time), the next ones start with it.
    assert lates[3] > 10
    assert all(0.14 <= d <= 0.3 for d in delays[4:]), delays
    assert all(late <= 5 for late in lates[5:]), lates
    with pytest.raises(ValueError, match="delay"):
        PlayoutReceiver(delay=0.5, max_delay=0.4)


# -- memory, users leaving, consumers -------------------------------------------------------------


def test_a_flood_of_packets_for_one_user_is_bounded_in_memory():
    clock = PlayoutClock(autostart=False)
    rx = PlayoutReceiver(clock=clock, decode_threads=0, max_delay=0.4)
    rng = random.Random(1)
    payload = counter_packet(0)

    def flood(count, start):
        for n in range(start, start + count):
            if n % 2:
                rx.receive_opus_frame(USER, Packet(n & 0xFFFF, (n * 960) & 0xFFFFFFFF, 0, payload))
            else:
                rx.receive_opus_frame(USER, Packet(rng.randrange(65536), rng.randrange(2**32), 0, payload))

    flood(2_000, 0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        flood(100_000, 2_000)
        clock.advance(1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    stats = rx.stats(USER)
    assert stats.received == 102_000
    assert stats.buffered <= 0.4 / 0.02 + 5
    assert grown < 64 * 1024, f"{grown} bytes more after 100,000 more packets"
    # every packet is accounted for exactly once
    assert stats.received == (stats.played + stats.buffered + stats.late + stats.duplicate + stats.overflow
                              + stats.invalid + stats.dropped)
    assert stats.overflow > 1000 and stats.invalid > 10_000


def test_a_user_who_leaves_plays_out_what_is_buffered_then_is_forgotten():
    packets = stepped_tone_packets(40)
    harness = Harness(delay=0.1, min_delay=0.1)
    harness.play(stream(USER, packets) + stream(OTHER, packets, start_time=0.001), until=0.8)
    assert harness.rx.users == {USER, OTHER}
    buffered = harness.rx.stats(USER).buffered
    assert buffered >= 4
    harness.rx.cleanup_user(USER)
    before = len(harness.ticks)
    harness.clock.advance(0.5)
    spoke_after = [t for t in harness.ticks[before:] if USER in t.speaking]
    assert [t.packets[USER] for t in spoke_after] == list(packets[40 - buffered:])
    assert harness.ticks[-1].users == {OTHER} and harness.rx.users == {OTHER}
    with pytest.raises(KeyError):
        harness.rx.stats(USER)
    harness.rx.cleanup_user(OTHER)  # idle (nothing buffered, concealment over): gone at once
    assert harness.rx.users == frozenset()


async def test_a_consumer_that_falls_behind_loses_the_oldest_ticks_and_memory_stays_bounded():
    clock = PlayoutClock(autostart=False)
    rx = PlayoutReceiver(clock=clock, decode_threads=0)
    ticks = rx.ticks(max_pending=5)
    for n in range(50):
        rx.receive_opus_frame(USER, Packet(n, n * 960, 0, counter_packet(n)))
        clock.advance(0.02)
    assert ticks.pending == 5 and ticks.dropped == 45
    got = [await ticks.__anext__() for _ in range(5)]
    assert [t.index for t in got] == list(range(45, 50))
    rx.close()
    with pytest.raises(StopAsyncIteration):
        await ticks.__anext__()


async def test_async_iteration_of_ticks_on_a_test_clock():
    clock = PlayoutClock(autostart=False)
    rx = PlayoutReceiver(clock=clock, decode_threads=0)
    packets = stepped_tone_packets(20)
    seen = []
    async with rx.ticks() as ticks:
        for k, p in enumerate(packets):
            rx.receive_opus_frame(USER, Packet(k, k * 960, 0, p))
            clock.advance(0.02)
            while ticks.pending:
                seen.append(await ticks.__anext__())
    assert [t.index for t in seen] == list(range(20))
    assert ticks.ended and not rx._streams
    rx.close()


def test_decoding_only_happens_while_someone_listens():
    clock = PlayoutClock(autostart=False)
    rx = PlayoutReceiver(clock=clock, decode_threads=0)
    for n in range(10):
        rx.receive_opus_frame(USER, Packet(n, n * 960, 0, b"\xfc\x00garbage that libopus will not be asked about"))
        clock.advance(0.02)
    assert rx.stats(USER).played >= 6 and rx.stats(USER).undecodable == 0
    ticks = []
    rx.add_listener(ticks.append)
    rx.receive_opus_frame(USER, Packet(10, 10 * 960, 0, b"\x0b"))  # a packet libopus refuses
    clock.advance(0.2)
    assert rx.stats(USER).undecodable == 1
    assert any(USER in t.speaking and t.packets[USER] == b"\x0b" for t in ticks)
    rx.close()


def test_a_failing_listener_is_logged_and_counted_and_others_still_get_the_tick(caplog):
    harness = Harness()

    def broken(tick):
        raise RuntimeError("consumer bug")

    harness.rx.add_listener(broken)
    later = []
    harness.rx.add_listener(later.append)
    harness.play(stream(USER, stepped_tone_packets(10)))
    assert harness.rx.errors == len(later) > 0
    assert "consumer bug" in caplog.text


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="sample_rate"):
        PlayoutReceiver(sample_rate=44100)
    with pytest.raises(TypeError, match="channels"):
        PlayoutReceiver(channels="2")
    with pytest.raises(ValueError, match="decode_threads"):
        PlayoutReceiver(decode_threads=-1)
    with pytest.raises(ValueError, match="max_delay"):
        PlayoutBuffer(min_delay=0.1, max_delay=0.05, delay=0.1)
    with pytest.raises(ValueError, match="max_concealment"):
        PlayoutBuffer(max_concealment=-1)
    with pytest.raises(ValueError, match="max_users"):
        PlayoutReceiver(max_users=0)
