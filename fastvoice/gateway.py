"""The voice gateway client: one websocket to a Discord voice server (PROTOCOL.md sections 1 and 2).

:class:`Gateway` speaks gateway v8 over aiohttp: Hello, Identify or Resume,
heartbeats ``{t, seq_ack}`` with latency from the matching ACK, ``seq`` tracking
from JSON and binary frames, and automatic reconnection that follows the close
code table of :mod:`fastvoice.close_codes` (resume when allowed, a new identify
when the session is gone, a stop with :class:`~fastvoice.errors.GatewayClosedError`
otherwise), with exponential backoff, jitter, a cap, bounded retries and zombie
detection (a heartbeat not acknowledged before the next one is due).

The session itself (what to send after Hello, ``seq_ack``, the heartbeat schedule, the
decision after a close code) is :class:`fastvoice.gateway_protocol.GatewayProtocol`, which
does no I/O; :class:`Gateway` is the pump around it: the websocket, the reader and
heartbeat tasks, the backoff sleeps and the user's handlers.

Every frame received goes to the event handler as ``(opcode, data)``; the close
handler ``(gateway, error)`` is called once when the gateway gives up for good
(never after a :meth:`Gateway.close` by the user).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Union

import aiohttp

from ._shown import cut
from .errors import (
    GatewayAlreadyConnectedError,
    GatewayClosedError,
    GatewayNotConnectedError,
    GatewayTimeoutError,
)
from .gateway_messages import GatewayMessage, GatewayMessageData, Opcode
from .gateway_protocol import (
    CloseAction,
    CloseDecision,
    FrameDropped,
    GatewayEvent,
    GatewayProtocol,
    HeartbeatAcked,
    HelloReceived,
    MessageReceived,
    ReadyRepeated,
    SessionReady,
    State,
    Status,
    backoff_delay,
    encode_frame,
)

__all__ = [
    "Gateway",
    "GatewayConfig",
    "State",
    "Status",
    "EventHandler",
    "CloseHandler",
    "StateProvider",
    "EventHandlerFunc",
    "CloseHandlerFunc",
    "StateProviderFunc",
    "GatewayCreateFunc",
]

_log = logging.getLogger("fastvoice.gateway")

#: The event handler type, ``(opcode, data)``: called for every frame; may be a plain function or a
#: coroutine function.  The one name of this type (the seed's), used by ``Gateway``, ``ConnConfig``
#: and ``Conn.set_event_handler_func``.
EventHandlerFunc = Callable[[Union[Opcode, int], GatewayMessageData], Union[None, Awaitable[None]]]
#: ``(gateway, error)``; may be a plain function or a coroutine function (seed: ``CloseHandlerFunc``).
CloseHandlerFunc = Callable[["Gateway", BaseException], Union[None, Awaitable[None]]]
#: Returns the state to identify with when a new session is needed (seed: ``StateProviderFunc``).
StateProviderFunc = Callable[[], Union["State", Awaitable["State"]]]
#: Older names of the same three types, kept so that code using them keeps working.
EventHandler = EventHandlerFunc
CloseHandler = CloseHandlerFunc
StateProvider = StateProviderFunc
#: Builds a gateway from its handlers and config (seed: ``GatewayCreateFunc``); ``Gateway`` itself is one.
GatewayCreateFunc = Callable[
    [Union[EventHandlerFunc, None], Union[CloseHandlerFunc, None], Union["GatewayConfig", None]], "Gateway"
]

# The websocket close code the client uses when it drops a connection it wants to resume:
# 1000/1001 would end the voice session on Discord's side.
_RESUMABLE_CLOSE = 4000
_DESCRIBED_MAX = 200


@dataclass(slots=True)
class GatewayConfig:
    """Configuration of a :class:`Gateway` (the seed's ``GatewayConfig``).

    - ``logger``: where the gateway logs (default ``fastvoice.gateway``).
    - ``session``: the aiohttp session to connect with; one is created (and closed) when ``None``.
    - ``ssl``: passed to aiohttp (an ``ssl.SSLContext`` to trust a test server, ``False`` to skip checks).
    - ``connect_timeout``: seconds for the TCP/TLS/websocket handshake of one connection.
    - ``open_timeout``: seconds :meth:`Gateway.open` waits for Ready (or Resumed).
    - ``auto_reconnect``: reconnect after a close that allows it (seed: ``AutoReconnect``).
    - ``max_dave_protocol_version``: sent in Identify (1 = DAVE v1, 0 = none).
    - ``backoff_base`` / ``backoff_max``: exponential backoff (seconds) between reconnect
      attempts, each delay jittered to 50-100 % of its value.
    - ``max_reconnect_attempts``: consecutive failed reconnects before giving up.
    - ``max_client_bug_retries``: reconnects allowed after client-bug close codes (4001, 4002...).
    - ``max_missed_heartbeat_acks``: heartbeats left unacknowledged before the connection
      is declared a zombie and resumed.
    - ``state_provider``: called for a fresh :class:`State` before identifying a new session
      (after 4006, 4009...); the last state is reused when ``None``.
    - ``max_message_size``: largest frame accepted, in bytes (a larger one drops the connection).
    """

    logger: logging.Logger = field(default_factory=lambda: _log)
    session: aiohttp.ClientSession | None = None
    ssl: _ssl.SSLContext | bool | None = None
    connect_timeout: float = 10.0
    open_timeout: float = 30.0
    auto_reconnect: bool = True
    max_dave_protocol_version: int = 1
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_reconnect_attempts: int = 8
    max_client_bug_retries: int = 2
    max_missed_heartbeat_acks: int = 1
    state_provider: StateProviderFunc | None = None
    max_message_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "open_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"GatewayConfig.{name} must be a positive number of seconds, got {value!r}")
        for name in ("backoff_base", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"GatewayConfig.{name} must be a number of seconds >= 0, got {value!r}")
        for name, lowest in (
            ("max_reconnect_attempts", 0),
            ("max_client_bug_retries", 0),
            ("max_missed_heartbeat_acks", 1),
            ("max_message_size", 1),
            ("max_dave_protocol_version", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"GatewayConfig.{name} must be an int >= {lowest}, got {value!r}")


class _ConnectionEnded(Exception):
    """Internal: one websocket connection ended with ``code`` (None = no close frame)."""

    def __init__(self, code: int | None, reason: str = "", zombie: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason
        self.zombie = zombie


class Gateway:
    """A voice gateway connection (the seed's ``Gateway``).

    ``event_handler(opcode, data)`` receives every frame (typed data, or
    :class:`~fastvoice.gateway_messages.GatewayMessageDataUnknown` for unknown
    ops).  ``close_handler(gateway, error)`` is called when the gateway stops for
    good on its own.  Both may be coroutine functions; exceptions they raise are
    logged and never stop the gateway.  The event handler runs in the gateway's
    reader: the next frame is read once it returns, so it should not block.  The
    close handler runs while the gateway is still winding down: to open it again
    from there, start :meth:`open` in a new task.
    """

    def __init__(
        self,
        event_handler: EventHandlerFunc | None = None,
        close_handler: CloseHandlerFunc | None = None,
        config: GatewayConfig | None = None,
    ) -> None:
        self._event_handler = event_handler
        self._close_handler = close_handler
        self._config = config if config is not None else GatewayConfig()
        self._log = self._config.logger
        self._protocol = self._new_protocol()
        self._latency: float | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._own_session = False
        self._runner: asyncio.Task[None] | None = None
        self._heartbeater: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._closing = False
        self._in_cleanup = False
        self._zombie = False
        self._close_reason = ""

    def _new_protocol(self) -> GatewayProtocol:
        config = self._config
        return GatewayProtocol(
            max_dave_protocol_version=config.max_dave_protocol_version,
            max_missed_heartbeat_acks=config.max_missed_heartbeat_acks,
            max_reconnect_attempts=config.max_reconnect_attempts,
            max_client_bug_retries=config.max_client_bug_retries,
            auto_reconnect=config.auto_reconnect,
        )

    # -- the seed's accessors -------------------------------------------------

    @property
    def ssrc(self) -> int | None:
        """The SSRC from the last Ready, or ``None`` before it."""
        return self._protocol.ssrc

    @property
    def latency(self) -> float | None:
        """Seconds between the last acknowledged heartbeat and its ACK, or ``None`` before the first ACK."""
        return self._latency

    @property
    def status(self) -> Status:
        """The current :class:`Status`."""
        return self._protocol.status

    @property
    def seq_ack(self) -> int:
        """The last ``seq`` received from the server in this session (-1 before any)."""
        return self._protocol.seq_ack

    @property
    def config(self) -> GatewayConfig:
        """This gateway's configuration."""
        return self._config

    @property
    def state(self) -> State | None:
        """The state the gateway connects with (``None`` before :meth:`open`)."""
        return self._protocol.state

    @property
    def reconnect_close_code(self) -> int | None:
        """The close code that made the gateway reconnect last (``None``: no close frame, e.g.
        a lost connection or missed heartbeat ACKs), read when Ready or Resumed ends a reconnect."""
        return self._protocol.reconnect_close_code

    # -- lifecycle -------------------------------------------------------------

    async def open(self, state: State) -> None:
        """Connect, identify and wait for Ready.

        Raises :class:`~fastvoice.errors.GatewayAlreadyConnectedError` when already
        open, :class:`~fastvoice.errors.GatewayClosedError` at once when the server
        closes with a code that forbids retrying (4004, 4017...) or retries run out,
        and :class:`~fastvoice.errors.GatewayTimeoutError` after ``open_timeout``.
        """
        runner = self._runner
        if runner is not None and not runner.done():
            if not self._closing:
                raise GatewayAlreadyConnectedError()
            if asyncio.current_task() in (runner, self._reader, self._heartbeater):
                raise GatewayAlreadyConnectedError(
                    "voice gateway is still winding down; call open() from a new task, not from its handlers"
                )
            await self._wait_runner()  # a closing gateway finishes first, then opens again
        if not isinstance(state, State):
            raise TypeError(f"state must be a fastvoice.State, got {type(state).__name__}")
        state.url()  # validates the endpoint before anything starts
        loop = asyncio.get_running_loop()
        self._closing = False
        self._protocol.start(state)
        self._ready = loop.create_future()
        self._wakeup = asyncio.Event()
        self._runner = loop.create_task(self._run(), name="fastvoice-gateway")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self._config.open_timeout)
        except asyncio.TimeoutError:
            stuck_at = self.status.name
            await self.close()
            raise GatewayTimeoutError(
                f"voice gateway was not ready after {self._config.open_timeout} s (status was {stuck_at})"
            ) from None
        except asyncio.CancelledError:
            await self.close()
            raise
        except BaseException:
            await self._wait_runner()
            raise

    async def close(self) -> None:
        """Close the connection with code 1000 (ends the voice session) and stop reconnecting."""
        await self.close_with_code(1000, "")

    async def close_with_code(self, code: int, message: str = "") -> None:
        """Close the connection with ``code`` and ``message`` and stop reconnecting.

        Safe to call at any time and more than once.  Called from outside the
        gateway it returns once every task and socket of the gateway is gone;
        called from the event handler it starts the shutdown, which finishes as
        soon as the handler returns.
        """
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await ws.close(code=code, message=message.encode())
            except (aiohttp.ClientError, OSError, ConnectionError, RuntimeError):
                pass
        current = asyncio.current_task()
        runner = self._runner
        if runner is not None and current not in (runner, self._reader, self._heartbeater):
            if not runner.done():
                # With the socket closed the runner ends by itself; a cancel is only
                # needed while it connects, and must never cut its cleanup short.
                if self._ws is not None:
                    await asyncio.wait({runner}, timeout=3.0)
                if not runner.done() and not self._in_cleanup:
                    runner.cancel()
            await self._wait_runner()
            await self._close_session()
            self._protocol.stopped()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(GatewayNotConnectedError("voice gateway closed before it was ready"))
            self._ready.exception()  # retrieved here: open() may not be waiting any more

    async def _wait_runner(self) -> None:
        runner = self._runner
        if runner is None or runner is asyncio.current_task():
            return
        # asyncio.wait does not raise for the runner's own cancellation or failure
        # (already logged), but still lets a cancellation of the caller through.
        await asyncio.wait({runner})
        if not runner.cancelled():
            runner.exception()

    async def _close_session(self) -> None:
        session = self._session
        if session is not None and self._own_session:
            await session.close()
        if self._session is session:
            self._session = None
            self._own_session = False

    # -- sending -----------------------------------------------------------------

    async def send(self, opcode: Opcode | int, data: GatewayMessageData | Any = None) -> None:
        """Send one message: typed data (binary DAVE ops go in a binary frame) or plain JSON data.

        Raises :class:`~fastvoice.errors.GatewayNotConnectedError` when no connection is open.
        """
        ws = self._ws
        if ws is None or ws.closed:
            raise GatewayNotConnectedError()
        frame = encode_frame(opcode, data)
        try:
            if isinstance(frame, bytes):
                self._log.debug("voice gateway send binary op=%s size=%d", int(opcode), len(frame))
                await ws.send_bytes(frame)
            else:
                self._log.debug("voice gateway send op=%s", _op_name(opcode))
                await ws.send_str(frame)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise GatewayNotConnectedError(f"voice gateway not connected: {cut(str(exc), _DESCRIBED_MAX)}") from exc

    # -- the connection loop --------------------------------------------------

    async def _run(self) -> None:
        protocol = self._protocol
        try:
            while True:
                ended = await self._connect_once()
                if self._closing:
                    return
                decision = protocol.on_close(ended.code, ended.zombie)
                entry = decision.entry
                self._log.log(
                    logging.ERROR if entry.client_bug else logging.INFO,
                    "voice gateway connection closed: code=%s (%s), behaviour=%s%s",
                    ended.code,
                    "zombie connection" if ended.zombie else entry.description,
                    decision.behaviour,
                    " - a client bug, please report it" if entry.client_bug else "",
                )
                if decision.action is CloseAction.STOP:
                    await self._give_up(ended, decision)
                    return
                if decision.new_session:
                    await self._refresh_state()
                delay = self._backoff(decision.attempts)
                self._log.info(
                    "voice gateway %s in %.2f s (attempt %d of %d)",
                    "resuming" if decision.action is CloseAction.RESUME else "identifying a new session",
                    delay,
                    decision.attempts,
                    self._config.max_reconnect_attempts,
                )
                if self._wakeup is not None:
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                if self._closing:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must still end open() and reach the close handler
            self._log.exception("voice gateway loop failed")
            self._closing = True
            self._fail_ready(exc)
            await self._call_close_handler(exc)
        finally:
            # First, before any await: however the runner ends (a close() that was itself
            # cancelled, the loop shutting down), a pending open() must not wait for its timeout.
            self._fail_ready(GatewayNotConnectedError("voice gateway closed before it was ready"))
            self._in_cleanup = True
            await self._stop_heartbeat()
            ws, self._ws = self._ws, None
            if ws is not None and not ws.closed:
                try:
                    await ws.close(code=1000)
                except BaseException:  # noqa: BLE001 - cleanup must not raise
                    pass
            await self._close_session()
            protocol.stopped()
            self._in_cleanup = False

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self._config.backoff_base, self._config.backoff_max, random.uniform(0.5, 1.0))

    async def _refresh_state(self) -> None:
        provider = self._config.state_provider
        if provider is None:
            return
        try:
            state = provider()
            if inspect.isawaitable(state):
                state = await state
        except Exception:
            self._log.exception("voice gateway state provider failed; reusing the last state")
            return
        if isinstance(state, State):
            self._protocol.state = state
        else:
            self._log.error("voice gateway state provider returned %r, expected a State; reusing the last one",
                            type(state).__name__)

    async def _give_up(self, ended: _ConnectionEnded, decision: CloseDecision) -> None:
        error = GatewayClosedError(ended.code, decision.entry, ended.reason, decision.attempts, decision.detail)
        self._log.warning("%s", error)
        self._protocol.stopped()
        self._closing = True
        self._fail_ready(error)
        await self._call_close_handler(error)

    def _fail_ready(self, error: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved here: open() may not be waiting any more

    async def _call_close_handler(self, error: BaseException) -> None:
        handler = self._close_handler
        if handler is None:
            return
        try:
            result = handler(self, error)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._log.exception("voice gateway close handler raised")

    async def _connect_once(self) -> _ConnectionEnded:
        """Run one websocket connection to its end and say how it ended."""
        state = self._protocol.state
        assert state is not None
        self._zombie = False
        self._close_reason = ""
        self._protocol.connecting()
        if self._session is None:
            if self._config.session is not None:
                self._session = self._config.session
                self._own_session = False
            else:
                self._session = aiohttp.ClientSession()
                self._own_session = True
        url = state.url()
        try:
            ws = await asyncio.wait_for(
                self._session.ws_connect(
                    url,
                    ssl=self._config.ssl if self._config.ssl is not None else True,
                    autoclose=True,
                    autoping=True,
                    max_msg_size=self._config.max_message_size,
                    timeout=_ws_timeout(),
                ),
                self._config.connect_timeout,
            )
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            self._log.info("voice gateway connect failed: %s", _describe(exc))
            return _ConnectionEnded(None, f"connect failed: {_describe(exc)}")
        self._ws = ws
        self._protocol.connected()
        reader = asyncio.get_running_loop().create_task(self._read_loop(ws), name="fastvoice-gateway-reader")
        self._reader = reader
        try:
            await asyncio.wait({reader})
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.wait({reader})
            self._reader = None
            await self._stop_heartbeat()
            if not ws.closed:
                try:
                    await ws.close(code=_RESUMABLE_CLOSE, message=b"zombie connection" if self._zombie else b"")
                except (aiohttp.ClientError, OSError, ConnectionError, RuntimeError):
                    pass
            if self._ws is ws:
                self._ws = None
        failure = None if reader.cancelled() else reader.exception()
        if failure is not None:
            self._log.error("voice gateway reader failed: %s", _describe(failure), exc_info=failure)
        if self._zombie:
            return _ConnectionEnded(None, "heartbeat ACK missed", zombie=True)
        code = ws.close_code
        reason = self._close_reason
        error = ws.exception()
        if error is not None:
            reason = _describe(error)
        # aiohttp reports 1006 for a connection lost without a close frame.
        return _ConnectionEnded(None if code in (None, 1006) else code, reason)

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        protocol = self._protocol
        while not self._closing:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._handle_events(ws, protocol.receive_text(msg.data, time.monotonic()))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await self._handle_events(ws, protocol.receive_bytes(msg.data))
            elif msg.type is aiohttp.WSMsgType.ERROR:
                self._log.warning("voice gateway websocket error: %s", _describe(msg.data))
                return
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.extra, str):
                    self._close_reason = msg.extra
                return

    # -- receiving ---------------------------------------------------------------

    async def _handle_events(self, ws: aiohttp.ClientWebSocketResponse, events: list[GatewayEvent]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                message = event.message
                if event.binary:
                    self._log.debug("voice gateway received binary op=%s seq=%s size=%d", _op_name(message.op),
                                    message.seq, event.size)
                else:
                    self._log.debug("voice gateway received op=%s seq=%s", _op_name(message.op), message.seq)
                await self._dispatch(message)
            elif isinstance(event, HelloReceived):
                await self._on_hello(ws, event.interval)
            elif isinstance(event, SessionReady):
                self._resolve_ready()
            elif isinstance(event, HeartbeatAcked):
                if event.latency is None:
                    self._log.debug("voice gateway heartbeat ACK for an unknown nonce")
                else:
                    self._latency = event.latency
            elif isinstance(event, ReadyRepeated):
                self._log.warning("voice gateway ignored a repeated Ready (ssrc %d) in the same session", event.ssrc)
            elif isinstance(event, FrameDropped):
                self._log.warning("voice gateway dropped an undecodable %sframe: %s",
                                  "binary " if event.binary else "", event.error)

    def _resolve_ready(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def _dispatch(self, message: GatewayMessage) -> None:
        handler = self._event_handler
        if handler is None:
            return
        try:
            result = handler(message.op, message.d)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._log.exception("voice gateway event handler raised for op=%s", _op_name(message.op))

    async def _on_hello(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        await self._stop_heartbeat()
        for frame in self._protocol.data_to_send():  # Identify or Resume (nothing on a repeated Hello)
            try:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                self._log.info("voice gateway could not send after Hello: %s", _describe(exc))
                return
        self._protocol.frames_sent()
        self._heartbeater = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(ws), name="fastvoice-gateway-heartbeat"
        )

    async def _heartbeat_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        protocol = self._protocol
        while not ws.closed:
            due = protocol.next_heartbeat_at
            if due is None:
                return
            now = time.monotonic()
            if now < due:
                await asyncio.sleep(due - now)
                continue
            if protocol.is_zombie():
                self._log.warning(
                    "voice gateway heartbeat ACK missed %d time(s): zombie connection, reconnecting",
                    protocol.missed_heartbeat_acks,
                )
                self._zombie_connection()
                return
            try:
                await ws.send_str(protocol.heartbeat(now, time.time()))
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                return

    def _zombie_connection(self) -> None:
        self._zombie = True
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeater = self._heartbeater, None
        if task is None or task is asyncio.current_task():
            return
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            self._log.exception("voice gateway heartbeat task failed")


def _ws_timeout() -> Any:
    # A short close handshake: a zombie server must not hold a reconnect for long.
    try:
        return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)
    except (AttributeError, TypeError):  # aiohttp < 3.10
        return 2.0


def _describe(exc: object) -> str:
    # Bounded: aiohttp's errors quote what the server sent (a bad status line, a close reason).
    if isinstance(exc, BaseException):
        text = cut(str(exc), _DESCRIBED_MAX)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return cut(repr(exc), _DESCRIBED_MAX)


def _op_name(op: Opcode | int) -> str:
    return op.name if isinstance(op, Opcode) else str(op)
