"""The voice gateway session, sans I/O (PROTOCOL.md section 2).

:class:`GatewayProtocol` holds everything about a voice gateway session that
does not need a socket or an event loop: the connection status, the last
``seq`` received (``seq_ack``), the heartbeat schedule and its pending nonces,
the Identify or Resume to send after Hello, and what to do after a close code
(resume, identify a new session, or stop).  Frames go in as text or bytes with
the current time, and events come out; frames to send are collected and taken
with :meth:`GatewayProtocol.data_to_send`.  Times are plain floats given by the
caller, so the protocol can be driven (and fuzzed) without a clock.

:class:`~fastvoice.gateway.Gateway` is the pump around it: it owns the
websocket, the tasks and the user's handlers.

Nothing here logs: events carry what a caller may want to log, and no event
carries a token or a session id.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Union

from .close_codes import CloseBehaviour, GatewayCloseEventCode, gateway_close_event_code_by_code
from .constants import GATEWAY_VERSION
from .errors import GatewayDecodeError
from .gateway_messages import (
    GatewayMessage,
    GatewayMessageData,
    GatewayMessageDataHeartbeat,
    GatewayMessageDataHeartbeatACK,
    GatewayMessageDataHello,
    GatewayMessageDataIdentify,
    GatewayMessageDataReady,
    GatewayMessageDataResume,
    GatewayMessageDataUnknown,
    Opcode,
    decode_message,
    decode_server_binary,
    encode_client_binary,
    encode_message,
)

__all__ = [
    "GatewayProtocol",
    "State",
    "Status",
    "CloseAction",
    "CloseDecision",
    "GatewayEvent",
    "MessageReceived",
    "FrameDropped",
    "HelloReceived",
    "SessionReady",
    "ReadyRepeated",
    "HeartbeatAcked",
    "encode_frame",
    "backoff_delay",
    "MIN_HEARTBEAT_INTERVAL",
]

#: Shortest heartbeat interval used (seconds): a floor keeps a hostile or broken
#: Hello from turning heartbeats into a flood.
MIN_HEARTBEAT_INTERVAL = 0.01


class Status(enum.IntEnum):
    """Where the gateway is in its connection flow (the seed's ``Status``)."""

    UNCONNECTED = 0
    CONNECTING = 1
    WAITING_FOR_HELLO = 2
    IDENTIFYING = 3
    RESUMING = 4
    WAITING_FOR_READY = 5
    READY = 6
    DISCONNECTED = 7


@dataclass(slots=True)
class State:
    """What the gateway needs to connect (the seed's ``State``).

    ``session_id`` comes from the bot's own VOICE_STATE_UPDATE; ``token`` and
    ``endpoint`` from VOICE_SERVER_UPDATE.  ``endpoint`` has no scheme and may
    carry a port (``wss://`` is used); an endpoint that starts with ``ws://`` or
    ``wss://`` is used as given.  ``repr`` hides the session id and token.
    """

    guild_id: int
    user_id: int
    channel_id: int | None = None
    session_id: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    endpoint: str = ""

    def url(self) -> str:
        """Return the websocket URL for this endpoint, with ``?v=8``."""
        endpoint = self.endpoint.strip()
        if not endpoint:
            raise ValueError("State.endpoint is empty; wait for a VOICE_SERVER_UPDATE with a non-null endpoint")
        if endpoint.startswith(("ws://", "wss://")):
            base = endpoint
        else:
            base = "wss://" + endpoint
        base = base.rstrip("/")
        return f"{base}/?v={GATEWAY_VERSION}"


# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A decoded frame for the event handler (every frame that decodes, of any op, except a repeated Ready)."""

    message: GatewayMessage
    binary: bool = False
    size: int = 0


@dataclass(frozen=True, slots=True)
class FrameDropped:
    """A frame that did not decode; its ``seq`` (when readable) still counts for ``seq_ack``."""

    error: GatewayDecodeError
    binary: bool


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Hello: restart heartbeats every ``interval`` seconds (already floored) once
    :meth:`GatewayProtocol.data_to_send` (Identify or Resume, or nothing) is sent."""

    interval: float


@dataclass(frozen=True, slots=True)
class SessionReady:
    """Ready (``resumed`` False, with the new ``ssrc``) or Resumed: the connection is usable."""

    resumed: bool
    ssrc: int | None


@dataclass(frozen=True, slots=True)
class ReadyRepeated:
    """A second Ready in the same session: dropped (no :class:`MessageReceived` follows)."""

    ssrc: int


@dataclass(frozen=True, slots=True)
class HeartbeatAcked:
    """A heartbeat ACK; ``latency`` is ``None`` when its nonce was not one pending."""

    latency: float | None


GatewayEvent = Union[MessageReceived, FrameDropped, HelloReceived, SessionReady, ReadyRepeated, HeartbeatAcked]


class CloseAction(str, enum.Enum):
    """What :meth:`GatewayProtocol.on_close` decides."""

    #: Connect again and send op 7 Resume.
    RESUME = "resume"
    #: Connect again and send op 0 Identify (a new session; refresh the state first when ``new_session``).
    IDENTIFY = "identify"
    #: Do not connect again.
    STOP = "stop"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class CloseDecision:
    """The outcome of one connection's close.

    ``entry`` is the close code's table entry and ``behaviour`` what the table (or a
    zombie connection, RESUME) asks for.  For ``STOP``, ``detail`` says why and
    ``attempts`` how many reconnects were made; otherwise ``attempts`` is the number of
    the reconnect about to be made.  ``new_session`` is True when the session is gone
    (fetch a fresh state before identifying).
    """

    action: CloseAction
    entry: GatewayCloseEventCode
    behaviour: CloseBehaviour
    attempts: int
    detail: str = ""
    new_session: bool = False


# -- the protocol object ------------------------------------------------------


class GatewayProtocol:
    """One voice gateway session's state machine, without I/O (see the module docstring).

    The caller drives it: :meth:`start` when the user opens, :meth:`connecting` and
    :meth:`connected` around each websocket connection, :meth:`receive_text` /
    :meth:`receive_bytes` for each frame, :meth:`heartbeat` whenever
    :meth:`heartbeat_due`, and :meth:`on_close` when a connection ends.
    """

    def __init__(
        self,
        *,
        max_dave_protocol_version: int = 1,
        max_missed_heartbeat_acks: int = 1,
        max_reconnect_attempts: int = 8,
        max_client_bug_retries: int = 2,
        auto_reconnect: bool = True,
    ) -> None:
        self.max_dave_protocol_version = max_dave_protocol_version
        self.max_missed_heartbeat_acks = max_missed_heartbeat_acks
        self.max_reconnect_attempts = max_reconnect_attempts
        self.max_client_bug_retries = max_client_bug_retries
        self.auto_reconnect = auto_reconnect
        self.status = Status.UNCONNECTED
        self.state: State | None = None
        self.ssrc: int | None = None
        self.seq_ack = -1
        #: True between a Ready and the end of the session (a new Identify or a session-ending close).
        self.session_ready = False
        #: Whether the current connection resumes (set by :meth:`on_close`).
        self.resume = False
        self.connection_was_ready = False
        #: The close code that led to the current reconnect (``None``: no close frame): the
        #: last close frame's code since the session was last ready or resumed (a connection
        #: lost without a close frame afterwards keeps it). Read when Ready or Resumed arrives.
        self.reconnect_close_code: int | None = None
        self._recovering = False
        self.attempts = 0
        self.client_bug_retries = 0
        self._pending: dict[int, float] = {}
        self._last_nonce = 0
        self._interval: float | None = None
        self._next_beat: float | None = None
        self._outgoing: list[str | bytes] = []

    # -- lifecycle ------------------------------------------------------------

    def start(self, state: State) -> None:
        """Begin a session for ``state`` (a user's open): forget the last one."""
        self.state = state
        self.session_ready = False
        self.seq_ack = -1
        self.ssrc = None
        self.resume = False
        self.reconnect_close_code = None
        self._recovering = False
        self.attempts = 0
        self.client_bug_retries = 0
        self.status = Status.CONNECTING

    def connecting(self) -> None:
        """A new websocket connection is being made."""
        self.connection_was_ready = False
        self._pending.clear()
        self._interval = None
        self._next_beat = None
        self._outgoing.clear()
        self.status = Status.CONNECTING

    def connected(self) -> None:
        """The websocket is open: wait for Hello."""
        self.status = Status.WAITING_FOR_HELLO

    def stopped(self) -> None:
        """The gateway is down (for now or for good)."""
        self.status = Status.DISCONNECTED
        self._interval = None
        self._next_beat = None

    # -- receiving ------------------------------------------------------------

    def receive_text(self, text: str | bytes, now: float) -> list[GatewayEvent]:
        """Take one JSON text frame received at ``now`` (monotonic seconds) and return its events."""
        try:
            message = decode_message(text)
        except GatewayDecodeError as exc:
            if exc.seq is not None:
                self.seq_ack = exc.seq  # seen, though unusable: a resume need not replay it
            return [FrameDropped(exc, binary=False)]
        if message.seq is not None:
            self.seq_ack = message.seq
        return self._handle(message, now)

    def receive_bytes(self, data: bytes) -> list[GatewayEvent]:
        """Take one binary frame (``[seq u16][op u8][payload]``) and return its events."""
        try:
            message = decode_server_binary(data)
        except GatewayDecodeError as exc:
            if exc.seq is not None:
                self.seq_ack = exc.seq
            return [FrameDropped(exc, binary=True)]
        if message.seq is not None:
            self.seq_ack = message.seq
        return [MessageReceived(message, binary=True, size=len(data))]

    def _handle(self, message: GatewayMessage, now: float) -> list[GatewayEvent]:
        op = message.op
        data = message.d
        events: list[GatewayEvent] = []
        if op == Opcode.HELLO and isinstance(data, GatewayMessageDataHello):
            events.append(self._on_hello(data, now))
        elif op == Opcode.READY and isinstance(data, GatewayMessageDataReady):
            if self.session_ready:
                # One Ready per identified session: a repeat (a broken or hostile server) would
                # make the connection set up a second socket and select a protocol twice.
                return [ReadyRepeated(data.ssrc)]
            else:
                self.ssrc = data.ssrc
                self.session_ready = True
                self.connection_was_ready = True
                self._recovering = False
                self.status = Status.READY
                events.append(SessionReady(resumed=False, ssrc=data.ssrc))
        elif op == Opcode.RESUMED:
            self.status = Status.READY
            self.connection_was_ready = True
            self._recovering = False
            events.append(SessionReady(resumed=True, ssrc=self.ssrc))
        elif op == Opcode.HEARTBEAT_ACK and isinstance(data, GatewayMessageDataHeartbeatACK):
            sent = self._pending.pop(data.t, None)
            latency = None
            if sent is not None:
                latency = now - sent
                # an ACK also vouches for every older beat
                for nonce in [n for n in self._pending if n < data.t]:
                    del self._pending[nonce]
            events.append(HeartbeatAcked(latency))
        events.append(MessageReceived(message))
        return events

    def _on_hello(self, hello: GatewayMessageDataHello, now: float) -> HelloReceived:
        interval = max(hello.heartbeat_interval / 1000.0, MIN_HEARTBEAT_INTERVAL)
        self._interval = interval
        self._next_beat = now  # the first beat goes at once
        if self.status is Status.WAITING_FOR_HELLO and self.state is not None:
            state = self.state
            if self.resume:
                self.status = Status.RESUMING
                self._outgoing.append(
                    encode_message(
                        Opcode.RESUME,
                        GatewayMessageDataResume(
                            guild_id=state.guild_id, session_id=state.session_id, token=state.token,
                            seq_ack=self.seq_ack,
                        ),
                    )
                )
            else:
                self.status = Status.IDENTIFYING
                self.seq_ack = -1
                self.session_ready = False
                self._outgoing.append(
                    encode_message(
                        Opcode.IDENTIFY,
                        GatewayMessageDataIdentify(
                            guild_id=state.guild_id,
                            user_id=state.user_id,
                            session_id=state.session_id,
                            token=state.token,
                            max_dave_protocol_version=self.max_dave_protocol_version,
                        ),
                    )
                )
        return HelloReceived(interval)

    def data_to_send(self) -> list[str | bytes]:
        """Return (and forget) the frames the protocol wants sent, oldest first."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def frames_sent(self) -> None:
        """The frames from :meth:`data_to_send` went out: an Identify now waits for Ready."""
        if self.status is Status.IDENTIFYING:
            self.status = Status.WAITING_FOR_READY

    # -- heartbeats -----------------------------------------------------------

    @property
    def heartbeat_interval(self) -> float | None:
        """Seconds between heartbeats (from the last Hello), or ``None`` before Hello."""
        return self._interval

    @property
    def next_heartbeat_at(self) -> float | None:
        """When the next heartbeat is due (the caller's clock), or ``None`` when none is scheduled."""
        return self._next_beat

    @property
    def missed_heartbeat_acks(self) -> int:
        """Heartbeats sent and not acknowledged yet."""
        return len(self._pending)

    def heartbeat_due(self, now: float) -> bool:
        """True when a heartbeat should be sent at ``now``."""
        return self._next_beat is not None and now >= self._next_beat

    def is_zombie(self) -> bool:
        """True when too many heartbeats went unacknowledged: close the connection and resume."""
        return len(self._pending) >= self.max_missed_heartbeat_acks

    def heartbeat(self, now: float, wall_time: float) -> str:
        """Return the next Heartbeat frame and schedule the one after.

        ``now`` is the monotonic clock (for latency and scheduling); ``wall_time`` is
        Unix time in seconds (the nonce is in milliseconds and always grows).
        """
        nonce = max(int(wall_time * 1000), self._last_nonce + 1)
        self._last_nonce = nonce
        self._pending[nonce] = now
        if self._interval is not None:
            self._next_beat = now + self._interval
        return encode_message(Opcode.HEARTBEAT, GatewayMessageDataHeartbeat(t=nonce, seq_ack=self.seq_ack))

    # -- closing --------------------------------------------------------------

    def on_close(self, code: int | None, zombie: bool = False) -> CloseDecision:
        """Decide what follows a connection that ended with ``code`` (``None``: no close frame).

        Follows the close code table (:mod:`fastvoice.close_codes`); a zombie connection
        resumes.  Client-bug codes are retried ``max_client_bug_retries`` times, and at most
        ``max_reconnect_attempts`` reconnects follow one another without a Ready between them.
        """
        self.stopped()
        if code is not None or not self._recovering:
            self.reconnect_close_code = code
        self._recovering = True
        if self.connection_was_ready:
            self.attempts = 0
            self.connection_was_ready = False
        entry = gateway_close_event_code_by_code(code)
        behaviour = CloseBehaviour.RESUME if zombie else entry.behaviour

        def stop(detail: str, attempts: int) -> CloseDecision:
            return CloseDecision(CloseAction.STOP, entry, behaviour, attempts, detail)

        if behaviour is CloseBehaviour.STOP:
            return stop("Not retrying.", self.attempts)
        if not self.auto_reconnect:
            return stop("Auto-reconnect is off.", self.attempts)
        if entry.client_bug:
            self.client_bug_retries += 1
            if self.client_bug_retries > self.max_client_bug_retries:
                return stop(
                    f"Gave up after {self.max_client_bug_retries} retries for client-bug close codes.", self.attempts
                )
        self.attempts += 1
        if self.attempts > self.max_reconnect_attempts:
            return stop(f"Gave up after {self.max_reconnect_attempts} reconnect attempts.", self.attempts - 1)
        new_session = behaviour is CloseBehaviour.NEW_SESSION
        if new_session:
            self.session_ready = False
        self.resume = behaviour is CloseBehaviour.RESUME and self.session_ready
        action = CloseAction.RESUME if self.resume else CloseAction.IDENTIFY
        return CloseDecision(action, entry, behaviour, self.attempts, new_session=new_session)


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``, at most ``cap``,
    times ``jitter`` (the caller draws it in 0.5..1)."""
    delay: float = min(max(0.0, cap), max(0.0, base) * (2 ** min(attempt - 1, 30)))
    return delay * jitter


def encode_frame(opcode: Opcode | int, data: GatewayMessageData | Any = None) -> str | bytes:
    """Encode one client message: a binary frame for binary DAVE ops or bytes, else a JSON text frame."""
    binary = isinstance(data, (bytes, bytearray, memoryview)) or (
        isinstance(data, GatewayMessageDataUnknown) and data.binary
    ) or (isinstance(data, GatewayMessageData) and not isinstance(data, GatewayMessageDataUnknown) and data.BINARY)
    if binary:
        return encode_client_binary(int(opcode), data)
    return encode_message(int(opcode), data)

