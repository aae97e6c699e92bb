"""What the interop tests share: the frames each member plays, a fastvoice member, and the checks.

An interop test puts a fastvoice member (``Manager``/``Conn`` through ``MainGatewayStandIn``)
and a member built on another DAVE implementation in one end-to-end encrypted call on the
local ``VoiceServer`` and checks that each heard every frame of the other. The peers are
optional installs: without one its test skips, unless ``FASTVOICE_REQUIRE_INTEROP=1`` (CI's
``ci/interop.sh``) makes that a failure.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
from typing import Any

import pytest

import fastvoice
from fastvoice.testing import MainGatewayStandIn, VoiceServer, is_dave_frame

SILENCE = fastvoice.SILENCE_AUDIO_FRAME
REQUIRED = os.environ.get("FASTVOICE_REQUIRE_INTEROP") == "1"
#: fastvoice's hold for a frame that no key decrypts yet (DaveConfig defaults): the most
#: frames of one sender a lag in commit processing may cost a receiver without such a hold.
HOLD_FRAMES = fastvoice.DaveConfig().hold_frames


def peer_missing(reason: str) -> None:
    """Skip the calling test module because its peer is not installed (fail under FASTVOICE_REQUIRE_INTEROP=1)."""
    if REQUIRED:
        pytest.fail(f"FASTVOICE_REQUIRE_INTEROP=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def make_frames(user_id: int, count: int) -> list[bytes]:
    """``count`` distinct stand-in Opus frames (the server and DAVE do not decode them).

    Each starts with a CELT fullband 20 ms TOC byte, names its sender and index, and has a
    length of its own (22 to 160 bytes), so a frame delivered twice, out of order, from the
    wrong sender or cut short cannot pass for another.
    """
    frames = []
    for index in range(count):
        head = b"\xfc" + struct.pack(">QH", user_id, index)
        filler = bytes((index * 31 + k) & 0xFF for k in range(11 + (index * 37) % 139))
        frames.append(head + filler)
    return frames


def opus_stream(frames: list[bytes]) -> fastvoice.OpusReader:
    """An ``OpusReader`` over ``frames`` (4-byte little-endian length prefixes)."""
    return fastvoice.OpusReader(io.BytesIO(b"".join(struct.pack("<I", len(f)) + f for f in frames)))


class Heard:
    """An ``OpusFrameReceiver`` that keeps every frame and its RTP sequence number per user, in delivery order."""

    def __init__(self) -> None:
        self.frames: dict[int, list[bytes]] = {}
        self.sequences: dict[int, list[int]] = {}

    def receive_opus_frame(self, user_id: int, packet: Any) -> None:
        self.frames.setdefault(user_id, []).append(bytes(packet.opus))
        self.sequences.setdefault(user_id, []).append(int(packet.sequence))

    def of(self, user_id: int, *, silence: bool = False) -> list[bytes]:
        """Frames from ``user_id``; without ``silence=True`` the exact silence frames are left out."""
        frames = self.frames.get(user_id, [])
        return frames if silence else [f for f in frames if f != SILENCE]

    def cleanup_user(self, user_id: int) -> None:
        pass

    def close(self) -> None:
        pass


class FastvoiceMember:
    """A bot on fastvoice's public API: ``Manager`` -> ``Conn``, its op 4 answered by ``MainGatewayStandIn``."""

    def __init__(self, server: VoiceServer, user_id: int, guild_id: int) -> None:
        self.server = server
        self.user_id = user_id
        self.guild_id = guild_id
        self.main = MainGatewayStandIn(server, user_id)
        gateway = fastvoice.GatewayConfig(ssl=server.ssl_context, backoff_base=0.05)
        config = fastvoice.ConnConfig(open_timeout=10, gateway_config=gateway)
        self.manager = fastvoice.Manager(self.main.update_voice_state, user_id, conn_config=config)
        self.main.attach(self.manager)
        self.heard = Heard()
        self.conn: Any = None
        #: Voice privacy codes this member showed, one per epoch, in order (see ``watch_codes``).
        self.privacy_codes: list[str] = []

    async def open(self, channel_id: int) -> None:
        self.conn = self.manager.create_conn(self.guild_id)
        self.conn.set_opus_frame_receiver(self.heard)
        await self.conn.open(channel_id)

    @property
    def dave(self) -> Any:
        return self.conn.dave

    @property
    def e2ee(self) -> bool:
        return self.conn is not None and self.conn.dave is not None and bool(self.conn.dave.e2ee)

    @property
    def ssrc(self) -> int:
        return int(self.conn.udp.ssrc)

    def play(self, frames: list[bytes]) -> None:
        self.conn.set_opus_frame_provider(opus_stream(frames))

    def note_code(self) -> None:
        """Keep the current voice privacy code if it is new (called while the call changes)."""
        code = self.dave.voice_privacy_code if self.conn is not None and self.conn.dave is not None else None
        if code and (not self.privacy_codes or self.privacy_codes[-1] != code):
            self.privacy_codes.append(code)

    async def close(self) -> None:
        await self.manager.close()


async def watch_codes(members: list[FastvoiceMember], stop: asyncio.Event) -> None:
    """Note every member's voice privacy code each millisecond or so until ``stop`` is set."""
    while not stop.is_set():
        for member in members:
            member.note_code()
        await asyncio.sleep(0.001)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms; fail after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(0.01)


def assert_consecutive(sequences: list[int], count: int) -> None:
    """``sequences`` are ``count`` RTP sequence numbers, each one more than the last (mod 2**16).

    A packet lost, repeated or reordered on the way shows as a gap here, whatever its payload.
    """
    assert len(sequences) == count, f"{len(sequences)} packets, expected {count}"
    gaps = [(a, b) for a, b in zip(sequences, sequences[1:]) if (b - a) & 0xFFFF != 1]
    assert not gaps, f"RTP sequence numbers not consecutive at {gaps[:5]}"


def digits(code: str | None) -> str | None:
    """A displayable code without its group separators (libraries differ in showing them)."""
    return None if code is None else "".join(code.split())


def assert_only_ciphertext(server: VoiceServer, ssrc: int, sent: int) -> None:
    """The server saw ``sent`` audio frames from ``ssrc``: DAVE frames only, besides exact silence."""
    payloads = [p.opus for p in server.packets(ssrc) if p.opus != SILENCE]
    assert len(payloads) == sent
    assert all(is_dave_frame(p) for p in payloads)
    session = server.session_for_ssrc(ssrc)
    assert session is not None and session.dave_plaintext_packets == 0


def lost_runs(received: list[bytes], sent: list[bytes]) -> list[list[int]]:
    """Indices of ``sent`` frames missing from ``received``, as runs of consecutive indices.

    ``received`` must be ``sent`` with some frames left out, in order, nothing added or
    repeated (asserted).
    """
    runs: list[list[int]] = []
    position = 0
    for index, frame in enumerate(sent):
        if position < len(received) and received[position] == frame:
            position += 1
            continue
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    assert position == len(received), "frames were received that were not sent, or out of order"
    return runs


def undecrypted_runs(log: list[tuple[Any, ...]], user_id: int) -> tuple[list[list[Any]], list[list[Any]]]:
    """Runs of ``user_id``'s frames that a member could not decrypt on arrival: ``(explained, unexplained)``.

    ``log`` is the member's record in arrival order: ``(kind, user_id, frame id, decrypted)``
    per frame and ``("keys", ...)`` when a commit or welcome gave it new receive keys. A run
    is explained when new keys came right after it, no frame of that sender decrypting in
    between: the sender had switched to a key the member did not have yet. Any other run
    (frames that failed between two that decrypted, or after the last key change) is not.
    """
    explained: list[list[Any]] = []
    unexplained: list[list[Any]] = []
    run: list[Any] = []
    for entry in log:
        if entry[0] == "keys":
            if run:
                explained.append(run)
            run = []
        elif entry[1] == user_id:
            if entry[3]:
                if run:
                    unexplained.append(run)
                run = []
            else:
                run.append(entry[2])
    if run:
        unexplained.append(run)
    return explained, unexplained
