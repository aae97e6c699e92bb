"""What both twins of the Opus decoder share: finding libopus, argument checks and errors.

libopus is loaded at run time, once per process, by ``ctypes`` (``dlopen``/``dlsym``): the
pure twin calls it through ctypes, the compiled twin takes the same functions' addresses
and calls them from C.  Nothing of libopus is needed to build or import fastvoice.

Where it is looked for, in order: the path or name given to :func:`load_opus`, else the
``FASTVOICE_LIBOPUS`` environment variable (a path or a library name), else the
platform's usual names (``libopus.so.0`` on Linux, ``libopus.0.dylib`` and Homebrew's and
MacPorts' folders on macOS, ``opus.dll`` on Windows), else ``ctypes.util.find_library``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from types import SimpleNamespace
from typing import Any

from .errors import VoiceError

SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
CHANNELS = (1, 2)
# Larger than any Opus packet a sender makes (120 ms at 1275 bytes per 2.5 ms frame is
# ~61 KB, padding aside); it also keeps the length inside libopus's 32-bit argument.
MAX_PACKET_BYTES = 1 << 20

OPUS_OK = 0
OPUS_BAD_ARG = -1
OPUS_ALLOC_FAIL = -7
OPUS_RESET_STATE = 4028

ERROR_NAMES = {
    -1: ("OPUS_BAD_ARG", "invalid argument"),
    -2: ("OPUS_BUFFER_TOO_SMALL", "buffer too small"),
    -3: ("OPUS_INTERNAL_ERROR", "internal error"),
    -4: ("OPUS_INVALID_PACKET", "corrupted or unsupported packet"),
    -5: ("OPUS_UNIMPLEMENTED", "request not implemented"),
    -6: ("OPUS_INVALID_STATE", "invalid decoder state"),
    -7: ("OPUS_ALLOC_FAIL", "memory allocation failed"),
}

ENV_VAR = "FASTVOICE_LIBOPUS"
INSTALL_HINT = (
    "install libopus (Debian/Ubuntu: apt-get install libopus0; Fedora: dnf install opus; "
    "macOS: brew install opus) or set FASTVOICE_LIBOPUS to the library's path"
)


class OpusNotAvailableError(VoiceError):
    """libopus could not be loaded: it is not installed, or the library found is not libopus.

    Raised when the first :class:`OpusDecoder` is created (``import fastvoice`` never needs
    libopus), and by :func:`load_opus`.  The message names what was tried and what to install.
    """


class OpusDecodeError(VoiceError, ValueError):
    """An Opus packet could not be decoded (garbage, truncated, empty, longer than 120 ms, ...).

    ``code`` is the libopus error code (``-4`` is ``OPUS_INVALID_PACKET``) and the message
    names it.  The decoder's state is unchanged: the next packet decodes as usual.
    """

    def __init__(self, message: str, code: int = OPUS_BAD_ARG) -> None:
        super().__init__(message)
        self.code = code


def error_name(code: int) -> str:
    """``OPUS_INVALID_PACKET (-4, corrupted or unsupported packet)`` for a libopus error code."""
    name, meaning = ERROR_NAMES.get(code, ("unknown libopus error", "not a documented code"))
    return f"{name} ({code}, {meaning})"


def decode_error(code: int, length: int) -> OpusDecodeError:
    """The error for a packet of ``length`` bytes that libopus refused with ``code``."""
    return OpusDecodeError(f"libopus could not decode a {length}-byte Opus packet: {error_name(code)}", code)


def empty_packet_error() -> OpusDecodeError:
    return OpusDecodeError(
        f"empty Opus packet: {error_name(OPUS_BAD_ARG)}; pass None to conceal a lost packet", OPUS_BAD_ARG
    )


def oversized_packet_error(length: int) -> OpusDecodeError:
    return OpusDecodeError(
        f"Opus packet of {length} bytes is longer than {MAX_PACKET_BYTES} bytes: {error_name(OPUS_BAD_ARG)}",
        OPUS_BAD_ARG,
    )


def fec_without_packet_error() -> ValueError:
    return ValueError("decode(None, fec=True): FEC recovers a lost frame from the NEXT packet; pass that packet")


def check_args(sample_rate: object, channels: object) -> None:
    """Validate an OpusDecoder's arguments (TypeError for a non-int, ValueError for a bad value)."""
    for name, value, allowed in (("sample_rate", sample_rate, SAMPLE_RATES), ("channels", channels, CHANNELS)):
        if type(value) is bool or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value not in allowed:
            shown = str(value)[:20]
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, not {shown}")


def as_packet(data: object) -> bytes:
    """``data`` as bytes when it is a bytes-like object (bytes, bytearray, memoryview, ...)."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"an Opus packet must be a bytes-like object or None, not {type(data).__name__}") from None
    with view:
        return view.tobytes()


def batch_job(job: object) -> tuple[Any, bytes | None, bool]:
    """One job of ``decode_batch`` checked: ``(decoder, packet as bytes or None, fec)``."""
    decoder: Any
    packet: Any
    fec: Any
    try:
        decoder, packet, fec = job  # type: ignore[misc]
    except (TypeError, ValueError):
        raise TypeError(f"a decode_batch job is (decoder, packet or None, fec), not {str(job)[:60]}") from None
    use_fec = bool(fec)
    if packet is None:
        if use_fec:
            raise fec_without_packet_error()
        return decoder, None, False
    data: bytes = packet if type(packet) is bytes else as_packet(packet)
    return decoder, data, use_fec


# ------------------------------------------------------------------ loading libopus

_lock = threading.Lock()
_loaded: SimpleNamespace | None = None
_failure: str | None = None  # why the automatic search failed (cached: the search spawns processes)


def _candidates() -> list[str]:
    if sys.platform == "darwin":
        names = ["libopus.0.dylib", "libopus.dylib"]
        names += [os.path.join(d, "libopus.0.dylib") for d in ("/opt/homebrew/lib", "/usr/local/lib", "/opt/local/lib")]
    elif os.name == "nt":
        names = ["opus.dll", "libopus-0.dll", "libopus.dll"]
    else:
        names = ["libopus.so.0", "libopus.so"]
    return names


# (name, restype, argtypes) of every function either twin calls.
_FUNCTIONS = (
    ("opus_get_version_string", ctypes.c_char_p, ()),
    ("opus_decoder_create", ctypes.c_void_p, (ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int))),
    ("opus_decoder_destroy", None, (ctypes.c_void_p,)),
    ("opus_decode", ctypes.c_int,
     (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)),
    ("opus_packet_get_nb_samples", ctypes.c_int, (ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32)),
    # Variadic in C; only OPUS_RESET_STATE is sent, which has no argument after the request.
    ("opus_decoder_ctl", ctypes.c_int, (ctypes.c_void_p, ctypes.c_int)),
)


def _bind(name: str) -> SimpleNamespace:
    """Open ``name`` and bind the functions; OSError when it cannot be opened, LookupError when
    it is not libopus."""
    lib = ctypes.CDLL(name)
    bound = SimpleNamespace(path=name, cdll=lib, addresses={})
    for symbol, restype, argtypes in _FUNCTIONS:
        try:
            fn = getattr(lib, symbol)
        except AttributeError:
            raise LookupError(f"{name} does not export {symbol}: it is not libopus") from None
        fn.restype = restype
        fn.argtypes = argtypes
        setattr(bound, symbol[5:], fn)  # "decoder_create", "decode", ...
        bound.addresses[symbol] = ctypes.cast(fn, ctypes.c_void_p).value
    bound.version = (bound.get_version_string() or b"libopus").decode("ascii", "replace")[:60]
    return bound


def _search(path: str | None) -> SimpleNamespace:
    if path is not None:
        tried, source = [path], "the path given to load_opus()"
    elif os.environ.get(ENV_VAR, "").strip():
        tried, source = [os.environ[ENV_VAR].strip()], f"{ENV_VAR}"
    else:
        tried, source = _candidates(), "the usual library names"
        found = ctypes.util.find_library("opus")
        if found and found not in tried:
            tried.append(found)
    problems = []
    for name in tried:
        try:
            return _bind(name)
        except LookupError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(str(exc)[:160])
    raise OpusNotAvailableError(
        f"libopus could not be loaded from {source} (tried {', '.join(tried)}): {'; '.join(problems)[:400]}. "
        f"To decode Opus, {INSTALL_HINT}."
    )


def library() -> SimpleNamespace:
    """The loaded libopus (its ctypes functions and their addresses), loading it on first use."""
    loaded = _loaded
    if loaded is not None:
        return loaded
    return _load(None)


def _load(path: str | None) -> SimpleNamespace:
    global _loaded, _failure
    with _lock:
        if _loaded is not None:
            return _loaded
        if path is None and _failure is not None:
            raise OpusNotAvailableError(_failure)
        try:
            _loaded = _search(path)
        except OpusNotAvailableError as exc:
            if path is None:
                _failure = str(exc)
            raise
        return _loaded


def load_opus(path: str | os.PathLike[str] | None = None) -> str:
    """Load libopus now (instead of at the first :class:`OpusDecoder`) and return its version string.

    ``path`` is a file path or a library name handed to the system's loader; without it,
    ``FASTVOICE_LIBOPUS`` and then the usual names are tried.  libopus is loaded once per
    process: once loaded, a call without ``path`` (or with the same one) returns its version,
    and a different ``path`` raises ``RuntimeError``.  Raises :class:`OpusNotAvailableError`
    when it cannot be loaded.
    """
    name = None if path is None else os.fspath(path)
    loaded = _loaded
    if loaded is not None:
        if name is not None and name != loaded.path:
            raise RuntimeError(f"libopus is already loaded from {loaded.path}; it cannot be replaced in this process")
        return str(loaded.version)
    return str(_load(name).version)
