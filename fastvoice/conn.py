"""A complete voice connection for one guild: gateway + UDP + audio (seed: ``Conn``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._conn_config import ConnConfig, ConnOpenError, StateUpdateFunc, takes_seed_order
from ._shown import cut, shown
from .audio import AudioReceiver, AudioSender
from .dave import DAVE_PROTOCOL_VERSION, DaveSession
from .encryption import choose_encryption_mode
from .errors import GatewayClosedError, VoiceError
from .gateway import EventHandlerFunc, Gateway, State
from .gateway_messages import (
    GatewayMessageData,
    GatewayMessageDataClientDisconnect,
    GatewayMessageDataClientsConnect,
    GatewayMessageDataReady,
    GatewayMessageDataSelectProtocol,
    GatewayMessageDataSelectProtocolData,
    GatewayMessageDataSessionDescription,
    GatewayMessageDataSpeaking,
    Opcode,
    Protocol,
    SpeakingFlags,
)
from .opus import OpusFrameProvider, OpusFrameReceiver, UserFilterFunc
from .rtp import SSRCTable
from .session_stats import SessionStats
from .udp import UDPConn
from .voice_updates import VoiceServerUpdate, VoiceStateUpdate, snowflake

__all__ = [
    "Conn",
    "ConnConfig",
    "ConnCreateFunc",
    "ConnOpenError",
    "StateUpdateFunc",
    "VoiceServerUpdate",
    "VoiceStateUpdate",
]

_log = logging.getLogger("fastvoice.conn")
# Longest exception text a log line or a ConnOpenError repeats.
_REASON_MAX = 300


class Conn:
    """One guild's voice connection (seed: ``Conn``).

    ``open(channel_id)`` asks the main gateway to join (through ``voice_state_update_func``),
    waits for the bot's VOICE_STATE_UPDATE and the VOICE_SERVER_UPDATE (fed in with
    :meth:`handle_voice_state_update` / :meth:`handle_voice_server_update`), connects the voice
    gateway, then UDP (IP discovery, Select Protocol), and returns once Session Description
    arrived and audio can flow. A new token or endpoint later reconnects to it, keeping the
    provider, the receiver and the outgoing stream's counters.
    """

    def __init__(
        self,
        guild_id: int,
        user_id: int,
        voice_state_update_func: StateUpdateFunc,
        remove_conn_func: Callable[[], None] | None = None,
        config: ConnConfig | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise TypeError("pass either a ConnConfig or keyword options, not both")
        self._config = config if config is not None else ConnConfig(**options)
        self._log = self._config.logger
        self._guild_id = snowflake(guild_id, "guild_id")
        self._user_id = snowflake(user_id, "user_id")
        self._state_update = voice_state_update_func
        self._remove = remove_conn_func
        self._event_handler = self._config.event_handler_func
        self._channel_id: int | None = None
        self._self_mute = False
        self._self_deaf = False
        self._session_id: str | None = None
        self._token: str | None = None
        self._endpoint: str | None = None
        self._updates = asyncio.Event()
        self._gateway: Gateway | None = None
        self._udp: UDPConn | None = None
        self._ssrcs = SSRCTable(self._config.max_ssrcs)
        self._connected_users: set[int] = set()
        self._provider: OpusFrameProvider | None = None
        self._receiver: OpusFrameReceiver | None = None
        self._sender: AudioSender | None = None
        self._audio_receiver: AudioReceiver | None = None
        # Resolved when the current voice session can carry audio (Session Description), or
        # failed with the reason it cannot; open() waits for it across a change of server.
        self._audio_ready: asyncio.Future[None] | None = None
        # Every background task (reconnects included); close() cancels and awaits them.
        self._tasks: set[asyncio.Task[Any]] = set()
        # The current voice session's tasks (gateway opening, UDP setup); a teardown ends them.
        self._session_tasks: set[asyncio.Task[Any]] = set()
        self._setup_task: asyncio.Task[None] | None = None
        self._reconnect_lock = asyncio.Lock()
        self._opened = False
        self._opening = False
        self._closed = False
        self._counters: tuple[int, int, int] | None = None
        # (token, endpoint) of the voice session the gateway was opened with.
        self._connected_with: tuple[str, str] | None = None
        self._mode: str | None = None
        self._dave_protocol_version = 0
        self._dave: DaveSession | None = None
        #: Reconnects, resumes and the gateway's closes by close code (see :class:`SessionStats`).
        self.session_stats = SessionStats()

    # -- the seed's accessors ------------------------------------------------------

    @property
    def dave(self) -> DaveSession | None:
        """The DAVE (end-to-end encryption) state of the call: ``e2ee``, ``protocol_version``,
        ``epoch``, ``voice_privacy_code``, ``verification_code(user_id)`` and ``stats``.

        ``None`` before the first voice session, or when DAVE is off in the gateway config.
        """
        return self._dave

    @property
    def gateway(self) -> Gateway | None:
        """The voice gateway in use (``None`` before :meth:`open`)."""
        return self._gateway

    @property
    def udp(self) -> UDPConn | None:
        """The UDP connection in use (``None`` until Ready)."""
        return self._udp

    @property
    def channel_id(self) -> int | None:
        """The voice channel joined, or ``None``."""
        return self._channel_id

    @property
    def guild_id(self) -> int:
        """The guild of this connection."""
        return self._guild_id

    @property
    def user_id(self) -> int:
        """The bot's user id."""
        return self._user_id

    @property
    def ssrcs(self) -> SSRCTable:
        """SSRC -> user map from op 5 (the receive path's dispatch table)."""
        return self._ssrcs

    @property
    def user_filter(self) -> UserFilterFunc | None:
        """Whose audio reaches the frame receiver (``ConnConfig.user_filter``; ``None``: everyone's)."""
        return self._config.user_filter

    @property
    def connected_users(self) -> frozenset[int]:
        """Users in the call, from ops 11 and 13."""
        return frozenset(self._connected_users)

    @property
    def mode(self) -> str | None:
        """The transport encryption mode of the current session."""
        return self._mode

    @property
    def sender(self) -> AudioSender | None:
        """The audio sender (its ``stats`` are the connection's frame statistics)."""
        return self._sender

    @property
    def receiver(self) -> AudioReceiver | None:
        """The audio receiver, once a frame receiver is set and the connection is up."""
        return self._audio_receiver

    def user_id_by_ssrc(self, ssrc: int) -> int | None:
        """The user sending with ``ssrc`` (from op 5), or ``None``."""
        return self._ssrcs.user_id(ssrc)

    # -- configuration -------------------------------------------------------------

    def set_opus_frame_provider(self, provider: OpusFrameProvider | None) -> None:
        """Play from ``provider`` (replaces the current one; ``None`` stops sending)."""
        self._provider = provider
        if self._sender is not None:
            self._sender.set_provider(provider)
        elif provider is not None and self._udp is not None and self._udp.packetizer is not None:
            self._start_sender()

    def set_opus_frame_receiver(self, receiver: OpusFrameReceiver | None) -> None:
        """Deliver received audio to ``receiver``."""
        if self._audio_receiver is not None:
            self._audio_receiver.close()
            self._audio_receiver = None
        self._receiver = receiver
        if receiver is not None and self._udp is not None and self._udp.packetizer is not None:
            self._start_receiver()

    def set_event_handler_func(self, handler: EventHandlerFunc | None) -> None:
        """Call ``handler(opcode, data)`` for every voice gateway event."""
        self._event_handler = handler

    async def set_speaking(self, flags: int) -> None:
        """Send op 5 Speaking with ``flags`` (:class:`SpeakingFlags`)."""
        gateway = self._gateway
        if gateway is None or self._udp is None:
            raise VoiceError("cannot send Speaking: the voice connection is not open")
        await gateway.send(
            Opcode.SPEAKING, GatewayMessageDataSpeaking(speaking=SpeakingFlags(flags), delay=0, ssrc=self._udp.ssrc)
        )

    # -- main gateway updates --------------------------------------------------------

    def handle_voice_state_update(self, update: VoiceStateUpdate) -> None:
        """Feed the bot's VOICE_STATE_UPDATE for this guild (others are ignored)."""
        if update.guild_id != self._guild_id or update.user_id != self._user_id:
            return
        moved = self._opened and update.channel_id is not None and update.channel_id != self._channel_id
        if update.session_id:
            self._session_id = update.session_id
        self._channel_id = update.channel_id
        self._updates.set()
        if moved:
            self._log.info("guild %d: moved to channel %d", self._guild_id, update.channel_id)

    def handle_voice_server_update(self, update: VoiceServerUpdate) -> None:
        """Feed a VOICE_SERVER_UPDATE for this guild: a new token or endpoint reconnects to it."""
        if update.guild_id != self._guild_id:
            return
        self._token = update.token
        self._endpoint = update.endpoint
        self._updates.set()
        if update.endpoint is None:
            self._log.info("guild %d: voice server unavailable, waiting for a new one", self._guild_id)
            return
        connected_with = self._connected_with
        if connected_with is not None and connected_with != (update.token, update.endpoint) and not self._closed:
            self._spawn(self._reconnect())

    def _spawn(self, coro: Any, session: bool = False) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        for tasks in (self._tasks, self._session_tasks) if session else (self._tasks,):
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return task

    def _current_state(self) -> State | None:
        if not (self._session_id and self._token and self._endpoint):
            return None
        return State(
            guild_id=self._guild_id,
            user_id=self._user_id,
            channel_id=self._channel_id,
            session_id=self._session_id,
            token=self._token,
            endpoint=self._endpoint,
        )

    async def _wait_for_state(self, timeout: float) -> State:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = self._current_state()
            if state is not None:
                return state
            self._updates.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                missing = [n for n, v in (("session id (VOICE_STATE_UPDATE)", self._session_id),
                                          ("token/endpoint (VOICE_SERVER_UPDATE)", self._token and self._endpoint))
                           if not v]
                raise ConnOpenError(f"guild {self._guild_id}: no {' and '.join(missing)} within {timeout:g} s")
            try:
                await asyncio.wait_for(self._updates.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # -- open / close --------------------------------------------------------------

    async def open(self, channel_id: int, self_mute: bool = False, self_deaf: bool = False) -> None:
        """Join ``channel_id`` and return once audio can flow.

        Raises :class:`ConnOpenError` on timeout and :class:`~fastvoice.errors.GatewayClosedError`
        at once when the voice server closes with a code that forbids retrying (4004, 4017...).
        A VOICE_SERVER_UPDATE with a new token or endpoint while it connects hands the
        connection over to that server: ``open()`` returns once the new session is ready.
        Cancelled at any point, it releases every socket and task it started.
        """
        if self._opened:
            raise VoiceError(f"guild {self._guild_id}: connection is already open")
        channel_id = snowflake(channel_id, "channel_id")
        loop = asyncio.get_running_loop()
        timeout = self._config.open_timeout
        deadline = loop.time() + timeout
        self._closed = False
        self._opened = self._opening = True
        self._channel_id = channel_id
        self._session_id = self._token = self._endpoint = None
        ready = self._audio_ready = loop.create_future()
        try:
            self._self_mute, self._self_deaf = bool(self_mute), bool(self_deaf)
            await self._call_state_update(channel_id, self_mute, self_deaf)
            state = await self._wait_for_state(deadline - loop.time())
            if self._closed:
                raise ConnOpenError(f"guild {self._guild_id}: the connection was closed while opening")
            self._connect(state)
            try:
                await asyncio.wait_for(asyncio.shield(ready), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ConnOpenError(f"guild {self._guild_id}: voice connection not ready within {timeout:g} s") from None
        except BaseException:
            self._opened = False
            async with self._reconnect_lock:  # a reconnect mid-teardown finishes it first
                await self._teardown()
            raise
        finally:
            self._opening = False

    async def _call_state_update(self, channel_id: int | None, self_mute: bool, self_deaf: bool) -> None:
        result = self._state_update(self._guild_id, channel_id, self_mute, self_deaf)
        if inspect.isawaitable(result):
            await result

    def _connect(self, state: State) -> None:
        """Start a voice session with ``state``: its gateway opens in a task, and the outcome
        (Session Description, or why not) reaches ``_audio_ready``, kept pending across a
        change of server so that a waiting ``open()`` waits for the newest session."""
        if self._audio_ready is None or self._audio_ready.done():
            self._audio_ready = asyncio.get_running_loop().create_future()
        self._connected_with = (state.token, state.endpoint)
        gateway_config = replace(self._config.gateway_config, state_provider=self._new_session_state)
        gateway = self._config.gateway_create_func(self._on_event, self._on_gateway_closed, gateway_config)
        self._gateway = gateway
        self._spawn(self._open_gateway(gateway, state), session=True)

    async def _open_gateway(self, gateway: Gateway, state: State) -> None:
        try:
            await gateway.open(state)
        except Exception as exc:
            if gateway is not self._gateway:
                return  # superseded by a newer voice server: that session reports instead
            if not isinstance(exc, GatewayClosedError):
                error = ConnOpenError(f"guild {self._guild_id}: the voice gateway did not open: {cut(str(exc), _REASON_MAX)}")
                error.__cause__ = exc
                exc = error
            self._fail_open(exc)

    def _fail_open(self, error: BaseException) -> None:
        ready = self._audio_ready
        if ready is not None and not ready.done():
            ready.set_exception(error)
            ready.exception()  # retrieved here: open() may have given up already

    async def _new_session_state(self) -> State:
        """The gateway needs a new session (4006, 4009...): ask the main gateway again."""
        self._session_id = self._token = None
        await self._call_state_update(self._channel_id, self._self_mute, self._self_deaf)
        return await self._wait_for_state(self._config.open_timeout)

    async def _reconnect(self) -> None:
        """A new token or endpoint: the old voice session is dead, connect to the new one.

        Updates that arrive together are served once, with the newest token and endpoint."""
        async with self._reconnect_lock:
            state = self._current_state()
            if state is None or not self._opened or (state.token, state.endpoint) == self._connected_with:
                return
            self._log.info("guild %d: reconnecting to voice server %s", self._guild_id, shown(state.endpoint))
            self.session_stats.on_server_change()
            await self._teardown(keep_audio=True)
            state = self._current_state()  # the newest, if another update came during the teardown
            if state is None or not self._opened:
                return
            self._connect(state)
            ready = self._audio_ready
        if self._opening or ready is None:
            return  # open() is waiting for this session and reports its outcome
        try:
            await asyncio.wait_for(asyncio.shield(ready), self._config.open_timeout)
        except asyncio.TimeoutError:
            self._log.error("guild %d: reconnect failed: not ready within %g s", self._guild_id,
                            self._config.open_timeout)
        except Exception as exc:
            self._log.error("guild %d: reconnect failed: %s", self._guild_id, cut(str(exc), _REASON_MAX))

    async def close(self) -> None:
        """Leave the channel and release every task and socket (seed: ``Close``)."""
        if self._closed:
            return
        self._closed = True
        was_open = self._opened
        self._opened = False
        if self._dave is not None:
            self._dave.close()
        # Audio stops first: a send tick during the teardown would announce Speaking on a
        # connection that is going away (and log that it could not).
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._audio_receiver is not None:
            self._audio_receiver.close()
            self._audio_receiver = None
        async with self._reconnect_lock:  # a reconnect mid-teardown finishes it first
            await self._teardown()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if was_open:
            try:
                await self._call_state_update(None, False, False)
            except Exception as exc:
                self._log.warning("guild %d: could not leave the channel: %s", self._guild_id, exc)
        if self._remove is not None:
            self._remove()

    async def _teardown(self, keep_audio: bool = False) -> None:
        """End the voice session: its gateway, socket and tasks. ``keep_audio`` (a change of
        server) keeps the SSRC map, the users and a pending ``open()`` waiting."""
        self._connected_with = None
        gateway, self._gateway = self._gateway, None
        udp, self._udp = self._udp, None
        tasks = [task for task in self._session_tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if udp is not None:
            self._counters = udp.stream_counters or self._counters
            udp.close()
        if self._sender is not None:
            self._sender.reset_session()
        if gateway is not None:
            await gateway.close()
        # Events the gateway delivered while closing may have started session tasks too.
        current = asyncio.current_task()
        tasks += [task for task in self._session_tasks if task is not current and task not in tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # each releases what it opened (a socket mid-discovery)
        if not keep_audio:
            self._fail_open(ConnOpenError(f"guild {self._guild_id}: the connection was closed while opening"))
            self._ssrcs.clear()
            self._connected_users.clear()

    # -- voice gateway events -------------------------------------------------------

    async def _on_event(self, opcode: Any, data: GatewayMessageData) -> None:
        try:
            self.session_stats.on_event(self._gateway, int(opcode))
            if int(opcode) in _DAVE_EVENT_OPS:
                dave = self._dave_session()
                if dave is not None:
                    await dave.on_event(opcode, data)
            if isinstance(data, GatewayMessageDataReady):
                # A newer Ready (a new session after 4006...) supersedes a setup still in progress.
                if self._setup_task is not None and not self._setup_task.done():
                    self._setup_task.cancel()
                if self._gateway is not None:  # None: torn down; a Ready read meanwhile starts nothing
                    self._setup_task = self._spawn(self._on_ready(data, self._gateway), session=True)
            elif isinstance(data, GatewayMessageDataSessionDescription):
                refused = self._unsupported_dave_version(data.dave_protocol_version or 0)
                if refused is None:
                    dave = self._dave_session()
                    if dave is not None:
                        await dave.on_session_description(data.dave_protocol_version or 0)
                    refused = self._on_session_description(data)
                if refused is not None:
                    await self._end_session(refused)
            elif isinstance(data, GatewayMessageDataSpeaking):
                if data.user_id:
                    self._ssrcs.set(data.ssrc, data.user_id)
                    if self._audio_receiver is not None:
                        self._audio_receiver.ssrc_mapped(data.ssrc)
            elif isinstance(data, GatewayMessageDataClientsConnect):
                self._connected_users.update(data.user_ids)
            elif isinstance(data, GatewayMessageDataClientDisconnect):
                self._connected_users.discard(data.user_id)
                if self._audio_receiver is not None:
                    self._audio_receiver.cleanup_user(data.user_id)
                else:
                    self._ssrcs.remove_user(data.user_id)
        except Exception:
            self._log.exception("guild %d: handling voice event op %s failed", self._guild_id, opcode)
        handler = self._event_handler
        if handler is not None:
            try:
                result = handler(opcode, data)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._log.exception("guild %d: voice event handler raised", self._guild_id)

    async def _on_ready(self, ready: GatewayMessageDataReady, gateway: Gateway | None) -> None:
        """Ready (new session): UDP, IP discovery, Select Protocol. A setup that fails, is
        cancelled or superseded closes its socket; only a selected one stays as ``udp``."""
        udp: UDPConn | None = None
        selected = False
        try:
            mode = choose_encryption_mode(ready.modes, allow_discontinued=self._config.allow_discontinued_modes)
            if self._udp is not None:
                self._counters = self._udp.stream_counters or self._counters
                self._udp.close()
            udp = self._udp = self._config.udp_conn_create_func(replace(self._config.udp_config))
            address, port = await udp.open(ready.ip, ready.port, ready.ssrc)
            if gateway is None or gateway is not self._gateway or udp is not self._udp:
                return  # superseded while discovering
            self._mode = mode.value
            if self._sender is not None:
                self._sender.reset_session()  # a new session's SSRC needs its own op 5
            await gateway.send(
                Opcode.SELECT_PROTOCOL,
                GatewayMessageDataSelectProtocol(
                    protocol=Protocol.UDP,
                    data=GatewayMessageDataSelectProtocolData(address=address, port=port, mode=mode),
                ),
            )
            selected = True
        except Exception as exc:
            if gateway is not self._gateway or (udp is not None and udp is not self._udp):
                return  # superseded: the newer session reports
            reason = cut(str(exc), _REASON_MAX)  # errors quote peer values: bounded whatever raised
            self._log.error("guild %d: voice UDP setup failed: %s", self._guild_id, reason)
            self._fail_open(ConnOpenError(f"guild {self._guild_id}: voice UDP setup failed: {reason}"))
        finally:
            if udp is not None and not selected:
                if self._udp is udp:
                    self._udp = None
                udp.close()

    def _on_session_description(self, data: GatewayMessageDataSessionDescription) -> ConnOpenError | None:
        """Key the UDP connection; returns the error that ends the session when the
        description cannot be used (a mode other than the one selected, or unsupported)."""
        udp = self._udp
        if udp is None:
            self._log.warning("guild %d: Session Description before Ready; ignored", self._guild_id)
            return None
        try:
            if str(data.mode) != self._mode:
                raise ValueError(f"it names encryption mode {shown(str(data.mode))}, but {self._mode!r} was selected")
            udp.set_secret_key(data.mode, data.secret_key, counters=self._counters)
        except (ValueError, TypeError) as exc:
            return ConnOpenError(f"guild {self._guild_id}: the voice server's Session Description is unusable: {exc}")
        self._dave_protocol_version = data.dave_protocol_version or 0
        if self._dave_protocol_version and self._dave is None:
            # The server chose DAVE although we did not offer it: hold every frame rather
            # than send plaintext into an E2EE call.
            self._log.error(
                "guild %d: the call requires DAVE protocol %d, which this connection did not offer; "
                "audio is held", self._guild_id, self._dave_protocol_version,
            )
        if self._provider is not None:
            self._start_sender()
        if self._receiver is not None:
            self._start_receiver()
        if self._audio_ready is not None and not self._audio_ready.done():
            self._audio_ready.set_result(None)
        return None

    def _unsupported_dave_version(self, version: int) -> ConnOpenError | None:
        """A DAVE version above the one offered in Identify: nothing could be sent or heard, so the
        session ends (DAVE lets only the gateway pick the version; a client cannot negotiate down)."""
        offered = min(self._config.gateway_config.max_dave_protocol_version, DAVE_PROTOCOL_VERSION)
        if version <= offered:
            return None
        return ConnOpenError(
            f"guild {self._guild_id}: the voice server chose DAVE protocol version {version}, "
            f"but this connection offered at most {offered}"
        )

    def _dave_session(self) -> DaveSession | None:
        """The DAVE state machine for the current channel (a new one after a move); ``None`` if DAVE is off."""
        max_version = min(self._config.gateway_config.max_dave_protocol_version, DAVE_PROTOCOL_VERSION)
        if not max_version or self._channel_id is None:
            return None
        dave = self._dave
        if dave is None or dave.channel_id != self._channel_id:
            if dave is not None:
                dave.close()
            dave = DaveSession(
                self._user_id, self._channel_id, max_version, send=self._dave_send, logger=self._log,
                config=self._config.dave_config,
            )
            self._dave = dave
            # Hooks already installed belong to the previous channel's state.
            if self._sender is not None:
                self._sender.frame_hook = dave.encrypt_frame
            if self._audio_receiver is not None:
                self._audio_receiver.packet_hook = dave.receive_packet
        return dave

    async def _dave_send(self, opcode: Opcode, data: GatewayMessageData) -> None:
        gateway = self._gateway
        if gateway is None:
            raise ConnectionError("no voice gateway")
        await gateway.send(opcode, data)

    def _start_sender(self) -> None:
        if self._sender is None:
            create_sender = self._config.audio_sender_create_func
            if takes_seed_order(create_sender, AudioSender):
                self._sender = create_sender(self._log, self._provider, self)
            else:
                self._sender = create_sender(self._provider, self, logger=self._log)
            self._sender.open()
        else:
            self._sender.set_provider(self._provider)
        if self._dave is not None:
            self._sender.frame_hook = self._dave.encrypt_frame
        else:
            self._sender.frame_hook = _hold_all_frames if self._dave_protocol_version else None

    def _start_receiver(self) -> None:
        assert self._udp is not None and self._receiver is not None
        if self._audio_receiver is None:
            create_receiver = self._config.audio_receiver_create_func
            if takes_seed_order(create_receiver, AudioReceiver):
                self._audio_receiver = create_receiver(self._log, self._receiver, self)
            else:
                self._audio_receiver = create_receiver(
                    self._receiver, self._udp, self._ssrcs, user_filter=self._config.user_filter, logger=self._log
                )
        self._audio_receiver.packet_hook = self._dave.receive_packet if self._dave is not None else None
        self._audio_receiver.attach(self._udp)

    async def _end_session(self, error: ConnOpenError) -> None:
        """End a voice session the server made unusable: close its gateway (no reconnect)
        and release it as a stop close code would; ``open()`` raises ``error`` at once."""
        gateway = self._gateway
        self._log.error("%s; closing the voice connection", error)
        if gateway is None:
            return
        await gateway.close()
        await self._on_gateway_closed(gateway, error)

    async def _on_gateway_closed(self, gateway: Gateway, error: BaseException) -> None:
        if gateway is not self._gateway:
            return
        self._log.warning("guild %d: voice gateway stopped: %s", self._guild_id, error)
        self.session_stats.on_closed(error)
        # The voice session is over: stop sending audio into it and release the socket. A later
        # voice server update (a move after 4014) still reconnects: ``_connected_with`` is kept.
        udp, self._udp = self._udp, None
        if udp is not None:
            self._counters = udp.stream_counters or self._counters
            udp.close()
        if self._sender is not None:
            self._sender.reset_session()
        self._fail_open(error)

    def __repr__(self) -> str:
        return f"Conn(guild_id={self._guild_id}, channel_id={self._channel_id}, open={self._opened})"


#: Voice gateway events the DAVE state machine needs (clients connect/disconnect and DAVE's own).
_DAVE_EVENT_OPS = frozenset({11, 13, 21, 22, 24, 25, 27, 29, 30})


def _hold_all_frames(frame: bytes) -> None:
    """Frame hook while DAVE is required but not available: nothing leaves in plaintext."""
    return None


#: Creates a Conn (seed: ``ConnCreateFunc``).
ConnCreateFunc = Callable[..., Conn]
