"""The voice gateway client: one websocket to a Discord voice server (PROTOCOL.md sections 1 and 2).

:class:`Gateway` speaks gateway v8 over aiohttp: Hello, Identify or Resume,
heartbeats ``{t, seq_ack}`` with latency from the matching ACK, ``seq`` tracking
from JSON and binary frames, and automatic reconnection that follows the close
code table of :mod:`fastvoice.close_codes` (resume when allowed, a new identify
when the session is gone, a stop with :class:`~fastvoice.errors.GatewayClosedError`
otherwise), with exponential backoff, jitter, a cap, bounded retries and zombie
detection (a heartbeat not acknowledged before the next one is due).

Every frame received goes to the event handler as ``(opcode, data)``; the close
handler ``(gateway, error)`` is called once when the gateway gives up for good
(never after a :meth:`Gateway.close` by the user).
"""

from __future__ import annotations

import asyncio
import enum
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
from .close_codes import CloseBehaviour, GatewayCloseEventCode, gateway_close_event_code_by_code
from .constants import GATEWAY_VERSION
from .errors import (
    GatewayAlreadyConnectedError,
    GatewayClosedError,
    GatewayDecodeError,
    GatewayNotConnectedError,
    GatewayTimeoutError,
)
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

#: ``(opcode, data)``; may be a plain function or a coroutine function.
EventHandler = Callable[[Union[Opcode, int], GatewayMessageData], Union[None, Awaitable[None]]]
#: ``(gateway, error)``; may be a plain function or a coroutine function.
CloseHandler = Callable[["Gateway", BaseException], Union[None, Awaitable[None]]]
#: Returns the state to identify with when a new session is needed (seed: ``StateProviderFunc``).
StateProvider = Callable[[], Union["State", Awaitable["State"]]]
#: The seed's names for the handler types.
EventHandlerFunc = EventHandler
CloseHandlerFunc = CloseHandler
StateProviderFunc = StateProvider
#: Builds a gateway from its handlers and config (seed: ``GatewayCreateFunc``); ``Gateway`` itself is one.
GatewayCreateFunc = Callable[
    [Union[EventHandler, None], Union[CloseHandler, None], Union["GatewayConfig", None]], "Gateway"
]

# The websocket close code the client uses when it drops a connection it wants to resume:
# 1000/1001 would end the voice session on Discord's side.
_RESUMABLE_CLOSE = 4000
_MIN_HEARTBEAT_INTERVAL = 0.01
_DESCRIBED_MAX = 200


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
    state_provider: StateProvider | None = None
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
        event_handler: EventHandler | None = None,
        close_handler: CloseHandler | None = None,
        config: GatewayConfig | None = None,
    ) -> None:
        self._event_handler = event_handler
        self._close_handler = close_handler
        self._config = config if config is not None else GatewayConfig()
        self._log = self._config.logger
        self._status = Status.UNCONNECTED
        self._state: State | None = None
        self._ssrc: int | None = None
        self._latency: float | None = None
        self._seq_ack = -1
        self._session_ready = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._own_session = False
        self._runner: asyncio.Task[None] | None = None
        self._heartbeater: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing = False
        self._pending_nonces: dict[int, float] = {}
        self._last_nonce = 0
        self._reader: asyncio.Task[None] | None = None
        self._zombie = False
        self._close_reason = ""
        self._connection_was_ready = False
        self._in_cleanup = False
        self._wakeup: asyncio.Event | None = None

    # -- the seed's accessors -------------------------------------------------

    @property
    def ssrc(self) -> int | None:
        """The SSRC from the last Ready, or ``None`` before it."""
        return self._ssrc

    @property
    def latency(self) -> float | None:
        """Seconds between the last acknowledged heartbeat and its ACK, or ``None`` before the first ACK."""
        return self._latency

    @property
    def status(self) -> Status:
        """The current :class:`Status`."""
        return self._status

    @property
    def seq_ack(self) -> int:
        """The last ``seq`` received from the server in this session (-1 before any)."""
        return self._seq_ack

    @property
    def config(self) -> GatewayConfig:
        """This gateway's configuration."""
        return self._config

    @property
    def state(self) -> State | None:
        """The state the gateway connects with (``None`` before :meth:`open`)."""
        return self._state

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
        self._state = state
        self._closing = False
        self._session_ready = False
        self._seq_ack = -1
        self._ssrc = None
        self._ready = loop.create_future()
        self._wakeup = asyncio.Event()
        self._status = Status.CONNECTING
        self._runner = loop.create_task(self._run(), name="fastvoice-gateway")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self._config.open_timeout)
        except asyncio.TimeoutError:
            stuck_at = self._status.name
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
            self._status = Status.DISCONNECTED
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
        binary = isinstance(data, (bytes, bytearray, memoryview)) or (
            isinstance(data, GatewayMessageData) and not isinstance(data, GatewayMessageDataUnknown) and data.BINARY
        ) or (isinstance(data, GatewayMessageDataUnknown) and data.binary)
        try:
            if binary:
                frame = encode_client_binary(int(opcode), data)
                self._log.debug("voice gateway send binary op=%s size=%d", int(opcode), len(frame))
                await ws.send_bytes(frame)
            else:
                text = encode_message(int(opcode), data)
                self._log.debug("voice gateway send op=%s", _op_name(opcode))
                await ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise GatewayNotConnectedError(f"voice gateway not connected: {cut(str(exc), _DESCRIBED_MAX)}") from exc

    # -- the connection loop --------------------------------------------------

    async def _run(self) -> None:
        attempts = 0
        client_bug_retries = 0
        resume = False
        try:
            while True:
                ended = await self._connect_once(resume)
                if self._closing:
                    return
                if self._connection_was_ready:
                    attempts = 0
                entry = gateway_close_event_code_by_code(ended.code)
                behaviour = CloseBehaviour.RESUME if ended.zombie else entry.behaviour
                self._status = Status.DISCONNECTED
                self._log.log(
                    logging.ERROR if entry.client_bug else logging.INFO,
                    "voice gateway connection closed: code=%s (%s), behaviour=%s%s",
                    ended.code,
                    "zombie connection" if ended.zombie else entry.description,
                    behaviour,
                    " - a client bug, please report it" if entry.client_bug else "",
                )
                if behaviour is CloseBehaviour.STOP:
                    await self._give_up(ended, entry, attempts, "Not retrying.")
                    return
                if not self._config.auto_reconnect:
                    await self._give_up(ended, entry, attempts, "Auto-reconnect is off.")
                    return
                if entry.client_bug:
                    client_bug_retries += 1
                    if client_bug_retries > self._config.max_client_bug_retries:
                        await self._give_up(
                            ended,
                            entry,
                            attempts,
                            f"Gave up after {self._config.max_client_bug_retries} retries for client-bug close codes.",
                        )
                        return
                attempts += 1
                if attempts > self._config.max_reconnect_attempts:
                    await self._give_up(
                        ended,
                        entry,
                        attempts - 1,
                        f"Gave up after {self._config.max_reconnect_attempts} reconnect attempts.",
                    )
                    return
                resume = behaviour is CloseBehaviour.RESUME and self._session_ready
                if behaviour is CloseBehaviour.NEW_SESSION:
                    self._session_ready = False
                    await self._refresh_state()
                delay = self._backoff(attempts)
                self._log.info(
                    "voice gateway %s in %.2f s (attempt %d of %d)",
                    "resuming" if resume else "identifying a new session",
                    delay,
                    attempts,
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
            self._in_cleanup = True
            await self._stop_heartbeat()
            ws, self._ws = self._ws, None
            if ws is not None and not ws.closed:
                try:
                    await ws.close(code=1000)
                except BaseException:  # noqa: BLE001 - cleanup must not raise
                    pass
            await self._close_session()
            self._status = Status.DISCONNECTED
            self._in_cleanup = False

    def _backoff(self, attempt: int) -> float:
        cap = max(0.0, self._config.backoff_max)
        base = max(0.0, self._config.backoff_base)
        delay: float = min(cap, base * (2 ** min(attempt - 1, 30)))
        return delay * random.uniform(0.5, 1.0)

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
            self._state = state
        else:
            self._log.error("voice gateway state provider returned %r, expected a State; reusing the last one",
                            type(state).__name__)

    async def _give_up(self, ended: _ConnectionEnded, entry: GatewayCloseEventCode, attempts: int, detail: str) -> None:
        error = GatewayClosedError(ended.code, entry, ended.reason, attempts, detail)
        self._log.warning("%s", error)
        self._status = Status.DISCONNECTED
        self._closing = True
        self._fail_ready(error)
        await self._call_close_handler(error)

    def _fail_ready(self, error: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)

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

    async def _connect_once(self, resume: bool) -> _ConnectionEnded:
        """Run one websocket connection to its end and say how it ended."""
        assert self._state is not None
        self._connection_was_ready = False
        self._zombie = False
        self._close_reason = ""
        self._pending_nonces.clear()
        self._status = Status.CONNECTING
        if self._session is None:
            if self._config.session is not None:
                self._session = self._config.session
                self._own_session = False
            else:
                self._session = aiohttp.ClientSession()
                self._own_session = True
        url = self._state.url()
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
        self._status = Status.WAITING_FOR_HELLO
        reader = asyncio.get_running_loop().create_task(self._read_loop(ws, resume), name="fastvoice-gateway-reader")
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

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse, resume: bool) -> None:
        while not self._closing:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._handle_text(ws, msg.data, resume)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await self._handle_binary(msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                self._log.warning("voice gateway websocket error: %s", _describe(msg.data))
                return
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.extra, str):
                    self._close_reason = msg.extra
                return

    # -- receiving ---------------------------------------------------------------

    async def _handle_text(self, ws: aiohttp.ClientWebSocketResponse, text: str, resume: bool) -> None:
        try:
            message = decode_message(text)
        except GatewayDecodeError as exc:
            self._log.warning("voice gateway dropped an undecodable frame: %s", exc)
            if exc.seq is not None:
                self._seq_ack = exc.seq  # seen, though unusable: a resume need not replay it
            return
        if message.seq is not None:
            self._seq_ack = message.seq
        await self._handle_message(ws, message, resume)

    async def _handle_binary(self, data: bytes) -> None:
        try:
            message = decode_server_binary(data)
        except GatewayDecodeError as exc:
            self._log.warning("voice gateway dropped an undecodable binary frame: %s", exc)
            if exc.seq is not None:
                self._seq_ack = exc.seq
            return
        if message.seq is not None:
            self._seq_ack = message.seq
        self._log.debug("voice gateway received binary op=%s seq=%s size=%d", _op_name(message.op), message.seq,
                        len(data))
        await self._dispatch(message)

    async def _handle_message(self, ws: aiohttp.ClientWebSocketResponse, message: GatewayMessage, resume: bool) -> None:
        op = message.op
        data = message.d
        self._log.debug("voice gateway received op=%s seq=%s", _op_name(op), message.seq)
        if op == Opcode.HELLO and isinstance(data, GatewayMessageDataHello):
            await self._on_hello(ws, data, resume)
        elif op == Opcode.READY and isinstance(data, GatewayMessageDataReady):
            if self._session_ready:
                # One Ready per identified session: a repeat (a broken or hostile server) would
                # make the connection set up a second socket and select a protocol twice.
                self._log.warning("voice gateway ignored a repeated Ready (ssrc %d) in the same session", data.ssrc)
                return
            self._ssrc = data.ssrc
            self._session_ready = True
            self._connection_was_ready = True
            self._status = Status.READY
            self._resolve_ready()
        elif op == Opcode.RESUMED:
            self._status = Status.READY
            self._connection_was_ready = True
            self._resolve_ready()
        elif op == Opcode.HEARTBEAT_ACK and isinstance(data, GatewayMessageDataHeartbeatACK):
            sent = self._pending_nonces.pop(data.t, None)
            if sent is None:
                self._log.debug("voice gateway heartbeat ACK for an unknown nonce")
            else:
                self._latency = time.monotonic() - sent
                # an ACK also vouches for every older beat
                for nonce in [n for n in self._pending_nonces if n < data.t]:
                    del self._pending_nonces[nonce]
        await self._dispatch(message)

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

    async def _on_hello(self, ws: aiohttp.ClientWebSocketResponse, hello: GatewayMessageDataHello, resume: bool) -> None:
        assert self._state is not None
        state = self._state
        await self._stop_heartbeat()
        # A floor keeps a hostile or broken Hello from turning heartbeats into a flood.
        interval = max(hello.heartbeat_interval / 1000.0, _MIN_HEARTBEAT_INTERVAL)
        if self._status is Status.WAITING_FOR_HELLO:
            if resume:
                self._status = Status.RESUMING
                payload: GatewayMessageData = GatewayMessageDataResume(
                    guild_id=state.guild_id, session_id=state.session_id, token=state.token, seq_ack=self._seq_ack
                )
                op = Opcode.RESUME
            else:
                self._status = Status.IDENTIFYING
                self._seq_ack = -1
                self._session_ready = False
                payload = GatewayMessageDataIdentify(
                    guild_id=state.guild_id,
                    user_id=state.user_id,
                    session_id=state.session_id,
                    token=state.token,
                    max_dave_protocol_version=self._config.max_dave_protocol_version,
                )
                op = Opcode.IDENTIFY
            try:
                await ws.send_str(encode_message(op, payload))
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                self._log.info("voice gateway could not send %s: %s", op.name, _describe(exc))
                return
            if op == Opcode.IDENTIFY:
                self._status = Status.WAITING_FOR_READY
        self._heartbeater = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(ws, interval), name="fastvoice-gateway-heartbeat"
        )

    async def _heartbeat_loop(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        try:
            while not ws.closed:
                if len(self._pending_nonces) >= self._config.max_missed_heartbeat_acks:
                    self._log.warning(
                        "voice gateway heartbeat ACK missed %d time(s): zombie connection, reconnecting",
                        len(self._pending_nonces),
                    )
                    self._zombie_connection(ws)
                    return
                nonce = max(int(time.time() * 1000), self._last_nonce + 1)
                self._last_nonce = nonce
                self._pending_nonces[nonce] = time.monotonic()
                beat = GatewayMessageDataHeartbeat(t=nonce, seq_ack=self._seq_ack)
                try:
                    await ws.send_str(encode_message(Opcode.HEARTBEAT, beat))
                except (ConnectionError, aiohttp.ClientError, RuntimeError):
                    return
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise

    def _zombie_connection(self, ws: aiohttp.ClientWebSocketResponse) -> None:
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
