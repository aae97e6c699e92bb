"""A one-minute soak: 50 connections stream for 60 s against a VoiceServer in another
process while a fault is injected every 10 s (websocket drop, close 4015, refused resume,
a UDP loss/duplication burst, withheld heartbeat ACKs). Between the sample after warm-up
(20 s, once every connection streams) and the end (once the last fault is survived), the
client process may not grow: open fds +0 and asyncio tasks at most +2 (the bounds of
bench/README.md, "Soak"). Every fault must be survived and every connection must be open,
sending and receiving at the end. Timing is not asserted: on a loaded machine recoveries
are only slower. The long run is ``bench/test_bench_soak.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastvoice._env import NO_EXTENSIONS

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "soak_client.py")

#: Growth allowed between the warm-up sample and the end sample.
MAX_FD_GROWTH = 0
MAX_TASK_GROWTH = 2
CONNECTIONS = 50
SECONDS = 60
FAULT_KINDS = {"drop", "close_4015", "refuse_resume", "udp_burst", "zombie"}


@pytest.fixture(scope="module")
def soak() -> dict:
    if NO_EXTENSIONS:
        pytest.skip("the soak exercises the connection lifecycle, shared by both twins: run once per CI")
    argv = [
        sys.executable, CLIENT, "--connections", str(CONNECTIONS), "--seconds", str(SECONDS),
        "--fault-interval", "10", "--sample-interval", "10", "--warmup", "20", "--recover-timeout", "90",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"soak client failed:\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _samples(result: dict) -> str:
    return "\n".join(json.dumps(s) for s in result["samples"])


def test_soak_every_fault_is_survived(soak):
    assert soak["faults_injected"] >= len(FAULT_KINDS)
    assert set(soak["fault_kinds"]) == FAULT_KINDS
    failed = [f for f in soak["faults"] if not f["survived"]]
    assert not failed, failed
    # The faults really reconnected connections: resumes (drop, 4015, zombie) and new sessions.
    assert soak["resumes"] >= 3 and soak["new_sessions"] >= 1, (soak["resumes"], soak["new_sessions"])


def test_soak_every_connection_streams_at_the_end(soak):
    assert soak["open_at_end"] == CONNECTIONS
    assert soak["not_streaming_at_end"] == []
    assert soak["not_sending_at_end"] == []
    assert soak["not_receiving_at_end"] == []
    assert all(c["sent"] > 0 and c["received"] > 0 for c in soak["per_connection"])


def test_soak_no_fd_or_task_growth(soak):
    warm, end = soak["after_warmup"], soak["end"]
    # Faults after warm-up: the growth is measured across reconnects, not an idle stretch.
    assert sum(1 for f in soak["faults"] if f["t"] > warm["t"]) >= 3, soak["faults"]
    assert end["fds"] - warm["fds"] <= MAX_FD_GROWTH, _samples(soak)
    assert end["tasks"] - warm["tasks"] <= MAX_TASK_GROWTH, _samples(soak)


class _EndlessFrames:
    def provide_opus_frame(self) -> bytes:
        return b"\x01" * 60

    def close(self) -> None:
        pass


async def test_closing_streaming_connections_announces_nothing(caplog):
    """Found by the soak: closing a streaming connection used to let a send tick announce
    Speaking on the half-closed connection (one warning per connection)."""
    import asyncio
    import logging

    from fastvoice import ConnConfig, Manager
    from fastvoice.testing import VoiceServer

    async with VoiceServer() as server:
        main = server.main_gateway(5)
        bots = Manager(main.update_voice_state, 5, conn_config=ConnConfig(open_timeout=10))
        main.attach(bots)
        conns = [bots.create_conn(g) for g in range(1, 31)]
        await asyncio.gather(*(c.open(100 + c.guild_id) for c in conns))
        for conn in conns:
            conn.set_opus_frame_provider(_EndlessFrames())
        await server.wait_for(lambda: all(server.packets(c.udp.ssrc) for c in conns), timeout=10)
        speaking_before = sum(len(s.connections[-1].messages_in(5)) for s in server.sessions)
        with caplog.at_level(logging.WARNING, logger="fastvoice"):
            await bots.close()
            await asyncio.sleep(0.1)
        assert not [r for r in caplog.records if "Speaking" in r.getMessage()], caplog.text
        assert all(c.sender is None and c.udp is None and c.gateway is None for c in conns)
        assert sum(len(s.connections[-1].messages_in(5)) for s in server.sessions) == speaking_before
