# libsodium for the compiled modules, written once and included (``include``) by each of them:
# the packet core (_rtp_c.pyx) and the local test server's media engine (testing/_media_c.pyx).
#
# The function pointers are taken at import from the libsodium that PyNaCl >= 1.6 bundles,
# through its cffi module, so no system libsodium is needed and no Python wrapper runs per
# packet. Each including module holds its own copy of the pointers (C statics of that module),
# so a call costs what a call through a module's own pointer costs.
#
# The including module needs ``from libc.stdint cimport uintptr_t`` and calls
# ``_load_sodium(<who needs it>, <whether it uses the precomputed AES API>)`` once at import.

ctypedef unsigned long long ull

ctypedef int (*aead_encrypt_fn)(unsigned char *c, ull *clen_p, const unsigned char *m, ull mlen,
                                const unsigned char *ad, ull adlen, const unsigned char *nsec,
                                const unsigned char *npub, const unsigned char *k) noexcept nogil
ctypedef int (*aead_decrypt_fn)(unsigned char *m, ull *mlen_p, unsigned char *nsec,
                                const unsigned char *c, ull clen, const unsigned char *ad, ull adlen,
                                const unsigned char *npub, const unsigned char *k) noexcept nogil
ctypedef int (*secretbox_fn)(unsigned char *c, const unsigned char *m, ull mlen,
                             const unsigned char *n, const unsigned char *k) noexcept nogil
ctypedef int (*int_fn)() noexcept nogil
ctypedef size_t (*size_fn)() noexcept nogil
ctypedef int (*beforenm_fn)(unsigned char *state, const unsigned char *k) noexcept nogil
ctypedef void (*memzero_fn)(void *pnt, size_t len) noexcept nogil

cdef aead_encrypt_fn _aes_encrypt = NULL
cdef aead_decrypt_fn _aes_decrypt = NULL
cdef aead_encrypt_fn _xchacha_encrypt = NULL
cdef aead_decrypt_fn _xchacha_decrypt = NULL
cdef secretbox_fn _secretbox_easy = NULL
cdef secretbox_fn _secretbox_open_easy = NULL
cdef memzero_fn _memzero = NULL
cdef bint _aes_available = False
# AES-256-GCM with the key schedule expanded once per key (libsodium's *_afternm API).
# PyNaCl's cffi module does not declare these, so they are resolved from its shared
# object's dynamic symbols; where that fails, the one-shot functions above are used.
cdef beforenm_fn _aes_beforenm = NULL
cdef aead_encrypt_fn _aes_encrypt_afternm = NULL
cdef aead_decrypt_fn _aes_decrypt_afternm = NULL
cdef size_t _aes_state_bytes = 0


cdef uintptr_t _sodium_symbol(object ffi, object lib, str name) except 0:
    try:
        return <uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    except (AttributeError, TypeError) as exc:
        raise ImportError(f"PyNaCl's libsodium does not export {name} (PyNaCl >= 1.6 is required)") from exc


cdef _load_sodium(str user, bint precomputed_aes):
    """Take the one-shot AEAD, secretbox and memzero pointers, and with ``precomputed_aes``
    the *_afternm ones where they are exported; ``user`` names the module in the ImportError
    raised when PyNaCl is missing."""
    global _aes_encrypt, _aes_decrypt, _xchacha_encrypt, _xchacha_decrypt
    global _secretbox_easy, _secretbox_open_easy, _aes_available, _memzero
    try:
        from nacl._sodium import ffi, lib
    except ImportError as exc:
        raise ImportError(f"PyNaCl >= 1.6 is required by {user}") from exc
    if lib.sodium_init() < 0:
        raise ImportError("libsodium failed to initialise (sodium_init)")
    _aes_encrypt = <aead_encrypt_fn>_sodium_symbol(ffi, lib, "crypto_aead_aes256gcm_encrypt")
    _aes_decrypt = <aead_decrypt_fn>_sodium_symbol(ffi, lib, "crypto_aead_aes256gcm_decrypt")
    _xchacha_encrypt = <aead_encrypt_fn>_sodium_symbol(ffi, lib, "crypto_aead_xchacha20poly1305_ietf_encrypt")
    _xchacha_decrypt = <aead_decrypt_fn>_sodium_symbol(ffi, lib, "crypto_aead_xchacha20poly1305_ietf_decrypt")
    _secretbox_easy = <secretbox_fn>_sodium_symbol(ffi, lib, "crypto_secretbox_easy")
    _secretbox_open_easy = <secretbox_fn>_sodium_symbol(ffi, lib, "crypto_secretbox_open_easy")
    _aes_available = (<int_fn>_sodium_symbol(ffi, lib, "crypto_aead_aes256gcm_is_available"))() == 1
    _memzero = <memzero_fn>_sodium_symbol(ffi, lib, "sodium_memzero")
    if precomputed_aes:
        _load_aes_precomputed()


cdef _load_aes_precomputed():
    """Take the *_afternm AES pointers where PyNaCl's shared object exports them."""
    global _aes_beforenm, _aes_encrypt_afternm, _aes_decrypt_afternm, _aes_state_bytes
    import ctypes
    import nacl._sodium
    try:
        so = ctypes.CDLL(nacl._sodium.__file__)
        names = ("crypto_aead_aes256gcm_beforenm", "crypto_aead_aes256gcm_encrypt_afternm",
                 "crypto_aead_aes256gcm_decrypt_afternm", "crypto_aead_aes256gcm_statebytes")
        addrs = [ctypes.cast(getattr(so, n), ctypes.c_void_p).value for n in names]
    except (OSError, AttributeError, TypeError):
        return  # not exported by this build: the one-shot AES functions are used
    if not all(addrs):
        return
    _aes_state_bytes = (<size_fn><uintptr_t>addrs[3])()
    if _aes_state_bytes == 0 or _aes_state_bytes > 4096:
        _aes_state_bytes = 0
        return
    _aes_beforenm = <beforenm_fn><uintptr_t>addrs[0]
    _aes_encrypt_afternm = <aead_encrypt_fn><uintptr_t>addrs[1]
    _aes_decrypt_afternm = <aead_decrypt_fn><uintptr_t>addrs[2]
