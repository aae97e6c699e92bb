"""DAVE end-to-end encryption for one voice connection: the client state machine over ``davey``.

DAVE (Discord's Audio & Video End-to-End Encryption) keeps a call's media keys in an MLS
group (RFC 9420) whose delivery service and external sender is the voice gateway. ``davey``
does the MLS and the frame cryptography; :class:`DaveManager` drives it from the voice
gateway's DAVE messages (ops 11, 13, 21, 22, 24, 25, 27, 29, 30 in; 23, 26, 28, 31 out) and
gives the audio path two hooks: :meth:`DaveManager.encrypt_frame` (Opus in, DAVE frame out,
or ``None`` to hold the frame while E2EE is required and keys are not ready) and
:meth:`DaveManager.decrypt_frame` (a user's DAVE frame in, Opus out, or ``None`` to drop).

Nothing the network sends can make it raise: bad messages are logged and counted, failed
commits and welcomes are answered with op 31 and a fresh key package, as the protocol says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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

try:
    import davey as _davey
except ImportError:  # pragma: no cover - davey is a runtime dependency; tolerate a broken install
    _davey = None

__all__ = [
    "DAVE_PROTOCOL_VERSION",
    "DOWNGRADE_PASSTHROUGH_SECONDS",
    "TRANSITION_PASSTHROUGH_SECONDS",
    "DaveManager",
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
class DaveStats:
    """Counters of one :class:`DaveManager` (all monotonic)."""

    #: Opus frames DAVE-encrypted for sending.
    frames_encrypted: int = 0
    #: Frames held back because E2EE was required and the session was not ready (or encryption failed).
    frames_held: int = 0
    #: Frames sent as they were because the call is at protocol 0.
    frames_passed_through: int = 0
    #: Received frames decrypted (or let through by a passthrough window).
    frames_decrypted: int = 0
    #: Received plaintext frames accepted because the call is at protocol 0.
    frames_received_plain: int = 0
    #: Received frames dropped because they could not be decrypted.
    decrypt_failures: int = 0
    #: Key packages sent (op 26).
    key_packages_sent: int = 0
    #: Commits sent (op 28).
    commits_sent: int = 0
    #: Commits and welcomes that could not be processed (each answered with op 31).
    invalid_commits: int = 0
    #: Server messages that were ignored because they could not be used.
    ignored_messages: int = 0
    #: Transitions executed.
    transitions_executed: int = 0


def _looks_like_dave(frame: bytes) -> bool:
    n = len(frame)
    return n >= 13 and frame[-1] == 0xFA and frame[-2] == 0xFA and 12 <= frame[-3] <= n


class DaveManager:
    """One voice connection's DAVE state machine (PROTOCOL.md §5) on top of ``davey.DaveSession``.

    ``user_id`` and ``channel_id`` are the bot's user and the voice channel (the MLS group id).
    ``max_protocol_version`` is what the connection offered in Identify (0 = no DAVE).
    ``send(opcode, data)`` is a coroutine function that sends a typed message on the voice
    gateway. ``logger`` defaults to ``fastvoice.dave``.

    The connection calls :meth:`on_session_description` with op 4's ``dave_protocol_version``,
    :meth:`on_event` with every voice gateway message, and uses :meth:`encrypt_frame` /
    :meth:`decrypt_frame` as the audio sender's and receiver's frame hooks.
    """

    def __init__(
        self,
        user_id: int,
        channel_id: int,
        max_protocol_version: int = DAVE_PROTOCOL_VERSION,
        send: SendFunc | None = None,
        logger: logging.Logger | None = None,
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
        self.user_id = user_id
        self.channel_id = channel_id
        self.max_protocol_version = max_protocol_version
        self._send = send
        self._log = logger or logging.getLogger("fastvoice.dave")
        self._session: Any = None
        self._protocol_version = 0
        self._pending_transitions: dict[int, int] = {}
        self._downgraded = False
        self._external_sender: bytes | None = None
        self._connected: set[int] = set()
        #: Counters; see :class:`DaveStats`.
        self.stats = DaveStats()

    def __repr__(self) -> str:
        return (
            f"DaveManager(user_id={self.user_id}, channel_id={self.channel_id}, "
            f"protocol_version={self._protocol_version}, e2ee={self.e2ee}, epoch={self.epoch})"
        )

    # --- public state -------------------------------------------------------------------

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
        """The call's voice privacy code (the same for every member), or ``None`` without a group."""
        session = self._session
        if session is None or not session.ready:
            return None
        return session.voice_privacy_code

    @property
    def connected_users(self) -> frozenset[int]:
        """Other users in the call, as told by ops 11 and 13; Add proposals for anyone else are refused."""
        return frozenset(self._connected)

    @property
    def pending_transitions(self) -> dict[int, int]:
        """Transitions prepared but not executed: ``{transition_id: protocol_version}``."""
        return dict(self._pending_transitions)

    def verification_code(self, user_id: int) -> str | None:
        """The displayable verification code of another member's key, or ``None`` if it is not in the group."""
        session = self._session
        if session is None or not session.ready:
            return None
        try:
            return session.get_verification_code(user_id)
        except (ValueError, TypeError, OverflowError) as exc:
            self._log.debug("no verification code for user %s: %s", user_id, exc)
            return None

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
            frame = session.encrypt_opus(opus)
        except ValueError as exc:
            self.stats.frames_held += 1
            self._log.debug("DAVE encryption failed, frame held: %s", exc)
            return None
        self.stats.frames_encrypted += 1
        return frame

    def decrypt_frame(self, user_id: int, frame: bytes) -> bytes | None:
        """Decrypt ``user_id``'s frame; ``None`` means drop it (the reason is logged at debug level)."""
        if frame == SILENCE_AUDIO_FRAME:
            return frame
        session = self._session
        if self._protocol_version == 0:
            if session is None or not session.ready or not _looks_like_dave(frame):
                self.stats.frames_received_plain += 1
                return frame
            # A member that has not executed the downgrade yet still sends ciphertext.
        elif session is None:
            return self._drop(user_id, "no DAVE session")
        try:
            opus = session.decrypt(user_id, _davey.MediaType.audio, frame)
        except (ValueError, TypeError, OverflowError) as exc:
            return self._drop(user_id, str(exc))
        self.stats.frames_decrypted += 1
        return opus

    def _drop(self, user_id: int, reason: str) -> None:
        self.stats.decrypt_failures += 1
        self._log.debug("dropping a frame from user %s: %s", user_id, reason)
        return None

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
        if version > self.max_protocol_version:
            self._log.warning(
                "DAVE: the server chose protocol %d, above the %d offered; using it anyway",
                version, self.max_protocol_version,
            )
        self._protocol_version = version
        self._pending_transitions.clear()
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
        self._pending_transitions[transition_id] = version
        if transition_id == 0:
            self._execute_transition(0)
            return
        if version == 0 and self._session is not None:
            # Members that execute the downgrade before us will send plaintext.
            self._session.set_passthrough_mode(True, DOWNGRADE_PASSTHROUGH_SECONDS)
        await self._emit(Opcode.DAVE_TRANSITION_READY, GatewayMessageDataDaveTransitionReady(transition_id))

    def _execute_transition(self, transition_id: int) -> None:
        version = self._pending_transitions.pop(transition_id, None)
        if version is None:
            self._log.debug("DAVE: execute for unknown transition %d ignored", transition_id)
            self.stats.ignored_messages += 1
            return
        old = self._protocol_version
        self._protocol_version = version
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
            self._log.warning("DAVE: %s for transition %d failed (%s); asking to be re-added", what, transition_id, exc)
            await self._emit(
                Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME, GatewayMessageDataDaveMLSInvalidCommitWelcome(transition_id)
            )
            await self._reinit()
            return
        self._log.debug("DAVE: %s processed, epoch %s, transition %d", what, session.epoch, transition_id)
        if transition_id != 0:
            self._pending_transitions[transition_id] = self._protocol_version
            await self._emit(Opcode.DAVE_TRANSITION_READY, GatewayMessageDataDaveTransitionReady(transition_id))

    async def _emit(self, opcode: Opcode, data: GatewayMessageData) -> None:
        send = self._send
        if send is None:
            return
        try:
            await send(opcode, data)
        except Exception as exc:
            self._log.warning("DAVE: could not send op %d: %s", int(opcode), exc)
