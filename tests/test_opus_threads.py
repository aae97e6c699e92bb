"""OpusDecoder and threads: decoding releases the GIL; decoders in parallel threads give the same PCM;
one decoder shared by threads neither crashes nor corrupts its state."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import opus_reference as ref
from test_opus_decoder import stream


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


def test_decoding_releases_the_gil(opus):
    # With a switch interval of 100 s the interpreter never takes the GIL from a thread by
    # itself: the spinning thread runs only while the decoding thread gives the GIL up, which
    # is inside decode() or nowhere. (How often it wins the GIL back in a ~50 us window
    # depends on the machine's wake-up latency: any run at all proves the release.)
    packets = stream("celt-fullband-stereo-64k-20ms") * 5
    decoder = opus.OpusDecoder()
    ticks, stop, started = [0], threading.Event(), threading.Event()

    def spin():
        started.set()
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)  # hand the GIL back at once

    old = sys.getswitchinterval()
    sys.setswitchinterval(100)
    spinner = threading.Thread(target=spin)
    try:
        spinner.start()
        started.wait()
        before = ticks[0]
        for decoded, packet in enumerate(packets * 10, 1):
            decoder.decode(packet)
            if ticks[0] != before:  # a busy machine may delay the other thread: try up to 3,000 decodes
                break
        during = ticks[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        spinner.join()
    assert during >= 1, f"the other thread ran {during} times during {decoded} decodes"


def test_parallel_decoders_give_the_sequential_pcm(opus):
    names = ["celt-fullband-stereo-64k-20ms", "silk-fec-20ms", "hybrid-fullband-10ms", "silk-wideband-stereo-40ms"]
    expected = {}
    for name in names:
        decoder = opus.OpusDecoder()
        expected[name] = [decoder.decode(p) for p in stream(name) * 3]
    got, errors = {}, []
    barrier = threading.Barrier(len(names))

    def work(name):
        try:
            decoder = opus.OpusDecoder()
            barrier.wait()
            got[name] = [decoder.decode(p) for p in stream(name) * 3]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == expected


SHARED = """
import sys, threading
sys.path.insert(0, {tests!r})
import {module} as twin
from test_opus_decoder import stream

packets = stream("celt-fullband-stereo-64k-20ms") + stream("silk-fec-20ms")
decoder = twin.OpusDecoder()
lengths, errors = [], []
barrier = threading.Barrier(3)

def work(k):
    try:
        barrier.wait()
        for i in range(600):
            r = (i + k) % 5
            if r == 0:
                lengths.append(len(decoder.decode(None)))
            elif r == 1:
                lengths.append(len(decoder.decode(packets[(i + 1) % len(packets)], fec=True)))
            elif r == 2 and i % 50 == 0:
                decoder.reset()
            else:
                lengths.append(len(decoder.decode(packets[i % len(packets)])))
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(sorted(set(lengths)), errors)
# the shared decoder is still sound: after a reset it decodes as a fresh libopus decoder
decoder.reset()
import opus_reference as ref
fresh = ref.Decoder()
print(all(decoder.decode(p) == fresh.decode(p) for p in packets[:20]))
"""


def test_one_decoder_shared_by_threads(opus):
    # In a child process, so that a crash is reported as this test's failure.
    tests = os.path.dirname(os.path.abspath(__file__))
    code = SHARED.format(tests=tests, module=opus.__name__)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"child ended with {result.returncode}: {result.stderr[-2000:]}"
    lengths_line, sound = result.stdout.splitlines()
    assert lengths_line == "[3840] []"
    assert sound == "True"
