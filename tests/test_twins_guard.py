"""Guards on the twin mechanism: the compiled twin really loads, and both twins match."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastvoice
from fastvoice._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS


def _public(module):
    return sorted(n for n in module.__all__)


def test_compiled_twin_loaded_when_required():
    if not REQUIRE_EXTENSIONS:
        pytest.skip("FASTVOICE_REQUIRE_EXTENSIONS not set")
    assert fastvoice.speedups_enabled() is True
    assert fastvoice.rtp.IMPLEMENTATION == "c"
    assert fastvoice.Packetizer.__module__ == "fastvoice._rtp_c"


def test_no_extensions_gives_pure():
    if not NO_EXTENSIONS:
        pytest.skip("FASTVOICE_NO_EXTENSIONS not set")
    assert fastvoice.speedups_enabled() is False
    assert fastvoice.Packetizer.__module__ == "fastvoice._rtp_py"


def test_twins_expose_same_names(rtp_c, rtp_py):
    assert _public(rtp_c) == _public(rtp_py)
    for name in rtp_py.__all__:
        a, b = getattr(rtp_c, name), getattr(rtp_py, name)
        assert type(a) is type(b) or (inspect.isclass(a) and inspect.isclass(b)) or (callable(a) and callable(b)), name
        if inspect.isclass(b):
            pub_b = {m for m in dir(b) if not m.startswith("_")}
            pub_a = {m for m in dir(a) if not m.startswith("_")}
            assert pub_a == pub_b, f"{name}: {pub_a ^ pub_b}"


def test_edge_twins_expose_same_names_and_signatures(rtp_c, rtp_py):
    import fastvoice._rtp_edge_c as edge_c
    import fastvoice._rtp_edge_py as edge_py

    assert _public(edge_c) == _public(edge_py) == ["DatagramRouter", "PreparedSlot", "SendTarget", "send_prepared"]
    for name in ("DatagramRouter", "PreparedSlot", "SendTarget"):
        c_cls, py_cls = getattr(edge_c, name), getattr(edge_py, name)
        pub_c = {m for m in dir(c_cls) if not m.startswith("_")}
        pub_py = {m for m in dir(py_cls) if not m.startswith("_")}
        if name != "DatagramRouter":  # slots of the pure twin are instance attributes
            pub_py |= set(py_cls.__slots__)
        assert pub_c == pub_py, f"{name}: {pub_c ^ pub_py}"
    router_c = edge_c.DatagramRouter(None, 1, None)
    router_py = edge_py.DatagramRouter(None, 1, None)
    for attr in ("slow", "ignored", "duplicates", "decrypt_failures", "keepalives", "remote", "fast", "slow_path",
                 "logger"):
        assert getattr(router_c, attr) == getattr(router_py, attr), attr


def test_ssrc_table_twins_expose_same_names_and_signatures(rtp_c, rtp_py):
    # The SSRC table is a module of its own in each twin (_rtp_c_ssrc / _rtp_py_ssrc); the
    # core modules re-export its classes, so both routes name the very same objects.
    import fastvoice._rtp_c_ssrc as ssrc_c
    import fastvoice._rtp_py_ssrc as ssrc_py

    assert _public(ssrc_c) == _public(ssrc_py) == ["SSRCEntry", "SSRCTable"]
    for name in ssrc_py.__all__:
        assert getattr(rtp_c, name) is getattr(ssrc_c, name), name
        assert getattr(rtp_py, name) is getattr(ssrc_py, name), name
        c_cls, py_cls = getattr(ssrc_c, name), getattr(ssrc_py, name)
        public = {m for m in dir(py_cls) if not m.startswith("_")}
        assert {m for m in dir(c_cls) if not m.startswith("_")} == public, name
        for meth in sorted(public):
            py_attr = getattr(py_cls, meth)
            if callable(py_attr) and not isinstance(py_attr, property):
                assert _params(getattr(c_cls, meth)) == _params(py_attr), f"{name}.{meth}"
    # (The constructors are compared call by call in test_twins_same_constructors.)


def test_the_core_twins_hold_no_io():
    # Sockets, syscalls, logging and the event loop belong to the I/O edge and above; the
    # packet core is bytes in, bytes or packets out. (Docstrings and comments are left out.)
    import re

    forbidden = re.compile(r"\b(socket|asyncio|logging|logger|os\.write|_os_write|send|sendto|recv|MSG_\w+)\b")
    root = Path(fastvoice.__file__).parent
    for name in ("_rtp_c.pyx", "_rtp_c_ssrc.pyx", "_rtp_c_ssrc.pxd", "_sodium.pxi", "_rtp_py.py", "_rtp_py_ssrc.py",
                 "_rtp_common.py"):
        text = re.sub(r'"""[\s\S]*?"""', "", (root / name).read_text())
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        found = sorted(set(forbidden.findall(code)))
        assert not found, f"{name} holds I/O: {found}"


def test_no_benchmark_harness_ships_in_the_compiled_modules(rtp_c):
    # The native reference loop and the call-from-C driver are the benchmarks' (bench/).
    for name in ("_native_reference_loop", "_call_from_c"):
        assert not hasattr(rtp_c, name), name


def _enum_constants(source_name):
    # NAME = value lines of the ``cdef enum:`` blocks of a compiled twin's source.
    import re

    source = (Path(fastvoice.__file__).parent / source_name).read_text()
    found = {}
    for block in re.findall(r"^cdef enum:\n((?:    .*\n)+)", source, re.M):
        for name, expr in re.findall(r"^    (\w+) = ([^#\n]+)", block, re.M):
            found[name] = eval(expr, {"__builtins__": {}})  # integer arithmetic only
    return found


def test_constants_copied_into_the_compiled_twins_match_the_shared_ones():
    # The compiled twins switch on C constants; their values are written once, in
    # _rtp_common, and copied by hand into the .pyx enums: they must not drift.
    from fastvoice import _rtp_common as common

    expected = {
        "TAG": common.TAG_SIZE,
        "MODE_AES": common.MODE_AES256GCM_RTPSIZE,
        "MODE_XCHACHA": common.MODE_XCHACHA20_RTPSIZE,
        "MODE_XSALSA": common.MODE_XSALSA20,
        "MODE_XSALSA_SUFFIX": common.MODE_XSALSA20_SUFFIX,
        "MODE_XSALSA_LITE": common.MODE_XSALSA20_LITE,
        "MAX_PAYLOAD": common.MAX_PAYLOAD,
        "KEEPALIVE_SIZE": common.KEEPALIVE_SIZE,
        **{outcome.name: int(outcome) for outcome in common.DispatchOutcome},
    }
    core, edge = _enum_constants("_rtp_c.pyx"), _enum_constants("_rtp_edge_c.pyx")
    assert set(core) | set(edge) == set(expected)
    for copied in (core, edge):
        assert copied == {name: expected[name] for name in copied}


def _params(obj):
    return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]


def test_twins_same_signatures(rtp_c, rtp_py):
    for name in ("Packetizer", "Depacketizer", "Packet", "SSRCEntry", "SSRCTable"):
        c_cls, py_cls = getattr(rtp_c, name), getattr(rtp_py, name)
        for meth in (m for m in dir(py_cls) if not m.startswith("_")):
            py_attr = getattr(py_cls, meth)
            if callable(py_attr) and not isinstance(py_attr, property):
                assert _params(getattr(c_cls, meth)) == _params(py_attr), f"{name}.{meth}"
    assert _params(rtp_c.aes256gcm_available) == _params(rtp_py.aes256gcm_available)


CONSTRUCTOR_CALLS = [
    # (class, args, kwargs): both twins must accept or reject each call alike.
    ("Packetizer", (1, "aead_xchacha20_poly1305_rtpsize", bytes(32)), {}),
    ("Packetizer", (1, "aead_xchacha20_poly1305_rtpsize", bytes(32)), {"sequence": 1, "timestamp": 2, "nonce": 3}),
    ("Packetizer", (1, "aead_xchacha20_poly1305_rtpsize", bytes(32), 5), {}),
    ("Packetizer", (), {"ssrc": 1, "mode": "aead_xchacha20_poly1305_rtpsize", "secret_key": bytes(32)}),
    ("Packetizer", (1, "aead_xchacha20_poly1305_rtpsize"), {}),
    ("Depacketizer", ("aead_xchacha20_poly1305_rtpsize", bytes(32)), {}),
    ("Depacketizer", (), {"mode": "aead_xchacha20_poly1305_rtpsize", "secret_key": bytes(32)}),
    ("Depacketizer", ("aead_xchacha20_poly1305_rtpsize",), {}),
    ("Packet", (1, 2, 3, b""), {}),
    ("Packet", (1, 2, 3, b"", True, 0x78, (1,), 0xBEDE, b"abcd"), {}),
    ("Packet", (), {"sequence": 1, "timestamp": 2, "ssrc": 3, "opus": b"", "extension": b""}),
    ("Packet", (1, 2, 3), {}),
    ("SSRCEntry", (1, 2), {"state": 3}),
    ("SSRCEntry", (1,), {}),
    ("SSRCTable", (), {}),
    ("SSRCTable", (1,), {}),
    ("SSRCTable", (), {"max_entries": 3}),
    ("SSRCTable", ("3",), {}),
    ("SSRCTable", (1, 2), {}),
]


@pytest.mark.parametrize("name, args, kwargs", CONSTRUCTOR_CALLS)
def test_twins_same_constructors(rtp_c, rtp_py, name, args, kwargs):
    outcomes = []
    for twin in (rtp_c, rtp_py):
        try:
            obj = getattr(twin, name)(*args, **kwargs)
            outcomes.append(repr(obj))
        except TypeError:
            outcomes.append("TypeError")
    assert outcomes[0] == outcomes[1]


def _implementation_in_subprocess(**env):
    full = dict(os.environ)
    full.pop("FASTVOICE_NO_EXTENSIONS", None)
    full.pop("FASTVOICE_REQUIRE_EXTENSIONS", None)
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", "import fastvoice; print(fastvoice.speedups_enabled(), fastvoice.Packet.__module__)"],
        env=full, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.split()


def test_env_switch_on_reimport(rtp_c):
    assert _implementation_in_subprocess(FASTVOICE_NO_EXTENSIONS="1") == ["False", "fastvoice._rtp_py"]
    assert _implementation_in_subprocess() == ["True", "fastvoice._rtp_c"]
    assert _implementation_in_subprocess(FASTVOICE_NO_EXTENSIONS="0") == ["True", "fastvoice._rtp_c"]


@pytest.mark.parametrize("missing", ["fastvoice._rtp_c", "fastvoice._rtp_c_ssrc"])
def test_require_without_compiled_twin_fails(missing):
    # Make a compiled module of the core unimportable (a None entry in sys.modules blocks the
    # import): without its SSRC table the compiled core cannot load either.
    code = (
        f"import sys; sys.modules[{missing!r}] = None; import fastvoice; "
        "print(fastvoice.speedups_enabled(), fastvoice.Packet.__module__)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    fallback = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert fallback.returncode == 0 and fallback.stdout.split() == ["False", "fastvoice._rtp_py"]
    env["FASTVOICE_REQUIRE_EXTENSIONS"] = "1"
    required = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert required.returncode != 0
    assert "ImportError: FASTVOICE_REQUIRE_EXTENSIONS is set" in required.stderr


# ------------------------------------------------------------------ the Opus decoder's twins


def test_compiled_opus_twin_loaded_when_required():
    if not REQUIRE_EXTENSIONS:
        pytest.skip("FASTVOICE_REQUIRE_EXTENSIONS not set")
    assert fastvoice.opus_decoder.IMPLEMENTATION == "c"
    assert fastvoice.OpusDecoder.__module__ == "fastvoice._opus_c"


def test_no_extensions_gives_pure_opus_decoder():
    if not NO_EXTENSIONS:
        pytest.skip("FASTVOICE_NO_EXTENSIONS not set")
    assert fastvoice.OpusDecoder.__module__ == "fastvoice._opus_py"


def test_opus_twins_expose_same_names_and_signatures(opus_c, opus_py):
    assert _public(opus_c) == _public(opus_py)
    assert opus_c.OpusDecodeError is opus_py.OpusDecodeError
    assert opus_c.OpusNotAvailableError is opus_py.OpusNotAvailableError
    c_cls, py_cls = opus_c.OpusDecoder, opus_py.OpusDecoder
    assert {m for m in dir(c_cls) if not m.startswith("_")} == {m for m in dir(py_cls) if not m.startswith("_")}
    for meth in ("decode", "reset"):
        assert _params(getattr(c_cls, meth)) == _params(getattr(py_cls, meth)), meth
    for args, kwargs in [((), {}), ((16000, 1), {}), ((), {"channels": 1}), ((), {"sample_rate": 8000}),
                         ((44100,), {}), ((48000, 2, 3), {}), ((), {"rate": 48000})]:
        outcomes = []
        for cls in (c_cls, py_cls):
            try:
                outcomes.append(repr(cls(*args, **kwargs)))
            except (TypeError, ValueError) as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[0] == outcomes[1], (args, kwargs, outcomes)


def _opus_implementation_in_subprocess(**env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", "import fastvoice; print(fastvoice.opus_decoder.IMPLEMENTATION)"],
        env=full, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


def test_opus_env_switch_on_reimport(opus_c):
    assert _opus_implementation_in_subprocess(FASTVOICE_NO_EXTENSIONS="1") == "py"
    assert _opus_implementation_in_subprocess() == "c"


def test_require_without_compiled_opus_twin_fails():
    code = "import sys; sys.modules['fastvoice._opus_c'] = None; import fastvoice; print(fastvoice.OpusDecoder.__module__)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVOICE_")}
    fallback = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert fallback.returncode == 0 and fallback.stdout.strip() == "fastvoice._opus_py"
    env["FASTVOICE_REQUIRE_EXTENSIONS"] = "1"
    required = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert required.returncode != 0
    assert "compiled Opus decoder fastvoice._opus_c" in required.stderr


# ------------------------------------------------------------------ libsodium in the compiled modules


def test_libsodium_loading_is_written_once():
    # The function pointers are taken in one place, fastvoice/_sodium.pxi, which each compiled
    # module that calls libsodium includes (a copy of the loader could drift from it).
    import re

    root = Path(fastvoice.__file__).parent
    sources = sorted(p for p in root.rglob("*") if p.suffix in (".pyx", ".pxd", ".pxi"))
    loaders = [p.relative_to(root).as_posix() for p in sources if "ffi.addressof" in p.read_text()]
    assert loaders == ["_sodium.pxi"]
    includes = re.compile(r'^include "((?:\.\./)*)_sodium\.pxi"$', re.M)
    users = {p.relative_to(root).as_posix() for p in sources if includes.search(p.read_text())}
    assert users == {"_rtp_c.pyx", "testing/_media_c.pyx"}
    for user in users:  # the relative path reaches the one file
        up = includes.search((root / user).read_text()).group(1)
        assert ((root / user).parent / up / "_sodium.pxi").resolve() == root / "_sodium.pxi"

