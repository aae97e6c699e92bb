"""Interop with discord.py 2.7's own voice packet code (installed without its voice extra)."""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace

import pytest

discord_voice = pytest.importorskip("discord.voice_client")
nacl_secret = pytest.importorskip("nacl.secret")

SSRC = 424242
# discord.py 2.7 supports these modes (it has no AES-GCM).
DPY_MODES = ["aead_xchacha20_poly1305_rtpsize", "xsalsa20_poly1305_lite", "xsalsa20_poly1305"]


def discordpy_client(mode: str, key: bytes, *, sequence=0, timestamp=0, nonce=0):
    """A VoiceClient with only the state its packet code reads (no gateway, no sockets)."""
    vc = discord_voice.VoiceClient.__new__(discord_voice.VoiceClient)
    vc._connection = SimpleNamespace(dave_session=None, can_encrypt=False, ssrc=SSRC, mode=mode, secret_key=list(key))
    vc.sequence = sequence
    vc.timestamp = timestamp
    vc._incr_nonce = nonce
    return vc


def discordpy_send(vc, opus: bytes) -> bytes:
    """discord.py's send step: build the packet, then advance as VoiceClient.send_audio_packet does."""
    packet = vc._get_voice_packet(opus)
    vc.checked_add("sequence", 1, 65535)
    vc.checked_add("timestamp", 960, 4294967295)
    return packet


@pytest.mark.parametrize("mode", DPY_MODES)
def test_discordpy_packets_depacketize(rtp, mode):
    key = os.urandom(32)
    vc = discordpy_client(mode, key, sequence=65533, timestamp=4294967295 - 1920, nonce=4294967294)
    d = rtp.Depacketizer(mode, key)
    seen = set()
    for i in range(5):
        opus = os.urandom(60 + i)
        # discord.py resets its counters to 0 on overflow rather than wrapping: read them first.
        seq, ts = vc.sequence, vc.timestamp
        pkt = d.depacketize(discordpy_send(vc, opus))
        assert (pkt.opus, pkt.ssrc, pkt.sequence, pkt.timestamp) == (opus, SSRC, seq, ts)
        seen.add(seq)
    assert 0 in seen and 65535 in seen  # the stream crossed the sequence wrap


@pytest.mark.parametrize("mode", DPY_MODES)
def test_same_bytes_as_discordpy(rtp, mode):
    # For equal state both libraries emit identical datagrams (both use a big-endian nonce).
    key = os.urandom(32)
    vc = discordpy_client(mode, key, sequence=100, timestamp=96000, nonce=7)
    p = rtp.Packetizer(SSRC, mode, key, sequence=100, timestamp=96000, nonce=7)
    for i in range(5):
        opus = os.urandom(120)
        assert p.packetize(opus) == discordpy_send(vc, opus)


def test_fastvoice_packets_open_with_discordpy_rules(rtp):
    # discord.py's rules for aead_xchacha20_poly1305_rtpsize, applied in reverse with its
    # own cipher class: AAD = 12-byte header, nonce = 4 trailing bytes + 20 zeros.
    key = os.urandom(32)
    p = rtp.Packetizer(SSRC, "aead_xchacha20_poly1305_rtpsize", key, nonce=0xFFFFFFFF)
    box = nacl_secret.Aead(key)
    for i in range(3):
        opus = os.urandom(120)
        dg = p.packetize(opus)
        header, sealed, suffix = dg[:12], dg[12:-4], dg[-4:]
        assert struct.unpack(">I", suffix)[0] == (0xFFFFFFFF + i) % 2**32
        assert box.decrypt(sealed, header, suffix + bytes(20)) == opus
