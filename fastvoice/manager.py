"""All voice connections of a bot, by guild (seed: ``Manager``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .conn import Conn, ConnConfig, StateUpdateFunc
from .voice_updates import VoiceServerUpdate, VoiceStateUpdate, snowflake

__all__ = ["Manager", "ManagerConfig"]

_log = logging.getLogger("fastvoice.manager")


@dataclass
class ManagerConfig:
    """Configuration of a :class:`Manager` (seed: ``ManagerConfig``).

    ``conn_create_func`` builds each connection; ``conn_config`` is the configuration every
    connection gets.
    """

    logger: logging.Logger = field(default_factory=lambda: _log)
    conn_create_func: Callable[..., Conn] = Conn
    conn_config: ConnConfig = field(default_factory=ConnConfig)


class Manager:
    """Holds one :class:`Conn` per guild and routes the main gateway's voice dispatches to them.

    Feed it the bot's VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE dispatches
    (:meth:`handle_voice_state_update`, :meth:`handle_voice_server_update`; raw ``d`` dicts
    are accepted too). ``voice_state_update_func(guild_id, channel_id, self_mute, self_deaf)``
    must send op 4 on the shard that owns the guild.
    """

    def __init__(
        self,
        voice_state_update_func: StateUpdateFunc,
        user_id: int,
        config: ManagerConfig | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise TypeError("pass either a ManagerConfig or keyword options, not both")
        self._config = config if config is not None else ManagerConfig(**options)
        self._state_update = voice_state_update_func
        self._user_id = snowflake(user_id, "user_id")
        self._conns: dict[int, Conn] = {}

    @property
    def user_id(self) -> int:
        """The bot's user id."""
        return self._user_id

    def create_conn(self, guild_id: int) -> Conn:
        """The connection of ``guild_id``, created on first use."""
        guild_id = snowflake(guild_id, "guild_id")
        conn = self._conns.get(guild_id)
        if conn is None:
            conn = self._config.conn_create_func(
                guild_id,
                self._user_id,
                self._state_update,
                lambda: self.remove_conn(guild_id),
                self._config.conn_config,
            )
            self._conns[guild_id] = conn
        return conn

    def get_conn(self, guild_id: int) -> Conn | None:
        """The connection of ``guild_id``, or ``None``."""
        return self._conns.get(snowflake(guild_id, "guild_id"))

    def remove_conn(self, guild_id: int) -> None:
        """Forget the connection of ``guild_id`` (``Conn.close`` calls this)."""
        self._conns.pop(snowflake(guild_id, "guild_id"), None)

    def for_each_conn(self, func: Callable[[Conn], Any]) -> None:
        """Call ``func`` with every connection (seed: ``ForEachCon``)."""
        for conn in list(self._conns.values()):
            func(conn)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._conns.values()))

    def __len__(self) -> int:
        return len(self._conns)

    def handle_voice_state_update(self, update: VoiceStateUpdate | dict[str, Any]) -> None:
        """Route the bot's own VOICE_STATE_UPDATE to its guild's connection."""
        if isinstance(update, dict):
            update = VoiceStateUpdate.from_dict(update)
        if update.user_id != self._user_id:
            return
        conn = self._conns.get(update.guild_id)
        if conn is not None:
            conn.handle_voice_state_update(update)

    def handle_voice_server_update(self, update: VoiceServerUpdate | dict[str, Any]) -> None:
        """Route a VOICE_SERVER_UPDATE to its guild's connection."""
        if isinstance(update, dict):
            update = VoiceServerUpdate.from_dict(update)
        conn = self._conns.get(update.guild_id)
        if conn is not None:
            conn.handle_voice_server_update(update)

    async def close(self) -> None:
        """Close every connection."""
        conns = list(self._conns.values())
        if conns:
            results = await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
            for conn, result in zip(conns, results):
                if isinstance(result, BaseException):
                    self._config.logger.warning("closing %r failed: %s", conn, result)
        self._conns.clear()
