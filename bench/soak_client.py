"""The soak run: N connections streaming for a long time while faults are injected.

One client process (this one) holds N guild connections through one Manager, each sending
a 120-byte frame every 20 ms and receiving the server's echo of it; the VoiceServer runs in
another process (``bench/soak_server.py``) and takes fault commands on its stdin. Every
``--fault-interval`` seconds the next fault of the rotation is injected (websocket drop of 5%
of the sessions, close 4015 on 5%, a refused resume on 2%, heartbeat ACKs withheld on 5%, a
burst of UDP loss/duplication/reordering); before the next one, the previous fault must be
survived: every connection streaming again (gateway ready, sender live, the server seeing
its packets) and every touched connection reconnected. Every ``--sample-interval`` seconds
the process samples its RSS, open fds, asyncio tasks, live objects and the connections'
counters: the totals, and per connection what it sent, received and lost since the previous
sample and its state (spooled to a temporary file during the run, so that the samples do
not grow the process they measure), summed up per sample as the least, median and most
frames one connection sent and received and how many sent or received nothing. The warm-up
sample (after ``--warmup`` seconds, taken once every connection streams) and the end sample
(after the last fault is survived) are compared for growth.

    python bench/soak_client.py --connections 200 --seconds 600

prints the table on stderr and one JSON line (every sample, fault and the summary) on
stdout. ``python bench/soak_client.py --table result.json`` prints the table of a saved
result (the line itself, or a pytest-benchmark JSON holding it in ``extra_info``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

#: The fault rotation, in order.
FAULT_KINDS = ("drop", "close_4015", "refuse_resume", "udp_burst", "zombie")

_COMMANDS: dict[str, dict[str, Any]] = {
    "drop": {"op": "drop", "fraction": 0.05},
    "close_4015": {"op": "close", "code": 4015, "fraction": 0.05},
    "refuse_resume": {"op": "refuse_resume", "fraction": 0.02},
    "udp_burst": {"op": "udp", "loss": 0.3, "duplicate": 0.3, "reorder": 0.1, "seconds": 4.0},
    "zombie": {"op": "zombie", "fraction": 0.05},
}

#: A connection counts as streaming if the server saw one of its packets this recently (s).
FRESH_SECONDS = 3.0

#: The per-connection counters of a sample, each the change since the previous sample.
CONN_FIELDS = ("sent", "silence", "nulled", "deficit", "received", "resumes", "new_sessions")

#: A connection's state at a sample, one character per connection (the first that applies).
CONN_STATUS = {
    ".": "streaming (gateway ready, UDP keyed, sender live)",
    "g": "voice gateway not ready",
    "u": "UDP not keyed",
    "x": "sender not live",
}

#: Intervals shorter than this (s) are not judged for stalled connections: the warm-up
#: sample can land milliseconds after a periodic one, before a connection's next 20 ms tick.
MIN_STALL_INTERVAL = 1.0


def rss_kib() -> int:
    """Resident set size of this process, KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def object_types() -> Counter[str]:
    """Live objects tracked by the garbage collector, counted by type name."""
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


class EndlessFrames:
    """Provides the same 120-byte frame forever."""

    def __init__(self) -> None:
        self.frame = os.urandom(120)

    def provide_opus_frame(self) -> bytes:
        return self.frame

    def close(self) -> None:
        pass


class CountingReceiver:
    """Counts the frames received (the server's echo)."""

    def __init__(self) -> None:
        self.frames = 0

    def receive_opus_frame(self, user_id: int, packet: Any) -> None:
        self.frames += 1

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


class ServerControl:
    """The soak server process: start it, send it commands, stop it."""

    def __init__(self, heartbeat_ms: float, seed: int | None) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.seed = seed
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._lock = asyncio.Lock()

    async def start(self) -> str:
        argv = [sys.executable, os.path.join(HERE, "soak_server.py"), "--heartbeat-ms", str(self.heartbeat_ms)]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**24,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the soak server exited before printing its URL")
        self.url = line.decode().strip()
        return self.url

    async def command(self, command: dict[str, Any]) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        async with self._lock:
            proc.stdin.write(json.dumps(command).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"the soak server exited while answering {command['op']!r}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the soak server refused {command!r}: {answer['error']}")
        return answer

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


class Soak:
    """One soak run (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.connections
        self.server = ServerControl(args.heartbeat_ms, args.seed)
        self.conns: list[Any] = []
        self.receivers: dict[int, CountingReceiver] = {}
        #: guild -> [Ready count, Resumed count]
        self.sessions: dict[int, list[int]] = {}
        self.samples: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.started = 0.0
        self.status: dict[str, Any] = {}
        #: The per-connection part of each sample, one JSON line per sample, read back at the end.
        self.spool: Any = None
        #: Cumulative per-connection counters at the last sample and the one before it (an
        #: end sample that is taken again replaces the last one), with their times.
        self.base: tuple[float | None, dict[str, list[int]] | None] = (None, None)
        self.prev_base: tuple[float | None, dict[str, list[int]] | None] = (None, None)
        #: False once the periodic samples stop (before the end sample).
        self.sampling = True

    # -- set-up ------------------------------------------------------------------------

    async def open(self) -> float:
        from fastvoice import ConnConfig, Manager
        from fastvoice.gateway import GatewayConfig

        url = await self.server.start()
        manager: Manager

        async def update_voice_state(guild_id: int, channel_id: int | None, self_mute: bool = False,
                                     self_deaf: bool = False) -> None:
            if channel_id is None:
                return
            loop = asyncio.get_running_loop()
            loop.call_soon(manager.handle_voice_state_update, {
                "guild_id": str(guild_id), "channel_id": str(channel_id), "user_id": "1",
                "session_id": f"soak-session-{guild_id}"})
            loop.call_soon(manager.handle_voice_server_update, {
                "guild_id": str(guild_id), "token": f"soak-token-{guild_id}", "endpoint": url})

        self.manager = manager = Manager(update_voice_state, 1, conn_config=ConnConfig(
            open_timeout=120, gateway_config=GatewayConfig(open_timeout=120, connect_timeout=60)))
        self.conns = [manager.create_conn(g) for g in range(1, self.n + 1)]
        for conn in self.conns:
            counts = self.sessions[conn.guild_id] = [0, 0]
            conn.set_event_handler_func(self._counter(counts))
        opened_at = time.monotonic()
        for start in range(0, self.n, 50):
            batch = self.conns[start:start + 50]
            await asyncio.gather(*(c.open(10**6 + c.guild_id) for c in batch))
        open_seconds = time.monotonic() - opened_at
        for conn in self.conns:
            receiver = self.receivers[conn.guild_id] = CountingReceiver()
            conn.set_opus_frame_receiver(receiver)
            conn.set_opus_frame_provider(EndlessFrames())
        return open_seconds

    @staticmethod
    def _counter(counts: list[int]) -> Any:
        from fastvoice.gateway_messages import Opcode

        def on_event(opcode: Any, data: Any) -> None:
            if opcode == Opcode.READY:
                counts[0] += 1
            elif opcode == Opcode.RESUMED:
                counts[1] += 1

        return on_event

    # -- state -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.started

    def reconnects(self, guild: int) -> int:
        ready, resumed = self.sessions[guild]
        return ready - 1 + resumed

    @staticmethod
    def client_streaming(conn: Any) -> bool:
        from fastvoice.gateway import Status

        gateway, udp, sender = conn.gateway, conn.udp, conn.sender
        return (
            gateway is not None and gateway.status is Status.READY and udp is not None
            and udp.packetizer is not None and sender is not None and sender.live
        )

    async def streaming(self) -> tuple[list[int], dict[str, Any]]:
        """Guilds not streaming (client side or as the server sees it), and the server's status."""
        status = await self.server.command({"op": "status"})
        self.status = status
        guilds = status["guilds"]
        down = []
        for conn in self.conns:
            seen = guilds.get(str(conn.guild_id))
            udp = conn.udp
            if (
                not self.client_streaming(conn) or seen is None or not seen["connected"]
                or udp is None or seen["ssrc"] != udp.ssrc or seen["age"] is None or seen["age"] > FRESH_SECONDS
            ):
                down.append(conn.guild_id)
        return down, status

    def conn_status(self, conn: Any) -> str:
        """One character of ``CONN_STATUS``."""
        from fastvoice.gateway import Status

        gateway, udp, sender = conn.gateway, conn.udp, conn.sender
        if gateway is None or gateway.status is not Status.READY:
            return "g"
        if udp is None or udp.packetizer is None:
            return "u"
        if sender is None or not sender.live:
            return "x"
        return "."

    def conn_counters(self) -> dict[str, list[int]]:
        """Cumulative counters per connection (aligned with ``self.conns``)."""
        last = self.base[1]
        counts: dict[str, list[int]] = {name: [] for name in CONN_FIELDS}
        for i, conn in enumerate(self.conns):
            stats = conn.sender.stats if conn.sender is not None else None
            for name in ("sent", "silence", "nulled", "deficit"):
                if stats is not None:
                    counts[name].append(getattr(stats, name))
                else:  # no sender (only while closing): nothing new since the last sample
                    counts[name].append(last[name][i] if last is not None else 0)
            ready, resumed = self.sessions[conn.guild_id]
            counts["received"].append(self.receivers[conn.guild_id].frames if self.receivers else 0)
            counts["resumes"].append(resumed)
            counts["new_sessions"].append(max(0, ready - 1))
        return counts

    def sample(self, label: str = "", *, replace: bool = False) -> dict[str, Any]:
        """Take a sample; ``replace`` takes the last one again (its interval grows)."""
        if replace:
            self.samples.pop()
            self.base = self.prev_base
        # Count what is alive, not garbage that is merely waiting for the cycle collector
        # (an exception's traceback and its frames form a cycle until then).
        gc.collect()
        now = self.now()
        counts = self.conn_counters()
        last_t, last = self.base
        if last is None:  # the first sample: everything since the connections opened
            deltas = counts
        else:  # a counter that went back (a replaced sender) started again from zero
            deltas = {name: [c - b if c >= b else c for c, b in zip(counts[name], last[name])]
                      for name in CONN_FIELDS}
        dt = None if last_t is None else now - last_t
        sent, received = sorted(deltas["sent"]), sorted(deltas["received"])
        judged = dt is not None and dt >= MIN_STALL_INTERVAL
        entry = {
            "t": round(now, 1),
            "label": label,
            "rss_kib": rss_kib(),
            "fds": open_fds(),
            "tasks": len(asyncio.all_tasks()),
            "gc_objects": len(gc.get_objects()),
            "open": sum(1 for c in self.conns if self.client_streaming(c)),
            "sent": sum(counts["sent"]),
            "deficit": sum(counts["deficit"]),
            "nulled": sum(counts["nulled"]),
            "received": sum(counts["received"]),
            "resumes": sum(counts["resumes"]),
            "new_sessions": sum(counts["new_sessions"]),
            # The interval since the previous sample, summed up across the connections.
            "dt": None if dt is None else round(dt, 1),
            "sent_min": sent[0] if sent else 0,
            "sent_med": statistics.median_low(sent) if sent else 0,
            "sent_max": sent[-1] if sent else 0,
            "recv_min": received[0] if received else 0,
            "recv_med": statistics.median_low(received) if received else 0,
            "recv_max": received[-1] if received else 0,
            "stalled_send": sum(1 for v in sent if v == 0) if judged else None,
            "stalled_recv": sum(1 for v in received if v == 0) if judged else None,
        }
        if self.spool is not None:
            conns: dict[str, str] = {name: " ".join(map(str, deltas[name])) for name in CONN_FIELDS}
            conns["status"] = "".join(self.conn_status(c) for c in self.conns)
            self.spool.write(json.dumps({"i": len(self.samples), "conns": conns}) + "\n")
            self.spool.flush()
        self.samples.append(entry)
        self.prev_base, self.base = self.base, (now, counts)
        print(
            f"[soak t={entry['t']:6.1f}s{' ' + label if label else ''}] rss={entry['rss_kib']} KiB "
            f"fds={entry['fds']} tasks={entry['tasks']} objects={entry['gc_objects']} open={entry['open']}/{self.n} "
            f"sent={entry['sent']} received={entry['received']} deficit={entry['deficit']} "
            f"resumes={entry['resumes']} new_sessions={entry['new_sessions']} | per connection: "
            f"sent {entry['sent_min']}/{entry['sent_med']}/{entry['sent_max']} "
            f"received {entry['recv_min']}/{entry['recv_med']}/{entry['recv_max']} "
            f"stalled {_dash(entry['stalled_send'])}/{_dash(entry['stalled_recv'])}",
            file=sys.stderr, flush=True,
        )
        return entry

    def read_spool(self) -> list[dict[str, str]]:
        """The per-connection part of every sample, in order (a retaken sample's last version)."""
        assert self.spool is not None
        self.spool.seek(0)
        by_index: dict[int, dict[str, str]] = {}
        for line in self.spool:
            record = json.loads(line)
            by_index[record["i"]] = record["conns"]
        return [by_index[i] for i in range(len(self.samples))]

    async def sampler(self) -> None:
        interval = self.args.sample_interval
        k = 1
        while True:
            await asyncio.sleep(max(0.0, self.started + k * interval - time.monotonic()))
            if self.sampling:
                self.sample()
            k += 1

    # -- faults ------------------------------------------------------------------------

    async def inject(self, kind: str) -> dict[str, Any]:
        before = {g: self.reconnects(g) for g in self.sessions}
        readies = {g: v[0] for g, v in self.sessions.items()}
        answer = await self.server.command(_COMMANDS[kind])
        fault = {
            "kind": kind, "t": round(self.now(), 1), "guilds": answer["guilds"],
            "ends": self.now() + float(answer.get("seconds", 0.0)),
            "before": before, "readies": readies, "received": None,
            "survived": None, "recovery_s": None, "detail": "",
        }
        self.faults.append(fault)
        print(f"[soak t={fault['t']:6.1f}s] fault {kind} on {len(fault['guilds'])} connection(s)",
              file=sys.stderr, flush=True)
        return fault

    async def judge(self, fault: dict[str, Any]) -> None:
        """Wait until the fault is survived (or ``--recover-timeout`` passes)."""
        deadline = time.monotonic() + self.args.recover_timeout
        while True:
            ok, detail = await self.check(fault)
            if ok or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        fault["survived"] = ok
        if ok:
            fault["recovery_s"] = round(self.now() - fault["t"], 1)
        else:
            fault["detail"] = detail
            print(f"[soak] fault {fault['kind']} at t={fault['t']} NOT survived: {detail}", file=sys.stderr, flush=True)
        # The per-connection snapshots are only needed while judging: kept, they would be
        # the soak's own memory growth (a few KiB per fault at 200 connections).
        for key in ("before", "readies", "received"):
            fault.pop(key, None)

    async def check(self, fault: dict[str, Any]) -> tuple[bool, str]:
        if self.now() < fault["ends"]:
            return False, "fault still running"
        down, _ = await self.streaming()
        if down:
            return False, f"{len(down)} connection(s) not streaming, e.g. guilds {down[:5]}"
        touched = [int(g) for g in fault["guilds"]]
        if fault["kind"] == "udp_burst":
            # Every connection must receive again after the burst.
            if fault["received"] is None:
                fault["received"] = {g: r.frames for g, r in self.receivers.items()}
                return False, "waiting for audio after the burst"
            silent = [g for g, r in self.receivers.items() if r.frames <= fault["received"][g]]
            if silent:
                return False, f"{len(silent)} connection(s) receive nothing after the burst, e.g. {silent[:5]}"
            return True, ""
        if fault["kind"] == "refuse_resume":
            stale = [g for g in touched if self.sessions[g][0] <= fault["readies"][g]]
            if stale:
                return False, f"{len(stale)} connection(s) without a new session yet, e.g. {stale[:5]}"
            return True, ""
        stale = [g for g in touched if self.reconnects(g) <= fault["before"][g]]
        if stale:
            return False, f"{len(stale)} connection(s) have not reconnected yet, e.g. {stale[:5]}"
        return True, ""

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        # Opened before the first sample, so that every sample counts its fd.
        with tempfile.TemporaryFile("w+", encoding="ascii") as self.spool:
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        from fastvoice import speedups_enabled

        args = self.args
        try:
            open_seconds = await self.open()
            self.started = time.monotonic()
            start = self.sample("start")
            sampler = asyncio.get_running_loop().create_task(self.sampler(), name="soak-sampler")
            events = [(args.warmup, "warm-up")]
            t = args.fault_interval / 2
            k = 0
            while t < args.seconds:
                events.append((t, FAULT_KINDS[k % len(FAULT_KINDS)]))
                t += args.fault_interval
                k += 1
            events.sort()
            warm: dict[str, Any] | None = None
            warm_types = object_types()
            for at, what in events:
                await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))
                if self.now() >= args.seconds:
                    break  # a slow recovery ate into the schedule: no fault after the end
                if what == "warm-up":
                    await self.wait_streaming()
                    warm = self.sample("warm-up")
                    warm_types = object_types()
                else:
                    # Survived (or given up on) before the next event: faults never overlap.
                    await self.judge(await self.inject(what))
            await asyncio.sleep(max(0.0, self.started + args.seconds - time.monotonic()))
            down = await self.wait_streaming()
            # No periodic sample from here on: the end sample's interval spans the check below
            # (the sampler task stays, as it was in every sample).
            self.sampling = False
            # Streaming at the end: every sender still sends and every receiver still receives.
            sent_before = {c.guild_id: c.sender.stats.sent for c in self.conns if c.sender is not None}
            received_before = {g: r.frames for g, r in self.receivers.items()}
            await asyncio.sleep(2.0)
            not_sending = [c.guild_id for c in self.conns
                           if c.sender is None or c.sender.stats.sent <= sent_before.get(c.guild_id, 0)]
            not_receiving = [g for g, r in self.receivers.items() if r.frames <= received_before[g]]
            # Settle: anything a fault left behind (closing sockets, finishing tasks) must be
            # gone once every connection is streaming again; give it a few samples' time.
            end = self.sample("end")
            if warm is not None:
                for _ in range(10):
                    if end["fds"] <= warm["fds"] and end["tasks"] <= warm["tasks"]:
                        break
                    await asyncio.sleep(1.0)
                    end = self.sample("end", replace=True)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            status = self.status
            grown = object_types()
            grown.subtract(warm_types)
            growing_types = {name: count for name, count in grown.most_common(10) if count > 0}
            per_connection = [
                {
                    "guild": c.guild_id,
                    "sent": c.sender.stats.sent if c.sender is not None else 0,
                    "silence": c.sender.stats.silence if c.sender is not None else 0,
                    "nulled": c.sender.stats.nulled if c.sender is not None else 0,
                    "deficit": c.sender.stats.deficit if c.sender is not None else 0,
                    "received": self.receivers[c.guild_id].frames,
                    "new_sessions": self.sessions[c.guild_id][0] - 1,
                    "resumes": self.sessions[c.guild_id][1],
                }
                for c in self.conns
            ]
            for entry, conns in zip(self.samples, self.read_spool()):
                entry["conns"] = conns
        finally:
            if hasattr(self, "manager"):
                await self.manager.close()
            try:
                if self.server.proc is not None and self.server.proc.returncode is None:
                    await self.server.command({"op": "quit"})
            except Exception as exc:  # the server may already be gone; the result says so
                print(f"[soak] stopping the server: {exc}", file=sys.stderr)
            await self.server.stop()
        warm = warm or start
        survived = [f for f in self.faults if f["survived"]]
        return {
            "speedups": speedups_enabled(),
            "connections": self.n,
            "seconds": args.seconds,
            "fault_interval": args.fault_interval,
            "sample_interval": args.sample_interval,
            "warmup": args.warmup,
            "open_seconds": round(open_seconds, 2),
            # Each sample's "conns" holds, per field of "conn_fields", one number per connection
            # (space-separated, in the order of "guilds"): the change since the previous sample;
            # and "status", one character per connection (see "conn_status").
            "guilds": [c.guild_id for c in self.conns],
            "conn_fields": list(CONN_FIELDS),
            "conn_status": CONN_STATUS,
            "min_stall_interval": MIN_STALL_INTERVAL,
            "samples": self.samples,
            "faults": [{k: v for k, v in f.items() if k in ("kind", "t", "survived", "recovery_s", "detail")}
                       | {"connections": len(f["guilds"]), "guilds": sorted(int(g) for g in f["guilds"])}
                       for f in self.faults],
            "start": {k: start[k] for k in ("t", "rss_kib", "fds", "tasks", "gc_objects")},
            "after_warmup": {k: warm[k] for k in ("t", "rss_kib", "fds", "tasks", "gc_objects")},
            "end": {k: end[k] for k in ("t", "rss_kib", "fds", "tasks", "gc_objects")},
            "growth": {k: end[k] - warm[k] for k in ("rss_kib", "fds", "tasks", "gc_objects")},
            "faults_injected": len(self.faults),
            "faults_survived": len(survived),
            "fault_kinds": sorted({f["kind"] for f in self.faults}),
            "not_streaming_at_end": down,
            "not_sending_at_end": not_sending,
            "not_receiving_at_end": not_receiving,
            "open_at_end": end["open"],
            "resumes": end["resumes"],
            "new_sessions": end["new_sessions"],
            "sent": end["sent"],
            "received": end["received"],
            "deficit": end["deficit"],
            "growing_types": growing_types,
            "server": {k: status.get(k) for k in ("echoed", "unknown_ssrc", "undecryptable", "websockets")},
            "per_connection": per_connection,
        }

    async def wait_streaming(self) -> list[int]:
        """Wait (up to ``--recover-timeout``) until every connection streams; return those that do not."""
        deadline = time.monotonic() + self.args.recover_timeout
        while True:
            down, _ = await self.streaming()
            if not down or time.monotonic() > deadline:
                return down
            await asyncio.sleep(0.5)


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def format_samples(result: dict[str, Any]) -> str:
    """The table of every sample (Markdown): the process, and each interval per connection.

    "stalled" counts the connections that sent (received) nothing in the interval ("-" for
    an interval too short to tell); "sent" and "received" are the least / median / most
    frames one connection sent (received) in it. Results saved before the per-connection
    samples existed give only the process columns.
    """
    lines = [
        ("| t (s) | sample | interval (s) | RSS (KiB) | fds | tasks | objects | open "
         "| stalled send | stalled recv | sent per conn (min / med / max) | received per conn (min / med / max) |"),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in result["samples"]:
        if "sent_min" in entry:
            sent = f"{entry['sent_min']} / {entry['sent_med']} / {entry['sent_max']}"
            received = f"{entry['recv_min']} / {entry['recv_med']} / {entry['recv_max']}"
        else:
            sent = received = "-"
        lines.append(
            f"| {entry['t']:.1f} | {entry.get('label') or ''} | {_dash(entry.get('dt'))} | {entry['rss_kib']:,} "
            f"| {entry['fds']} | {entry['tasks']} | {entry['gc_objects']:,} | {entry['open']}/{result['connections']} "
            f"| {_dash(entry.get('stalled_send'))} | {_dash(entry.get('stalled_recv'))} | {sent} | {received} |"
        )
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """The soak's summary table (Markdown)."""
    rows = [
        ("", "start", "after warm-up", "end", "growth (end - warm-up)"),
        ("t (s)", result["start"]["t"], result["after_warmup"]["t"], result["end"]["t"], ""),
    ]
    for key, name in (("rss_kib", "RSS (KiB)"), ("fds", "open fds"), ("tasks", "asyncio tasks"),
                      ("gc_objects", "live objects (gc)")):
        rows.append((name, result["start"][key], result["after_warmup"][key], result["end"][key],
                     f"{result['growth'][key]:+d}"))
    lines = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines.insert(1, "|---|---:|---:|---:|---:|")
    kinds: dict[str, list[int]] = {}
    for fault in result["faults"]:
        entry = kinds.setdefault(fault["kind"], [0, 0, 0])
        entry[0] += 1
        entry[1] += bool(fault["survived"])
        entry[2] += fault["connections"]
    lines += ["", "| fault | injected | survived | connections hit |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v[0]} | {v[1]} | {v[2]} |" for k, v in kinds.items()]
    recoveries = [f["recovery_s"] for f in result["faults"] if f["recovery_s"] is not None]
    lines += [
        "",
        f"{result['connections']} connections, {result['seconds']:g} s, a fault every "
        f"{result['fault_interval']:g} s; {result['faults_survived']} of {result['faults_injected']} faults survived"
        + (f" (slowest recovery {max(recoveries):g} s)" if recoveries else "")
        + f"; {result['resumes']} resumes, {result['new_sessions']} new sessions; "
        f"{result['open_at_end']}/{result['connections']} connections open at the end, "
        f"{result['connections'] - len(result['not_sending_at_end'])} sending and "
        f"{result['connections'] - len(result['not_receiving_at_end'])} receiving; "
        f"{result['sent']:,} frames sent, {result['received']:,} echoes received, deficit {result['deficit']:,} ticks.",
    ]
    if result.get("growing_types"):
        lines.append("Object types that grew between warm-up and end: "
                     + ", ".join(f"{name} +{count}" for name, count in result["growing_types"].items()) + ".")
    lines += ["", format_samples(result)]
    return "\n".join(lines)


def _load_result(path: str) -> dict[str, Any]:
    with open(path) as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except ValueError:
        data = json.loads(text.strip().splitlines()[-1])
    if "benchmarks" in data:
        for bench in data["benchmarks"]:
            if "faults" in bench.get("extra_info", {}):
                return bench["extra_info"]
        raise ValueError(f"{path}: no soak result in this benchmark JSON")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="soak benchmark: long runs with faults, sampled for growth")
    env = os.environ.get
    parser.add_argument("--connections", type=int, default=int(env("FASTVOICE_SOAK_CONNECTIONS", "200")))
    parser.add_argument("--seconds", type=float, default=float(env("FASTVOICE_SOAK_SECONDS", "600")))
    parser.add_argument("--fault-interval", type=float, default=float(env("FASTVOICE_SOAK_FAULT_INTERVAL", "30")))
    parser.add_argument("--sample-interval", type=float, default=float(env("FASTVOICE_SOAK_SAMPLE_INTERVAL", "10")))
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the warm-up sample (default: two fault intervals)")
    parser.add_argument("--recover-timeout", type=float, default=60.0,
                        help="seconds a fault may take to be survived")
    parser.add_argument("--heartbeat-ms", type=float, default=5000.0, help="the server's heartbeat interval")
    parser.add_argument("--seed", type=int, default=None, help="seed of the server's fault picker")
    parser.add_argument("--table", metavar="JSON", help="print the table of a saved result and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(format_table(_load_result(args.table)))
        return 0
    for name in ("connections", "seconds", "fault_interval", "sample_interval", "recover_timeout"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)!r}")
    if args.warmup is None:
        args.warmup = min(2 * args.fault_interval, args.seconds / 2)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(Soak(args).run())
    print(format_table(result), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
