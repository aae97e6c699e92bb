# cython: language_level=3, embedsignature=True
"""Compiled twin of the Opus decoder (see ``fastvoice._opus_py`` for the documented API).

libopus is not needed to build this module: the system's library is opened at run time by
``fastvoice._opus_common`` (ctypes, i.e. dlopen/dlsym) when the first decoder is created,
and the addresses of the few functions used are called from here directly, without the GIL.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport int16_t, int32_t, uintptr_t
from libc.stdlib cimport free, malloc

from . import _opus_common as _c
from ._opus_common import OpusDecodeError, OpusNotAvailableError

__all__ = ["IMPLEMENTATION", "OpusDecoder", "OpusDecodeError", "OpusNotAvailableError", "decode_batch"]

IMPLEMENTATION = "c"

# The prototypes of opus.h, declared here so that no libopus header is needed.
ctypedef void *(*create_fn)(int32_t fs, int channels, int *error) noexcept nogil
ctypedef void (*destroy_fn)(void *st) noexcept nogil
ctypedef int (*decode_fn)(void *st, const unsigned char *data, int32_t length, int16_t *pcm,
                          int frame_size, int decode_fec) noexcept nogil
ctypedef int (*nb_samples_fn)(const unsigned char *packet, int32_t length, int32_t fs) noexcept nogil
ctypedef int (*ctl_fn)(void *st, int request, ...) noexcept nogil

cdef create_fn _create = NULL
cdef destroy_fn _destroy = NULL
cdef decode_fn _decode = NULL
cdef nb_samples_fn _nb_samples = NULL
cdef ctl_fn _ctl = NULL

cdef enum:
    OPUS_RESET_STATE = 4028
    OPUS_INVALID_PACKET = -4
    MAX_PACKET_BYTES = 1 << 20  # _opus_common.MAX_PACKET_BYTES


cdef int _ensure_loaded() except -1:
    global _create, _destroy, _decode, _nb_samples, _ctl
    if _decode != NULL:
        return 0
    addresses = _c.library().addresses  # raises OpusNotAvailableError
    _create = <create_fn><uintptr_t>addresses["opus_decoder_create"]
    _destroy = <destroy_fn><uintptr_t>addresses["opus_decoder_destroy"]
    _nb_samples = <nb_samples_fn><uintptr_t>addresses["opus_packet_get_nb_samples"]
    _ctl = <ctl_fn><uintptr_t>addresses["opus_decoder_ctl"]
    _decode = <decode_fn><uintptr_t>addresses["opus_decode"]
    return 0


cdef class OpusDecoder:
    """Decodes one Opus stream to 16-bit PCM (s16le, channels interleaved) with libopus.

    See ``fastvoice._opus_py.OpusDecoder``: same API and behaviour.
    """

    cdef void *_state
    cdef PyThread_type_lock _lock
    cdef int _last  # samples per channel of the last packet decoded or concealed
    cdef int _sample_rate
    cdef int _channels
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._state = NULL
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError("could not allocate the decoder's lock")

    def __init__(self, sample_rate=48000, channels=2):
        cdef int error = 0
        if self._state != NULL:
            raise RuntimeError("OpusDecoder is already initialised: create a new one")
        _c.check_args(sample_rate, channels)
        _ensure_loaded()
        self._sample_rate = sample_rate
        self._channels = channels
        self._last = 0
        self._state = _create(self._sample_rate, self._channels, &error)
        if self._state == NULL:
            raise MemoryError(f"opus_decoder_create failed: {_c.error_name(error)}")

    def __dealloc__(self):
        if self._state != NULL:
            _destroy(self._state)
            self._state = NULL
        if self._lock != NULL:
            PyThread_free_lock(self._lock)
            self._lock = NULL

    @property
    def sample_rate(self):
        """Output sample rate in Hz."""
        return self._sample_rate

    @property
    def channels(self):
        """Output channels (1 or 2)."""
        return self._channels

    cdef inline void _acquire(self) noexcept:
        # Uncontended: taken with the GIL held. Contended: wait without it, so the holder,
        # which needs the GIL to finish, can run.
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)

    def decode(self, opus, fec=False):
        """Decode one packet to PCM: s16le, channels interleaved, as long as the packet.

        ``opus=None`` conceals one lost packet; ``fec=True`` recovers the packet lost before
        ``opus`` from its in-band FEC.  See ``fastvoice._opus_py.OpusDecoder.decode``.
        """
        cdef bint use_fec = bool(fec)
        cdef const unsigned char *data = NULL
        cdef Py_ssize_t length = 0
        cdef int packet_samples = 0
        cdef int samples, got
        cdef bytes out
        cdef int16_t *pcm
        if self._state == NULL:
            raise RuntimeError("OpusDecoder is not initialised")
        if opus is None:
            if use_fec:
                raise _c.fec_without_packet_error()
        else:
            if type(opus) is not bytes:
                opus = _c.as_packet(opus)
            length = PyBytes_GET_SIZE(opus)
            if length == 0:
                raise _c.empty_packet_error()
            if length > MAX_PACKET_BYTES:
                raise _c.oversized_packet_error(length)
            data = <const unsigned char *>PyBytes_AS_STRING(opus)
            packet_samples = _nb_samples(data, <int32_t>length, self._sample_rate)
            if packet_samples <= 0:
                raise _c.decode_error(packet_samples if packet_samples < 0 else OPUS_INVALID_PACKET, length)
        self._acquire()
        try:
            if data == NULL or use_fec:
                samples = self._last if self._last else self._sample_rate // 50
            else:
                samples = packet_samples
            out = PyBytes_FromStringAndSize(NULL, samples * self._channels * 2)
            pcm = <int16_t *>PyBytes_AS_STRING(out)
            with nogil:
                got = _decode(self._state, data, <int32_t>length, pcm, samples, use_fec)
            if got < 0:
                raise _c.decode_error(got, length)
            self._last = got
        finally:
            PyThread_release_lock(self._lock)
        if got != samples:
            return out[:got * self._channels * 2]
        return out

    def reset(self):
        """Forget the stream (``OPUS_RESET_STATE``): the next packet decodes as a stream's first."""
        cdef int code
        if self._state == NULL:
            raise RuntimeError("OpusDecoder is not initialised")
        self._acquire()
        try:
            code = _ctl(self._state, OPUS_RESET_STATE)
            if code != 0:
                raise RuntimeError(f"OPUS_RESET_STATE failed: {_c.error_name(code)}")
            self._last = 0
        finally:
            PyThread_release_lock(self._lock)

    def __repr__(self):
        return f"OpusDecoder(sample_rate={self._sample_rate}, channels={self._channels})"


ctypedef struct _BatchJob:
    void *state
    PyThread_type_lock lock
    int *last
    const unsigned char *data
    int32_t length
    int16_t *pcm
    int samples
    int fec
    int got


def decode_batch(jobs):
    """Decode many frames, each of its own decoder, with one release of the GIL.

    See ``fastvoice._opus_py.decode_batch``: same API and results.
    """
    cdef list items = [_c.batch_job(job) for job in jobs]
    cdef Py_ssize_t n = len(items), i
    cdef _BatchJob *batch
    cdef OpusDecoder decoder
    cdef bytes opus, out
    cdef int packet_samples
    cdef list results = [None] * n
    cdef list errors = []
    cdef set seen = set()
    for item in items:
        if type(item[0]) is not OpusDecoder:
            raise TypeError(f"decode_batch takes OpusDecoder objects, not {type(item[0]).__name__}")
        if id(item[0]) in seen:
            raise ValueError("decode_batch: a decoder may appear only once in a batch (its frames are in order)")
        seen.add(id(item[0]))
    batch = <_BatchJob *>malloc(max(1, n) * sizeof(_BatchJob))
    if batch == NULL:
        raise MemoryError("could not allocate the batch")
    try:
        for i in range(n):
            decoder = <OpusDecoder>items[i][0]
            opus = items[i][1]
            batch[i].state = NULL
            if decoder._state == NULL:
                raise RuntimeError("OpusDecoder is not initialised")
            batch[i].fec = 1 if items[i][2] else 0
            if opus is None:
                batch[i].data = NULL
                batch[i].length = 0
                batch[i].samples = decoder._last if decoder._last else decoder._sample_rate // 50
            else:
                batch[i].length = <int32_t>PyBytes_GET_SIZE(opus)
                batch[i].data = <const unsigned char *>PyBytes_AS_STRING(opus)
                if batch[i].length == 0 or PyBytes_GET_SIZE(opus) > MAX_PACKET_BYTES:
                    errors.append(i)
                    continue
                packet_samples = _nb_samples(batch[i].data, batch[i].length, decoder._sample_rate)
                if packet_samples <= 0:
                    errors.append(i)
                    continue
                if batch[i].fec:
                    batch[i].samples = decoder._last if decoder._last else decoder._sample_rate // 50
                else:
                    batch[i].samples = packet_samples
            out = PyBytes_FromStringAndSize(NULL, batch[i].samples * decoder._channels * 2)
            results[i] = out
            batch[i].pcm = <int16_t *>PyBytes_AS_STRING(out)
            batch[i].lock = decoder._lock
            batch[i].last = &decoder._last
            batch[i].state = decoder._state
        with nogil:
            for i in range(n):
                if batch[i].state == NULL:
                    continue
                PyThread_acquire_lock(batch[i].lock, WAIT_LOCK)
                batch[i].got = _decode(batch[i].state, batch[i].data, batch[i].length, batch[i].pcm,
                                       batch[i].samples, batch[i].fec)
                if batch[i].got >= 0:
                    batch[i].last[0] = batch[i].got
                PyThread_release_lock(batch[i].lock)
        for i in range(n):
            if batch[i].state == NULL:
                continue
            if batch[i].got < 0:
                results[i] = None
                errors.append(i)
            elif batch[i].got != batch[i].samples:
                decoder = <OpusDecoder>items[i][0]
                results[i] = results[i][:batch[i].got * decoder._channels * 2]
    finally:
        free(batch)
    errors.sort()
    return results, errors
