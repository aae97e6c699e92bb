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


def _sender(datagram, fd):
    return SimpleNamespace(_prepared=datagram, _prepared_udp=SimpleNamespace(_fd=fd), stats=FrameStats())


@pytest.fixture
def sockets():
    made = [_pair() for _ in range(3)]
    yield made
    for tx, rx in made:
        tx.close()
        rx.close()


def test_sends_each_prepared_datagram_once_in_order(rtp, sockets):
    senders = [_sender(f"d{i}".encode() * 10, tx.fileno()) for i, (tx, _) in enumerate(sockets)]
    idle = SimpleNamespace(_prepared=None, _prepared_udp=None, stats=FrameStats())
    assert rtp.send_prepared([senders[0], idle, senders[1], senders[2]]) == []
    for i, (_, rx) in enumerate(sockets):
        assert rx.recv(100) == f"d{i}".encode() * 10
    assert [s.stats.sent for s in senders] == [1, 1, 1] and idle.stats.sent == 0
    assert all(s._prepared is None for s in senders)
    # Nothing prepared any more: a second call sends nothing.
    assert rtp.send_prepared(senders) == []
    sockets[0][1].settimeout(0.05)
    with pytest.raises(socket.timeout):
        sockets[0][1].recv(100)


def test_what_cannot_go_to_a_socket_is_returned(rtp, sockets):
    tx, rx = sockets[0]
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bad_fd = closed.fileno()
    closed.close()
    no_socket = _sender(b"a", -1)  # its UDP connection was closed
    stale_fd = _sender(b"b", bad_fd)  # descriptor no longer valid: EBADF
    not_bytes = _sender(bytearray(b"c"), tx.fileno())
    no_udp = SimpleNamespace(_prepared=b"d", _prepared_udp=None, stats=FrameStats())
    fake_udp = SimpleNamespace(_prepared=b"e", _prepared_udp=object(), stats=FrameStats())
    good = _sender(b"f", tx.fileno())
    out = rtp.send_prepared([no_socket, stale_fd, not_bytes, no_udp, fake_udp, good])
    assert [(s, bytes(d)) for s, d in out] == [
        (no_socket, b"a"), (stale_fd, b"b"), (not_bytes, b"c"), (no_udp, b"d"), (fake_udp, b"e")
    ]
    assert rx.recv(10) == b"f" and good.stats.sent == 1
    assert all(s.stats.sent == 0 for s, _ in out)
    assert all(s._prepared is None for s, _ in out)


def test_twins_behave_alike(rtp_c, rtp_py, sockets):
    (tx, rx), _, _ = sockets
    for twin in (rtp_c, rtp_py):
        senders = [_sender(bytes([i]) * 50, tx.fileno() if i % 2 else -1) for i in range(6)]
        out = twin.send_prepared(senders)
        assert [d for _, d in out] == [bytes([i]) * 50 for i in (0, 2, 4)]
        assert [rx.recv(100) for _ in range(3)] == [bytes([i]) * 50 for i in (1, 3, 5)]


async def test_a_datagram_prepared_for_a_closed_session_is_dropped(rtp):
    # A reconnect replaced the UDP connection between the prepare and the send phase: the
    # datagram was encrypted with the old key and must not go out on the new socket.
    from fastvoice.audio import AudioSender

    sent = []
    new_udp = SimpleNamespace(_fd=-1, send_datagram=sent.append)
    conn = SimpleNamespace(udp=new_udp)
    sender = AudioSender(None, conn)
    sender._prepared, sender._prepared_udp = b"old", SimpleNamespace(_fd=-1)
    for s, d in rtp.send_prepared([sender]):
        s._send(d)
    assert sent == [] and sender.stats.sent == 0
    sender._prepared, sender._prepared_udp = b"new", new_udp
    for s, d in rtp.send_prepared([sender]):
        s._send(d)
    assert sent == [b"new"] and sender.stats.sent == 1
