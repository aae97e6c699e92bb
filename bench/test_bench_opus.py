"""Opus decoding per 20 ms frame: libopus from a C loop vs fastvoice's compiled and pure twins vs
discord.py's ``discord.opus.Decoder``; and how decoding scales over threads.

The stream: 5 s of a stereo chord with vibrato and noise (different on each side), encoded by
libopus at 64 kbit/s in 20 ms frames (CELT, fullband).  Each contender decodes the same
``BATCH`` packets per round (PLC: ``BATCH`` concealments after the stream), so the per-frame
figure is the round's time divided by ``BATCH``.  The C reference (bench/opus_native.c) is
compiled here with the system's C compiler and calls the same libopus through the same function
pointer as the compiled twin.

Thread scaling: N threads, each with its own decoder, decode ``FASTVOICE_BENCH_OPUS_FRAMES``
frames each (default 1500, 30 s of audio); the figure is wall time per frame decoded, so one
thread's figure over N threads' is the speed-up.  ``test_thread_speedup`` measures that ratio
side by side: each round runs one thread, then two, and the speed-up of every round is kept
(other load on a shared machine then hits both halves of a round alike).  On Linux it also
reads each thread's run-queue wait (``/proc/thread-self/schedstat``: time it was ready to run
while other processes held the CPUs) and reports the speed-up with that time taken out: what
the decoder gives on two free cores.  Waiting for the GIL is sleeping, not run-queue wait,
so it stays in that figure.

    pytest bench/test_bench_opus.py --benchmark-json=bench/opus.json
    python bench/report_opus.py bench/opus.json
"""

from __future__ import annotations

import array
import ctypes
import functools
import math
import os
import random
import shutil
import statistics
import subprocess
import threading
import time

import pytest

import opus_reference as ref
from fastvoice import _opus_common
from fastvoice import _opus_py as opus_py

try:
    from fastvoice import _opus_c as opus_c
except ImportError:  # pure install: the compiled rows are skipped
    opus_c = None

BATCH = 250
THREAD_FRAMES = int(os.environ.get("FASTVOICE_BENCH_OPUS_FRAMES", "1500"))
HERE = os.path.dirname(os.path.abspath(__file__))

needs_c = pytest.mark.skipif(opus_c is None, reason="compiled twin not built")
# The first rounds of a process run slower (clock ramp, caches): warm up before measuring.
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=20, min_rounds=30)


@pytest.fixture(scope="module", autouse=True)
def _libopus():
    ref.require_libopus()
    _opus_common.library()


@functools.lru_cache(maxsize=None)
def music_packets() -> tuple[bytes, ...]:
    rng = random.Random(64)
    rate, seconds = 48000, BATCH * 0.02
    pcm = array.array("h")
    for i in range(int(rate * seconds)):
        t = i / rate
        vibrato = 1 + 0.004 * math.sin(2 * math.pi * 5 * t)
        chord = sum(math.sin(2 * math.pi * f * vibrato * t) for f in (220.0, 277.2, 329.6, 440.0))
        left = 4000 * chord + rng.gauss(0, 600)
        right = 3500 * chord * (0.8 + 0.2 * math.sin(2 * math.pi * 0.5 * t)) + rng.gauss(0, 600)
        pcm.append(int(left))
        pcm.append(int(right))
    packets = ref.Encoder(bitrate=64000).encode_stream(pcm.tobytes(), 20)
    assert len(packets) == BATCH
    return tuple(packets)


# ------------------------------------------------------------------ the C reference


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler for the native reference")
    out = str(tmp_path_factory.mktemp("opus_native") / "opus_native.so")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", out, os.path.join(HERE, "opus_native.c")], check=True)
    lib = ctypes.CDLL(out)
    lib.decode_packets.restype = ctypes.c_long
    lib.decode_packets.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_int]
    lib.conceal.restype = ctypes.c_long
    lib.conceal.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    return lib


class NativeDecoder:
    """One libopus decoder driven by the C loops of bench/opus_native.c."""

    def __init__(self, harness, channels=2, packets=None):
        lib = _opus_common.library()
        error = ctypes.c_int()
        self.state = lib.decoder_create(48000, channels, ctypes.byref(error))
        assert self.state, error.value
        self.harness, self.lib = harness, lib
        self.decode_fn = lib.addresses["opus_decode"]
        self.pcm = (ctypes.c_int16 * (5760 * channels))()
        packets = packets or music_packets()
        self.data = b"".join(packets)
        self.lens = (ctypes.c_int32 * len(packets))(*map(len, packets))
        self.count = len(packets)

    def decode_all(self):
        n = self.harness.decode_packets(self.decode_fn, self.state, self.data, self.lens, self.count, self.pcm, 5760)
        assert n == self.count * 960, n
        return n

    def conceal(self, count):
        return self.harness.conceal(self.decode_fn, self.state, count, self.pcm, 960)

    def __del__(self):
        self.lib.decoder_destroy(self.state)


# ------------------------------------------------------------------ the Python-level contenders


def _discordpy_decoder(channels=2):
    discord_opus = pytest.importorskip("discord.opus")
    if not discord_opus.is_loaded():
        discord_opus._load_default()
    if not discord_opus.is_loaded():
        pytest.skip("discord.py could not load libopus")
    if channels == 2:
        return discord_opus.Decoder()

    class MonoDecoder(discord_opus.Decoder):
        CHANNELS = 1

    return MonoDecoder()


def _decoder(contender, channels=2):
    if contender == "compiled":
        if opus_c is None:
            pytest.skip("compiled twin not built")
        return opus_c.OpusDecoder(48000, channels)
    if contender == "pure":
        return opus_py.OpusDecoder(48000, channels)
    return _discordpy_decoder(channels)


NAMES = {"compiled": "fastvoice compiled", "pure": "fastvoice pure", "discordpy": "discord.py 2.7 Decoder"}
contenders = pytest.mark.parametrize("contender", list(NAMES))


def _decode_batch(decode, packets):
    for packet in packets:
        decode(packet)


def _conceal_batch(decode):
    for _ in range(BATCH):
        decode(None)


@pytest.mark.parametrize("channels", [2, 1], ids=["stereo", "mono"])
def test_decode_native(benchmark, native, channels):
    benchmark.group = f"decode 20 ms 64 kbit/s stereo packets to {'stereo' if channels == 2 else 'mono'}"
    benchmark.extra_info.update(contender="native C loop", batch=BATCH)
    decoder = NativeDecoder(native, channels)
    benchmark(decoder.decode_all)


@contenders
@pytest.mark.parametrize("channels", [2, 1], ids=["stereo", "mono"])
def test_decode(benchmark, contender, channels):
    benchmark.group = f"decode 20 ms 64 kbit/s stereo packets to {'stereo' if channels == 2 else 'mono'}"
    benchmark.extra_info.update(contender=NAMES[contender], batch=BATCH)
    decoder = _decoder(contender, channels)
    packets = music_packets()
    assert len(decoder.decode(packets[0])) == 960 * channels * 2
    benchmark(_decode_batch, decoder.decode, packets)


def test_conceal_native(benchmark, native):
    benchmark.group = "PLC, 20 ms stereo"
    benchmark.extra_info.update(contender="native C loop", batch=BATCH)
    decoder = NativeDecoder(native)
    decoder.decode_all()
    benchmark(decoder.conceal, BATCH)


@contenders
def test_conceal(benchmark, contender):
    benchmark.group = "PLC, 20 ms stereo"
    benchmark.extra_info.update(contender=NAMES[contender], batch=BATCH)
    decoder = _decoder(contender)
    _decode_batch(decoder.decode, music_packets())
    assert len(decoder.decode(None)) == 3840
    benchmark(_conceal_batch, decoder.decode)


# ------------------------------------------------------------------ thread scaling


def _schedstat():
    """(ns on a CPU, ns runnable but waiting for one) of the calling thread (Linux), else None."""
    try:
        with open("/proc/thread-self/schedstat") as fh:
            on_cpu, waiting, _ = fh.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return None


def _run_threads(workers):
    """Run each worker in its own thread, all released at once; wall time is what is measured.

    Returns, per thread, (seconds from release to its end, seconds it was runnable but waited
    for a CPU that other processes held, or None off Linux)."""
    barrier = threading.Barrier(len(workers))
    errors, spans = [], []

    def run(work):
        try:
            barrier.wait()
            before, started = _schedstat(), time.perf_counter()
            work()
            elapsed, after = time.perf_counter() - started, _schedstat()
            spans.append((elapsed, (after[1] - before[1]) / 1e9 if before and after else None))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return spans


def _workers(contender, threads, harness=None):
    repeats = max(1, THREAD_FRAMES // BATCH)
    packets = music_packets()
    workers = []
    for _ in range(threads):
        if contender == "native":
            decoder = NativeDecoder(harness)

            def work(decoder=decoder):
                for _ in range(repeats):
                    decoder.decode_all()
        else:
            decode = _decoder(contender).decode

            def work(decode=decode):
                for _ in range(repeats):
                    for packet in packets:
                        decode(packet)
        workers.append(work)
    return workers, repeats * BATCH * threads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("contender", ["native", "compiled", "pure"])
def test_decode_threads(benchmark, request, contender, threads):
    harness = request.getfixturevalue("native") if contender == "native" else None
    workers, frames = _workers(contender, threads, harness)
    label = "native C loop" if contender == "native" else NAMES[contender]
    benchmark.group = "decode threads: wall time per frame, each thread its own stream"
    benchmark.extra_info.update(contender=f"{label}, {threads} thread{'s' if threads > 1 else ''}", batch=frames,
                                implementation=label, threads=threads)
    benchmark.pedantic(_run_threads, args=(workers,), rounds=7, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("contender", ["native", "compiled", "pure"])
def test_thread_speedup(benchmark, request, contender):
    harness = request.getfixturevalue("native") if contender == "native" else None
    one, frames_one = _workers(contender, 1, harness)
    two, frames_two = _workers(contender, 2, harness)
    rounds = []

    def round_of_both():
        rounds.append((_run_threads(one), _run_threads(two)))

    label = "native C loop" if contender == "native" else NAMES[contender]
    benchmark.group = "decode threads: speed-up of 2 threads over 1, alternated in each round"
    benchmark.pedantic(round_of_both, rounds=15, iterations=1, warmup_rounds=1)
    per_thread = frames_one  # every thread decodes the same number of frames
    speedups, unloaded = [], []
    for single, pair in rounds[1:] or rounds:  # the first round warms up
        speedups.append(single[0][0] * 2 / max(elapsed for elapsed, _ in pair))
        if all(waited is not None for _, waited in single + pair):
            # Throughput had no other process taken a CPU: each thread's time minus its run-queue wait.
            alone = per_thread / (single[0][0] - single[0][1])
            unloaded.append(sum(per_thread / (elapsed - waited) for elapsed, waited in pair) / alone)
    benchmark.extra_info.update(contender=label, batch=frames_one + frames_two, speedups=sorted(speedups),
                                median_speedup=statistics.median(speedups), unloaded_speedups=sorted(unloaded))
