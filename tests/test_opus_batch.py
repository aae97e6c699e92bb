"""decode_batch (both twins): the same PCM as one decode() per frame, refused packets reported,
bad jobs refused before anything is decoded, and the GIL released for the batch."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import opus_reference as ref
from _playout import stepped_tone_packets, voice_fec_packets


def test_a_batch_gives_what_one_call_per_frame_gives(opus):
    packets = stepped_tone_packets(40)
    fec_packets, _ = voice_fec_packets(40)
    batch_decoders = [opus.OpusDecoder() for _ in range(6)] + [opus.OpusDecoder(16000, 1)]
    single_decoders = [opus.OpusDecoder() for _ in range(6)] + [opus.OpusDecoder(16000, 1)]
    for k in range(39):
        jobs = [
            (0, packets[k], False),
            (1, None if k % 5 == 3 else packets[k], False),  # concealment
            (2, fec_packets[k + 1], k % 4 == 1),  # FEC from the next packet, or the packet
            (3, memoryview(packets[k]), False),  # any bytes-like packet
            (4, b"\x0b" if k == 7 else packets[k], False),  # refused by libopus once
            (5, b"" if k == 9 else packets[k], False),  # empty: refused
            (6, fec_packets[k], False),  # 16 kHz mono
        ]
        results, errors = opus.decode_batch([(batch_decoders[d], p, f) for d, p, f in jobs])
        expected, expected_errors = [], []
        for i, (d, p, f) in enumerate(jobs):
            try:
                expected.append(single_decoders[d].decode(p, f))
            except opus.OpusDecodeError:
                expected.append(None)
                expected_errors.append(i)
        assert results == expected and errors == expected_errors, k
    assert opus.decode_batch([]) == ([], [])


def test_bad_jobs_are_refused_before_any_frame_is_decoded(opus):
    decoder, other = opus.OpusDecoder(), opus.OpusDecoder()
    packet = stepped_tone_packets(2)[0]
    with pytest.raises(ValueError, match="only once"):
        opus.decode_batch([(decoder, packet, False), (decoder, packet, False)])
    with pytest.raises(TypeError, match="OpusDecoder"):
        opus.decode_batch([(decoder, packet, False), ("decoder", packet, False)])
    with pytest.raises(TypeError, match="bytes-like"):
        opus.decode_batch([(decoder, packet, False), (other, 42, False)])
    with pytest.raises(ValueError, match="NEXT packet"):
        opus.decode_batch([(other, None, True)])
    with pytest.raises(TypeError, match="decode_batch job"):
        opus.decode_batch([(other, None)])
    # nothing was decoded: the decoder is still at the stream's start
    fresh = ref.Decoder()
    assert decoder.decode(packet) == fresh.decode(packet)


def test_a_batch_releases_the_gil(opus):
    # As tests/test_opus_threads.py: with a switch interval of 100 s the spinning thread runs
    # only while the batch gives the GIL up (the compiled twin: once for the whole batch).
    packets = stepped_tone_packets(40)
    decoders = [opus.OpusDecoder() for _ in range(200)]
    ticks, stop, started = [0], threading.Event(), threading.Event()

    def spin():
        started.set()
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(100)
    spinner = threading.Thread(target=spin)
    during = 0
    try:
        spinner.start()
        started.wait()
        jobs = [(d, packets[n % 40], False) for n, d in enumerate(decoders)]
        for _ in range(20):  # a busy machine may delay the other thread: a few batches
            before = ticks[0]
            opus.decode_batch(jobs)
            during = ticks[0] - before
            if during:
                break
    finally:
        stop.set()
        sys.setswitchinterval(old)
        spinner.join()
    assert during >= 1
