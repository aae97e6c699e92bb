"""DAVE end-to-end encryption for one voice connection: the client state machine over ``davey``.

DAVE (Discord's Audio & Video End-to-End Encryption) keeps a call's media keys in an MLS
group (RFC 9420) whose delivery service and external sender is the voice gateway. ``davey``
does the MLS and the frame cryptography; :class:`DaveSession` drives it from the voice
gateway's DAVE messages (ops 11, 13, 21, 22, 24, 25, 27, 29, 30 in; 23, 26, 28, 31 out) and
gives the audio path its hooks: :meth:`DaveSession.encrypt_frame` (Opus in, DAVE frame out,
or ``None`` to hold the frame while E2EE is required and keys are not ready) and, on receive,
:meth:`DaveSession.receive_packet` (decrypts a user's frame in place; a frame that arrives
before its key is held briefly and delivered once the key is there) or the plain
:meth:`DaveSession.decrypt_frame`.

Nothing the network sends can make it raise: bad messages are logged and counted, failed
commits and welcomes are answered with op 31 and a fresh key package, as the protocol says, and
so is a run of frames from one member that no key decrypts; recovery is bounded (backoff, then
it gives up until something works again). :class:`DaveConfig` tunes the hold and the recovery.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
import warnings
from typing import TYPE_CHECKING, Any

from ._dave_hold import HOLD_USERS, DaveConfig, DeliverFunc, EarlyFrames
from ._dave_stats import DaveStats
from .constants import SILENCE_AUDIO_FRAME
from .gateway_messages import (
    GatewayMessageData,
    GatewayMessageDataClientDisconnect,
    GatewayMessageDataClientsConnect,
    GatewayMessageDataDaveExecuteTransition,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSCommitWelcome,
    GatewayMessageDataDaveMLSExternalSender,
    GatewayMessageDataDaveMLSInvalidCommitWelcome,
    GatewayMessageDataDaveMLSKeyPackage,
    GatewayMessageDataDaveMLSProposals,
    GatewayMessageDataDaveMLSWelcome,
    GatewayMessageDataDavePrepareEpoch,
    GatewayMessageDataDavePrepareTransition,
    GatewayMessageDataDaveTransitionReady,
    Opcode,
)

_davey: Any
try:
    import davey as _davey
except ImportError:  # pragma: no cover - davey is a runtime dependency; tolerate a broken install
    _davey = None

__all__ = [
    "DAVE_PROTOCOL_VERSION",
    "DOWNGRADE_PASSTHROUGH_SECONDS",
    "TRANSITION_PASSTHROUGH_SECONDS",
    "DaveConfig",
    "DaveManager",
    "DaveSession",
    "DaveStats",
    "DaveUnavailableError",
]

#: The highest DAVE protocol version this installation speaks (0 if ``davey`` is missing).
DAVE_PROTOCOL_VERSION: int = int(getattr(_davey, "DAVE_PROTOCOL_VERSION", 0))
#: While a downgrade to protocol 0 is pending, plaintext from other members is accepted for this long.
DOWNGRADE_PASSTHROUGH_SECONDS = 24
#: After an upgrade (or any other transition), late plaintext frames are accepted for this long.
TRANSITION_PASSTHROUGH_SECONDS = 10

SendFunc = Callable[[Opcode, GatewayMessageData], Awaitable[Any]]


class DaveUnavailableError(RuntimeError):
    """The call needs DAVE but the ``davey`` package cannot be imported."""


@dataclass(slots=True)
class _Failures:
    run: int = 0
    recoveries: int = 0
    next_allowed: float = 0.0
    abandoned: bool = False


def _looks_like_dave(frame: bytes) -> bool:
    n = len(frame)
    return n >= 13 and frame[-1] == 0xFA and frame[-2] == 0xFA and 12 <= frame[-3] <= n


class DaveSession:
    """One voice connection's DAVE state machine (PROTOCOL.md §5) on top of ``davey.DaveSession``.

    ``user_id`` and ``channel_id`` are the bot's user and the voice channel (the MLS group id).
    ``max_protocol_version`` is what the connection offered in Identify (0 = no DAVE).
    ``send(opcode, data)`` is a coroutine function that sends a typed message on the voice
    gateway. ``logger`` defaults to ``fastvoice.dave``; ``config`` is a :class:`DaveConfig`;
    ``clock`` (seconds, monotonic) times the hold and the recovery backoff.

    The connection calls :meth:`on_session_description` with op 4's ``dave_protocol_version``,
    :meth:`on_event` with every voice gateway message, and uses :meth:`encrypt_frame` and
    :meth:`receive_packet` as the audio sender's and receiver's hooks; :meth:`close` when done.
    """

    def __init__(
        self,
        user_id: int,
        channel_id: int,
        max_protocol_version: int = DAVE_PROTOCOL_VERSION,
        send: SendFunc | None = None,
        logger: logging.Logger | None = None,
        config: DaveConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("user_id", user_id), ("channel_id", channel_id)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**64:
                raise ValueError(f"{name} must be a positive u64 snowflake, got {value!r}")
        if isinstance(max_protocol_version, bool) or not isinstance(max_protocol_version, int) or not (
            0 <= max_protocol_version <= DAVE_PROTOCOL_VERSION
        ):
            raise ValueError(
                f"max_protocol_version must be an int in 0..{DAVE_PROTOCOL_VERSION}, got {max_protocol_version!r}"
            )
        if config is not None and not isinstance(config, DaveConfig):
            raise TypeError(f"config must be a DaveConfig, got {type(config).__name__}")
        self.user_id = user_id
        self.channel_id = channel_id
        self.max_protocol_version = max_protocol_version
        self._send = send
        self._log = logger or logging.getLogger("fastvoice.dave")
        self._config = config or DaveConfig()
        self._clock = clock
        self._session: Any = None
        self._protocol_version = 0
        self._pending_transitions: dict[int, int] = {}
        self._early_executes: collections.deque[int] = collections.deque(maxlen=8)
        self._last_transition_id = 0
        self._downgraded = False
        self._external_sender: bytes | None = None
        self._connected: set[int] = set()
        self._held = EarlyFrames(
            self._config.hold_frames, self._config.hold_seconds, clock, self._decrypt,
            self._held_decrypted, self._held_dropped, self._log,
        )
        self._failures: dict[int, _Failures] = {}
        self._commit_failures = 0
        self._recovering = False
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Counters; see :class:`DaveStats`.
        self.stats = DaveStats()

    def __repr__(self) -> str:
        return (
            f"DaveSession(user_id={self.user_id}, channel_id={self.channel_id}, "
            f"protocol_version={self._protocol_version}, e2ee={self.e2ee}, epoch={self.epoch})"
        )

    # --- public state -------------------------------------------------------------------

    @property
    def config(self) -> DaveConfig:
        """The hold and recovery settings."""
        return self._config

    @property
    def protocol_version(self) -> int:
        """The DAVE protocol version in effect for this call (0 = not end-to-end encrypted)."""
        return self._protocol_version

    @property
    def e2ee(self) -> bool:
        """Whether media is end-to-end encrypted right now (protocol > 0 and the group's keys are ready)."""
        return self._protocol_version > 0 and self.ready

    @property
    def ready(self) -> bool:
        """Whether the MLS session has a group and can encrypt and decrypt."""
        session = self._session
        return session is not None and bool(session.ready)

    @property
    def epoch(self) -> int | None:
        """The MLS group's epoch (``None`` before there is a session or a group)."""
        session = self._session
        return None if session is None else session.epoch

    @property
    def voice_privacy_code(self) -> str | None:
        """The call's voice privacy code, as Discord clients show it (``None`` without a group).

        30 digits in groups of 5, from the MLS epoch authenticator: the same for every member
        of the group, and a new one at every epoch (join, leave).
        """
        session = self._session
        if session is None or not session.ready:
            return None
        code: str = session.voice_privacy_code
        return code

    @property
    def connected_users(self) -> frozenset[int]:
        """Other users in the call, as told by ops 11 and 13; Add proposals for anyone else are refused."""
        return frozenset(self._connected)

    @property
    def pending_transitions(self) -> dict[int, int]:
        """Transitions prepared but not executed: ``{transition_id: protocol_version}``."""
        return dict(self._pending_transitions)

    def verification_code(self, user_id: int) -> str | None:
        """The verification code of this bot and ``user_id``, as Discord clients show it, or ``None``.

        45 digits in groups of 5, from the pairwise fingerprint of the two members' identity
        keys (:meth:`pairwise_fingerprint`): both sides compute the same code. ``None`` when
        ``user_id`` is not in the group.
        """
        session = self._session
        if session is None or not session.ready:
            return None
        try:
            code: str = session.get_verification_code(user_id)
            return code
        except (ValueError, TypeError, OverflowError) as exc:
            self._log.debug("no verification code for user %s: %s", user_id, exc)
            return None

    def pairwise_fingerprint(self, user_id: int) -> bytes | None:
        """The 64-byte pairwise fingerprint (version 0) of this bot's and ``user_id``'s keys, or ``None``."""
        session = self._session
        if session is None or not session.ready:
            return None
        try:
            return bytes(session.get_pairwise_fingerprint(0, user_id))
        except (ValueError, TypeError, OverflowError) as exc:
            self._log.debug("no pairwise fingerprint for user %s: %s", user_id, exc)
            return None

    @property
    def verification_codes(self) -> dict[int, str]:
        """``{user_id: verification code}`` for every other member of the group."""
        session = self._session
        if session is None or not session.ready:
            return {}
        codes = {}
        for member in session.get_user_ids():
            uid = int(member)
            if uid != self.user_id:
                code = self.verification_code(uid)
                if code is not None:
                    codes[uid] = code
        return codes

    # --- media hooks --------------------------------------------------------------------

    def encrypt_frame(self, opus: bytes) -> bytes | None:
        """Encrypt one Opus frame for sending; ``None`` means hold it (never plaintext under E2EE)."""
        if self._protocol_version == 0:
            self.stats.frames_passed_through += 1
            return opus
        session = self._session
        if session is None or not session.ready:
            self.stats.frames_held += 1
            return None
        try:
            frame: bytes = session.encrypt_opus(opus)
        except ValueError as exc:
            self.stats.frames_held += 1
            self._log.debug("DAVE encryption failed, frame held: %s", exc)
            return None
        self.stats.frames_encrypted += 1
        return frame

    def decrypt_frame(self, user_id: int, frame: bytes) -> bytes | None:
        """Decrypt ``user_id``'s frame; ``None`` means drop it (the reason is logged at debug level).

        Nothing is held here: see :meth:`receive_packet`.
        """
        if frame == SILENCE_AUDIO_FRAME:
            return frame
        opus, reason = self._decrypt(user_id, frame)
        if opus is None:
            self._failed(user_id, reason)
            return None
        if self._failures:
            self._succeeded(user_id)
        return opus

    def receive_packet(self, user_id: int, packet: Any, deliver: DeliverFunc) -> bool:
        """Decrypt ``packet.opus`` (a :class:`~fastvoice.rtp.Packet` from ``user_id``) in place.

        Returns True when the packet is ready to deliver now. False when it was dropped, or
        when no key decrypts it yet and it looks like a DAVE frame: then it is held (see
        :class:`DaveConfig`) and handed to ``deliver(user_id, packet)`` once a new key
        decrypts it, or dropped when it waited too long.
        """
        frame = packet.opus
        if frame == SILENCE_AUDIO_FRAME:
            return True
        held = self._held
        if held.count:
            held.expire()
        opus, reason = self._decrypt(user_id, frame)
        if opus is not None:
            if user_id in held:
                held.retry(user_id, final=True)  # earlier frames go first
            if self._failures:
                self._succeeded(user_id)
            packet.opus = opus
            return True
        if _looks_like_dave(frame) and held.can_hold(user_id):
            held.hold(user_id, packet, deliver)
            self.stats.early_frames_held += 1
            return False
        self._failed(user_id, reason)
        return False

    def _decrypt(self, user_id: int, frame: bytes) -> tuple[bytes | None, str]:
        session = self._session
        if self._protocol_version == 0:
            if session is None or not session.ready or not _looks_like_dave(frame):
                self.stats.frames_received_plain += 1
                return frame, ""
            # A member that has not executed the downgrade yet still sends ciphertext.
        elif session is None:
            return None, "no DAVE session"
        try:
            opus = session.decrypt(user_id, _davey.MediaType.audio, frame)
        except (ValueError, TypeError, OverflowError) as exc:
            return None, str(exc)
        self.stats.frames_decrypted += 1
        return opus, ""

    def _held_decrypted(self, user_id: int) -> None:
        self.stats.early_frames_decrypted += 1
        if self._failures:
            self._succeeded(user_id)

    def _held_dropped(self, user_id: int, reason: str) -> None:
        self.stats.early_frames_dropped += 1
        self._failed(user_id, reason)

    # --- failures and recovery ------------------------------------------------------------

    def _failed(self, user_id: int, reason: str) -> None:
        self.stats.decrypt_failures += 1
        self._log.debug("dropping a frame from user %s: %s", user_id, reason)
        if (
            self._protocol_version == 0 or self._pending_transitions or self._recovering
            or self._session is None or not self._session.ready
        ):
            return  # expected while keys change: not a sign of broken keys
        state = self._failures.get(user_id)
        if state is None:
            if len(self._failures) >= HOLD_USERS:
                self._failures.clear()
            state = self._failures[user_id] = _Failures()
        state.run += 1
        if state.run >= self._config.failure_threshold:
            self._maybe_recover(user_id, state, reason)

    def _succeeded(self, user_id: int) -> None:
        state = self._failures.get(user_id)
        if state is not None:
            state.run = 0
            if state.recoveries and self._clock() >= state.next_allowed:
                state.recoveries = 0
                state.abandoned = False

    def _maybe_recover(self, user_id: int, state: _Failures, reason: str) -> None:
        config = self._config
        if state.recoveries >= config.max_recoveries:
            if not state.abandoned:
                state.abandoned = True
                self.stats.recoveries_abandoned += 1
                self._log.warning(
                    "DAVE: frames from user %s still cannot be decrypted after %d recoveries; giving up until "
                    "they decrypt again", user_id, state.recoveries,
                )
            return
        now = self._clock()
        if now < state.next_allowed:
            return
        state.recoveries += 1
        state.run = 0
        state.next_allowed = now + config.backoff(state.recoveries)
        self.stats.recoveries += 1
        self._log.warning(
            "DAVE: %d frames in a row from user %s could not be decrypted (%s); re-initialising (op 31, "
            "transition %d)", config.failure_threshold, user_id, reason[:60], self._last_transition_id,
        )
        self._recovering = True
        self._spawn(self._recover(self._last_transition_id, 0.0))

    async def _recover(self, transition_id: int, delay: float) -> None:
        """Op 31 for ``transition_id``, then a fresh session and key package (after ``delay`` seconds)."""
        self._recovering = True
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            await self._emit(
                Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME, GatewayMessageDataDaveMLSInvalidCommitWelcome(transition_id)
            )
            await self._reinit()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("DAVE: recovery failed")
        finally:
            self._recovering = False

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            self._recovering = False
            self._log.debug("DAVE: no event loop to recover on")
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stop pending recoveries and drop held frames (the connection is going away)."""
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self._held.clear()

    # --- gateway events -----------------------------------------------------------------

    async def on_session_description(self, dave_protocol_version: int | None) -> None:
        """Op 4: start DAVE (fresh session and key package) or, for version 0, run without it."""
        try:
            await self._set_protocol(dave_protocol_version or 0)
        except Exception:
            self._log.exception("DAVE: handling Session Description failed")

    async def on_event(self, opcode: Any, data: GatewayMessageData) -> None:
        """Handle one voice gateway message (ops other than DAVE's and 11/13 are ignored)."""
        try:
            await self._dispatch(data)
        except Exception:
            self.stats.ignored_messages += 1
            self._log.exception("DAVE: handling op %s failed", opcode)

    async def _dispatch(self, data: GatewayMessageData) -> None:
        if isinstance(data, GatewayMessageDataClientsConnect):
            self._connected.update(u for u in data.user_ids if u != self.user_id)
        elif isinstance(data, GatewayMessageDataClientDisconnect):
            self._connected.discard(data.user_id)
            self._held.forget(data.user_id)
            self._failures.pop(data.user_id, None)
        elif isinstance(data, GatewayMessageDataDaveMLSExternalSender):
            if self._session is None:
                self._external_sender = data.external_sender  # checked when the session starts
                return
            try:
                self._session.set_external_sender(data.external_sender)
            except ValueError as exc:
                self.stats.ignored_messages += 1
                if "AlreadyInGroup" in str(exc):
                    # The group's own extension stays authoritative; the next group starts from this one.
                    self._external_sender = data.external_sender
                    self._log.debug("DAVE: external sender kept for the next group: %s", exc)
                else:
                    self._log.warning("DAVE: external sender refused: %s", exc)
            else:
                # Kept for every later re-initialisation (a new group starts from it).
                self._external_sender = data.external_sender
                self._log.debug("DAVE: external sender set")
        elif isinstance(data, GatewayMessageDataDavePrepareTransition):
            await self._prepare_transition(data.transition_id, data.protocol_version)
        elif isinstance(data, GatewayMessageDataDaveExecuteTransition):
            self._execute_transition(data.transition_id)
        elif isinstance(data, GatewayMessageDataDavePrepareEpoch):
            self._log.debug("DAVE: prepare epoch %d (protocol %d)", data.epoch, data.protocol_version)
            if data.epoch == 1:
                # A new group starts (a sole member's reset, or an upgrade): new session, new key package.
                await self._set_protocol(data.protocol_version)
        elif isinstance(data, GatewayMessageDataDaveMLSProposals):
            await self._proposals(data)
        elif isinstance(data, GatewayMessageDataDaveMLSAnnounceCommitTransition):
            await self._commit_or_welcome(data.transition_id, data.commit, welcome=False)
        elif isinstance(data, GatewayMessageDataDaveMLSWelcome):
            await self._commit_or_welcome(data.transition_id, data.welcome, welcome=True)

    async def _set_protocol(self, version: int) -> None:
        self._pending_transitions.clear()
        self._early_executes.clear()
        self._commit_failures = 0
        self._failures.clear()
        for task in list(self._tasks):
            task.cancel()
        self._recovering = False
        if version > self.max_protocol_version:
            # The gateway picks a version no higher than the client's (DAVE has no way to
            # negotiate down from the client's side): nothing can be encrypted or decrypted.
            self._protocol_version = version
            self._log.error(
                "DAVE: the voice server chose protocol version %d, but this connection speaks at most %d; "
                "audio is held", version, self.max_protocol_version,
            )
            if self._session is not None:
                self._session.reset()
            return
        self._protocol_version = version
        if version > 0:
            await self._reinit()
        elif self._session is not None:
            self._session.reset()
            self._session.set_passthrough_mode(True, TRANSITION_PASSTHROUGH_SECONDS)

    async def _reinit(self) -> None:
        if _davey is None:
            raise DaveUnavailableError("the call requires DAVE but the 'davey' package cannot be imported")
        version = max(self._protocol_version, 1)
        if self._session is None:
            self._session = _davey.DaveSession(version, self.user_id, self.channel_id)
        else:
            self._session.reinit(version, self.user_id, self.channel_id)
        if self._external_sender is not None:
            try:
                self._session.set_external_sender(self._external_sender)
            except ValueError as exc:
                self._external_sender = None
                self.stats.ignored_messages += 1
                self._log.warning("DAVE: external sender refused: %s", exc)
        key_package = self._session.get_serialized_key_package()
        self.stats.key_packages_sent += 1
        await self._emit(Opcode.DAVE_MLS_KEY_PACKAGE, GatewayMessageDataDaveMLSKeyPackage(key_package))

    async def _prepare_transition(self, transition_id: int, version: int) -> None:
        self._log.debug("DAVE: prepare transition %d to protocol %d", transition_id, version)
        if version > self.max_protocol_version:
            self.stats.ignored_messages += 1
            self._log.error(
                "DAVE: transition %d to protocol version %d, above the %d this connection speaks; ignored",
                transition_id, version, self.max_protocol_version,
            )
            return
        self._pending_transitions[transition_id] = version
        self._last_transition_id = transition_id
        if transition_id == 0:
            self._execute_transition(0)
            return
        if version == 0 and self._session is not None:
            # Members that execute the downgrade before us will send plaintext.
            self._session.set_passthrough_mode(True, DOWNGRADE_PASSTHROUGH_SECONDS)
        await self._emit(Opcode.DAVE_TRANSITION_READY, GatewayMessageDataDaveTransitionReady(transition_id))
        self._execute_if_early(transition_id)

    def _execute_if_early(self, transition_id: int) -> None:
        if transition_id in self._early_executes:
            # The gateway executed it already (its timeout ran out before our op 23).
            self._early_executes.remove(transition_id)
            self._execute_transition(transition_id)

    def _execute_transition(self, transition_id: int) -> None:
        version = self._pending_transitions.pop(transition_id, None)
        if version is None:
            self._log.debug("DAVE: execute for unknown transition %d kept for later", transition_id)
            self.stats.ignored_messages += 1
            if transition_id not in self._early_executes:
                self.stats.early_executes += 1
                self._early_executes.append(transition_id)
            return
        old = self._protocol_version
        self._protocol_version = version
        self._last_transition_id = transition_id
        self.stats.transitions_executed += 1
        if old != version and version == 0:
            self._downgraded = True
            self._log.info("DAVE: call downgraded to protocol 0 (not end-to-end encrypted)")
        elif self._downgraded and version > 0:
            self._downgraded = False
            if self._session is not None:
                self._session.set_passthrough_mode(True, TRANSITION_PASSTHROUGH_SECONDS)
            self._log.info("DAVE: call upgraded to protocol %d", version)
        self._log.debug("DAVE: transition %d executed (protocol %d)", transition_id, version)
        self._held.retry_all()

    async def _proposals(self, data: GatewayMessageDataDaveMLSProposals) -> None:
        session = self._session
        if session is None:
            self.stats.ignored_messages += 1
            self._log.debug("DAVE: proposals before a session; ignored")
            return
        operation = _davey.ProposalsOperationType.append if data.operation_type == 0 else _davey.ProposalsOperationType.revoke
        expected = sorted(self._connected | {self.user_id})
        try:
            result = session.process_proposals(operation, data.proposals, expected)
        except ValueError as exc:
            self.stats.ignored_messages += 1
            self._log.warning("DAVE: proposals refused: %s", exc)
            return
        if result is not None:
            blob = result.commit + (result.welcome or b"")
            self.stats.commits_sent += 1
            await self._emit(Opcode.DAVE_MLS_COMMIT_WELCOME, GatewayMessageDataDaveMLSCommitWelcome(blob))

    async def _commit_or_welcome(self, transition_id: int, payload: bytes, welcome: bool) -> None:
        session = self._session
        what = "welcome" if welcome else "commit"
        if session is None:
            self.stats.ignored_messages += 1
            self._log.debug("DAVE: %s before a session; ignored", what)
            return
        try:
            if welcome:
                session.process_welcome(payload)
            else:
                session.process_commit(payload)
        except ValueError as exc:
            self.stats.invalid_commits += 1
            attempt = self._commit_failures
            self._commit_failures += 1
            if attempt >= self._config.max_recoveries:
                if attempt == self._config.max_recoveries:
                    self.stats.recoveries_abandoned += 1
                    self._log.warning(
                        "DAVE: %d commits/welcomes in a row could not be processed; no more op 31 until one is",
                        attempt,
                    )
                return
            self._log.warning("DAVE: %s for transition %d failed (%s); asking to be re-added", what, transition_id, exc)
            delay = self._config.backoff(attempt)
            if delay > 0:
                self._spawn(self._recover(transition_id, delay))
            else:
                await self._recover(transition_id, 0.0)
            return
        self._commit_failures = 0
        self._last_transition_id = transition_id
        self._log.debug("DAVE: %s processed, epoch %s, transition %d", what, session.epoch, transition_id)
        self._held.retry_all()
        if transition_id != 0:
            self._pending_transitions[transition_id] = self._protocol_version
            await self._emit(Opcode.DAVE_TRANSITION_READY, GatewayMessageDataDaveTransitionReady(transition_id))
            self._execute_if_early(transition_id)

    async def _emit(self, opcode: Opcode, data: GatewayMessageData) -> None:
        send = self._send
        if send is None:
            return
        try:
            await send(opcode, data)
        except Exception as exc:
            self._log.warning("DAVE: could not send op %d: %s", int(opcode), exc)


# -- the earlier name -----------------------------------------------------------------------------

#: True once the deprecation of ``DaveManager`` was reported (it is reported once per process).
_warned_dave_manager = False


def dave_manager_deprecated(stacklevel: int) -> type[DaveSession]:
    """What the deprecated name ``DaveManager`` gives: :class:`DaveSession`, with a
    ``DeprecationWarning`` the first time (``stacklevel`` points it at the caller's code)."""
    global _warned_dave_manager
    if not _warned_dave_manager:
        _warned_dave_manager = True
        warnings.warn(
            "fastvoice.DaveManager is deprecated; use fastvoice.DaveSession (the same class: "
            "the DAVE session of one connection and channel)",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
    return DaveSession


if TYPE_CHECKING:
    #: Deprecated name of :class:`DaveSession` (it read as a manager of many calls).
    DaveManager = DaveSession
else:
    def __getattr__(name: str) -> Any:
        """``DaveManager``, the deprecated name of :class:`DaveSession`: warns once, returns the class."""
        if name == "DaveManager":
            return dave_manager_deprecated(stacklevel=2)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
