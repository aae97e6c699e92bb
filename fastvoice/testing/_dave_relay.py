"""The local voice server's DAVE I/O: one :class:`DaveCallGroup` per call, and DAVE's fault knobs.

:class:`DaveRelay` runs each call's sans-I/O group for the :class:`VoiceServer`: it feeds it
the members' DAVE messages and the call's joins and leaves, sends what the group answers to
each member in order, executes transitions that time out, and decides what the SFU may forward
(DAVE ciphertext never goes to a member that cannot decrypt it). Its knobs reproduce what the
field does to DAVE clients: late DAVE messages for some members (staggered commit processing),
a corrupted or lost commit or welcome, a server that announces a protocol version the client
does not speak. ``server.dave`` is the relay of a VoiceServer.

The relay sits below the server: what it uses of it is :class:`DaveHost`, which the server
satisfies (it passes itself down).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..gateway_messages import (
    GatewayMessageData,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSCommitWelcome,
    GatewayMessageDataDaveMLSInvalidCommitWelcome,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataDaveMLSProposals,
    GatewayMessageDataDaveMLSWelcome,
    GatewayMessageDataDaveTransitionReady,
    Opcode,
)
from ._dave import DEFAULT_TRANSITION_TIMEOUT, DaveCallGroup

if TYPE_CHECKING:
    from ._session import ServerSession

__all__ = ["DaveHost", "DaveRelay"]

_log = logging.getLogger("fastvoice.testing.dave")

_TAMPER_ACTIONS = ("corrupt", "drop")
_CORRUPTIBLE = frozenset(
    {Opcode.DAVE_MLS_PROPOSALS, Opcode.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION, Opcode.DAVE_MLS_WELCOME}
)


def _corrupt(blob: bytes) -> bytes:
    broken = bytearray(blob)
    broken[-5 if len(broken) >= 5 else -1] ^= 0xFF  # inside the last signature/tag: it stays decodable
    return bytes(broken)


def _corrupted(message: GatewayMessageData) -> GatewayMessageData:
    if isinstance(message, GatewayMessageDataDaveMLSAnnounceCommitTransition):
        return GatewayMessageDataDaveMLSAnnounceCommitTransition(message.transition_id, _corrupt(message.commit))
    if isinstance(message, GatewayMessageDataDaveMLSWelcome):
        return GatewayMessageDataDaveMLSWelcome(message.transition_id, _corrupt(message.welcome))
    assert isinstance(message, GatewayMessageDataDaveMLSProposals)
    return GatewayMessageDataDaveMLSProposals(message.operation_type, _corrupt(message.proposals))


class _Outbox:
    """A member's DAVE messages held back (a delay or a pause), delivered in order by one task."""

    __slots__ = ("queue", "task")

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[float, GatewayMessageData]] = collections.deque()
        self.task: asyncio.Task[Any] | None = None


class DaveHost(Protocol):
    """What :class:`DaveRelay` uses of the server (a ``VoiceServer``): the protocol version it
    runs calls at, each call's members, and its tasks."""

    @property
    def dave_protocol_version(self) -> int: ...

    @property
    def _tasks(self) -> set[asyncio.Task[Any]]: ...

    def call_members(self, guild_id: int, channel_id: int | None = None) -> list[ServerSession]: ...

    def _notify(self) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class DaveRelay:
    """The DAVE side of a :class:`VoiceServer` (``server.dave``): call groups, delivery and fault knobs.

    Knobs (attributes and methods, changeable at any time):

    - ``transition_timeout``: seconds a transition waits for every member's op 23 before it is
      executed anyway (``None``: wait forever). Default 2.
    - ``zero_transition_ids``: announce commits and welcomes with transition id 0 (executed at
      once, no op 22).
    - ``announce_version``: the ``dave_protocol_version`` told in Session Description whatever
      the client offered (``None``: the call's version). ``99`` plays a server that picks a
      version the client does not speak.
    - ``delay``: ``{user_id: seconds}``; DAVE messages to that user arrive that much later, in
      order (members that process a commit later than the others).
    - :meth:`pause` / :meth:`resume`: hold a user's DAVE messages until resumed.
    - :meth:`tamper`: corrupt or drop the next message(s) of one opcode to a user.
    - :meth:`prepare_epoch`: op 24 with the current epoch (a protocol change that keeps the group).
    """

    def __init__(self, server: DaveHost) -> None:
        self._server = server
        #: Each call's group, by ``(guild_id, channel_id)``.
        self.groups: dict[tuple[int, int], DaveCallGroup] = {}
        self.transition_timeout: float | None = DEFAULT_TRANSITION_TIMEOUT
        self.zero_transition_ids = False
        self.announce_version: int | None = None
        self.delay: dict[int, float] = {}
        self._paused: set[int] = set()
        self._tampers: dict[int, list[list[Any]]] = {}
        self._outboxes: dict[ServerSession, _Outbox] = {}
        self._timers: dict[tuple[int, int], asyncio.TimerHandle] = {}
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"<DaveRelay calls={len(self.groups)}>"

    # -- knobs ---------------------------------------------------------------------

    def pause(self, user_id: int) -> None:
        """Hold every DAVE message to ``user_id`` (in order) until :meth:`resume`."""
        self._paused.add(user_id)

    def resume(self, user_id: int) -> None:
        """Deliver the DAVE messages held for ``user_id`` and stop holding them."""
        self._paused.discard(user_id)

    def tamper(self, user_id: int, opcode: int, action: str = "corrupt", count: int = 1) -> None:
        """Corrupt (flip a byte of the MLS payload) or drop the next ``count`` messages of ``opcode`` to ``user_id``.

        ``corrupt`` applies to ops 27, 29 and 30; ``drop`` to any DAVE op the server sends.
        """
        if action not in _TAMPER_ACTIONS:
            raise ValueError(f"action must be one of {_TAMPER_ACTIONS}, got {action!r}")
        if action == "corrupt" and opcode not in _CORRUPTIBLE:
            raise ValueError(f"only ops 27, 29 and 30 can be corrupted, got {opcode!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        self._tampers.setdefault(user_id, []).append([int(opcode), action, count])

    async def prepare_epoch(self, guild_id: int, channel_id: int | None = None) -> None:
        """Send op 24 with the call's current epoch to its members: the group stays as it is."""
        await self.call_event((guild_id, guild_id if channel_id is None else channel_id), "prepare_epoch")

    # -- the server's hooks ----------------------------------------------------------

    def group_for(self, session: ServerSession) -> DaveCallGroup | None:
        """The DAVE group of the session's call (created on first use); ``None`` when DAVE is off."""
        server = self._server
        if not server.dave_protocol_version:
            return None
        key = (session.guild_id, session.channel_id)
        group = self.groups.get(key)
        if group is None:
            group = DaveCallGroup(session.channel_id, min(server.dave_protocol_version, 1))
            self.groups[key] = group
        return group

    def session_version(self, session: ServerSession) -> int:
        """The ``dave_protocol_version`` for this session's Session Description."""
        if self.announce_version is not None:
            return self.announce_version
        group = self.group_for(session)
        if group is None or not session.max_dave_protocol_version:
            return 0
        return group.target_version

    async def join(self, session: ServerSession) -> None:
        """The session has its Session Description: it joins its call's group (without DAVE if it offered none)."""
        if self.group_for(session) is not None:
            await self.call_event(
                (session.guild_id, session.channel_id), "join", session.user_id, bool(session.max_dave_protocol_version)
            )

    def left(self, session: ServerSession) -> None:
        """The session ended: its group proposes its removal (from a task)."""
        self._outboxes.pop(session, None)
        key = (session.guild_id, session.channel_id)
        if key in self.groups:
            self._server._spawn(self.call_event(key, "leave", session.user_id))

    async def on_message(self, session: ServerSession, data: Any) -> None:
        """A DAVE message from a member (ops 23, 26, 28, 31)."""
        key = (session.guild_id, session.channel_id)
        if isinstance(data, GatewayMessageDataDaveMLSKeyPackage):
            await self.call_event(key, "key_package", session.user_id, data.key_package)
        elif isinstance(data, GatewayMessageDataDaveMLSCommitWelcome):
            await self.call_event(key, "commit_welcome", session.user_id, data.commit_welcome)
        elif isinstance(data, GatewayMessageDataDaveTransitionReady):
            await self.call_event(key, "transition_ready", session.user_id, data.transition_id)
        elif isinstance(data, GatewayMessageDataDaveMLSInvalidCommitWelcome):
            await self.call_event(key, "invalid_commit_welcome", session.user_id, data.transition_id)

    async def call_event(self, key: tuple[int, int], event: str, *args: Any) -> None:
        """Run one event through the call's group and send what it answers, in order.

        One lock for all calls keeps each member's DAVE messages in the order the group
        produced them (an op 27 of a new epoch must not overtake the op 29 that started it).
        """
        group = self.groups.get(key)
        if group is None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            group.transition_timeout = self.transition_timeout
            group.zero_transition_ids = self.zero_transition_ids
            out = getattr(group, event)(*args)
            for user_id, message in out:
                for member in self._server.call_members(*key):
                    if member.user_id == user_id and not member.ended:
                        await self._deliver(member, message)
                        break
            self._schedule_timeout(key, group)
        self._server._notify()

    def close(self) -> None:
        """Cancel the transition timers (the server cancels the delivery tasks)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._outboxes.clear()

    # -- internals -------------------------------------------------------------------

    def _schedule_timeout(self, key: tuple[int, int], group: DaveCallGroup) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        deadline = group.next_deadline()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, deadline - time.monotonic()) + 0.001
        self._timers[key] = loop.call_later(wait, self._expire, key)

    def _expire(self, key: tuple[int, int]) -> None:
        self._timers.pop(key, None)
        self._server._spawn(self.call_event(key, "expire_transitions"))

    def _take_tamper(self, user_id: int, opcode: int) -> str | None:
        pending = self._tampers.get(user_id)
        if not pending:
            return None
        for entry in pending:
            if entry[0] == opcode:
                entry[2] -= 1
                if entry[2] <= 0:
                    pending.remove(entry)
                return str(entry[1])
        return None

    async def _deliver(self, member: ServerSession, message: GatewayMessageData) -> None:
        action = self._take_tamper(member.user_id, message.OPCODE)
        if action == "drop":
            _log.debug("dropping op %d to user %s (tamper knob)", message.OPCODE, member.user_id)
            return
        if action == "corrupt":
            message = _corrupted(message)
        delay = self.delay.get(member.user_id, 0.0)
        box = self._outboxes.get(member)
        if not delay and member.user_id not in self._paused and (box is None or not box.queue):
            await member.send(message.OPCODE, message)
            return
        if box is None:
            box = self._outboxes[member] = _Outbox()
        box.queue.append((asyncio.get_running_loop().time() + delay, message))
        if box.task is None:
            box.task = asyncio.get_running_loop().create_task(self._drain(member, box))
            self._server._tasks.add(box.task)
            box.task.add_done_callback(self._server._tasks.discard)

    async def _drain(self, member: ServerSession, box: _Outbox) -> None:
        loop = asyncio.get_running_loop()
        try:
            while box.queue and not member.ended:
                if member.user_id in self._paused:
                    await asyncio.sleep(0.005)
                    continue
                due, message = box.queue[0]
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                    continue
                box.queue.popleft()
                await member.send(message.OPCODE, message)
                self._server._notify()
        finally:
            box.task = None
