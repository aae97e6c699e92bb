"""Coverage-guided fuzzing of everything that parses bytes from the network.

Targets (pick with ``--target``; ``all`` cycles through them):

- ``rtp``: ``Depacketizer.depacketize`` and ``dispatch`` (SSRC routing and the duplicate
  window, twins compared) on raw datagrams AND on datagrams that pass
  authentication (the input chooses header bits, CSRCs, extension and padding lengths,
  and the bytes are sealed with the key), for every mode, differentially: the compiled and
  the pure twin must return the same packet or both raise ``DecryptionFailedError``;
  nothing else may escape. The same datagrams (and a keepalive-shaped one) also go through
  each twin's ``DatagramRouter``, the socket's entry point: the twins must deliver the same
  packets and count the same drops (``ignored``, ``decrypt_failures``, ``duplicates``,
  ``keepalives``). ``Packetizer.packetize`` (marker bit from the input) must give the same
  bytes in both twins and depacketize back. IP discovery parsing rides along (only
  ``IPDiscoveryError``).
- ``ssrc``: a sequence of ``SSRCTable`` operations decoded from the input, both twins
  against a dict model.
- ``gateway``: ``decode_message`` (JSON text), ``decode_server_binary`` and
  ``decode_client_binary``: only ``GatewayDecodeError`` may escape.
- ``gateway_protocol``: one sans-I/O ``GatewayProtocol`` driven by operations decoded from the
  input (raw and well-formed text frames, binary frames, time passing with heartbeats, closes
  with any code, new connections, new sessions): nothing may escape, and ``seq_ack``, the
  heartbeat frames, the close decisions (against the close code table) and the frames to send
  must stay consistent; no event may show the token or the session id.
- ``opus``: ``OpusDecoder.decode`` differentially: the compiled and the pure twin, whose
  decoders live across inputs, must return the same PCM or both raise ``OpusDecodeError``
  with the same code; nothing else may escape. The first byte picks the output format,
  whether to reset, conceal or use FEC, and whether the rest IS the packet or patches a real
  packet of the seed corpus (byte pairs: position, XOR; an odd last byte cuts the packet), so
  that libopus's decoding paths are reached although their coverage is not seen. Needs libopus.

    python ci/fuzz.py --target all --seconds 120        # what CI runs
    python ci/fuzz.py --target rtp --seconds 3600       # a longer local campaign

Uses atheris (coverage of the pure-Python code guides it) when it is installed
(``pip install -e ".[test,fuzz]"``), else a seeded random mutator over the corpus.

``--native`` adds the compiled twin's own C branches to the coverage that guides atheris:
it compiles the Cython-generated C of ``fastvoice._rtp_c`` (and ``_rtp_c_ssrc``) with clang's
``-fsanitize=fuzzer-no-link`` (``CC``, or ``clang``/``clang-14`` on PATH; Debian: ``apt-get
install clang``) into a copy of the package under ``.fuzz_work/native/`` and fuzzes that::

    python ci/fuzz.py --target rtp --seconds 600 --native
Seeds live in ``ci/fuzz_corpus/<target>/``; what atheris finds goes to ``.fuzz_work/<target>/``
(not committed). Prints inputs run and time taken.
"""

from __future__ import annotations

import argparse
import json
import os
import importlib
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = [
    "aead_aes256_gcm_rtpsize",
    "aead_xchacha20_poly1305_rtpsize",
    "xsalsa20_poly1305",
    "xsalsa20_poly1305_suffix",
    "xsalsa20_poly1305_lite",
]
KEY = bytes(range(7, 39))


def _load():
    import fastvoice._rtp_py as py
    from fastvoice.errors import DecryptionFailedError, GatewayDecodeError, IPDiscoveryError

    try:
        import fastvoice._rtp_c as c
    except ImportError:
        c = None
    return py, c, DecryptionFailedError, GatewayDecodeError, IPDiscoveryError


PY = C = DecryptionFailedError = GatewayDecodeError = IPDiscoveryError = None
TWINS: list = []
DEPACKETIZERS: dict = {}
#: mode -> per twin (router, delivered packets); tables of their own, kept across inputs.
ROUTERS: dict = {}
SERVER = ("127.0.0.1", 50000)


def _init() -> None:
    """Import the code under test (inside atheris' instrumentation when it is used)."""
    global PY, C, DecryptionFailedError, GatewayDecodeError, IPDiscoveryError, TWINS, MODES, DEPACKETIZERS, ROUTERS
    PY, C, DecryptionFailedError, GatewayDecodeError, IPDiscoveryError = _load()
    import fastvoice.gateway_messages  # noqa: F401
    import fastvoice.ipdiscovery  # noqa: F401

    TWINS = [t for t in (C, PY) if t is not None]
    MODES = [m for m in MODES if m != "aead_aes256_gcm_rtpsize" or PY.aes256gcm_available()]
    DEPACKETIZERS = {m: [t.Depacketizer(m, KEY) for t in TWINS] for m in MODES}
    # Dispatch tables live across inputs, so each twin's duplicate window sees the same history.
    TABLES[:] = [t.SSRCTable() for t in TWINS]
    for table in TABLES:
        table.set(0xCAFEBABE, 42)
    ROUTERS = {}
    for m in MODES:
        ROUTERS[m] = []
        for t in TWINS:
            delivered: list = []
            edge = importlib.import_module(t.__name__.replace("_rtp_", "_rtp_edge_"))  # the twin's I/O edge
            router = edge.DatagramRouter(delivered.append, 4096, _Quiet())
            router.remote = SERVER
            table = t.SSRCTable()
            table.set(0xCAFEBABE, 42)
            router.route(t.Depacketizer(m, KEY), table, delivered.append)
            ROUTERS[m].append((router, delivered))
    _init_opus()


TABLES: list = []


def _outcome(depacketizer, data, table=None):
    try:
        p = depacketizer.depacketize(data) if table is None else depacketizer.dispatch(data, table)
    except DecryptionFailedError as exc:
        return ("failed", str(exc))
    if p is None:
        return None
    return (p.sequence, p.timestamp, p.ssrc, p.opus, p.marker, p.payload_type, p.csrcs, p.extension_profile,
            p.extension, p.user_id)


def _seal(mode: str, data: bytes) -> bytes:
    """Build a datagram that authenticates: header choices and plaintext come from ``data``."""
    import nacl.bindings as nb

    if len(data) < 6:
        return data
    b0 = 0x80 | (data[0] & 0x3F)  # P, X and CC from the input
    b1 = (data[1] & 0x80) | 0x78
    cc = b0 & 0x0F
    body = data[6:]
    header = struct.pack(">BBHII", b0, b1, data[2] | data[3] << 8, 0x01020304, 0xCAFEBABE)
    header += body[: 4 * cc].ljust(4 * cc, b"\0")
    body = body[4 * cc:]
    if mode.startswith("aead"):
        if b0 & 0x10:
            header += struct.pack(">HH", 0xBEDE, data[4] & 0x3F)  # a length the plaintext may not hold
        suffix = struct.pack(">I", data[5])
        if mode.startswith("aead_aes"):
            sealed = nb.crypto_aead_aes256gcm_encrypt(body, header, suffix + bytes(8), KEY)
        else:
            sealed = nb.crypto_aead_xchacha20poly1305_ietf_encrypt(body, header, suffix + bytes(20), KEY)
        return header + sealed + suffix
    fixed, clear = header[:12], header[12:]
    if mode == "xsalsa20_poly1305":
        return fixed + nb.crypto_secretbox_easy(clear + body, fixed + bytes(12), KEY)
    if mode == "xsalsa20_poly1305_suffix":
        nonce = bytes(24)
        return fixed + nb.crypto_secretbox_easy(clear + body, nonce, KEY) + nonce
    suffix = struct.pack(">I", data[5])
    return fixed + nb.crypto_secretbox_easy(clear + body, suffix + bytes(20), KEY) + suffix


class _Quiet:
    """A logger that drops everything (routers log forgeries at debug level)."""

    def debug(self, *args, **kwargs) -> None:
        pass


def _route(router, delivered: list, datagram: bytes) -> tuple:
    before = (router.ignored, router.decrypt_failures, router.duplicates, router.keepalives)
    router.datagram_received(datagram, SERVER)
    after = (router.ignored, router.decrypt_failures, router.duplicates, router.keepalives)
    got = [(p.sequence, p.timestamp, p.ssrc, p.opus, p.marker, p.csrcs, p.extension, p.user_id) for p in delivered]
    delivered.clear()
    return tuple(b - a for a, b in zip(before, after)), got


def fuzz_rtp(data: bytes) -> None:
    from fastvoice.ipdiscovery import parse_ip_discovery_response

    if not data:
        return
    mode = MODES[data[0] % len(MODES)]
    payload = data[1:]
    for datagram in (payload, _seal(mode, payload), payload[:4].ljust(4, b"\0") + bytes(4)):
        results = [_outcome(d, datagram) for d in DEPACKETIZERS[mode]]
        if len(results) == 2 and results[0] != results[1]:
            raise AssertionError(f"twins disagree in {mode}: {results[0]!r} != {results[1]!r}")
        routed = [_outcome(d, datagram, t) for d, t in zip(DEPACKETIZERS[mode], TABLES)]
        if len(routed) == 2 and routed[0] != routed[1]:
            raise AssertionError(f"twins route differently in {mode}: {routed[0]!r} != {routed[1]!r}")
        entry = [_route(router, delivered, datagram) for router, delivered in ROUTERS[mode]]
        if len(entry) == 2 and entry[0] != entry[1]:
            raise AssertionError(f"twins' routers differ in {mode}: {entry[0]!r} != {entry[1]!r}")
        if len(datagram) == 8 and datagram[4:] == bytes(4) and entry[0][0] != (0, 0, 0, 1):
            raise AssertionError(f"a keepalive was not counted as one: {entry[0]!r}")
    if mode != "xsalsa20_poly1305_suffix" and len(payload) >= 7:
        # Packing: the marker bit and counters from the input, the same bytes from both twins.
        seq, ts = struct.unpack_from("<HI", payload)
        marker = bool(payload[6] & 1)
        packed = [t.Packetizer(0xCAFEBABE, mode, KEY, sequence=seq, timestamp=ts).packetize(payload[7:], marker=marker)
                  for t in TWINS]
        if len(packed) == 2 and packed[0] != packed[1]:
            raise AssertionError(f"twins pack differently in {mode}")
        back = DEPACKETIZERS[mode][0].depacketize(packed[0])
        if (back.sequence, back.timestamp, back.marker, back.opus) != (seq, ts, marker, payload[7:]):
            raise AssertionError(f"a packed packet does not depacketize back in {mode}")
    try:
        parse_ip_discovery_response(payload, 0xCAFEBABE)
    except IPDiscoveryError:
        pass


def fuzz_ssrc(data: bytes) -> None:
    tables = [t.SSRCTable() for t in TWINS]
    model: dict[int, int] = {}
    for i in range(0, len(data) - 2, 3):
        op, ssrc, user = data[i] % 3, data[i + 1] * 16, data[i + 2] % 5
        for table in tables:
            if op == 0:
                table.set(ssrc, user)
            elif op == 1:
                table.remove(ssrc)
            else:
                table.remove_user(user)
        if op == 0:
            model[ssrc] = user
        elif op == 1:
            model.pop(ssrc, None)
        else:
            model = {s: u for s, u in model.items() if u != user}
    for table in tables:
        assert len(table) == len(model)
        assert sorted((e.ssrc, e.user_id) for e in table) == sorted(model.items())
        for s in range(0, 256 * 16, 16):
            assert table.user_id(s) == model.get(s)


def fuzz_gateway(data: bytes) -> None:
    from fastvoice.gateway_messages import decode_client_binary, decode_message, decode_server_binary

    for decode, frame in (
        (decode_message, data.decode("utf-8", "replace")),
        (decode_message, data),
        (decode_server_binary, data),
        (decode_client_binary, data),
    ):
        try:
            decode(frame)
        except GatewayDecodeError:
            pass


# Valid server frames the protocol fuzz target can pick by index (the input also writes raw ones).
_PROTOCOL_FRAMES = [
    '{"op":8,"d":{"heartbeat_interval":%d}}',
    '{"op":2,"d":{"ssrc":%d,"ip":"127.0.0.1","port":5000,"modes":["aead_xchacha20_poly1305_rtpsize"]}}',
    '{"op":6,"d":{"t":%d}}',
    '{"op":9,"d":null,"seq":%d}',
    '{"op":5,"d":{"speaking":1,"ssrc":7,"user_id":"5"},"seq":%d}',
    '{"op":11,"d":{"user_ids":["%d"]}}',
    '{"op":21,"d":{"protocol_version":1,"transition_id":%d}}',
    '{"op":%d,"d":{}}',
]


def fuzz_gateway_protocol(data: bytes) -> None:
    """Drive one ``GatewayProtocol`` with operations decoded from ``data``; check its invariants."""
    from fastvoice.close_codes import CloseBehaviour, gateway_close_event_code_by_code
    from fastvoice.gateway_protocol import CloseAction, GatewayProtocol, State, Status

    if not data:
        return
    options = data[0]
    protocol = GatewayProtocol(
        max_missed_heartbeat_acks=1 + (options & 3),
        max_reconnect_attempts=(options >> 2) & 7,
        max_client_bug_retries=(options >> 5) & 3,
        auto_reconnect=not options & 0x80,
    )
    state = State(1, 2, session_id="fuzz-session", token="fuzz-token", endpoint="example.invalid")
    protocol.start(state)
    now = 0.0
    i = 1
    while i < len(data):
        kind, i = data[i] % 8, i + 1
        arg = data[i:i + 2].rjust(2, b"\0")
        number = int.from_bytes(arg, "big")
        now += data[i] / 16 if i < len(data) else 0.0
        if kind == 0:  # a raw text frame
            size = data[i] if i < len(data) else 0
            chunk, i = data[i + 1:i + 1 + size], i + 1 + size
            events = protocol.receive_text(chunk.decode("utf-8", "replace"), now)
        elif kind == 1:  # a raw binary frame
            size = data[i] if i < len(data) else 0
            chunk, i = data[i + 1:i + 1 + size], i + 1 + size
            events = protocol.receive_bytes(chunk)
        elif kind == 2:  # a well-formed frame
            template = _PROTOCOL_FRAMES[number % len(_PROTOCOL_FRAMES)]
            events = protocol.receive_text(template % (number >> 3), now)
            i += 2
        elif kind == 3:  # time passes; a heartbeat when one is due
            if protocol.heartbeat_due(now) and not protocol.is_zombie():
                beat = json.loads(protocol.heartbeat(now, now))
                assert beat["op"] == 3 and beat["d"]["seq_ack"] == protocol.seq_ack, beat
                assert protocol.next_heartbeat_at is not None and protocol.next_heartbeat_at > now
            events = []
            i += 1
        elif kind == 4:  # the connection closes
            code = None if number < 0x100 else (number if number < 0x1000 else 4000 + number % 24)
            zombie = bool(number & 1) and protocol.is_zombie()
            decision = protocol.on_close(code, zombie)
            entry = gateway_close_event_code_by_code(code)
            assert decision.entry is entry
            if entry.behaviour is CloseBehaviour.STOP and not zombie:
                assert decision.action is CloseAction.STOP, (code, decision)
            if decision.action is CloseAction.RESUME:
                assert protocol.session_ready and decision.behaviour is CloseBehaviour.RESUME
            if decision.action is not CloseAction.STOP:
                assert 1 <= decision.attempts <= protocol.max_reconnect_attempts
            assert protocol.status is Status.DISCONNECTED
            events = []
            i += 2
        elif kind == 5:  # a new connection
            protocol.connecting()
            protocol.connected()
            assert protocol.missed_heartbeat_acks == 0
            events = []
        elif kind == 6:
            protocol.start(state)
            assert protocol.seq_ack == -1
            events = []
        else:
            events = []
            for frame in protocol.data_to_send():
                assert isinstance(frame, str) and json.loads(frame)["op"] in (0, 7), frame
            protocol.frames_sent()
        assert -1 <= protocol.seq_ack <= 2**63 - 1
        assert isinstance(protocol.status, Status)
        for event in events:
            text = repr(event)
            assert "fuzz-token" not in text and "fuzz-session" not in text, text


OPUS_OUTPUTS = [(48000, 2), (48000, 1), (24000, 2), (16000, 1), (12000, 2), (8000, 1)]
OPUS_DECODERS: list = []  # per output format, one decoder per twin; they live across inputs
OPUS_TWINS: list = []
OPUS_UNAVAILABLE: str | None = None  # why libopus could not be loaded
OpusDecodeError = None


def _init_opus() -> None:
    global OpusDecodeError, OPUS_UNAVAILABLE
    import fastvoice._opus_py as py
    from fastvoice._opus_common import OpusDecodeError as error
    from fastvoice._opus_common import OpusNotAvailableError

    try:
        import fastvoice._opus_c as c
    except ImportError:
        c = None
    OpusDecodeError = error
    OPUS_TWINS[:] = [t for t in (c, py) if t is not None]
    try:
        OPUS_DECODERS[:] = [[t.OpusDecoder(*output) for t in OPUS_TWINS] for output in OPUS_OUTPUTS]
    except OpusNotAvailableError as exc:
        OPUS_UNAVAILABLE = str(exc)


def _opus_outcome(decoder, packet, fec, conceal, reset):
    try:
        if reset:
            decoder.reset()
        out = [decoder.decode(None)] if conceal else []
        return out + [decoder.decode(packet, fec=fec)]
    except OpusDecodeError as exc:
        return ("failed", exc.code, str(exc))


OPUS_RAW = 0x20  # flag: the input's rest is the packet (else it patches a real one)
OPUS_BASES: list[bytes] = []  # real packets: the raw seeds of the corpus


def _patched_packet(data: bytes) -> bytes:
    if not OPUS_BASES:
        OPUS_BASES.extend(seed[1:] for seed in corpus("opus") if seed and seed[0] & OPUS_RAW)
    if not data:
        return b""
    packet = bytearray(OPUS_BASES[data[0] % len(OPUS_BASES)])
    patches = data[1:]
    for i in range(0, len(patches) - 1, 2):
        packet[patches[i] % len(packet)] ^= patches[i + 1]
    if len(patches) % 2:
        del packet[patches[-1] % len(packet):]
    return bytes(packet)


def fuzz_opus(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    packet = data[1:] if flags & OPUS_RAW else _patched_packet(data[1:])
    decoders = OPUS_DECODERS[flags % len(OPUS_OUTPUTS)]
    fec, conceal, reset = bool(flags & 0x08), bool(flags & 0x10), flags & 0xC0 == 0xC0
    results = [_opus_outcome(d, packet, fec, conceal, reset) for d in decoders]
    if len(results) == 2 and results[0] != results[1]:
        raise AssertionError(f"opus twins disagree on {data[:60].hex()}: {str(results[0])[:120]} != "
                             f"{str(results[1])[:120]}")


TARGETS = {
    "rtp": fuzz_rtp,
    "ssrc": fuzz_ssrc,
    "gateway": fuzz_gateway,
    "gateway_protocol": fuzz_gateway_protocol,
    "opus": fuzz_opus,
}


def corpus(target: str) -> list[bytes]:
    folder = os.path.join(HERE, "fuzz_corpus", target)
    seeds = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as fh:
                seeds.append(fh.read())
    return seeds or [b""]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.3 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif choice < 0.5:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif choice < 0.65 and b:
            del b[rng.randrange(len(b))]
        elif choice < 0.8:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif b:
            cut = rng.randrange(len(b))
            b = b[:cut]
    return bytes(b[:4096])


def run_random(target: str, seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    pool = corpus(target)
    fn = TARGETS[target]
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool))
        try:
            fn(data)
        except Exception:
            print(f"crash in {target} on input {data.hex()}", file=sys.stderr)
            raise
        if rng.random() < 0.01 and len(pool) < 2000:
            pool.append(data)
        runs += 1
    return runs


def run_atheris(target: str, seconds: float) -> None:
    import atheris

    fn = TARGETS[target]
    seeds = os.path.join(HERE, "fuzz_corpus", target)
    # libFuzzer adds what it finds to the first corpus folder: keep that out of the committed seeds.
    work = os.path.join(os.path.dirname(HERE), ".fuzz_work", target)
    os.makedirs(work, exist_ok=True)
    # A failing input is written beside them (and printed in base64 on the console).
    args = [sys.argv[0], f"-max_total_time={int(seconds)}", "-max_len=2048", "-print_final_stats=1",
            "-artifact_prefix=" + os.path.join(work, ""), work]
    if os.path.isdir(seeds):
        args.append(seeds)
    atheris.Setup(args, fn)
    atheris.Fuzz()


def native_toolchain() -> tuple[str, str, str | None]:
    """``(clang, libFuzzer runtime, None)``, or what is missing for ``--native`` as the third item."""
    import shutil
    import subprocess

    cc = os.environ.get("CC") or shutil.which("clang") or shutil.which("clang-14") or ""
    if not cc or "clang" not in os.path.basename(cc):
        return cc, "", "it needs clang (set CC, or apt-get install clang)"
    resource = subprocess.run([cc, "-print-resource-dir"], check=True, capture_output=True, text=True).stdout.strip()
    runtime = os.path.join(resource, "lib", "linux", "libclang_rt.fuzzer_no_main-x86_64.a")
    if not os.path.exists(runtime):
        return cc, runtime, (f"clang's libFuzzer runtime is missing ({os.path.basename(runtime)}; "
                             "Debian: apt-get install libclang-rt-dev or libclang-rt-14-dev)")
    return cc, runtime, None


def build_native() -> str:
    """Compile an instrumented ``_rtp_c`` (with its SSRC table ``_rtp_c_ssrc``) and ``_opus_c``
    into a copy of the package, and a bare libFuzzer;
    return the copy's root (``libfuzzer.so`` beside the package)."""
    import shutil
    import subprocess
    import sysconfig

    cc, runtime, missing = native_toolchain()
    if missing:
        raise SystemExit(f"--native: {missing}")
    repo = os.path.dirname(HERE)
    root = os.path.join(repo, ".fuzz_work", "native")
    shutil.rmtree(root, ignore_errors=True)
    package = os.path.join(root, "fastvoice")
    shutil.copytree(os.path.join(repo, "fastvoice"), package,
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.html"))
    import importlib.util

    for module in ("_rtp_c", "_rtp_c_ssrc", "_opus_c"):  # _rtp_c cimports _rtp_c_ssrc
        pyx = os.path.join(repo, "fastvoice", module + ".pyx")
        built = os.path.join(repo, "fastvoice", module + ".c")  # left by the package's own build
        if importlib.util.find_spec("Cython") is not None:
            source = os.path.join(root, module + ".c")
            subprocess.run([sys.executable, "-m", "cython", "-3", "-o", source, pyx], check=True)
        elif os.path.exists(built) and os.path.getmtime(built) >= os.path.getmtime(pyx):
            source = built
        else:
            raise SystemExit(f"--native needs the C that Cython makes of {module}.pyx: pip install cython, "
                             "or rebuild the package (pip install -e .)")
        target = os.path.join(package, module + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run([cc, "-O1", "-g", "-fPIC", "-shared", "-fsanitize=fuzzer-no-link",
                        "-I" + sysconfig.get_paths()["include"], source, "-o", target], check=True)
    # libFuzzer alone, loaded before atheris: atheris then drives it ("preloaded") and the
    # instrumented extension's coverage hooks resolve to it.
    subprocess.run([cc, "-shared", "-o", os.path.join(root, "libfuzzer.so"), "-Wl,--whole-archive", runtime,
                    "-Wl,--no-whole-archive", "-lstdc++", "-lpthread", "-lm"], check=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=120.0, help="total time budget")
    parser.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--check-native", action="store_true",
                        help="exit 0 if --native can run here (clang and its libFuzzer runtime), else say why and exit 1")
    parser.add_argument("--native", action="store_true",
                        help="also guide by the compiled twin's C coverage (needs clang and atheris)")
    args = parser.parse_args()
    if args.check_native:
        missing = native_toolchain()[2]
        if missing:
            print(f"fuzz --native cannot run here: {missing}")
        raise SystemExit(1 if missing else 0)
    if args.native and not os.environ.get("FASTVOICE_FUZZ_NATIVE"):
        import subprocess

        root = build_native()
        env = dict(os.environ, FASTVOICE_FUZZ_NATIVE=os.path.join(root, "libfuzzer.so"),
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        forwarded = [a for a in sys.argv[1:] if a != "--native"]
        raise SystemExit(subprocess.run([sys.executable, __file__, *forwarded, "--engine", "atheris", "--native"],
                                        env=env).returncode)
    if os.environ.get("FASTVOICE_FUZZ_NATIVE"):
        import ctypes

        ctypes.CDLL(os.environ["FASTVOICE_FUZZ_NATIVE"], mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    targets = list(TARGETS) if args.target == "all" else [args.target]
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
    native_child = bool(os.environ.get("FASTVOICE_FUZZ_NATIVE"))
    if engine == "atheris" and len(targets) == 1:
        import atheris

        # Coverage of fastvoice's own Python code (the pure twin, the decoders) guides the search.
        with atheris.instrument_imports(include=["fastvoice"]):
            _init()
    else:
        _init()
    if "opus" in targets and OPUS_UNAVAILABLE:
        if os.environ.get("FASTVOICE_REQUIRE_LIBOPUS") == "1":
            raise SystemExit(f"--target opus: {OPUS_UNAVAILABLE}")
        print(f"fuzz: target opus left out: {OPUS_UNAVAILABLE}", flush=True)
        targets.remove("opus")
    native = " (compiled twin instrumented)" if native_child else ""
    print(f"fuzz: engine={engine} twins={[t.IMPLEMENTATION for t in TWINS]} "
          f"opus twins={[t.IMPLEMENTATION for t in OPUS_TWINS]} targets={targets}{native}", flush=True)
    if native and len(targets) == 1:
        compiled = OPUS_TWINS[0] if targets == ["opus"] else C
        if compiled is None or ".fuzz_work" not in compiled.__file__:
            raise SystemExit("--native: the instrumented compiled twin was not the one imported")
    if engine == "atheris":
        if len(targets) > 1:
            # atheris runs one target per process: fan out.
            import subprocess

            for target in targets:
                subprocess.run([sys.executable, __file__, "--target", target, "--engine", "atheris",
                                "--seconds", str(args.seconds / len(targets)), *(["--native"] if native else [])],
                               check=True)
            return
        run_atheris(targets[0], args.seconds)
        return
    for target in targets:
        started = time.monotonic()
        runs = run_random(target, args.seconds / len(targets), args.seed)
        print(f"fuzz: {target}: {runs} inputs in {time.monotonic() - started:.1f} s, no failure", flush=True)


if __name__ == "__main__":
    main()
