"""A stand-in for the bot's main gateway, as far as voice is concerned (PROTOCOL.md section 1, steps 1-2)."""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, Union

__all__ = ["MainGatewayStandIn"]

UpdateHandler = Callable[[dict[str, Any]], Union[None, Awaitable[None]]]


class _VoiceServerLike(Protocol):
    """What the stand-in needs of a server: a VoiceServer, or a VoiceServerProcess."""

    def voice_updates(
        self, guild_id: int, user_id: int, channel_id: int | None = None, *,
        session_id: str | None = None, token: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]: ...

    async def close_voice_sessions(
        self, user_id: int, guild_id: int, *, keep_channel: int | None = None, code: int = 4014,
        reason: str = "disconnected",
    ) -> int: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> Any: ...


class MainGatewayStandIn:
    """Plays Discord's main gateway for one bot user: answers op 4 with the two voice dispatches.

    :meth:`update_voice_state` has the shape of the seed's ``StateUpdateFunc``
    (``guild_id, channel_id, self_mute, self_deaf``); give it to whatever sends op 4
    (a Manager), and :meth:`attach` what handles VOICE_STATE_UPDATE and
    VOICE_SERVER_UPDATE (an object with ``handle_voice_state_update`` and
    ``handle_voice_server_update``, or two callables).  Payloads are the dispatch
    ``d`` objects, as dicts, delivered from a task after the call returns, as a real
    gateway would.

    Like Discord: the session id stays the same for the bot's whole session; joining
    a channel gives a fresh voice token; a move closes the old voice connection with
    4014 after the new updates; leaving (``channel_id=None``) sends a voice state
    with a null channel and closes a still-open voice connection with 4014.
    ``server_update_first`` picks the order of the two dispatches (Discord does not
    fix it).
    """

    def __init__(self, server: _VoiceServerLike, user_id: int, *, server_update_first: bool = False) -> None:
        self.server = server
        self.user_id = user_id
        self.server_update_first = server_update_first
        #: The main gateway session id (the ``session_id`` of every voice state).
        self.session_id = secrets.token_hex(16)
        #: Every op 4 received, as ``(guild_id, channel_id, self_mute, self_deaf)``.
        self.requests: list[tuple[int, int | None, bool, bool]] = []
        self._on_state: UpdateHandler | None = None
        self._on_server: UpdateHandler | None = None
        self._channels: dict[int, int] = {}
        self._tokens: dict[int, str] = {}

    def attach(
        self,
        target: Any = None,
        *,
        on_voice_state_update: UpdateHandler | None = None,
        on_voice_server_update: UpdateHandler | None = None,
    ) -> None:
        """Deliver updates to ``target.handle_voice_state_update/handle_voice_server_update`` or to the callables."""
        if target is not None:
            on_voice_state_update = on_voice_state_update or target.handle_voice_state_update
            on_voice_server_update = on_voice_server_update or target.handle_voice_server_update
        if on_voice_state_update is None or on_voice_server_update is None:
            raise TypeError("attach() needs a target with handle_voice_state_update/handle_voice_server_update "
                            "or both on_voice_state_update= and on_voice_server_update=")
        self._on_state = on_voice_state_update
        self._on_server = on_voice_server_update

    async def update_voice_state(
        self, guild_id: int, channel_id: int | None, self_mute: bool = False, self_deaf: bool = False
    ) -> None:
        """Receive an op 4 Voice State Update; the dispatches follow from a task."""
        if self._on_state is None or self._on_server is None:
            raise RuntimeError("nothing is attached to receive the voice updates; call attach() first")
        self.requests.append((guild_id, channel_id, self_mute, self_deaf))
        previous = self._channels.get(guild_id)
        if channel_id is None:
            self._channels.pop(guild_id, None)
            self._tokens.pop(guild_id, None)
            state, _ = self.server.voice_updates(guild_id, self.user_id, previous, session_id=self.session_id,
                                                 token=secrets.token_hex(8))
            state["channel_id"] = None
            state["self_mute"], state["self_deaf"] = self_mute, self_deaf
            self.server._spawn(self._deliver([(self._on_state, state)], close_previous=guild_id))
            return
        moved = previous is not None and previous != channel_id
        if previous != channel_id or guild_id not in self._tokens:
            self._tokens[guild_id] = secrets.token_hex(8)
        self._channels[guild_id] = channel_id
        state, server = self.server.voice_updates(
            guild_id, self.user_id, channel_id, session_id=self.session_id, token=self._tokens[guild_id]
        )
        state["self_mute"], state["self_deaf"] = self_mute, self_deaf
        order = [(self._on_server, server), (self._on_state, state)]
        if not self.server_update_first:
            order.reverse()
        self.server._spawn(self._deliver(order, close_previous=guild_id if moved else None,
                                         keep_channel=channel_id))

    async def _deliver(
        self, updates: list[tuple[UpdateHandler, dict[str, Any]]], close_previous: int | None = None,
        keep_channel: int | None = None,
    ) -> None:
        await asyncio.sleep(0)
        for handler, payload in updates:
            result = handler(payload)
            if inspect.isawaitable(result):
                await result
        if close_previous is not None:
            await self.server.close_voice_sessions(self.user_id, close_previous, keep_channel=keep_channel)
