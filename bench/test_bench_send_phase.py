"""The send phase of a clock tick: SENDERS prepared datagrams out on SENDERS UDP sockets.

Contenders, side by side in one run (per datagram):

- **compiled send_prepared**: the compiled core's loop, one ``send`` syscall per datagram
  straight on each socket (what ``SendClock.run_tick`` uses);
- **pure send_prepared**: the pure-Python twin (``os.write`` per datagram);
- **transport.sendto loop**: the previous send phase, a Python loop calling each
  connection's asyncio transport (uvloop's when installed).

    python -m pytest bench/test_bench_send_phase.py --benchmark-json=bench/send_phase.json
    python bench/report.py bench/send_phase.json
"""

from __future__ import annotations

import asyncio
import os
import socket
from types import SimpleNamespace

import pytest

import fastvoice._rtp_edge_py as edge_py
from fastvoice.audio import FrameStats

try:
    import fastvoice._rtp_edge_c as edge_c
except ImportError:
    edge_c = None

SENDERS = int(os.environ.get("FASTVOICE_BENCH_SEND_PHASE", "1000"))
DATAGRAM = os.urandom(152)  # a 120-byte frame after RTP header, tag and nonce suffix


@pytest.fixture(scope="module")
def endpoints():
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sink.setblocking(False)
    address = sink.getsockname()

    async def open_all():
        made = []
        for _ in range(SENDERS):
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=address)
            made.append(transport)
        return made

    transports = loop.run_until_complete(open_all())
    yield loop, sink, transports
    for t in transports:
        t.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    sink.close()


def _drain(sink):
    try:
        while True:
            sink.recv(2048)
    except BlockingIOError:
        pass


def _slots(twin, transports):
    # What each AudioSender owns: the slot its datagram is prepared in, aimed at its socket.
    slots = []
    for t in transports:
        slot = twin.PreparedSlot(None, FrameStats())
        slot.target = twin.SendTarget(t.get_extra_info("socket").fileno())
        slots.append(slot)
    return slots


def _run_send_prepared(benchmark, twin, endpoints, name):
    loop, sink, transports = endpoints
    slots = _slots(twin, transports)

    def tick():
        for s in slots:
            s.datagram = DATAGRAM
        assert twin.send_prepared(slots) == []

    def setup():
        _drain(sink)

    benchmark.group = f"send phase, {SENDERS} sockets"
    benchmark.extra_info.update(contender=name, batch=SENDERS)
    benchmark.pedantic(tick, setup=setup, rounds=60, warmup_rounds=3)


def test_send_phase_compiled(benchmark, endpoints):
    if edge_c is None:
        pytest.skip("compiled twin not built")
    _run_send_prepared(benchmark, edge_c, endpoints, "compiled send_prepared")


def test_send_phase_pure(benchmark, endpoints):
    _run_send_prepared(benchmark, edge_py, endpoints, "pure send_prepared")


def test_send_phase_transport_loop(benchmark, endpoints):
    loop, sink, transports = endpoints
    conns = [SimpleNamespace(_prepared=None, transport=t) for t in transports]

    def tick():
        for c in conns:
            c._prepared = DATAGRAM
        for c in conns:
            datagram = c._prepared
            if datagram is not None:
                c._prepared = None
                c.transport.sendto(datagram)

    benchmark.group = f"send phase, {SENDERS} sockets"
    benchmark.extra_info.update(contender="transport.sendto loop", batch=SENDERS)
    benchmark.pedantic(tick, setup=lambda: _drain(sink), rounds=60, warmup_rounds=3)
