"""The demo's bundled Opus clip (``data/demo_clip.dca``)."""

from __future__ import annotations

import struct
from importlib import resources

__all__ = ["SILENCE", "load_clip"]

#: The Opus silence frame the speakers send five of after the clip.
SILENCE = b"\xf8\xff\xfe"


def load_clip() -> list[bytes]:
    """The bundled clip's Opus frames (``data/demo_clip.dca``: each frame after its length as a
    4-byte little-endian integer, the format of ``OpusReader``)."""
    data = resources.files("fastvoice").joinpath("data/demo_clip.dca").read_bytes()
    frames, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        frames.append(data[offset + 4: offset + 4 + length])
        offset += 4 + length
    return frames
