"""Receive route cost of whichever fastvoice build is first on ``sys.path``, with one driver.

Builds of different commits ship different benchmark harnesses (the in-module helper of
older builds, ``call_each`` of ``bench/rtp_native.c`` now); comparing them with their own
harness compares the harnesses too. This script drives any build's ``DatagramRouter`` (in
``_rtp_c`` before the I/O edge split, in ``_rtp_edge_c`` after) through the same C loop:

    cc -O2 -shared -fPIC -I"$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \\
        -o rtp_native.so bench/rtp_native.c
    (cd CHECKOUT && PYTHONPATH=$PWD python HERE/bench/router_compare.py HERE/rtp_native.so aead_aes256_gcm_rtpsize)

(HERE is this checkout, CHECKOUT the one measured.) It prints the module it measured and the best of 300 rounds of 1,000 datagrams, in ns per
datagram. Alternate checkouts (base, change, base, ...) and compare the best rounds.
"""

import ctypes
import os
import sys
import time

import fastvoice._rtp_c as rtp_c
import fastvoice._rtp_py as rtp_py

if hasattr(rtp_c, "DatagramRouter"):
    edge = rtp_c  # a build from before the I/O edge split
else:
    import fastvoice._rtp_edge_c as edge

BATCH, ROUNDS = 1000, 300
KEY = bytes(range(32))
SSRC = 0x1234ABCD


def main() -> None:
    native, mode = sys.argv[1], sys.argv[2]
    lib = ctypes.PyDLL(native)
    lib.call_each.restype = ctypes.c_long
    lib.call_each.argtypes = [ctypes.py_object] * 3
    sender = rtp_py.Packetizer(SSRC, mode, KEY, sequence=40000, timestamp=123456789, nonce=99)
    payload = os.urandom(120)
    stream = [sender.packetize(payload) for _ in range(BATCH)]
    table = rtp_c.SSRCTable()
    for i in range(20):  # a busy channel
        table.set(SSRC + i, 10**17 + i)
    router = edge.DatagramRouter(None, 4096, None)
    router.remote = ("127.0.0.1", 5000)
    router.route(rtp_c.Depacketizer(mode, KEY), table, callable)
    address = ("127.0.0.1", 5000)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        lib.call_each(router.datagram_received, stream, address)
        best = min(best, time.perf_counter() - start)
    assert router.ignored == router.decrypt_failures == 0
    print(rtp_c.__file__, f"{best / BATCH * 1e9:.1f}")


if __name__ == "__main__":
    main()
