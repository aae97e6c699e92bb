"""IP discovery datagrams (PROTOCOL.md section 4.2).

The client sends a 74-byte request carrying its SSRC to the voice server's UDP
address; the reply carries the client's external address and port as the server
sees them.  Layout, big-endian: type (u16), length (u16, always 70), SSRC (u32),
address (64 bytes, NUL-terminated ASCII), port (u16).
"""

from __future__ import annotations

import ipaddress
import struct

from ._shown import shown
from .errors import IPDiscoveryError

__all__ = [
    "IP_DISCOVERY_SIZE",
    "IP_DISCOVERY_REQUEST",
    "IP_DISCOVERY_RESPONSE",
    "build_ip_discovery_request",
    "build_ip_discovery_response",
    "parse_ip_discovery_response",
    "is_ip_discovery_response",
]

IP_DISCOVERY_SIZE = 74
IP_DISCOVERY_REQUEST = 0x0001
IP_DISCOVERY_RESPONSE = 0x0002
_BODY_LENGTH = 70
_ADDRESS_SIZE = 64
_STRUCT = struct.Struct(">HHI64sH")


def _check_ssrc(ssrc: int) -> int:
    if not isinstance(ssrc, int) or isinstance(ssrc, bool) or not 0 <= ssrc <= 0xFFFFFFFF:
        raise ValueError(f"ssrc must be an int in 0..2**32-1, got {ssrc!r}")
    return ssrc


def build_ip_discovery_request(ssrc: int) -> bytes:
    """Return the 74-byte IP discovery request for ``ssrc``."""
    return _STRUCT.pack(IP_DISCOVERY_REQUEST, _BODY_LENGTH, _check_ssrc(ssrc), b"", 0)


def build_ip_discovery_response(ssrc: int, address: str, port: int) -> bytes:
    """Return the 74-byte reply a voice server sends (used by ``fastvoice.testing``)."""
    raw = address.encode("ascii")
    if len(raw) >= _ADDRESS_SIZE:
        raise ValueError(f"address {address!r} does not fit in {_ADDRESS_SIZE - 1} bytes")
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    return _STRUCT.pack(IP_DISCOVERY_RESPONSE, _BODY_LENGTH, _check_ssrc(ssrc), raw, port)


def is_ip_discovery_response(data: bytes) -> bool:
    """Cheap test: does ``data`` look like an IP discovery reply (size and type)?"""
    return len(data) == IP_DISCOVERY_SIZE and data[0] == 0 and data[1] == IP_DISCOVERY_RESPONSE


def parse_ip_discovery_response(data: bytes, ssrc: int) -> tuple[str, int]:
    """Parse an IP discovery reply meant for ``ssrc`` and return ``(address, port)``.

    Raises ``IPDiscoveryError`` when the datagram has the wrong size, type, length
    field or SSRC, or when the address is not a NUL-terminated IPv4/IPv6 literal.
    Bytes after the terminator are ignored.
    """
    _check_ssrc(ssrc)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
    if view.nbytes != IP_DISCOVERY_SIZE:
        raise IPDiscoveryError(f"IP discovery reply must be {IP_DISCOVERY_SIZE} bytes, got {view.nbytes}")
    kind, length, got_ssrc, raw_address, port = _STRUCT.unpack(view.cast("B"))
    if kind != IP_DISCOVERY_RESPONSE:
        raise IPDiscoveryError(f"IP discovery reply has type 0x{kind:04x}, expected 0x0002 (response)")
    if length != _BODY_LENGTH:
        raise IPDiscoveryError(f"IP discovery reply has length {length}, expected {_BODY_LENGTH}")
    if got_ssrc != ssrc:
        raise IPDiscoveryError(f"IP discovery reply is for SSRC {got_ssrc}, expected {ssrc}")
    end = raw_address.find(b"\x00")
    if end < 0:
        raise IPDiscoveryError("IP discovery reply address is not NUL-terminated")
    try:
        address = raw_address[:end].decode("ascii")
        ipaddress.ip_address(address)
    except (UnicodeDecodeError, ValueError):
        raise IPDiscoveryError(f"IP discovery reply address {shown(raw_address[:end])} is not an IP address") from None
    return address, port
