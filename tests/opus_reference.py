"""libopus called directly through ctypes, written from opus.h: the oracle of the decoder tests.

It shares no code with fastvoice (it finds and binds the library itself).  It encodes test
signals (``Encoder``) and decodes them the plain libopus way (``Decoder``: ``opus_decode``
into a 120 ms buffer, ``OPUS_GET_LAST_PACKET_DURATION`` for concealment and FEC), and
makes signals and measures them (``tone``, ``voiced``, ``goertzel_power``, ``snr_db``).
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import math
import os
import random

import pytest

OPUS_APPLICATION_VOIP = 2048
OPUS_APPLICATION_AUDIO = 2049
OPUS_APPLICATION_RESTRICTED_LOWDELAY = 2051
OPUS_SET_BITRATE = 4002
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_SET_COMPLEXITY = 4010
OPUS_SET_BANDWIDTH = 4008
OPUS_SET_SIGNAL = 4024
OPUS_SIGNAL_VOICE = 3001
OPUS_GET_LAST_PACKET_DURATION = 4039
OPUS_BANDWIDTH_NARROWBAND = 1101
OPUS_BANDWIDTH_WIDEBAND = 1103
OPUS_BANDWIDTH_FULLBAND = 1105


def _open():
    for name in ("libopus.so.0", ctypes.util.find_library("opus"), "libopus.0.dylib"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


LIB = _open()


def require_libopus():
    """Skip without libopus, unless FASTVOICE_REQUIRE_LIBOPUS=1 makes it a failure."""
    if LIB is None:
        if os.environ.get("FASTVOICE_REQUIRE_LIBOPUS") == "1":
            pytest.fail("libopus not found, and FASTVOICE_REQUIRE_LIBOPUS=1")
        pytest.skip("libopus not found (Debian: apt-get install libopus0)")


if LIB is not None:
    LIB.opus_encoder_create.restype = ctypes.c_void_p
    LIB.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    LIB.opus_encode.restype = ctypes.c_int32
    LIB.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
    LIB.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    LIB.opus_decoder_create.restype = ctypes.c_void_p
    LIB.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    LIB.opus_decode.restype = ctypes.c_int
    LIB.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int,
                                ctypes.c_int]
    LIB.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    # opus_encoder_ctl / opus_decoder_ctl are variadic: no argtypes, every argument given as a ctypes value.
    LIB.opus_encoder_ctl.restype = ctypes.c_int
    LIB.opus_decoder_ctl.restype = ctypes.c_int


class Encoder:
    def __init__(self, sample_rate=48000, channels=2, application=OPUS_APPLICATION_AUDIO, bitrate=64000,
                 fec=False, loss_percent=0, bandwidth=None, voice=False):
        error = ctypes.c_int()
        self._st = LIB.opus_encoder_create(sample_rate, channels, application, ctypes.byref(error))
        assert self._st and error.value == 0, error.value
        self.sample_rate, self.channels = sample_rate, channels
        self._ctl(OPUS_SET_BITRATE, bitrate)
        self._ctl(OPUS_SET_INBAND_FEC, 1 if fec else 0)
        self._ctl(OPUS_SET_PACKET_LOSS_PERC, loss_percent)
        if bandwidth is not None:
            self._ctl(OPUS_SET_BANDWIDTH, bandwidth)
        if voice:
            self._ctl(OPUS_SET_SIGNAL, OPUS_SIGNAL_VOICE)

    def _ctl(self, request, value):
        assert LIB.opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(request), ctypes.c_int32(value)) == 0

    def encode(self, pcm: bytes) -> bytes:
        """One packet of ``pcm`` (s16le interleaved; its length sets the packet's duration)."""
        samples = len(pcm) // (2 * self.channels)
        out = ctypes.create_string_buffer(8000)
        n = LIB.opus_encode(self._st, pcm, samples, out, len(out))
        assert n > 0, n
        return out.raw[:n]

    def encode_stream(self, pcm: bytes, frame_ms: float) -> list[bytes]:
        step = int(self.sample_rate * frame_ms / 1000) * 2 * self.channels
        return [self.encode(pcm[i:i + step]) for i in range(0, len(pcm) - step + 1, step)]

    def __del__(self):
        if getattr(self, "_st", None):
            LIB.opus_encoder_destroy(self._st)


class Decoder:
    """Plain libopus decoding: what an application calling opus_decode itself gets."""

    def __init__(self, sample_rate=48000, channels=2):
        error = ctypes.c_int()
        self._st = LIB.opus_decoder_create(sample_rate, channels, ctypes.byref(error))
        assert self._st and error.value == 0
        self.sample_rate, self.channels = sample_rate, channels
        self._pcm = ctypes.create_string_buffer(sample_rate * 120 // 1000 * channels * 2)

    def last_packet_duration(self) -> int:
        value = ctypes.c_int32()
        code = LIB.opus_decoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(OPUS_GET_LAST_PACKET_DURATION),
                                    ctypes.byref(value))
        assert code == 0
        return value.value

    def decode(self, packet: bytes | None, fec: bool = False) -> bytes | int:
        """PCM bytes, or libopus's (negative) error code."""
        if packet is None or fec:
            frame_size = self.last_packet_duration() or self.sample_rate // 50
        else:
            frame_size = self.sample_rate * 120 // 1000
        n = LIB.opus_decode(self._st, packet, len(packet) if packet else 0, self._pcm, frame_size, 1 if fec else 0)
        if n < 0:
            return n
        return self._pcm.raw[:n * self.channels * 2]

    def __del__(self):
        if getattr(self, "_st", None):
            LIB.opus_decoder_destroy(self._st)


# ------------------------------------------------------------------ signals and measures


def tone(seconds, frequency, sample_rate=48000, channels=2, amplitude=8000.0) -> bytes:
    n = int(seconds * sample_rate)
    w = 2 * math.pi * frequency / sample_rate
    mono = [int(amplitude * math.sin(w * i)) for i in range(n)]
    return array.array("h", [s for s in mono for _ in range(channels)]).tobytes()


def voiced(seconds, sample_rate=48000, channels=2, seed=7) -> bytes:
    """A speech-like signal: a gliding pitch (110-220 Hz) with harmonics, a syllable envelope and breath noise."""
    rng = random.Random(seed)
    n = int(seconds * sample_rate)
    phase, out = 0.0, []
    for i in range(n):
        t = i / sample_rate
        pitch = 165 + 55 * math.sin(2 * math.pi * 0.7 * t)
        phase += 2 * math.pi * pitch / sample_rate
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 3.0 * t)
        s = sum(math.sin(k * phase) / k for k in range(1, 9)) * envelope * 5000 + rng.gauss(0, 150)
        out.extend([int(max(-32768, min(32767, s)))] * channels)
    return array.array("h", out).tobytes()


def noise(seconds, sample_rate=48000, channels=2, seed=3) -> bytes:
    rng = random.Random(seed)
    return array.array("h", [int(rng.gauss(0, 4000)) for _ in range(int(seconds * sample_rate) * channels)]).tobytes()


def samples(pcm: bytes, channel=0, channels=2) -> list[int]:
    return array.array("h", pcm)[channel::channels].tolist()


def goertzel_power(x: list[int], frequency: float, sample_rate: int) -> float:
    """Power of ``x`` at ``frequency`` (Goertzel), normalised so a sine of amplitude A gives ~A²/4."""
    coeff = 2 * math.cos(2 * math.pi * frequency / sample_rate)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (len(x) ** 2)


def rms(x: list[int]) -> float:
    return math.sqrt(sum(v * v for v in x) / len(x)) if x else 0.0


def snr_db(reference: list[int], test: list[int]) -> float:
    signal = sum(v * v for v in reference)
    error = sum((a - b) ** 2 for a, b in zip(reference, test))
    return 10 * math.log10(signal / error) if error else 200.0
