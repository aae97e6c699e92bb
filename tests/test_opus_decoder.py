"""OpusDecoder (both twins) against libopus called directly, ffmpeg's encoder and discord.py's decoder."""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys

import pytest

import opus_reference as ref

# ------------------------------------------------------------------ test streams (encoded by libopus itself)

STREAMS = {
    # name: (encoder options, signal, frame duration in ms)
    "celt-fullband-stereo-64k-20ms": (dict(bitrate=64000), "chord", 20),
    "silk-narrowband-mono-60ms": (dict(channels=1, application=ref.OPUS_APPLICATION_VOIP, bitrate=12000,
                                       bandwidth=ref.OPUS_BANDWIDTH_NARROWBAND, voice=True), "voiced", 60),
    "silk-wideband-stereo-40ms": (dict(application=ref.OPUS_APPLICATION_VOIP, bitrate=20000,
                                       bandwidth=ref.OPUS_BANDWIDTH_WIDEBAND, voice=True), "voiced", 40),
    "hybrid-fullband-10ms": (dict(application=ref.OPUS_APPLICATION_VOIP, bitrate=32000, voice=True,
                                  bandwidth=ref.OPUS_BANDWIDTH_FULLBAND), "voiced", 10),
    "celt-lowdelay-2.5ms": (dict(application=ref.OPUS_APPLICATION_RESTRICTED_LOWDELAY, bitrate=96000), "chord", 2.5),
    "celt-lowdelay-5ms": (dict(application=ref.OPUS_APPLICATION_RESTRICTED_LOWDELAY, bitrate=64000), "noise", 5),
    "multi-frame-120ms": (dict(bitrate=64000), "chord", 120),
    "silk-fec-20ms": (dict(application=ref.OPUS_APPLICATION_VOIP, bitrate=24000, fec=True, loss_percent=20,
                           voice=True), "voiced", 20),
}
OUTPUTS = [(48000, 2), (48000, 1), (24000, 2), (16000, 1), (12000, 1), (8000, 2)]


@functools.lru_cache(maxsize=None)
def signal(kind: str, channels: int) -> bytes:
    if kind == "voiced":
        return ref.voiced(1.2, channels=channels)
    if kind == "noise":
        return ref.noise(0.5, channels=channels)
    a = ref.samples(ref.tone(1.2, 440, channels=1), 0, 1)
    b = ref.samples(ref.tone(1.2, 660, channels=1, amplitude=5000), 0, 1)
    import array

    return array.array("h", [x + y for x, y in zip(a, b) for _ in range(channels)]).tobytes()


@functools.lru_cache(maxsize=None)
def stream(name: str) -> tuple[bytes, ...]:
    options, kind, frame_ms = STREAMS[name]
    encoder = ref.Encoder(**options)
    return tuple(encoder.encode_stream(signal(kind, encoder.channels), frame_ms))


def _with_losses(packets):
    """Operations over a stream: decode, conceal (None), or recover from the next packet (FEC)."""
    ops = []
    for i, packet in enumerate(packets):
        if i % 7 == 3 and i + 1 < len(packets):
            ops.append(("fec", packets[i + 1]))
        elif i % 11 == 5:
            ops.append(("plc", None))
        else:
            ops.append(("decode", packet))
    return ops


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


# ------------------------------------------------------------------ byte for byte against libopus


@pytest.mark.parametrize("sample_rate, channels", OUTPUTS)
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_same_pcm_as_libopus(opus, name, sample_rate, channels):
    decoder = opus.OpusDecoder(sample_rate, channels)
    oracle = ref.Decoder(sample_rate, channels)
    ops = _with_losses(stream(name))
    assert {op for op, _ in ops} == {"decode", "plc", "fec"}
    for i, (op, packet) in enumerate(ops):
        expected = oracle.decode(packet, fec=op == "fec")
        got = decoder.decode(packet, fec=op == "fec")
        assert isinstance(expected, bytes) and got == expected, f"{name}: {op} #{i} differs"
        # the duration libopus itself reports for what it just decoded or concealed
        assert len(got) == oracle.last_packet_duration() * channels * 2


@pytest.mark.parametrize("frame_ms", [2.5, 5, 10, 20, 40, 60, 80, 100, 120])
def test_output_is_as_long_as_the_packet(opus, frame_ms):
    application = ref.OPUS_APPLICATION_RESTRICTED_LOWDELAY if frame_ms < 10 else ref.OPUS_APPLICATION_AUDIO
    packets = ref.Encoder(application=application).encode_stream(signal("chord", 2), frame_ms)
    for sample_rate, channels in OUTPUTS:
        decoder = opus.OpusDecoder(sample_rate, channels)
        for packet in packets[:3]:
            assert len(decoder.decode(packet)) == int(sample_rate * frame_ms / 1000) * channels * 2
        # concealment lasts as long as the last packet
        assert len(decoder.decode(None)) == int(sample_rate * frame_ms / 1000) * channels * 2


def test_bytes_like_packets_decode_alike(opus):
    packets = stream("celt-fullband-stereo-64k-20ms")[:4]
    outputs = []
    for convert in (bytes, bytearray, memoryview, lambda p: memoryview(b"xx" + p)[2:]):
        decoder = opus.OpusDecoder()
        outputs.append([decoder.decode(convert(p)) for p in packets])
    assert all(o == outputs[0] for o in outputs)


# ------------------------------------------------------------------ the signal survives (ffmpeg's encoder)


def _ffmpeg_packets(source: str, *options: str) -> list[bytes]:
    if shutil.which("ffmpeg") is None:
        if os.environ.get("FASTVOICE_REQUIRE_FFMPEG") == "1":
            pytest.fail("ffmpeg not found, and FASTVOICE_REQUIRE_FFMPEG=1")
        pytest.skip("ffmpeg not found")
    from fastvoice.ogg import OggOpusDemuxer

    ogg = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", source, *options, "-c:a", "libopus",
                          "-f", "ogg", "-"], capture_output=True, check=True, timeout=60).stdout
    demuxer = OggOpusDemuxer()
    demuxer.feed(ogg)
    demuxer.feed_eof()
    assert demuxer.read_headers()
    packets = []
    while True:
        try:
            packet = demuxer.read_packet()
        except EOFError:
            break
        if packet is not None:
            packets.append(packet)
    return packets


@pytest.mark.parametrize("sample_rate, channels", [(48000, 2), (16000, 1)])
def test_decoded_sine_has_its_frequency_and_level(opus, sample_rate, channels):
    # ffmpeg's sine source: amplitude 1/8 of full scale (4096), made stereo at -3 dB per side: 2896.
    packets = _ffmpeg_packets("sine=frequency=1000:duration=2", "-ac", "2", "-b:a", "64k")
    decoder = opus.OpusDecoder(sample_rate, channels)
    pcm = b"".join(decoder.decode(p) for p in packets)
    assert len(pcm) == len(packets) * sample_rate // 50 * channels * 2
    for channel in range(channels):
        x = ref.samples(pcm, channel, channels)[sample_rate // 2: sample_rate // 2 + sample_rate // 2]
        at = ref.goertzel_power(x, 1000, sample_rate)
        assert math.sqrt(4 * at) == pytest.approx(4096 / math.sqrt(2), rel=0.08)
        for other in (700, 1300, 2000, 3000):
            assert ref.goertzel_power(x, other, sample_rate) < at / 1000, other
        assert ref.rms(x) == pytest.approx(2048, rel=0.08)


# ------------------------------------------------------------------ loss: concealment and FEC


def test_concealment_length_follows_the_last_packet(opus):
    decoder = opus.OpusDecoder()
    assert len(decoder.decode(None)) == 960 * 2 * 2  # nothing decoded yet: 20 ms
    sixty = stream("silk-narrowband-mono-60ms")
    decoder.decode(sixty[0])
    assert len(decoder.decode(None)) == 2880 * 2 * 2
    assert len(decoder.decode(None)) == 2880 * 2 * 2
    decoder.decode(stream("celt-lowdelay-5ms")[0])
    assert len(decoder.decode(None)) == 240 * 2 * 2
    decoder.reset()
    assert len(decoder.decode(None)) == 960 * 2 * 2
    mono16 = opus.OpusDecoder(16000, 1)
    assert len(mono16.decode(None)) == 320 * 2


def test_concealment_continues_the_sound(opus):
    # A steady tone: the concealed frame right after it keeps most of its energy at the tone.
    packets = ref.Encoder(bitrate=64000).encode_stream(ref.tone(0.5, 440), 20)
    decoder = opus.OpusDecoder()
    for p in packets:
        last = decoder.decode(p)
    concealed = decoder.decode(None)
    x, y = ref.samples(last), ref.samples(concealed)
    assert ref.goertzel_power(y, 440, 48000) > 0.3 * ref.goertzel_power(x, 440, 48000)


def _loss_run(decoder, packets, lost, recover):
    out = []
    for i, packet in enumerate(packets):
        if i in lost:
            out.append(decoder.decode(packets[i + 1], fec=True) if recover else decoder.decode(None))
        else:
            out.append(decoder.decode(packet))
    return out


def test_fec_recovers_a_lost_frame_better_than_concealment(opus):
    packets = stream("silk-fec-20ms")
    lost = set(range(6, len(packets) - 1, 5))
    reference_decoder = opus.OpusDecoder()
    clean = [reference_decoder.decode(p) for p in packets]
    recovered = _loss_run(opus.OpusDecoder(), packets, lost, recover=True)
    concealed = _loss_run(opus.OpusDecoder(), packets, lost, recover=False)
    fec_snr = [ref.snr_db(ref.samples(clean[i]), ref.samples(recovered[i])) for i in sorted(lost)]
    plc_snr = [ref.snr_db(ref.samples(clean[i]), ref.samples(concealed[i])) for i in sorted(lost)]
    mean_fec, mean_plc = sum(fec_snr) / len(fec_snr), sum(plc_snr) / len(plc_snr)
    # FEC is a low-bitrate copy of the lost frame: far closer to it than an extrapolation.
    assert mean_fec > mean_plc + 6, (fec_snr, plc_snr)
    assert mean_fec > 5
    # And it is what libopus itself gives for opus_decode(next, decode_fec=1).
    oracle = ref.Decoder()
    assert _loss_run(oracle, packets, lost, recover=True) == recovered


def test_fec_without_fec_data_conceals(opus):
    # CELT packets carry no FEC: libopus conceals, and so does the decoder (same bytes as None).
    packets = stream("celt-fullband-stereo-64k-20ms")
    a, b = opus.OpusDecoder(), opus.OpusDecoder()
    for p in packets[:5]:
        a.decode(p)
        b.decode(p)
    assert a.decode(packets[6], fec=True) == b.decode(None)


def test_fec_needs_the_next_packet(opus):
    with pytest.raises(ValueError, match="NEXT packet"):
        opus.OpusDecoder().decode(None, fec=True)


def test_reset_forgets_the_stream(opus):
    packets = stream("silk-wideband-stereo-40ms")
    decoder = opus.OpusDecoder()
    for p in packets[:10]:
        decoder.decode(p)
    decoder.reset()
    fresh = ref.Decoder()
    assert [decoder.decode(p) for p in packets[10:20]] == [fresh.decode(p) for p in packets[10:20]]
    # without the reset the output differs (the decoder carries state across packets)
    carried = opus.OpusDecoder()
    for p in packets[:10]:
        carried.decode(p)
    assert carried.decode(packets[10]) != ref.Decoder().decode(packets[10])


# ------------------------------------------------------------------ discord.py's decoder as a second oracle


def test_same_pcm_as_discordpy_decoder(opus):
    discord_opus = pytest.importorskip("discord.opus")
    if not discord_opus.is_loaded():
        discord_opus._load_default()
    if not discord_opus.is_loaded():
        pytest.skip("discord.py could not load libopus")
    for name in ("celt-fullband-stereo-64k-20ms", "silk-fec-20ms", "silk-wideband-stereo-40ms"):
        theirs, ours = discord_opus.Decoder(), opus.OpusDecoder()
        for i, (op, packet) in enumerate(_with_losses(stream(name))):
            fec = op == "fec"
            if fec and name == "silk-wideband-stereo-40ms":
                continue  # discord.py sizes FEC by the next packet; ours by the lost one (the same at 20 ms)
            assert ours.decode(packet, fec=fec) == theirs.decode(packet, fec=fec), f"{name} {op} #{i}"


# ------------------------------------------------------------------ arguments and the public names


@pytest.mark.parametrize("args, error, text", [
    ((44100, 2), ValueError, "sample_rate must be one of 8000, 12000, 16000, 24000, 48000, not 44100"),
    ((48000, 3), ValueError, "channels must be one of 1, 2, not 3"),
    ((48000, 0), ValueError, "channels must be one of 1, 2, not 0"),
    ((48000.0, 2), TypeError, "sample_rate must be an int, not float"),
    ((48000, "2"), TypeError, "channels must be an int, not str"),
    ((48000, True), TypeError, "channels must be an int, not bool"),
    ((10 ** 30, 2), ValueError, "sample_rate must be one of"),
])
def test_bad_arguments(opus, args, error, text):
    with pytest.raises(error) as info:
        opus.OpusDecoder(*args)
    assert text in str(info.value)


def test_attributes_and_repr(opus):
    decoder = opus.OpusDecoder(channels=1, sample_rate=16000)
    assert (decoder.sample_rate, decoder.channels) == (16000, 1)
    assert repr(decoder) == "OpusDecoder(sample_rate=16000, channels=1)"
    with pytest.raises(AttributeError):
        decoder.sample_rate = 48000
    with pytest.raises(RuntimeError, match="already initialised"):
        decoder.__init__(48000, 2)
    assert opus.OpusDecoder().sample_rate == 48000 and opus.OpusDecoder().channels == 2


def test_public_names(opus):
    import fastvoice
    from fastvoice import opus_decoder

    assert fastvoice.OpusDecoder is opus_decoder.OpusDecoder
    assert issubclass(fastvoice.OpusDecodeError, fastvoice.VoiceError)
    assert issubclass(fastvoice.OpusDecodeError, ValueError)
    assert issubclass(fastvoice.OpusNotAvailableError, fastvoice.VoiceError)
    assert fastvoice.load_opus().startswith("libopus")


# ------------------------------------------------------------------ without libopus


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "FASTVOICE_LIBOPUS"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60)


MISSING = """
import fastvoice
print("imported", fastvoice.OpusDecoder.__module__)
for attempt in range(2):
    try:
        fastvoice.OpusDecoder()
    except fastvoice.OpusNotAvailableError as exc:
        print("ERROR", exc)
"""


@pytest.mark.parametrize("twin", ["c", "py"])
def test_missing_libopus_is_one_clear_error(twin):
    env = {"FASTVOICE_LIBOPUS": "/nonexistent/libopus.so.0"}
    if twin == "py":
        env["FASTVOICE_NO_EXTENSIONS"] = "1"
        env["FASTVOICE_REQUIRE_EXTENSIONS"] = "0"
    elif os.environ.get("FASTVOICE_NO_EXTENSIONS"):
        pytest.skip("FASTVOICE_NO_EXTENSIONS is set: compiled twin not under test")
    result = _run(MISSING, **env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"imported fastvoice._opus_{twin}" or (twin == "c" and lines[0].endswith("_opus_py"))
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 2
    for text in ("/nonexistent/libopus.so.0", "FASTVOICE_LIBOPUS", "libopus0", "brew install opus"):
        assert text in errors[0]


def test_missing_libopus_in_the_usual_places():
    code = (
        "import ctypes.util, fastvoice._opus_common as c\n"
        "ctypes.util.find_library = lambda name: None\n"
        "c._candidates = lambda: ['libopus-not-here.so.9']\n"
        "import fastvoice\n"
        "try:\n    fastvoice.load_opus()\n"
        "except fastvoice.OpusNotAvailableError as exc:\n    print(exc)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "the usual library names (tried libopus-not-here.so.9)" in result.stdout
    assert "apt-get install libopus0" in result.stdout and "brew install opus" in result.stdout


def test_a_library_that_is_not_libopus():
    libc = "libc.so.6" if sys.platform.startswith("linux") else None
    if libc is None:
        pytest.skip("Linux only")
    result = _run("import fastvoice\ntry:\n    fastvoice.OpusDecoder()\n"
                  "except fastvoice.OpusNotAvailableError as exc:\n    print(exc)\n", FASTVOICE_LIBOPUS=libc)
    assert "libc.so.6 does not export opus_get_version_string: it is not libopus" in result.stdout


def test_override_names_the_library():
    result = _run("import fastvoice, fastvoice._opus_common as c\nprint(fastvoice.load_opus(), c.library().path)",
                  FASTVOICE_LIBOPUS=ref.LIB._name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == ref.LIB._name and result.stdout.startswith("libopus")


def test_load_opus_once():
    code = (
        "import fastvoice\n"
        f"print(fastvoice.load_opus({ref.LIB._name!r}))\n"
        f"print(fastvoice.load_opus({ref.LIB._name!r}) == fastvoice.load_opus())\n"
        "try:\n    fastvoice.load_opus('libother.so')\n"
        "except RuntimeError as exc:\n    print(exc)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    first, same, refused = result.stdout.splitlines()
    assert first.startswith("libopus") and same == "True"
    assert refused == f"libopus is already loaded from {ref.LIB._name}; it cannot be replaced in this process"
