# cython: language_level=3, embedsignature=True
"""Compiled twin of the local server's media engine (see ``fastvoice.testing._media_py``
for the behaviour, which this twin matches byte for byte).

It reads the server's UDP socket in batches (``recvmmsg``) and sends in batches
(``sendmmsg``) on Linux; elsewhere it loops over ``recvmsg``/``sendmsg``. The crypto
calls go straight into the libsodium PyNaCl bundles, through function pointers taken
once at import from PyNaCl's cffi module (``fastvoice/_sodium.pxi``, which the compiled
packet core includes too).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

cimport cython

import errno as _errno
import socket as _socket

from ._media_py import MAX_FAST_DATAGRAM as _MAX_FAST_PY, NONCE_START as _NONCE_START_PY, RECORDING_MODES, \
    check_recording

__all__ = ["IMPLEMENTATION", "MediaEngine", "RECORDING_MODES", "NONCE_START", "MAX_FAST_DATAGRAM"]

IMPLEMENTATION = "c"

include "../_sodium.pxi"

cdef extern from *:
    """
    #include <errno.h>
    #include <string.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <netinet/in.h>

    #if defined(__linux__)
    typedef struct mmsghdr fv_mmsghdr;
    static int fv_recvmmsg(int fd, fv_mmsghdr *v, unsigned int n) {
        return recvmmsg(fd, v, n, MSG_DONTWAIT, NULL);
    }
    static int fv_sendmmsg(int fd, fv_mmsghdr *v, unsigned int n) {
        return sendmmsg(fd, v, n, MSG_DONTWAIT);
    }
    #else
    typedef struct { struct msghdr msg_hdr; unsigned int msg_len; } fv_mmsghdr;
    static int fv_recvmmsg(int fd, fv_mmsghdr *v, unsigned int n) {
        unsigned int i;
        for (i = 0; i < n; i++) {
            ssize_t r = recvmsg(fd, &v[i].msg_hdr, MSG_DONTWAIT);
            if (r < 0) return i ? (int)i : -1;
            v[i].msg_len = (unsigned int)r;
        }
        return (int)n;
    }
    static int fv_sendmmsg(int fd, fv_mmsghdr *v, unsigned int n) {
        unsigned int i;
        for (i = 0; i < n; i++) {
            ssize_t r = sendmsg(fd, &v[i].msg_hdr, MSG_DONTWAIT);
            if (r < 0) return i ? (int)i : -1;
            v[i].msg_len = (unsigned int)r;
        }
        return (int)n;
    }
    #endif
    static int fv_errno(void) { return errno; }
    """
    ctypedef unsigned int socklen_t
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ctypedef struct fv_mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int fv_recvmmsg(int fd, fv_mmsghdr *v, unsigned int n) nogil
    int fv_sendmmsg(int fd, fv_mmsghdr *v, unsigned int n) nogil
    int fv_errno() nogil
    int AF_INET
    int MSG_TRUNC
    int EAGAIN
    int EWOULDBLOCK
    int EINTR
    int ENOBUFS
    int ECONNREFUSED
    uint16_t htons(uint16_t) nogil
    uint16_t ntohs(uint16_t) nogil

cdef enum:
    TAG = 16
    MIN_DATAGRAM = 12 + 16 + 4
    FAST_MAX = 2048
    RECV_BATCH = 64
    RECV_SLOT = 65536
    SEND_SLOTS = 256
    PUMP_LIMIT = 1024
    REC_OFF = 0
    REC_COUNTS = 1
    REC_FULL = 2

NONCE_START = _NONCE_START_PY
MAX_FAST_DATAGRAM = _MAX_FAST_PY
assert MAX_FAST_DATAGRAM == FAST_MAX

_load_sodium("the compiled media engine", precomputed_aes=False)

_AES = "aead_aes256_gcm_rtpsize"
_XCHACHA = "aead_xchacha20_poly1305_rtpsize"


cdef inline uint32_t _u32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline bint _is_dave_frame(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    return n >= 13 and p[n - 1] == 0xFA and p[n - 2] == 0xFA and 12 <= p[n - 3] and p[n - 3] <= n


@cython.final
cdef class _Session:
    cdef uint32_t ssrc
    cdef object owner
    cdef object call
    cdef _Call entry
    cdef bint aes
    cdef unsigned char key[32]
    cdef object address
    cdef bint has_address
    cdef uint32_t ip      # network order, as in sockaddr_in
    cdef uint16_t port    # network order
    cdef bint speaking
    cdef bint dave
    cdef bint foreign
    cdef uint64_t count
    cdef uint64_t heard
    cdef uint64_t handed_back  # the batch in which a datagram of this SSRC went to the Python path
    cdef uint32_t nonce

    def __dealloc__(self):
        _memzero(self.key, 32)


@cython.final
cdef class _Call:
    cdef list members
    cdef int foreign
    cdef int plain


cdef class MediaEngine:
    """The server's audio forwarding fast path (compiled twin; see ``_media_py.MediaEngine``)."""

    cdef object _groups
    cdef int _rec
    cdef dict _sessions
    cdef dict _all
    cdef dict _calls
    cdef uint64_t _gen
    cdef uint64_t _batch
    cdef list _heard
    cdef list _records
    cdef list _collected   # handle(): the datagrams to send, instead of the socket
    cdef int _fd
    cdef unsigned char *_plain
    cdef unsigned char *_rbuf
    cdef fv_mmsghdr *_rmsgs
    cdef iovec *_riov
    cdef sockaddr_in *_raddr
    cdef unsigned char *_sbuf
    cdef fv_mmsghdr *_smsgs
    cdef iovec *_siov
    cdef sockaddr_in *_saddr
    cdef int _nsend
    cdef readonly unsigned long long forwarded
    cdef readonly unsigned long long sent
    cdef readonly unsigned long long send_drops

    def __cinit__(self, *args, **kwargs):
        cdef int i
        self._plain = <unsigned char *>malloc(FAST_MAX)
        self._rbuf = <unsigned char *>malloc(<size_t>RECV_BATCH * RECV_SLOT)
        self._rmsgs = <fv_mmsghdr *>malloc(RECV_BATCH * sizeof(fv_mmsghdr))
        self._riov = <iovec *>malloc(RECV_BATCH * sizeof(iovec))
        self._raddr = <sockaddr_in *>malloc(RECV_BATCH * sizeof(sockaddr_in))
        self._sbuf = <unsigned char *>malloc(<size_t>SEND_SLOTS * FAST_MAX)
        self._smsgs = <fv_mmsghdr *>malloc(SEND_SLOTS * sizeof(fv_mmsghdr))
        self._siov = <iovec *>malloc(SEND_SLOTS * sizeof(iovec))
        self._saddr = <sockaddr_in *>malloc(SEND_SLOTS * sizeof(sockaddr_in))
        if (self._plain == NULL or self._rbuf == NULL or self._rmsgs == NULL or self._riov == NULL
                or self._raddr == NULL or self._sbuf == NULL or self._smsgs == NULL or self._siov == NULL
                or self._saddr == NULL):
            raise MemoryError()
        memset(self._rmsgs, 0, RECV_BATCH * sizeof(fv_mmsghdr))
        memset(self._smsgs, 0, SEND_SLOTS * sizeof(fv_mmsghdr))
        for i in range(RECV_BATCH):
            self._riov[i].iov_base = self._rbuf + <size_t>i * RECV_SLOT
            self._riov[i].iov_len = RECV_SLOT
            self._rmsgs[i].msg_hdr.msg_iov = &self._riov[i]
            self._rmsgs[i].msg_hdr.msg_iovlen = 1
        for i in range(SEND_SLOTS):
            self._siov[i].iov_base = self._sbuf + <size_t>i * FAST_MAX
            self._smsgs[i].msg_hdr.msg_iov = &self._siov[i]
            self._smsgs[i].msg_hdr.msg_iovlen = 1
            self._smsgs[i].msg_hdr.msg_name = &self._saddr[i]
            self._smsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        self._fd = -1
        self._nsend = 0

    def __init__(self, dave_groups=None, recording="full"):
        self._groups = dave_groups if dave_groups is not None else {}
        self.recording = recording
        self._sessions = {}
        self._all = {}
        self._calls = {}
        self._gen = 0
        self._batch = 0
        self._heard = []
        self._records = []
        self._collected = None

    def __dealloc__(self):
        if self._plain != NULL:
            _memzero(self._plain, FAST_MAX)
        if self._sbuf != NULL:
            _memzero(self._sbuf, <size_t>SEND_SLOTS * FAST_MAX)
        free(self._plain)
        free(self._rbuf)
        free(self._rmsgs)
        free(self._riov)
        free(self._raddr)
        free(self._sbuf)
        free(self._smsgs)
        free(self._siov)
        free(self._saddr)

    @property
    def recording(self):
        """``off``, ``counts`` or ``full`` (see ``RECORDING_MODES``)."""
        return RECORDING_MODES[self._rec]

    @recording.setter
    def recording(self, value):
        self._rec = RECORDING_MODES.index(check_recording(value))

    # -- the session table -----------------------------------------------------------

    def set_session(self, ssrc, owner, call, mode, key, address, *, speaking, dave):
        """Add or update the session that owns ``ssrc`` (see ``_media_py.MediaEngine.set_session``)."""
        cdef _Session s = self._sessions.get(ssrc)
        cdef _Call entry
        cdef bint foreign
        if s is None:
            s = self._all.get(ssrc)
            if s is None or s.owner is not owner:
                s = _Session.__new__(_Session)
                s.ssrc = ssrc
                s.nonce = NONCE_START
            self._all[ssrc] = s
            self._sessions[ssrc] = s
        else:
            self._leave(s)
        s.owner = owner
        s.call = call
        foreign = (key is None or len(key) != 32 or mode not in (_AES, _XCHACHA)
                   or (mode == _AES and not _aes_available))
        s.foreign = foreign
        s.aes = mode == _AES
        _memzero(s.key, 32)
        if not foreign:
            key = bytes(key)
            memcpy(s.key, PyBytes_AS_STRING(key), 32)
        if address is None:
            s.address = None
            s.has_address = False
        else:
            s.address = (str(address[0]), int(address[1]))
            s.ip = (<uint32_t *>PyBytes_AS_STRING(_socket.inet_aton(s.address[0])))[0]
            s.port = htons(<uint16_t>s.address[1])
            s.has_address = True
        s.speaking = bool(speaking)
        s.dave = bool(dave)
        entry = self._calls.get(call)
        if entry is None:
            entry = _Call.__new__(_Call)
            entry.members = []
            self._calls[call] = entry
        entry.members.append(s)
        entry.foreign += foreign
        entry.plain += not s.dave
        s.entry = entry

    def remove_session(self, ssrc):
        """Take ``ssrc`` out of the table and its call (its count stays readable)."""
        cdef _Session s = self._sessions.pop(ssrc, None)
        if s is not None:
            self._leave(s)
            _memzero(s.key, 32)
            s.foreign = True
            s.address = None
            s.has_address = False

    cdef _leave(self, _Session s):
        cdef _Call entry = s.entry
        if entry is None or s not in entry.members:
            return
        entry.members.remove(s)
        entry.foreign -= s.foreign
        entry.plain -= not s.dave
        s.entry = None
        if not entry.members:
            del self._calls[s.call]

    def count(self, ssrc):
        """Audio packets of ``ssrc`` the engine accepted while recording was ``counts`` or ``full``."""
        cdef _Session s = self._all.get(ssrc)
        return 0 if s is None else s.count

    def take(self):
        """Return and clear the owners heard and the ``full`` records (see the pure twin)."""
        heard, records = self._heard, self._records
        self._heard = []
        self._records = []
        self._gen += 1
        return heard, records

    # -- datagrams -------------------------------------------------------------------

    def handle(self, data, address):
        """Process one datagram without a socket: the datagrams to send, as ``(address, bytes)``,
        or ``None`` when ``data`` belongs to the server's Python path."""
        cdef bytes raw = bytes(data)
        cdef uint32_t ip = (<uint32_t *>PyBytes_AS_STRING(_socket.inet_aton(str(address[0]))))[0]
        cdef uint16_t port = htons(<uint16_t>int(address[1]))
        cdef int done
        self._batch += 1
        self._collected = []
        self._fd = -1
        try:
            done = self._process(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), ip, port)
            self._flush()
            return self._collected if done else None
        finally:
            self._collected = None

    def pump(self, int fd, data, address):
        """Process ``data`` (already read), then read and process what waits on the socket
        ``fd`` in batches, sending the forwarded datagrams on it in batches. Returns the
        datagrams for the Python path, as ``(data, address)``, in arrival order (an SSRC's
        datagrams after one that goes there go there too, see the pure twin)."""
        cdef list slow = []
        cdef bytes raw = bytes(data)
        cdef uint32_t ip = (<uint32_t *>PyBytes_AS_STRING(_socket.inet_aton(str(address[0]))))[0]
        cdef uint16_t port = htons(<uint16_t>int(address[1]))
        cdef int got, i, err
        cdef int total = 1
        cdef Py_ssize_t n
        cdef const unsigned char *p
        self._fd = fd
        self._collected = None
        self._batch += 1
        try:
            if not self._process(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), ip, port):
                slow.append((raw, (str(address[0]), int(address[1]))))
            while total < PUMP_LIMIT:
                for i in range(RECV_BATCH):
                    self._rmsgs[i].msg_hdr.msg_name = &self._raddr[i]
                    self._rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                    self._rmsgs[i].msg_hdr.msg_control = NULL
                    self._rmsgs[i].msg_hdr.msg_controllen = 0
                    self._rmsgs[i].msg_hdr.msg_flags = 0
                with nogil:
                    got = fv_recvmmsg(fd, self._rmsgs, RECV_BATCH)
                if got < 0:
                    err = fv_errno()
                    if err == EINTR or err == ECONNREFUSED:  # ECONNREFUSED: an earlier send's ICMP error
                        continue
                    if err == EAGAIN or err == EWOULDBLOCK:
                        break
                    raise OSError(err, f"recvmmsg failed: {_errno.errorcode.get(err, err)}")
                for i in range(got):
                    n = self._rmsgs[i].msg_len
                    p = <const unsigned char *>self._riov[i].iov_base
                    if self._raddr[i].sin_family != AF_INET or not self._process(
                            p, n, self._raddr[i].sin_addr.s_addr, self._raddr[i].sin_port):
                        slow.append((PyBytes_FromStringAndSize(<const char *>p, n), self._address(&self._raddr[i])))
                total += got
                if got < RECV_BATCH:
                    break
        finally:
            self._flush()
            self._fd = -1
        return slow

    cdef object _address(self, sockaddr_in *a):
        cdef uint32_t ip = a.sin_addr.s_addr
        cdef bytes packed = PyBytes_FromStringAndSize(<const char *>&ip, 4)
        return (_socket.inet_ntoa(packed), ntohs(a.sin_port))

    def close(self):
        """Forget every key (the compiled engine holds no socket of its own)."""
        cdef _Session s
        for s in self._all.values():
            _memzero(s.key, 32)
            s.foreign = True
        self._sessions.clear()
        self._calls.clear()

    cdef int _flush(self) except -1:
        cdef int i = 0, r, err, n = self._nsend
        cdef uint32_t ip
        cdef Py_ssize_t length
        if n == 0:
            return 0
        self._nsend = 0
        if self._fd < 0:
            for i in range(n):
                length = self._siov[i].iov_len
                self._collected.append((self._address(&self._saddr[i]),
                                        PyBytes_FromStringAndSize(<const char *>self._siov[i].iov_base, length)))
            return 0
        while i < n:
            with nogil:
                r = fv_sendmmsg(self._fd, self._smsgs + i, n - i)
            if r > 0:
                i += r
                self.sent += r
                continue
            err = fv_errno()
            if err == EINTR:
                continue
            if err == EAGAIN or err == EWOULDBLOCK or err == ENOBUFS:
                self.send_drops += n - i
                break
            self.send_drops += 1  # this datagram failed (or a pending error was reported): skip it
            i += 1
        return 0

    cdef int _process(self, const unsigned char *data, Py_ssize_t n, uint32_t ip, uint16_t port) except -1:
        """Forward ``data`` and return 1, or return 0 (nothing done) for the Python path."""
        cdef _Session sender
        cdef object found
        if n < MIN_DATAGRAM or n > FAST_MAX or data[0] != 0x80 or (data[1] & 0x7F) != 0x78:
            return 0
        found = self._sessions.get(_u32(data + 8))
        if found is None:
            return 0
        sender = <_Session>found
        if self._forward(sender, data, n, ip, port):
            return 1
        # The rest of this SSRC's datagrams in the batch follow it (see the pure twin).
        sender.handed_back = self._batch
        return 0

    cdef int _forward(self, _Session sender, const unsigned char *data, Py_ssize_t n, uint32_t ip,
                      uint16_t port) except -1:
        cdef _Session member
        cdef _Call call
        cdef ull out_len = 0
        cdef int rc
        cdef Py_ssize_t plain_len, i, count
        cdef unsigned char nonce[24]
        cdef unsigned char *out
        cdef bint dave_frame
        cdef list members
        if (sender.handed_back == self._batch or sender.foreign or not sender.speaking or not sender.has_address
                or sender.ip != ip or sender.port != port):
            return 0
        call = sender.entry
        if call is None or call.foreign:
            return 0
        memset(nonce, 0, 24)
        memcpy(nonce, data + n - 4, 4)
        if sender.aes:
            rc = _aes_decrypt(self._plain, &out_len, NULL, data + 12, n - 16, data, 12, nonce, sender.key)
        else:
            rc = _xchacha_decrypt(self._plain, &out_len, NULL, data + 12, n - 16, data, 12, nonce, sender.key)
        if rc != 0:
            return 0
        plain_len = n - 16 - TAG
        dave_frame = _is_dave_frame(self._plain, plain_len)
        if dave_frame:
            if call.plain - (not sender.dave) > 0 and self._groups:
                return 0
        elif not (plain_len == 3 and self._plain[0] == 0xF8 and self._plain[1] == 0xFF and self._plain[2] == 0xFE):
            if self._groups and sender.call in self._groups:
                return 0
        self.forwarded += 1
        if self._rec != REC_OFF:
            sender.count += 1
            if self._rec == REC_FULL:
                self._records.append((
                    sender.owner, sender.ssrc, (<uint32_t>data[2] << 8) | data[3], _u32(data + 4),
                    PyBytes_FromStringAndSize(<const char *>self._plain, plain_len), (data[1] & 0x80) != 0,
                    sender.address,
                ))
        if sender.heard != self._gen + 1:
            sender.heard = self._gen + 1
            self._heard.append(sender.owner)
        members = call.members
        count = len(members)
        for i in range(count):
            member = <_Session>members[i]
            if member is sender or not member.has_address:
                continue
            if self._nsend == SEND_SLOTS:
                self._flush()
            out = <unsigned char *>self._siov[self._nsend].iov_base
            memcpy(out, data, 12)
            memset(nonce, 0, 24)
            nonce[0] = <unsigned char>(member.nonce >> 24)
            nonce[1] = <unsigned char>(member.nonce >> 16)
            nonce[2] = <unsigned char>(member.nonce >> 8)
            nonce[3] = <unsigned char>member.nonce
            member.nonce += 1
            if member.aes:
                rc = _aes_encrypt(out + 12, &out_len, self._plain, plain_len, data, 12, NULL, nonce, member.key)
            else:
                rc = _xchacha_encrypt(out + 12, &out_len, self._plain, plain_len, data, 12, NULL, nonce, member.key)
            if rc != 0:
                raise RuntimeError("libsodium encryption failed")
            memcpy(out + 12 + plain_len + TAG, nonce, 4)
            self._siov[self._nsend].iov_len = n
            self._saddr[self._nsend].sin_family = AF_INET
            self._saddr[self._nsend].sin_port = member.port
            self._saddr[self._nsend].sin_addr.s_addr = member.ip
            self._nsend += 1
        return 1
