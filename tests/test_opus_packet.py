"""fastvoice.opus_packet: the FEC flag read from a packet agrees with what libopus does with it."""

from __future__ import annotations

import random

import pytest

import opus_reference as ref
from fastvoice.opus_packet import frame_bounds, has_fec, is_celt_only


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("bitrate", [24000, 32000])
def test_has_fec_says_what_libopus_does_with_the_packet(channels, bitrate):
    encoder = ref.Encoder(channels=channels, application=ref.OPUS_APPLICATION_VOIP, bitrate=bitrate, fec=True,
                          loss_percent=10, voice=True)
    packets = encoder.encode_stream(ref.voiced(1.6, channels=channels), 20)
    flags = []
    for k in range(1, len(packets) - 1):
        # Two decoders in the same state; one recovers packet k from packet k + 1's FEC, the
        # other conceals it. They differ exactly when packet k + 1 carries FEC data.
        a, b = ref.Decoder(channels=channels), ref.Decoder(channels=channels)
        for p in packets[:k]:
            a.decode(p)
            b.decode(p)
        differs = a.decode(packets[k + 1], fec=True) != b.decode(None)
        assert has_fec(packets[k + 1]) == differs, k
        flags.append(differs)
    assert any(flags) and not all(flags)


def test_no_fec_without_the_encoder_adding_it_and_never_in_celt():
    encoder = ref.Encoder(channels=2, application=ref.OPUS_APPLICATION_VOIP, bitrate=32000, voice=True)
    assert not any(map(has_fec, encoder.encode_stream(ref.voiced(1.0), 20)))
    celt = ref.Encoder(bitrate=64000).encode_stream(ref.tone(0.5, 440), 20)
    assert all(is_celt_only(p) and not has_fec(p) for p in celt)
    assert not has_fec(b"\xf8\xff\xfe") and is_celt_only(b"\xf8\xff\xfe")


def test_frame_bounds_of_each_framing_code():
    assert frame_bounds(b"\x00abc") == (1, 3)  # code 0: one frame
    assert frame_bounds(b"\x01abcd") == (1, 2)  # code 1: two of the same size
    assert frame_bounds(b"\x01abc") is None
    assert frame_bounds(b"\x02\x02abcde") == (2, 2)  # code 2: the first's size, one byte
    assert frame_bounds(b"\x02\xfc\x01" + bytes(300)) == (3, 252 + 4)  # two bytes
    assert frame_bounds(b"\x02\x09ab") is None
    assert frame_bounds(b"\x03\x03" + bytes(9)) == (2, 3)  # code 3 CBR, 3 frames
    assert frame_bounds(b"\x03\x83\x02\x03" + bytes(9)) == (4, 2)  # code 3 VBR: lengths 2, 3, rest 4
    assert frame_bounds(b"\x03\x42\x02" + bytes(6)) == (3, 2)  # padding of 2 bytes, 2 CBR frames
    assert frame_bounds(b"\x03\x00") is None and frame_bounds(b"") is None


def test_never_raises_on_garbage():
    rng = random.Random(6716)
    for _ in range(20_000):
        packet = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
        has_fec(packet)
        frame_bounds(packet)


def test_packet_samples_agrees_with_libopus_for_every_toc_and_frame_count():
    import ctypes

    from fastvoice.opus_packet import MAX_PACKET_SAMPLES, packet_samples

    nb_samples = ref.LIB.opus_packet_get_nb_samples
    nb_samples.restype = ctypes.c_int
    nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    checked = 0
    for toc in range(256):
        seconds = [bytes([toc])] if toc & 3 != 3 else [bytes([toc, count]) for count in range(256)]
        for packet in seconds + [bytes([toc]) + bytes(40)]:
            theirs = nb_samples(packet, len(packet), 48000)
            ours = packet_samples(packet)
            assert ours == (theirs if 0 < theirs <= MAX_PACKET_SAMPLES else None), (packet[:2].hex(), theirs)
            checked += 1
    assert checked > 64 * 256
    assert packet_samples(b"") is None and packet_samples(b"\x03") is None
    assert packet_samples(b"\xf8\xff\xfe") == 960  # the silence frame: CELT, 20 ms
