# cython: language_level=3, embedsignature=True
"""Compiled twin of the packet core (see ``fastvoice._rtp_py`` for the documented API).

The crypto calls go straight into the libsodium that PyNaCl >= 1.6 bundles:
function pointers are taken once, at import, from PyNaCl's cffi module, so no
system libsodium is needed and no Python wrapper runs per packet (``_sodium.pxi``).
The SSRC table is the compiled module ``_rtp_c_ssrc``, re-exported here.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cimport cython

import os

from . import _rtp_common as common
from ._rtp_common import DispatchOutcome
from .errors import DecryptionFailedError

__all__ = [
    "IMPLEMENTATION",
    "DispatchOutcome",
    "Packet",
    "Packetizer",
    "Depacketizer",
    "SSRCEntry",
    "SSRCTable",
    "aes256gcm_available",
]

IMPLEMENTATION = "c"

# The SSRC table (its own compiled module, cimported through _rtp_c.pxd) is part of the core's
# API: a cimported type is not a module attribute by itself, so it is put in the namespace.
globals().update(SSRCEntry=SSRCEntry, SSRCTable=SSRCTable)

# Looked up at call time so tests can make the suffix mode's nonce deterministic.
_urandom = os.urandom

include "_sodium.pxi"

# Must match the numbers in _rtp_common.
cdef enum:
    TAG = 16
    MODE_AES = 0
    MODE_XCHACHA = 1
    MODE_XSALSA = 2
    MODE_XSALSA_SUFFIX = 3
    MODE_XSALSA_LITE = 4
    MAX_PAYLOAD = 65507 - (12 + 16 + 24)  # _rtp_common.MAX_PAYLOAD, as a C constant
    ROUTED = 0  # _rtp_common.DispatchOutcome
    UNMAPPED = 1
    DUPLICATE = 2
    NOT_AUDIO = 3

cdef tuple _OUTCOMES = common.OUTCOMES


_load_sodium("the compiled packet core", precomputed_aes=True)


cdef int _aes_state_init(_AesState *st, const unsigned char *key) except -1:
    """Expand ``key`` once (AES-NI key schedule + GHASH key) when the API is available."""
    if _aes_beforenm == NULL or not _aes_available:
        st.raw = NULL
        st.ctx = NULL
        return 0
    st.raw = malloc(_aes_state_bytes + 16)
    if st.raw == NULL:
        raise MemoryError()
    st.ctx = <unsigned char *>((<uintptr_t>st.raw + 15) & ~(<uintptr_t>15))
    if _aes_beforenm(st.ctx, key) != 0:
        _aes_state_free(st)
        raise RuntimeError("libsodium could not expand the AES-256-GCM key")
    return 0


cdef void _aes_state_free(_AesState *st) noexcept:
    if st.raw != NULL:
        _wipe(st.ctx, _aes_state_bytes)
        free(st.raw)
    st.raw = NULL
    st.ctx = NULL


cdef inline void _wipe(void *p, size_t n) noexcept:
    # sodium_memzero: a zeroing the compiler cannot drop as a dead store.
    if p != NULL and n:
        _memzero(p, n)


def aes256gcm_available():
    """True when libsodium can use AES-256-GCM on this CPU (AES-NI/PCLMUL or ARMv8 crypto)."""
    return bool(_aes_available)


cdef inline void _put_u16(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 8)
    p[1] = <unsigned char>v


cdef inline void _put_u32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef inline uint32_t _get_u16(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t _get_u32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _write_header(unsigned char *p, uint32_t seq, uint32_t ts, uint32_t ssrc) noexcept nogil:
    p[0] = 0x80
    p[1] = 0x78
    _put_u16(p + 2, seq)
    _put_u32(p + 4, ts)
    _put_u32(p + 8, ssrc)




@cython.freelist(256)
@cython.final
@cython.no_gc
cdef class Packet:
    """A received voice packet (the seed's ``Packet`` plus what a receiver needs).

    ``opus`` is the payload after transport decryption with the extension body and
    RTP padding removed.  ``extension_profile`` is ``None`` when the packet carried
    no header extension; otherwise ``extension`` holds the decrypted extension body.
    ``user_id`` is set by ``Depacketizer.dispatch`` (``None`` for an unmapped SSRC).
    Packets hold plain values (ints, bytes, tuples) and are not tracked by the cyclic
    garbage collector: do not store objects that refer back to the packet in them.
    """

    # Header fields are kept as C integers and become Python ints only when read.

    def __init__(self, sequence, timestamp, ssrc, opus, marker=False, payload_type=0x78, csrcs=(),
                 extension_profile=None, extension=b"", user_id=None):
        self._sequence = common.check_uint("sequence", sequence, 16)
        self._timestamp = common.check_uint("timestamp", timestamp, 32)
        self._ssrc = common.check_uint("ssrc", ssrc, 32)
        self.opus = opus
        self._marker = bool(marker)
        self._payload_type = common.check_uint("payload_type", payload_type, 7)
        self.csrcs = tuple(csrcs)
        self.extension_profile = extension_profile
        self.extension = extension
        self.user_id = user_id

    @property
    def sequence(self):
        """RTP sequence number (u16)."""
        return self._sequence

    @sequence.setter
    def sequence(self, value):
        self._sequence = common.check_uint("sequence", value, 16)

    @property
    def timestamp(self):
        """RTP timestamp (u32, 48 kHz)."""
        return self._timestamp

    @timestamp.setter
    def timestamp(self, value):
        self._timestamp = common.check_uint("timestamp", value, 32)

    @property
    def ssrc(self):
        """The sender's SSRC."""
        return self._ssrc

    @ssrc.setter
    def ssrc(self, value):
        self._ssrc = common.check_uint("ssrc", value, 32)

    @property
    def marker(self):
        """The RTP marker bit."""
        return self._marker

    @marker.setter
    def marker(self, value):
        self._marker = bool(value)

    @property
    def payload_type(self):
        """The RTP payload type (0x78 for Opus)."""
        return self._payload_type

    @payload_type.setter
    def payload_type(self, value):
        self._payload_type = common.check_uint("payload_type", value, 7)

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return NotImplemented
        cdef Packet o = <Packet>other
        return (
            self._sequence == o._sequence
            and self._timestamp == o._timestamp
            and self._ssrc == o._ssrc
            and self.opus == o.opus
            and self._marker == o._marker
            and self._payload_type == o._payload_type
            and self.csrcs == o.csrcs
            and self.extension_profile == o.extension_profile
            and self.extension == o.extension
        )

    __hash__ = None

    def __repr__(self):
        return common.packet_repr(self)


cdef class Packetizer:
    """Builds encrypted RTP voice packets for one SSRC (see ``fastvoice._rtp_py.Packetizer``)."""


    def __cinit__(self, *args, **kwargs):
        self._aes.raw = NULL
        self._aes.ctx = NULL

    def __init__(self, ssrc, mode, secret_key, *, sequence=0, timestamp=0, nonce=0):
        self._ssrc = common.check_uint("ssrc", ssrc, 32)
        self._mode, self._mode_no = common.resolve_mode(mode, _aes_available)
        key = common.check_key(secret_key)
        try:
            self._sequence = common.check_uint("sequence", sequence, 16)
            self._timestamp = common.check_uint("timestamp", timestamp, 32)
            self._nonce = common.check_uint("nonce", nonce, 32)
            _aes_state_free(&self._aes)
            memcpy(self._key, PyBytes_AS_STRING(key), 32)
        finally:
            common.scrub(key)
        if self._mode_no == MODE_AES:
            _aes_state_init(&self._aes, self._key)
        self._wiped = False

    def __dealloc__(self):
        _wipe(self._key, 32)
        _aes_state_free(&self._aes)

    def wipe(self):
        """Zero the secret key (and its expanded AES state) now; later ``packetize`` calls raise."""
        _wipe(self._key, 32)
        _aes_state_free(&self._aes)
        self._wiped = True

    @property
    def wiped(self):
        """True after :meth:`wipe`."""
        return self._wiped

    @property
    def ssrc(self):
        """The SSRC written into every packet (from Ready)."""
        return self._ssrc

    @property
    def mode(self):
        """The transport encryption mode."""
        return self._mode

    @property
    def sequence(self):
        """RTP sequence number of the next packet."""
        return self._sequence

    @sequence.setter
    def sequence(self, value):
        self._sequence = common.check_uint("sequence", value, 16)

    @property
    def timestamp(self):
        """RTP timestamp of the next packet."""
        return self._timestamp

    @timestamp.setter
    def timestamp(self, value):
        self._timestamp = common.check_uint("timestamp", value, 32)

    @property
    def nonce(self):
        """Nonce counter of the next packet (counter modes)."""
        return self._nonce

    @nonce.setter
    def nonce(self, value):
        self._nonce = common.check_uint("nonce", value, 32)

    def packetize(self, opus, *, bint marker=False):
        """Encrypt ``opus`` into a complete RTP datagram and advance the counters.

        ``marker`` sets the RTP marker bit of this packet (the first of a talkspurt).
        """
        cdef Py_buffer view
        cdef bint have_view = False
        cdef const unsigned char *m
        cdef Py_ssize_t mlen
        if PyBytes_CheckExact(opus):
            m = <const unsigned char *>PyBytes_AS_STRING(opus)
            mlen = PyBytes_GET_SIZE(opus)
        else:
            PyObject_GetBuffer(opus, &view, PyBUF_SIMPLE)
            have_view = True
            m = <const unsigned char *>view.buf
            mlen = view.len
        try:
            if self._wiped:
                raise common.wiped_error("Packetizer")
            if mlen > MAX_PAYLOAD:
                raise ValueError(f"payload of {mlen} bytes exceeds the maximum of {MAX_PAYLOAD}")
            return self._packetize(m, mlen, marker)
        finally:
            if have_view:
                PyBuffer_Release(&view)

    cdef object _packetize(self, const unsigned char *m, Py_ssize_t mlen, bint marker):
        cdef int mode = self._mode_no
        cdef Py_ssize_t suffix_len = 24 if mode == MODE_XSALSA_SUFFIX else (0 if mode == MODE_XSALSA else 4)
        cdef Py_ssize_t total = 12 + mlen + TAG + suffix_len
        cdef object out = PyBytes_FromStringAndSize(NULL, total)
        cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
        cdef unsigned char nonce[24]
        cdef ull clen = 0
        cdef int rc
        cdef object random_nonce
        _write_header(p, self._sequence, self._timestamp, self._ssrc)
        if marker:
            p[1] = 0xF8  # the header is the AAD (and the legacy nonce): set before sealing
        memset(nonce, 0, 24)
        if mode == MODE_AES or mode == MODE_XCHACHA:
            _put_u32(nonce, self._nonce)
            if mode == MODE_AES:
                if self._aes.ctx != NULL:
                    rc = _aes_encrypt_afternm(p + 12, &clen, m, mlen, p, 12, NULL, nonce, self._aes.ctx)
                else:
                    rc = _aes_encrypt(p + 12, &clen, m, mlen, p, 12, NULL, nonce, self._key)
            else:
                rc = _xchacha_encrypt(p + 12, &clen, m, mlen, p, 12, NULL, nonce, self._key)
            memcpy(p + 12 + mlen + TAG, nonce, 4)
        elif mode == MODE_XSALSA:
            memcpy(nonce, p, 12)
            rc = _secretbox_easy(p + 12, m, mlen, nonce, self._key)
        elif mode == MODE_XSALSA_SUFFIX:
            random_nonce = _urandom(24)
            if not PyBytes_CheckExact(random_nonce) or PyBytes_GET_SIZE(random_nonce) != 24:
                raise RuntimeError("the nonce source must return 24 bytes")
            memcpy(nonce, PyBytes_AS_STRING(random_nonce), 24)
            rc = _secretbox_easy(p + 12, m, mlen, nonce, self._key)
            memcpy(p + 12 + mlen + TAG, nonce, 24)
        else:
            _put_u32(nonce, self._nonce)
            rc = _secretbox_easy(p + 12, m, mlen, nonce, self._key)
            memcpy(p + 12 + mlen + TAG, nonce, 4)
        if rc != 0:
            raise RuntimeError(f"libsodium encryption failed (mode {self._mode.value})")
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = self._timestamp + 960  # uint32 arithmetic wraps
        self._nonce = self._nonce + 1
        return out

    def __repr__(self):
        return f"Packetizer(ssrc={self._ssrc}, mode={self._mode.value!r}, sequence={self._sequence})"


cdef class Depacketizer:
    """Parses and decrypts received RTP voice packets (see ``fastvoice._rtp_py.Depacketizer``)."""


    def __cinit__(self, *args, **kwargs):
        self._scratch = NULL
        self._scratch_size = 0
        self._aes.raw = NULL
        self._aes.ctx = NULL

    def __init__(self, mode, secret_key):
        self._mode, self._mode_no = common.resolve_mode(mode, _aes_available)
        key = common.check_key(secret_key)
        _aes_state_free(&self._aes)
        memcpy(self._key, PyBytes_AS_STRING(key), 32)
        common.scrub(key)
        if self._mode_no == MODE_AES:
            _aes_state_init(&self._aes, self._key)
        self._wiped = False

    def wipe(self):
        """Zero the secret key, its expanded AES state and the plaintext scratch buffer now;
        later calls raise."""
        _wipe(self._key, 32)
        _aes_state_free(&self._aes)
        if self._scratch != NULL:
            _wipe(self._scratch, self._scratch_size)
        self._wiped = True

    @property
    def wiped(self):
        """True after :meth:`wipe`."""
        return self._wiped

    def __dealloc__(self):
        _wipe(self._key, 32)
        _aes_state_free(&self._aes)
        if self._scratch != NULL:
            _wipe(self._scratch, self._scratch_size)
            free(self._scratch)

    @property
    def mode(self):
        """The transport encryption mode."""
        return self._mode

    def depacketize(self, datagram):
        """Return the :class:`Packet` in ``datagram``, or ``None`` if it is not RTP audio."""
        cdef Py_buffer view
        if PyBytes_CheckExact(datagram):
            return self._depacketize(<const unsigned char *>PyBytes_AS_STRING(datagram), PyBytes_GET_SIZE(datagram))
        PyObject_GetBuffer(datagram, &view, PyBUF_SIMPLE)
        try:
            return self._depacketize(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def dispatch(self, datagram, SSRCTable table not None):
        """Depacketize ``datagram`` and route it through ``table`` in one call.

        Returns the :class:`Packet` with ``user_id`` set from the table (``None`` for an
        SSRC not in it), or ``None`` when the datagram is not RTP audio or repeats a
        packet already dispatched for its SSRC (counted in ``SSRCEntry.duplicates``).
        Raises ``DecryptionFailedError`` like :meth:`depacketize`.
        :meth:`dispatch_outcome` also says which of these happened.
        """
        cdef int outcome
        return self._dispatch_buffer(datagram, table, &outcome)

    def dispatch_outcome(self, datagram, SSRCTable table):
        """``dispatch``, saying what happened: ``(DispatchOutcome, Packet or None)``; ``table``
        None routes nothing (see ``fastvoice._rtp_py.Depacketizer.dispatch_outcome``)."""
        cdef int outcome = NOT_AUDIO
        packet = self._dispatch_buffer(datagram, table, &outcome)
        return _OUTCOMES[outcome], packet

    cdef object _dispatch_buffer(self, object datagram, SSRCTable table, int *outcome):
        cdef Py_buffer view
        if PyBytes_CheckExact(datagram):
            return self.c_dispatch(<const unsigned char *>PyBytes_AS_STRING(datagram), PyBytes_GET_SIZE(datagram),
                                   table, None, outcome)
        PyObject_GetBuffer(datagram, &view, PyBUF_SIMPLE)
        try:
            return self.c_dispatch(<const unsigned char *>view.buf, view.len, table, None, outcome)
        finally:
            PyBuffer_Release(&view)

    cdef object c_dispatch(self, const unsigned char *data, Py_ssize_t n, SSRCTable table, Packet spare,
                           int *outcome):
        # The one route of a datagram: the Packet or None, and what happened in ``outcome[0]``.
        # ``table`` None: no routing. ``spare`` (or None): a Packet nobody else refers to.
        cdef Packet pkt
        cdef SSRCEntry entry
        cdef object result = self._depacketize(data, n, spare)
        if result is None:
            outcome[0] = NOT_AUDIO
            return None
        pkt = <Packet>result
        if table is not None:
            entry = table.c_lookup(pkt._ssrc)
            if entry is not None:
                if not entry.c_accept(pkt._sequence):
                    outcome[0] = DUPLICATE
                    return None
                pkt.user_id = entry.user_id
                outcome[0] = ROUTED
                return pkt
        if spare is not None:
            pkt.user_id = None
        outcome[0] = UNMAPPED
        return pkt

    cdef unsigned char *_buffer(self, Py_ssize_t size) except NULL:
        if size > self._scratch_size:
            if self._scratch != NULL:
                free(self._scratch)
                self._scratch = NULL
                self._scratch_size = 0
            # Room for any UDP datagram once, so it is never resized again.
            if size < 65536:
                size = 65536
            self._scratch = <unsigned char *>malloc(size)
            if self._scratch == NULL:
                raise MemoryError()
            self._scratch_size = size
        return self._scratch

    cdef object _depacketize(self, const unsigned char *data, Py_ssize_t n, Packet spare=None):
        cdef uint32_t b0, b1, cc, words
        cdef Py_ssize_t hlen, box_len, plain_len, start, end, ext_len = 0, i
        cdef int mode = self._mode_no
        cdef int rc
        cdef unsigned char nonce[24]
        cdef unsigned char *plain
        cdef const unsigned char *box
        cdef const unsigned char *csrc_src
        cdef ull out_len = 0
        cdef object profile = None
        cdef object direct = None
        cdef Packet pkt
        if self._wiped:
            raise common.wiped_error("Depacketizer")
        if n < 12:
            return None
        b0 = data[0]
        b1 = data[1]
        if (b0 >> 6) != 2 or (200 <= b1 <= 204) or (b1 & 0x7F) != 0x78:
            return None
        cc = b0 & 0x0F
        memset(nonce, 0, 24)
        if mode == MODE_AES or mode == MODE_XCHACHA:
            hlen = 12 + 4 * cc
            if b0 & 0x10:
                if n < hlen + 4:
                    raise DecryptionFailedError("truncated packet: header extension preamble missing")
                profile = _get_u16(data + hlen)
                ext_len = 4 * <Py_ssize_t>_get_u16(data + hlen + 2)
                hlen += 4
            if n < hlen + TAG + 4:
                raise DecryptionFailedError("truncated packet: shorter than header + tag + nonce")
            memcpy(nonce, data + n - 4, 4)
            box_len = n - 4 - hlen
            if b0 & 0x30:
                plain = self._buffer(box_len)
            else:
                # No extension and no padding: the plaintext is the payload, so decrypt
                # straight into the bytes object handed out (no copy).
                direct = PyBytes_FromStringAndSize(NULL, box_len - TAG)
                plain = <unsigned char *>PyBytes_AS_STRING(direct)
            if mode == MODE_AES:
                if self._aes.ctx != NULL:
                    rc = _aes_decrypt_afternm(plain, &out_len, NULL, data + hlen, box_len, data, hlen, nonce, self._aes.ctx)
                else:
                    rc = _aes_decrypt(plain, &out_len, NULL, data + hlen, box_len, data, hlen, nonce, self._key)
            else:
                rc = _xchacha_decrypt(plain, &out_len, NULL, data + hlen, box_len, data, hlen, nonce, self._key)
            if rc != 0:
                raise DecryptionFailedError("authentication failed")
            plain_len = box_len - TAG
            csrc_src = data + 12
            start = 0
        else:
            if mode == MODE_XSALSA:
                if n < 12 + TAG:
                    raise DecryptionFailedError("truncated packet: shorter than header + tag")
                memcpy(nonce, data, 12)
                box = data + 12
                box_len = n - 12
            elif mode == MODE_XSALSA_SUFFIX:
                if n < 12 + TAG + 24:
                    raise DecryptionFailedError("truncated packet: shorter than header + tag + nonce")
                memcpy(nonce, data + n - 24, 24)
                box = data + 12
                box_len = n - 12 - 24
            else:
                if n < 12 + TAG + 4:
                    raise DecryptionFailedError("truncated packet: shorter than header + tag + nonce")
                memcpy(nonce, data + n - 4, 4)
                box = data + 12
                box_len = n - 12 - 4
            plain = self._buffer(box_len)
            rc = _secretbox_open_easy(plain, box, box_len, nonce, self._key)
            if rc != 0:
                raise DecryptionFailedError("authentication failed")
            plain_len = box_len - TAG
            start = 4 * cc
            if plain_len < start:
                raise DecryptionFailedError("malformed packet: CSRC list longer than the packet")
            csrc_src = plain
            if b0 & 0x10:
                if plain_len < start + 4:
                    raise DecryptionFailedError("malformed packet: header extension preamble missing")
                profile = _get_u16(plain + start)
                ext_len = 4 * <Py_ssize_t>_get_u16(plain + start + 2)
                start += 4
        end = plain_len
        if end - start < ext_len:
            raise DecryptionFailedError("malformed packet: header extension longer than the packet")
        if spare is not None:
            pkt = spare  # every field is set below (user_id by c_dispatch)
        else:
            pkt = Packet.__new__(Packet)
        if direct is not None:
            pkt.extension = b""
            pkt.opus = direct
        else:
            pkt.extension = PyBytes_FromStringAndSize(<char *>plain + start, ext_len)
        start += ext_len
        if b0 & 0x20:
            if end == start:
                raise DecryptionFailedError("malformed packet: padding bit set on an empty payload")
            words = plain[end - 1]
            if words == 0 or words > end - start:
                raise DecryptionFailedError(f"malformed packet: invalid padding count {words}")
            end -= words
        pkt._sequence = _get_u16(data + 2)
        pkt._timestamp = _get_u32(data + 4)
        pkt._ssrc = _get_u32(data + 8)
        if direct is None:
            pkt.opus = PyBytes_FromStringAndSize(<char *>plain + start, end - start)
        pkt._marker = (b1 & 0x80) != 0
        pkt._payload_type = b1 & 0x7F
        if cc:
            pkt.csrcs = tuple([_get_u32(csrc_src + 4 * i) for i in range(cc)])
        else:
            pkt.csrcs = ()
        pkt.extension_profile = profile
        return pkt

    def __repr__(self):
        return f"Depacketizer(mode={self._mode.value!r})"


def _uses_precomputed_aes():
    """True when AES-256-GCM runs with the key expanded once per key (a probe for the tests;
    not part of the API)."""
    return _aes_beforenm != NULL and _aes_available
