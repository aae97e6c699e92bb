"""The resampler (both twins): frequency response, alignment, streaming in pieces, channel
conversion, and agreement with an independent implementation (scipy's polyphase resampler)."""

from __future__ import annotations

import array
import importlib
import math

import pytest

from fastvoice import _resample_common
from fastvoice._env import NO_EXTENSIONS


def _twin(name):
    if name == "c":
        if NO_EXTENSIONS:
            pytest.skip("FASTVOICE_NO_EXTENSIONS is set")
        try:
            return importlib.import_module("fastvoice._resample_c")
        except ImportError as exc:
            pytest.skip(f"compiled resampler not built: {exc}")
    return importlib.import_module("fastvoice._resample_py")


@pytest.fixture(scope="module", params=["c", "py"])
def twin(request):
    return _twin(request.param)


def sine(frequency, seconds=0.5, rate=48000, channels=2, amplitude=10000.0, right_frequency=None):
    n = int(seconds * rate)
    out = array.array("h")
    for i in range(n):
        left = int(amplitude * math.sin(2 * math.pi * frequency * i / rate))
        if channels == 1:
            out.append(left)
        else:
            other = right_frequency if right_frequency is not None else frequency
            out.append(left)
            out.append(int(amplitude * math.sin(2 * math.pi * other * i / rate)))
    return out.tobytes()


def one_shot(twin, pcm, in_rate, out_rate, in_channels, out_channels):
    r = twin.Resampler(in_rate, out_rate, in_channels, out_channels)
    out = r.process(pcm) + r.flush()
    return out[r.delay * 2 * out_channels:]


def level_db(pcm, channels=1, channel=0, skip=200):
    values = array.array("h", pcm)[channel::channels][skip:-skip]
    rms = math.sqrt(sum(v * v for v in values) / len(values))
    return 20 * math.log10(max(rms, 1e-9) / (10000 / math.sqrt(2)))


@pytest.mark.parametrize("out_rate", [24000, 16000, 12000, 8000])
def test_a_tone_below_the_new_nyquist_keeps_its_level_and_one_above_it_is_removed(twin, out_rate):
    nyquist = out_rate / 2
    for frequency in (440.0, 0.75 * nyquist):
        out = one_shot(twin, sine(frequency), 48000, out_rate, 2, 1)
        assert abs(level_db(out)) < 0.05, (frequency, level_db(out))
    for frequency in (1.05 * nyquist, 1.5 * nyquist, min(23000.0, 2.5 * nyquist)):
        out = one_shot(twin, sine(frequency), 48000, out_rate, 2, 1)
        assert level_db(out) < -_resample_common.ATTENUATION_DB, (frequency, level_db(out))


def test_the_filter_is_what_the_design_promises():
    for factor in (2, 3, 4, 6):
        taps, half = _resample_common.design(factor)
        assert len(taps) == 2 * half * factor + 1
        assert taps == tuple(reversed(taps)) and abs(sum(taps) - 1) < 1e-12

        def gain(f):  # cycles per input sample
            re = sum(t * math.cos(2 * math.pi * f * n) for n, t in enumerate(taps))
            im = sum(t * math.sin(2 * math.pi * f * n) for n, t in enumerate(taps))
            return 20 * math.log10(max(math.hypot(re, im), 1e-12))

        nyquist = 0.5 / factor
        passband = [gain(nyquist * _resample_common.PASSBAND * i / 40) for i in range(41)]
        stopband = [gain(nyquist + (0.5 - nyquist) * i / 200) for i in range(201)]
        assert max(abs(g) for g in passband) < 0.01
        assert max(stopband) < -_resample_common.ATTENUATION_DB


def test_output_is_aligned_with_the_input_and_streaming_equals_one_shot(twin):
    pcm = sine(300.0, seconds=0.3)
    whole = one_shot(twin, pcm, 48000, 16000, 2, 1)
    assert len(whole) == 2 * 0.3 * 16000
    # aligned: the output sample n is the input at n / 16000 (a 300 Hz tone, no phase shift;
    # one sample off would be ~1,200 away, the passband ripple allows ~8)
    expected = [10000 * math.sin(2 * math.pi * 300 * n / 16000) for n in range(len(whole) // 2)]
    got = array.array("h", whole)
    assert max(abs(a - b) for a, b in zip(got[100:-100], expected[100:-100])) <= 10
    # any cut of the input into whole frames gives the same stream
    r = twin.Resampler(48000, 16000, 2, 1)
    pieces, i = [], 0
    for size in [1, 2, 3, 960, 7, 1000, 5] * 10:
        pieces.append(r.process(pcm[i * 4:(i + size) * 4]))
        i += size
    pieces.append(r.process(pcm[i * 4:]))
    streamed = (b"".join(pieces) + r.flush())[r.delay * 2:]
    assert streamed == whole


def test_channel_conversions(twin):
    stereo = sine(500.0, right_frequency=1500.0, seconds=0.2)
    mono = one_shot(twin, stereo, 48000, 16000, 2, 1)  # the mean of the two sides: both tones, halved
    both = one_shot(twin, stereo, 48000, 16000, 2, 2)
    left = one_shot(twin, stereo[0::1], 48000, 16000, 2, 2)[0::1]
    assert len(both) == 2 * len(mono) and left == both
    values = array.array("h", both)
    lmono = array.array("h", mono)
    for n in range(200, len(lmono) - 200):
        assert abs(lmono[n] - (values[2 * n] + values[2 * n + 1]) / 2) <= 1
    up = one_shot(twin, mono, 16000, 16000, 1, 2)
    assert array.array("h", up)[0::2] == array.array("h", up)[1::2] == lmono
    # the same rate, stereo to mono: (left + right) / 2, rounded half to even
    pcm = array.array("h", [3, 4, -3, -4, 32767, 32767, -32768, -32767]).tobytes()
    assert array.array("h", twin.Resampler(48000, 48000, 2, 1).process(pcm)).tolist() == [4, -4, 32767, -32768]


def test_the_twins_agree_sample_for_sample():
    c, py = _twin("c"), _twin("py")
    pcm = sine(700.0, right_frequency=9000.0, seconds=0.25, amplitude=30000.0)
    for out_rate, channels in ((16000, 1), (24000, 2), (8000, 1), (12000, 2)):
        a = one_shot(c, pcm, 48000, out_rate, 2, channels)
        b = one_shot(py, pcm, 48000, out_rate, 2, channels)
        diff = [abs(x - y) for x, y in zip(array.array("h", a), array.array("h", b))]
        assert len(a) == len(b) and max(diff) <= 1 and sum(diff) <= len(diff) // 100
    assert c.pcm_rms(pcm) == py.pcm_rms(pcm)


def test_agrees_with_scipys_polyphase_resampler():
    signal = pytest.importorskip("scipy.signal")
    numpy = pytest.importorskip("numpy")
    from fastvoice.resample import resample_pcm

    rate = 48000
    t = numpy.arange(int(0.5 * rate)) / rate
    x = 6000 * numpy.sin(2 * numpy.pi * 440 * t) + 3000 * numpy.sin(2 * numpy.pi * 2500 * t + 1)
    pcm = numpy.stack([x, x], axis=1).astype("<i2").tobytes()
    ours = numpy.frombuffer(resample_pcm(pcm, 48000, 16000, 2, 1), "<i2").astype(float)
    theirs = signal.resample_poly(x.astype("<i2").astype(float), 1, 3)
    inner = slice(300, -300)
    error = ours[inner] - theirs[inner]
    snr = 10 * numpy.log10(numpy.sum(theirs[inner] ** 2) / numpy.sum(error ** 2))
    assert snr > 45, snr


def test_bad_arguments_are_refused_by_name(twin):
    with pytest.raises(ValueError, match="output rate must divide"):
        twin.Resampler(16000, 12000, 1, 1)
    with pytest.raises(ValueError, match="in_rate"):
        twin.Resampler(44100, 16000, 2, 1)
    with pytest.raises(TypeError, match="out_channels"):
        twin.Resampler(48000, 16000, 2, "1")
    with pytest.raises(ValueError, match="whole number"):
        twin.Resampler(48000, 16000, 2, 1).process(b"\x00" * 6)
    with pytest.raises(ValueError, match="whole number"):
        twin.pcm_rms(b"\x00")
    assert twin.pcm_rms(b"") == 0.0
    assert twin.pcm_rms(array.array("h", [3, -4]).tobytes()) == math.sqrt(12.5)


def _implementation(code, **env):
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)


def test_the_selector_gives_the_twin_the_environment_asks_for():
    _twin("c")  # skips when the compiled twin is not built
    show = "import fastvoice.resample as r; print(r.IMPLEMENTATION, r.Resampler.__module__)"
    assert _implementation(show).stdout.split() == ["c", "fastvoice._resample_c"]
    assert _implementation(show, FASTVOICE_NO_EXTENSIONS="1").stdout.split() == ["py", "fastvoice._resample_py"]
    missing = "import sys; sys.modules['fastvoice._resample_c'] = None; " + show
    assert _implementation(missing).stdout.split() == ["py", "fastvoice._resample_py"]
    required = _implementation(missing, FASTVOICE_REQUIRE_EXTENSIONS="1")
    assert required.returncode != 0 and "compiled resampler fastvoice._resample_c" in required.stderr


def test_mix_pcm_sums_and_clips_each_sample(twin):
    import random

    rng = random.Random(5)
    pieces = [array.array("h", [rng.randrange(-32768, 32768) for _ in range(1920)]) for _ in range(3)]
    expected = [max(-32768, min(32767, a + b + c)) for a, b, c in zip(*pieces)]
    assert array.array("h", twin.mix_pcm([p.tobytes() for p in pieces])).tolist() == expected
    assert array.array("h", twin.mix_pcm([array.array("h", [30000, -30000, 5]).tobytes()] * 2)).tolist() == \
        [32767, -32768, 10]
    one = pieces[0].tobytes()
    assert twin.mix_pcm([one]) == one and twin.mix_pcm([bytearray(one), memoryview(one)]) == \
        array.array("h", [max(-32768, min(32767, 2 * v)) for v in pieces[0]]).tobytes()
    with pytest.raises(ValueError, match="at least one"):
        twin.mix_pcm([])
    with pytest.raises(ValueError, match="differ in length"):
        twin.mix_pcm([b"\0\0", b"\0\0\0\0"])
    with pytest.raises(ValueError, match="16-bit"):
        twin.mix_pcm([b"\0\0\0"])
    with pytest.raises(TypeError, match="sequence"):
        twin.mix_pcm(one)
