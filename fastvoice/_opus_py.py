"""Pure-Python twin of the Opus decoder: libopus through ctypes.

The typed source of truth for the API (the compiled twin ``fastvoice._opus_c`` behaves the
same, byte for byte).  ctypes releases the GIL during each libopus call, so decoders of
different streams run in parallel on several threads with this twin too.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterable

from . import _opus_common as _c
from ._opus_common import OpusDecodeError, OpusNotAvailableError

__all__ = ["IMPLEMENTATION", "OpusDecoder", "OpusDecodeError", "OpusNotAvailableError", "decode_batch"]

IMPLEMENTATION = "py"


class OpusDecoder:
    """Decodes one Opus stream to 16-bit PCM (s16le, channels interleaved) with libopus.

    ``sample_rate`` is one of 8000, 12000, 16000, 24000 or 48000 Hz and ``channels`` 1 or
    2, whatever the packets hold (libopus resamples, mixes down or duplicates).  One decoder
    per stream: its state follows the stream, so packets must come in order.  Decoders are
    independent of each other and decode without the GIL, so several threads may each decode
    their own streams in parallel; one decoder called from several threads at once serialises
    the calls (a lock per decoder) and stays consistent, though its output then depends on the
    calls' order.  Raises :class:`OpusNotAvailableError` when libopus cannot be loaded.
    """

    __slots__ = ("_lib", "_state", "_lock", "_last", "_sample_rate", "_channels", "__weakref__")

    def __init__(self, sample_rate: int = 48000, channels: int = 2) -> None:
        if getattr(self, "_state", None) is not None:
            raise RuntimeError("OpusDecoder is already initialised: create a new one")
        _c.check_args(sample_rate, channels)
        lib = _c.library()
        error = ctypes.c_int(0)
        state = lib.decoder_create(sample_rate, channels, ctypes.byref(error))
        if not state:
            raise MemoryError(f"opus_decoder_create failed: {_c.error_name(error.value)}")
        self._lib = lib
        self._lock = threading.Lock()
        self._last = 0  # samples per channel of the last packet decoded or concealed
        self._sample_rate = sample_rate
        self._channels = channels
        self._state = state

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._sample_rate

    @property
    def channels(self) -> int:
        """Output channels (1 or 2)."""
        return self._channels

    def decode(self, opus: bytes | None, fec: bool = False) -> bytes:
        """Decode one packet to PCM: s16le, channels interleaved, as long as the packet.

        A packet holds 2.5 to 120 ms of audio (Discord sends 20 ms: 3,840 bytes of stereo
        at 48 kHz).  ``opus=None`` conceals one lost packet (libopus's packet-loss
        concealment) as long as the last packet decoded or concealed, 20 ms at first.
        ``fec=True`` with the packet that FOLLOWS a lost one recovers the lost audio from
        that packet's in-band forward error correction (libopus falls back to concealment
        when the packet carries none); it returns the lost packet's duration (taken as the
        last one's, as for concealment), and the packet itself is then decoded with a second
        call.  Raises :class:`OpusDecodeError` for an empty, malformed or too long packet
        (the decoder's state is then unchanged), ``TypeError`` for a non bytes-like packet.
        """
        if opus is None:
            if fec:
                raise _c.fec_without_packet_error()
            length = 0
            packet_samples = 0
        else:
            if type(opus) is not bytes:
                opus = _c.as_packet(opus)
            length = len(opus)
            if length == 0:
                raise _c.empty_packet_error()
            if length > _c.MAX_PACKET_BYTES:
                raise _c.oversized_packet_error(length)
            packet_samples = self._lib.packet_get_nb_samples(opus, length, self._sample_rate)
            if packet_samples <= 0:
                raise _c.decode_error(packet_samples if packet_samples < 0 else -4, length)
        with self._lock:
            if opus is None or fec:
                samples = self._last or self._sample_rate // 50
            else:
                samples = packet_samples
            out = bytearray(samples * self._channels * 2)
            pcm = (ctypes.c_char * len(out)).from_buffer(out)
            got = self._lib.decode(self._state, opus, length, ctypes.addressof(pcm), samples, 1 if fec else 0)
            del pcm  # release the bytearray's export
            if got < 0:
                raise _c.decode_error(got, length)
            self._last = got
        if got != samples:
            del out[got * self._channels * 2:]
        return bytes(out)

    def reset(self) -> None:
        """Forget the stream (``OPUS_RESET_STATE``): the next packet decodes as a stream's first."""
        with self._lock:
            code = self._lib.decoder_ctl(self._state, _c.OPUS_RESET_STATE)
            if code != _c.OPUS_OK:
                raise RuntimeError(f"OPUS_RESET_STATE failed: {_c.error_name(code)}")
            self._last = 0

    def __repr__(self) -> str:
        return f"OpusDecoder(sample_rate={self._sample_rate}, channels={self._channels})"

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        lib = getattr(self, "_lib", None)
        if state and lib is not None:
            self._state = 0
            lib.decoder_destroy(state)


def decode_batch(jobs: Iterable[tuple[OpusDecoder, bytes | None, bool]]) -> tuple[list[bytes | None], list[int]]:
    """Decode many frames, each of its own decoder: ``jobs`` holds ``(decoder, packet or None,
    fec)`` and each job is ``decoder.decode(packet, fec)``.

    Returns ``(results, errors)``: ``results[i]`` is the PCM of ``jobs[i]``, or None when its
    packet was refused (empty, malformed, too long: the decoder is then unchanged), and
    ``errors`` the indices of those jobs, in order.  The compiled twin releases the GIL once
    for the whole batch (one acquisition per batch instead of one per frame: what lets a
    decode pool's threads run side by side).  Every job is checked before any is decoded:
    ``TypeError`` for an object that is not an ``OpusDecoder`` or a packet that is not
    bytes-like, ``ValueError`` for a decoder that appears twice (its frames must be decoded
    in order, one call each) or ``fec=True`` without a packet.
    """
    items = [_c.batch_job(job) for job in jobs]
    seen = set()
    for decoder, _, _ in items:
        if type(decoder) is not OpusDecoder:
            raise TypeError(f"decode_batch takes OpusDecoder objects, not {type(decoder).__name__}")
        if id(decoder) in seen:
            raise ValueError("decode_batch: a decoder may appear only once in a batch (its frames are in order)")
        seen.add(id(decoder))
    results: list[bytes | None] = []
    errors: list[int] = []
    for i, (decoder, packet, fec) in enumerate(items):
        try:
            results.append(decoder.decode(packet, fec))
        except OpusDecodeError:
            results.append(None)
            errors.append(i)
    return results, errors
