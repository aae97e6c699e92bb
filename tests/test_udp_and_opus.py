"""UDPConn against a minimal in-test voice UDP peer, and the Opus readers/writers."""

from __future__ import annotations

import asyncio
import io
import os
import struct

import pytest

from fastvoice import IPDiscoveryError
from fastvoice.ipdiscovery import build_ip_discovery_response
from fastvoice.opus import AsyncOpusReader, OpusFrameProvider, OpusFrameReceiver, OpusReader, OpusWriter
from fastvoice.rtp import Depacketizer, Packet, Packetizer
from fastvoice.udp import UDPConn, UDPNotReadyError

MODE = "aead_xchacha20_poly1305_rtpsize"
KEY = os.urandom(32)


class Peer(asyncio.DatagramProtocol):
    """Answers IP discovery (optionally wrongly) and records decrypted audio."""

    def __init__(self, reply: str = "good") -> None:
        self.reply = reply
        self.received: list[Packet] = []
        self.requests = 0
        self.client: tuple[str, int] | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.client = addr
        if len(data) == 74 and data[:2] == b"\x00\x01":
            self.requests += 1
            ssrc = struct.unpack_from(">I", data, 4)[0]
            if self.reply == "silent" or (self.reply == "lossy" and self.requests < 3):
                return
            if self.reply == "wrong-ssrc":
                ssrc ^= 1
            self.transport.sendto(build_ip_discovery_response(ssrc, "198.51.100.7", 40404), addr)
            return
        self.received.append(Depacketizer(MODE, KEY).depacketize(data))


async def start_peer(**kw):
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(lambda: Peer(**kw), local_addr=("127.0.0.1", 0))
    return transport, peer


async def test_open_send_receive_close():
    transport, peer = await start_peer()
    conn = UDPConn(discovery_retry=0.05)
    try:
        with pytest.raises(UDPNotReadyError, match="not open"):
            conn.write(b"x")
        port = transport.get_extra_info("sockname")[1]
        assert await conn.open("127.0.0.1", port, 777) == ("198.51.100.7", 40404)
        assert conn.remote_addr == ("127.0.0.1", port) and conn.local_addr[0] == "127.0.0.1"
        with pytest.raises(UDPNotReadyError, match="secret key"):
            conn.write(b"x")
        conn.set_secret_key(MODE, KEY)
        seq0, ts0, _ = conn.stream_counters
        frames = [os.urandom(50 + i) for i in range(5)]
        for f in frames:
            assert conn.write(f) == len(f)
        for _ in range(50):
            if len(peer.received) == 5:
                break
            await asyncio.sleep(0.01)
        assert [p.opus for p in peer.received] == frames
        assert [p.sequence for p in peer.received] == [(seq0 + i) & 0xFFFF for i in range(5)]
        assert [p.timestamp for p in peer.received] == [(ts0 + 960 * i) & 0xFFFFFFFF for i in range(5)]
        assert all(p.ssrc == 777 for p in peer.received)

        # Server -> client: audio of another member, plus garbage and a forged packet.
        other = Packetizer(999, MODE, KEY, sequence=10)
        transport.sendto(b"\x80\xc8" + bytes(30), peer.client)  # RTCP
        transport.sendto(other.packetize(b"hello"), peer.client)
        forged = bytearray(other.packetize(b"evil"))
        forged[-10] ^= 1
        transport.sendto(bytes(forged), peer.client)
        transport.sendto(other.packetize(b"world"), peer.client)
        conn.set_read_deadline(2)
        got = [await conn.read_packet(), await conn.read_packet()]
        assert [(p.ssrc, p.sequence, p.opus) for p in got] == [(999, 10, b"hello"), (999, 12, b"world")]
        assert conn.decrypt_failures == 1 and conn.ignored >= 1

        # A new key keeps the stream continuous.
        conn.set_secret_key(MODE, KEY)
        assert conn.stream_counters == ((seq0 + 5) & 0xFFFF, (ts0 + 5 * 960) & 0xFFFFFFFF, 5)
        conn.set_read_deadline(0.05)
        with pytest.raises(TimeoutError):
            await conn.read_packet()
    finally:
        conn.close()
        transport.close()
    with pytest.raises(ConnectionError):
        await conn.read_packet()
    assert not conn.is_open


async def test_discovery_retries_lost_requests():
    transport, peer = await start_peer(reply="lossy")
    conn = UDPConn(discovery_retry=0.05)
    try:
        assert await conn.open("127.0.0.1", transport.get_extra_info("sockname")[1], 5) == ("198.51.100.7", 40404)
        assert peer.requests == 3
    finally:
        conn.close()
        transport.close()


@pytest.mark.parametrize("reply, error", [("silent", "no IP discovery reply"), ("wrong-ssrc", "SSRC 4, expected 5")])
async def test_discovery_failures_close_the_socket(reply, error):
    transport, _ = await start_peer(reply=reply)
    conn = UDPConn(discovery_timeout=0.3, discovery_retry=0.1)
    try:
        with pytest.raises(IPDiscoveryError, match=error):
            await conn.open("127.0.0.1", transport.get_extra_info("sockname")[1], 5)
        assert not conn.is_open and conn.local_addr is None
    finally:
        transport.close()


async def test_datagrams_from_other_addresses_are_ignored():
    transport, _ = await start_peer()
    stranger, _ = await start_peer()
    conn = UDPConn()
    try:
        await conn.open("127.0.0.1", transport.get_extra_info("sockname")[1], 1)
        conn.set_secret_key(MODE, KEY)
        # A connected UDP socket only hears its peer; a stranger's packet never arrives.
        stranger.sendto(Packetizer(3, MODE, KEY).packetize(b"spoof"), conn.local_addr)
        conn.set_read_deadline(0.1)
        with pytest.raises(TimeoutError):
            await conn.read_packet()
        conn._router.datagram_received(b"x", ("203.0.113.1", 9))  # and the check on the route itself
        assert conn.ignored == 1
    finally:
        conn.close()
        transport.close()
        stranger.close()


def test_opus_reader_writer_round_trip():
    frames = [os.urandom(n) for n in (3, 120, 0, 400)]
    sink = io.BytesIO()
    writer = OpusWriter(sink, user_filter=lambda uid: uid != 13)
    for f in frames:
        writer.receive_opus_frame(1, Packet(0, 0, 0, f))
        writer.receive_opus_frame(13, Packet(0, 0, 0, b"filtered"))
    writer.cleanup_user(1)
    writer.close()
    data = sink.getvalue()
    assert data[:7] == b"\x03\x00\x00\x00" + frames[0]  # 4-byte little-endian length prefix
    reader = OpusReader(io.BytesIO(data))
    assert [reader.provide_opus_frame() for _ in frames] == frames
    with pytest.raises(EOFError, match="end of Opus stream"):
        reader.provide_opus_frame()
    assert isinstance(reader, OpusFrameProvider) and isinstance(writer, OpusFrameReceiver)


@pytest.mark.parametrize(
    "data, message",
    [(b"\x05\x00", "inside a length prefix"), (b"\x05\x00\x00\x00abc", "inside a frame"),
     (b"\xff\xff\xff\xff", "exceeds the maximum")],
)
def test_opus_reader_bad_streams(data, message):
    with pytest.raises((EOFError, ValueError), match=message):
        OpusReader(io.BytesIO(data)).provide_opus_frame()


async def test_async_opus_reader_buffers_ahead():
    frames = [os.urandom(20) for _ in range(10)]
    stream = asyncio.StreamReader()
    reader = AsyncOpusReader(stream, buffer_frames=4)
    reader.start()
    assert reader.provide_opus_frame() is None  # nothing arrived yet: not the end
    for f in frames:
        stream.feed_data(struct.pack("<I", len(f)) + f)
    stream.feed_eof()
    got = []
    for _ in range(100):
        frame = None
        try:
            frame = reader.provide_opus_frame()
        except EOFError:
            break
        if frame is not None:
            got.append(frame)
        await asyncio.sleep(0)
    assert got == frames
    reader.close()


async def test_async_opus_reader_reports_cut_stream():
    stream = asyncio.StreamReader()
    reader = AsyncOpusReader(stream)
    reader.start()
    stream.feed_data(b"\x09\x00\x00\x00abc")
    stream.feed_eof()
    await asyncio.sleep(0.01)
    with pytest.raises(EOFError, match="cut inside a frame"):
        reader.provide_opus_frame()
    with pytest.raises(EOFError, match="end of Opus stream"):
        reader.provide_opus_frame()
    reader.close()


async def test_opus_writer_on_an_asyncio_stream_writer():
    received = asyncio.Queue()

    async def handle(reader, writer):
        frames = AsyncOpusReader(reader)
        frames.start()
        got = []
        while True:
            try:
                frame = frames.provide_opus_frame()
            except EOFError:
                break
            if frame is None:
                await asyncio.sleep(0.001)
            else:
                got.append(frame)
        received.put_nowait(got)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    sink = OpusWriter(writer)
    frames = [os.urandom(n) for n in (5, 80, 160)]
    for f in frames:
        sink.receive_opus_frame(7, Packet(0, 0, 0, f))
    sink.close()
    await writer.drain()
    writer.close()
    assert await asyncio.wait_for(received.get(), 5) == frames
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_oversized_and_garbage_datagrams_cost_nothing():
    transport, peer = await start_peer()
    conn = UDPConn()
    try:
        await conn.open("127.0.0.1", transport.get_extra_info("sockname")[1], 2)
        conn.set_secret_key(MODE, KEY)
        good = Packetizer(3, MODE, KEY).packetize(b"fine")
        transport.sendto(bytes(60000), peer.client)  # far past any voice packet
        transport.sendto(b"\x80\x78" + os.urandom(500), peer.client)  # looks like RTP, fails authentication
        transport.sendto(b"\x01", peer.client)
        transport.sendto(good, peer.client)
        conn.set_read_deadline(2)
        assert (await conn.read_packet()).opus == b"fine"
        assert conn.ignored == 2 and conn.decrypt_failures == 1
    finally:
        conn.close()
        transport.close()
