# cython: language_level=3, embedsignature=True
"""Compiled twin of the resampler (see ``fastvoice._resample_py`` for the documented API).

The same filter (``fastvoice._resample_common.design``), the same sums in the same order
(left to right, in double precision), the same rounding (half to even, ``lrint``).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport lrint, sqrt
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from . import _resample_common as _c

__all__ = ["IMPLEMENTATION", "Resampler", "mix_pcm", "pcm_rms"]

IMPLEMENTATION = "c"


cdef inline int16_t _load(const uint8_t *p) noexcept nogil:
    # s16le whatever the machine's byte order
    return <int16_t>(p[0] | (p[1] << 8))


cdef inline void _store(uint8_t *p, double value) noexcept nogil:
    cdef long sample = lrint(value)
    if sample > 32767:
        sample = 32767
    elif sample < -32768:
        sample = -32768
    p[0] = <uint8_t>(sample & 0xFF)
    p[1] = <uint8_t>((sample >> 8) & 0xFF)


def pcm_rms(pcm):
    """Root mean square of the s16le samples of ``pcm`` (0.0 for empty PCM); full scale is 32768."""
    cdef bytes data = pcm if type(pcm) is bytes else bytes(pcm)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t count = size // 2, i
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef int64_t total = 0
    cdef int64_t v
    if size % 2:
        raise ValueError(f"PCM of {size} bytes is not a whole number of 16-bit samples")
    if count == 0:
        return 0.0
    with nogil:
        for i in range(count):
            v = _load(p + 2 * i)
            total += v * v
    return sqrt(<double>total / <double>count)


def mix_pcm(frames):
    """The sum of pieces of s16le PCM of one length (the voices of a call on one tick), each
    sample clipped to 16 bits.  ``ValueError`` for no piece, pieces of different lengths or an
    odd length."""
    cdef Py_ssize_t size = _c.check_mix(frames)
    cdef Py_ssize_t count = size // 2, i, k, n = len(frames)
    cdef bytes piece
    cdef const uint8_t *src
    cdef uint8_t *dst
    cdef int32_t *acc
    cdef int32_t v
    cdef bytes result
    if n == 1:
        return bytes(frames[0])
    acc = <int32_t *>malloc((count if count else 1) * sizeof(int32_t))
    if acc == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            acc[i] = 0
        for k in range(n):
            piece = frames[k] if type(frames[k]) is bytes else bytes(frames[k])
            src = <const uint8_t *>PyBytes_AS_STRING(piece)
            with nogil:
                for i in range(count):
                    acc[i] += _load(src + 2 * i)
        result = PyBytes_FromStringAndSize(NULL, size)
        dst = <uint8_t *>PyBytes_AS_STRING(result)
        with nogil:
            for i in range(count):
                v = acc[i]
                if v > 32767:
                    v = 32767
                elif v < -32768:
                    v = -32768
                dst[2 * i] = <uint8_t>(v & 0xFF)
                dst[2 * i + 1] = <uint8_t>((v >> 8) & 0xFF)
    finally:
        free(acc)
    return result


cdef class Resampler:
    """Converts a stream of s16le PCM from ``in_rate`` to ``out_rate`` and between stereo and mono.

    See ``fastvoice._resample_py.Resampler``: same API and output.
    """

    cdef int _factor, _delay, _width, _in_channels, _out_channels, _work, _phase, _in_rate, _out_rate
    cdef double *_taps
    cdef double *_history  # _work rows of _width - 1 samples

    def __cinit__(self, *args, **kwargs):
        self._taps = NULL
        self._history = NULL

    def __init__(self, in_rate=48000, out_rate=16000, in_channels=2, out_channels=1):
        cdef int i
        if self._taps != NULL:
            raise RuntimeError("Resampler is already initialised: create a new one")
        self._factor = _c.check_rates(in_rate, out_rate, in_channels, out_channels)
        self._in_rate, self._out_rate = in_rate, out_rate
        taps, self._delay = _c.design(self._factor)
        self._width = len(taps)
        self._in_channels, self._out_channels = in_channels, out_channels
        self._work = 1 if (in_channels == 1 or out_channels == 1) else 2
        self._taps = <double *>malloc(self._width * sizeof(double))
        self._history = <double *>malloc(max(1, self._work * (self._width - 1)) * sizeof(double))
        if self._taps == NULL or self._history == NULL:
            raise MemoryError("could not allocate the resampler's filter")
        for i in range(self._width):
            self._taps[i] = taps[i]
        self.reset()

    def __dealloc__(self):
        free(self._taps)
        free(self._history)

    @property
    def delay(self):
        """Output samples (per channel) by which the output lags the input."""
        return self._delay

    @property
    def in_rate(self):
        """Input sample rate in Hz."""
        return self._in_rate

    @property
    def out_rate(self):
        """Output sample rate in Hz."""
        return self._out_rate

    def reset(self):
        """Forget the stream: the next input starts a new one (silence before it)."""
        cdef int i
        for i in range(self._work * (self._width - 1)):
            self._history[i] = 0.0
        self._phase = 0

    def process(self, pcm):
        """Resample the next piece of the stream: s16le interleaved in, s16le interleaved out."""
        cdef bytes data = pcm if type(pcm) is bytes else bytes(pcm)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t frames = _c.frame_count(size, self._in_channels)
        cdef Py_ssize_t hist = self._width - 1
        cdef Py_ssize_t span = hist + frames
        cdef Py_ssize_t outs = 0, position, i, k, o
        cdef const uint8_t *src = <const uint8_t *>PyBytes_AS_STRING(data)
        cdef double *window = NULL
        cdef double acc
        cdef int ch, work = self._work, width = self._width, factor = self._factor
        cdef int in_ch = self._in_channels, out_ch = self._out_channels
        cdef bytes result
        cdef uint8_t *dst
        position = self._phase
        while position < frames:
            outs += 1
            position += factor
        result = PyBytes_FromStringAndSize(NULL, outs * out_ch * 2)
        dst = <uint8_t *>PyBytes_AS_STRING(result)
        window = <double *>malloc(max(1, span * work) * sizeof(double))
        if window == NULL:
            raise MemoryError("could not allocate the resampler's window")
        try:
            with nogil:
                for ch in range(work):
                    if hist:
                        memcpy(window + ch * span, self._history + ch * hist, hist * sizeof(double))
                for i in range(frames):
                    if in_ch == 2 and work == 1:
                        window[hist + i] = (<double>_load(src + 4 * i) + <double>_load(src + 4 * i + 2)) * 0.5
                    elif work == 2:
                        window[hist + i] = <double>_load(src + 4 * i)
                        window[span + hist + i] = <double>_load(src + 4 * i + 2)
                    else:
                        window[hist + i] = <double>_load(src + 2 * i)
                for ch in range(work):
                    position = self._phase
                    o = 0
                    while position < frames:
                        acc = 0.0
                        for k in range(width):
                            acc = acc + self._taps[k] * window[ch * span + position + k]
                        if work == 2:
                            _store(dst + 4 * o + 2 * ch, acc)
                        elif out_ch == 2:
                            _store(dst + 4 * o, acc)
                            _store(dst + 4 * o + 2, acc)
                        else:
                            _store(dst + 2 * o, acc)
                        o += 1
                        position += factor
                    if hist:
                        memcpy(self._history + ch * hist, window + ch * span + span - hist, hist * sizeof(double))
                position = self._phase
                while position < frames:
                    position += factor
                self._phase = <int>(position - frames)
        finally:
            free(window)
        return result

    def flush(self):
        """The last ``delay`` output frames (as if silence followed the stream)."""
        if not self._delay:
            return b""
        return self.process(bytes(2 * self._in_channels * self._delay * self._factor))

    def __repr__(self):
        return (f"Resampler({self._in_rate}, {self._out_rate}, in_channels={self._in_channels}, "
                f"out_channels={self._out_channels})")
