"""Mode selection (PROTOCOL.md section 3) and IP discovery datagrams (section 4.2)."""

from __future__ import annotations

import struct

import pytest

import fastvoice
from fastvoice import EncryptionMode, IPDiscoveryError, choose_encryption_mode
from fastvoice.ipdiscovery import build_ip_discovery_request, build_ip_discovery_response, parse_ip_discovery_response

ALL = [m.value for m in EncryptionMode]
AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"


def test_mode_names_and_aliases():
    assert len(set(EncryptionMode)) == 7
    assert EncryptionMode.NORMAL is EncryptionMode.XSALSA20_POLY1305
    assert EncryptionMode.SUFFIX.value == "xsalsa20_poly1305_suffix"
    assert EncryptionMode.LITE.value == "xsalsa20_poly1305_lite"
    assert {m for m in EncryptionMode if not m.discontinued} == {EncryptionMode(AES), EncryptionMode(XCHACHA)}
    with pytest.raises(ValueError, match="unknown encryption mode 'rot13'"):
        EncryptionMode.parse("rot13")


def test_choose_prefers_aes_when_available():
    assert choose_encryption_mode(ALL, aes_gcm_available=True) is EncryptionMode.AEAD_AES256_GCM_RTPSIZE
    assert choose_encryption_mode(ALL, aes_gcm_available=False) is EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
    assert choose_encryption_mode([XCHACHA], aes_gcm_available=True) is EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
    expected = AES if fastvoice.rtp.aes256gcm_available() else XCHACHA
    assert choose_encryption_mode([XCHACHA, AES, "something_new"]).value == expected


def test_choose_discontinued_only_when_asked():
    legacy = ["xsalsa20_poly1305", "xsalsa20_poly1305_suffix", "xsalsa20_poly1305_lite"]
    with pytest.raises(ValueError, match="no supported encryption mode.*allow_discontinued"):
        choose_encryption_mode(legacy)
    assert choose_encryption_mode(legacy, allow_discontinued=True) is EncryptionMode.LITE
    assert choose_encryption_mode(["xsalsa20_poly1305"], allow_discontinued=True) is EncryptionMode.NORMAL
    assert choose_encryption_mode(legacy + [XCHACHA], allow_discontinued=True).value == XCHACHA
    with pytest.raises(ValueError, match="no supported encryption mode"):
        choose_encryption_mode([])
    with pytest.raises(TypeError):
        choose_encryption_mode(XCHACHA)


def test_ip_discovery_request_layout():
    req = build_ip_discovery_request(0x01020304)
    assert len(req) == 74
    assert req[:8] == bytes([0, 1, 0, 70, 1, 2, 3, 4])
    assert req[8:] == bytes(66)
    with pytest.raises(ValueError, match="ssrc"):
        build_ip_discovery_request(2**32)


@pytest.mark.parametrize("address", ["203.0.113.7", "127.0.0.1", "2001:db8::1"])
def test_ip_discovery_response_round_trip(address):
    data = struct.pack(">HHI64sH", 2, 70, 99, address.encode(), 61234)
    assert parse_ip_discovery_response(data, 99) == (address, 61234)
    assert build_ip_discovery_response(99, address, 61234) == data


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "must be 74 bytes, got 0"),
        (struct.pack(">HHI64sH", 2, 70, 99, b"1.2.3.4", 1) + b"x", "must be 74 bytes, got 75"),
        (struct.pack(">HHI64sH", 1, 70, 99, b"1.2.3.4", 1), "type 0x0001"),
        (struct.pack(">HHI64sH", 2, 71, 99, b"1.2.3.4", 1), "length 71"),
        (struct.pack(">HHI64sH", 2, 70, 98, b"1.2.3.4", 1), "SSRC 98, expected 99"),
        (struct.pack(">HHI64sH", 2, 70, 99, b"x" * 64, 1), "not NUL-terminated"),
        (struct.pack(">HHI64sH", 2, 70, 99, b"not-an-ip", 1), "not an IP address"),
        (struct.pack(">HHI64sH", 2, 70, 99, b"\xff\xfe", 1), "not an IP address"),
    ],
)
def test_ip_discovery_bad_replies(data, message):
    with pytest.raises(IPDiscoveryError, match=message):
        parse_ip_discovery_response(data, 99)


def _fastvoice_imports(path):
    # Every module a fastvoice source imports, function-local imports included.
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add(node.module or "")
            found.update(alias.name for alias in node.names if not node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_mode_choice_does_not_import_the_packet_core():
    # encryption -> rtp closed a cycle (the core imports EncryptionMode): the CPU check both
    # need is in the leaf module _cpu.
    from pathlib import Path

    import fastvoice

    root = Path(fastvoice.__file__).parent
    assert not {m for m in _fastvoice_imports(root / "encryption.py") if m == "rtp" or m.startswith("_rtp")}
    assert not {m for m in _fastvoice_imports(root / "_cpu.py") if not m.startswith("nacl") and m != "__future__"}
    from fastvoice._cpu import aes256gcm_available
    from fastvoice.rtp import aes256gcm_available as core_says

    assert aes256gcm_available() == core_says()
