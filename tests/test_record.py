"""Recording a call: the Ogg Opus muxer, the WAV writer and CallRecorder.

Every Ogg file is read three ways: page by page here (an independent parse of RFC 3533 with
its own CRC, to check flags and granule positions), with fastvoice's own demuxer, and decoded
by ffmpeg and by libopus; every WAV file with Python's ``wave`` module.  The calls are played
on a test clock (see ``_playout.Harness``) with a known signal: a tone whose frequency
changes every frame, so a track shifted by one tick is caught.
"""

from __future__ import annotations

import array
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import wave
from pathlib import Path

import pytest

import opus_reference as ref
from _playout import SILENCE, Harness, dominant, step_frequency, stepped_tone_packets, stream
from fastvoice.ogg import OggOpusDemuxer, OggOpusReader
from fastvoice.ogg_writer import OggOpusWriter, concealment_packet, fill_packets
from fastvoice.opus_decoder import OpusDecoder
from fastvoice.record import CallRecorder, RecordingWriter
from fastvoice.wav import WavWriter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _libopus():
    ref.require_libopus()


# -- an independent Ogg page parser -------------------------------------------------------------

def _crc_table():
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def _crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def pages(data: bytes) -> list[dict]:
    """Every page of ``data``: flags, granule, serial, sequence and its packets (each page
    holds whole packets here, so a lacing value < 255 ends one).  CRCs are checked."""
    out, pos = [], 0
    while pos < len(data):
        magic, version, flags, granule, serial, sequence, crc, count = struct.unpack_from("<4sBBqIIIB", data, pos)
        assert magic == b"OggS" and version == 0, pos
        lacing = data[pos + 27:pos + 27 + count]
        size = 27 + count + sum(lacing)
        page = bytearray(data[pos:pos + size])
        page[22:26] = b"\0\0\0\0"
        assert _crc(bytes(page)) == crc, f"bad CRC on page {sequence}"
        packets, start, length = [], pos + 27 + count, 0
        for value in lacing:
            length += value
            if value < 255:
                packets.append(data[start:start + length])
                start += length
                length = 0
        assert length == 0, "a packet continued on the next page"
        out.append(dict(flags=flags, granule=granule, serial=serial, sequence=sequence, packets=packets))
        pos += size
    return out


def check_ogg_stream(data: bytes, ticks: int) -> list[bytes]:
    """RFC 7845's rules for the file: headers, sequence numbers, granule positions (each
    page's = the 48 kHz samples to the end of its last packet), end of stream; returns the
    audio packets."""
    found = pages(data)
    assert found[0]["flags"] == 0x02 and found[0]["packets"][0][:8] == b"OpusHead" and found[0]["granule"] == 0
    head = found[0]["packets"][0]
    assert head[8] == 1 and head[9] in (1, 2) and struct.unpack_from("<H", head, 10)[0] == 0  # pre-skip 0
    assert found[1]["flags"] == 0 and found[1]["packets"][0][:8] == b"OpusTags" and found[1]["granule"] == 0
    assert [p["sequence"] for p in found] == list(range(len(found)))
    assert len({p["serial"] for p in found}) == 1
    assert all(p["flags"] == 0 for p in found[1:-1]) and found[-1]["flags"] == 0x04
    total, packets = 0, []
    decoder = ref.Decoder(48000, 2)
    for page in found[2:]:
        assert page["packets"]
        for packet in page["packets"]:
            out = decoder.decode(packet)
            assert isinstance(out, bytes), f"libopus refused packet {packet[:4].hex()}"
            total += len(out) // 4
            packets.append(packet)
        assert page["granule"] == total
    assert total == ticks * 960
    return packets


def ffmpeg_pcm(path: Path) -> bytes:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", "48000", "-"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-300:]
    return done.stdout


def wav_pcm(path: Path, rate=48000, channels=2) -> bytes:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, channels, 2)
        return w.readframes(w.getnframes())


def tick_pcm(pcm: bytes, k: int, channels=2) -> bytes:
    size = 960 * channels * 2
    return pcm[k * size:(k + 1) * size]


def is_silent(pcm: bytes, limit=64) -> bool:
    values = array.array("h", pcm)
    return max(map(abs, values), default=0) <= limit


# -- the muxer ----------------------------------------------------------------------------------

def test_the_writer_makes_pages_per_rfc_7845_and_the_reader_reads_them_back():
    packets = list(stepped_tone_packets(120))
    w = OggOpusWriter(serial=0x1234, comments=["DISCORD_USER_ID=5"], page_packets=50)
    data = w.header_pages() + b"".join(w.write(p) for p in packets) + w.finish()
    assert check_ogg_stream(data, 120) == packets
    assert [len(p["packets"]) for p in pages(data)] == [1, 1, 50, 50, 20]
    assert w.granule == 120 * 960 and w.finished and w.finish() == b""
    demuxer = OggOpusDemuxer()
    demuxer.feed(data)
    demuxer.feed_eof()
    assert demuxer.read_headers()
    assert demuxer.head.channels == 2 and demuxer.head.pre_skip == 0
    assert "DISCORD_USER_ID=5" in str(demuxer.tags.comments)
    back = []
    with pytest.raises(EOFError):
        while True:
            back.append(demuxer.read_packet())
    assert back == packets


def test_the_end_can_be_trimmed_inside_the_last_packet_only():
    w = OggOpusWriter(serial=1)
    data = w.header_pages() + w.write(SILENCE) + w.write(SILENCE) + w.finish(end=1500)
    assert pages(data)[-1]["granule"] == 1500
    w = OggOpusWriter(serial=1)
    data = w.header_pages() + w.write(SILENCE) + w.write(SILENCE) + w.finish(end=100)
    assert pages(data)[-1]["granule"] == 1920  # earlier than the last packet: not allowed, not trimmed


def test_bad_packets_and_arguments_are_refused_by_name():
    w = OggOpusWriter()
    with pytest.raises(RuntimeError, match="header_pages"):
        w.write(SILENCE)
    w.header_pages()
    with pytest.raises(ValueError, match="0 bytes"):
        w.write(b"")
    with pytest.raises(ValueError, match="TOC byte 0x03"):
        w.write(b"\x03")  # code 3 without its frame count
    with pytest.raises(ValueError, match="channels"):
        OggOpusWriter(channels=3)
    with pytest.raises(ValueError, match="page_packets"):
        OggOpusWriter(page_packets=256)
    with pytest.raises(ValueError, match="2.5 ms"):
        fill_packets(100, silence=True)


@pytest.mark.parametrize("samples", [0, 120, 960, 960 * 3 + 480 + 240 + 120, 5 * 960 + 240])
@pytest.mark.parametrize("silence", [True, False])
def test_fill_packets_last_exactly_the_gap_and_libopus_decodes_them(samples, silence):
    previous = stepped_tone_packets(3)[2]
    decoder = ref.Decoder(48000, 2)
    decoder.decode(previous)
    total = 0
    for packet in fill_packets(samples, silence=silence, previous=previous):
        out = decoder.decode(packet)
        assert isinstance(out, bytes), packet.hex()
        total += len(out) // 4
    assert total == samples


def test_a_concealment_packet_keeps_the_mode_and_channels_of_the_previous_packet():
    for config in range(32):
        for stereo in (0, 4):
            toc = config << 3 | stereo
            packet = concealment_packet(bytes([toc, 0, 0]))
            assert len(packet) == 1 and packet[0] & 4 == stereo
            assert (packet[0] >> 3) // 4 == config // 4 or config >= 12  # same mode and bandwidth group
            decoder = ref.Decoder(48000, 2)
            decoder.decode(bytes([toc]) + bytes(60))  # a packet of that mode first
            out = decoder.decode(packet)
            assert isinstance(out, bytes) and len(out) == 3840, packet.hex()  # 20 ms concealed
    assert OpusDecoder().decode(concealment_packet()) == bytes(3840)  # a fresh decoder conceals silence


# -- the WAV writer -----------------------------------------------------------------------------

def test_a_wav_file_is_valid_while_written_after_close_and_with_a_sparse_silence(tmp_path):
    path = tmp_path / "a.wav"
    w = WavWriter(path, 16000, 1)
    first = array.array("h", range(-500, 500)).tobytes()
    w.write(first)
    w.sync()
    assert wav_pcm(path, 16000, 1) == first  # readable mid-way
    w.write_silence(200_000)  # sparse
    w.write(first)
    assert wav_pcm(path, 16000, 1) == first  # the header still says what the last sync wrote
    w.suspend()
    w.write(b"\1\0")
    w.close()
    w.close()
    assert wav_pcm(path, 16000, 1) == first + bytes(200_000) + first + b"\1\0"
    with pytest.raises(ValueError, match="closed"):
        w.write(b"\0\0")
    with pytest.raises(ValueError, match="whole number"):
        WavWriter(tmp_path / "b.wav", 48000, 2).write(b"\0\0")


# -- CallRecorder on a test clock ---------------------------------------------------------------

A, B = 111, 222


def record(tmp_path, arrivals, *, until=None, **options):
    h = Harness()
    writer = RecordingWriter(name="test-record")
    rec = CallRecorder(tmp_path, playout=h.rx, writer=writer, **options)
    h.play(arrivals, until=until)
    rec.close()
    assert rec.join(10) and rec.finished and rec.errors == 0
    writer.close()
    assert writer.join(10)
    return h, rec


def played(h, user):
    """Per tick of the recording: 'p<frame>' played, 'c' concealed, '' nothing."""
    number = {p: k for k, p in enumerate(stepped_tone_packets(150))}
    out = []
    for t in h.ticks:
        if user not in t.speaking:
            out.append("")
        else:
            opus = t.packets[user]
            out.append("c" if opus is None else f"p{number[opus]}")
    return out


def test_tracks_are_aligned_through_a_gap_and_a_late_join(tmp_path):
    packets = stepped_tone_packets(150)
    # A speaks frames 0-149 from t=0 and loses 40-69 (600 ms: concealed, then silent); B joins
    # at t=1.0 with frames 0-59 of the same tone.
    arrivals = stream(A, packets, skip=range(40, 70)) + stream(B, packets[:60], start_time=1.0, seed=2,
                                                                sequence=7, timestamp=9)
    h, rec = record(tmp_path, arrivals)
    ticks = len(h.ticks)
    assert rec.ticks == ticks and rec.gaps == 0 and rec.dropped == 0 and rec.users == {A, B}
    assert [t.index for t in h.ticks] == list(range(ticks))
    a, b = played(h, A), played(h, B)
    assert "c" in a and a.count("") > 10 and b[:45] == [""] * 45  # a gap; B is late

    for user, plays in ((A, a), (B, b)):
        ogg = rec.path(user, "ogg").read_bytes()
        ogg_packets = check_ogg_stream(ogg, ticks)
        wav = wav_pcm(rec.path(user, "wav"))
        assert len(wav) == ticks * 3840
        # The Ogg track holds the very packets played, each at its tick.
        at = {k: ogg_packets[k] for k, p in enumerate(plays) if p.startswith("p")}
        assert all(at[k] == packets[int(plays[k][1:])] for k in at)
        # libopus decoding the Ogg track gives the PCM the playout played (the WAV track) on
        # every tick up to the first silence after speech (from there the decoders' states differ).
        first = plays.index(next(p for p in plays if p))
        stop = plays.index("", first) if "" in plays[first:] else ticks
        decoder = OpusDecoder()
        decoded = b"".join(decoder.decode(p) for p in ogg_packets)
        assert decoded[:stop * 3840] == wav[:stop * 3840]
        # ffmpeg decodes the track to the same length, the same frame at every tick.
        theirs = ffmpeg_pcm(rec.path(user, "ogg"))
        assert len(theirs) == ticks * 3840
        for k, p in enumerate(plays):
            if p.startswith("p") and k > 0 and plays[k - 1].startswith("p"):
                frame = int(p[1:])
                assert dominant(tick_pcm(theirs, k)) == step_frequency(frame), (user, k)
                assert dominant(tick_pcm(wav, k)) == step_frequency(frame), (user, k)
            elif not p and (k == 0 or not plays[k - 1]):
                assert is_silent(tick_pcm(theirs, k)) and is_silent(tick_pcm(wav, k)), (user, k)
    # The mix is the sum of the tracks.
    mix = wav_pcm(rec.mix_path)
    wa, wb = wav_pcm(rec.path(A, "wav")), wav_pcm(rec.path(B, "wav"))
    assert mix == array.array("h", [max(-32768, min(32767, x + y)) for x, y in
                                    zip(array.array("h", wa), array.array("h", wb))]).tobytes()


def test_a_user_who_leaves_and_comes_back_keeps_one_track_of_the_calls_length(tmp_path):
    packets = stepped_tone_packets(100)
    h = Harness()
    writer = RecordingWriter(name="test-record")
    rec = CallRecorder(tmp_path, ("ogg",), mix=False, playout=h.rx, writer=writer)
    h.play(stream(A, packets[:30]) + stream(B, packets[:40], seed=3), until=0.9)
    rec.cleanup_user(A)
    h.play([], until=1.2)
    assert A not in h.ticks[-1].users and B in h.ticks[-1].users
    # The tracks are opened by the writer thread: wait for it (on a loaded machine it lags).
    for _ in range(1000):
        if rec.users == {A, B}:
            break
        threading.Event().wait(0.01)
    assert rec.users == {A, B}
    h.play(stream(A, packets[60:], start_time=1.2, sequence=5000, seed=4), until=3.0)
    rec.close()
    assert rec.join(10) and rec.errors == 0
    writer.close()
    ticks = len(h.ticks)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{A}.ogg", f"{B}.ogg"]
    for user in (A, B):
        check_ogg_stream(rec.path(user, "ogg").read_bytes(), ticks)
        assert len(ffmpeg_pcm(rec.path(user, "ogg"))) == ticks * 3840
    with pytest.raises(ValueError, match="no 'wav' tracks"):
        rec.path(A, "wav")


def _drain(rec):
    for _ in range(1000):
        if not rec.pending:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the writer did not catch up")


def test_a_slow_disk_drops_ticks_past_max_pending_and_the_tracks_stay_aligned(tmp_path):
    packets = stepped_tone_packets(100)
    h = Harness()
    writer = RecordingWriter(name="test-record")
    rec = CallRecorder(tmp_path, ("wav",), playout=h.rx, writer=writer, max_pending=10)
    h.play(stream(A, packets[:10]), until=0.2)
    assert rec.join(0) is False
    with rec._session.lock:  # the writer thread blocks as on a stalled disk
        h.play(stream(A, packets[10:], start_time=0.2 + 1e-6, first_frame=10), until=1.0)
        blocked_ticks = len(h.ticks)
    assert rec.dropped > 0 and rec.pending == 10
    _drain(rec)  # the disk catches up (a test clock runs faster than the writer)
    h.play([], until=3.0)
    rec.close()
    assert rec.join(10)
    writer.close()
    ticks = len(h.ticks)
    assert rec.gaps == rec.dropped and rec.ticks == ticks - rec.dropped
    assert blocked_ticks < ticks
    for path in (rec.path(A, "wav"), rec.mix_path):
        pcm = wav_pcm(path)
        assert len(pcm) == ticks * 3840
    # Ticks written after the drop are still at their place on the timeline.
    a = played(h, A)
    wav = wav_pcm(rec.path(A, "wav"))
    written = [k for k in range(ticks) if a[k].startswith("p") and a[k - 1].startswith("p")]
    kept = [k for k in written if not is_silent(tick_pcm(wav, k))]
    assert kept and all(dominant(tick_pcm(wav, k)) == step_frequency(int(a[k][1:])) for k in kept)


def test_files_are_valid_while_the_recording_runs(tmp_path):
    packets = stepped_tone_packets(150)
    h = Harness()
    writer = RecordingWriter(name="test-record")
    rec = CallRecorder(tmp_path, playout=h.rx, writer=writer, flush_interval=0.5)
    h.play(stream(A, packets), until=2.5)
    _drain(rec)
    # Mid-recording: the WAV headers say what was synced, the Ogg pages written parse.
    with wave.open(str(rec.path(A, "wav"))) as w:
        assert w.getnframes() >= 960 * 100
    assert wave.open(str(rec.mix_path)).getnframes() >= 960 * 100
    demuxer = OggOpusDemuxer()
    demuxer.feed(rec.path(A, "ogg").read_bytes())
    count = 0
    while demuxer.read_packet() is not None:
        count += 1
    assert count >= 100 and count % 50 == 0  # whole pages only
    rec.close()
    assert rec.join(10)
    writer.close()
    with OggOpusReader(rec.path(A, "ogg")) as reader:
        assert len(list(reader)) == len(h.ticks)


_CRASHING_BOT = textwrap.dedent('''
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from _playout import stepped_tone_packets
    from fastvoice.record import CallRecorder
    from fastvoice.rtp import Packet

    async def bot():
        rec = CallRecorder({directory!r})
        for k, opus in enumerate(stepped_tone_packets(50)):
            rec.receive_opus_frame(7, Packet(100 + k, 960 * k, 0, opus, marker=k == 0))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        raise RuntimeError("the bot failed")

    asyncio.run(bot())
''')


def test_the_files_are_finished_when_the_bot_dies_of_an_exception(tmp_path):
    script = _CRASHING_BOT.format(tests=str(ROOT / "tests"), directory=str(tmp_path / "rec"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "the bot failed" in done.stderr
    directory = tmp_path / "rec"
    assert sorted(p.name for p in directory.iterdir()) == ["7.ogg", "7.wav", "mix.wav"]
    with wave.open(str(directory / "7.wav")) as w:
        frames = w.getnframes()
    assert frames >= 960 * 45 and frames % 960 == 0
    assert wave.open(str(directory / "mix.wav")).getnframes() == frames
    check_ogg_stream((directory / "7.ogg").read_bytes(), frames // 960)  # end-of-stream page written


def test_bad_arguments_are_refused_by_name(tmp_path):
    h = Harness()
    with pytest.raises(ValueError, match="unknown recording format 'mp3'"):
        CallRecorder(tmp_path, ("mp3",), playout=h.rx)
    with pytest.raises(ValueError, match="nothing to record"):
        CallRecorder(tmp_path, (), mix=False, playout=h.rx)
    with pytest.raises(ValueError, match="max_pending"):
        CallRecorder(tmp_path, playout=h.rx, max_pending=0)
    with pytest.raises(TypeError, match="playout must be a PlayoutReceiver"):
        CallRecorder(tmp_path, playout=object())
    with pytest.raises(RuntimeError, match="running event loop"):
        CallRecorder(tmp_path)


async def test_async_with_finishes_the_files_when_the_block_raises(tmp_path):
    packets = stepped_tone_packets(60)
    h = Harness()
    writer = RecordingWriter(name="test-record")
    with pytest.raises(KeyError):
        async with CallRecorder(tmp_path, playout=h.rx, writer=writer) as rec:
            h.play(stream(A, packets))
            raise KeyError("the bot failed")
    assert rec.closed and rec.finished and h.rx.closed  # async with waited for the files
    writer.close()
    ticks = len(h.ticks)
    check_ogg_stream(rec.path(A, "ogg").read_bytes(), ticks)
    assert len(wav_pcm(rec.path(A, "wav"))) == len(wav_pcm(rec.mix_path)) == ticks * 3840


# -- end to end through the local voice server --------------------------------------------------

async def test_a_call_through_the_local_server_is_recorded_aligned(tmp_path):
    import asyncio

    from _calls import make_manager, opus_stream, wait_until
    from fastvoice.testing import VoiceServer

    guild, channel, speaker_id, listener_id = 6161, 6262, 3001, 3002
    packets = stepped_tone_packets(100)
    async with VoiceServer(seed=17) as server:
        _, speaker_bots = make_manager(server, speaker_id)
        _, listener_bots = make_manager(server, listener_id)
        try:
            speaker = speaker_bots.create_conn(guild)
            listener = listener_bots.create_conn(guild)
            rec = CallRecorder(tmp_path, decode_threads=1)
            ticks = []
            rec.playout.add_listener(ticks.append)
            listener.set_opus_frame_receiver(rec)
            await asyncio.gather(speaker.open(channel), listener.open(channel))
            await asyncio.sleep(0.3)  # the recording starts before the speaker does
            speaker.set_opus_frame_provider(opus_stream(packets))
            await wait_until(lambda: not speaker.sender.live, timeout=15, what="end of the stream")
            await asyncio.sleep(0.4)
        finally:
            await speaker_bots.close()
            await listener_bots.close()
    assert await rec.wait_closed(10)  # the connection closed the recorder
    assert rec.closed and rec.errors == 0 and rec.dropped == 0 and rec.users == {speaker_id}
    total = ticks[-1].index - rec._session.origin + 1
    assert rec.duration == pytest.approx(total * 0.02)
    ogg = rec.path(speaker_id, "ogg")
    check_ogg_stream(ogg.read_bytes(), total)
    theirs, wav, mix = ffmpeg_pcm(ogg), wav_pcm(rec.path(speaker_id, "wav")), wav_pcm(rec.mix_path)
    assert len(theirs) == len(wav) == len(mix) == total * 3840
    assert wav == mix  # one voice
    number = {p: k for k, p in enumerate(packets)}
    origin = rec._session.origin
    played = [(t.index - origin, number[t.packets[speaker_id]]) for t in ticks
              if t.packets.get(speaker_id) in number]
    assert len(played) >= 90 and played[0][0] >= 10  # silence before the speaker started
    assert is_silent(theirs[:played[0][0] * 3840]) and is_silent(wav[:played[0][0] * 3840])
    checked = 0
    for (r0, k0), (r1, k1) in zip(played, played[1:]):
        if r1 == r0 + 1 and k1 == k0 + 1:
            assert dominant(tick_pcm(theirs, r1)) == dominant(tick_pcm(wav, r1)) == step_frequency(k1), r1
            checked += 1
    assert checked >= 80
