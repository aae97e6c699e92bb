"""The main gateway's two voice dispatches, as a voice connection reads them (PROTOCOL.md section 1).

VOICE_STATE_UPDATE gives the bot's voice ``session_id`` (and its channel); VOICE_SERVER_UPDATE
the voice ``token`` and ``endpoint``. Both are fed to :class:`fastvoice.Conn` (or a
:class:`fastvoice.Manager`), which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ._shown import shown

__all__ = ["VoiceServerUpdate", "VoiceStateUpdate"]


def snowflake(value: Any, name: str) -> int:
    """``value`` as a Discord id (an int or a numeric string); ``ValueError`` naming ``name`` otherwise.

    Shared by the package's modules that take ids; not part of the public API (not in ``__all__``).
    """
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a snowflake (int or numeric string), got {shown(value)}") from None


@dataclass(frozen=True, slots=True)
class VoiceStateUpdate:
    """The parts of a VOICE_STATE_UPDATE dispatch a voice connection needs.

    Fill it from your framework's dispatch (``VoiceStateUpdate.from_dict(payload)`` takes the
    raw ``d`` object). ``channel_id`` is ``None`` when the user left voice.
    """

    guild_id: int
    user_id: int
    channel_id: int | None
    session_id: str = field(repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoiceStateUpdate:
        """Build from the dispatch's ``d`` object (snowflakes as strings)."""
        channel = data.get("channel_id")
        return cls(
            guild_id=snowflake(data.get("guild_id"), "guild_id"),
            user_id=snowflake(data.get("user_id"), "user_id"),
            channel_id=None if channel is None else snowflake(channel, "channel_id"),
            session_id=str(data.get("session_id") or ""),
        )


@dataclass(frozen=True, slots=True)
class VoiceServerUpdate:
    """A VOICE_SERVER_UPDATE dispatch. ``endpoint`` is ``None`` while Discord has no server for the call."""

    guild_id: int
    token: str = field(repr=False)
    endpoint: str | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoiceServerUpdate:
        """Build from the dispatch's ``d`` object."""
        return cls(
            guild_id=snowflake(data.get("guild_id"), "guild_id"),
            token=str(data.get("token") or ""),
            endpoint=data.get("endpoint") or None,
        )
