"""Manager -> Conn against the local VoiceServer: open, stream, receive, move, close."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time

import pytest

from fastvoice import GatewayClosedError
from fastvoice.audio import SendClock
from fastvoice.conn import ConnConfig, ConnOpenError
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.testing import VoiceServer

from _calls import SILENCE, Collect, consecutive, continues, make_manager, opus_stream, wait_until


async def test_two_bots_in_one_channel_exchange_audio():
    async with VoiceServer() as server:
        main_a, bots_a = make_manager(server, 1001)
        main_b, bots_b = make_manager(server, 1002)
        sender = bots_a.create_conn(77)
        listener = bots_b.create_conn(77)
        sink = Collect()
        listener.set_opus_frame_receiver(sink)
        await asyncio.gather(sender.open(500), listener.open(500))
        assert sender.channel_id == 500 and sender.udp.packetizer is not None
        frames = [os.urandom(40) + bytes([i]) for i in range(30)]
        sender.set_opus_frame_provider(opus_stream(frames))
        await wait_until(lambda: len(sink.frames) >= 35)
        assert sink.frames == [(1001, f) for f in frames] + [(1001, SILENCE)] * 5
        assert listener.user_id_by_ssrc(sender.udp.ssrc) == 1001
        stats = sender.sender.stats
        assert (stats.sent, stats.silence, stats.deficit) == (35, 5, 0)
        await bots_a.close()
        await bots_b.close()
        assert len(bots_a) == 0
        assert [r[:2] for r in main_a.requests] == [(77, 500), (77, None)]


async def test_open_fails_at_once_when_dave_is_required():
    async with VoiceServer(require_dave=True) as server:
        _, bots = make_manager(server, 5, gateway_config=GatewayConfig(max_dave_protocol_version=0))
        conn = bots.create_conn(9)
        started = time.monotonic()
        with pytest.raises(GatewayClosedError, match="4017"):
            await conn.open(10)
        assert time.monotonic() - started < 2
        await bots.close()


async def test_open_times_out_without_updates():
    async with VoiceServer():
        bots = Manager(lambda *a: None, 5, conn_config=ConnConfig(open_timeout=0.2))
        with pytest.raises(ConnOpenError, match="no session id .* and token/endpoint"):
            await bots.create_conn(1).open(2)
        await bots.close()


async def test_voice_server_change_mid_stream_keeps_sequence():
    async with VoiceServer() as first, VoiceServer() as second:
        main, bots = make_manager(first, 42)
        conn = bots.create_conn(3)
        await conn.open(4)
        frames = [os.urandom(30) for _ in range(400)]
        conn.set_opus_frame_provider(opus_stream(frames))
        old_udp = conn.udp
        await wait_until(lambda: len(first.packets(old_udp.ssrc)) >= 10)
        # Discord moves the call: a new token and endpoint on the main gateway.
        state, server_update = second.voice_updates(3, 42, 4, session_id=main.session_id)
        bots.handle_voice_state_update(state)
        bots.handle_voice_server_update(server_update)
        await wait_until(lambda: conn.udp is not None and conn.udp is not old_udp and second.packets(conn.udp.ssrc))
        await wait_until(lambda: len(second.packets(conn.udp.ssrc)) >= 10)
        assert not old_udp.is_open
        old_seqs = [p.sequence for p in first.packets(old_udp.ssrc)]
        new_seqs = [p.sequence for p in second.packets(conn.udp.ssrc)]
        assert continues(old_seqs[-1], new_seqs[0])  # the stream continues, it does not restart
        assert consecutive(new_seqs)
        await bots.close()


def _open_fds():
    """How many file descriptors this process has open (Linux); skips the test elsewhere."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd here to count open file descriptors")
    return len(os.listdir("/proc/self/fd"))


async def test_channel_move_mid_stream():
    async with VoiceServer() as server:
        main, bots = make_manager(server, 43)
        conn = bots.create_conn(6)
        await conn.open(60)
        conn.set_opus_frame_provider(opus_stream([os.urandom(30) for _ in range(300)]))
        old_udp = conn.udp
        await wait_until(lambda: len(server.packets(old_udp.ssrc)) >= 5)
        await main.update_voice_state(6, 61)  # moved to another channel of the guild
        await wait_until(lambda: conn.channel_id == 61 and conn.udp is not None and conn.udp is not old_udp
                         and len(server.packets(conn.udp.ssrc)) >= 5)
        assert not old_udp.is_open
        member = server.session_for_ssrc(conn.udp.ssrc)
        assert member is not None and member.channel_id == 61
        old_last = server.packets(old_udp.ssrc)[-1].sequence
        assert continues(old_last, server.packets(conn.udp.ssrc)[0].sequence)
        await bots.close()


async def open_five_calls_and_close(server):
    """Five calls streaming both ways on one Manager, then Manager.close()."""
    _, bots = make_manager(server, 8)
    conns = [bots.create_conn(g) for g in range(1, 6)]
    await asyncio.gather(*(c.open(100 + i) for i, c in enumerate(conns)))
    for c in conns:
        c.set_opus_frame_provider(opus_stream([b"abc"] * 20))
        c.set_opus_frame_receiver(Collect())
    await asyncio.sleep(0.1)
    await bots.close()


async def test_close_leaves_no_tasks():
    async with VoiceServer() as server:
        baseline_tasks = asyncio.all_tasks()
        await open_five_calls_and_close(server)
        await wait_until(lambda: asyncio.all_tasks() - baseline_tasks == set())


async def test_close_leaves_no_sockets():
    async with VoiceServer() as server:
        baseline_fds = _open_fds()
        await open_five_calls_and_close(server)
        await wait_until(lambda: _open_fds() <= baseline_fds)


class RemoteMainGateway:
    """The main gateway's part for a VoiceServer in another process (it accepts any session)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.manager: Manager | None = None

    async def update_voice_state(self, guild_id, channel_id, self_mute=False, self_deaf=False):
        if channel_id is None:
            return
        state = {"guild_id": str(guild_id), "channel_id": str(channel_id), "user_id": str(self.manager.user_id),
                 "session_id": f"session-{guild_id}"}
        server = {"guild_id": str(guild_id), "token": f"token-{guild_id}", "endpoint": self.url}
        loop = asyncio.get_running_loop()
        loop.call_soon(self.manager.handle_voice_state_update, state)
        loop.call_soon(self.manager.handle_voice_server_update, server)


async def test_300_connections_stream_with_zero_deficit():
    """300 guilds on one loop (the server in another process): all reach Ready and stream 10 s with no missed tick."""
    n = 300
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(os.path.dirname(__file__), "serve_voice.py"), "5000",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        main = RemoteMainGateway(url)
        bots = main.manager = Manager(main.update_voice_state, 9, conn_config=ConnConfig(open_timeout=10))
        conns = [bots.create_conn(g) for g in range(1, n + 1)]
        for batch in range(0, n, 50):
            await asyncio.gather(*(c.open(10_000 + i) for i, c in enumerate(conns[batch:batch + 50], batch)))
        assert all(c.udp is not None and c.udp.packetizer is not None for c in conns)
        frames = [os.urandom(100)] * 500  # 10 s of audio each
        # On a loaded machine the loop can be held up for longer than three frames, and the clock
        # then skips the missed ticks (a resync), which each live sender counts as deficit. So
        # what is checked is the logic: every deficit tick is one the clock skipped, no frame is
        # lost, and the work of 300 calls fits in real time in this process's own CPU time (the
        # load of other processes does not count there).
        clock = SendClock.for_loop()
        skipped = []
        skip = clock.skip

        def counting_skip(ticks):
            skipped.append(ticks)
            skip(ticks)

        clock.skip = counting_skip
        gc.collect()
        gc.freeze()  # what exists before streaming, as a long-running bot does after start-up
        cpu_before = time.process_time()
        try:
            for c in conns:
                c.set_opus_frame_provider(opus_stream(frames))
            await wait_until(lambda: all(not c.sender.live for c in conns), timeout=120)
        finally:
            cpu = time.process_time() - cpu_before
            gc.unfreeze()
            del clock.skip
        stats = [c.sender.stats for c in conns]
        assert all(s.sent == 505 for s in stats), {s.sent for s in stats}
        assert all(s.deficit <= sum(skipped) for s in stats), ({s.deficit for s in stats}, skipped)
        if not skipped:
            assert sum(s.deficit for s in stats) == 0
        assert cpu < 10.0, f"300 calls took {cpu:.1f} s of CPU for 10 s of audio"
        await bots.close()
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def test_no_plaintext_when_the_call_requires_dave():
    async with VoiceServer(dave_protocol_version=1) as server:
        _, bots = make_manager(server, 44)
        conn = bots.create_conn(7)
        await conn.open(70)
        conn.set_opus_frame_provider(opus_stream([b"secret opus"] * 20))
        await asyncio.sleep(0.3)
        assert server.packets(conn.udp.ssrc) == []
        assert conn.sender.stats.nulled >= 10 and conn.sender.stats.sent == 0
        await bots.close()


async def test_null_endpoint_waits_for_a_server():
    async with VoiceServer() as server:
        bots: Manager

        async def update_voice_state(guild_id, channel_id, self_mute=False, self_deaf=False):
            if channel_id is None:
                return
            state, server_update = server.voice_updates(guild_id, 45, channel_id)
            loop = asyncio.get_running_loop()
            loop.call_soon(bots.handle_voice_state_update, state)
            # Discord first says "no server yet", then sends the real one a little later.
            loop.call_soon(bots.handle_voice_server_update, dict(server_update, endpoint=None))
            loop.call_later(0.2, bots.handle_voice_server_update, server_update)

        bots = Manager(update_voice_state, 45, conn_config=ConnConfig(open_timeout=5))
        conn = bots.create_conn(8)
        started = time.monotonic()
        await conn.open(80)
        assert time.monotonic() - started >= 0.2
        assert conn.udp.packetizer is not None
        await bots.close()


async def test_refused_resume_gets_a_new_session_and_audio_continues():
    async with VoiceServer() as server:
        main, bots = make_manager(server, 46)
        conn = bots.create_conn(9)
        await conn.open(90)
        conn.set_opus_frame_provider(opus_stream([os.urandom(30) for _ in range(400)]))
        first_ssrc = conn.udp.ssrc
        await wait_until(lambda: len(server.packets(first_ssrc)) >= 5)
        server.refuse_next_resume()
        server.session_for_ssrc(first_ssrc).drop()  # socket dies; the resume is refused with 4006
        await wait_until(lambda: conn.udp is not None and conn.udp.ssrc != first_ssrc
                         and len(server.packets(conn.udp.ssrc)) >= 5, timeout=10)
        assert len(main.requests) >= 2  # op 4 again on the main gateway for the new session
        old_last = server.packets(first_ssrc)[-1].sequence
        assert continues(old_last, server.packets(conn.udp.ssrc)[0].sequence)
        await bots.close()


@pytest.mark.parametrize("mode", ["no_such_mode", "xsalsa20_poly1305"])
async def test_an_unusable_session_description_fails_open_at_once(monkeypatch, caplog, mode):
    # The server answers Select Protocol with a mode the client cannot use: one it does not
    # know, or a discontinued one it did not select.
    import fastvoice.testing._gateway_side as server_module

    real = server_module.GatewayMessageDataSessionDescription
    monkeypatch.setattr(
        server_module, "GatewayMessageDataSessionDescription", lambda _mode, key, dave: real(mode, key, dave)
    )
    async with VoiceServer() as server:
        _, bots = make_manager(server, 5, open_timeout=10)
        conn = bots.create_conn(9)
        started = time.monotonic()
        with pytest.raises(ConnOpenError, match=f"Session Description is unusable: .*{mode}"):
            await conn.open(500)
        assert time.monotonic() - started < 3
        assert conn.udp is None  # the socket was released
        await wait_until(lambda: server.session_for_user(5) is None or server.session_for_user(5).connection is None)
        assert not [r for r in caplog.records if r.exc_info]  # an error logged, not an exception raised
        await bots.close()


async def test_an_unusable_session_description_mid_call_ends_the_session(caplog):
    from fastvoice.gateway_messages import GatewayMessageDataSessionDescription, Opcode

    async with VoiceServer() as server:
        _, bots = make_manager(server, 5)
        conn = bots.create_conn(9)
        await conn.open(500)
        udp = conn.udp
        conn.set_opus_frame_provider(opus_stream([b"\x01" * 20] * 500))
        await wait_until(lambda: server.packets(udp.ssrc), what="audio at the server")
        session = server.session_for_user(5)
        await session.send(Opcode.SESSION_DESCRIPTION, GatewayMessageDataSessionDescription("no_such_mode", bytes(32), 0))
        await wait_until(lambda: not udp.is_open, what="the socket closed")
        assert conn.udp is None
        sent = len(server.packets(udp.ssrc))
        await asyncio.sleep(0.1)
        assert len(server.packets(udp.ssrc)) == sent  # nothing is sent into the ended session
        assert any("unusable" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
        await bots.close()
