"""Cost of the DAVE layer per 20 ms frame, on top of the transport path, and end-to-end rates.

Two members (fastvoice DaveSession clients over davey) are joined into one MLS group by
the local server's DaveCallGroup in memory, then every round handles BATCH frames:

- ``dave encrypt`` / ``dave decrypt``: the DAVE layer alone (120-byte Opus frames);
- ``transport only``: compiled packetize + depacketize (no DAVE), the non-DAVE call;
- ``dave + transport``: encrypt_frame -> packetize -> depacketize -> decrypt_frame, a DAVE call.

    python -m pytest bench/test_bench_dave.py --benchmark-json=bench/dave.json
    python bench/report.py bench/dave.json
"""

from __future__ import annotations

import asyncio
import os

import pytest

pytest.importorskip("davey")

from fastvoice.rtp import Depacketizer, Packetizer  # noqa: E402
from test_dave import ALICE, BOB, Call  # noqa: E402  (bench/conftest.py puts tests/ on the path)

BATCH = 1000
FRAME = os.urandom(120)
MODE = "aead_aes256_gcm_rtpsize"
KEY = os.urandom(32)


@pytest.fixture(scope="module")
def members():
    async def setup():
        call = Call()
        alice = await call.join(ALICE)
        bob = await call.join(BOB)
        assert alice.ready and bob.ready
        return alice, bob

    return asyncio.run(setup())


def test_dave_encrypt(benchmark, members):
    alice, _ = members
    benchmark.group = "DAVE layer per frame"
    benchmark.extra_info.update(contender="dave encrypt_frame", batch=BATCH)

    def run():
        for _ in range(BATCH):
            alice.encrypt_frame(FRAME)

    benchmark(run)


def test_dave_decrypt(benchmark, members):
    alice, bob = members
    benchmark.group = "DAVE layer per frame"
    benchmark.extra_info.update(contender="dave decrypt_frame", batch=BATCH)
    wires = [alice.encrypt_frame(FRAME) for _ in range(BATCH)]
    assert bob.decrypt_frame(ALICE, wires[0]) == FRAME

    def run():
        for wire in wires:
            bob.decrypt_frame(ALICE, wire)

    benchmark(run)


def test_transport_only(benchmark):
    benchmark.group = "send + receive per frame"
    benchmark.extra_info.update(contender="transport only (non-DAVE call)", batch=BATCH)
    packetize = Packetizer(1, MODE, KEY).packetize
    depacketize = Depacketizer(MODE, KEY).depacketize

    def run():
        for _ in range(BATCH):
            depacketize(packetize(FRAME))

    benchmark(run)


def test_dave_and_transport(benchmark, members):
    alice, bob = members
    benchmark.group = "send + receive per frame"
    benchmark.extra_info.update(contender="DAVE + transport (DAVE call)", batch=BATCH)
    packetize = Packetizer(1, MODE, KEY).packetize
    depacketize = Depacketizer(MODE, KEY).depacketize
    assert bob.decrypt_frame(ALICE, depacketize(packetize(alice.encrypt_frame(FRAME))).opus) == FRAME

    def run():
        for _ in range(BATCH):
            bob.decrypt_frame(ALICE, depacketize(packetize(alice.encrypt_frame(FRAME))).opus)

    benchmark(run)
