"""VoiceServerProcess: the local voice server in a child process, driven over a pipe."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from fastvoice.testing import VoiceServerProcess

from _calls import SILENCE, Collect, make_manager, opus_stream, wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_two_bots_exchange_audio_through_a_server_in_another_process():
    async with VoiceServerProcess(strict_auth=True) as server:
        assert server.pid != os.getpid() and alive(server.pid)
        assert server.url.startswith("ws://") and server.udp_port > 0
        main_a, bots_a = make_manager(server, 1001)
        main_b, bots_b = make_manager(server, 1002)
        sender, listener = bots_a.create_conn(77), bots_b.create_conn(77)
        sink = Collect()
        listener.set_opus_frame_receiver(sink)
        # strict_auth: a session reaches the server only if its registration arrived first;
        # channel 500 is not the guild id, so the registration is what puts both in one call.
        await asyncio.gather(sender.open(500), listener.open(500))
        frames = [os.urandom(40) + bytes([i]) for i in range(30)]
        sender.set_opus_frame_provider(opus_stream(frames))
        await wait_until(lambda: len(sink.frames) >= 35)
        assert sink.frames == [(1001, f) for f in frames] + [(1001, SILENCE)] * 5
        stats = await server.stats()
        assert stats["sessions"] == 2
        assert stats["ssrcs"] == {"1001": sender.udp.ssrc, "1002": listener.udp.ssrc}
        assert stats["packets"][str(sender.udp.ssrc)] == 35
        await bots_a.close()
        await bots_b.close()
        pid = server.pid
    assert not alive(pid)


async def test_a_child_with_media_recording_counts_keeps_counts_only():
    async with VoiceServerProcess(media_recording="counts") as server:
        main_a, bots_a = make_manager(server, 1001)
        main_b, bots_b = make_manager(server, 1002)
        sender, listener = bots_a.create_conn(78), bots_b.create_conn(78)
        sink = Collect()
        listener.set_opus_frame_receiver(sink)
        await asyncio.gather(sender.open(78), listener.open(78))
        frames = [os.urandom(40) + bytes([i]) for i in range(10)]
        sender.set_opus_frame_provider(opus_stream(frames))
        await wait_until(lambda: len(sink.frames) >= 15)
        assert sink.frames == [(1001, f) for f in frames] + [(1001, SILENCE)] * 5
        stats = await server.stats()
        assert stats["packets"][str(sender.udp.ssrc)] == 15  # counted...
        assert await server.sequences([sender.udp.ssrc]) == {sender.udp.ssrc: []}  # ...not recorded
        await server.set("media_recording", "off")
        await bots_a.close()
        await bots_b.close()


async def test_an_unregistered_session_is_refused_under_strict_auth():
    """The registration is what lets a session in: without it the child refuses (4004)."""
    from fastvoice.errors import GatewayClosedError
    from fastvoice.gateway import Gateway, GatewayConfig, State

    async with VoiceServerProcess(strict_auth=True) as server:
        state = State(guild_id=1, user_id=2, channel_id=1, session_id="s", token="t", endpoint=server.url)
        gateway = Gateway(config=GatewayConfig(max_reconnect_attempts=0))
        with pytest.raises(GatewayClosedError) as raised:
            await gateway.open(state)
        assert "4004" in str(raised.value)
        await gateway.close()


async def test_knobs_are_set_in_the_child_and_bad_ones_are_named():
    async with VoiceServerProcess() as server:
        await server.set("udp_loss", 1.0)
        main_a, bots_a = make_manager(server, 1)
        main_b, bots_b = make_manager(server, 2)
        sender, listener = bots_a.create_conn(5), bots_b.create_conn(5)
        sink = Collect()
        listener.set_opus_frame_receiver(sink)
        await asyncio.gather(sender.open(5), listener.open(5))
        sender.set_opus_frame_provider(opus_stream([b"\x01" * 20] * 10))
        await wait_until(lambda: sender.sender.stats.sent >= 15)
        await asyncio.sleep(0.1)
        assert sink.frames == []  # every datagram to the listener was dropped by the knob
        assert (await server.stats())["packets"][str(sender.udp.ssrc)] == 15
        with pytest.raises(RuntimeError, match="unknown knob 'secret_key'"):
            await server.set("secret_key", 1)
        await bots_a.close()
        await bots_b.close()


async def test_bad_options_are_named():
    with pytest.raises(TypeError, match="JSON values"):
        VoiceServerProcess(modes=object())
    server = VoiceServerProcess(no_such_option=1)
    with pytest.raises(RuntimeError, match="exited with code 1 before serving"):
        await server.start()
    with pytest.raises(RuntimeError, match="not started"):
        server.url


def test_the_child_ends_when_its_parent_dies():
    """The parent exits without closing anything: the child reads the end of its stdin and goes."""
    script = textwrap.dedent("""
        import asyncio, os
        from fastvoice.testing import VoiceServerProcess

        async def main():
            server = VoiceServerProcess()
            await server.start()
            print(server.pid, flush=True)
            os._exit(0)

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.strip())
    for _ in range(200):
        if not alive(pid):
            break
        import time

        time.sleep(0.05)
    assert not alive(pid), "the voice server process outlived its parent"
