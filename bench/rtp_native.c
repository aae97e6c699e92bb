/* The packet benchmarks' C side, built and loaded by test_bench_packets.py:
 * - rtp_loop, the ceiling: RTP header packing, nonce and libsodium AEAD in a C loop with no
 *   Python object per packet, making the same libsodium calls as the compiled packet core
 *   (for AES-256-GCM, the precomputed-key API when given). The libsodium functions are
 *   PyNaCl's bundled copy, passed in as addresses;
 * - call_each, the driver of the receive row: a Python callable called from C per datagram,
 *   the way an event loop's transport calls its protocol. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned long long ull;
typedef int (*aead_encrypt_fn)(unsigned char *c, ull *clen_p, const unsigned char *m, ull mlen,
                               const unsigned char *ad, ull adlen, const unsigned char *nsec,
                               const unsigned char *npub, const unsigned char *k);
typedef int (*aead_decrypt_fn)(unsigned char *m, ull *mlen_p, unsigned char *nsec,
                               const unsigned char *c, ull clen, const unsigned char *ad, ull adlen,
                               const unsigned char *npub, const unsigned char *k);
typedef int (*beforenm_fn)(unsigned char *state, const unsigned char *k);

static void put_u16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static void write_header(unsigned char *p, uint32_t seq, uint32_t ts, uint32_t ssrc) {
    p[0] = 0x80; p[1] = 0x78; put_u16(p + 2, seq); put_u32(p + 4, ts); put_u32(p + 8, ssrc);
}

/* ``count`` packets packed and encrypted (``decrypt`` 0) or decrypted and checked (1), with
 * ``enc``/``dec`` (the *_afternm pair when ``beforenm`` is given, with a ``state_bytes`` state).
 * Returns the number of failed calls, or -1 when memory ran out. */
long rtp_loop(void *enc_addr, void *dec_addr, void *beforenm_addr, size_t state_bytes, const unsigned char *key,
              const unsigned char *m, long mlen, long count, int decrypt) {
    aead_encrypt_fn enc = (aead_encrypt_fn)enc_addr;
    aead_decrypt_fn dec = (aead_decrypt_fn)dec_addr;
    long total = 12 + mlen + 16 + 4, failures = 0, i;
    unsigned char *pkt = malloc(total), *plain = malloc(total), *raw = NULL;
    const unsigned char *k = key;
    unsigned char nonce[24];
    ull outlen = 0;
    if (pkt == NULL || plain == NULL) { free(pkt); free(plain); return -1; }
    if (beforenm_addr != NULL) {
        raw = malloc(state_bytes + 16);
        if (raw == NULL) { free(pkt); free(plain); return -1; }
        unsigned char *ctx = (unsigned char *)(((uintptr_t)raw + 15) & ~(uintptr_t)15);
        ((beforenm_fn)beforenm_addr)(ctx, key);
        k = ctx;
    }
    memset(nonce, 0, sizeof nonce);
    write_header(pkt, 0, 0, 12345);
    enc(pkt + 12, &outlen, m, (ull)mlen, pkt, 12, NULL, nonce, k);
    memcpy(pkt + total - 4, nonce, 4);
    for (i = 0; i < count; i++) {
        if (decrypt) {
            long hlen = 12 + 4 * (pkt[0] & 0x0F);
            memcpy(nonce, pkt + total - 4, 4);
            failures += dec(plain, &outlen, NULL, pkt + hlen, (ull)(total - 4 - hlen), pkt, (ull)hlen, nonce, k) != 0;
        } else {
            write_header(pkt, (uint32_t)i & 0xFFFF, (uint32_t)i * 960, 12345);
            put_u32(nonce, (uint32_t)i);
            failures += enc(pkt + 12, &outlen, m, (ull)mlen, pkt, 12, NULL, nonce, k) != 0;
            memcpy(pkt + total - 4, nonce, 4);
        }
    }
    if (raw != NULL) { memset(raw, 0, state_bytes + 16); free(raw); }
    free(pkt);
    free(plain);
    return failures;
}

/* func(item, arg) for each item of the list ``items``; -1 with the exception set on error. */
long call_each(PyObject *func, PyObject *items, PyObject *arg) {
    Py_ssize_t i, n;
    if (!PyList_Check(items)) { PyErr_SetString(PyExc_TypeError, "items must be a list"); return -1; }
    n = PyList_GET_SIZE(items);
    for (i = 0; i < n; i++) {
        PyObject *args[2] = {PyList_GET_ITEM(items, i), arg};
        PyObject *result = PyObject_Vectorcall(func, args, 2, NULL);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    return 0;
}
