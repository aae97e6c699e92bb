"""An independent implementation of the voice packet format, written from PROTOCOL.md section 3-4.

It shares no code with fastvoice: the ciphers come from ``cryptography`` (AES-256-GCM,
ChaCha20-Poly1305 with an HChaCha20 subkey for XChaCha20) and from PyNaCl's high-level
classes (``nacl.secret.Aead``, ``nacl.secret.SecretBox``).  The tests build packets here
and check that fastvoice produces and accepts exactly the same bytes.
"""

from __future__ import annotations

import struct

import nacl.secret
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
XSALSA = "xsalsa20_poly1305"
XSALSA_SUFFIX = "xsalsa20_poly1305_suffix"
XSALSA_LITE = "xsalsa20_poly1305_lite"
ALL_MODES = (AES, XCHACHA, XSALSA, XSALSA_SUFFIX, XSALSA_LITE)
RTPSIZE_MODES = (AES, XCHACHA)


# --- HChaCha20 (draft-irtf-cfrg-xchacha-03 section 2.2), for XChaCha20 via cryptography ---

def _rotl32(v: int, c: int) -> int:
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl32(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl32(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl32(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl32(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """The 32-byte HChaCha20 subkey for ``key`` and the first 16 nonce bytes."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key))
    state += list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _quarter_round(state, 0, 4, 8, 12)
        _quarter_round(state, 1, 5, 9, 13)
        _quarter_round(state, 2, 6, 10, 14)
        _quarter_round(state, 3, 7, 11, 15)
        _quarter_round(state, 0, 5, 10, 15)
        _quarter_round(state, 1, 6, 11, 12)
        _quarter_round(state, 2, 7, 8, 13)
        _quarter_round(state, 3, 4, 9, 14)
    return struct.pack("<8I", *(state[0:4] + state[12:16]))


def xchacha_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\x00\x00\x00\x00" + nonce24[16:], plaintext, aad)


def xchacha_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(b"\x00\x00\x00\x00" + nonce24[16:], ciphertext, aad)


# --- packet building per PROTOCOL.md ---

def rtp_header(
    seq: int,
    ts: int,
    ssrc: int,
    *,
    marker: bool = False,
    payload_type: int = 0x78,
    csrcs: tuple[int, ...] = (),
    extension: bool = False,
    padding: bool = False,
) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | payload_type
    return struct.pack(">BBHII", b0, b1, seq, ts, ssrc) + b"".join(struct.pack(">I", c) for c in csrcs)


def build_packet(
    mode: str,
    key: bytes,
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    *,
    counter: int = 0,
    suffix_nonce: bytes | None = None,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    ext_profile: int | None = None,
    ext_body: bytes = b"",
    padding: int = 0,
    nacl_high_level: bool = False,
) -> bytes:
    """One encrypted voice datagram built by the rules of PROTOCOL.md section 3.

    ``padding`` is the total RTP padding length (the last byte holds the count).
    ``nacl_high_level`` uses PyNaCl's ``Aead`` class for XChaCha20 instead of
    cryptography + HChaCha20 (both must agree).
    """
    assert len(ext_body) % 4 == 0
    has_ext = ext_profile is not None
    header = rtp_header(seq, ts, ssrc, marker=marker, csrcs=csrcs, extension=has_ext, padding=padding > 0)
    preamble = struct.pack(">HH", ext_profile, len(ext_body) // 4) if has_ext else b""
    pad = (bytes(padding - 1) + bytes([padding])) if padding else b""
    if mode in RTPSIZE_MODES:
        aad = header + preamble
        secret = ext_body + payload + pad
        suffix = struct.pack(">I", counter)
        if mode == AES:
            sealed = AESGCM(key).encrypt(suffix + bytes(8), secret, aad)
        elif nacl_high_level:
            sealed = nacl.secret.Aead(key).encrypt(secret, aad, suffix + bytes(20)).ciphertext
        else:
            sealed = xchacha_encrypt(key, suffix + bytes(20), secret, aad)
        return aad + sealed + suffix
    # Legacy secretbox modes: only the fixed 12 bytes stay in the clear.
    fixed, csrc_bytes = header[:12], header[12:]
    secret = csrc_bytes + preamble + ext_body + payload + pad
    box = nacl.secret.SecretBox(key)
    if mode == XSALSA:
        return fixed + box.encrypt(secret, fixed + bytes(12)).ciphertext
    if mode == XSALSA_SUFFIX:
        assert suffix_nonce is not None and len(suffix_nonce) == 24
        return fixed + box.encrypt(secret, suffix_nonce).ciphertext + suffix_nonce
    if mode == XSALSA_LITE:
        suffix = struct.pack(">I", counter)
        return fixed + box.encrypt(secret, suffix + bytes(20)).ciphertext + suffix
    raise ValueError(mode)


def open_rtpsize(mode: str, key: bytes, datagram: bytes) -> tuple[bytes, bytes]:
    """Decrypt an ``_rtpsize`` datagram; return ``(aad, plaintext)`` (plaintext still holds ext body/padding)."""
    b0 = datagram[0]
    hlen = 12 + 4 * (b0 & 0x0F) + (4 if b0 & 0x10 else 0)
    aad, sealed, suffix = datagram[:hlen], datagram[hlen:-4], datagram[-4:]
    if mode == AES:
        return aad, AESGCM(key).decrypt(suffix + bytes(8), sealed, aad)
    return aad, xchacha_decrypt(key, suffix + bytes(20), sealed, aad)
