"""ECDSA over NIST P-256 with SHA-256, in plain Python.

The local voice server signs its DAVE proposals as the MLS external sender and checks the
signatures of its members' key packages (RFC 9420's ``ecdsa_secp256r1_sha256`` for cipher
suite 2). This module lets it do both with nothing but the standard library, so that
``python -m fastvoice demo`` runs from a plain install (``cryptography``, when installed, is
used instead: it is faster).

It is a test server's key, not a production signer: the arithmetic is Python integers, so
its timing depends on the key and the nonce. Keys passed in from ``cryptography`` are signed
with ``cryptography`` instead (see :class:`fastvoice.testing.DaveExternalSender`).

Points are in Jacobian coordinates for the sums; ``k * G`` uses a table of ``d * 16**i * G``
(64 windows of 4 bits, built once on first use), so a signature costs 64 point additions.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["P256SigningKey", "verify"]

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


def _multiply(k: int, x: int, y: int) -> _Jacobian:
    """``k * (x, y)`` for an affine point, by double-and-add (verification only: not constant time)."""
    acc = _INFINITY
    for bit in bin(k)[2:]:
        acc = _double(acc)
        if bit == "1":
            acc = _add_affine(acc, x, y)
    return acc


def _add(p1: _Jacobian, p2: _Jacobian) -> _Jacobian:
    """The sum of two Jacobian points."""
    if p2[2] == 0:
        return p1
    if p1[2] == 0:
        return p2
    return _add_affine(p1, *_to_affine(p2))


def _decode_point(encoded: bytes) -> tuple[int, int] | None:
    """An uncompressed SEC 1 point on the curve, or ``None``."""
    if len(encoded) != 65 or encoded[0] != 4:
        return None
    x = int.from_bytes(encoded[1:33], "big")
    y = int.from_bytes(encoded[33:], "big")
    if x >= P or y >= P or (y * y - (x * x * x - 3 * x + B)) % P:
        return None
    return x, y


def _read_der_integer(data: bytes, pos: int) -> tuple[int, int] | None:
    """A positive DER INTEGER at ``pos`` (minimal encoding): ``(value, end)``, or ``None``."""
    if pos + 2 > len(data) or data[pos] != 0x02:
        return None
    length = data[pos + 1]
    start, end = pos + 2, pos + 2 + length
    if length == 0 or length > 33 or end > len(data):
        return None
    body = data[start:end]
    if body[0] & 0x80 or (length > 1 and body[0] == 0 and not body[1] & 0x80):
        return None  # negative, or not minimal
    return int.from_bytes(body, "big"), end


def _decode_signature(signature: bytes) -> tuple[int, int] | None:
    """``(r, s)`` of a DER ``Ecdsa-Sig-Value``, or ``None`` if it is not exactly one."""
    if len(signature) < 8 or signature[0] != 0x30 or signature[1] != len(signature) - 2:
        return None
    first = _read_der_integer(signature, 2)
    if first is None:
        return None
    second = _read_der_integer(signature, first[1])
    if second is None or second[1] != len(signature):
        return None
    return first[0], second[0]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` (DER) is a valid ECDSA-SHA256 signature of ``message`` by the
    uncompressed P-256 ``public_key``; False for anything else (malformed input included)."""
    point = _decode_point(bytes(public_key))
    rs = _decode_signature(bytes(signature))
    if point is None or rs is None:
        return False
    r, s = rs
    if not (1 <= r < N and 1 <= s < N):
        return False
    e = int.from_bytes(hashlib.sha256(bytes(message)).digest(), "big")
    w = pow(s, -1, N)
    u1, u2 = e * w % N, r * w % N
    total = _multiply(u2, *point)
    if u1:
        total = _add(total, (*base_multiply(u1), 1))
    if total[2] == 0:
        return False
    return _to_affine(total)[0] % N == r


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
