"""The demo command runs end to end and reports success (or failure) through its exit status."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("extra", [[], ["--no-dave"]])
def test_demo_small_run(extra):
    run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", "-n", "3", "-s", "1", *extra],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"calls received intact\s+3 of 3\n", run.stdout)
    assert re.search(r"frames received\s+(\d+) of \1 \(their sockets dropped 0\)\n", run.stdout)
    # per direction: what was sent and read, what arrived, where nothing was lost; each process's CPU
    assert re.search(r"packets sent\s+(\d+) \(deficit 0 ticks.*\n\s+read by the test server\s+\1 \(", run.stdout)
    assert re.search(r"lost\s+0: 0 at the server's socket, 0 elsewhere", run.stdout)
    assert re.search(r"lost\s+0: 0 at the listeners' sockets, 0 to the server's fault knobs, 0 elsewhere", run.stdout)
    for process in ("speaker bot", "listener bot", "test server"):
        assert re.search(rf"CPU, {process}\s+\d+\.\d\d cores", run.stdout), process
    assert "OK: every frame arrived, in order" in run.stdout
    summary = r"\n\s+DAVE\s+off\n" if extra else r"\n\s+DAVE\s+on, 0 plaintext packets in E2EE calls\n"
    assert re.search(summary, run.stdout)


@pytest.mark.parametrize("args, value, accepted", [
    (["-s", "0"], "'0'", "from 0.02 (one 20 ms frame) to 3600"),
    (["-s", "-1"], "'-1'", "from 0.02 (one 20 ms frame) to 3600"),
    (["-s", "inf"], "'inf'", "from 0.02 (one 20 ms frame) to 3600"),
    (["-s", "nan"], "'nan'", "from 0.02 (one 20 ms frame) to 3600"),
    (["-s", "ten"], "'ten'", "from 0.02 (one 20 ms frame) to 3600"),
    (["-n", "0"], "'0'", "from 1 to 5000"),
    (["--calls", "-3"], "'-3'", "from 1 to 5000"),
    (["--connections", "2.5"], "'2.5'", "from 1 to 5000"),
])
def test_demo_rejects_bad_arguments(args, value, accepted):
    run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", *args], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert value in last and accepted in last, last
    assert ("-s/--seconds" if args[0] == "-s" else "-n/--calls") in last


def test_demo_calls_option_and_its_old_name():
    from fastvoice._demo import parser

    assert parser().parse_args(["-n", "7"]).calls == 7
    assert parser().parse_args(["--calls", "8"]).calls == 8
    assert parser().parse_args(["--connections", "9"]).calls == 9
    assert parser().parse_args(["-s", "0.02"]).seconds == 0.02


def test_demo_help_is_plain_text_and_names_the_servers_limit():
    run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "``" not in text and not re.search(r":(class|meth|func|attr|mod):`", text), text
    assert "--calls" in text and "--connections" in text
    # the server's limit on this machine: its receive buffer in KiB
    assert re.search(r"UDP receive buffer until it reads them: \d+ KiB on this machine", " ".join(text.split()))
    assert "exits 3" in text


def test_account_places_each_loss():
    from fastvoice._demo import account

    want = [bytes([i]) for i in range(10)]
    first = 65530  # the sequence wraps inside the stream
    seqs = [(first + i) & 0xFFFF for i in range(10)]
    at_server = 8  # the server read 8 of the 10
    heard = [s for i, s in enumerate(seqs) if i not in (2, 3, 7)]
    frames = [want[(s - first) & 0xFFFF] for s in heard]
    frames[0] = b"x"
    loss = account(first, want, 10, at_server, heard, frames)
    assert (loss.not_sent, loss.before_server, loss.after_server, loss.changed) == (0, 2, 1, 1)
    assert account(first, want, 10, 10, seqs, want) == type(loss)()
    # A speaker that sent 8 of its 10 frames: the 2 it never sent are not the server's loss.
    short = account(first, want, 8, 8, seqs[:8], want[:8])
    assert (short.not_sent, short.before_server, short.after_server) == (2, 0, 0)
    # A repeated or foreign sequence number heard is not a packet delivered.
    twice = account(first, want, 10, 10, seqs[:9] + [seqs[0], 12345], want[:9] + [want[0], b"y"])
    assert (twice.before_server, twice.after_server, twice.changed) == (0, 1, 1)


def _is_audio(data: bytes) -> bool:
    return len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0x78


async def test_demo_blames_the_test_server_for_what_its_socket_never_read(monkeypatch, capsys):
    from fastvoice import _demo
    from fastvoice.testing import VoiceServer

    on_datagram = VoiceServer._on_datagram
    dropped = [0]

    def dropping(self, data, addr, now=None):
        if _is_audio(data) and int.from_bytes(data[2:4], "big") % 9 == 4:
            dropped[0] += 1  # as if the server's socket had overflowed: never read, counted by the kernel
            return
        return on_datagram(self, data, addr, now)

    monkeypatch.setattr(VoiceServer, "_on_datagram", dropping)
    monkeypatch.setattr(VoiceServer, "udp_receive_drops", property(lambda self: dropped[0]))
    status = await _demo.run(2, 1.0, False, in_process=True)
    out = capsys.readouterr().out
    assert status == _demo.SERVER_DROPPED == 3, out
    flat = " ".join(out.split())  # the verdict is wrapped to the table's width
    assert "INCOMPLETE: the local test server did not read" in flat
    assert "fastvoice delivered every packet the server forwarded" in flat
    lost = re.search(r"speakers -> test server\n(?:.*\n)*?\s+lost\s+([1-9]\d*): \1 at the server's socket, 0 elsewhere", out)
    assert lost, out
    assert re.search(r"lost\s+0: 0 at the listeners' sockets, 0 to the server's fault knobs, 0 elsewhere", out)
    assert "FAILED" not in out


async def test_demo_does_not_blame_the_server_for_loss_its_socket_does_not_explain(monkeypatch, capsys):
    # Packets that never reached the server while its socket dropped nothing: not the server's limit.
    from fastvoice import _demo
    from fastvoice.testing import VoiceServer

    on_datagram = VoiceServer._on_datagram

    def dropping(self, data, addr, now=None):
        if _is_audio(data) and int.from_bytes(data[2:4], "big") % 9 == 4:
            return
        return on_datagram(self, data, addr, now)

    monkeypatch.setattr(VoiceServer, "_on_datagram", dropping)
    monkeypatch.setattr(VoiceServer, "udp_receive_drops", property(lambda self: 0))
    status = await _demo.run(2, 1.0, False, in_process=True)
    out = capsys.readouterr().out
    assert status == _demo.LOST == 1, out
    assert "INCOMPLETE" not in out
    assert re.search(r"FAILED: \d+ packets were lost before the test server, more than its socket dropped \(0\)",
                     " ".join(out.split()))


async def test_demo_blames_the_path_after_the_server_for_what_listeners_missed(monkeypatch, capsys):
    from fastvoice import _demo
    from fastvoice.testing._media import MediaForwarder

    forward = MediaForwarder.forward

    def lossy(self, sender, packet):
        if packet.sequence % 9 != 4:
            forward(self, sender, packet)

    monkeypatch.setattr(MediaForwarder, "forward", lossy)
    status = await _demo.run(2, 1.0, False, in_process=True)
    out = capsys.readouterr().out
    assert status == _demo.LOST == 1, out
    assert re.search(r"FAILED: \d+ packets were lost between the test server and the listeners", " ".join(out.split()))
    assert re.search(r"lost\s+0: 0 at the server's socket, 0 elsewhere", out)
    assert re.search(r"lost\s+[1-9]\d*: 0 at the listeners' sockets, 0 to the server's fault knobs, [1-9]\d* elsewhere",
                     out)


async def test_demo_places_what_the_servers_loss_knob_dropped(monkeypatch, capsys):
    from fastvoice import _demo
    from fastvoice.testing import VoiceServer

    init = VoiceServer.__init__

    def lossy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.udp_loss = 0.05

    monkeypatch.setattr(VoiceServer, "__init__", lossy)
    status = await _demo.run(3, 2.0, False, in_process=True)
    out = capsys.readouterr().out
    assert status == _demo.LOST, out
    found = re.search(r"test server -> listeners\n(?:.*\n)*?\s+lost\s+(\d+): 0 at the listeners' sockets, "
                      r"(\d+) to the server's fault knobs, 0 elsewhere", out)
    assert found and int(found.group(1)) == int(found.group(2)) > 0, out
    assert re.search(r"lost\s+0: 0 at the server's socket, 0 elsewhere", out)


def test_capacity_words_name_the_process_that_runs_out():
    from fastvoice._demo_report import capacity_warning

    assert capacity_warning(200, {"speaker bot": 0.2, "listener bot": 0.3, "test server": 0.1}, 2) is None
    one_loop = " ".join(capacity_warning(1000, {"speaker bot": 0.6, "listener bot": 0.97, "test server": 0.3}, 4).split())
    assert "too small for 1000 calls: the listener bot uses 0.97 of its one core" in one_loop
    assert re.search(r"about (\d+) calls fit here", one_loop)
    assert int(re.search(r"about (\d+) calls fit", one_loop).group(1)) < 1000
    machine = " ".join(capacity_warning(1000, {"speaker bot": 0.7, "listener bot": 0.8, "test server": 0.5}, 2).split())
    assert "the three processes use 2.00 of this machine's 2 cores" in machine


async def test_demo_says_the_machine_is_too_small_before_the_summary(monkeypatch, capsys):
    from fastvoice import _demo

    # As if the listener bot's loop were saturated two seconds into the run.
    monkeypatch.setattr(_demo, "_cores_now", lambda *args: {"listener bot": 0.99, "speaker bot": 0.5})
    status = await _demo.run(2, 2.5, False)
    out = capsys.readouterr().out
    assert status == _demo.OK, out  # nothing was lost here: the words come before any verdict
    flat = " ".join(out.split())
    assert flat.index("This machine is too small for 2 calls: the listener bot uses 0.99") < flat.index("connections 4:")


def test_demo_runs_without_the_cryptography_package():
    # What a plain `pip install fastvoice` has: no extras, so no cryptography. DAVE is on.
    code = ("import runpy, sys; sys.modules['cryptography'] = None; "
            "sys.argv = ['fastvoice', 'demo', '-n', '2', '-s', '1']; runpy.run_module('fastvoice', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "OK: every frame arrived, in order" in run.stdout
    assert re.search(r"\n\s+DAVE\s+on, 0 plaintext packets in E2EE calls\n", run.stdout)


def test_demo_clip_is_opus():
    from fastvoice._demo import load_clip

    frames = load_clip()
    assert len(frames) >= 100
    # TOC byte of every frame: CELT fullband 20 ms (config 31), stereo
    assert all(f[0] >> 3 == 31 and f[0] & 0x04 for f in frames)


def test_bundled_files_are_named_for_their_format():
    # The clip is length-prefixed frames (OpusReader's format, ".dca"); a ".opus" name would
    # promise an Ogg Opus file, which OggOpusReader would then fail to read.
    import io
    from importlib import resources

    from fastvoice import OggOpusReader, OpusReader
    from fastvoice._demo import load_clip

    data = resources.files("fastvoice").joinpath("data")
    names = sorted(entry.name for entry in data.iterdir())
    assert "demo_clip.dca" in names
    for name in names:
        if name.endswith(".opus"):
            OggOpusReader(io.BytesIO(data.joinpath(name).read_bytes())).provide_opus_frame()
    reader = OpusReader(io.BytesIO(data.joinpath("demo_clip.dca").read_bytes()))
    assert [reader.provide_opus_frame() for _ in range(3)] == load_clip()[:3]


def test_demo_records_the_listeners_and_checks_each_recording_against_the_clip(tmp_path):
    import wave

    opus_reference = pytest.importorskip("opus_reference")
    opus_reference.require_libopus()
    run = subprocess.run([sys.executable, "-m", "fastvoice", "demo", "-n", "2", "-s", "1", "--no-dave",
                          "--record", str(tmp_path / "rec")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "recordings: 2 of 2 calls hold the whole clip, aligned, with its PCM" in run.stdout
    report = (tmp_path / "rec" / "report.txt").read_text().splitlines()
    assert len(report) == 2 and all(re.match(r"call \d: OK: .* all 50 frames on consecutive ticks", r) for r in report)
    for call in ("call-0000", "call-0001"):
        assert sorted(p.name for p in (tmp_path / "rec" / call).iterdir()) == ["1001.ogg", "mix.wav"]
        with wave.open(str(tmp_path / "rec" / call / "mix.wav")) as w:
            assert w.getnframes() >= 50 * 960


def _recording(directory, packets):
    """An Ogg track of ``packets`` and the mix that decoding them gives (what a recorder writes)."""
    import wave

    from fastvoice.ogg_writer import OggOpusWriter
    from fastvoice.opus_decoder import OpusDecoder

    directory.mkdir()
    writer = OggOpusWriter()
    data = writer.header_pages() + b"".join(writer.write(p) for p in packets) + writer.finish()
    (directory / "1001.ogg").write_bytes(data)
    decoder = OpusDecoder()
    with wave.open(str(directory / "mix.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"".join(decoder.decode(p) for p in packets))


def test_the_recording_check_finds_a_missing_a_moved_and_a_foreign_frame(tmp_path):
    opus_reference = pytest.importorskip("opus_reference")
    opus_reference.require_libopus()
    from fastvoice._demo import load_clip
    from fastvoice._demo_record import check_recording, clip_pcm
    from fastvoice.ogg_writer import concealment_packet

    sent = load_clip()[:40]
    clip = clip_pcm(sent)
    fill = [concealment_packet()] * 7
    _recording(tmp_path / "good", fill + sent + fill)
    good = check_recording(0, tmp_path / "good", 1001, sent, clip, 40)
    assert good.ok and good.offset == 7 and good.ticks == 54 and good.pcm_identical and good.mix_identical

    missing = sent[:20] + [concealment_packet(sent[19])] + sent[21:]
    _recording(tmp_path / "missing", fill + missing)
    check = check_recording(1, tmp_path / "missing", 1001, sent, clip, 40)
    assert not check.ok and not check.faithful and check.frames == 39 and "FAILED: 39 of 40" in check.line()
    explained = check_recording(1, tmp_path / "missing", 1001, sent, clip, 39)  # lost before the listener
    assert not explained.ok and explained.faithful and "1 lost before the listener" in explained.line()
    late = check_recording(1, tmp_path / "missing", 1001, sent, clip, 40, {"late": 1, "overflowed": 0})
    assert not late.ok and late.faithful and "1 dropped by the playout (1 late)" in late.line()

    _recording(tmp_path / "bad-mix", fill + sent + fill)
    mix = bytearray((tmp_path / "bad-mix" / "mix.wav").read_bytes())
    mix[44 + 10 * 3840] ^= 0x40  # one sample of the clip's fourth frame
    (tmp_path / "bad-mix" / "mix.wav").write_bytes(mix)
    check = check_recording(1, tmp_path / "bad-mix", 1001, sent, clip, 40)
    assert check.pcm_identical and not check.mix_identical and not check.ok

    _recording(tmp_path / "moved", fill + sent[:20] + fill[:1] + sent[20:])
    check = check_recording(2, tmp_path / "moved", 1001, sent, clip, 40)
    assert not check.ok and check.offset is None and "moved on the timeline 1 times" in check.line()

    _recording(tmp_path / "foreign", fill + sent[:10] + [sent[30]] + sent[10:])
    check = check_recording(3, tmp_path / "foreign", 1001, sent, clip, 40)
    assert not check.faithful and "not sent, or out of order" in check.line()
