"""Pure-Python twin of the resampler (the typed source of truth for its API).

The compiled twin ``fastvoice._resample_c`` computes the same sums in the same order; the
two agree sample for sample (within one least significant bit on Pythons whose ``sum`` of
floats compensates rounding, 3.12 and later).
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence
from operator import mul

from . import _resample_common as _c

__all__ = ["IMPLEMENTATION", "Resampler", "mix_pcm", "pcm_rms"]

IMPLEMENTATION = "py"

_BIG_ENDIAN = sys.byteorder == "big"


def _samples(pcm: bytes) -> array.array[int]:
    samples = array.array("h")
    samples.frombytes(pcm)
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def pcm_rms(pcm: bytes) -> float:
    """Root mean square of the s16le samples of ``pcm`` (0.0 for empty PCM); full scale is 32768."""
    if len(pcm) % 2:
        raise ValueError(f"PCM of {len(pcm)} bytes is not a whole number of 16-bit samples")
    samples = _samples(pcm)
    if not samples:
        return 0.0
    return math.sqrt(sum(map(mul, samples, samples)) / len(samples))


def mix_pcm(frames: Sequence[bytes]) -> bytes:
    """The sum of pieces of s16le PCM of one length (the voices of a call on one tick), each
    sample clipped to 16 bits.  ``ValueError`` for no piece, pieces of different lengths or an
    odd length."""
    size = _c.check_mix(frames)
    if len(frames) == 1:
        return bytes(frames[0])
    sums = map(sum, zip(*[_samples(frame) for frame in frames]))
    out = array.array("h", [32767 if v > 32767 else -32768 if v < -32768 else v for v in sums])
    if _BIG_ENDIAN:
        out.byteswap()
    assert len(out) * 2 == size
    return out.tobytes()


class Resampler:
    """Converts a stream of s16le PCM from ``in_rate`` to ``out_rate`` and between stereo and mono.

    ``out_rate`` must divide ``in_rate`` (48000 to 24000, 16000, 12000 or 8000, ...).
    Stereo to mono averages the two channels; mono to stereo copies the one. Feed the stream
    in pieces of any whole number of frames to :meth:`process`; the filter's state carries
    over between them. The output lags the input by :attr:`delay` output samples (the
    filter's linear-phase delay: 1.2 ms at 16 kHz); call :meth:`flush` at the end to get the
    last ones, and drop the first ``delay`` samples to align output and input
    (:func:`fastvoice.resample.resample_pcm` does both).
    """

    __slots__ = ("_factor", "_taps", "_delay", "_in_channels", "_out_channels", "_work", "_history",
                 "_phase", "_in_rate", "_out_rate")

    def __init__(self, in_rate: int = 48000, out_rate: int = 16000, in_channels: int = 2,
                 out_channels: int = 1) -> None:
        self._factor = _c.check_rates(in_rate, out_rate, in_channels, out_channels)
        self._in_rate, self._out_rate = in_rate, out_rate
        self._taps, self._delay = _c.design(self._factor)
        self._in_channels, self._out_channels = in_channels, out_channels
        # Channels filtered: one when either side is mono (mix down first, copy up after).
        self._work = 1 if 1 in (in_channels, out_channels) else 2
        self._history: list[list[float]] = []
        self._phase = 0
        self.reset()

    @property
    def delay(self) -> int:
        """Output samples (per channel) by which the output lags the input: 19 for every
        conversion that changes the rate (1.2 ms at 16 kHz), 0 for a channel conversion alone."""
        return self._delay

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""
        return self._in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._out_rate

    def reset(self) -> None:
        """Forget the stream: the next input starts a new one (silence before it)."""
        self._history = [[0.0] * (len(self._taps) - 1) for _ in range(self._work)]
        self._phase = 0

    def process(self, pcm: bytes) -> bytes:
        """Resample the next piece of the stream: s16le interleaved in, s16le interleaved out.

        Returns one output frame for every ``in_rate / out_rate`` input frames (the division's
        remainder carries over to the next call).  ``ValueError`` for a partial frame.
        """
        frames = _c.frame_count(len(pcm), self._in_channels)
        samples = _samples(pcm)
        if self._in_channels == 2 and self._work == 1:
            inputs = [[(left + right) * 0.5 for left, right in zip(samples[0::2], samples[1::2])]]
        elif self._work == 2:
            inputs = [[float(v) for v in samples[0::2]], [float(v) for v in samples[1::2]]]
        else:
            inputs = [[float(v) for v in samples]]
        taps = self._taps
        width = len(taps)
        factor = self._factor
        phase = self._phase
        outputs = []
        for channel, chunk in enumerate(inputs):
            window = self._history[channel] + chunk
            out = []
            position = phase
            if width == 1:
                while position < frames:
                    out.append(window[position])
                    position += factor
            else:
                while position < frames:
                    out.append(sum(map(mul, taps, window[position:position + width])))
                    position += factor
            self._history[channel] = window[len(window) - (width - 1):] if width > 1 else []
            outputs.append(out)
        if frames:
            position = phase
            while position < frames:
                position += factor
            self._phase = position - frames
        result = array.array("h")
        if self._work == 2:
            for left, right in zip(outputs[0], outputs[1]):
                result.append(_clip(left))
                result.append(_clip(right))
        elif self._out_channels == 2:
            for value in outputs[0]:
                sample = _clip(value)
                result.append(sample)
                result.append(sample)
        else:
            result.extend(_clip(value) for value in outputs[0])
        if _BIG_ENDIAN:
            result.byteswap()
        return result.tobytes()

    def flush(self) -> bytes:
        """The last :attr:`delay` output frames: the filter's response to the end of the stream
        (as if silence followed).  The stream may go on afterwards (with that silence in it)."""
        if not self._delay:
            return b""
        return self.process(bytes(2 * self._in_channels * self._delay * self._factor))

    def __repr__(self) -> str:
        return (f"Resampler({self._in_rate}, {self._out_rate}, in_channels={self._in_channels}, "
                f"out_channels={self._out_channels})")


def _clip(value: float) -> int:
    sample = round(value)  # half to even, as C's lrint
    if sample > 32767:
        return 32767
    if sample < -32768:
        return -32768
    return sample
