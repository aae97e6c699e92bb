"""Ogg Opus demuxer: real ffmpeg output checked against ffprobe, hand-made pages, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastvoice import OpusFrameProvider
from fastvoice.ogg import AsyncOggOpusReader, OggError, OggOpusDemuxer, OggOpusReader, OpusHead, ogg_crc32



def require_ffmpeg():
    """Skip without ffmpeg (with libopus) and ffprobe, unless FASTVOICE_REQUIRE_FFMPEG=1 makes it a failure."""
    import shutil

    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if not missing:
        encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
        if "libopus" not in encoders:
            missing.append("ffmpeg's libopus encoder")
    if missing:
        reason = f"{' and '.join(missing)} not available"
        if os.environ.get("FASTVOICE_REQUIRE_FFMPEG") == "1":
            pytest.fail(f"{reason}, and FASTVOICE_REQUIRE_FFMPEG=1")
        pytest.skip(reason)

# -- an independent Ogg writer -------------------------------------------------------------


def crc_bitwise(data: bytes) -> int:
    """CRC-32 of RFC 3533 computed bit by bit (polynomial 0x04C11DB7, MSB first, init 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def page(serial, sequence, segments, *, flags=0, granule=0, version=0, capture=b"OggS"):
    """One page holding ``segments``: a list of (lacing value, bytes)."""
    table = bytes(value for value, _ in segments)
    body = b"".join(data for _, data in segments)
    raw = struct.pack("<4sBBqIIIB", capture, version, flags, granule, serial, sequence, 0, len(table)) + table + body
    return raw[:22] + struct.pack("<I", crc_bitwise(raw)) + raw[26:]


def segments_of(packet):
    """The lacing of one packet: 255-byte segments then one shorter (possibly empty) one."""
    pieces = [(255, packet[i : i + 255]) for i in range(0, len(packet) - len(packet) % 255, 255)]
    return pieces + [(len(packet) % 255, packet[len(packet) - len(packet) % 255 :])]


def opus_head(channels=2, pre_skip=312, rate=48000, family=0, version=1, magic=b"OpusHead", extra=b""):
    return magic + struct.pack("<BBHIhB", version, channels, pre_skip, rate, 0, family) + extra


def opus_tags(vendor=b"test writer", comments=(b"TITLE=a tone",)):
    out = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    return out + b"".join(struct.pack("<I", len(c)) + c for c in comments)


def ogg_stream(packets, *, serial=0x5EED, max_segments=255, head=None, tags=None, end=True, first_sequence=0):
    """An Ogg Opus stream: OpusHead alone on the BOS page, then OpusTags and ``packets`` laced
    into pages of at most ``max_segments`` segments (so packets continue across pages)."""
    head = opus_head() if head is None else head
    pages = [page(serial, first_sequence, segments_of(head), flags=0x02)]
    segments, ends_packet = [], []
    for packet in [opus_tags() if tags is None else tags, *packets]:
        laced = segments_of(packet)
        segments += laced
        ends_packet += [False] * (len(laced) - 1) + [True]
    sequence, continued = first_sequence + 1, False
    for start in range(0, len(segments), max_segments):
        chunk = segments[start : start + max_segments]
        last = start + max_segments >= len(segments)
        flags = (0x01 if continued else 0) | (0x04 if last and end else 0)
        pages.append(page(serial, sequence, chunk, flags=flags, granule=960 * start))
        continued = not ends_packet[min(start + max_segments, len(segments)) - 1]
        sequence += 1
    return b"".join(pages)


def split_pages(data):
    """The pages of well-formed Ogg data, as bytes."""
    pages, offset = [], 0
    while offset < len(data):
        segments = data[offset + 26]
        size = 27 + segments + sum(data[offset + 27 : offset + 27 + segments])
        pages.append(data[offset : offset + size])
        offset += size
    return pages


def demux_all(data, chunk=None):
    """Every audio packet of ``data`` through the sans-I/O demuxer, fed in ``chunk``-byte pieces."""
    demuxer = OggOpusDemuxer()
    chunk = chunk or len(data) or 1
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    out = []
    while True:
        try:
            packet = demuxer.read_packet()
        except EOFError:
            return out, demuxer
        if packet is not None:
            out.append(packet)
        elif pieces:
            demuxer.feed(pieces.pop(0))
        else:
            demuxer.feed_eof()


AUDIO = [bytes([i]) * n for i, n in enumerate([3, 120, 254, 255, 256, 300, 510, 511, 1000, 17, 1275])]


# -- CRC ----------------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_crc_equals_the_bitwise_definition(data):
    assert ogg_crc32(data) == crc_bitwise(data)


def test_crc_known_value():
    # CRC-32/MPEG-2 without its init and final inversion: the Ogg form ("123456789" -> 0x89A1897F).
    assert ogg_crc32(b"123456789") == 0x89A1897F == crc_bitwise(b"123456789")


# -- ffmpeg output against ffprobe -----------------------------------------------------------


def ffprobe_packets(path):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_packets", "-show_data_hash", "MD5", "-of", "json", path],
        check=True,
        capture_output=True,
    ).stdout
    return [(int(p["size"]), p["data_hash"].split(":", 1)[1]) for p in json.loads(out)["packets"]]


@pytest.mark.parametrize("bitrate, page_args", [("48k", []), ("256k", ["-page_duration", "20000"])])
def test_ffmpeg_file_demuxes_into_the_packets_ffprobe_reports(tmp_path, bitrate, page_args):
    require_ffmpeg()
    path = str(tmp_path / "tone.ogg")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=330:duration=1.5",
         "-ac", "2", "-ar", "48000", "-c:a", "libopus", "-b:a", bitrate, "-frame_duration", "20", *page_args, path],
        check=True,
    )
    expected = ffprobe_packets(path)
    with OggOpusReader(path) as reader:
        assert reader.head.channels == 2 and reader.head.pre_skip > 0 and reader.head.input_sample_rate == 48000
        assert reader.tags is not None and reader.tags.vendor.startswith("Lavf")
        got = list(reader)
    assert [(len(p), hashlib.md5(p).hexdigest()) for p in got] == expected
    assert len(got) == 76  # 1.5 s of 20 ms frames, plus the encoder delay's frame
    if bitrate == "256k":
        assert any(len(p) > 255 for p in got)  # packets of several segments
    data = open(path, "rb").read()
    assert demux_all(data, chunk=7)[0] == got  # fed in tiny pieces: same packets


# -- hand-made pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_segments", [1, 2, 3, 5, 255])
def test_packets_continued_across_pages(max_segments):
    data = ogg_stream(AUDIO, max_segments=max_segments)
    packets, demuxer = demux_all(data)
    assert packets == AUDIO
    assert demuxer.head == OpusHead(1, 2, 312, 48000, 0, 0, 1, 1)
    assert demuxer.tags.vendor == "test writer" and demuxer.tags.comments == ("TITLE=a tone",)
    pages = split_pages(data)
    assert demuxer.pages == len(pages)
    if max_segments < 5:  # packets really continue across pages
        assert sum(1 for p in pages if p[5] & 0x01) >= 5


def test_packet_spanning_a_page_boundary_in_the_middle():
    big = bytes(range(256)) * 3  # 768 bytes: segments 255, 255, 255, 3
    head = page(7, 0, segments_of(opus_head()), flags=0x02)
    tags = page(7, 1, segments_of(opus_tags()))
    # page 2: a small packet, then the first 255 bytes of `big`; page 3: the rest of it.
    first = page(7, 2, [(5, b"small"), (255, big[:255])])
    rest = page(7, 3, [(255, big[255:510]), (255, big[510:765]), (3, big[765:])], flags=0x01 | 0x04)
    packets, _ = demux_all(head + tags + first + rest, chunk=10)
    assert packets == [b"small", big]


def test_empty_packets_are_dropped_and_a_page_without_packet_end_is_fine():
    data = ogg_stream([b"a", b"", b"b" * 255, b"c"], max_segments=1)
    assert demux_all(data)[0] == [b"a", b"b" * 255, b"c"]


def test_other_logical_streams_are_skipped():
    other = 0xBEEF
    video_bos = page(other, 0, segments_of(b"\x80theora...."), flags=0x02)
    video_page = page(other, 1, [(20, b"v" * 20)])
    opus = ogg_stream(AUDIO[:3], serial=1, end=False)
    pages = split_pages(opus)
    # Grouped: both BOS pages first (video first), then the data pages interleaved.
    data = (
        video_bos + pages[0] + video_page + pages[1] + page(other, 2, [(2, b"vv")])
        + b"".join(pages[2:]) + page(other, 3, [(1, b"v")], flags=0x04)
    )
    assert demux_all(data)[0] == AUDIO[:3]


def test_chained_links_are_followed_and_head_updates():
    first = ogg_stream([b"one", b"two"], serial=1)
    second = ogg_stream([b"three"], serial=2, head=opus_head(channels=1, pre_skip=100))
    packets, demuxer = demux_all(first + second)
    assert packets == [b"one", b"two", b"three"]
    assert demuxer.links == 2 and demuxer.head.channels == 1 and demuxer.head.pre_skip == 100


def test_stream_cut_on_a_page_boundary_without_eos_ends_cleanly():
    assert demux_all(ogg_stream(AUDIO, end=False))[0] == AUDIO


def test_mapping_family_1_head():
    head = opus_head(channels=3, family=1, extra=bytes([2, 1, 0, 2, 1]))
    _, demuxer = demux_all(ogg_stream([b"x"], head=head))
    assert (demuxer.head.stream_count, demuxer.head.coupled_count, demuxer.head.channel_mapping) == (2, 1, b"\x00\x02\x01")


# -- bad input -----------------------------------------------------------------------------------


def corrupt(data, offset, value):
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def refresh_crc(data, page_start=0):
    """Recompute the CRC of the page at ``page_start`` (to test checks behind the CRC)."""
    segments = data[page_start + 26]
    size = 27 + segments + sum(data[page_start + 27 : page_start + 27 + segments])
    raw = data[page_start : page_start + 22] + b"\0\0\0\0" + data[page_start + 26 : page_start + size]
    fixed = raw[:22] + struct.pack("<I", crc_bitwise(raw)) + raw[26:]
    return data[:page_start] + fixed + data[page_start + size :]


GOOD = ogg_stream(AUDIO, max_segments=3)
SECOND_PAGE = 27 + GOOD[26] + sum(GOOD[27 : 27 + GOOD[26]])


@pytest.mark.parametrize(
    "data, message",
    [
        (corrupt(GOOD, SECOND_PAGE + 40, GOOD[SECOND_PAGE + 40] ^ 1), "CRC-32 mismatch"),
        (corrupt(GOOD, 22, GOOD[22] ^ 0xFF), "CRC-32 mismatch"),
        (b"RIFF" + GOOD[4:], "capture pattern 'OggS' expected"),
        (GOOD[:SECOND_PAGE] + b"OggT" + GOOD[SECOND_PAGE + 4 :], "at byte %d: capture pattern" % SECOND_PAGE),
        (refresh_crc(corrupt(GOOD, 4, 1)), "stream structure version 1, 0 expected"),
        (refresh_crc(corrupt(GOOD, 5, 0x0A)), "header type flags 0x0a"),
        (GOOD[: SECOND_PAGE + 30], "ends inside a page"),
        (GOOD[:20], "ends inside a page"),
        (ogg_stream(AUDIO, head=opus_head(magic=b"OpusHeaX")), "no beginning-of-stream page starting with 'OpusHead'"),
        (ogg_stream([], head=opus_head(magic=b"OpusHeaX"), end=False)[:47], "no Opus stream"),
        (ogg_stream(AUDIO, head=opus_head(version=0x10)), "OpusHead version 16 is not supported"),
        (ogg_stream(AUDIO, head=opus_head(channels=0)), "channel count is 0"),
        (ogg_stream(AUDIO, head=opus_head(channels=3)), "channel count 3 with mapping family 0"),
        (ogg_stream(AUDIO, head=opus_head()[:15]), "OpusHead is 15 bytes"),
        (ogg_stream(AUDIO, head=opus_head(channels=2, family=1, extra=b"\x01")), "at least 23 expected"),
        (ogg_stream(AUDIO, tags=b"OpusTagz" + opus_tags()[8:]), "does not start with 'OpusTags'"),
        (ogg_stream(AUDIO, tags=opus_tags()[:-3]), "OpusTags comment 0 is 12 bytes"),
        (ogg_stream(AUDIO, tags=b"OpusTags\xff\xff\xff\xff"), "OpusTags vendor string is 4294967295 bytes"),
        (b"", "the stream is empty"),
    ],
)
def test_bad_input_raises_oggerror_naming_the_problem(data, message):
    with pytest.raises(OggError, match=message.replace("(", r"\(").replace(")", r"\)")):
        demux_all(data)


def test_page_structure_errors():
    head = page(9, 0, segments_of(opus_head()), flags=0x02)
    tags = page(9, 1, segments_of(opus_tags()))
    cases = {
        "a page is missing": head + tags + page(9, 3, [(1, b"x")]),
        "no packet was left unfinished": head + tags + page(9, 2, [(1, b"x")], flags=0x01),
        "does not continue it": head + tags + page(9, 2, [(255, b"y" * 255)]) + page(9, 3, [(1, b"x")]),
        "second beginning-of-stream page": head + tags + page(9, 2, [(1, b"x")], flags=0x02),
        "exactly one complete packet": page(9, 0, segments_of(opus_head()) + [(1, b"x")], flags=0x02),
        "which never began": head + tags + page(10, 0, [(1, b"x")]),
        "before any Opus stream began": page(9, 0, [(1, b"x")]),
        "leaves a packet unfinished": head + tags + page(9, 2, [(255, b"y" * 255)], flags=0x04),
        "ends inside a packet continued across pages": head + tags + page(9, 2, [(255, b"y" * 255)]),
        "ends before its OpusTags header": head + page(9, 1, [], flags=0x04),
        "before the OpusTags header": head,
    }
    for message, data in cases.items():
        with pytest.raises(OggError, match=message):
            demux_all(data)


def test_oversized_packet_is_refused_but_oversized_tags_are_skipped():
    demuxer = OggOpusDemuxer(max_packet_size=1000)
    demuxer.feed(ogg_stream([b"a" * 1001], max_segments=2))
    with pytest.raises(OggError, match="larger than 1000"):
        demuxer.read_packet()
    with pytest.raises(EOFError):  # stopped after the error
        demuxer.read_packet()
    demuxer = OggOpusDemuxer(max_tags_size=100)
    demuxer.feed(ogg_stream([b"ok"], tags=opus_tags(vendor=b"v" * 500), max_segments=1))
    demuxer.feed_eof()
    assert demuxer.read_packet() == b"ok" and demuxer.tags is None and demuxer.head is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_random_bytes_give_only_oggerror_or_eof(data, chunk):
    try:
        demux_all(data, chunk=chunk)
    except OggError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=4), st.integers(0, len(GOOD)))
def test_damaged_streams_give_only_oggerror_or_eof(flips, cut):
    data = bytearray(GOOD[:cut])
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    try:
        packets, _ = demux_all(bytes(data), chunk=13)
    except OggError:
        return
    assert packets == AUDIO[: len(packets)]  # what passes the CRC is what was written


@given(st.lists(st.binary(max_size=700), max_size=8), st.integers(1, 8), st.integers(1, 300))
def test_any_packets_round_trip(packets, max_segments, chunk):
    data = ogg_stream(packets, max_segments=max_segments)
    assert demux_all(data, chunk=chunk)[0] == [p for p in packets if p]


# -- the providers ---------------------------------------------------------------------------------


def test_reader_from_path_and_file_object(tmp_path):
    path = tmp_path / "a.opus"
    path.write_bytes(GOOD)
    reader = OggOpusReader(path)
    assert isinstance(reader, OpusFrameProvider)
    assert reader.head.channels == 2
    assert [reader.provide_opus_frame() for _ in AUDIO] == AUDIO
    with pytest.raises(EOFError):
        reader.provide_opus_frame()
    reader.close()
    stream = io.BytesIO(GOOD)
    assert list(OggOpusReader(stream, chunk_size=5)) == AUDIO
    OggOpusReader(stream := io.BytesIO(GOOD)).close()
    assert stream.closed


def test_reader_refuses_non_ogg_at_construction_and_closes_the_file(tmp_path):
    path = tmp_path / "not.opus"
    path.write_bytes(b"ID3\x04" + os.urandom(100))
    opened = []
    real_open = open

    def tracking_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    import builtins

    builtins.open, saved = tracking_open, builtins.open
    try:
        with pytest.raises(OggError, match="capture pattern"):
            OggOpusReader(str(path))
    finally:
        builtins.open = saved
    assert opened and opened[0].closed
    with pytest.raises(TypeError):
        OggOpusReader(1234)


def test_reader_error_mid_file_is_raised_once_then_eof():
    bad = corrupt(GOOD, len(GOOD) - 5, GOOD[-5] ^ 0x40)
    reader = OggOpusReader(io.BytesIO(bad))
    got, errors = [], []
    for _ in range(len(AUDIO) + 5):
        try:
            got.append(reader.provide_opus_frame())
        except OggError as exc:
            errors.append(exc)
        except EOFError:
            break
    else:
        raise AssertionError("no EOFError after the error")
    assert len(errors) == 1 and "CRC" in str(errors[0])
    assert got == AUDIO[: len(got)] and len(got) < len(AUDIO)


async def feed_in_chunks(reader, data, size, delay=0.0):
    for i in range(0, len(data), size):
        reader.feed_data(data[i : i + size])
        await asyncio.sleep(delay)
    reader.feed_eof()


async def test_async_reader_reads_ahead_into_a_bounded_buffer():
    stream = asyncio.StreamReader()
    many = [bytes([i % 256]) * (50 + i) for i in range(200)]
    data = ogg_stream(many, max_segments=4)
    stream.feed_data(data)
    stream.feed_eof()
    reader = AsyncOggOpusReader(stream, buffer_frames=5, chunk_size=64)
    assert reader.provide_opus_frame() is None  # not started: nothing yet, and no EOF
    reader.start()
    for _ in range(20):
        await asyncio.sleep(0)
    assert reader.buffered_frames == 5  # stopped reading while full
    assert len(stream._buffer) > len(data) // 2  # the rest is still unread in the stream
    got = []
    while True:
        try:
            frame = reader.provide_opus_frame()
        except EOFError:
            break
        if frame is None:
            await asyncio.sleep(0)
        else:
            got.append(frame)
            assert reader.buffered_frames <= 5
    assert got == many and reader.head.channels == 2
    reader.close()


async def test_async_reader_with_late_data_and_bad_data():
    stream = asyncio.StreamReader()
    reader = AsyncOggOpusReader(stream, buffer_frames=50)
    reader.start()
    feeder = asyncio.ensure_future(feed_in_chunks(stream, GOOD[:-10] + b"garbage!!!", 100, delay=0.001))
    got, error = [], None
    for _ in range(2000):
        try:
            frame = reader.provide_opus_frame()
        except OggError as exc:
            error = exc
            continue
        except EOFError:
            break
        if frame is None:
            await asyncio.sleep(0.001)
        else:
            got.append(frame)
    else:
        raise AssertionError("the reader never reached EOF")
    await feeder
    assert error is not None and got == AUDIO[: len(got)]


async def test_async_reader_close_cancels_its_task():
    stream = asyncio.StreamReader()
    reader = AsyncOggOpusReader(stream)
    reader.start()
    await asyncio.sleep(0)
    task = reader._task
    reader.close()
    await asyncio.sleep(0)
    assert task.cancelled()
    with pytest.raises(EOFError):
        reader.provide_opus_frame()
