"""Helpers shared by the tests that stream calls through Manager -> Conn against the local VoiceServer."""

from __future__ import annotations

import asyncio
import io
import struct
import time

from fastvoice.conn import ConnConfig
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.opus import OpusReader
from fastvoice.testing import MainGatewayStandIn

SILENCE = b"\xf8\xff\xfe"


def make_manager(server, user_id, **conn_options):
    """A Manager for ``user_id`` whose op 4 is answered by a stand-in main gateway for ``server``."""
    main = MainGatewayStandIn(server, user_id)
    conn_options.setdefault("gateway_config", GatewayConfig(backoff_base=0.05))
    conn_options.setdefault("open_timeout", 5)
    config = ConnConfig(**conn_options)
    manager = Manager(main.update_voice_state, user_id, conn_config=config)
    main.attach(manager)
    return main, manager


class Collect:
    """An OpusFrameReceiver that keeps ``(user_id, opus)`` of every frame."""

    def __init__(self):
        self.frames = []
        self.cleaned = []

    def receive_opus_frame(self, user_id, packet):
        self.frames.append((user_id, packet.opus))

    def cleanup_user(self, user_id):
        self.cleaned.append(user_id)

    def close(self):
        pass


def opus_stream(frames):
    """An OpusReader over ``frames`` (4-byte little-endian length prefixes)."""
    return OpusReader(io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames)))


async def wait_until(predicate, timeout=5.0, what="condition"):
    """Poll ``predicate`` every 10 ms; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)
