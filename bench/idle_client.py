"""Client side of bench/test_bench_keepalive.py: N idle voice UDP connections, one JSON line out.

    python bench/idle_client.py N SECONDS DESIGN SINK_PORT [INTERVAL]

Opens N ``UDPConn`` to a sink on 127.0.0.1:SINK_PORT (IP discovery, then a key, as after
Session Description), sends no audio, and measures this process's CPU time (user + system)
over SECONDS once every connection is open. DESIGN picks who sends the keepalives:

- ``shared``: fastvoice, the loop's one ``KeepaliveScheduler``;
- ``per-connection``: the design it replaces, one loop timer per connection re-armed after
  each keepalive (the same datagram, sent the same way), for comparison;
- ``off``: no keepalive at all, the floor (N idle sockets on the loop).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time

KEY = bytes(range(32))
MODE = "aead_xchacha20_poly1305_rtpsize"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PerConnectionTimers:
    """One ``loop.call_later`` chain per connection: the design the shared scheduler replaces."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, n: int) -> None:
        self.loop, self.interval, self.n = loop, interval, n
        self.wakeups = 0
        self.handles: dict[int, asyncio.TimerHandle] = {}

    def start(self, index: int, udp) -> None:
        from fastvoice.keepalive import build_keepalive

        counter = [0]

        def fire() -> None:
            self.wakeups += 1
            udp.send_datagram(build_keepalive(counter[0]))
            counter[0] = (counter[0] + 1) & 0xFFFFFFFF
            self.handles[index] = self.loop.call_later(self.interval, fire)

        self.handles[index] = self.loop.call_later(self.interval * (index + 1) / self.n, fire)


async def main(n: int, seconds: float, design: str, port: int, interval: float) -> dict:
    from fastvoice.keepalive import KeepaliveScheduler
    from fastvoice.udp import UDPConn

    loop = asyncio.get_running_loop()
    conns: list[UDPConn] = []
    shared = design == "shared"
    for start in range(0, n, 250):
        batch = [UDPConn(keepalive_interval=interval if shared else None, discovery_retry=0.5)
                 for _ in range(start, min(n, start + 250))]
        await asyncio.gather(*(c.open("127.0.0.1", port, 1000 + start + i) for i, c in enumerate(batch)))
        for c in batch:
            c.set_secret_key(MODE, KEY)
        conns.extend(batch)
    # Real connections open at unrelated times: spread their keepalives over the interval
    # (the batches above opened within a second), in both designs alike.
    timers = PerConnectionTimers(loop, interval, n) if design == "per-connection" else None
    if timers is not None:
        for i, c in enumerate(conns):
            timers.start(i, c)
    elif shared:
        for i, c in enumerate(conns):
            KeepaliveScheduler.for_loop().schedule(c, interval * (i + 1) / n)
    gc.collect()
    gc.freeze()
    await asyncio.sleep(interval)  # settle: every connection has had its first keepalive
    scheduler = KeepaliveScheduler.for_loop()
    sent_before = sum(c.keepalives_sent for c in conns)
    wakeups_before = scheduler.wakeups if shared else (timers.wakeups if timers else 0)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    if shared:
        sent = sum(c.keepalives_sent for c in conns) - sent_before
        wakeups = scheduler.wakeups - wakeups_before
    elif timers is not None:
        sent = wakeups = timers.wakeups - wakeups_before
    else:
        sent = wakeups = 0
    for c in conns:
        c.close()
    if timers is not None:
        for handle in timers.handles.values():
            handle.cancel()
    return {
        "connections": n,
        "design": design,
        "interval": interval,
        "seconds": wall,
        "cpu_seconds": cpu,
        "cpu_percent_of_a_core": 100 * cpu / wall,
        "cpu_us_per_conn_second": 1e6 * cpu / (n * wall),
        "keepalives_sent": sent,
        "wakeups_per_second": wakeups / wall,
        "loop": type(loop).__module__,
    }


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        pass
    else:
        uvloop.install()
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
    result = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), interval))
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)
