"""The two dispatches Discord's main gateway sends after an op 4 (PROTOCOL.md section 1, step 2)."""

from __future__ import annotations

from typing import Any

__all__ = ["voice_dispatches"]


def voice_dispatches(
    client_endpoint: str, guild_id: int, user_id: int, channel_id: int, session_id: str, token: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``d`` objects of VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE for one voice session.

    ``client_endpoint`` is what the server update carries: ``host:port`` (no scheme, meaning
    ``wss://``) or a ``ws://`` URL for a server without TLS.
    """
    state = {
        "guild_id": str(guild_id),
        "channel_id": str(channel_id),
        "user_id": str(user_id),
        "session_id": session_id,
        "deaf": False,
        "mute": False,
        "self_deaf": False,
        "self_mute": False,
        "self_video": False,
        "suppress": False,
        "request_to_speak_timestamp": None,
    }
    server = {"token": token, "guild_id": str(guild_id), "endpoint": client_endpoint}
    return state, server
