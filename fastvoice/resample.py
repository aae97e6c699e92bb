"""Resampling 16-bit PCM for speech recognisers: :class:`Resampler` and :func:`resample_pcm`.

Decoded Discord audio is 48 kHz stereo; speech recognisers want 16 kHz (or 8, 12, 24 kHz)
mono.  The conversion here is a linear-phase windowed-sinc low-pass filter evaluated at the
output rate only (decimation by an integer factor; see ``fastvoice._resample_common`` for
the design: passband to 0.8 of the new Nyquist frequency, at least 60 dB above it) and a
stereo/mono mix.  Two twins with one API, as for the packet core: compiled
(``fastvoice._resample_c``) and pure Python (``fastvoice._resample_py``), chosen the same
way (``FASTVOICE_NO_EXTENSIONS``, ``FASTVOICE_REQUIRE_EXTENSIONS``).

The twins also hold the two other per-sample loops of the receive side: :func:`pcm_rms` (the
level the utterance segmentation compares) and :func:`mix_pcm` (a recording's mix of the
voices of a call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS
from ._resample_common import ATTENUATION_DB, PASSBAND

__all__ = ["IMPLEMENTATION", "Resampler", "mix_pcm", "pcm_rms", "resample_pcm", "ATTENUATION_DB", "PASSBAND"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._resample_py import IMPLEMENTATION, Resampler, mix_pcm, pcm_rms
else:
    try:
        from ._resample_c import IMPLEMENTATION, Resampler, mix_pcm, pcm_rms
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(
                "FASTVOICE_REQUIRE_EXTENSIONS is set but the compiled resampler fastvoice._resample_c "
                f"could not be imported ({exc}); rebuild with a C compiler: pip install -e ."
            ) from exc
        from ._resample_py import IMPLEMENTATION, Resampler, mix_pcm, pcm_rms  # noqa: F401


def resample_pcm(pcm: bytes, in_rate: int = 48000, out_rate: int = 16000, in_channels: int = 2,
             out_channels: int = 1) -> bytes:
    """Resample a whole piece of s16le PCM at once, aligned: output sample ``n`` is the input
    at time ``n / out_rate`` (the filter's delay taken out).  ``len(pcm)`` input frames give
    ``ceil(frames * out_rate / in_rate)`` output frames.  See :class:`Resampler`."""
    resampler = Resampler(in_rate, out_rate, in_channels, out_channels)
    out = resampler.process(pcm) + resampler.flush()
    return out[resampler.delay * 2 * out_channels:]
