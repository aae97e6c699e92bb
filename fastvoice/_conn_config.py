"""The configuration of a :class:`fastvoice.conn.Conn`, its open error and the state-update function type."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._rtp_common import DEFAULT_MAX_SSRCS
from .audio import AudioReceiver, AudioSender
from .dave import DaveConfig
from .errors import VoiceError
from .gateway import EventHandlerFunc, Gateway, GatewayConfig
from .opus import UserFilterFunc
from .udp import UDPConn, UDPConnConfig

__all__ = ["ConnConfig", "ConnOpenError", "StateUpdateFunc", "takes_seed_order"]

_log = logging.getLogger("fastvoice.conn")
#: Sends op 4 Voice State Update on the bot's main gateway:
#: ``(guild_id, channel_id or None, self_mute, self_deaf)``; may be async (seed: ``StateUpdateFunc``).
StateUpdateFunc = Callable[[int, "int | None", bool, bool], "Awaitable[None] | None"]


class ConnOpenError(VoiceError):
    """``Conn.open`` failed: timed out waiting for Discord, or the voice server refused us."""


@dataclass
class ConnConfig:
    """Configuration of a :class:`Conn` (seed: ``ConnConfig``; functional options become fields).

    ``gateway_config`` is copied for each gateway the connection opens; ``udp_config`` for
    each UDP connection. ``open_timeout`` bounds :meth:`Conn.open` as a whole.
    ``user_filter`` selects whose audio reaches the frame receiver. ``max_ssrcs`` bounds the
    SSRC -> user table filled from op 5 (the least recently active entries are evicted).
    ``dave_config`` tunes DAVE's receive side (frames held until their key arrives) and its
    recovery from broken keys.
    """

    logger: logging.Logger = field(default_factory=lambda: _log)
    gateway_create_func: Callable[..., Gateway] = Gateway
    gateway_config: GatewayConfig = field(default_factory=GatewayConfig)
    udp_conn_create_func: Callable[..., UDPConn] = UDPConn
    udp_config: UDPConnConfig = field(default_factory=UDPConnConfig)
    audio_sender_create_func: Callable[..., AudioSender] = AudioSender
    audio_receiver_create_func: Callable[..., AudioReceiver] = AudioReceiver
    event_handler_func: EventHandlerFunc | None = None
    user_filter: UserFilterFunc | None = None
    open_timeout: float = 30.0
    allow_discontinued_modes: bool = False
    dave_config: DaveConfig = field(default_factory=DaveConfig)
    max_ssrcs: int = DEFAULT_MAX_SSRCS


def takes_seed_order(func: Callable[..., Any], cls: type) -> bool:
    """True when a create func is called as the seed's are, ``func(logger, provider_or_receiver, conn)``.

    False for one of the earlier shape, ``func(provider, conn, logger=...)`` or ``func(receiver,
    udp, ssrcs, user_filter=..., logger=...)``: recognised by a ``logger`` parameter that is not
    its first. ``cls`` (and a subclass that keeps its constructor) takes both.
    """
    if isinstance(func, type) and issubclass(func, cls) and func.__init__ is cls.__init__:  # type: ignore[misc]
        return True
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return True
    return "logger" not in names or names.index("logger") == 0
