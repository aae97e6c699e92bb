"""Regenerate fastvoice/data/demo_clip.dca, the demo's bundled clip (needs ffmpeg with libopus).

ffmpeg encodes three seconds of an A-major chord to Ogg Opus in 20 ms frames; the Ogg pages
are split into Opus packets here and written in the seed's OpusReader format (each frame
prefixed by its length as a 4-byte little-endian integer).

    python ci/make_demo_clip.py
"""

import os
import struct
import subprocess
import sys
import tempfile

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastvoice", "data", "demo_clip.dca")


def ogg_packets(data: bytes):
    """Yield the packets of an Ogg stream (one logical stream)."""
    offset, pending = 0, b""
    while offset < len(data):
        if data[offset:offset + 4] != b"OggS":
            raise ValueError(f"no Ogg page at offset {offset}")
        segments = data[offset + 26]
        table = data[offset + 27: offset + 27 + segments]
        body = offset + 27 + segments
        for lacing in table:
            pending += data[body: body + lacing]
            body += lacing
            if lacing < 255:
                yield pending
                pending = b""
        offset = body


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ogg = os.path.join(tmp, "clip.ogg")
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y",
             "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
             "-f", "lavfi", "-i", "sine=frequency=554.37:duration=3",
             "-f", "lavfi", "-i", "sine=frequency=659.25:duration=3",
             "-filter_complex", "amix=inputs=3,afade=t=in:d=0.2,afade=t=out:st=2.6:d=0.4",
             "-ac", "2", "-ar", "48000", "-c:a", "libopus", "-b:a", "64k", "-frame_duration", "20", ogg],
            check=True,
        )
        with open(ogg, "rb") as fh:
            packets = list(ogg_packets(fh.read()))
    if not packets or not packets[0].startswith(b"OpusHead") or not packets[1].startswith(b"OpusTags"):
        sys.exit("ffmpeg did not produce an Ogg Opus stream")
    audio = packets[2:]
    with open(OUT, "wb") as fh:
        for packet in audio:
            fh.write(struct.pack("<I", len(packet)) + packet)
    print(f"wrote {len(audio)} frames ({len(audio) * 0.02:.2f} s) to {OUT}")


if __name__ == "__main__":
    main()
