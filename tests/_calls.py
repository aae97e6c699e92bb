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
    """An OpusFrameReceiver that records what it is given.

    ``frames``: ``(user_id, opus)`` of every frame; ``packets``: ``(user_id, packet)``;
    ``cleaned``: users whose state was cleaned up; ``closed``: how many times it was closed.
    A frame from a user in ``fail_for`` raises, as a buggy receiver would.
    """

    def __init__(self, fail_for=()):
        self.frames = []
        self.packets = []
        self.cleaned = []
        self.closed = 0
        self.fail_for = frozenset(fail_for)

    def receive_opus_frame(self, user_id, packet):
        if user_id in self.fail_for:
            raise ValueError("receiver bug")
        self.frames.append((user_id, packet.opus))
        self.packets.append((user_id, packet))

    @property
    def opus(self):
        """The Opus payloads alone, in arrival order."""
        return [opus for _, opus in self.frames]

    def cleanup_user(self, user_id):
        self.cleaned.append(user_id)

    def close(self):
        self.closed += 1


def opus_stream(frames):
    """An OpusReader over ``frames`` (4-byte little-endian length prefixes)."""
    return OpusReader(io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames)))


async def wait_until(predicate, timeout=10.0, what="condition", interval=0.01):
    """Poll ``predicate`` every ``interval`` seconds; fail the test after ``timeout`` seconds.

    The timeout only bounds a test that would otherwise hang: it is no figure under test.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)


def seq_ahead(old: int, new: int) -> int:
    """How far RTP sequence number ``new`` is past ``old``, modulo 2**16 (streams start at a
    random number, so a comparison must allow for the wrap)."""
    return (new - old) & 0xFFFF


def continues(old_last: int, new_first: int) -> bool:
    """True when sequence number ``new_first`` comes after ``old_last`` in the same stream."""
    return 0 < seq_ahead(old_last, new_first) < 0x8000


def consecutive(seqs: list[int]) -> bool:
    """True when ``seqs`` are consecutive RTP sequence numbers (across the wrap)."""
    return all(seq_ahead(a, b) == 1 for a, b in zip(seqs, seqs[1:]))
