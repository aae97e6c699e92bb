"""The local server's media engine: audio forwarded in batches, re-encrypted per recipient.

Forwarded datagrams are opened with an independent cipher (``cryptography``'s AES-GCM, and
XChaCha20 built from HChaCha20 + ChaCha20-Poly1305 in tests/reference.py), both twins give the
same bytes, and whatever the engine cannot forward exactly goes back to the server's Python
path untouched (no count, no nonce used).
"""

from __future__ import annotations

import importlib
import os
import socket
import struct

import pytest

from fastvoice._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS
from fastvoice.ipdiscovery import build_ip_discovery_request
from fastvoice.rtp import aes256gcm_available
from fastvoice.testing import VoiceServer
from fastvoice.testing._media_py import NONCE_START

from reference import AES, XCHACHA, build_packet, open_rtpsize
from test_voice_server import ALICE, BOB, CAROL, Client

A, B, C, D = 0x11111111, 0x22222222, 0x33333333, 0x44444444
ADDR = {A: ("127.0.0.1", 40001), B: ("127.0.0.1", 40002), C: ("127.0.0.1", 40003), D: ("127.0.0.1", 40004)}
KEYS = {ssrc: bytes([n]) * 32 for n, ssrc in enumerate((A, B, C, D), 1)}
CALL = (1, 1)
SECOND_MODE = AES if aes256gcm_available() else XCHACHA
MODES = {A: XCHACHA, B: SECOND_MODE, C: XCHACHA, D: SECOND_MODE}
SILENCE = b"\xf8\xff\xfe"
OWNER = {ssrc: f"owner-{ssrc:x}" for ssrc in (A, B, C, D)}  # stands for the server's session objects


def _twin(name: str):
    if name == "c":
        if NO_EXTENSIONS:
            pytest.skip("FASTVOICE_NO_EXTENSIONS is set")
        try:
            return importlib.import_module("fastvoice.testing._media_c")
        except ImportError as exc:
            if REQUIRE_EXTENSIONS:
                raise
            pytest.skip(f"compiled twin not built: {exc}")
    return importlib.import_module("fastvoice.testing._media_py")


@pytest.fixture(params=["c", "py"])
def media(request):
    """The media engine module under test: compiled (``c``) or pure (``py``)."""
    return _twin(request.param)


def _engine(media, groups=None, recording="full", members=(A, B, C), *, dave=True):
    engine = media.MediaEngine(groups if groups is not None else {}, recording)
    for ssrc in members:
        engine.set_session(ssrc, OWNER[ssrc], CALL, MODES[ssrc], KEYS[ssrc], ADDR[ssrc], speaking=True, dave=dave)
    return engine


def _audio(ssrc, seq, payload, *, marker=False, counter=7, key=None, ts=None):
    ts = seq * 960 + 12345 if ts is None else ts
    return build_packet(MODES[ssrc], key or KEYS[ssrc], seq, ts, ssrc, payload, counter=counter, marker=marker)


def _dave_frame(body: bytes) -> bytes:
    supplemental = 8 + 1 + 1 + 2  # tag, nonce, size byte, magic
    return body + bytes(8) + b"\x01" + bytes([supplemental]) + b"\xfa\xfa"


# -- forwarding, checked with independent ciphers ------------------------------------------


def test_forwarded_datagrams_open_with_an_independent_cipher_for_each_recipient(media):
    engine = _engine(media)
    payloads = [os.urandom(40 + i) for i in range(3)]
    seen: dict[tuple, list[bytes]] = {}
    for i, payload in enumerate(payloads):
        marker = i == 0
        out = engine.handle(_audio(A, 65535 + i & 0xFFFF, payload, marker=marker, ts=2**32 - 960 + 960 * i & 0xFFFFFFFF),
                            ADDR[A])
        assert out is not None and [addr for addr, _ in out] == [ADDR[B], ADDR[C]]  # never back to the sender
        for addr, datagram in out:
            ssrc = next(s for s, a in ADDR.items() if a == addr)
            aad, plain = open_rtpsize(MODES[ssrc], KEYS[ssrc], datagram)  # the recipient's key and mode
            assert plain == payload
            b0, b1, seq, ts, sender = struct.unpack(">BBHII", aad)
            assert (b0, b1 & 0x7F, sender) == (0x80, 0x78, A)
            assert bool(b1 & 0x80) == marker
            assert seq == (65535 + i) & 0xFFFF and ts == (2**32 - 960 + 960 * i) & 0xFFFFFFFF
            seen.setdefault(addr, []).append(datagram[-4:])
            with pytest.raises(Exception):
                open_rtpsize(MODES[A], KEYS[A], datagram)  # not the sender's key
    # one nonce counter per recipient, counting up from NONCE_START
    for suffixes in seen.values():
        assert [struct.unpack(">I", s)[0] for s in suffixes] == [NONCE_START, NONCE_START + 1, NONCE_START + 2]
    assert engine.forwarded == 3


def test_both_twins_give_identical_bytes():
    c, py = _twin("c"), _twin("py")
    engines = [_engine(c, members=(A, B, C, D)), _engine(py, members=(A, B, C, D))]
    script = [
        (_audio(A, 1, b"\x01" * 30), ADDR[A]),
        (_audio(B, 9, b"\x02" * 90, marker=True), ADDR[B]),
        (_audio(A, 2, _dave_frame(b"\x03" * 50)), ADDR[A]),
        (_audio(C, 3, SILENCE), ADDR[C]),
        (_audio(D, 4, b"\x04" * 200), ("127.0.0.1", 1)),  # wrong address: Python path
        (_audio(A, 5, b"\x05"), ADDR[A]),
    ]
    outs = [[e.handle(d, a) for d, a in script] for e in engines]
    assert outs[0] == outs[1]
    assert outs[0][4] is None and all(o for i, o in enumerate(outs[0]) if i != 4)
    taken = [e.take() for e in engines]
    assert taken[0] == taken[1]


# -- what goes back to the Python path -----------------------------------------------------


@pytest.mark.parametrize(
    "datagram, address, why",
    [
        (struct.pack(">HHI", 1, 70, A) + bytes(66), ADDR[A], "IP discovery"),
        (struct.pack("<I", 5) + bytes(4), ADDR[A], "keepalive"),
        (struct.pack(">BBHI", 0x80, 201, 1, A) + bytes(24), ADDR[A], "RTCP"),
        (build_packet(XCHACHA, KEYS[A], 1, 960, 0x99999999, b"x" * 30), ADDR[A], "unknown SSRC"),
        (build_packet(XCHACHA, bytes(32), 1, 960, A, b"x" * 30), ADDR[A], "bad tag (wrong key)"),
        (build_packet(XCHACHA, KEYS[A], 1, 960, A, b"x" * 30, ext_profile=0xBEDE, ext_body=bytes(4)), ADDR[A],
         "header extension"),
        (build_packet(XCHACHA, KEYS[A], 1, 960, A, b"x" * 30, csrcs=(5,)), ADDR[A], "CSRC list"),
        (build_packet(XCHACHA, KEYS[A], 1, 960, A, b"x" * 30, padding=4), ADDR[A], "padding"),
        (build_packet(XCHACHA, KEYS[A], 1, 960, A, b"x" * 30), ("127.0.0.1", 1), "another address"),
        (build_packet(XCHACHA, KEYS[A], 1, 960, A, b"x" * 3000), ADDR[A], "longer than the fast path"),
        (b"\x80", ADDR[A], "one byte"),
    ],
)
def test_everything_else_goes_to_the_python_path_untouched(media, datagram, address, why):
    engine = _engine(media)
    bad = bytearray(datagram)
    if why == "bad tag (wrong key)":
        bad = bytearray(build_packet(XCHACHA, KEYS[A], 1, 960, A, b"x" * 30))
        bad[15] ^= 1
    assert engine.handle(bytes(bad), address) is None, why
    assert engine.count(A) == 0 and engine.take() == ([], []) and engine.forwarded == 0
    # no nonce was used: the next good datagram gets the first one
    out = engine.handle(_audio(A, 2, b"ok"), ADDR[A])
    assert out is not None and {d[-4:] for _, d in out} == {struct.pack(">I", NONCE_START)}


def test_calls_the_engine_cannot_serve_exactly_go_to_the_python_path(media):
    # a member in a mode the engine does not serve: the whole call takes the Python path
    engine = _engine(media)
    engine.set_session(D, "d", CALL, "aead_xsalsa20_poly1305_lite", KEYS[D], ADDR[D], speaking=True, dave=True)
    assert engine.handle(_audio(A, 1, b"x" * 30), ADDR[A]) is None
    engine.remove_session(D)
    assert engine.handle(_audio(A, 2, b"x" * 30), ADDR[A]) is not None
    # a sender that has not sent Speaking (the server counts audio_before_speaking)
    engine.set_session(A, OWNER[A], CALL, MODES[A], KEYS[A], ADDR[A], speaking=False, dave=True)
    assert engine.handle(_audio(A, 3, b"x" * 30), ADDR[A]) is None

    groups = {CALL: object()}
    # plaintext audio in a call with a DAVE group: the Python path checks and counts it
    engine = _engine(media, groups)
    assert engine.handle(_audio(A, 1, b"plain" * 10), ADDR[A]) is None
    assert engine.handle(_audio(A, 2, SILENCE), ADDR[A]) is not None  # silence is allowed in plaintext
    assert engine.handle(_audio(A, 3, _dave_frame(b"e" * 20)), ADDR[A]) is not None
    # a DAVE frame in a call with a member without DAVE: the Python path withholds it from that member
    engine.set_session(D, "d", CALL, MODES[D], KEYS[D], ADDR[D], speaking=True, dave=False)
    assert engine.handle(_audio(A, 4, _dave_frame(b"e" * 20)), ADDR[A]) is None
    # ...unless no call uses DAVE at all (then DAVE-shaped frames are plain payloads)
    groups.clear()
    assert engine.handle(_audio(A, 5, _dave_frame(b"e" * 20)), ADDR[A]) is not None
    assert engine.handle(_audio(A, 6, b"plain" * 10), ADDR[A]) is not None


# -- recording modes, membership -------------------------------------------------------------


@pytest.mark.parametrize("recording", ["off", "counts", "full"])
def test_recording_modes(media, recording):
    engine = _engine(media, recording=recording)
    assert engine.recording == recording
    for seq in (1, 2, 3):
        assert engine.handle(_audio(A, seq, bytes([seq]) * 10, marker=seq == 1), ADDR[A]) is not None
    engine.handle(_audio(B, 1, b"b" * 10), ADDR[B])
    heard, records = engine.take()
    assert heard == ["owner-11111111", "owner-22222222"]  # each session once per batch
    assert engine.take() == ([], [])
    assert engine.count(A) == (0 if recording == "off" else 3)
    assert engine.count(0x5555) == 0
    if recording == "full":
        assert records[:3] == [
            ("owner-11111111", A, seq, seq * 960 + 12345, bytes([seq]) * 10, seq == 1, ADDR[A]) for seq in (1, 2, 3)
        ]
        assert records[3][:2] == ("owner-22222222", B)
    else:
        assert records == []
    with pytest.raises(ValueError, match="media recording must be one of off, counts, full"):
        engine.recording = "everything"


def test_a_member_leaving_and_rejoining(media):
    engine = _engine(media)
    first = engine.handle(_audio(A, 1, b"x" * 20), ADDR[A])
    assert [a for a, _ in first] == [ADDR[B], ADDR[C]]
    engine.remove_session(B)
    assert [a for a, _ in engine.handle(_audio(A, 2, b"x" * 20), ADDR[A])] == [ADDR[C]]
    assert engine.handle(_audio(B, 1, b"x" * 20), ADDR[B]) is None  # B is gone: Python path
    engine.set_session(B, OWNER[B], CALL, MODES[B], KEYS[B], ADDR[B], speaking=True, dave=True)
    out = dict(engine.handle(_audio(A, 3, b"y" * 20), ADDR[A]))
    # B's nonce counter went on (no nonce used twice with its key)
    assert struct.unpack(">I", out[ADDR[B]][-4:])[0] == NONCE_START + 1
    assert open_rtpsize(MODES[B], KEYS[B], out[ADDR[B]])[1] == b"y" * 20
    # a member with no UDP address yet is skipped; moving to another call leaves this one
    engine.set_session(C, OWNER[C], CALL, MODES[C], KEYS[C], None, speaking=True, dave=True)
    assert [a for a, _ in engine.handle(_audio(A, 4, b"z"), ADDR[A])] == [ADDR[B]]
    engine.set_session(B, OWNER[B], (1, 2), MODES[B], KEYS[B], ADDR[B], speaking=True, dave=True)
    assert engine.handle(_audio(A, 5, b"z"), ADDR[A]) == []
    engine.close()
    assert engine.handle(_audio(A, 6, b"z"), ADDR[A]) is None


# -- batches on a real socket -----------------------------------------------------------------


def _udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


def test_pump_forwards_a_batch_and_returns_the_rest_in_order(media):
    server, alice, bob = _udp(), _udp(), _udp()
    engine = media.MediaEngine({}, "counts")
    try:
        addr = {A: alice.getsockname(), B: bob.getsockname()}
        for ssrc in (A, B):
            engine.set_session(ssrc, ssrc, CALL, MODES[ssrc], KEYS[ssrc], addr[ssrc], speaking=True, dave=False)
        good = [_audio(A, seq, bytes([seq]) * 25) for seq in range(1, 101)]
        slow = {
            20: build_ip_discovery_request(A),
            50: build_packet(XCHACHA, KEYS[A], 1, 960, 0x77777777, b"u" * 30),  # unknown SSRC
            90: struct.pack("<I", 3) + bytes(4),  # keepalive
        }
        sent = []
        for i, datagram in enumerate(good):
            if i in slow:
                sent.append(slow[i])
            sent.append(datagram)
        bad_tag = good[0][:-5] + bytes([good[0][-5] ^ 1]) + good[0][-4:]
        sent.append(bad_tag)
        for datagram in sent[1:]:
            alice.sendto(datagram, server.getsockname())
        left = engine.pump(server.fileno(), sent[0], addr[A])
        assert left == [(slow[i], addr[A]) for i in sorted(slow)] + [(bad_tag, addr[A])]
        assert engine.count(A) == 100 and engine.forwarded == 100 and engine.sent == 100
        got = [bob.recv(4096) for _ in range(100)]
        assert [open_rtpsize(MODES[B], KEYS[B], d)[1] for d in got] == [bytes([s]) * 25 for s in range(1, 101)]
        assert [struct.unpack(">I", d[-4:])[0] - NONCE_START for d in got] == list(range(100))
        alice.settimeout(0.05)
        with pytest.raises(socket.timeout):
            alice.recv(4096)  # nothing back to the sender
        # an empty socket: the first datagram alone
        assert engine.pump(server.fileno(), good[0], ("127.0.0.1", 9)) == [(good[0], ("127.0.0.1", 9))]
    finally:
        engine.close()
        for sock in (server, alice, bob):
            sock.close()


def test_pump_keeps_each_stream_in_order(media):
    # Once a datagram of an SSRC goes to the Python path (which runs after the batch), the later
    # ones of that SSRC in the batch go there too; other SSRCs are not affected.
    server, alice, bob, carol = _udp(), _udp(), _udp(), _udp()
    engine = media.MediaEngine({}, "full")
    try:
        addr = {A: alice.getsockname(), B: bob.getsockname(), C: carol.getsockname()}
        for ssrc in (A, B, C):
            engine.set_session(ssrc, OWNER[ssrc], CALL, MODES[ssrc], KEYS[ssrc], addr[ssrc], speaking=True, dave=False)
        from_a = [_audio(A, seq, bytes([seq]) * 20) for seq in range(1, 7)]
        bad = bytearray(from_a[2])
        bad[14] ^= 1
        from_a[2] = bytes(bad)
        from_c = [_audio(C, seq, bytes([seq]) * 20) for seq in range(1, 7)]
        for a, c in zip(from_a, from_c):
            alice.sendto(a, server.getsockname())
            carol.sendto(c, server.getsockname())
        first = server.recvfrom(4096)
        left = engine.pump(server.fileno(), *first)
        assert left == [(d, addr[A]) for d in from_a[2:]]
        heard, records = engine.take()
        assert [(r[1], r[2]) for r in records] == [(A, 1), (C, 1), (A, 2), (C, 2), (C, 3), (C, 4), (C, 5), (C, 6)]
        # the next batch starts afresh
        assert engine.pump(server.fileno(), _audio(A, 7, b"7"), addr[A]) == []
    finally:
        engine.close()
        for sock in (server, alice, bob, carol):
            sock.close()


# -- inside VoiceServer ----------------------------------------------------------------------


@pytest.mark.parametrize("recording", ["full", "counts", "off"])
async def test_voice_server_forwards_through_the_engine_with_each_recording(recording):
    async with VoiceServer(heartbeat_interval=1000.0, seed=3, media_recording=recording) as server:
        alice = await Client(server, ALICE, XCHACHA).connect()
        bob = await Client(server, BOB, SECOND_MODE).connect()
        carol = await Client(server, CAROL, XCHACHA).connect(speak=False)
        try:
            frames = [bytes([i]) * (30 + i) for i in range(20)]
            before = server.media_stats()["forwarded"]
            for frame in frames:
                alice.send_audio(frame)
            for peer in (bob, carol):
                got = [peer.depacketizer.depacketize(await peer.udp.recv()) for _ in frames]
                assert [p.opus for p in got] == frames and {p.ssrc for p in got} == {alice.gateway.ssrc}
            stats = server.media_stats()
            assert stats["forwarded"] - before == 20 and stats["implementation"] in ("c", "py")
            ssrc = alice.gateway.ssrc
            recorded = server.packets(ssrc)
            session = server.session_for_ssrc(ssrc)
            if recording == "full":
                assert [r.opus for r in recorded] == frames == [r.opus for r in session.packets]
                assert all(r.user_id == ALICE and r.address == session.udp_address for r in recorded)
            else:
                assert list(recorded) == [] and list(session.packets) == []
            assert server.packets_received(ssrc) == (0 if recording == "off" else 20)
            # a silent member that never sent Speaking: its audio takes the Python path and is counted there
            carol.send_audio(b"c" * 10)
            await server.wait_for(lambda: server.session_for_user(CAROL).audio_before_speaking == 1)
            assert server.packets_received(carol.gateway.ssrc) == (0 if recording == "off" else 1)
            assert [p.opus for p in (alice.depacketizer.depacketize(await alice.udp.recv()),)] == [b"c" * 10]
        finally:
            for client in (alice, bob, carol):
                await client.close()


async def test_a_fault_knob_sends_everything_through_the_python_path():
    async with VoiceServer(heartbeat_interval=1000.0, seed=5) as server:
        alice = await Client(server, ALICE).connect()
        bob = await Client(server, BOB).connect()
        try:
            server.udp_loss = 1.0
            for i in range(5):
                alice.send_audio(b"l" * 20)
            await server.wait_for(lambda: len(server.udp_lost) == 5)
            assert server.media_stats()["forwarded"] == 0
            assert await bob.udp.drain(0.1) == []
            server.udp_loss = 0.0
            alice.send_audio(b"k" * 20)
            assert bob.depacketizer.depacketize(await bob.udp.recv()).opus == b"k" * 20
            assert server.media_stats()["forwarded"] == 1
            assert len(server.packets(alice.gateway.ssrc)) == 6
        finally:
            await alice.close()
            await bob.close()


def test_bad_media_recording_is_refused_by_name():
    with pytest.raises(ValueError, match="media recording must be one of off, counts, full, got 'all'"):
        VoiceServer(media_recording="all")


def test_the_server_uses_the_twin_the_environment_selects():
    from fastvoice.testing._media_engine import IMPLEMENTATION

    if NO_EXTENSIONS:
        assert IMPLEMENTATION == "py"
    if REQUIRE_EXTENSIONS:
        assert IMPLEMENTATION == "c"
    assert VoiceServer().media_stats()["implementation"] == IMPLEMENTATION


async def test_a_hook_on_the_python_path_still_sees_every_datagram():
    # Benchmarks and tests replace _on_datagram (record-only servers, simulated drops): the
    # engine must not take audio past them.
    async with VoiceServer(heartbeat_interval=1000.0, seed=9) as server:
        alice = await Client(server, ALICE).connect()
        bob = await Client(server, BOB).connect()
        seen = []
        full_path = server._on_datagram

        def hook(data, addr, now=None):
            seen.append(data)
            full_path(data, addr, now)

        server._on_datagram = hook
        try:
            for _ in range(3):
                alice.send_audio(b"h" * 20)
            for _ in range(3):
                assert bob.depacketizer.depacketize(await bob.udp.recv()).opus == b"h" * 20
            assert len(seen) == 3 and server.media_stats()["forwarded"] == 0
            del server._on_datagram
            alice.send_audio(b"e" * 20)
            assert bob.depacketizer.depacketize(await bob.udp.recv()).opus == b"e" * 20
            assert len(seen) == 3 and server.media_stats()["forwarded"] == 1
        finally:
            await alice.close()
            await bob.close()
