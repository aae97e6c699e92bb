"""The local voice server's media path: audio datagrams forwarded per second of CPU, on one core.

Each round queues ``BATCH`` audio datagrams (120-byte Opus payload, XChaCha20 or AES-256-GCM
``_rtpsize``) from the speakers of ``CALLS`` two-member calls in the server's UDP socket, then
lets the server take them in; the CPU time of that (``time.process_time``: user + kernel of
this process, so the send and receive system calls count, and other load on the shared
machine does not) gives datagrams forwarded per CPU second. Every datagram is decrypted and
re-encrypted for the call's listener and sent to it on loopback. Contenders:

- **engine c / engine py**: the server's path today, ``VoiceServer._on_udp``: the media engine
  (compiled or pure twin) reads the socket in batches, forwards, and the server then takes
  what it gathered (sessions heard; with ``full`` recording a ``ReceivedPacket`` per packet);
  recording ``off``, ``counts`` and ``full``;
- **python path**: ``VoiceServer._on_datagram`` per datagram after a ``recvfrom`` (the path
  before the engine, still used for everything the engine leaves and while fault knobs are set).

    pytest bench/test_bench_media.py --benchmark-json=bench/media.json
    python bench/report_media.py bench/media.json
"""

from __future__ import annotations

import importlib
import os
import socket
import time

import pytest

from fastvoice._env import NO_EXTENSIONS
from fastvoice.gateway_messages import GatewayMessageDataIdentify, SpeakingFlags
from fastvoice.rtp import Packetizer, aes256gcm_available
from fastvoice.testing import VoiceServer
from fastvoice.testing._server import ServerSession
from fastvoice.testing._sockbuf import enlarge_receive_buffer

CALLS = 100
BATCH = 2000
PAYLOAD = os.urandom(120)
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AES = "aead_aes256_gcm_rtpsize"
MODES = [XCHACHA] + ([AES] if aes256gcm_available() else [])


def _twin(name):
    if name == "c" and NO_EXTENSIONS:
        pytest.skip("FASTVOICE_NO_EXTENSIONS is set")
    try:
        return importlib.import_module(f"fastvoice.testing._media_{name}")
    except ImportError as exc:
        pytest.skip(f"media engine twin {name} not available: {exc}")


class _Transport:
    """What the server uses of its asyncio datagram transport, over a plain socket."""

    def __init__(self, sock):
        self._sock = sock
        self.sendto = sock.sendto

    def get_extra_info(self, name):
        return self._sock if name == "socket" else None


class _Rig:
    """A VoiceServer (not started: no websockets) with CALLS calls of a speaker and a listener,
    its UDP side on real loopback sockets."""

    def __init__(self, mode, engine=None, recording="full"):
        self.server_sock = self._sock()
        self.speaker_sock = self._sock()
        self.listener_sock = self._sock()
        self.server = VoiceServer(record_packets=BATCH, media_recording=recording)
        if engine is not None:
            self.server._media.engine = engine.MediaEngine(self.server.dave.groups, recording)
        self.server._udp = _Transport(self.server_sock)
        self.datagrams = []
        packetizers = []
        for call in range(CALLS):
            speaker = self._session(call, 2 * call + 1, mode, self.speaker_sock.getsockname())
            self._session(call, 2 * call + 2, mode, self.listener_sock.getsockname())
            packetizers.append(Packetizer(speaker.ssrc, mode, speaker.secret_key, sequence=call, timestamp=call * 7))
        while len(self.datagrams) < BATCH:
            for p in packetizers:
                self.datagrams.append(p.packetize(PAYLOAD))
        self.datagrams = self.datagrams[:BATCH]
        self.target = self.server_sock.getsockname()

    @staticmethod
    def _sock():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        enlarge_receive_buffer(sock.fileno())
        sock.setblocking(False)
        return sock

    def _session(self, call, user, mode, address):
        server = self.server
        identify = GatewayMessageDataIdentify(call + 1, user, f"s{user}", f"t{user}", max_dave_protocol_version=0)
        session = ServerSession(server, identify, call + 1, server._new_ssrc())
        session.mode = mode
        session.secret_key = os.urandom(32)
        session.udp_address = address
        session.speaking = SpeakingFlags.MICROPHONE
        server.sessions.append(session)
        server._by_ssrc[session.ssrc] = session
        server._calls.setdefault((call + 1, call + 1), []).append(session)
        server._media.update(session)
        return session

    def fill(self):
        """Queue the batch in the server's socket (not measured); empty the listener's."""
        self._drain(self.listener_sock)
        for datagram in self.datagrams:
            self.speaker_sock.sendto(datagram, self.target)

    @staticmethod
    def _drain(sock):
        try:
            while True:
                sock.recv(4096)
        except BlockingIOError:
            pass

    def close(self):
        self.server._media.close()
        for sock in (self.server_sock, self.speaker_sock, self.listener_sock):
            sock.close()


def _measure(benchmark, rig, take_all, rounds=20):
    cpu = []

    def target():
        start = time.process_time()
        take_all()
        cpu.append(time.process_time() - start)

    try:
        benchmark.pedantic(target, setup=rig.fill, rounds=rounds, iterations=1, warmup_rounds=1)
        listener_got = 0
        try:
            while True:
                rig.listener_sock.recv(4096)
                listener_got += 1
        except BlockingIOError:
            pass
    finally:
        rig.close()
    assert not rig.server.rejected_datagrams, rig.server.rejected_datagrams[:1]
    assert listener_got > 0
    best = min(cpu)
    total = sum(cpu)
    benchmark.extra_info.update(
        batch=BATCH, calls=CALLS, rounds=len(cpu),
        cpu_s_per_round_best=best,
        datagrams_per_cpu_s_best=BATCH / best,
        datagrams_per_cpu_s_mean=BATCH * len(cpu) / total,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("recording", ["off", "counts", "full"])
@pytest.mark.parametrize("twin", ["c", "py"])
def test_media_engine(benchmark, twin, recording, mode):
    engine = _twin(twin)
    rig = _Rig(mode, engine, recording)
    benchmark.group = f"media forward {mode}"
    benchmark.extra_info.update(contender=f"engine {twin}", recording=recording)
    server = rig.server

    def take_all():
        sock = rig.server_sock
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            server._on_udp(data, addr)

    _measure(benchmark, rig, take_all)
    assert server.media_stats()["forwarded"] >= BATCH


@pytest.mark.parametrize("mode", MODES)
def test_media_python_path(benchmark, mode):
    rig = _Rig(mode, None, "full")
    benchmark.group = f"media forward {mode}"
    benchmark.extra_info.update(contender="python path", recording="full")
    server = rig.server

    def take_all():
        sock = rig.server_sock
        on_datagram = server._on_datagram
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            on_datagram(data, addr)

    _measure(benchmark, rig, take_all, rounds=8)
    assert server.media_stats()["forwarded"] == 0
