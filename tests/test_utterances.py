"""PlayoutReceiver.utterances(): phrases cut by voice activity, with pre-roll, minimum and
maximum lengths, resampled for speech recognisers; users leaving and the receiver closing."""

from __future__ import annotations

import array
import functools
import math

import pytest

import opus_reference as ref
from _playout import SILENCE, Arrival, Harness
from fastvoice.playout_receiver import PlayoutReceiver
from fastvoice.resample import pcm_rms
from fastvoice.rtp import Packet
from fastvoice.timeline import PlayoutClock

USER, OTHER = 31, 32


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


@functools.lru_cache(maxsize=None)
def tone_packets(seconds: float, frequency: float = 440.0, amplitude: float = 8000.0) -> tuple[bytes, ...]:
    pcm = ref.tone(seconds, frequency, amplitude=amplitude)
    return tuple(ref.Encoder(bitrate=64000).encode_stream(pcm, 20))


def speech(user, plan, *, start=0.0, sequence=100, timestamp=10_000, frequency=440.0, amplitude=8000.0):
    """Arrivals for ``plan``: ``("talk", seconds)`` sends a tone then five silence frames,
    ``("pause", seconds)`` sends nothing (the timestamp keeps wall-clock time)."""
    out, t, seq, ts = [], start, sequence, timestamp
    for kind, seconds in plan:
        if kind == "talk":
            frames = list(tone_packets(seconds, frequency, amplitude)) + [SILENCE] * 5
            for k, opus in enumerate(frames):
                out.append(Arrival(t + 0.001, user, seq & 0xFFFF, ts & 0xFFFFFFFF, opus, k == 0))
                t, seq, ts = t + 0.02, seq + 1, ts + 960
        else:
            ticks = round(seconds / 0.02)
            t, ts = t + ticks * 0.02, ts + ticks * 960
    return out


def run(plan_by_user, *, until=None, **options):
    harness = Harness()
    stream = harness.rx.utterances(**options)
    arrivals = [a for user, plan in plan_by_user.items() for a in speech(user, plan, frequency=440 + 300 * (user % 2))]
    harness.play(arrivals, until=until)
    got = []
    while stream.pending:
        got.append(stream.get_nowait())
    return harness, stream, got


def test_phrases_are_cut_at_silence_with_pre_roll_resampled_for_a_recogniser():
    harness, stream, got = run({USER: [("pause", 0.5), ("talk", 1.0), ("pause", 1.0), ("talk", 0.6), ("pause", 1.0)]})
    # (user 31's tone is 740 Hz)
    assert [u.user_id for u in got] == [USER, USER]
    first_tick = harness.ticks[0].time
    # voiced ticks: at least -40 dBFS (the first tick after a long silence is the decoder's ramp)
    talk_starts = [t.time for t in harness.ticks if USER in t.speaking and pcm_rms(t.speaking[USER]) >= 327.7]
    # The user is known from its first packet on, three ticks (the playout delay) before its
    # first tick of audio: the first phrase has those as pre-roll, the second 0.2 s.
    for u, seconds, pre_roll in zip(got, (1.0, 0.6), (0.06, 0.2)):
        assert (u.sample_rate, u.channels) == (16000, 1)
        assert len(u.pcm) == round(u.duration * 16000) * 2
        # pre-roll before the first voiced tick; after the last one, up to 0.2 s of tail
        assert u.duration == pytest.approx(seconds + pre_roll + 0.2, abs=0.021), u
        samples = array.array("h", u.pcm).tolist()
        voiced = samples[int(0.25 * 16000):int((0.2 + seconds - 0.05) * 16000)]
        # the tone, at its level, through decoding and the resampler
        assert ref.rms(voiced) == pytest.approx(8000 / math.sqrt(2), rel=0.05)
        assert ref.goertzel_power(voiced, 740.0, 16000) > 100 * ref.goertzel_power(voiced, 440.0, 16000)
        assert ref.rms(samples[:int((pre_roll - 0.03) * 16000)]) < 50, "the pre-roll was quiet"
    second_talk = next(t for t in talk_starts if t > talk_starts[0] + 1.5)
    assert got[0].start == pytest.approx(talk_starts[0] - 0.06, abs=1e-9)
    assert got[1].start == pytest.approx(second_talk - 0.2, abs=1e-9)
    assert got[0].start >= first_tick
    assert stream.delivered == 2 and stream.discarded == 0


def test_a_click_shorter_than_min_length_is_discarded():
    _, stream, got = run({USER: [("talk", 0.1), ("pause", 1.0), ("talk", 0.5), ("pause", 1.0)]})
    assert len(got) == 1 and stream.discarded == 1
    assert got[0].duration == pytest.approx(0.5 + 0.4, abs=0.041)


def test_a_phrase_reaching_max_length_is_delivered_and_the_next_begins():
    _, stream, got = run({USER: [("talk", 2.5), ("pause", 1.0)]}, max_length=1.0)
    assert [round(u.duration, 2) for u in got[:2]] == [1.0, 1.0]
    assert len(got) == 3 and stream.cut == 2
    assert got[1].start == pytest.approx(got[0].end, abs=1e-9) and got[2].start >= got[1].end


def test_quiet_audio_below_the_threshold_makes_no_phrase():
    harness = Harness()
    default = harness.rx.utterances()  # -40 dBFS
    sensitive = harness.rx.utterances(threshold=-60.0)
    harness.play(speech(USER, [("talk", 1.0), ("pause", 1.0)], amplitude=150.0))  # about -47 dBFS
    assert default.pending == 0 and sensitive.pending == 1


def test_two_users_each_get_their_phrases_and_a_user_leaving_ends_theirs():
    harness = Harness()
    stream = harness.rx.utterances(channels=2, sample_rate=24000)
    arrivals = speech(USER, [("talk", 1.0), ("pause", 0.2)]) + speech(OTHER, [("talk", 3.0)], start=0.01)
    harness.play(arrivals, until=1.6)
    got = [stream.get_nowait() for _ in range(stream.pending)]
    assert [u.user_id for u in got] == [USER]  # OTHER is still talking
    harness.rx.cleanup_user(OTHER)
    harness.clock.advance(0.5)
    got = [stream.get_nowait() for _ in range(stream.pending)]
    assert [u.user_id for u in got] == [OTHER] and (got[0].sample_rate, got[0].channels) == (24000, 2)
    assert len(got[0].pcm) == round(got[0].duration * 24000) * 4


async def test_closing_the_receiver_delivers_the_phrase_in_progress_and_ends_the_stream():
    clock = PlayoutClock(autostart=False)
    rx = PlayoutReceiver(clock=clock, decode_threads=0)
    stream = rx.utterances()
    for a in speech(USER, [("talk", 2.0)])[:60]:
        clock.advance(max(0.0, a.time - clock.time()))
        rx.receive_opus_frame(a.user, Packet(a.sequence, a.timestamp, 0, a.opus, marker=a.marker))
    clock.advance(0.1)
    assert stream.pending == 0
    rx.close()
    got = [u async for u in stream]
    assert len(got) == 1 and got[0].duration > 1.0


def test_bad_arguments_are_refused_by_name():
    rx = PlayoutReceiver(clock=PlayoutClock(autostart=False), decode_threads=0)
    with pytest.raises(ValueError, match="output rate must divide"):
        PlayoutReceiver(sample_rate=16000, clock=PlayoutClock(autostart=False)).utterances(sample_rate=12000)
    with pytest.raises(ValueError, match="silence"):
        rx.utterances(silence=0)
    with pytest.raises(ValueError, match="max_length"):
        rx.utterances(min_length=2, max_length=1)
    with pytest.raises(ValueError, match="threshold"):
        rx.utterances(threshold=3)
