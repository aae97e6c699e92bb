"""DAVE end to end: Conns through the local VoiceServer acting as the MLS external sender."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time

from _calls import Collect, wait_until
from fastvoice.conn import ConnConfig
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.opus import OpusReader
from fastvoice.testing import MainGatewayStandIn, VoiceServer
from fastvoice.testing._dave import is_dave_frame

SILENCE = b"\xf8\xff\xfe"
GUILD, CHANNEL = 77, 500


def make_manager(server, user_id, **gateway_options):
    main = MainGatewayStandIn(server, user_id)
    config = ConnConfig(open_timeout=5, gateway_config=GatewayConfig(backoff_base=0.05, **gateway_options))
    manager = Manager(main.update_voice_state, user_id, conn_config=config)
    main.attach(manager)
    return main, manager


class Endless:
    """An Opus provider that never ends: frame i is recognisable by its last 4 bytes."""

    def __init__(self):
        self.count = 0

    def provide_opus_frame(self):
        self.count += 1
        return b"\xfc" + os.urandom(30) + self.count.to_bytes(4, "big")

    def close(self):
        pass


def opus_stream(frames):
    return OpusReader(io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames)))


async def open_pair(server):
    _, bots_a = make_manager(server, 1001)
    _, bots_b = make_manager(server, 1002)
    sender, listener = bots_a.create_conn(GUILD), bots_b.create_conn(GUILD)
    sink = Collect()
    listener.set_opus_frame_receiver(sink)
    await asyncio.gather(sender.open(CHANNEL), listener.open(CHANNEL))
    await wait_until(lambda: sender.dave.e2ee and listener.dave.e2ee)
    return bots_a, bots_b, sender, listener, sink


async def test_two_conns_exchange_opus_under_dave():
    async with VoiceServer(dave_protocol_version=1, require_dave=True) as server:
        bots_a, bots_b, sender, listener, sink = await open_pair(server)
        assert sender.dave.epoch == listener.dave.epoch == 1
        assert sender.dave.voice_privacy_code == listener.dave.voice_privacy_code
        assert sender.dave.verification_code(1002) and listener.dave.verification_code(1001)
        frames = [b"\xfc" + os.urandom(40) + bytes([i]) for i in range(30)]
        sender.set_opus_frame_provider(opus_stream(frames))
        await wait_until(lambda: len(sink.frames) >= 35)
        assert sink.frames == [(1001, f) for f in frames] + [(1001, SILENCE)] * 5
        # What crossed the server was DAVE ciphertext, never the Opus itself.
        crossed = [p.opus for p in server.packets(sender.udp.ssrc)]
        assert len(crossed) == 35
        assert all(is_dave_frame(p) for p in crossed if p != SILENCE)
        assert not any(f in p for f in frames for p in crossed)
        assert server.session_for_ssrc(sender.udp.ssrc).dave_plaintext_packets == 0
        assert sender.dave.stats.frames_encrypted == 30 and listener.dave.stats.frames_decrypted == 30
        await bots_a.close()
        await bots_b.close()


async def test_third_member_leave_downgrade_and_upgrade_through_the_server():
    async with VoiceServer(dave_protocol_version=1) as server:
        bots_a, bots_b, sender, listener, sink = await open_pair(server)
        provider = Endless()
        sender.set_opus_frame_provider(provider)
        await wait_until(lambda: len(sink.frames) >= 5)

        _, bots_c = make_manager(server, 1003)
        third = bots_c.create_conn(GUILD)
        sink_c = Collect()
        third.set_opus_frame_receiver(sink_c)
        await third.open(CHANNEL)
        await wait_until(lambda: third.dave.e2ee and len(sink_c.frames) >= 5)
        group = server.dave_group(GUILD, CHANNEL)
        assert group.members == {1001, 1002, 1003} and group.epoch == 2
        await wait_until(lambda: sender.dave.epoch == 2)

        await bots_c.close()
        await wait_until(lambda: group.members == {1001, 1002} and sender.dave.epoch == 3 == listener.dave.epoch)

        await server.dave_downgrade(GUILD, CHANNEL)
        await wait_until(lambda: sender.dave.protocol_version == 0 == listener.dave.protocol_version)
        assert not sender.dave.e2ee
        before = len(sink.frames)
        await wait_until(lambda: len(sink.frames) >= before + 5)

        await server.dave_upgrade(GUILD, CHANNEL)
        await wait_until(lambda: sender.dave.e2ee and listener.dave.e2ee and group.protocol_version == 1)
        before = len(sink.frames)
        await wait_until(lambda: len(sink.frames) >= before + 5)

        # Every frame the listener got is one the sender made, in order, with none garbled.
        numbers = [int.from_bytes(f[-4:], "big") for u, f in sink.frames if f != SILENCE]
        assert numbers == sorted(numbers) and all(f[0] == 0xFC for u, f in sink.frames)
        session = server.session_for_ssrc(sender.udp.ssrc)
        assert session.dave_plaintext_packets == 0
        # Plaintext crossed only while the call was at protocol 0.
        plain = [p for p in server.packets(sender.udp.ssrc) if not is_dave_frame(p.opus)]
        assert plain and all(p.opus[0] == 0xFC for p in plain)
        await bots_a.close()
        await bots_b.close()


async def test_without_dave_against_a_server_that_requires_it_fails_with_4017():
    async with VoiceServer(dave_protocol_version=1, require_dave=True) as server:
        _, bots = make_manager(server, 1005, max_dave_protocol_version=0)
        conn = bots.create_conn(GUILD)
        started = time.monotonic()
        try:
            await conn.open(CHANNEL)
        except Exception as exc:
            assert "4017" in str(exc)
        else:
            raise AssertionError("open() succeeded without DAVE")
        assert time.monotonic() - started < 3
        await bots.close()


async def test_new_session_after_a_refused_resume_rejoins_the_group():
    async with VoiceServer(dave_protocol_version=1) as server:
        bots_a, bots_b, sender, listener, sink = await open_pair(server)
        provider = Endless()
        sender.set_opus_frame_provider(provider)
        await wait_until(lambda: len(sink.frames) >= 5)
        first_ssrc = sender.udp.ssrc
        server.refuse_next_resume()
        server.session_for_ssrc(first_ssrc).drop()  # the resume is refused (4006): a new session
        await wait_until(lambda: sender.udp is not None and sender.udp.ssrc != first_ssrc, timeout=10)
        await wait_until(lambda: sender.dave.e2ee and listener.dave.e2ee
                         and sender.dave.epoch == listener.dave.epoch, timeout=10)
        before = len(sink.frames)
        await wait_until(lambda: len(sink.frames) >= before + 10)
        numbers = [int.from_bytes(f[-4:], "big") for u, f in sink.frames if f != SILENCE]
        assert numbers == sorted(numbers)
        assert server.session_for_ssrc(sender.udp.ssrc).dave_plaintext_packets == 0
        assert server.dave_group(GUILD, CHANNEL).members == {1001, 1002}
        await bots_a.close()
        await bots_b.close()
