"""ECDSA over NIST P-256 with SHA-256, signing only, in plain Python.

The local voice server signs its DAVE proposals as the MLS external sender (RFC 9420's
``ecdsa_secp256r1_sha256`` for cipher suite 2). This module lets it do so with nothing but
the standard library, so that ``python -m fastvoice demo`` runs from a plain install.

It is a test server's key, not a production signer: the arithmetic is Python integers, so
its timing depends on the key and the nonce. Keys passed in from ``cryptography`` are signed
with ``cryptography`` instead (see :class:`fastvoice.testing.DaveExternalSender`).

Points are in Jacobian coordinates for the sums; ``k * G`` uses a table of ``d * 16**i * G``
(64 windows of 4 bits, built once on first use), so a signature costs 64 point additions.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["P256SigningKey"]

# SEC 2 section 2.4.2 (secp256r1); the curve is y^2 = x^3 - 3x + b over GF(P).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_Jacobian = tuple[int, int, int]  # (X, Y, Z) is the point (X / Z^2, Y / Z^3); Z == 0 is infinity
_INFINITY: _Jacobian = (1, 1, 0)


def _double(point: _Jacobian) -> _Jacobian:
    x, y, z = point
    if z == 0 or y == 0:
        return _INFINITY
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P  # a = -3
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) * (y + z) - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return (x3, y3, z3)


def _add_affine(point: _Jacobian, ax: int, ay: int) -> _Jacobian:
    """``point + (ax, ay)``, the second point affine (Z = 1)."""
    x1, y1, z1 = point
    if z1 == 0:
        return (ax, ay, 1)
    z1z1 = z1 * z1 % P
    u2 = ax * z1z1 % P
    s2 = ay * z1 * z1z1 % P
    h = (u2 - x1) % P
    r = 2 * (s2 - y1) % P
    if h == 0:
        return _double(point) if r == 0 else _INFINITY
    hh = h * h % P
    i = 4 * hh % P
    j = h * i % P
    v = x1 * i % P
    x3 = (r * r - j - 2 * v) % P
    y3 = (r * (v - x3) - 2 * y1 * j) % P
    z3 = ((z1 + h) * (z1 + h) - z1z1 - hh) % P
    return (x3, y3, z3)


def _to_affine(point: _Jacobian) -> tuple[int, int]:
    x, y, z = point
    if z == 0:
        raise ValueError("the point at infinity has no affine coordinates")
    z_inv = pow(z, -1, P)
    z_inv2 = z_inv * z_inv % P
    return x * z_inv2 % P, y * z_inv2 * z_inv % P


_table: list[list[tuple[int, int]]] = []


def _base_table() -> list[list[tuple[int, int]]]:
    """``table[i][d - 1]`` is ``d * 16**i * G`` (affine), for d in 1..15."""
    if not _table:
        base = (GX, GY)
        for _ in range(64):
            row = [base]
            acc: _Jacobian = (base[0], base[1], 1)
            for _ in range(14):
                acc = _add_affine(acc, *base)
                row.append(_to_affine(acc))
            _table.append(row)
            acc = _add_affine(acc, *base)  # 16 * base
            base = _to_affine(acc)
    return _table


def base_multiply(k: int) -> tuple[int, int]:
    """``k * G`` in affine coordinates, for ``1 <= k < N``."""
    if not 1 <= k < N:
        raise ValueError(f"scalar must be in [1, N), got a {k.bit_length()}-bit value")
    table = _base_table()
    acc = _INFINITY
    for i in range(64):
        digit = (k >> (4 * i)) & 0xF
        if digit:
            acc = _add_affine(acc, *table[i][digit - 1])
    return _to_affine(acc)


def _der_integer(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # one spare bit keeps it positive
    if len(body) > 1 and body[0] == 0 and body[1] < 0x80:
        body = body[1:]
    return b"\x02" + bytes((len(body),)) + body


class P256SigningKey:
    """A P-256 private key that signs with ECDSA-SHA256 (DER ``Ecdsa-Sig-Value`` signatures).

    ``private_value`` is the secret scalar in ``[1, N)``; a fresh random one by default.
    """

    __slots__ = ("_d", "public_key")

    def __init__(self, private_value: int | None = None) -> None:
        if private_value is None:
            private_value = secrets.randbelow(N - 1) + 1
        if isinstance(private_value, bool) or not isinstance(private_value, int) or not 1 <= private_value < N:
            raise ValueError("private_value must be an integer in [1, N) (the P-256 group order)")
        self._d = private_value
        x, y = base_multiply(private_value)
        #: The public key as an uncompressed SEC 1 point: ``0x04 || X || Y`` (65 bytes).
        self.public_key = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"P256SigningKey(public_key={self.public_key[:8].hex()}...)"

    def sign(self, message: bytes) -> bytes:
        """ECDSA-SHA256 signature of ``message``, DER-encoded, with a low ``s`` (``s <= N / 2``)."""
        e = int.from_bytes(hashlib.sha256(message).digest(), "big")  # 256 bits: no truncation
        while True:
            k = secrets.randbelow(N - 1) + 1
            r = base_multiply(k)[0] % N
            if r == 0:
                continue
            s = pow(k, -1, N) * (e + r * self._d) % N
            if s == 0:
                continue
            if s > N // 2:
                s = N - s
            body = _der_integer(r) + _der_integer(s)
            return b"\x30" + bytes((len(body),)) + body
