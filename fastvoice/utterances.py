"""Phrases of each speaker, resampled for speech recognisers: :class:`Utterance` and :class:`UtteranceStream`.

A view of the timeline (``PlayoutReceiver.utterances()``): it reads every tick and cuts
each user's audio into phrases.

Voice activity is decided per user per 20 ms tick by energy: a tick is *voiced* when the
user is speaking on it and the RMS level of its PCM is at least ``threshold`` dBFS (0 dBFS
is a full-scale square wave; speech into a microphone is typically -30 to -15 dBFS).  A
phrase starts at a voiced tick, with up to ``pre_roll`` seconds of what came before it (the
quiet start of a word), and ends once ``silence`` seconds passed without a voiced tick; its
audio then runs until up to ``pre_roll`` after its last voiced tick (the word's tail).
A phrase whose voiced part (first voiced tick to last) is shorter than ``min_length`` is a
click or a cough: it is dropped and counted.  A phrase that reaches ``max_length`` is
delivered as it is, and the next voiced tick starts another.  A user who leaves, a gap in
the timeline (ticks lost), and the receiver's close end the phrases in progress.

The audio is resampled as it comes (:class:`fastvoice.resample.Resampler`, one per phrase;
the filter's delay is taken out), so a phrase in progress holds at most ``max_length`` of
output-rate PCM.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from . import _resample_common
from .resample import Resampler, pcm_rms
from .timeline import BoundedStream, VoiceTick

__all__ = ["Utterance", "UtteranceStream"]


@dataclass(frozen=True)
class Utterance:
    """One phrase of one user.

    ``start`` and ``end`` are times on the timeline (the clock's seconds, as
    ``VoiceTick.time``: ``start`` is when the first tick of the phrase was due, ``end`` is
    ``start`` plus the phrase's length); ``pcm`` is s16le, channels interleaved, at
    ``sample_rate`` Hz with ``channels`` channels.
    """

    user_id: int
    start: float
    end: float
    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Length of the phrase in seconds (``end - start``)."""
        return self.end - self.start

    def __repr__(self) -> str:
        return (f"Utterance(user_id={self.user_id}, start={self.start:.3f}, end={self.end:.3f}, "
                f"{len(self.pcm)} bytes at {self.sample_rate} Hz x {self.channels})")


class _Phrase:
    __slots__ = ("resampler", "chunks", "start_index", "start_time", "first_voiced", "last_voiced")

    def __init__(self, resampler: Any, start_index: int, start_time: float, voiced: int) -> None:
        self.resampler = resampler
        self.chunks: list[bytes] = []
        self.start_index = start_index
        self.start_time = start_time
        self.first_voiced = voiced
        self.last_voiced = voiced


def _seconds(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
            positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a number of seconds {need}, got {value!r}"[:100])
    return float(value)


class UtteranceStream(BoundedStream):
    """``PlayoutReceiver.utterances(...)``: an async iterator of :class:`Utterance`.

    Made by the receiver (see the module docstring for how phrases are cut; the arguments
    are those of ``PlayoutReceiver.utterances``).  At most ``max_pending`` utterances wait
    for the consumer; beyond, the oldest is dropped (:attr:`dropped`).  Counters:
    ``delivered``, ``discarded`` (shorter than ``min_length``), ``cut`` (phrases that reached
    ``max_length``).  Ends when the receiver closes, after the phrases in progress.
    """

    def __init__(self, in_rate: int, in_channels: int, *, silence: float = 0.5, pre_roll: float = 0.2,
                 min_length: float = 0.3, max_length: float = 30.0, sample_rate: int = 16000, channels: int = 1,
                 threshold: float = -40.0, max_pending: int = 64, frame: float = 0.02, detach: Any = None) -> None:
        super().__init__(max_pending, detach)
        factor = _resample_common.check_rates(in_rate, sample_rate, in_channels, channels)
        self._frame = frame
        silence = _seconds("silence", silence, positive=True)
        pre_roll = _seconds("pre_roll", pre_roll)
        min_length = _seconds("min_length", min_length)
        max_length = _seconds("max_length", max_length, positive=True)
        if max_length < min_length:
            raise ValueError(f"max_length ({max_length}) must not be below min_length ({min_length})")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -200 <= threshold <= 0:
            raise ValueError(f"threshold must be a level in dBFS between -200 and 0, got {threshold!r}"[:100])
        self._silence_ticks = max(1, round(silence / frame))
        self._pre_ticks = round(pre_roll / frame)
        self._tail_ticks = min(self._pre_ticks, self._silence_ticks)
        self._min_ticks = round(min_length / frame)
        self._max_ticks = max(1, round(max_length / frame))
        #: RMS level (full scale 32768) a voiced tick reaches.
        self._level = 32768.0 * 10 ** (threshold / 20)
        self._in = (in_rate, in_channels)
        self._out = (sample_rate, channels)
        samples_in = round(in_rate * frame)
        self._silent_pcm = bytes(samples_in * in_channels * 2)
        self._out_tick_bytes = samples_in // factor * channels * 2
        self._rings: dict[int, deque[bytes | None]] = {}
        self._phrases: dict[int, _Phrase] = {}
        self._last_index: int | None = None
        self.delivered = 0
        self.discarded = 0
        self.cut = 0

    @property
    def sample_rate(self) -> int:
        """Sample rate of the utterances' PCM."""
        return self._out[0]

    @property
    def channels(self) -> int:
        """Channels of the utterances' PCM."""
        return self._out[1]

    def _on_tick(self, tick: VoiceTick) -> None:
        """Read one tick (called by the receiver for every tick, in order)."""
        if self._ended:
            return
        index = tick.index
        if self._last_index is not None and index != self._last_index + 1:
            self._finish_all()  # ticks were lost: the audio does not run on
        self._last_index = index
        speaking = tick.speaking
        users = tick.users
        for user_id in [u for u in self._phrases if u not in users]:
            gone = self._phrases.pop(user_id)
            self._finish(user_id, gone.last_voiced + self._tail_ticks, gone)
        for user_id in [u for u in self._rings if u not in users]:
            del self._rings[user_id]
        for user_id in users:
            pcm = speaking.get(user_id)
            voiced = pcm is not None and pcm_rms(pcm) >= self._level
            phrase = self._phrases.get(user_id)
            if phrase is None:
                ring = self._rings.get(user_id)
                if not voiced:
                    if self._pre_ticks:
                        if ring is None:
                            ring = self._rings[user_id] = deque(maxlen=self._pre_ticks)
                        ring.append(pcm)
                    continue
                before = list(ring) if ring else []
                if ring:
                    ring.clear()
                in_rate, in_channels = self._in
                rate, channels = self._out
                phrase = self._phrases[user_id] = _Phrase(
                    Resampler(in_rate, rate, in_channels, channels), index - len(before),
                    tick.time - len(before) * self._frame, index)
                for earlier in before:
                    phrase.chunks.append(phrase.resampler.process(earlier or self._silent_pcm))
            phrase.chunks.append(phrase.resampler.process(pcm or self._silent_pcm))
            if voiced:
                phrase.last_voiced = index
            if index - phrase.last_voiced >= self._silence_ticks:
                del self._phrases[user_id]
                self._finish(user_id, phrase.last_voiced + self._tail_ticks, phrase)
            elif index - phrase.start_index + 1 >= self._max_ticks:
                del self._phrases[user_id]
                if index - phrase.last_voiced > self._tail_ticks:  # already in the pause after it
                    self._finish(user_id, phrase.last_voiced + self._tail_ticks, phrase)
                else:
                    self.cut += 1
                    self._finish(user_id, index, phrase)

    def _finish(self, user_id: int, end_index: int, phrase: _Phrase) -> None:
        ticks = min(end_index, phrase.start_index + len(phrase.chunks) - 1) - phrase.start_index + 1
        if phrase.last_voiced - phrase.first_voiced + 1 < self._min_ticks:
            self.discarded += 1
            return
        resampler = phrase.resampler
        rate, channels = self._out
        skip = resampler.delay * channels * 2
        pcm = (b"".join(phrase.chunks) + resampler.flush())[skip:skip + ticks * self._out_tick_bytes]
        start = phrase.start_time
        self.delivered += 1
        self._put(Utterance(user_id, start, start + ticks * self._frame, pcm, rate, channels))

    def _finish_all(self) -> None:
        phrases, self._phrases = self._phrases, {}
        for user_id, phrase in phrases.items():
            self._finish(user_id, phrase.last_voiced + self._tail_ticks, phrase)
        self._rings.clear()

    def _source_ended(self) -> None:
        if not self._ended:
            self._finish_all()
        self._end()
