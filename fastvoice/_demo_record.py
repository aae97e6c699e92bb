"""``python -m fastvoice demo --record DIR``: record every listener's call and check each
recording against the clip that was sent.

Each listener connection gets a :class:`~fastvoice.record.CallRecorder` (the speaker's Ogg
Opus track and the call's mix) beside the demo's own frame counter.  Once the calls are over,
each recording is read back and compared with the clip:

- the Ogg file parses (fastvoice's demuxer), its last granule position is the recording's
  length and it holds one 20 ms packet per tick;
- the packets the speaker sent are in it, in order, each once, on consecutive ticks (one
  offset for the whole clip: the recording is aligned with the call's timeline);
- decoded by libopus, the track's PCM where the clip plays is the clip's own PCM (the clip
  decoded by a fresh decoder), sample for sample, and ``mix.wav`` holds the same PCM there;
- frames missing from the recording are explained: lost before the listener (the demo's
  accounting) or dropped by the listener's playout as late.
"""

from __future__ import annotations

import struct
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import SILENCE_AUDIO_FRAME

__all__ = ["Tee", "RecordingCheck", "clip_pcm", "check_recording", "start_recorders"]

_TICK_BYTES = 960 * 2 * 2  # 20 ms of 48 kHz stereo s16le


class Tee:
    """An OpusFrameReceiver handing every call to several receivers."""

    def __init__(self, *receivers: Any) -> None:
        self.receivers = receivers

    def receive_opus_frame(self, user_id: int, packet: Any) -> None:
        for receiver in self.receivers:
            receiver.receive_opus_frame(user_id, packet)

    def cleanup_user(self, user_id: int) -> None:
        for receiver in self.receivers:
            receiver.cleanup_user(user_id)

    def close(self) -> None:
        for receiver in self.receivers:
            receiver.close()


def start_recorders(directory: str | Path, count: int) -> list[Any]:
    """One recorder per call, into ``directory/call-NNNN`` (on the running event loop)."""
    from .record import CallRecorder

    root = Path(directory)
    return [CallRecorder(root / f"call-{i:04d}", formats=("ogg",), mix=True) for i in range(count)]


def clip_pcm(frames: list[bytes]) -> bytes:
    """The frames decoded in order by a fresh libopus decoder (48 kHz stereo)."""
    from .opus_decoder import OpusDecoder

    decoder = OpusDecoder()
    return b"".join(decoder.decode(frame) for frame in frames)


@dataclass
class RecordingCheck:
    """What one call's recording holds, compared with what was sent."""

    call: int
    ticks: int = 0  # the recording's length, in 20 ms ticks
    frames: int = 0  # frames of the clip found in the track, in order
    expected: int = 0  # frames sent
    lost_on_the_way: int = 0  # frames the listener never received
    playout_drops: dict[str, int] = field(default_factory=dict)  # frames the listener's playout dropped, by cause
    offset: int | None = None  # the tick the clip starts on (None: not one offset for all)
    pcm_identical: bool = False
    mix_identical: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every frame sent is in the track, aligned, with the clip's PCM."""
        return not self.problems and self.frames == self.expected and self.pcm_identical

    @property
    def faithful(self) -> bool:
        """True when the recording holds everything the listener played: frames missing from
        it were lost before the listener or dropped by its playout as late."""
        return not self.problems and self.frames + self.lost_on_the_way + self.late >= self.expected

    @property
    def late(self) -> int:
        """Frames the listener's playout dropped (late, to shrink its delay, or overflowing)."""
        return sum(self.playout_drops.values())

    def line(self) -> str:
        """One line of the report."""
        if self.ok and self.offset is not None:
            return (f"call {self.call}: OK: {self.ticks * 0.02:.2f} s, all {self.expected} frames on consecutive "
                    f"ticks from {self.offset * 0.02:.2f} s, PCM identical to the clip's (track and mix)")
        what = f"call {self.call}: {'INCOMPLETE' if self.faithful else 'FAILED'}: {self.frames} of {self.expected} " \
               f"frames"
        if self.lost_on_the_way:
            what += f", {self.lost_on_the_way} lost before the listener"
        if self.late:
            causes = ", ".join(f"{n} {cause}" for cause, n in self.playout_drops.items() if n)
            what += f", {self.late} dropped by the playout ({causes})"
        return "; ".join([what, *self.problems])


def _last_granule(data: bytes) -> int | None:
    last = data.rfind(b"OggS")
    if last < 0 or len(data) < last + 14:
        return None
    return int(struct.unpack_from("<q", data, last + 6)[0])


def _is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


def check_recording(call: int, directory: Path, user_id: int, sent: list[bytes], clip: bytes, heard: int,
                    playout_drops: dict[str, int] | None = None) -> RecordingCheck:
    """Check one call's recording (``directory``) of ``user_id`` against the frames ``sent``
    (``clip``: their PCM), knowing the listener received ``heard`` of them and its playout
    dropped ``playout_drops`` (counts by cause)."""
    from .ogg import OggOpusReader
    from .opus_decoder import OpusDecoder

    check = RecordingCheck(call, expected=len(sent), lost_on_the_way=max(0, len(sent) - heard),
                           playout_drops=dict(playout_drops or {}))
    path = directory / f"{user_id}.ogg"
    try:
        data = path.read_bytes()
        with OggOpusReader(path) as reader:
            packets = list(reader)
    except Exception as exc:  # a recording that cannot be read is this call's failure, not the demo's
        check.problems.append(f"{path.name} cannot be read ({type(exc).__name__}: {str(exc)[:60]})")
        return check
    check.ticks = len(packets)
    granule = _last_granule(data)
    if granule != len(packets) * 960:
        check.problems.append(f"last granule position {granule}, {len(packets)} packets of 20 ms")
    # The frames sent, found in order among the packets (the fill packets are one byte, or
    # the silence frame, which the clip does not hold).
    found = [(tick, p) for tick, p in enumerate(packets) if len(p) > 1 and p != SILENCE_AUDIO_FRAME]
    recorded = [p for _, p in found]
    check.frames = len(recorded)
    if not _is_subsequence(recorded, sent):
        check.problems.append("the track holds frames that were not sent, or out of order")
        return check
    if recorded == sent:
        offsets = {tick - k for k, (tick, _) in enumerate(found)}
        if len(offsets) == 1:
            check.offset = offsets.pop()
        else:
            check.problems.append(f"the clip moved on the timeline {len(offsets) - 1} times")
    if check.offset is None:
        return check
    decoder = OpusDecoder()
    decoded = b"".join(decoder.decode(p) for p in packets)
    start, end = check.offset * _TICK_BYTES, (check.offset + len(sent)) * _TICK_BYTES
    check.pcm_identical = decoded[start:end] == clip
    if not check.pcm_identical:
        check.problems.append("the track's PCM differs from the clip's")
    try:
        with wave.open(str(directory / "mix.wav"), "rb") as mix:
            pcm = mix.readframes(mix.getnframes())
            if mix.getnframes() != check.ticks * 960:
                check.problems.append(f"mix.wav lasts {mix.getnframes()} samples, the track {check.ticks * 960}")
    except Exception as exc:
        check.problems.append(f"mix.wav cannot be read ({type(exc).__name__}: {str(exc)[:60]})")
        return check
    check.mix_identical = pcm[start:end] == clip
    if not check.mix_identical:
        check.problems.append("mix.wav's PCM differs from the clip's")
    return check
