"""The local voice server's recordings are bounded, and one client's flood does not hold the others.

A server run for hours, or fed 100,000 heartbeats padded to 900 KB, kept every frame and
packet (264 MB for 300 padded heartbeats) and processed a flood's buffered frames before
anyone else's handshake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading

import pytest

from fastvoice.gateway_messages import Opcode
from fastvoice.testing import Recording, VoiceServer

from _calls import make_manager


# -- Recording, the bounded list ---------------------------------------------------------


def test_a_recording_keeps_the_newest_items_and_counts_the_rest():
    r = Recording(100)
    for i in range(1000):
        r.record(i)
        assert len(r) <= 100 + 100 // 8
    assert r[-1] == 999 and r == list(range(1000 - len(r), 1000))
    assert r.dropped == 1000 - len(r) and r.dropped >= 1000 - 112
    r.clear()
    assert r == [] and r.dropped >= 888  # a plain list otherwise; the count stays


def test_a_recording_bounds_bytes_and_always_keeps_the_newest_item():
    r = Recording(None, 1000, len)
    for _ in range(50):
        r.record(b"x" * 300)
    assert sum(map(len, r)) <= 1000 + 1000 // 8 and r.dropped == 50 - len(r)
    r.record(b"y" * 5000)  # bigger than the whole budget: it alone stays
    assert r == [b"y" * 5000]


def test_no_limit_and_bad_limits():
    r = Recording(None)
    for i in range(5000):
        r.record(i)
    assert len(r) == 5000 and r.dropped == 0
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="record_packets must be an int >= 1 or None"):
            VoiceServer(record_packets=bad)


# -- the server's recordings --------------------------------------------------------------


async def test_the_frames_of_a_connection_are_bounded_by_count_and_by_bytes():
    async with VoiceServer(record_messages=50, record_message_bytes=200_000) as server:
        _, bots = make_manager(server, 5)
        conn = bots.create_conn(9)
        await conn.open(90)
        ws = conn.gateway._ws
        for i in range(400):
            await ws.send_str(json.dumps({"op": 3, "d": {"t": i, "seq_ack": -1}}))
        connection = server.connections[0]
        await server.wait_for(lambda: any(m.op == Opcode.HEARTBEAT_ACK and m.data == {"t": 399}
                                          for m in connection.messages))
        assert len(connection.messages) <= 50 + 6 and connection.messages.dropped >= 800 - 56
        # Padded frames: the byte bound holds what the count bound would not.
        for i in range(30):
            await ws.send_str(json.dumps({"op": 3, "d": {"t": 1000 + i, "seq_ack": -1, "pad": "x" * 100_000}}))
        await server.wait_for(lambda: any(m.data == {"t": 1029} for m in connection.messages))
        assert sum(len(m.raw) for m in connection.messages) <= 200_000 * 9 // 8
        await bots.close()


async def test_received_packets_and_datagram_lists_are_bounded():
    async with VoiceServer(record_packets=20) as server:
        _, bots = make_manager(server, 5)
        conn = bots.create_conn(9)
        await conn.open(90)
        for i in range(200):
            conn.udp.write(bytes([i % 250 + 1]) * 20)
        session = server.session_for_user(5)
        ssrc = conn.udp.ssrc
        await server.wait_for(lambda: len(server.packets(ssrc)) + server.packets(ssrc).dropped == 200)
        assert len(session.packets) <= 22 and session.packets.dropped == 200 - len(session.packets)
        assert len(server.packets(ssrc)) <= 22 and server.packets(ssrc)[-1].opus == bytes([200]) * 20
        for _ in range(100):
            conn.udp.send_datagram(b"garbage!")  # shorter than an RTP header: rejected
        await server.wait_for(lambda: len(server.rejected_datagrams) + server.rejected_datagrams.dropped == 100)
        assert len(server.rejected_datagrams) <= 22
        await bots.close()


# -- fairness -------------------------------------------------------------------------------


def _flood(host: str, port: int, frames: int, out: dict) -> None:
    """Open a websocket on a plain socket and write ``frames`` heartbeats in one go."""
    sock = socket.create_connection((host, port))
    out["socket"] = sock
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /?v=8 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    payload = json.dumps({"op": 3, "d": {"t": 1, "seq_ack": -1}}).encode()
    frame = bytes([0x81, 0x80 | len(payload)]) + bytes(4) + payload  # masked with a zero key
    try:
        sock.sendall(frame * frames)
    except OSError:
        pass  # the test dropped the connection


async def test_a_flood_of_heartbeats_does_not_hold_another_clients_open():
    """20,000 heartbeats are already on their way when another client opens: its open must
    finish while the server is still working through them (before: only once all were
    handled, as each of the open's steps waited behind a whole socket read of the flood)."""
    frames = 20_000
    async with VoiceServer() as server:
        host, port = server.endpoint.split(":")
        out: dict = {}
        flooder = threading.Thread(target=_flood, args=(host, int(port), frames, out), daemon=True)
        flooder.start()
        await server.wait_for(lambda: server.connections and len(server.connections[0].messages) > 1000, timeout=10)
        flood = server.connections[0]
        _, bots = make_manager(server, 5, open_timeout=30)
        conn = bots.create_conn(9)
        await conn.open(90)
        handled = (len(flood.messages) + flood.messages.dropped) // 2  # each heartbeat in, its ACK out
        flood.drop()
        await bots.close()
        flooder.join(10)
        out["socket"].close()
    assert handled < frames // 2, f"the open waited for {handled} of the flood's {frames} heartbeats"
