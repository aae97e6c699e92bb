"""One Opus stream played into many calls: :class:`FanOut`.

The source (any :class:`~fastvoice.OpusFrameProvider`: a file, ffmpeg, a live relay) is read
once per frame, whatever the number of listeners; each call gets its own subscription,
a provider of its own, and every subscription hands out the same frames. Nothing is decoded,
re-encoded or copied.
"""

from __future__ import annotations

import logging

from .opus import OpusFrameProvider

__all__ = ["FanOut", "FanOutSubscription"]

_log = logging.getLogger("fastvoice.fanout")


class FanOut:
    """Shares the frames of ``source`` between any number of subscriptions.

    ``subscribe()`` returns a :class:`FanOutSubscription`, an OpusFrameProvider to give to one
    connection (``conn.set_opus_frame_provider(fanout.subscribe())``).

    How frames are shared. The fan-out counts the frames taken from the source, and each
    subscription remembers the number of the last frame it handed out. When a subscription
    is asked for a frame and has already handed out the current one, the fan-out takes the
    next frame from the source; a subscription that has not handed out the current frame yet
    gets it without touching the source. The send clock asks each connection's provider at
    most once per 20 ms tick, so within a tick the first subscription asked moves the source
    on by exactly one frame and every other subscription asked in that tick gets the same
    frame: one source read per tick for 1 or 1,000 connections, the same sequence everywhere,
    and no frame handed out twice by a subscription.

    Why not key on the clock's tick counter: the fan-out would have to know which clock
    drives each connection (a test or an application may give senders their own clocks), and
    a sender does not ask on every tick (while it announces Speaking it plays the frame it
    holds; during a silence tail it does not ask at all). Keyed on what each subscription
    handed out, the rule holds for any clock, any call order and any skipped tick; a
    subscription that skipped ticks resumes at the current frame (it is live audio, not a
    queue). A source returning ``None`` (nothing ready) counts as a frame, so the
    subscriptions asked in that tick all get ``None`` and the source is not asked again until
    the next tick.

    A subscription made while the stream plays starts at the current frame. (Its sender
    announces Speaking and plays that frame on the next tick without asking for another; the
    other calls move on meanwhile, so the new one then continues with them, one frame further:
    joining costs one 20 ms frame, never a delay behind the others.) Closing a
    subscription leaves the others and the source alone. At the end of the source
    (``EOFError``) each subscription hands out the last frame if it has not yet, then raises
    ``EOFError``. :meth:`close` closes the source and ends every subscription. An exception
    of the source other than ``EOFError`` is raised to the subscription that asked (its
    sender logs it); the others get ``None`` for that tick.
    """

    def __init__(self, source: OpusFrameProvider, *, logger: logging.Logger | None = None) -> None:
        if not callable(getattr(source, "provide_opus_frame", None)):
            raise TypeError(f"source must be an OpusFrameProvider, got {type(source).__name__}")
        self._source = source
        self._log = logger or _log
        self._index = -1  # number of the current frame (-1: none taken yet)
        self._frame: bytes | None = None
        self._ended = False
        self._closed = False
        self._subscriptions: dict[FanOutSubscription, None] = {}
        #: Times the source was asked for a frame.
        self.source_reads = 0

    @property
    def source(self) -> OpusFrameProvider:
        """The shared provider."""
        return self._source

    @property
    def subscriptions(self) -> int:
        """Subscriptions open now."""
        return len(self._subscriptions)

    @property
    def ended(self) -> bool:
        """True once the source ended or the fan-out was closed."""
        return self._ended or self._closed

    def subscribe(self) -> FanOutSubscription:
        """A new provider playing this stream from the current frame on."""
        if self._closed:
            raise RuntimeError("subscribe() on a closed FanOut")
        subscription = FanOutSubscription(self, self._index + 1 if self._ended else max(self._index, 0))
        self._subscriptions[subscription] = None
        return subscription

    def _read_source(self) -> None:
        """Move the source on by one frame (or mark its end)."""
        self.source_reads += 1
        try:
            frame = self._source.provide_opus_frame()
        except EOFError:
            self._ended = True
            return
        except Exception:
            self._index += 1
            self._frame = None
            raise
        self._index += 1
        self._frame = frame

    def _unsubscribe(self, subscription: FanOutSubscription) -> None:
        self._subscriptions.pop(subscription, None)

    def close(self) -> None:
        """Close the source; every subscription raises ``EOFError`` from now on."""
        if self._closed:
            return
        self._closed = True
        self._frame = None
        self._subscriptions.clear()
        try:
            self._source.close()
        except Exception:
            self._log.exception("closing the fan-out's source failed")


class FanOutSubscription:
    """One connection's view of a :class:`FanOut` (an OpusFrameProvider); see :class:`FanOut`."""

    __slots__ = ("_fanout", "_next", "_closed", "__weakref__")

    def __init__(self, fanout: FanOut, next_index: int) -> None:
        self._fanout = fanout
        self._next = next_index  # number of the next frame this subscription hands out
        self._closed = False

    @property
    def fanout(self) -> FanOut:
        """The fan-out this subscription belongs to."""
        return self._fanout

    def provide_opus_frame(self) -> bytes | None:
        """The shared frame of this tick; ``None`` if the source had none; ``EOFError`` at the end."""
        fanout = self._fanout
        if self._closed or fanout._closed:
            raise EOFError("fan-out subscription closed")
        if self._next > fanout._index:
            if fanout._ended:
                raise EOFError("end of the fanned-out stream")
            try:
                fanout._read_source()
            except Exception:
                self._next = fanout._index + 1
                raise
            if fanout._ended:
                raise EOFError("end of the fanned-out stream")
        self._next = fanout._index + 1
        return fanout._frame

    def close(self) -> None:
        """Stop this subscription (the fan-out, its source and other subscriptions go on)."""
        if not self._closed:
            self._closed = True
            self._fanout._unsubscribe(self)
