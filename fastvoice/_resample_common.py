"""What both twins of the resampler share: argument checks and the filter design.

The resampler converts 16-bit PCM between the Opus rates whose ratio is an integer (48000
to 24000, 16000, 12000 or 8000 Hz, 24000 to 12000 or 8000, ...) and between stereo and mono.
Decimating by ``M`` is a linear-phase low-pass FIR filter (a Kaiser-windowed sinc) evaluated
at every ``M``-th input sample only:

- passband up to 0.8 of the new Nyquist frequency (ripple under 0.01 dB), stopband from the new
  Nyquist frequency on, attenuated by at least ``ATTENUATION_DB``: whatever lies above the
  new Nyquist frequency, which would otherwise alias into the band, is removed first;
- ``2 * K * M + 1`` taps, so the filter delays its output by exactly ``K`` output samples
  (``Resampler.delay``); :func:`fastvoice.resample.resample_pcm` takes that delay out.

The taps are computed here once per factor (the Kaiser window's Bessel function by its
series), in double precision, and both twins evaluate the same sums in the same order.
"""

from __future__ import annotations

import math
from functools import lru_cache

RATES = (8000, 12000, 16000, 24000, 48000)
CHANNELS = (1, 2)
#: Minimum attenuation of the stopband (everything above the new Nyquist frequency), in dB.
ATTENUATION_DB = 60.0
#: Passband edge as a fraction of the new Nyquist frequency.
PASSBAND = 0.8


def check_rates(in_rate: object, out_rate: object, in_channels: object, out_channels: object) -> int:
    """Validate a conversion and return its decimation factor (TypeError / ValueError naming the value)."""
    for name, value, allowed in (
        ("in_rate", in_rate, RATES),
        ("out_rate", out_rate, RATES),
        ("in_channels", in_channels, CHANNELS),
        ("out_channels", out_channels, CHANNELS),
    ):
        if type(value) is bool or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, not {str(value)[:20]}")
    assert isinstance(in_rate, int) and isinstance(out_rate, int)
    if in_rate % out_rate:
        raise ValueError(
            f"cannot resample {in_rate} Hz to {out_rate} Hz: the output rate must divide the input rate "
            "(48000 to 24000, 16000, 12000 or 8000; 24000 to 12000 or 8000; 16000 to 8000)"
        )
    return in_rate // out_rate


def frame_count(pcm_length: int, channels: int) -> int:
    """Frames in ``pcm_length`` bytes of s16 PCM of ``channels`` (ValueError for a partial frame)."""
    size = 2 * channels
    if pcm_length % size:
        raise ValueError(f"PCM of {pcm_length} bytes is not a whole number of {channels}-channel 16-bit frames")
    return pcm_length // size


def check_mix(frames: object) -> int:
    """Validate the pieces ``mix_pcm`` adds up; return their length in bytes."""
    if isinstance(frames, (bytes, bytearray, memoryview, str)) or not hasattr(frames, "__len__"):
        raise TypeError(f"frames must be a sequence of PCM pieces, not {type(frames).__name__}")
    if not len(frames):
        raise ValueError("mix_pcm needs at least one piece of PCM")
    size = len(frames[0])  # type: ignore[index]
    if size % 2:
        raise ValueError(f"PCM of {size} bytes is not a whole number of 16-bit samples")
    for frame in frames:  # type: ignore[attr-defined]
        if len(frame) != size:
            raise ValueError(f"PCM pieces to mix differ in length ({len(frame)} and {size} bytes)")
    return size


def _bessel_i0(x: float) -> float:
    total, term, k = 1.0, 1.0, 1
    while term > 1e-17 * total:
        term *= (x / (2 * k)) ** 2
        total += term
        k += 1
    return total


@lru_cache(maxsize=None)
def design(factor: int) -> tuple[tuple[float, ...], int]:
    """``(taps, K)`` of the anti-aliasing filter for decimation by ``factor``: ``2*K*factor + 1``
    symmetric taps summing to 1; ``((1.0,), 0)`` when nothing is filtered (factor 1)."""
    if factor == 1:
        return (1.0,), 0
    nyquist = 0.5 / factor  # the new Nyquist frequency, in cycles per input sample
    transition = (1.0 - PASSBAND) * nyquist
    cutoff = nyquist - transition / 2
    # Kaiser's estimates of the length and window shape, for 2 dB more than promised (the
    # estimates are a little optimistic).
    attenuation = ATTENUATION_DB + 2.0
    length = (attenuation - 7.95) / (2.285 * 2 * math.pi * transition) + 1
    half_outputs = math.ceil((length - 1) / (2 * factor))
    count = 2 * half_outputs * factor + 1
    beta = 0.1102 * (attenuation - 8.7)
    centre = (count - 1) / 2
    norm = _bessel_i0(beta)
    taps = []
    for n in range(count):
        m = n - centre
        ideal = 2 * cutoff if m == 0 else math.sin(2 * math.pi * cutoff * m) / (math.pi * m)
        ratio = m / centre
        window = _bessel_i0(beta * math.sqrt(max(0.0, 1.0 - ratio * ratio))) / norm
        taps.append(ideal * window)
    total = sum(taps)
    return tuple(t / total for t in taps), half_outputs
