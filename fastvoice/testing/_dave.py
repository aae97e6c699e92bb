"""The local voice server's side of DAVE: the MLS delivery service and external sender.

Discord's voice gateway never joins the MLS group of a call. It is named in the group's
External Senders extension, so it may *propose* membership changes (Add a joining member's
key package, Remove a leaver), and it relays what the members produce: the first commit of
each epoch goes to every member (op 29), its welcome to the members it adds (op 30). It
never holds a group secret, so it can forward E2EE media without being able to read it.

:class:`DaveCallGroup` is that role for one call as a sans-I/O state machine: it turns client
messages (ops 23, 26, 28, 31) and call events (join, leave, downgrade, upgrade, transition
timeouts) into the server messages to send, as ``(user_id, message)`` pairs. The MLS encoding
and the external sender's signatures are in :mod:`._mls`; the VoiceServer does the I/O.

It checks what the DAVE protocol says the gateway checks (key package signatures and lifetime,
commits that cover exactly the open proposals, the committer's leaf and identity); everything
else is checked by the members' own MLS stacks, which is the point: a client library that
accepts these messages accepts a real group run by an external sender.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..gateway_messages import (
    GatewayMessageData,
    GatewayMessageDataDaveExecuteTransition,
    GatewayMessageDataDaveMLSAnnounceCommitTransition,
    GatewayMessageDataDaveMLSExternalSender,
    GatewayMessageDataDaveMLSProposals,
    GatewayMessageDataDaveMLSWelcome,
    GatewayMessageDataDavePrepareEpoch,
    GatewayMessageDataDavePrepareTransition,
)
from ._mls import (
    PROPOSAL_ADD,
    PROPOSAL_REMOVE,
    DaveExternalSender,
    MLSDecodeError,
    MLSValidationError,
    ParsedCommit,
    is_dave_frame,
    key_package_user_id,
    parse_commit_welcome,
    proposal_ref,
    proposals_append_payload,
    proposals_revoke_payload,
    validate_key_package,
)

__all__ = [
    "DEFAULT_TRANSITION_TIMEOUT",
    "DaveCallGroup",
    "DaveExternalSender",
    "MLSDecodeError",
    "MLSValidationError",
    "ParsedCommit",
    "is_dave_frame",
    "key_package_user_id",
    "parse_commit_welcome",
    "proposal_ref",
]

_log = logging.getLogger("fastvoice.testing.dave")

#: Seconds a transition waits for every member's op 23 before it is executed anyway.
DEFAULT_TRANSITION_TIMEOUT = 2.0

Outgoing = list[tuple[int, GatewayMessageData]]


@dataclass(slots=True)
class _Proposal:
    kind: int  # PROPOSAL_ADD / PROPOSAL_REMOVE
    user_id: int
    message: bytes
    ref: bytes
    leaf: int = -1
    key_package: bytes = b""
    signature_key: bytes = b""


@dataclass(slots=True)
class _Transition:
    protocol_version: int
    audience: set[int]
    waiting: set[int] = field(default_factory=set)
    started: float = 0.0


class DaveCallGroup:
    """One call's DAVE state on the server side, as the external sender runs it.

    Feed it what happens (:meth:`join`, :meth:`leave`, :meth:`key_package`,
    :meth:`commit_welcome`, :meth:`transition_ready`, :meth:`invalid_commit_welcome`,
    :meth:`downgrade`, :meth:`upgrade`, :meth:`expire_transitions`); each returns the messages
    to send, as ``(user_id, message)`` pairs in order. Nothing here raises on bad client input:
    it is logged, ignored and counted (:attr:`rejected_commits`, :attr:`rejected_key_packages`).

    The group is established by the first commit the server accepts; until then every member
    with a key package waits in a pending group of its own, and once two exist each gets Add
    proposals for the others and the first commit back wins. One batch of proposals is open
    per epoch; changes that arrive meanwhile are proposed in the next epoch.

    A member that joins without DAVE (``join(user_id, dave=False)``) takes the call to protocol
    0; when the last such member leaves, the call is upgraded again. A transition executes when
    every member announced is ready (op 23) or ``transition_timeout`` seconds after it started
    (``None``: never), by the time of ``clock``. With :attr:`zero_transition_ids` on, commits
    and welcomes carry transition id 0 and take effect at once (no op 22), a path the protocol
    allows and clients must handle.
    """

    def __init__(
        self,
        channel_id: int,
        protocol_version: int = 1,
        sender: DaveExternalSender | None = None,
        *,
        transition_timeout: float | None = DEFAULT_TRANSITION_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(channel_id, int) or not 0 <= channel_id < 2**64:
            raise ValueError(f"channel_id must be a u64 snowflake, got {channel_id!r}")
        if protocol_version not in (0, 1):
            raise ValueError(f"protocol_version must be 0 or 1, got {protocol_version!r}")
        self.channel_id = channel_id
        self.group_id = channel_id.to_bytes(8, "big")
        self.sender = sender or DaveExternalSender()
        #: The protocol version in effect (changes when a downgrade or upgrade executes).
        self.protocol_version = protocol_version
        self._target_version = protocol_version
        self._dave_version = protocol_version or 1
        #: Seconds a transition waits for op 23 from every member before executing anyway.
        self.transition_timeout = transition_timeout
        #: Announce commits and welcomes with transition id 0 (executed at once, no op 22).
        self.zero_transition_ids = False
        self._clock = clock
        #: Epoch of the established group, ``None`` while there is none.
        self.epoch: int | None = None
        #: User id at each leaf of the established group's tree (``None`` = blank).
        self.leaves: list[int | None] = []
        #: Users in the call.
        self.users: set[int] = set()
        #: Users in the call that do not speak DAVE (they keep the call at protocol 0).
        self.non_dave_users: set[int] = set()
        self._auto_downgraded = False
        self._sender_sent: set[int] = set()
        # user -> (key package, its signature key), waiting to be proposed
        self._key_packages: dict[int, tuple[bytes, bytes]] = {}
        # member -> the signature key of its leaf
        self._member_keys: dict[int, bytes] = {}
        self._stale: set[int] = set()
        self._open: dict[bytes, _Proposal] = {}
        # committer -> the proposal refs it was sent (its commit must cover exactly these)
        self._open_for: dict[int, frozenset[bytes]] = {}
        self._transitions: dict[int, _Transition] = {}
        self._last_transition_id = 0
        #: Commits accepted (one per epoch) and rejected (late, malformed, or breaking a rule).
        self.accepted_commits = 0
        self.rejected_commits = 0
        #: Key packages refused (undecodable, bad signature or lifetime, another user's).
        self.rejected_key_packages = 0
        #: Transitions executed by the timeout rather than by every member's op 23.
        self.expired_transitions = 0

    def __repr__(self) -> str:
        return (
            f"DaveCallGroup(channel_id={self.channel_id}, protocol_version={self.protocol_version}, "
            f"epoch={self.epoch}, members={sorted(self.members)})"
        )

    @property
    def members(self) -> set[int]:
        """Users in the established group's tree (excluding ones that must be re-added)."""
        return {u for u in self.leaves if u is not None and u not in self._stale}

    @property
    def target_version(self) -> int:
        """The protocol version the call is at or moving to (what a joining member is told in op 4)."""
        return self._target_version

    @property
    def pending_transitions(self) -> dict[int, int]:
        """Transitions announced but not executed: ``{transition_id: protocol_version}``."""
        return {tid: t.protocol_version for tid, t in self._transitions.items()}

    def next_deadline(self) -> float | None:
        """When (by ``clock``) the oldest pending transition times out; ``None`` if none can."""
        if self.transition_timeout is None or not self._transitions:
            return None
        return min(t.started for t in self._transitions.values()) + self.transition_timeout

    def _new_transition(self, protocol_version: int, audience: set[int]) -> int:
        self._last_transition_id = self._last_transition_id % 0xFFFF + 1
        tid = self._last_transition_id
        self._transitions[tid] = _Transition(protocol_version, set(audience), set(audience), self._clock())
        return tid

    # --- call events ------------------------------------------------------------------

    def join(self, user_id: int, dave: bool = True) -> Outgoing:
        """A user entered the call: it gets the external sender (op 25) if DAVE is on.

        A user without DAVE (``dave=False``) downgrades an end-to-end encrypted call to
        protocol 0; it is upgraded again when the last such user leaves.
        """
        self.users.add(user_id)
        if not dave:
            self.non_dave_users.add(user_id)
            if self._target_version > 0:
                self._auto_downgraded = True
                _log.info("user %s does not speak DAVE: the call goes to protocol 0", user_id)
                return self.downgrade()
            return []
        if self._target_version == 0:
            return []  # it gets the external sender when the call is upgraded
        self._sender_sent.add(user_id)
        return [(user_id, GatewayMessageDataDaveMLSExternalSender(self.sender.payload))]

    def leave(self, user_id: int) -> Outgoing:
        """A user left the call: revoke its open Add, propose its Remove, or reset a sole member."""
        self.users.discard(user_id)
        self._sender_sent.discard(user_id)
        self._key_packages.pop(user_id, None)
        out = self._forget_in_transitions(user_id)
        self._open_for.pop(user_id, None)
        revoked = [ref for ref, p in self._open.items() if p.kind == PROPOSAL_ADD and p.user_id == user_id]
        for ref in revoked:
            del self._open[ref]
        if revoked:
            # Members drop the Add from their pending proposals (and a commit of it is refused).
            open_for: dict[int, frozenset[bytes]] = {}
            for uid in sorted(self._open_for):
                refs = self._open_for[uid]
                theirs = [ref for ref in revoked if ref in refs]
                if theirs:
                    payload = proposals_revoke_payload(theirs)
                    revoke = GatewayMessageDataDaveMLSProposals(GatewayMessageDataDaveMLSProposals.REVOKE, payload)
                    out.append((uid, revoke))
                if refs.difference(theirs):
                    open_for[uid] = refs.difference(theirs)
            self._open_for = open_for
        if not self._open or not self._open_for:
            # Nothing left to commit, or nobody left to commit it: propose afresh.
            self._open.clear()
            self._open_for.clear()
        out += self._reconcile()
        if user_id in self.non_dave_users:
            self.non_dave_users.discard(user_id)
            if not self.non_dave_users and self._auto_downgraded:
                self._auto_downgraded = False
                _log.info("the last member without DAVE left: the call goes back to protocol %d", self._dave_version)
                out += self.upgrade(self._dave_version)
        return out

    def key_package(self, user_id: int, key_package: bytes) -> Outgoing:
        """Op 26 from ``user_id``: check its (single-use) key package, keep it and propose it when due.

        Refused (and counted): undecodable ones, a credential naming another user, a lifetime
        other than the maximum span, and signatures that do not verify.
        """
        try:
            info = validate_key_package(key_package)
        except MLSDecodeError as exc:
            self.rejected_key_packages += 1
            _log.warning("ignoring a key package from user %s: %s", user_id, exc)
            return []
        if info.user_id != user_id:
            self.rejected_key_packages += 1
            _log.warning("ignoring a key package from user %s: its credential names user %s", user_id, info.user_id)
            return []
        if self._target_version == 0 or user_id not in self.users or user_id in self.non_dave_users:
            return []
        self._key_packages[user_id] = (bytes(key_package), info.leaf.signature_key)
        if user_id in self.leaves:
            # A member that re-initialised (op 31, or a reset) needs its old leaf removed.
            self._stale.add(user_id)
        return self._reconcile()

    def invalid_commit_welcome(self, user_id: int, transition_id: int) -> Outgoing:
        """Op 31: the member could not use a commit/welcome; propose its Remove, re-add it on its next key package."""
        _log.info("user %s reports an invalid commit/welcome for transition %s", user_id, transition_id)
        out = self._forget_in_transitions(user_id)
        if user_id in self.leaves:
            self._stale.add(user_id)
        if user_id in self._open_for:
            # It reset: it will not commit this epoch's proposals.
            del self._open_for[user_id]
            if not self._open_for:
                self._open.clear()
        return out + self._reconcile()

    def transition_ready(self, user_id: int, transition_id: int) -> Outgoing:
        """Op 23: ``user_id`` is ready for ``transition_id``; execute it (op 22) when all are."""
        transition = self._transitions.get(transition_id)
        if transition is None:
            return []
        transition.waiting.discard(user_id)
        return self._maybe_execute(transition_id)

    def expire_transitions(self) -> Outgoing:
        """Execute the transitions that waited ``transition_timeout`` seconds for op 23 (as Discord's gateway does)."""
        if self.transition_timeout is None:
            return []
        now = self._clock()
        out: Outgoing = []
        for tid, transition in list(self._transitions.items()):
            if now >= transition.started + self.transition_timeout:
                _log.info("transition %d timed out waiting for users %s; executing it", tid, sorted(transition.waiting))
                self.expired_transitions += 1
                transition.waiting.clear()
                out += self._maybe_execute(tid)
        return out

    def commit_welcome(self, user_id: int, blob: bytes) -> Outgoing:
        """Op 28: accept the first valid commit of the open proposals and relay it (ops 29 and 30)."""
        try:
            parsed = parse_commit_welcome(blob)
        except MLSDecodeError as exc:
            return self._reject(user_id, str(exc))
        reason = self._commit_problem(user_id, parsed)
        if reason is not None:
            return self._reject(user_id, reason)
        committed = [self._open[ref] for ref in parsed.proposal_refs]
        expected_epoch = 0 if self.epoch is None else self.epoch

        before = self.members
        if self.epoch is None:
            self.leaves = [user_id]
            own = self._key_packages.pop(user_id, None)  # its key package created the group
            if own is not None:
                self._member_keys[user_id] = own[1]
        for p in committed:
            if p.kind == PROPOSAL_REMOVE:
                self.leaves[p.leaf] = None
                self._stale.discard(p.user_id)
        while self.leaves and self.leaves[-1] is None:
            self.leaves.pop()
        joined: list[int] = []
        for p in committed:
            if p.kind == PROPOSAL_ADD:
                try:
                    index = self.leaves.index(None)
                    self.leaves[index] = p.user_id
                except ValueError:
                    self.leaves.append(p.user_id)
                joined.append(p.user_id)
                self._member_keys[p.user_id] = p.signature_key
                pending = self._key_packages.get(p.user_id)
                if pending is not None and pending[0] == p.key_package:
                    del self._key_packages[p.user_id]
        self.epoch = expected_epoch + 1
        self._open.clear()
        self._open_for.clear()
        self.accepted_commits += 1

        announce_to = (before | {user_id}) & self.users
        if self.zero_transition_ids:
            tid = 0
            self._switch_version(self._target_version)
        else:
            tid = self._new_transition(self._target_version, (announce_to | set(joined)) & self.users)
        out: Outgoing = []
        for uid in sorted(announce_to):
            out.append((uid, GatewayMessageDataDaveMLSAnnounceCommitTransition(tid, parsed.commit)))
        for uid in joined:
            if uid in self.users:
                out.append((uid, GatewayMessageDataDaveMLSWelcome(tid, parsed.welcome or b"")))
        return out + self._reconcile()

    def _commit_problem(self, user_id: int, parsed: ParsedCommit) -> str | None:
        """Why this commit must not be relayed (the gateway's checks of the DAVE protocol), or ``None``."""
        expected_refs = self._open_for.get(user_id)
        if not self._open or expected_refs is None:
            return "no proposals are open for this member (late or duplicate commit)"
        expected_epoch = 0 if self.epoch is None else self.epoch
        if parsed.group_id != self.group_id or parsed.epoch != expected_epoch:
            group = parsed.group_id.hex()[:16]
            return f"commit is for epoch {parsed.epoch} of group {group}, expected {expected_epoch}"
        if parsed.inline_proposal_types:
            return f"commit includes proposals by value {parsed.inline_proposal_types}; only references are allowed"
        refs = parsed.proposal_refs
        if not refs or len(set(refs)) != len(refs) or set(refs) != expected_refs:
            return f"commit must reference exactly the {len(expected_refs)} open proposals, it references {len(refs)}"
        if any(self._open[ref].kind == PROPOSAL_ADD for ref in refs) and parsed.welcome is None:
            return "commit adds members but carries no welcome"
        if self.epoch is None:
            if parsed.sender_leaf != 0:
                return f"a new group's creator is at leaf 0, commit says {parsed.sender_leaf}"
            known_key = self._key_packages.get(user_id, (b"", b""))[1]
        else:
            if self.leaves[parsed.sender_leaf:parsed.sender_leaf + 1] != [user_id]:
                return f"commit sender leaf {parsed.sender_leaf} is not this member's"
            known_key = self._member_keys.get(user_id, b"")
        leaf = parsed.path_leaf
        if leaf is not None:
            if leaf.identity != user_id.to_bytes(8, "big"):
                return "commit's update path changes the committer's credential"
            if known_key and leaf.signature_key != known_key:
                return "commit's update path changes the committer's signature key"
        return None

    def downgrade(self) -> Outgoing:
        """Take the call to protocol 0 (no E2EE): op 21 to every DAVE member, op 22 once all are ready."""
        self._target_version = 0
        self._open.clear()
        self._open_for.clear()
        self._key_packages.clear()
        audience = self.users - self.non_dave_users
        if not audience:
            self._switch_version(0)
            return []
        tid = self._new_transition(0, audience)
        return [(uid, GatewayMessageDataDavePrepareTransition(0, tid)) for uid in sorted(audience)]

    def upgrade(self, protocol_version: int = 1) -> Outgoing:
        """Bring the call back to DAVE: op 24 (epoch 1) to every DAVE member; a new group forms from their key packages.

        Members that never got the external sender (they joined while the call was at protocol
        0) get op 25 first.
        """
        if protocol_version < 1:
            raise ValueError(f"upgrade needs a protocol version >= 1, got {protocol_version!r}")
        self._target_version = protocol_version
        self._dave_version = protocol_version
        self._transitions.clear()  # a pending downgrade must not execute after this
        self._reset_group()
        out: Outgoing = []
        for uid in sorted(self.users - self.non_dave_users):
            if uid not in self._sender_sent:
                self._sender_sent.add(uid)
                out.append((uid, GatewayMessageDataDaveMLSExternalSender(self.sender.payload)))
            out.append((uid, GatewayMessageDataDavePrepareEpoch(protocol_version, 1)))
        return out

    def prepare_epoch(self) -> Outgoing:
        """Op 24 announcing the group's current epoch: a protocol change that keeps the group (no reset).

        Only meaningful once the group is past epoch 1 (op 24 with epoch 1 means a new group).
        """
        if self.epoch is None or self.epoch < 2:
            raise RuntimeError(f"prepare_epoch needs an established group past epoch 1, the group is at {self.epoch}")
        return [
            (uid, GatewayMessageDataDavePrepareEpoch(self._target_version, self.epoch))
            for uid in sorted(self.members & self.users)
        ]

    # --- internals ----------------------------------------------------------------------

    def _reject(self, user_id: int, reason: str) -> Outgoing:
        self.rejected_commits += 1
        _log.debug("ignoring a commit from user %s: %s", user_id, reason)
        return []

    def _reset_group(self) -> None:
        self.epoch = None
        self.leaves = []
        self._stale.clear()
        self._open.clear()
        self._open_for.clear()
        self._key_packages.clear()
        self._member_keys.clear()

    def _switch_version(self, version: int) -> None:
        if version != self.protocol_version:
            self.protocol_version = version
            if version == 0:
                self._reset_group()

    def _forget_in_transitions(self, user_id: int) -> Outgoing:
        out: Outgoing = []
        for tid in list(self._transitions):
            transition = self._transitions[tid]
            transition.audience.discard(user_id)
            transition.waiting.discard(user_id)
            out += self._maybe_execute(tid)
        return out

    def _maybe_execute(self, transition_id: int) -> Outgoing:
        transition = self._transitions.get(transition_id)
        if transition is None or transition.waiting:
            return []
        del self._transitions[transition_id]
        out: Outgoing = [
            (uid, GatewayMessageDataDaveExecuteTransition(transition_id)) for uid in sorted(transition.audience)
        ]
        if transition.protocol_version == self._target_version:
            # A transition to a version the call has since left (an epoch change overtaken by a
            # downgrade) executes for its members but does not move the call back.
            self._switch_version(transition.protocol_version)
        return out

    def _reconcile(self) -> Outgoing:
        """Propose what the group needs next, if no proposals are open."""
        if self._open or self._target_version == 0:
            return []
        self._key_packages = {u: kp for u, kp in self._key_packages.items() if u in self.users}
        if self.epoch is not None:
            committers = self.members & self.users
            gone = [(leaf, uid) for leaf, uid in enumerate(self.leaves) if uid is not None and uid not in self.users]
            stale = [(leaf, uid) for leaf, uid in enumerate(self.leaves) if uid in self._stale and uid in self.users]
            removes = sorted(gone + stale)
            adds = [u for u in self._key_packages if u not in committers]
            if not committers:
                # Nobody left who can commit: start over from the key packages on hand.
                waiting = dict(self._key_packages)
                self._reset_group()
                self._key_packages = waiting
            elif len(committers) == 1 and not adds and gone and not stale:
                # The others left the call: the last member starts over alone.
                return self._sole_member_reset(next(iter(committers)))
            elif removes or adds:
                # A member that flagged op 31 is removed here and re-added with its next key
                # package (in this same commit when that package is already here).
                epoch = self.epoch
                proposals = [self._remove(uid, epoch, leaf) for leaf, uid in removes]
                proposals += [self._add(uid, epoch) for uid in adds]
                refs = frozenset(p.ref for p in proposals)
                self._open_for = {uid: refs for uid in committers}
                payload = proposals_append_payload([p.message for p in proposals])
                return [
                    (uid, GatewayMessageDataDaveMLSProposals(GatewayMessageDataDaveMLSProposals.APPEND, payload))
                    for uid in sorted(committers)
                ]
            else:
                return []
        # No established group: once two members have key packages, each gets Adds for the others.
        candidates = sorted(self._key_packages)
        if len(candidates) < 2:
            return []
        pending = {uid: self._add(uid, 0) for uid in candidates}
        out: Outgoing = []
        for uid in candidates:
            others = [p for other, p in pending.items() if other != uid]
            self._open_for[uid] = frozenset(p.ref for p in others)
            payload = proposals_append_payload([p.message for p in others])
            out.append((uid, GatewayMessageDataDaveMLSProposals(GatewayMessageDataDaveMLSProposals.APPEND, payload)))
        return out

    def _add(self, user_id: int, epoch: int) -> _Proposal:
        key_package, signature_key = self._key_packages[user_id]
        message = self.sender.propose_add(self.group_id, epoch, key_package)
        proposal = _Proposal(
            PROPOSAL_ADD, user_id, message, proposal_ref(message), key_package=key_package, signature_key=signature_key
        )
        self._open[proposal.ref] = proposal
        return proposal

    def _remove(self, user_id: int, epoch: int, leaf: int) -> _Proposal:
        message = self.sender.propose_remove(self.group_id, epoch, leaf)
        proposal = _Proposal(PROPOSAL_REMOVE, user_id, message, proposal_ref(message), leaf=leaf)
        self._open[proposal.ref] = proposal
        return proposal

    def _sole_member_reset(self, user_id: int) -> Outgoing:
        """The last member of a group: it starts over alone (op 24 epoch 1, then op 21 transition 0)."""
        self._reset_group()
        version = self._target_version
        return [
            (user_id, GatewayMessageDataDavePrepareEpoch(version, 1)),
            (user_id, GatewayMessageDataDavePrepareTransition(version, 0)),
        ]
