"""FFmpegOpusProvider: real ffmpeg into a real connection, options, errors and clean shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import pytest

from _calls import Collect, wait_until
from fastvoice import FFmpegError, FFmpegNotFoundError, FFmpegOpusProvider, OpusFrameProvider
from fastvoice.conn import ConnConfig
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.testing import MainGatewayStandIn, VoiceServer

SILENCE = b"\xf8\xff\xfe"


def require_ffmpeg():
    """Skip without ffmpeg (with libopus), unless FASTVOICE_REQUIRE_FFMPEG=1 makes it a failure."""
    reason = None
    if shutil.which("ffmpeg") is None:
        reason = "ffmpeg not found in PATH"
    else:
        encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
        if "libopus" not in encoders:
            reason = "ffmpeg has no libopus encoder"
    if reason is not None:
        if os.environ.get("FASTVOICE_REQUIRE_FFMPEG") == "1":
            pytest.fail(f"{reason}, and FASTVOICE_REQUIRE_FFMPEG=1")
        pytest.skip(reason)


@pytest.fixture
def ffmpeg():
    require_ffmpeg()


def sine(seconds, frequency=440):
    """Source and input options for ffmpeg's tone generator."""
    return f"sine=frequency={frequency}:duration={seconds}", "-f lavfi"


async def drain(provider, timeout=20.0):
    """Everything the provider gives, as the send clock would take it (never faster than asked)."""
    frames, errors = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = provider.provide_opus_frame()
        except EOFError:
            return frames, errors
        except Exception as exc:
            errors.append(exc)
            continue
        if frame is None:
            await asyncio.sleep(0.005)
        else:
            frames.append(frame)
    raise AssertionError(f"no EOF within {timeout} s ({len(frames)} frames)")


def open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


# -- argv and options (no ffmpeg needed) -------------------------------------------------------------


def test_command_line_defaults():
    provider = FFmpegOpusProvider("song.mp3")
    assert isinstance(provider, OpusFrameProvider)
    args = provider.args
    assert args[0] == "ffmpeg" and args[args.index("-i") + 1] == "song.mp3"
    for option, value in [("-c:a", "libopus"), ("-frame_duration", "20"), ("-ar", "48000"), ("-ac", "2"),
                          ("-b:a", "128k"), ("-f", "ogg"), ("-page_duration", "20000"), ("-flush_packets", "1")]:
        assert args[args.index(option) + 1] == value
    assert args[-1] == "pipe:1"
    assert "-ss" not in args and "-filter:a" not in args


def test_command_line_options():
    provider = FFmpegOpusProvider(
        "https://example.com/a.ogg", executable="/opt/ff/ffmpeg", bitrate=64, volume=0.25, seek=90.5,
        before_options="-reconnect 1 -headers 'X-Test: a b'", options=["-af", "aecho"], read_ahead=10,
    )
    args = provider.args
    assert args[0] == "/opt/ff/ffmpeg"
    i = args.index("-i")
    assert args[i - 2 : i] == ["-ss", "90.500"]  # input seeking: before -i
    assert args.index("-reconnect") < i and "X-Test: a b" in args[:i]  # split like a shell
    assert args[args.index("-filter:a") + 1] == "volume=0.25"
    assert args[args.index("-b:a") + 1] == "64k"
    assert args.index("-af") > args.index("-frame_duration")  # user options may override ours
    assert args[-7:] == ["-f", "ogg", "-page_duration", "20000", "-flush_packets", "1", "pipe:1"]


@pytest.mark.parametrize(
    "options, message",
    [({"bitrate": 5}, "bitrate"), ({"bitrate": 96.0}, "bitrate"), ({"volume": -1}, "volume"),
     ({"volume": float("nan")}, "volume"), ({"seek": -2}, "seek"), ({"seek": float("inf")}, "seek"),
     ({"read_ahead": 0}, "buffer_frames")],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FFmpegOpusProvider("a.mp3", **options)


def test_options_must_be_strings():
    with pytest.raises(TypeError, match="options"):
        FFmpegOpusProvider("a.mp3", options=["-b:a", 5])


# -- missing ffmpeg, failing ffmpeg ---------------------------------------------------------------------


async def test_missing_executable_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-ffmpeg-here")
    provider = FFmpegOpusProvider("a.mp3", executable=missing)
    with pytest.raises(FFmpegNotFoundError, match="executable=") as info:
        await provider.start()
    assert missing in str(info.value) and isinstance(info.value, FileNotFoundError)
    assert provider.error is info.value
    with pytest.raises(FFmpegNotFoundError):  # raised once through the provider path too
        provider.provide_opus_frame()
    with pytest.raises(EOFError):
        provider.provide_opus_frame()
    await provider.aclose()


async def test_missing_executable_when_started_lazily():
    provider = FFmpegOpusProvider("a.mp3", executable="fastvoice-test-no-such-ffmpeg")
    assert provider.provide_opus_frame() is None  # starting in the background
    frames, errors = await drain(provider, timeout=5)
    assert frames == [] and len(errors) == 1 and isinstance(errors[0], FFmpegNotFoundError)
    await provider.aclose()


async def test_ffmpeg_failing_on_a_bad_file_is_visible_and_ends(ffmpeg, tmp_path, caplog):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not audio at all" * 10)
    provider = FFmpegOpusProvider(bad)
    await provider.start()
    frames, errors = await asyncio.wait_for(drain(provider), 20)
    assert frames == []
    assert len(errors) == 1 and isinstance(errors[0], FFmpegError)
    assert "exited with status 1" in str(errors[0]) and "bad.mp3" in str(errors[0])  # quotes its stderr
    assert provider.error is errors[0] and provider.returncode not in (None, 0)
    assert any("ffmpeg stream failed" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    await provider.aclose()


# -- real streams -----------------------------------------------------------------------------------------


async def test_sine_through_ffmpeg_is_complete_and_argv_effects(ffmpeg):
    source, before = sine(2)
    plain = FFmpegOpusProvider(source, before_options=before)
    await plain.start()
    frames, errors = await drain(plain)
    assert errors == [] and plain.returncode == 0 and plain.head.channels == 2
    assert len(frames) == 101  # 2 s of 20 ms frames + the encoder delay's frame
    seeked = FFmpegOpusProvider(source, before_options=before, seek=1.5)
    await seeked.start()
    later, errors = await drain(seeked)
    assert errors == [] and 24 <= len(later) <= 27  # only the last half second
    muted = FFmpegOpusProvider(source, before_options=before, volume=0.0)
    await muted.start()
    quiet, errors = await drain(muted)
    assert errors == [] and len(quiet) == 101
    # Digital silence costs libopus a few bytes a frame; the tone about 300 at 128 kbit/s.
    assert sum(map(len, quiet)) * 10 < sum(map(len, frames))
    for provider in (plain, seeked, muted):
        await provider.aclose()


async def test_read_ahead_is_bounded_and_ffmpeg_waits(ffmpeg):
    source, before = sine(60)
    provider = FFmpegOpusProvider(source, before_options=before, read_ahead=5)
    await provider.start()
    await wait_until(lambda: provider.buffered_frames == 5)
    await asyncio.sleep(1.0)  # ffmpeg encodes a minute of tone in well under a second when not held back
    assert provider.buffered_frames == 5
    assert provider.returncode is None  # still running: blocked on the full pipe
    first = [provider.provide_opus_frame() for _ in range(5)]
    assert all(first) and provider.provide_opus_frame() is None  # underrun: None, not EOF
    await wait_until(lambda: provider.buffered_frames == 5)  # reading resumed
    await provider.aclose()


async def test_close_mid_stream_kills_and_reaps(ffmpeg):
    baseline_tasks = asyncio.all_tasks()
    baseline_fds = open_fds()
    source, before = sine(60)
    provider = FFmpegOpusProvider(source, before_options=before)
    await provider.start()
    process = provider.process
    await wait_until(lambda: provider.buffered_frames >= 10)
    assert process.returncode is None
    provider.close()  # the send path closes synchronously
    with pytest.raises(EOFError):
        provider.provide_opus_frame()
    await provider.wait_closed()
    assert process.returncode is not None and process.returncode < 0  # killed, and reaped
    assert asyncio.all_tasks() == baseline_tasks
    if baseline_fds is not None:
        await wait_until(lambda: open_fds() <= baseline_fds, timeout=3)
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # no zombie left behind


async def test_aclose_before_and_after_the_end(ffmpeg):
    baseline_tasks = asyncio.all_tasks()
    never = FFmpegOpusProvider("x")
    await never.aclose()  # never started: nothing to do
    with pytest.raises(FFmpegError, match="closed"):
        await never.start()
    source, before = sine(0.2)
    async with FFmpegOpusProvider(source, before_options=before) as done:
        frames, _ = await drain(done)
        assert len(frames) == 11
    assert done.returncode == 0
    lazy = FFmpegOpusProvider(source, before_options=before)
    assert lazy.provide_opus_frame() is None
    await lazy.aclose()  # closed while starting
    assert lazy.process is None or lazy.process.returncode is not None
    assert asyncio.all_tasks() == baseline_tasks


def make_manager(server, user_id):
    main = MainGatewayStandIn(server, user_id)
    config = ConnConfig(open_timeout=5, gateway_config=GatewayConfig(backoff_base=0.05))
    manager = Manager(main.update_voice_state, user_id, conn_config=config)
    main.attach(manager)
    return manager


class Recorder:
    """Wraps a provider and records what it handed to the sender."""

    def __init__(self, provider):
        self.provider = provider
        self.frames = []

    def provide_opus_frame(self):
        frame = self.provider.provide_opus_frame()
        if frame is not None:
            self.frames.append(frame)
        return frame

    def close(self):
        self.provider.close()


async def test_ffmpeg_stream_through_a_real_connection(ffmpeg):
    source, before = sine(1.5)
    async with VoiceServer() as server:
        speakers, listeners = make_manager(server, 2001), make_manager(server, 2002)
        speaker, listener = speakers.create_conn(31), listeners.create_conn(31)
        sink = Collect()
        listener.set_opus_frame_receiver(sink)
        await asyncio.gather(speaker.open(310), listener.open(310))
        provider = FFmpegOpusProvider(source, before_options=before)
        await provider.start()
        await wait_until(lambda: provider.buffered_frames == 50)  # a full read-ahead: no underrun at the start
        recorder = Recorder(provider)
        speaker.set_opus_frame_provider(recorder)
        await wait_until(lambda: len(sink.frames) >= 76 + 5)
        await asyncio.sleep(0.1)
        assert len(recorder.frames) == 76  # 1.5 s of 20 ms frames + the encoder delay's frame
        assert sink.frames == [(2001, f) for f in recorder.frames] + [(2001, SILENCE)] * 5
        arrivals = [p.arrival for p in server.packets(speaker.udp.ssrc)]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert sum(gaps) / len(gaps) == pytest.approx(0.020, abs=0.004)  # paced, not burst
        assert speaker.sender.stats.silence == 5 and speaker.sender.stats.errors == 0
        process = provider.process
        await speakers.close()  # closes the sender, which closes the provider
        await listeners.close()
        await provider.wait_closed()
        assert process.returncode == 0
