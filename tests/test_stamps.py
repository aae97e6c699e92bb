"""fastvoice.testing.kernel_receive_clock: the kernel's receive time of each datagram."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest

from fastvoice.testing import kernel_receive_clock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCGSTAMPNS is Linux's")


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, stamps_on_first: bool) -> None:
        self.stamp = None
        self.stamps_on_first = stamps_on_first
        self.got: list[tuple[bytes, float | None, float]] = []

    def connection_made(self, transport):
        if self.stamps_on_first:  # a socket where SO_TIMESTAMPNS was switched on by someone
            sock = socket.socket(fileno=transport.get_extra_info("socket").fileno())
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMPNS", 35), 1)
            sock.detach()
        self.stamp = kernel_receive_clock(transport)

    def datagram_received(self, data, addr):
        self.got.append((data, self.stamp(), time.time()))


@pytest.mark.parametrize("stamps_on_first", [False, True])
async def test_each_datagram_gets_the_time_the_kernel_received_it(stamps_on_first):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Recorder(stamps_on_first),
                                                           local_addr=("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert proto.stamp is not None
        target = transport.get_extra_info("sockname")
        sent = []
        for i in range(5):
            sent.append(time.time())
            sender.sendto(b"%d" % i, target)
            time.sleep(0.03)  # the loop is not running: datagrams wait in the socket
        await asyncio.sleep(0.05)
        assert [d for d, _, _ in proto.got] == [b"%d" % i for i in range(5)]
        for (_, stamp, delivered), at in zip(proto.got, sent):
            # Stamped when sent (loopback), not when the loop got round to reading it,
            # which was 30-150 ms later here.
            assert stamp is not None and at - 0.001 <= stamp <= at + 0.010 < delivered
    finally:
        sender.close()
        transport.close()
