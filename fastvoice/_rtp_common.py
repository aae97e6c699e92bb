"""Argument checks and mode numbering shared by both twins of the packet core.

Only construction-time work lives here; nothing in this module runs per packet.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable

import nacl._sodium as _sodium

from .encryption import EncryptionMode

# Internal mode numbers (the compiled twin switches on them).
MODE_AES256GCM_RTPSIZE = 0
MODE_XCHACHA20_RTPSIZE = 1
MODE_XSALSA20 = 2
MODE_XSALSA20_SUFFIX = 3
MODE_XSALSA20_LITE = 4

_MODE_NUMBERS = {
    EncryptionMode.AEAD_AES256_GCM_RTPSIZE: MODE_AES256GCM_RTPSIZE,
    EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE: MODE_XCHACHA20_RTPSIZE,
    EncryptionMode.XSALSA20_POLY1305: MODE_XSALSA20,
    EncryptionMode.XSALSA20_POLY1305_SUFFIX: MODE_XSALSA20_SUFFIX,
    EncryptionMode.XSALSA20_POLY1305_LITE: MODE_XSALSA20_LITE,
}

KEY_SIZE = 32
TAG_SIZE = 16
#: Largest UDP payload over IPv4: no packet the core builds is longer. (What the receive side
#: accepts is far less: ``fastvoice.udp.MAX_RECEIVED_DATAGRAM``.)
MAX_UDP_PAYLOAD = 65507
# Worst-case bytes added around the Opus payload by any supported mode.
MAX_OVERHEAD = 12 + TAG_SIZE + 24
MAX_PAYLOAD = MAX_UDP_PAYLOAD - MAX_OVERHEAD
# A UDP keepalive (PROTOCOL.md 4.3): a u32 little-endian counter and four zero bytes.
KEEPALIVE_SIZE = 8


class DispatchOutcome(enum.IntEnum):
    """What :meth:`Depacketizer.dispatch_outcome` did with a datagram.

    ``ROUTED``: an audio packet of a mapped SSRC, first seen (its ``user_id`` is set);
    ``UNMAPPED``: an audio packet of an SSRC the table does not hold (``user_id`` is ``None``);
    ``DUPLICATE``: a repeat of a packet already dispatched for its SSRC (dropped, no packet);
    ``NOT_AUDIO``: not RTP audio (RTCP, IP discovery replies, stray bytes; no packet).
    """

    ROUTED = 0
    UNMAPPED = 1
    DUPLICATE = 2
    NOT_AUDIO = 3


#: The outcomes by number (the compiled twin hands out these members).
OUTCOMES = tuple(DispatchOutcome)


def resolve_mode(mode: object, aes_available: bool) -> tuple[EncryptionMode, int]:
    """Return ``(EncryptionMode, internal number)`` or raise ``ValueError``."""
    parsed = EncryptionMode.parse(mode)
    number = _MODE_NUMBERS.get(parsed)
    if number is None:
        supported = ", ".join(m.value for m in _MODE_NUMBERS)
        raise ValueError(f"encryption mode {parsed.value!r} is not supported by the packet core; expected one of: {supported}")
    if number == MODE_AES256GCM_RTPSIZE and not aes_available:
        raise ValueError(
            "encryption mode 'aead_aes256_gcm_rtpsize' needs AES-NI/ARMv8 crypto instructions, which this CPU lacks; "
            "use 'aead_xchacha20_poly1305_rtpsize'"
        )
    return parsed, number


def check_key(secret_key: object) -> bytes:
    """Return a private 32-byte copy of the key (bytes-like, or a list of 32 ints as in op 4).

    The copy is a new object that nothing else references, never ``secret_key`` itself, so
    the packet core may zero it with :func:`scrub` without touching the caller's key.
    """
    if isinstance(secret_key, (bytes, bytearray, memoryview)):
        key = bytes(memoryview(secret_key))
    elif isinstance(secret_key, (list, tuple)):
        try:
            key = bytes(secret_key)
        except (TypeError, ValueError):
            raise ValueError("secret_key as a list must hold 32 ints in 0..255") from None
    else:
        raise TypeError(f"secret_key must be 32 bytes or a list of 32 ints, not {type(secret_key).__name__}")
    if len(key) != KEY_SIZE:
        scrub(key)
        raise ValueError(f"secret_key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def scrub(key: bytes) -> None:
    """Overwrite with zeros, in place, a key copy made by :func:`check_key`.

    Only for those private copies: ``bytes`` are immutable to Python code, and zeroing one
    that someone else holds would change their value. ``sodium_memzero`` is a store the
    compiler cannot drop.
    """
    if len(key) > 1:  # the empty and one-byte objects are shared singletons
        _sodium.lib.sodium_memzero(_sodium.ffi.from_buffer(key), len(key))


def check_uint(name: str, value: object, bits: int) -> int:
    """Validate an unsigned integer field of ``bits`` bits and return it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    limit = (1 << bits) - 1
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit}, got {value}")
    return value


#: Default bound of an SSRCTable: a call has at most a few hundred members (each may use a
#: few SSRCs over a session), and op 5 comes from the network, so the table never grows past it.
DEFAULT_MAX_SSRCS = 1024


def check_max_entries(value: object) -> int:
    """Validate an SSRCTable's ``max_entries``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"max_entries must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"max_entries must be >= 1, got {value}")
    return value


def eviction_candidates(stamps: Iterable[tuple[int, int]], max_entries: int) -> list[tuple[int, int]]:
    """Of ``(activity stamp, ssrc)`` pairs, the least recently active eighth of a full table,
    oldest last (a table pops them one eviction at a time, skipping any used since)."""
    oldest = heapq.nsmallest(max(1, max_entries // 8), stamps)
    oldest.reverse()
    return oldest


def wiped_error(kind: str) -> RuntimeError:
    """The error for using a Packetizer/Depacketizer after ``wipe()``."""
    return RuntimeError(f"this {kind}'s secret key was wiped; create a new {kind} with the session's key")


def packet_repr(p: object) -> str:
    """Shared ``repr`` of a Packet (payload shown by length only)."""
    ext = getattr(p, "extension_profile")
    return (
        f"Packet(sequence={p.sequence}, timestamp={p.timestamp}, ssrc={p.ssrc}, "  # type: ignore[attr-defined]
        f"opus=<{len(p.opus)} bytes>, marker={p.marker}, csrcs={p.csrcs!r}"  # type: ignore[attr-defined]
        + (f", extension_profile=0x{ext:04x}, extension=<{len(p.extension)} bytes>)" if ext is not None else ")")  # type: ignore[attr-defined]
    )
