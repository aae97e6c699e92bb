"""Frames lost at each join and leave of a DAVE call when members process the commit at different times.

davey moves a member's sender key to the new epoch as soon as it processes the commit (op 29),
not at the transition's execution (op 22) as the DAVE protocol says. A member that processes
the commit later than a sender cannot decrypt that sender's frames until it does. This script
measures the cost in a 5-member call on the local voice server: four members stream to each
other all the time, a fifth joins and leaves ``--cycles`` times, and the server delivers DAVE
messages late to some members (``server.dave.delay``: staggered commit processing). For every
(receiver, sender) pair among the four it counts the frames that never reached the receiver
(gaps in the sender's frame numbers), with fastvoice's early-frame hold on (the default) and
off (``DaveConfig(hold_frames=0)``, what a client without it loses).

    python bench/dave_epoch_switch.py --cycles 5 --delays 0,0,0.05,0.15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from fastvoice.conn import ConnConfig
from fastvoice.dave import DaveConfig
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.testing import MainGatewayStandIn, VoiceServer

GUILD, CHANNEL = 91, 910
MEMBERS = [3001, 3002, 3003, 3004]
JOINER = 3005


class Numbered:
    """An endless Opus provider whose frames carry their number in the last 4 bytes."""

    def __init__(self) -> None:
        self.count = 0

    def provide_opus_frame(self) -> bytes:
        self.count += 1
        return b"\xfc" + os.urandom(40) + self.count.to_bytes(4, "big")

    def close(self) -> None:
        pass


class Counter:
    """Frame receiver keeping, per sender, the frame numbers it got."""

    def __init__(self) -> None:
        self.numbers: dict[int, list[int]] = {}

    def receive_opus_frame(self, user_id: int, packet) -> None:
        if len(packet.opus) == 45 and packet.opus[0] == 0xFC:
            self.numbers.setdefault(user_id, []).append(int.from_bytes(packet.opus[-4:], "big"))

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


def lost(numbers: list[int]) -> int:
    """Frames missing between the first and the last number received."""
    if not numbers:
        return 0
    seen = sorted(set(numbers))
    return seen[-1] - seen[0] + 1 - len(seen)


async def open_member(server, user_id, dave_config, receiver=None, provider=None):
    main = MainGatewayStandIn(server, user_id)
    config = ConnConfig(open_timeout=10, gateway_config=GatewayConfig(backoff_base=0.05), dave_config=dave_config)
    manager = Manager(main.update_voice_state, user_id, conn_config=config)
    main.attach(manager)
    conn = manager.create_conn(GUILD)
    if receiver is not None:
        conn.set_opus_frame_receiver(receiver)
    await conn.open(CHANNEL)
    if provider is not None:
        conn.set_opus_frame_provider(provider)
    return manager, conn


async def wait(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


async def run(cycles: int, delays: list[float], hold: bool) -> dict[str, float]:
    dave_config = DaveConfig() if hold else DaveConfig(hold_frames=0)
    async with VoiceServer(dave_protocol_version=1) as server:
        server.dave.delay = {uid: d for uid, d in zip(MEMBERS, delays) if d}
        counters = {uid: Counter() for uid in MEMBERS}
        members = []
        for uid in MEMBERS:
            members.append(await open_member(server, uid, dave_config, counters[uid], Numbered()))
        conns = [conn for _, conn in members]
        group = server.dave_group(GUILD, CHANNEL)
        await wait(lambda: all(c.dave.e2ee for c in conns) and group.members == set(MEMBERS)
                   and not group.pending_transitions)
        await asyncio.sleep(1.0)
        for counter in counters.values():
            counter.numbers.clear()
        base = [(c.dave.stats.early_frames_held, c.dave.stats.early_frames_decrypted, c.dave.stats.early_frames_dropped)
                for c in conns]
        started = time.monotonic()
        for _ in range(cycles):
            manager, joiner = await open_member(server, JOINER, dave_config)
            await wait(lambda: joiner.dave.e2ee and not group.pending_transitions)
            await asyncio.sleep(1.0)
            await manager.close()
            await wait(lambda: JOINER not in group.members and not group.pending_transitions)
            await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        per_pair = [lost(counters[r].numbers.get(s, [])) for r in MEMBERS for s in MEMBERS if r != s]
        held = sum(c.dave.stats.early_frames_held - b[0] for c, b in zip(conns, base))
        recovered = sum(c.dave.stats.early_frames_decrypted - b[1] for c, b in zip(conns, base))
        dropped = sum(c.dave.stats.early_frames_dropped - b[2] for c, b in zip(conns, base))
        received = sum(len(v) for c in counters.values() for v in c.numbers.values())
        for manager, _ in members:
            await manager.close()
    changes = 2 * cycles
    return {
        "lost": sum(per_pair),
        "lost_per_change": sum(per_pair) / changes,
        "worst_pair": max(per_pair),
        "median_pair": statistics.median(per_pair),
        "held": held,
        "held_then_decrypted": recovered,
        "held_then_dropped": dropped,
        "received": received,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5, help="joins (and leaves) of the fifth member (default 5)")
    parser.add_argument("--delays", default="0,0,0.05,0.15",
                        help="seconds of DAVE message delay for each of the four members (default 0,0,0.05,0.15)")
    args = parser.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",")]
    if len(delays) != len(MEMBERS) or any(not 0 <= d < 10 for d in delays) or args.cycles < 1:
        parser.error("--delays needs 4 values in [0, 10) seconds and --cycles a positive count")
    print(f"5-member DAVE call, {args.cycles} joins + {args.cycles} leaves, DAVE message delays {delays} s")
    for hold in (False, True):
        result = asyncio.run(run(args.cycles, delays, hold))
        label = "hold on (default)" if hold else "hold off"
        print(f"{label:18s} lost {result['lost']:4d} frames = {result['lost_per_change']:.1f} per join/leave "
              f"over 12 receiver/sender pairs (worst pair {result['worst_pair']}, median {result['median_pair']}); "
              f"held {result['held']} (decrypted {result['held_then_decrypted']}, "
              f"dropped {result['held_then_dropped']}); "
              f"received {result['received']} in {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
