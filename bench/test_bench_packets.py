"""Per-packet cost of the packet core: compiled twin vs pure twin vs discord.py vs native C.

Every contender processes a batch of ``BATCH`` packets per round (a Python loop for
the Python-level contenders, a C loop for the native reference), so the per-packet
time is the round time divided by ``BATCH``.  Run side by side in one process:

    pytest bench/test_bench_packets.py --benchmark-json=bench/packets.json
    python bench/report.py bench/packets.json
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import sysconfig
from types import SimpleNamespace

import nacl.bindings
import nacl.secret
import pytest

import fastvoice._rtp_py as rtp_py

try:
    import fastvoice._rtp_c as rtp_c
    import fastvoice._rtp_edge_c as edge_c
except ImportError:  # pure install: the compiled rows are skipped
    rtp_c = edge_c = None

BATCH = 1000
PAYLOAD = os.urandom(120)  # a typical 20 ms Opus frame at ~48 kbit/s
KEY = os.urandom(32)
SSRC = 0x1234ABCD
AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"

HERE = os.path.dirname(os.path.abspath(__file__))

needs_c = pytest.mark.skipif(rtp_c is None, reason="compiled twin not built")


@pytest.fixture(scope="module")
def native_lib(tmp_path_factory):
    """bench/rtp_native.c, compiled for this Python (loaded with the GIL held)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler for the native reference")
    out = str(tmp_path_factory.mktemp("rtp_native") / "rtp_native.so")
    include = sysconfig.get_paths()["include"]
    subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{include}", "-o", out, os.path.join(HERE, "rtp_native.c")],
                   check=True)
    lib = ctypes.PyDLL(out)
    lib.call_each.restype = ctypes.c_long
    lib.call_each.argtypes = [ctypes.py_object, ctypes.py_object, ctypes.py_object]
    return lib


@pytest.fixture(scope="module")
def call_from_c(native_lib):
    """``call_from_c(func, items, arg)``: ``func(item, arg)`` for each item, called from C the
    way an event loop's transport calls its protocol (no interpreter loop around the calls)."""
    return native_lib.call_each


@pytest.fixture(scope="module")
def native(native_lib):
    """The ceiling: ``native(mode, count, decrypt)`` runs ``count`` packets through PyNaCl's
    libsodium from a C loop, as the compiled core calls it."""
    lib = native_lib
    lib.rtp_loop.restype = ctypes.c_long
    lib.rtp_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                             ctypes.c_char_p, ctypes.c_long, ctypes.c_long, ctypes.c_int]
    import nacl._sodium

    sodium = ctypes.CDLL(nacl._sodium.__file__)

    def address(name):
        return ctypes.cast(getattr(sodium, name), ctypes.c_void_p).value

    def functions(mode):
        if mode == XCHACHA:
            return (address("crypto_aead_xchacha20poly1305_ietf_encrypt"),
                    address("crypto_aead_xchacha20poly1305_ietf_decrypt"), None, 0)
        try:  # the precomputed-key API, as the compiled core uses it when PyNaCl exports it
            state_bytes = ctypes.CFUNCTYPE(ctypes.c_size_t)(address("crypto_aead_aes256gcm_statebytes"))()
            return (address("crypto_aead_aes256gcm_encrypt_afternm"), address("crypto_aead_aes256gcm_decrypt_afternm"),
                    address("crypto_aead_aes256gcm_beforenm"), state_bytes)
        except AttributeError:
            return address("crypto_aead_aes256gcm_encrypt"), address("crypto_aead_aes256gcm_decrypt"), None, 0

    def run(mode, count, decrypt=False):
        failures = lib.rtp_loop(*functions(mode), KEY, PAYLOAD, len(PAYLOAD), count, int(decrypt))
        assert failures == 0, "native reference loop failed"

    return run
modes = pytest.mark.parametrize(
    "mode",
    [
        pytest.param(AES, marks=pytest.mark.skipif(not rtp_py.aes256gcm_available(), reason="no AES-GCM on this CPU")),
        XCHACHA,
    ],
)


def _discordpy_client(mode):
    from discord.voice_client import VoiceClient

    vc = VoiceClient.__new__(VoiceClient)
    vc._connection = SimpleNamespace(dave_session=None, can_encrypt=False, ssrc=SSRC, mode=mode, secret_key=list(KEY))
    vc.sequence = vc.timestamp = vc._incr_nonce = 0
    return vc


def _discordpy_style_aes_send(vc, data):
    # discord.py 2.7 has no AES-GCM; this is its rtpsize send step with the AES cipher swapped in.
    header = bytearray(12)
    header[0] = 0x80
    header[1] = 0x78
    struct.pack_into(">H", header, 2, vc.sequence)
    struct.pack_into(">I", header, 4, vc.timestamp)
    struct.pack_into(">I", header, 8, vc.ssrc)
    nonce = bytearray(12)
    nonce[:4] = struct.pack(">I", vc._incr_nonce)
    vc.checked_add("_incr_nonce", 1, 4294967295)
    sealed = nacl.bindings.crypto_aead_aes256gcm_encrypt(bytes(data), bytes(header), bytes(nonce), bytes(vc.secret_key))
    return bytes(header) + sealed + nonce[:4]


def _send_batch(packetize):
    payload = PAYLOAD
    for _ in range(BATCH):
        packetize(payload)


# ---------------------------------------------------------------- send


@modes
def test_send_native(benchmark, mode, native):
    benchmark.group = f"send {mode}"
    benchmark.extra_info.update(contender="native C loop", batch=BATCH)
    benchmark(native, mode, BATCH)


@needs_c
@modes
def test_send_compiled(benchmark, mode):
    benchmark.group = f"send {mode}"
    benchmark.extra_info.update(contender="fastvoice compiled", batch=BATCH)
    benchmark(_send_batch, rtp_c.Packetizer(SSRC, mode, KEY).packetize)


@modes
def test_send_pure(benchmark, mode):
    benchmark.group = f"send {mode}"
    benchmark.extra_info.update(contender="fastvoice pure", batch=BATCH)
    benchmark(_send_batch, rtp_py.Packetizer(SSRC, mode, KEY).packetize)


@modes
def test_send_discordpy(benchmark, mode):
    pytest.importorskip("discord")
    benchmark.group = f"send {mode}"
    vc = _discordpy_client(mode)
    if mode == XCHACHA:
        benchmark.extra_info.update(contender="discord.py 2.7 _get_voice_packet", batch=BATCH)

        def step(data, vc=vc):
            packet = vc._get_voice_packet(data)
            vc.checked_add("sequence", 1, 65535)
            vc.checked_add("timestamp", 960, 4294967295)
            return packet
    else:
        benchmark.extra_info.update(contender="discord.py-style (AES swapped in)", batch=BATCH)

        def step(data, vc=vc):
            packet = _discordpy_style_aes_send(vc, data)
            vc.checked_add("sequence", 1, 65535)
            vc.checked_add("timestamp", 960, 4294967295)
            return packet

    benchmark(_send_batch, step)


# ---------------------------------------------------------------- receive


def _stream(mode):
    # A real stream: consecutive sequence numbers and timestamps (so every packet passes
    # the duplicate window, and its fields are not small cached ints).
    sender = rtp_py.Packetizer(SSRC, mode, KEY, sequence=40000, timestamp=123456789, nonce=99)
    return [sender.packetize(PAYLOAD) for _ in range(BATCH)]


def _dispatch_batch(dispatch, table, datagrams):
    for datagram in datagrams:
        dispatch(datagram, table)


def _table(twin):
    t = twin.SSRCTable()
    for i in range(20):  # a busy channel
        t.set(SSRC + i, 10**17 + i)
    return t


@modes
def test_receive_native(benchmark, mode, native):
    benchmark.group = f"receive {mode}"
    benchmark.extra_info.update(contender="native C loop", batch=BATCH)
    benchmark(native, mode, BATCH, True)


@needs_c
@modes
def test_receive_compiled(benchmark, mode, call_from_c):
    # The production entry point: the socket's DatagramRouter, called from C per datagram
    # the way the event loop's transport calls its protocol (address check, size check,
    # depacketize, SSRC routing, duplicate window, handler call; the handler is a builtin
    # that does nothing, as the receiver is the user's).
    benchmark.group = f"receive {mode}"
    benchmark.extra_info.update(contender="fastvoice compiled", batch=BATCH)
    stream, table = _stream(mode), _table(rtp_c)
    got = []
    router = edge_c.DatagramRouter(None, 4096, None)
    router.remote = ("127.0.0.1", 5000)
    router.route(rtp_c.Depacketizer(mode, KEY), table, got.append)
    call_from_c(router.datagram_received, stream[:2], ("127.0.0.1", 5000))
    assert [p.user_id for p in got] == [10**17, 10**17] and router.ignored == 0
    # The handler is the user's receiver: here the cheapest C builtin that takes one object
    # (``callable``: no allocation, unlike ``id`` which builds an int and raises an audit event).
    router.route(rtp_c.Depacketizer(mode, KEY), table, callable)
    benchmark(call_from_c, router.datagram_received, stream, ("127.0.0.1", 5000))
    assert router.ignored == router.decrypt_failures == 0


@needs_c
@modes
def test_receive_compiled_python_loop(benchmark, mode):
    # The same depacketize + routing call made from a Python loop (interpreter cost included).
    benchmark.group = f"receive {mode}"
    benchmark.extra_info.update(contender="fastvoice compiled, dispatch from a Python loop", batch=BATCH)
    stream, table = _stream(mode), _table(rtp_c)
    dispatch = rtp_c.Depacketizer(mode, KEY).dispatch
    assert [dispatch(d, table).user_id for d in stream[:2]] == [10**17, 10**17]
    benchmark(_dispatch_batch, dispatch, table, stream)


@modes
def test_receive_pure(benchmark, mode):
    benchmark.group = f"receive {mode}"
    benchmark.extra_info.update(contender="fastvoice pure", batch=BATCH)
    benchmark(_dispatch_batch, rtp_py.Depacketizer(mode, KEY).dispatch, _table(rtp_py), _stream(mode))


class _DiscordPyStyleReceiver:
    """The receive path as discord.py-family code writes it (discord-ext-voice-recv's shape):
    struct-parse the header, decrypt with PyNaCl, strip the extension, map the SSRC with a dict."""

    def __init__(self, mode):
        self.mode = mode
        self.box = nacl.secret.Aead(KEY) if mode == XCHACHA else None
        self.ssrc_to_user = {SSRC + i: 10**17 + i for i in range(20)}

    def receive(self, data):
        b0 = data[0]
        cc = b0 & 0x0F
        hlen = 12 + 4 * cc + (4 if b0 & 0x10 else 0)
        seq, ts, ssrc = struct.unpack_from(">HII", data, 2)
        header = data[:hlen]
        nonce = bytearray(24 if self.box else 12)
        nonce[:4] = data[-4:]
        if self.box is not None:
            plain = self.box.decrypt(bytes(data[hlen:-4]), bytes(header), bytes(nonce))
        else:
            plain = nacl.bindings.crypto_aead_aes256gcm_decrypt(bytes(data[hlen:-4]), bytes(header), bytes(nonce), KEY)
        if b0 & 0x10:
            words = struct.unpack_from(">H", data, hlen - 2)[0]
            plain = plain[4 * words :]
        user = self.ssrc_to_user.get(ssrc)
        return user, seq, ts, plain


@modes
def test_receive_discordpy_style(benchmark, mode):
    benchmark.group = f"receive {mode}"
    benchmark.extra_info.update(contender="discord.py-style receive", batch=BATCH)
    receiver = _DiscordPyStyleReceiver(mode)
    stream = _stream(mode)
    assert receiver.receive(stream[0])[3] == PAYLOAD

    def batch():
        for datagram in stream:
            receiver.receive(datagram)

    benchmark(batch)
