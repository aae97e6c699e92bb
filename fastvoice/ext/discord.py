"""fastvoice behind discord.py's voice API: ``await channel.connect(cls=VoiceClient)``.

:class:`VoiceClient` is a ``discord.VoiceProtocol``: discord.py creates it, feeds it the bot's
VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE dispatches and calls its ``connect`` and
``disconnect``; the voice connection itself is a fastvoice :class:`~fastvoice.Conn`. Every
guild of one ``discord.Client`` shares one :class:`~fastvoice.Manager` (:func:`get_manager`),
and every connection of the process shares fastvoice's one 20 ms send clock on the event loop:
no thread per connection, for sending or receiving.

The familiar ``discord.VoiceClient`` surface is there: ``play(source, after=...)``, ``stop``,
``pause``, ``resume``, ``is_playing``, ``is_paused``, ``is_connected``, ``source``,
``move_to``, ``disconnect``, ``latency`` and ``average_latency``, plus receiving with
:meth:`VoiceClient.listen` / :meth:`VoiceClient.stop_listening`.

What ``play`` accepts:

- a fastvoice :class:`~fastvoice.OpusFrameProvider` (``OpusReader``, ...), handed to the
  connection as it is;
- a ``discord.AudioSource``. Opus sources (``is_opus()`` true, e.g. ``FFmpegOpusAudio``) are
  sent frame by frame; PCM sources (``FFmpegPCMAudio``, ``PCMVolumeTransformer``...) are
  encoded with libopus through ``discord.opus.Encoder``, on the event loop (about 0.6 ms per
  frame: prefer ``FFmpegOpusAudio``, encoded by ffmpeg's own process, when many calls play).

The send clock asks for each frame synchronously on the event loop, so reading a source must
not block. discord.py's own ffmpeg sources (``FFmpegPCMAudio``, ``FFmpegOpusAudio``, also
inside a ``PCMVolumeTransformer``) are read here without blocking: their ffmpeg's stdout is
switched to non-blocking and read by the event loop (``loop.add_reader``) into a bounded
read-ahead buffer (100 frames, 2 s); when the buffer is empty the connection sends silence
until frames come back. Any other ``AudioSource`` has its ``read()`` called from the clock:
it must return at once (an in-memory source, a file on a local disk at worst).

This module needs discord.py 2.x (or a fork with the same ``VoiceProtocol``) installed, but not
its ``voice`` extra: PyNaCl and davey come with fastvoice.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import discord
from discord.errors import ClientException
from discord.player import AudioSource

if TYPE_CHECKING:  # type checkers read discord.py's own name
    from discord import VoiceProtocol as _VoiceProtocol
else:
    try:  # py-cord 2.7+ moved it (the old name warns)
        from discord.voice import VoiceProtocol as _VoiceProtocol
    except ImportError:  # discord.py
        from discord import VoiceProtocol as _VoiceProtocol

from ..conn import Conn
from ..errors import VoiceError
from ..gateway_messages import GatewayMessageData, GatewayMessageDataSessionDescription, Opcode
from ..manager import Manager, ManagerConfig
from ..opus import OpusFrameProvider, OpusFrameReceiver
from ._discord_playback import PCM_FRAME_BYTES, READ_AHEAD_FRAMES, Playback

__all__ = ["PCM_FRAME_BYTES", "READ_AHEAD_FRAMES", "VoiceClient", "get_manager"]

_log = logging.getLogger("fastvoice.ext.discord")

#: After a move, how long to wait for a new voice session before taking the current one as moved.
_MOVE_SETTLE = 1.0

_managers: weakref.WeakKeyDictionary[Any, Manager] = weakref.WeakKeyDictionary()


def get_manager(client: discord.Client, config: ManagerConfig | None = None) -> Manager:
    """The fastvoice :class:`~fastvoice.Manager` of ``client``, created on first use.

    One Manager serves every guild of a client; it sends op 4 through discord.py
    (``guild.change_voice_state``, which picks the guild's shard). To configure it (timeouts,
    ``ConnConfig``/``GatewayConfig``...), call ``get_manager(client, ManagerConfig(...))`` once
    the client is logged in and before the first ``channel.connect``. The Manager's
    ``ConnConfig.event_handler_func`` is replaced on each connection by the VoiceClient's own.
    """
    manager = _managers.get(client)
    if manager is not None:
        if config is not None:
            raise RuntimeError(
                "this client already has a fastvoice Manager; pass the ManagerConfig to get_manager() "
                "before the first voice connection"
            )
        return manager
    if config is not None and not isinstance(config, ManagerConfig):
        raise TypeError(f"config must be a fastvoice.ManagerConfig, got {type(config).__name__}")
    user = getattr(client, "user", None)
    if user is None:
        raise ClientException(
            "the discord client is not logged in (client.user is None): connect to voice once it is ready"
        )
    manager = Manager(_voice_state_sender(client), user.id, config)
    _managers[client] = manager
    return manager


def _voice_state_sender(client: discord.Client) -> Callable[..., Any]:
    # A weak reference: the Manager is the value of a WeakKeyDictionary keyed by the client,
    # which a strong one would keep alive forever.
    client_ref = weakref.ref(client)

    async def send_voice_state(guild_id: int, channel_id: int | None, self_mute: bool, self_deaf: bool) -> None:
        client = client_ref()
        if client is None:
            raise VoiceError(f"guild {guild_id}: the discord client is gone; cannot send a voice state update")
        guild = client.get_guild(guild_id)
        if guild is None:
            raise VoiceError(f"guild {guild_id} is not in the discord client's cache; cannot send a voice state update")
        channel = None if channel_id is None else discord.Object(id=channel_id)
        await guild.change_voice_state(channel=channel, self_mute=self_mute, self_deaf=self_deaf)

    return send_voice_state


# -- the VoiceProtocol ----------------------------------------------------------------------------


def _voice_state_payload(data: Any, user_id: int) -> Mapping[str, Any]:
    """The VOICE_STATE_UPDATE payload: discord.py passes the raw dict, py-cord 2.7+ an event object."""
    if isinstance(data, Mapping):
        return data
    return {"guild_id": data.guild_id, "channel_id": data.channel_id, "session_id": data.session_id,
            "user_id": user_id}


def _voice_server_payload(data: Any) -> Mapping[str, Any]:
    """The VOICE_SERVER_UPDATE payload (a dict, or py-cord 2.7+'s event object)."""
    if isinstance(data, Mapping):
        return data
    return {"guild_id": data.guild_id, "token": data.token, "endpoint": data.endpoint}


class VoiceClient(_VoiceProtocol):
    """A discord.py voice client backed by a fastvoice :class:`~fastvoice.Conn`.

    Use it as ``vc = await channel.connect(cls=fastvoice.ext.discord.VoiceClient)``; discord.py
    then finds it in ``guild.voice_client`` and forwards the voice dispatches to it. All
    methods are to be called from the client's event loop.
    """

    def __init__(self, client: discord.Client, channel: Any) -> None:
        super().__init__(client, channel)
        self._manager = get_manager(client)
        self._guild_id: int = channel.guild.id
        self._conn: Conn | None = None
        self._playback: Playback | None = None
        self._endings: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._receiver: OpusFrameReceiver | None = None
        self._latencies: deque[float] = deque(maxlen=20)
        self._sessions = 0
        self._changed = asyncio.Event()
        self._connected_once = False
        self._closing = False
        self._closed = asyncio.Event()
        self._self_mute = False
        self._self_deaf = False

    # -- what discord.py calls ------------------------------------------------------------------

    async def on_voice_state_update(self, data: Any, /) -> None:
        """The bot's VOICE_STATE_UPDATE for this guild (the raw payload), from discord.py."""
        try:
            data = _voice_state_payload(data, self._manager.user_id)
            self._manager.handle_voice_state_update(dict(data))
            channel_id = data.get("channel_id")
            channel_id = None if channel_id is None else int(channel_id)
        except (AttributeError, TypeError, ValueError) as exc:
            _log.warning("guild %d: ignoring a malformed VOICE_STATE_UPDATE: %s", self._guild_id, exc)
            return
        if channel_id is None:
            if self._connected_once and not self._closing:
                _log.info("guild %d: disconnected from voice by Discord", self._guild_id)
                self._spawn(self.disconnect(force=True))
            return
        channel = self.guild.get_channel(channel_id) if self.guild is not None else None
        if channel is not None and channel is not self.channel:
            self.channel = channel
        self._notify()

    async def on_voice_server_update(self, data: Any, /) -> None:
        """A VOICE_SERVER_UPDATE for this guild (the raw payload), from discord.py."""
        try:
            self._manager.handle_voice_server_update(dict(_voice_server_payload(data)))
        except (AttributeError, TypeError, ValueError) as exc:
            _log.warning("guild %d: ignoring a malformed VOICE_SERVER_UPDATE: %s", self._guild_id, exc)

    async def connect(self, *, timeout: float | None = 30.0, reconnect: bool = True,
                      self_deaf: bool = False, self_mute: bool = False) -> None:
        """Join ``self.channel``; return once audio can flow (discord.py calls this from ``channel.connect``).

        Raises ``asyncio.TimeoutError`` after ``timeout`` seconds (discord.py then calls
        :meth:`disconnect`), :class:`~fastvoice.ConnOpenError` or
        :class:`~fastvoice.errors.GatewayClosedError` when the voice server refuses the bot. On
        any failure the connection is closed and the client forgotten. Reconnection (resume,
        new session, new voice server) is always on, governed by the Manager's
        ``GatewayConfig`` (``auto_reconnect``, ``max_reconnect_attempts``); ``reconnect`` is
        accepted for compatibility.
        """
        if self._conn is not None or self._closing:
            raise ClientException("this voice client is already connected (or was disconnected); make a new one")
        self._self_mute, self._self_deaf = bool(self_mute), bool(self_deaf)
        conn = self._manager.create_conn(self._guild_id)
        conn.set_event_handler_func(self._on_voice_event)
        self._conn = conn
        try:
            channel: Any = self.channel  # discord.py types it as the abstract Connectable
            await asyncio.wait_for(conn.open(channel.id, self._self_mute, self._self_deaf), timeout)
        except BaseException:
            await self._shutdown(leave=True)
            raise
        self._connected_once = True

    async def disconnect(self, *, force: bool = False) -> None:
        """Stop playing and listening, leave the channel, close the connection and call ``cleanup()``.

        Returns once every task and socket of the connection is released and ``after`` of the
        current playback ran. Calling it again (or concurrently) waits for the first call.
        ``force`` is accepted for compatibility: every disconnect is a complete one.
        """
        if self._closing:
            await self._closed.wait()
            return
        await self._shutdown(leave=False)

    async def _shutdown(self, *, leave: bool) -> None:
        self._closing = True
        try:
            self.stop()
            conn, self._conn = self._conn, None
            self._receiver = None
            if conn is not None:
                try:
                    await conn.close()
                except Exception:
                    _log.exception("guild %d: closing the voice connection failed", self._guild_id)
            if leave:
                # A failed open does not send the leaving op 4 itself: make sure Discord forgets the join.
                try:
                    await self.guild.change_voice_state(channel=None)
                except Exception as exc:
                    _log.warning("guild %d: could not leave the voice channel: %s", self._guild_id, exc)
            current = asyncio.current_task()
            # (an async after() may be the one disconnecting: it cannot wait for itself)
            endings = [task for task in self._endings if task is not current]
            if endings:
                await asyncio.gather(*endings, return_exceptions=True)
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
        finally:
            self.cleanup()
            self._closed.set()
            self._notify()  # wakes a move_to() in progress

    # -- state ------------------------------------------------------------------------------------

    @property
    def guild(self) -> Any:
        """The guild of the voice channel."""
        channel: Any = self.channel  # discord.py types it as the abstract Connectable
        return channel.guild

    @property
    def user(self) -> Any:
        """The bot's own user."""
        return self.client.user

    @property
    def conn(self) -> Conn | None:
        """The fastvoice connection (``None`` once disconnected): stats, DAVE state, SSRCs."""
        return self._conn

    @property
    def manager(self) -> Manager:
        """The fastvoice Manager shared by every voice client of this discord client."""
        return self._manager

    def is_connected(self) -> bool:
        """True while audio can flow (false while reconnecting or moving, and after :meth:`disconnect`)."""
        conn = self._conn
        if conn is None or self._closing:
            return False
        udp = conn.udp
        return udp is not None and udp.packetizer is not None

    @property
    def latency(self) -> float:
        """Seconds between the last voice gateway heartbeat and its ACK (``inf`` before the first ACK)."""
        conn = self._conn
        gateway = None if conn is None else conn.gateway
        latency = None if gateway is None else gateway.latency
        return float("inf") if latency is None else latency

    @property
    def average_latency(self) -> float:
        """Mean of the last 20 heartbeat latencies in seconds (``inf`` before the first ACK)."""
        if not self._latencies:
            return float("inf")
        return sum(self._latencies) / len(self._latencies)

    def _on_voice_event(self, opcode: Any, data: GatewayMessageData) -> None:
        if isinstance(data, GatewayMessageDataSessionDescription):
            self._sessions += 1
            self._notify()
        elif opcode == Opcode.HEARTBEAT_ACK:
            conn = self._conn
            gateway = None if conn is None else conn.gateway
            if gateway is not None and gateway.latency is not None:
                self._latencies.append(gateway.latency)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- moving -----------------------------------------------------------------------------------

    async def move_to(self, channel: Any, *, timeout: float | None = 30.0) -> None:
        """Move to ``channel`` (``None`` disconnects) and return once audio flows there.

        What is playing keeps playing. Returns once Discord confirmed the new channel and the new
        voice session is ready (or, when Discord keeps the voice session, after a second without
        one). Raises ``asyncio.TimeoutError`` if that takes more than ``timeout`` seconds (the
        move may still complete later), ``ClientException`` if the client disconnects meanwhile.
        """
        if channel is None:
            await self.disconnect()
            return
        conn = self._conn
        if conn is None or self._closing:
            raise ClientException("Not connected to voice.")
        channel_id = getattr(channel, "id", None)
        if not isinstance(channel_id, int):
            raise TypeError(f"channel must be a voice channel (with an int id) or None, got {channel!r}")
        if conn.channel_id == channel_id:
            return
        sessions = self._sessions
        await self.guild.change_voice_state(channel=channel, self_mute=self._self_mute, self_deaf=self._self_deaf)

        async def changed(seconds: float | None = None) -> None:
            if self._conn is not conn:
                raise ClientException("the voice client was disconnected while moving")
            try:
                await asyncio.wait_for(self._changed.wait(), seconds)
            except asyncio.TimeoutError:
                pass

        async def arrived() -> None:
            while conn.channel_id != channel_id:  # Discord's VOICE_STATE_UPDATE for the new channel
                await changed()
            # A new voice server/session normally follows (VOICE_SERVER_UPDATE, then a new
            # Session Description); a move that keeps the voice session is done once it settled.
            settled = asyncio.get_running_loop().time() + _MOVE_SETTLE
            while not (self._sessions > sessions and self.is_connected()):
                remaining = settled - asyncio.get_running_loop().time()
                if remaining <= 0 and self.is_connected() and conn.channel_id == channel_id:
                    return
                await changed(max(remaining, 0.05))

        await asyncio.wait_for(arrived(), timeout)

    # -- sending ----------------------------------------------------------------------------------

    def play(self, source: Any, *, after: Callable[[Exception | None], Any] | None = None,
             **encoder_options: Any) -> None:
        """Play ``source``: a ``discord.AudioSource`` or a fastvoice ``OpusFrameProvider``.

        ``after(error)`` is called once when the source is exhausted, fails (``error`` is the
        exception) or is stopped (``error`` is ``None``); it runs on the event loop, may be a
        coroutine function, and what it raises is logged. ``encoder_options`` go to
        ``discord.opus.Encoder`` for PCM sources (discord.py 2.4+: ``application``, ``bitrate``,
        ``fec``, ``expected_packet_loss``, ``bandwidth``, ``signal_type``).

        Raises ``ClientException`` when not connected or already playing (paused included),
        ``TypeError`` for a wrong ``source`` or ``after``, and ``discord.opus.OpusNotLoaded``
        for a PCM source when libopus cannot be loaded.

        discord.py's ``FFmpegOpusAudio(text)`` hands ``text`` to ffmpeg unchecked: local files,
        ``file:``/``concat:`` inputs and internal URLs included. For text from untrusted users
        play ``fastvoice.FFmpegOpusProvider(text, safe=True)`` instead.
        """
        if not self.is_connected():
            raise ClientException("Not connected to voice.")
        if self.is_playing() or self.is_paused():
            raise ClientException("Already playing audio; call stop() first.")
        if not isinstance(source, AudioSource) and not isinstance(source, OpusFrameProvider):
            raise TypeError(
                f"source must be a discord.AudioSource or a fastvoice OpusFrameProvider, got {type(source).__name__}"
            )
        if after is not None and not callable(after):
            raise TypeError(f"after must be a callable taking the error (or None), got {type(after).__name__}")
        playback = Playback(source, after, encoder_options, asyncio.get_running_loop(), self._track_end)
        self._playback = playback
        assert self._conn is not None
        self._conn.set_opus_frame_provider(playback)

    def _track_end(self, task: asyncio.Task[None]) -> None:
        # disconnect() waits for the end of every playback (after() called, source cleaned up).
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    def is_playing(self) -> bool:
        """True while a source plays (not paused, not finished)."""
        playback = self._playback
        return playback is not None and not playback.done and not playback.paused

    def is_paused(self) -> bool:
        """True while a source is paused."""
        playback = self._playback
        return playback is not None and not playback.done and playback.paused

    def pause(self) -> None:
        """Pause: silence is sent, then Speaking 0; the source is not read meanwhile."""
        playback = self._playback
        if playback is not None and not playback.done:
            playback.paused = True

    def resume(self) -> None:
        """Resume a paused source."""
        playback = self._playback
        if playback is not None and not playback.done:
            playback.paused = False

    def stop(self) -> None:
        """Stop playing: the source is cleaned up and ``after(None)`` called, from a task."""
        playback, self._playback = self._playback, None
        if playback is not None:
            playback.stop()

    @property
    def source(self) -> Any:
        """The source being played (``None`` when nothing is). Setting it swaps the source in place."""
        playback = self._playback
        return None if playback is None or playback.done else playback.source

    @source.setter
    def source(self, value: Any) -> None:
        if not isinstance(value, AudioSource) and not isinstance(value, OpusFrameProvider):
            raise TypeError(f"expected a discord.AudioSource or an OpusFrameProvider, not {type(value).__name__}")
        playback = self._playback
        if playback is None or playback.done:
            raise ValueError("Not playing anything.")
        playback.set_source(value)

    # -- receiving --------------------------------------------------------------------------------

    def listen(self, receiver: OpusFrameReceiver) -> None:
        """Deliver every other user's Opus frames to ``receiver`` (a fastvoice ``OpusFrameReceiver``).

        ``receiver.receive_opus_frame(user_id, packet)`` is called on the event loop for each
        packet (``packet.opus`` the frame, ``packet.sequence``/``timestamp``), with DAVE
        already removed; ``cleanup_user(user_id)`` when a user leaves. A previous receiver is
        replaced and closed. ``fastvoice.OpusWriter`` writes the frames to a file; a
        ``fastvoice.PlayoutReceiver`` plays them out as PCM ticks and utterances; a
        ``fastvoice.record.CallRecorder`` records the call (aligned per-user tracks and a mix).
        """
        if not isinstance(receiver, OpusFrameReceiver):
            raise TypeError(
                "receiver must be a fastvoice OpusFrameReceiver (receive_opus_frame, cleanup_user, close), "
                f"got {type(receiver).__name__}"
            )
        conn = self._conn
        if conn is None or self._closing:
            raise ClientException("Not connected to voice.")
        conn.set_opus_frame_receiver(receiver)
        self._receiver = receiver

    def stop_listening(self) -> None:
        """Stop receiving; the receiver's ``close()`` is called."""
        conn = self._conn
        if self._receiver is not None and conn is not None:
            conn.set_opus_frame_receiver(None)
        self._receiver = None

    def is_listening(self) -> bool:
        """True while a receiver set with :meth:`listen` gets audio."""
        return self._receiver is not None and self._conn is not None

    def __repr__(self) -> str:
        conn = self._conn
        channel = None if conn is None else conn.channel_id
        return f"<fastvoice.ext.discord.VoiceClient guild_id={self._guild_id} channel_id={channel}>"
