"""Depacketize + SSRC routing in one call, the duplicate window, and key wiping (both twins)."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from fastvoice.errors import DecryptionFailedError

XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AES = "aead_aes256_gcm_rtpsize"
KEY = bytes(range(32))


def _modes(rtp):
    return [AES, XCHACHA] if rtp.aes256gcm_available() else [XCHACHA]


def _stream(rtp, mode, ssrc, sequences, key=KEY):
    sender = rtp.Packetizer(ssrc, mode, key)
    out = []
    for seq in sequences:
        sender.sequence = seq
        out.append(sender.packetize(seq.to_bytes(2, "big") + b"opus"))
    return out


@pytest.mark.parametrize("mode", [AES, XCHACHA])
def test_dispatch_sets_user_id_and_matches_depacketize(rtp, mode):
    if mode not in _modes(rtp):
        pytest.skip("no AES-GCM on this CPU")
    table = rtp.SSRCTable()
    table.set(1111, 42)
    dep = rtp.Depacketizer(mode, KEY)
    mapped, unmapped = _stream(rtp, mode, 1111, [7])[0], _stream(rtp, mode, 2222, [7])[0]

    packet = dep.dispatch(mapped, table)
    assert packet.user_id == 42
    assert packet == dep.depacketize(mapped)  # same fields; user_id is not part of equality
    assert dep.depacketize(mapped).user_id is None

    stray = dep.dispatch(unmapped, table)
    assert stray.user_id is None and stray.ssrc == 2222 and stray.opus == b"\x00\x07opus"
    # Unmapped SSRCs are not de-duplicated by the table (nothing to key the window on).
    assert dep.dispatch(unmapped, table) is not None


def test_dispatch_non_audio_and_forgeries(rtp):
    table = rtp.SSRCTable()
    table.set(1111, 42)
    dep = rtp.Depacketizer(XCHACHA, KEY)
    assert dep.dispatch(b"", table) is None
    assert dep.dispatch(bytes([0x81, 0xC9]) + bytes(30), table) is None  # RTCP
    good = bytearray(_stream(rtp, XCHACHA, 1111, [1])[0])
    good[20] ^= 1
    with pytest.raises(DecryptionFailedError):
        dep.dispatch(bytes(good), table)
    with pytest.raises(TypeError):
        dep.dispatch(bytes(good), {1111: 42})
    # A forged packet must not move the duplicate window.
    assert dep.dispatch(_stream(rtp, XCHACHA, 1111, [1])[0], table).sequence == 1


def test_dispatch_drops_repeats_and_counts_them(rtp):
    table = rtp.SSRCTable()
    entry = table.set(1111, 42)
    dep = rtp.Depacketizer(XCHACHA, KEY)
    datagrams = _stream(rtp, XCHACHA, 1111, [10, 11, 12, 13])
    order = [0, 1, 1, 3, 2, 0, 3, 2]  # each once, then repeats (some reordered)
    delivered = [p.sequence for p in (dep.dispatch(datagrams[i], table) for i in order) if p is not None]
    assert delivered == [10, 11, 13, 12]
    assert entry.duplicates == 4


def test_dispatch_accepts_a_bytearray_and_memoryview(rtp):
    table = rtp.SSRCTable()
    table.set(1111, 42)
    dep = rtp.Depacketizer(XCHACHA, KEY)
    a, b = _stream(rtp, XCHACHA, 1111, [1, 2])
    assert dep.dispatch(bytearray(a), table).user_id == 42
    assert dep.dispatch(memoryview(b), table).sequence == 2


# ---------------------------------------------------------------- the duplicate window


def _model_accept(history, seq):
    """What the window must answer, from first principles: a repeat is a sequence number
    already accepted since the window last restarted, no more than 63 behind the newest."""
    if not history:
        history.append(seq)
        return True
    newest = history[-1]
    ahead = (seq - newest) & 0xFFFF
    if ahead != 0 and ahead < 0x8000:
        history.append(seq)
        return True
    behind = (newest - seq) & 0xFFFF
    if behind >= 64:
        history.clear()
        history.append(seq)
        return True
    recent = {s for s in history if (newest - s) & 0xFFFF < 64}
    if seq in recent:
        return False
    history.insert(-1, seq)  # accepted late; the newest stays the newest
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), max_size=300), st.integers(0, 0xFFFF))
def test_window_matches_the_model(rtp, offsets, start):
    entry = rtp.SSRCEntry(1, 2)
    history = []
    refused = 0
    for off in offsets:
        seq = (start + off % 80) & 0xFFFF  # stay near the window so repeats and reorders happen
        expected = _model_accept(history, seq)
        refused += not expected
        assert entry.accept(seq) is expected, seq
    assert entry.duplicates == refused


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.lists(st.integers(0, 4), min_size=1, max_size=200))
def test_reordering_within_the_window_loses_nothing(rtp, start, jitter):
    # Each packet delayed by up to 4 slots (reordering within 5 packets), wrapping at 2**16.
    n = len(jitter)
    arrival = sorted(range(n), key=lambda i: i + jitter[i])
    entry = rtp.SSRCEntry(1, 2)
    accepted = [i for i in arrival if entry.accept((start + i) & 0xFFFF)]
    assert sorted(accepted) == list(range(n))
    assert all(not entry.accept((start + i) & 0xFFFF) for i in range(max(0, n - 60), n))


def test_window_twins_agree(rtp_c, rtp_py):
    import random

    rng = random.Random(5)
    a, b = rtp_c.SSRCEntry(1, 2), rtp_py.SSRCEntry(1, 2)
    seq = 65500
    for _ in range(20000):
        seq = (seq + rng.choice([1, 1, 1, 2, 0, -1, -3, -70, 200, 40000])) & 0xFFFF
        assert a.accept(seq) == b.accept(seq)
    assert a.duplicates == b.duplicates > 0


def test_window_rejects_bad_sequence(rtp):
    entry = rtp.SSRCEntry(1, 2)
    with pytest.raises(ValueError, match="sequence"):
        entry.accept(70000)
    with pytest.raises(TypeError):
        entry.accept("1")


# ---------------------------------------------------------------- wiping keys


def test_wipe_stops_packetizer_and_depacketizer(rtp):
    sender = rtp.Packetizer(1, XCHACHA, os.urandom(32))
    receiver = rtp.Depacketizer(XCHACHA, KEY)
    datagram = rtp.Packetizer(1, XCHACHA, KEY).packetize(b"x")
    assert not sender.wiped and not receiver.wiped
    sender.wipe()
    receiver.wipe()
    assert sender.wiped and receiver.wiped
    with pytest.raises(RuntimeError, match="wiped"):
        sender.packetize(b"x")
    with pytest.raises(RuntimeError, match="wiped"):
        receiver.depacketize(datagram)
    # Counters stay readable for stream continuity; the key does not show up anywhere.
    assert sender.sequence == 0
    assert KEY.hex() not in repr(receiver)


def _memory_of(obj) -> bytes:
    """The raw memory where a twin keeps its key: the object itself (the compiled twin's
    inline array) and every bytes object in its slots (the pure twin's private copy)."""
    regions = [ctypes.string_at(id(obj), type(obj).__basicsize__)]
    for name in getattr(type(obj), "__slots__", ()):
        value = getattr(obj, name, None)
        if type(value) is bytes:
            regions.append(ctypes.string_at(id(value), sys.getsizeof(value)))
    return b"".join(regions)


@pytest.mark.parametrize("given", [bytes, bytearray, list], ids=["bytes", "bytearray", "list"])
@pytest.mark.parametrize("kind", ["Packetizer", "Depacketizer"])
def test_wipe_zeroes_the_key_in_memory_and_leaves_the_callers_key_alone(rtp, kind, given):
    key = os.urandom(32)
    callers_key = given(key)
    for mode in (XCHACHA, "aead_aes256_gcm_rtpsize"):
        if "aes" in mode and not rtp.aes256gcm_available():
            continue
        obj = rtp.Packetizer(7, mode, callers_key) if kind == "Packetizer" else rtp.Depacketizer(mode, callers_key)
        assert key in _memory_of(obj)  # the probe sees the key where the twin keeps it
        obj.wipe()
        assert key not in _memory_of(obj)
        assert bytes(callers_key) == key  # the copy was private: the caller's key is untouched


def test_a_rejected_key_leaves_the_callers_object_untouched(rtp):
    short = os.urandom(31)
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        rtp.Depacketizer(XCHACHA, short)
    with pytest.raises(ValueError, match="sequence"):
        rtp.Packetizer(1, XCHACHA, KEY, sequence=-1)
    assert len(short) == 31 and any(short)
    assert KEY == bytes(range(32))


async def test_udp_close_wipes_the_session_keys(rtp):
    from fastvoice.udp import UDPConn

    udp = UDPConn()
    udp._ssrc = 5
    udp.set_secret_key(XCHACHA, KEY)
    first_sender, first_receiver = udp.packetizer, udp._depacketizer
    counters = udp.stream_counters
    udp.set_secret_key(XCHACHA, bytes(32))  # a new key replaces (and wipes) the old pair
    assert first_sender.wiped and first_receiver.wiped
    assert udp.stream_counters == counters  # and the stream goes on
    current = udp.packetizer
    udp.close()
    assert current.wiped and udp.packetizer is None
    assert udp.stream_counters == counters


def test_compiled_aes_uses_the_precomputed_key_api(rtp_c):
    if not rtp_c.aes256gcm_available():
        pytest.skip("no AES-GCM on this CPU")
    # PyNaCl >= 1.6 wheels export libsodium's *_afternm functions; if a build ever stops
    # doing so the one-shot path is used, and this test says so.
    assert rtp_c._uses_precomputed_aes()


# ---------------------------------------------------------------- the datagram router


class _Log:
    def __init__(self):
        self.lines = []

    def debug(self, fmt, *args):
        self.lines.append(fmt % args)


def test_router_fast_path_drops_and_counts_what_it_must(rtp):
    slow, delivered, log = [], [], _Log()
    router = rtp.DatagramRouter(lambda d, a: slow.append((d, a)), 4096, log)
    server = ("10.0.0.1", 50000)
    router.remote = server
    table = rtp.SSRCTable()
    table.set(1111, 42)
    dep = rtp.Depacketizer(XCHACHA, KEY)
    a, b = _stream(rtp, XCHACHA, 1111, [5, 6])

    router.datagram_received(a, server)  # no route yet (no key, no receiver): ignored
    assert slow == [] and not router.fast and router.ignored == 1
    router.route(dep, table, delivered.append)
    assert router.fast

    forged = bytearray(b)
    forged[15] ^= 0x40
    for datagram, addr in [
        (a, server),                       # delivered
        (a, server),                       # a repeat: duplicates
        (b, ("10.0.0.2", 50000)),          # another address: ignored
        (b, (server[0], 50001)),           # another port: ignored
        (bytes(forged), server),           # forged: decrypt_failures, logged
        (b"\x81\xc8" + bytes(30), server),  # RTCP: ignored
        (b + bytes(5000), server),         # oversized: ignored
        (bytearray(b), server),            # not bytes (never from a transport): ignored
        (b, server),                       # delivered
    ]:
        router.datagram_received(datagram, addr)
    assert [(p.sequence, p.user_id) for p in delivered] == [(5, 42), (6, 42)]
    assert (router.ignored, router.duplicates, router.decrypt_failures) == (6, 1, 1)
    assert len(log.lines) == 1 and "authentication failed" in log.lines[0] and KEY.hex() not in log.lines[0]
    assert slow == []

    router.route(None, table, delivered.append)  # any part missing: no route
    router.datagram_received(b, server)
    assert not router.fast and slow == [] and router.ignored == 7
    with pytest.raises(TypeError):
        router.route(dep, {1111: 42}, delivered.append)


def test_router_offers_datagrams_to_the_slow_path_first_while_slow(rtp):
    # IP discovery and raw handlers: the slow path sees what passed the address and size
    # checks, and what it does not take goes on along the one route.
    offered, delivered = [], []
    router = rtp.DatagramRouter(lambda d, a: offered.append(d) or d.startswith(b"\x00\x02"), 4096, _Log())
    server = ("10.0.0.1", 50000)
    router.remote = server
    table = rtp.SSRCTable()
    table.set(1111, 42)
    router.route(rtp.Depacketizer(XCHACHA, KEY), table, delivered.append)
    router.slow = True
    assert not router.fast
    a, b = _stream(rtp, XCHACHA, 1111, [1, 2])
    reply = b"\x00\x02" + bytes(72)
    router.datagram_received(reply, server)           # taken by the slow path
    router.datagram_received(reply, ("10.0.0.9", 1))  # another address: never offered
    router.datagram_received(a, server)               # offered, not taken: delivered
    assert offered == [reply, a] and [p.sequence for p in delivered] == [1] and router.ignored == 1
    router.slow = False
    router.datagram_received(b, server)
    assert offered == [reply, a] and [p.sequence for p in delivered] == [1, 2]


def test_router_without_a_table_delivers_unrouted_packets(rtp):
    delivered = []
    router = rtp.DatagramRouter(None, 4096, _Log())
    router.route(rtp.Depacketizer(XCHACHA, KEY), None, delivered.append)
    a, = _stream(rtp, XCHACHA, 1111, [1])
    router.datagram_received(a, ("h", 1))
    router.datagram_received(a, ("h", 1))  # no table, no duplicate window: delivered again
    assert [(p.sequence, p.user_id) for p in delivered] == [(1, None), (1, None)]


def test_dispatch_outcome_says_what_happened(rtp):
    table = rtp.SSRCTable()
    table.set(1111, 42)
    dep = rtp.Depacketizer(XCHACHA, KEY)
    mapped, = _stream(rtp, XCHACHA, 1111, [7])
    unmapped, = _stream(rtp, XCHACHA, 2222, [7])
    outcome = rtp.DispatchOutcome
    got = dep.dispatch_outcome(mapped, table)
    assert got[0] is outcome.ROUTED and (got[1].sequence, got[1].user_id) == (7, 42)
    assert dep.dispatch_outcome(mapped, table) == (outcome.DUPLICATE, None)
    got = dep.dispatch_outcome(unmapped, table)
    assert got[0] is outcome.UNMAPPED and (got[1].ssrc, got[1].user_id) == (2222, None)
    assert dep.dispatch_outcome(b"\x81\xc8" + bytes(30), table) == (outcome.NOT_AUDIO, None)
    assert dep.dispatch_outcome(b"", table) == (outcome.NOT_AUDIO, None)
    with pytest.raises(DecryptionFailedError):
        dep.dispatch_outcome(mapped[:-1] + bytes([mapped[-1] ^ 1]), table)
    with pytest.raises(TypeError):
        dep.dispatch_outcome(mapped, {1111: 42})
    assert table.lookup(1111).duplicates == 1


def test_dispatch_outcome_without_a_table_routes_nothing(rtp):
    # ``table`` None is the router's route without a table: audio comes back unrouted, every
    # copy of it (no duplicate window), and anything else is still NOT_AUDIO.
    dep = rtp.Depacketizer(XCHACHA, KEY)
    a, = _stream(rtp, XCHACHA, 1111, [7])
    outcome = rtp.DispatchOutcome
    for _ in range(2):
        got = dep.dispatch_outcome(a, None)
        assert got[0] is outcome.UNMAPPED and (got[1].ssrc, got[1].sequence, got[1].user_id) == (1111, 7, None)
        assert got[1] == dep.depacketize(a)
    assert dep.dispatch_outcome(b"\x81\xc8" + bytes(30), None) == (outcome.NOT_AUDIO, None)
    with pytest.raises(TypeError):
        dep.dispatch(a, None)  # dispatch itself routes: it needs a table


def test_the_pure_router_takes_the_core_public_route(rtp_py, monkeypatch):
    # The pure edge reaches the core through its documented API only: each datagram goes
    # through Depacketizer.dispatch_outcome, with the route's table (or None).
    seen = []
    public = rtp_py.Depacketizer.dispatch_outcome

    def spy(self, datagram, table):
        seen.append((datagram, table))
        return public(self, datagram, table)

    monkeypatch.setattr(rtp_py.Depacketizer, "dispatch_outcome", spy)
    delivered = []
    table = rtp_py.SSRCTable()
    table.set(1111, 42)
    router = rtp_py.DatagramRouter(None, 4096, _Log())
    router.route(rtp_py.Depacketizer(XCHACHA, KEY), table, delivered.append)
    a, b = _stream(rtp_py, XCHACHA, 1111, [1, 2])
    router.datagram_received(a, ("h", 1))
    router.datagram_received(a, ("h", 1))
    router.route(rtp_py.Depacketizer(XCHACHA, KEY), None, delivered.append)
    router.datagram_received(b, ("h", 1))
    assert seen == [(a, table), (a, table), (b, None)]
    assert [(p.sequence, p.user_id) for p in delivered] == [(1, 42), (2, None)]
    assert router.duplicates == 1


def test_router_decrypts_a_duplicate_once(rtp):
    # Telling a repeat from non-audio must not take a second decryption: the router reads
    # dispatch's outcome. (A subclass sees every call of the public depacketize.)
    calls = []

    class Counting(rtp.Depacketizer):
        def depacketize(self, datagram):
            calls.append(datagram)
            return super().depacketize(datagram)

    table = rtp.SSRCTable()
    table.set(1111, 42)
    delivered = []
    router = rtp.DatagramRouter(None, 4096, _Log())
    router.route(Counting(XCHACHA, KEY), table, delivered.append)
    a, = _stream(rtp, XCHACHA, 1111, [3])
    for _ in range(3):
        router.datagram_received(a, ("h", 1))
    router.datagram_received(b"\x81\xc8" + bytes(30), ("h", 1))
    assert (len(delivered), router.duplicates, router.ignored) == (1, 2, 1)
    assert calls == []


def test_router_twins_agree(rtp_c, rtp_py):
    import random

    results = []
    for twin in (rtp_c, rtp_py):
        table = twin.SSRCTable()
        table.set(1111, 42)
        got = []
        router = twin.DatagramRouter(lambda d, a: got.append(("slow", d)), 4096, _Log())
        router.route(twin.Depacketizer(XCHACHA, KEY), table, lambda p: got.append((p.sequence, p.user_id, p.opus)))
        datagrams = _stream(rtp_py, XCHACHA, 1111, range(300))
        r = random.Random(3)
        for _ in range(600):
            d = r.choice(datagrams)
            if r.random() < 0.1:
                d = bytearray(d)
                d[r.randrange(len(d))] ^= 1 << r.randrange(8)
                d = bytes(d)
            router.datagram_received(d, ("h", 1))
        results.append((got, router.ignored, router.duplicates, router.decrypt_failures))
    assert results[0] == results[1] and results[0][2] > 0


def _fields(p):
    return (p.sequence, p.timestamp, p.ssrc, p.marker, p.payload_type, p.csrcs,
            p.extension_profile, p.extension, p.opus, p.user_id)


def test_router_packets_are_whole_whether_or_not_the_handler_keeps_them(rtp):
    # The compiled router parses the next datagram into the previous Packet when the handler
    # kept no reference to it; every field must still be the new datagram's (user_id
    # included: an unmapped SSRC after a mapped one is None), and a kept packet never changes.
    def table():  # a fresh one per pass: the duplicate window lives in the table's entries
        t = rtp.SSRCTable()
        t.set(1111, 42)
        return t

    datagrams = [  # built by the rules of PROTOCOL.md, not by the code under test
        ref.build_packet(XCHACHA, KEY, seq, 960 * seq, ssrc, b"payload%d" % seq, counter=seq, marker=marker,
                         csrcs=csrcs, ext_profile=profile, ext_body=body, padding=padding)
        for ssrc, seq, marker, csrcs, profile, body, padding in [
            (1111, 1, True, (), None, b"", 0), (2222, 2, False, (7, 8), None, b"", 3),
            (1111, 3, False, (), 0xBEDE, b"\x10\xaa\x00\x00", 0), (2222, 4, True, (9,), 0x1000, b"abcd", 0),
            (1111, 5, False, (), None, b"", 0)]
    ]
    reference_table = table()
    expected = [_fields(rtp.Depacketizer(XCHACHA, KEY).dispatch(d, reference_table)) for d in datagrams]
    assert [e[-1] for e in expected] == [42, None, 42, None, 42]

    seen, kept = [], []
    for handler in (lambda p: seen.append(_fields(p)), kept.append):
        router = rtp.DatagramRouter(None, 4096, _Log())
        router.remote = ("10.0.0.1", 1)
        router.route(rtp.Depacketizer(XCHACHA, KEY), rtp.SSRCTable(), handler)
        router.route(rtp.Depacketizer(XCHACHA, KEY), table(), handler)
        for d in datagrams:
            router.datagram_received(d, ("10.0.0.1", 1))
    assert seen == expected
    assert [_fields(p) for p in kept] == expected and len({id(p) for p in kept}) == len(kept)


def test_router_ignores_an_address_that_is_not_a_host_port_tuple(rtp):
    got = []
    router = rtp.DatagramRouter(None, 4096, _Log())
    router.remote = ("10.0.0.1", 1)
    table = rtp.SSRCTable()
    router.route(rtp.Depacketizer(XCHACHA, KEY), table, got.append)
    d = _stream(rtp, XCHACHA, 1111, [1])[0]
    for addr in (None, ("10.0.0.1",), ["10.0.0.1", 1], "10.0.0.1:1"):
        router.datagram_received(d, addr)
    assert got == [] and router.ignored == 4
    router.datagram_received(d, ("10.0.0.1", 1))
    assert len(got) == 1
