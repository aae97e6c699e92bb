"""The network faults the test server applies to datagrams it sends to clients: loss,
duplication, reordering, delay, jitter and stalls."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable

__all__ = ["UDPFaults"]

Address = tuple[str, int]


def _rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in 0..1, got {value!r}")
    return float(value)


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class UDPFaults:
    """Fault knobs between the server and its clients, and the path datagrams take through them.

    ``send`` is given each datagram for a client and hands what survives the faults to
    ``sendto`` (now, later, twice, or after later ones). The server's ``udp_*`` attributes
    and :meth:`stall` are these knobs.
    """

    def __init__(self, sendto: Callable[[bytes, Address], None], rng: random.Random) -> None:
        self._sendto = sendto
        self._random = rng
        self._loss = 0.0
        self._duplicate = 0.0
        self._reorder = 0.0
        self._delay = 0.0
        self._jitter = 0.0
        self._reorder_window = 1
        #: ``(address, SSRC, sequence number)`` of the datagrams ``loss`` dropped (the last 65,536).
        self.lost: collections.deque[tuple[Address, int, int]] = collections.deque(maxlen=65536)
        self._held: tuple[Address, bytes] | None = None
        self._held_for = 0
        self._stall_until = 0.0
        self._stalled: list[tuple[Address, bytes]] = []
        self._stall_timer: asyncio.TimerHandle | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # -- knobs ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while any knob is set or a stall or a held datagram is pending."""
        return bool(self._loss or self._duplicate or self._reorder or self._delay or self._jitter
                    or self._stall_timer is not None or self._held is not None or self._stalled)

    @property
    def loss(self) -> float:
        """Probability that a datagram is dropped."""
        return self._loss

    @loss.setter
    def loss(self, value: float) -> None:
        self._loss = _rate("udp_loss", value)

    @property
    def duplicate(self) -> float:
        """Probability that a datagram is sent twice."""
        return self._duplicate

    @duplicate.setter
    def duplicate(self, value: float) -> None:
        self._duplicate = _rate("udp_duplicate", value)

    @property
    def reorder(self) -> float:
        """Probability that a datagram is held back and sent after later ones (lost if none follows)."""
        return self._reorder

    @reorder.setter
    def reorder(self, value: float) -> None:
        self._reorder = _rate("udp_reorder", value)

    @property
    def reorder_window(self) -> int:
        """A datagram held back by ``reorder`` is sent after 1 to this many later datagrams."""
        return self._reorder_window

    @reorder_window.setter
    def reorder_window(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"udp_reorder_window must be an int >= 1, got {value!r}")
        self._reorder_window = value

    @property
    def delay(self) -> float:
        """Seconds every datagram is delayed by."""
        return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._delay = _seconds("udp_delay", value)

    @property
    def jitter(self) -> float:
        """Each datagram is delayed by a further random 0 to this many seconds."""
        return self._jitter

    @jitter.setter
    def jitter(self, value: float) -> None:
        self._jitter = _seconds("udp_jitter", value)

    def stall(self, seconds: float) -> None:
        """Hold every datagram for ``seconds``, then send them all at once, in order (a stall
        started during another one extends it)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"stall seconds must be a positive number, got {seconds!r}")
        loop = asyncio.get_running_loop()
        self._stall_until = max(self._stall_until, loop.time() + seconds)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._stall_timer = loop.call_at(self._stall_until, self._end_stall)

    # -- the path --------------------------------------------------------------------

    def send(self, addr: Address, data: bytes) -> None:
        """Send ``data`` to ``addr`` through the faults."""
        rng = self._random
        if self._loss and rng.random() < self._loss:
            if len(data) >= 12:
                self.lost.append((addr, int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big")))
            return
        copies = 2 if self._duplicate and rng.random() < self._duplicate else 1
        out: list[tuple[Address, bytes]] = [(addr, data)] * copies
        if self._held is not None:
            self._held_for -= 1
            if self._held_for <= 0:
                out.append(self._held)
                self._held = None
        elif self._reorder and rng.random() < self._reorder:
            self._held = out.pop(0)
            window = self._reorder_window
            self._held_for = 1 if window == 1 else rng.randint(1, window)
            if not out:
                return
        for target, payload in out:
            delay = self._delay + (rng.uniform(0.0, self._jitter) if self._jitter else 0.0)
            if delay > 0:
                loop = asyncio.get_running_loop()
                handle = loop.call_later(delay, self._send_later, target, payload)
                self._timers.add(handle)
            else:
                self._send_now(target, payload)

    def close(self) -> None:
        """Drop what is delayed or stalled and cancel the timers."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._stalled.clear()

    def _end_stall(self) -> None:
        self._stall_timer = None
        self._stall_until = 0.0
        stalled, self._stalled = self._stalled, []
        for addr, data in stalled:
            self._send_now(addr, data)

    def _send_later(self, addr: Address, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > now}
        self._send_now(addr, data)

    def _send_now(self, addr: Address, data: bytes) -> None:
        if self._stall_timer is not None:
            self._stalled.append((addr, data))
            return
        self._sendto(data, addr)
