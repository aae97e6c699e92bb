"""The send phase of a clock tick: prepared datagrams straight to the sockets (both twins)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from fastvoice.audio import FrameStats


def _pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    return tx, rx


def _slot(rtp, datagram, fd, owner=None):
    # What an AudioSender owns: its prepared datagram and the target socket it goes to.
    slot = rtp.PreparedSlot(owner, FrameStats())
    slot.datagram = datagram
    slot.target = None if fd is None else rtp.SendTarget(fd)
    return slot


@pytest.fixture
def sockets():
    made = [_pair() for _ in range(3)]
    yield made
    for tx, rx in made:
        tx.close()
        rx.close()


def test_sends_each_prepared_datagram_once_in_order(rtp, sockets):
    slots = [_slot(rtp, f"d{i}".encode() * 10, tx.fileno()) for i, (tx, _) in enumerate(sockets)]
    idle = _slot(rtp, None, None)
    assert rtp.send_prepared([slots[0], idle, slots[1], slots[2]]) == []
    for i, (_, rx) in enumerate(sockets):
        assert rx.recv(100) == f"d{i}".encode() * 10
    assert [s.stats.sent for s in slots] == [1, 1, 1] and idle.stats.sent == 0
    assert all(s.datagram is None for s in slots)
    # Nothing prepared any more: a second call sends nothing.
    assert rtp.send_prepared(slots) == []
    sockets[0][1].settimeout(0.05)
    with pytest.raises(socket.timeout):
        sockets[0][1].recv(100)


def test_what_cannot_go_to_a_socket_is_returned_with_its_owner(rtp, sockets):
    tx, rx = sockets[0]
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bad_fd = closed.fileno()
    closed.close()
    slots = [
        _slot(rtp, b"a", -1, "closed"),  # its UDP connection was closed
        _slot(rtp, b"b", bad_fd, "stale"),  # descriptor no longer valid: EBADF
        _slot(rtp, bytearray(b"c"), tx.fileno(), "not bytes"),
        _slot(rtp, b"d", None, "no target"),
    ]
    good = _slot(rtp, b"f", tx.fileno(), "good")
    out = rtp.send_prepared(slots + [good])
    assert [(owner, bytes(d)) for owner, d in out] == [
        ("closed", b"a"), ("stale", b"b"), ("not bytes", b"c"), ("no target", b"d")
    ]
    assert rx.recv(10) == b"f" and good.stats.sent == 1
    assert all(s.stats.sent == 0 and s.datagram is None for s in slots)


def test_the_slot_is_a_declared_contract(rtp):
    # The send loop reads declared fields, not whatever an object happens to have: a target
    # must be a SendTarget, and only PreparedSlots are sent.
    slot = rtp.PreparedSlot(None, FrameStats())
    target = rtp.SendTarget()
    assert target.fd == -1 and slot.datagram is None and slot.target is None
    if rtp.IMPLEMENTATION == "c":
        with pytest.raises(TypeError):
            slot.target = SimpleNamespace(fd=3)
        with pytest.raises(TypeError):
            rtp.send_prepared([SimpleNamespace(datagram=b"x", target=None, stats=FrameStats(), owner=None)])


def test_twins_behave_alike(rtp_c, rtp_py, sockets):
    (tx, rx), _, _ = sockets
    for twin in (rtp_c, rtp_py):
        slots = [_slot(twin, bytes([i]) * 50, tx.fileno() if i % 2 else -1, i) for i in range(6)]
        out = twin.send_prepared(slots)
        assert out == [(i, bytes([i]) * 50) for i in (0, 2, 4)]
        assert [rx.recv(100) for _ in range(3)] == [bytes([i]) * 50 for i in (1, 3, 5)]


async def test_a_datagram_prepared_for_a_closed_session_is_dropped(rtp):
    # A reconnect replaced the UDP connection between the prepare and the send phase: the
    # datagram was encrypted with the old key and must not go out on the new socket.
    from fastvoice.audio import AudioSender

    sent = []
    new_udp = SimpleNamespace(send_target=rtp.SendTarget(-1), send_datagram=sent.append)
    conn = SimpleNamespace(udp=new_udp)
    sender = AudioSender(None, conn)
    sender._slot.datagram, sender._prepared_udp = b"old", SimpleNamespace(send_target=rtp.SendTarget(-1))
    for s, d in rtp.send_prepared([sender._slot]):
        s._send(d)
    assert sent == [] and sender.stats.sent == 0
    sender._slot.datagram, sender._prepared_udp = b"new", new_udp
    for s, d in rtp.send_prepared([sender._slot]):
        s._send(d)
    assert sent == [b"new"] and sender.stats.sent == 1
