"""The local voice server's view of client UDP keepalives (PROTOCOL.md section 4.3).

Keepalives carry no SSRC, so they are matched to a session by the address its IP
discovery (or its audio) came from, the latest session to use an address owning it. Each
one is recorded on its session; a datagram of keepalive shape from an address no session
ever used is the server's to reject.
With an expected interval set, every gap longer than it between two datagrams of a session
(IP discovery, audio or keepalive) is a lapse, and so is a silence still going on.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..keepalive import is_keepalive
from ._recording import ReceivedKeepalive

if TYPE_CHECKING:
    from ._session import ServerSession

__all__ = ["KeepaliveLapse", "KeepaliveWatch"]

_log = logging.getLogger("fastvoice.testing")


@dataclass(slots=True)
class KeepaliveLapse:
    """A session that sent nothing over UDP for longer than ``VoiceServer.expect_keepalive``:
    silent from ``silent_from`` until ``silent_until`` (``None``: still silent), in
    ``time.monotonic()`` seconds."""

    session: ServerSession
    silent_from: float
    silent_until: float | None

    @property
    def seconds(self) -> float | None:
        """The length of the silence, or ``None`` while it goes on."""
        return None if self.silent_until is None else self.silent_until - self.silent_from


class KeepaliveWatch:
    """Matches keepalives to sessions, records them and finds the sessions that went quiet."""

    def __init__(self, expect: float | None) -> None:
        self.expect = expect
        self._by_address: dict[tuple[str, int], ServerSession] = {}
        self._last: dict[ServerSession, float] = {}
        self._lapses: list[KeepaliveLapse] = []

    @property
    def expect(self) -> float | None:
        """Seconds a session may stay silent over UDP before it counts as a lapse (``None``: off)."""
        return self._expect

    @expect.setter
    def expect(self, value: float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"expect_keepalive must be a positive number of seconds or None, got {value!r}"[:120])
        self._expect = value

    def heard(self, session: ServerSession, address: tuple[str, int], now: float) -> None:
        """``session`` sent a datagram from ``address`` at ``now`` (IP discovery or audio)."""
        if self._by_address.get(address) is not session:
            self._by_address[address] = session
        last = self._last.get(session)
        if last is not None and self._expect is not None and now - last > self._expect:
            self._lapses.append(KeepaliveLapse(session, last, now))
            _log.warning("voice server: SSRC %d sent nothing over UDP for %.1f s", session.ssrc, now - last)
        if last is None or now > last:
            self._last[session] = now

    def received(self, data: bytes, address: tuple[str, int], now: float) -> bool | None:
        """Take a datagram: ``None`` if it is not a keepalive, ``True`` if it was recorded
        for its session, ``False`` if no session uses ``address``."""
        if not is_keepalive(data):
            return None
        session = self._by_address.get(address)
        if session is None:
            return False
        session.keepalives.record(ReceivedKeepalive(struct.unpack_from("<I", data)[0], now, address))
        self.heard(session, address, now)
        return True

    def silent_sessions(self, seconds: float, now: float) -> list[ServerSession]:
        """Live sessions whose last UDP datagram is more than ``seconds`` old at ``now``."""
        return [s for s, last in self._last.items() if not s.ended and now - last > seconds]

    def lapses(self, now: float) -> list[KeepaliveLapse]:
        """The lapses seen so far, then the silences still going on at ``now``."""
        ongoing: list[KeepaliveLapse] = []
        if self._expect is not None:
            ongoing = [KeepaliveLapse(s, self._last[s], None) for s in self.silent_sessions(self._expect, now)]
        return self._lapses + ongoing
