"""ConnConfig's audio create funcs in the seed's shape, ``func(logger, provider_or_receiver, conn)``,
and in the earlier one; AudioSender and AudioReceiver built either way."""

from __future__ import annotations

import asyncio
import logging
import os
from types import SimpleNamespace

import pytest

from _calls import SILENCE, Collect, make_manager, opus_stream, wait_until
from fastvoice import AudioReceiver, AudioSender, SSRCTable
from fastvoice.testing import VoiceServer

LOG = logging.getLogger("test.create_funcs")


async def exchange(server, sender_options, listener_options, frames):
    _, bots_a = make_manager(server, 1001, **sender_options)
    _, bots_b = make_manager(server, 1002, **listener_options)
    sender, listener = bots_a.create_conn(77), bots_b.create_conn(77)
    sink = Collect()
    listener.set_opus_frame_receiver(sink)
    await asyncio.gather(sender.open(500), listener.open(500))
    sender.set_opus_frame_provider(opus_stream(frames))
    await wait_until(lambda: len(sink.frames) >= len(frames) + 5)
    return sender, listener, sink, (bots_a, bots_b)


async def test_seed_shaped_create_funcs_plug_in():
    calls = []

    def new_audio_sender(logger, provider, conn):
        calls.append(("sender", logger, conn))
        return AudioSender(logger, provider, conn)

    def new_audio_receiver(logger, receiver, conn):
        calls.append(("receiver", logger, conn))
        return AudioReceiver(logger, receiver, conn)

    frames = [os.urandom(40) + bytes([i]) for i in range(10)]
    async with VoiceServer() as server:
        sender, listener, sink, managers = await exchange(
            server,
            {"audio_sender_create_func": new_audio_sender, "logger": LOG},
            {"audio_receiver_create_func": new_audio_receiver, "logger": LOG, "user_filter": lambda uid: uid == 1001},
            frames,
        )
        assert sink.frames == [(1001, f) for f in frames] + [(1001, SILENCE)] * 5
        assert sorted(calls, key=lambda c: c[0]) == [("receiver", LOG, listener), ("sender", LOG, sender)]
        assert sender.sender.provider is not None and listener.receiver._ssrcs is listener.ssrcs
        assert listener.receiver._filter is listener.user_filter
        for manager in managers:
            await manager.close()


async def test_create_funcs_of_the_earlier_shape_still_work():
    calls = []

    def old_sender(provider, conn, *, logger=None):
        calls.append(("sender", logger))
        return AudioSender(provider, conn, logger=logger)

    def old_receiver(receiver, udp, ssrcs, *, user_filter=None, logger=None):
        calls.append(("receiver", logger))
        return AudioReceiver(receiver, udp, ssrcs, user_filter=user_filter, logger=logger)

    frames = [os.urandom(30) for _ in range(5)]
    async with VoiceServer() as server:
        _, _, sink, managers = await exchange(
            server,
            {"audio_sender_create_func": old_sender, "logger": LOG},
            {"audio_receiver_create_func": old_receiver, "logger": LOG},
            frames,
        )
        assert sink.opus == frames + [SILENCE] * 5
        assert sorted(calls) == [("receiver", LOG), ("sender", LOG)]
        for manager in managers:
            await manager.close()


def test_the_two_constructor_orders_and_bad_ones():
    udp, table = object(), SSRCTable()
    conn = SimpleNamespace(udp=udp, ssrcs=table, user_filter=None)
    sink = Collect()
    seed = AudioReceiver(LOG, sink, conn)
    assert (seed.receiver, seed._udp, seed._ssrcs, seed._log) == (sink, udp, table, LOG)
    earlier = AudioReceiver(sink, udp, table, logger=LOG)
    assert (earlier.receiver, earlier._udp, earlier._ssrcs, earlier._log) == (sink, udp, table, LOG)
    provider = opus_stream([b"x"])
    sender = AudioSender(LOG, provider, conn)
    assert (sender.provider, sender._conn, sender._log) == (provider, conn, LOG)
    assert AudioSender(provider, conn).provider is provider
    with pytest.raises(TypeError, match=r"AudioReceiver\(\) takes \(logger, receiver, conn\)"):
        AudioReceiver(sink, udp)
    with pytest.raises(TypeError, match=r"AudioSender\(\) takes \(logger, provider, conn\)"):
        AudioSender(provider)
    with pytest.raises(ValueError, match="conn.udp is None"):
        AudioReceiver(LOG, sink, SimpleNamespace(udp=None, ssrcs=table, user_filter=None))
