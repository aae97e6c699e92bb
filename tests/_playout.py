"""Helpers of the playout tests: known signals encoded with libopus, and a receiver driven by a test clock."""

from __future__ import annotations

import array
import functools
import math
import random
from dataclasses import dataclass

import opus_reference as ref
from fastvoice.playout_receiver import PlayoutReceiver
from fastvoice.rtp import Packet
from fastvoice.timeline import PlayoutClock

SILENCE = b"\xf8\xff\xfe"
#: Frequencies of the stepped tone: each frame has its own, and neighbours always differ.
STEPS = (400.0, 1000.0, 1600.0, 700.0, 1300.0, 1900.0, 550.0, 1150.0, 1750.0, 850.0)


def step_frequency(k: int) -> float:
    return STEPS[k % len(STEPS)]


def stepped_tone_pcm(count: int, channels: int = 2) -> bytes:
    """``count`` 20 ms frames of 48 kHz PCM, frame ``k`` a sine of ``step_frequency(k)``
    (phase continuous across the steps)."""
    out = array.array("h")
    phase = 0.0
    for k in range(count):
        step = 2 * math.pi * step_frequency(k) / 48000
        amplitude = 7000 + 23 * (k % 97)  # every frame different, so every packet is
        for _ in range(960):
            value = int(amplitude * math.sin(phase))
            phase += step
            out.extend([value] * channels)
    return out.tobytes()


@functools.lru_cache(maxsize=None)
def stepped_tone_packets(count: int, channels: int = 2) -> tuple[bytes, ...]:
    """The stepped tone encoded by libopus (64 kbit/s, CELT): one packet per frame."""
    packets = ref.Encoder(channels=channels, bitrate=64000).encode_stream(stepped_tone_pcm(count, channels), 20)
    assert len(packets) == count and len(set(packets)) == count
    return tuple(packets)


@functools.lru_cache(maxsize=None)
def voice_fec_packets(count: int) -> tuple[tuple[bytes, ...], bytes]:
    """A speech-like signal encoded as a VoIP stream with in-band FEC (SILK), and its PCM."""
    pcm = ref.voiced(count * 0.02, channels=2, seed=11)
    encoder = ref.Encoder(channels=2, application=ref.OPUS_APPLICATION_VOIP, bitrate=32000, fec=True,
                          loss_percent=20, voice=True)
    packets = encoder.encode_stream(pcm, 20)
    assert len(packets) == count
    return tuple(packets), pcm


def counter_packet(n: int, tag: int = 0) -> bytes:
    """A cheap, unique, decodable packet: a CELT fullband 20 ms stereo frame whose payload
    starts with ``tag`` and the counter ``n`` (libopus decodes any CELT payload)."""
    return bytes([0xFC, tag]) + n.to_bytes(4, "big") + bytes(range(40))


def dominant(pcm: bytes, candidates=STEPS, channels: int = 2) -> float:
    """The candidate frequency with the most power in the last 14 ms of a 20 ms tick (the
    first 6.5 ms still hold the end of the previous frame: the codec's delay)."""
    left = ref.samples(pcm, 0, channels)[-672:]
    return max(candidates, key=lambda f: ref.goertzel_power(left, f, 48000))


@dataclass(order=True)
class Arrival:
    time: float
    user: int
    sequence: int
    timestamp: int
    opus: bytes
    marker: bool = False


def stream(user: int, packets, *, start_time: float = 0.0, sequence: int = 1000, timestamp: int = 50_000,
           jitter: float = 0.0, seed: int = 1, skip=(), marker_first: bool = True, ppm: float = 0.0,
           first_frame: int = 0) -> list[Arrival]:
    """Arrivals of ``packets`` sent every 20 ms from ``start_time`` (frame ``first_frame`` on),
    each delayed by a random 0..``jitter`` s; frames in ``skip`` are lost.  ``ppm`` makes the
    sender's clock run fast (positive) or slow."""
    rng = random.Random(seed)
    out = []
    for k, opus in enumerate(packets):
        frame = first_frame + k
        if frame in skip:
            continue
        sent = start_time + frame * 0.02 / (1 + ppm * 1e-6)
        out.append(Arrival(sent + rng.uniform(0.0, jitter), user, (sequence + frame) & 0xFFFF,
                           (timestamp + 960 * frame) & 0xFFFFFFFF, opus, marker_first and frame == 0))
    return out


class Harness:
    """A PlayoutReceiver on a test clock, with a listener keeping every tick."""

    def __init__(self, **options) -> None:
        options.setdefault("decode_threads", 0)
        self.clock = PlayoutClock(autostart=False)
        self.rx = PlayoutReceiver(clock=self.clock, **options)
        self.ticks = []
        self.rx.add_listener(self.ticks.append)

    def play(self, arrivals, *, until: float | None = None, on_tick=None) -> None:
        """Hand each arrival to the receiver at its time (running the ticks due before it),
        then run the clock to ``until`` (default: 1 s after the last arrival)."""
        for a in sorted(arrivals):
            if a.time > self.clock.time():
                self.clock.advance(a.time - self.clock.time())
            self.rx.receive_opus_frame(a.user, Packet(a.sequence, a.timestamp, 0, a.opus, marker=a.marker))
        end = until if until is not None else (max(a.time for a in arrivals) + 1.0 if arrivals else 1.0)
        if end > self.clock.time():
            self.clock.advance(end - self.clock.time())

    def frames_played(self, user: int, packets) -> list[tuple[int, int | None]]:
        """``(tick index, frame number or None when concealed)`` of each tick ``user`` spoke on."""
        number = {p: k for k, p in enumerate(packets)}
        return [(t.index, None if t.packets[user] is None else number[t.packets[user]])
                for t in self.ticks if user in t.speaking]
