"""The local voice server's side of DAVE: the MLS delivery service and external sender.

Discord's voice gateway never joins the MLS group of a call. It is named in the group's
External Senders extension, so it may *propose* membership changes (Add a joining member's
key package, Remove a leaver), and it relays what the members produce: the first commit of
each epoch goes to every member (op 29), its welcome to the members it adds (op 30). It
never holds a group secret, so it can forward E2EE media without being able to read it.

This module is that role as a sans-I/O unit: :class:`DaveExternalSender` builds and signs the
MLS structures (RFC 9420), :class:`DaveCallGroup` is the per-call state machine that turns
client messages (ops 23, 26, 28, 31) and call events (join, leave, downgrade, upgrade) into the
server messages to send, as ``(user_id, message)`` pairs. The VoiceServer does the I/O.

Only what the server must understand is parsed: key packages (to learn the member's user id),
commits (to learn which proposals they cover and where the welcome starts). Everything is
checked by the members' own MLS stacks, which is the point: a client library that accepts
these messages accepts a real group run by an external sender.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass, field
from typing import Callable

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

__all__ = [
    "DaveCallGroup",
    "DaveExternalSender",
    "MLSDecodeError",
    "ParsedCommit",
    "is_dave_frame",
    "key_package_user_id",
    "parse_commit_welcome",
]

_log = logging.getLogger("fastvoice.testing.dave")

_MLS10 = 1
_WIRE_PUBLIC_MESSAGE = 1
_WIRE_WELCOME = 3
_SENDER_MEMBER = 1
_SENDER_EXTERNAL = 2
_CONTENT_PROPOSAL = 2
_CONTENT_COMMIT = 3
_PROPOSAL_ADD = 1
_PROPOSAL_UPDATE = 2
_PROPOSAL_REMOVE = 3
_CREDENTIAL_BASIC = 1
_CIPHERSUITE_P256 = 2  # DHKEMP256_AES128GCM_SHA256_P256, the one DAVE v1 uses

#: The trailer every DAVE v1 media frame ends with.
DAVE_MAGIC = b"\xfa\xfa"


class MLSDecodeError(ValueError):
    """An MLS structure from a client could not be decoded (truncated, or a kind the server does not expect)."""


# --- TLS presentation language (RFC 9420 §2.1.2) ------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return struct.pack(">H", 0x4000 | n)
    if n < 0x40000000:
        return struct.pack(">I", 0x80000000 | n)
    raise ValueError(f"an MLS vector holds fewer than 2**30 bytes, got {n}")


def _vec(data: bytes) -> bytes:
    return _varint(len(data)) + data


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MLSDecodeError(
                f"{self.what} is truncated: needed {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vec(self) -> bytes:
        first = self.uint(1)
        prefix = first >> 6
        if prefix == 0:
            length = first
        elif prefix == 1:
            length = ((first & 0x3F) << 8) | self.uint(1)
        elif prefix == 2:
            length = ((first & 0x3F) << 24) | self.uint(3)
        else:
            raise MLSDecodeError(f"{self.what} has an invalid vector length prefix 0x{first:02x} at {self.pos - 1}")
        return self.take(length)


def _skip_leaf_node(r: _Reader) -> bytes:
    """Skip a LeafNode and return its credential's identity."""
    r.vec()  # encryption_key
    r.vec()  # signature_key
    credential_type = r.uint(2)
    identity = r.vec()  # basic: identity; x509: the certificate chain (also one vector)
    if credential_type != _CREDENTIAL_BASIC:
        identity = b""
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, credentials
        r.vec()
    source = r.uint(1)
    if source == 1:  # key_package: lifetime
        r.take(16)
    elif source == 3:  # commit: parent_hash
        r.vec()
    elif source != 2:  # 2 = update: nothing
        raise MLSDecodeError(f"{r.what} has an unknown leaf node source {source}")
    r.vec()  # extensions
    r.vec()  # signature
    return identity


def key_package_user_id(key_package: bytes) -> int:
    """Return the Discord user id a serialized MLS KeyPackage belongs to.

    DAVE members use basic credentials whose identity is the user id as a big-endian u64.
    Raises :class:`MLSDecodeError` if the bytes are not such a key package.
    """
    r = _Reader(bytes(key_package), "key package")
    version = r.uint(2)
    if version != _MLS10:
        raise MLSDecodeError(f"key package protocol version must be 1 (mls10), got {version}")
    suite = r.uint(2)
    if suite != _CIPHERSUITE_P256:
        raise MLSDecodeError(f"key package cipher suite must be {_CIPHERSUITE_P256} (P-256), got {suite}")
    r.vec()  # init_key
    identity = _skip_leaf_node(r)
    r.vec()  # extensions
    r.vec()  # signature
    if r.pos != len(r.data):
        raise MLSDecodeError(f"key package has {len(r.data) - r.pos} trailing bytes")
    if len(identity) != 8:
        raise MLSDecodeError(f"key package credential identity must be an 8-byte user id, got {len(identity)} bytes")
    return int.from_bytes(identity, "big")


def _ref_hash(label: bytes, value: bytes) -> bytes:
    return hashlib.sha256(_vec(label) + _vec(value)).digest()


def proposal_ref(public_message: bytes) -> bytes:
    """The ProposalRef of a proposal sent as an MLSMessage(PublicMessage) by an external sender.

    It is RefHash over the AuthenticatedContent (wire format, content, auth data), which for an
    external sender's PublicMessage is the message without its 2-byte protocol version.
    """
    return _ref_hash(b"MLS 1.0 Proposal Reference", public_message[2:])


@dataclass(frozen=True, slots=True)
class ParsedCommit:
    """What the server reads from a member's op 28: the commit's framing and where the welcome is."""

    commit: bytes
    welcome: bytes | None
    group_id: bytes
    epoch: int
    sender_leaf: int
    proposal_refs: tuple[bytes, ...]
    inline_proposal_types: tuple[int, ...]
    has_path: bool


def _skip_proposal(r: _Reader) -> int:
    kind = r.uint(2)
    if kind == _PROPOSAL_ADD:
        r.take(4)  # version, suite
        r.vec()
        _skip_leaf_node(r)
        r.vec()
        r.vec()
    elif kind == _PROPOSAL_UPDATE:
        _skip_leaf_node(r)
    elif kind == _PROPOSAL_REMOVE:
        r.take(4)
    elif kind in (6, 7):  # external_init: kem_output; group_context_extensions: extensions
        r.vec()
    else:
        raise MLSDecodeError(f"commit carries an inline proposal of type {kind}, which a DAVE commit never has")
    return kind


def parse_commit_welcome(blob: bytes) -> ParsedCommit:
    """Split op 28's ``commit || welcome?`` and read the commit's framing.

    Raises :class:`MLSDecodeError` if the commit is not a member's PublicMessage commit, or if
    what follows it is not an MLS Welcome.
    """
    blob = bytes(blob)
    r = _Reader(blob, "commit")
    version, wire = r.uint(2), r.uint(2)
    if version != _MLS10 or wire != _WIRE_PUBLIC_MESSAGE:
        raise MLSDecodeError(
            f"commit must start with version 1 and wire format 1 (public message), got {version} and {wire}"
        )
    group_id = r.vec()
    epoch = r.uint(8)
    sender_type = r.uint(1)
    if sender_type != _SENDER_MEMBER:
        raise MLSDecodeError(f"commit sender type must be 1 (member), got {sender_type}")
    sender_leaf = r.uint(4)
    r.vec()  # authenticated_data
    content_type = r.uint(1)
    if content_type != _CONTENT_COMMIT:
        raise MLSDecodeError(f"op 28 content type must be 3 (commit), got {content_type}")
    proposals = _Reader(r.vec(), "commit proposals")
    refs: list[bytes] = []
    inline: list[int] = []
    while proposals.pos < len(proposals.data):
        kind = proposals.uint(1)
        if kind == 1:
            inline.append(_skip_proposal(proposals))
        elif kind == 2:
            refs.append(proposals.vec())
        else:
            raise MLSDecodeError(f"commit has a ProposalOrRef of type {kind}; expected 1 or 2")
    present = r.uint(1)
    if present == 1:
        _skip_leaf_node(r)
        r.vec()  # the path's nodes
    elif present != 0:
        raise MLSDecodeError(f"commit path presence flag must be 0 or 1, got {present}")
    r.vec()  # signature
    r.vec()  # confirmation tag
    r.vec()  # membership tag
    commit = blob[: r.pos]
    rest = blob[r.pos:]
    welcome = None
    if rest:
        # DAVE sends the Welcome struct itself (it starts with its cipher suite); accept an
        # MLSMessage-framed one too.
        if len(rest) < 4 or (rest[:2] != struct.pack(">H", _CIPHERSUITE_P256)
                             and struct.unpack_from(">HH", rest) != (_MLS10, _WIRE_WELCOME)):
            raise MLSDecodeError(
                f"the bytes after the commit must be a Welcome for cipher suite {_CIPHERSUITE_P256}, "
                f"got {rest[:4].hex()}..."
            )
        welcome = rest
    return ParsedCommit(commit, welcome, group_id, epoch, sender_leaf, tuple(refs), tuple(inline), present == 1)


def is_dave_frame(payload: bytes) -> bool:
    """Whether a media payload has the shape of a DAVE v1 frame (``... supplemental_size 0xFA 0xFA``).

    The supplemental section is at least the 8-byte tag, a 1-byte nonce, the size byte and the
    magic; it cannot be longer than the frame.
    """
    n = len(payload)
    if n < 13 or payload[-2:] != DAVE_MAGIC:
        return False
    supplemental = payload[-3]
    return 12 <= supplemental <= n


class DaveExternalSender:
    """The server's MLS identity: a P-256 signing key named in every call group's External Senders.

    ``signing_key`` is ``None`` for a fresh key signed by the built-in P-256 code (no extra
    package needed), or a ``cryptography`` EC private key on SECP256R1 (signed with it).
    """

    def __init__(self, signing_key: object | None = None, identity: bytes = b"\x00" * 8) -> None:
        if signing_key is None:
            from ._p256 import P256SigningKey

            builtin = P256SigningKey()
            self._sign_bytes: Callable[[bytes], bytes] = builtin.sign
            self.public_key = builtin.public_key
        else:
            try:
                from cryptography.hazmat.primitives import hashes, serialization
                from cryptography.hazmat.primitives.asymmetric import ec
            except ImportError:
                ec = None  # type: ignore[assignment]
            if ec is None or not isinstance(signing_key, ec.EllipticCurvePrivateKey) or (
                signing_key.curve.name != "secp256r1"
            ):
                raise ValueError(f"signing_key must be None or a SECP256R1 EllipticCurvePrivateKey, got {signing_key!r}")
            algorithm = ec.ECDSA(hashes.SHA256())
            self._sign_bytes = lambda data: signing_key.sign(data, algorithm)
            self.public_key = signing_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        self.identity = bytes(identity)

    def __repr__(self) -> str:
        return f"DaveExternalSender(public_key={self.public_key[:8].hex()}...)"

    @property
    def payload(self) -> bytes:
        """The op 25 payload: ``ExternalSender{signature_key<V>, Credential{basic, identity<V>}}``."""
        return _vec(self.public_key) + struct.pack(">H", _CREDENTIAL_BASIC) + _vec(self.identity)

    def _sign(self, label: bytes, content: bytes) -> bytes:
        return self._sign_bytes(_vec(b"MLS 1.0 " + label) + _vec(content))

    def _proposal_message(self, group_id: bytes, epoch: int, proposal: bytes) -> bytes:
        content = (
            _vec(group_id)
            + struct.pack(">QBI", epoch, _SENDER_EXTERNAL, 0)  # sender_index 0: the only external sender
            + _vec(b"")  # authenticated_data
            + bytes((_CONTENT_PROPOSAL,))
            + proposal
        )
        framing = struct.pack(">HH", _MLS10, _WIRE_PUBLIC_MESSAGE)
        # FramedContentTBS for an external sender has no GroupContext.
        signature = self._sign(b"FramedContentTBS", framing + content)
        # An external sender's PublicMessage has no confirmation tag and no membership tag.
        return framing + content + _vec(signature)

    def propose_add(self, group_id: bytes, epoch: int, key_package: bytes) -> bytes:
        """An MLSMessage carrying an Add proposal of ``key_package`` for ``group_id`` at ``epoch``."""
        return self._proposal_message(group_id, epoch, struct.pack(">H", _PROPOSAL_ADD) + bytes(key_package))

    def propose_remove(self, group_id: bytes, epoch: int, leaf_index: int) -> bytes:
        """An MLSMessage carrying a Remove proposal of the member at ``leaf_index``."""
        return self._proposal_message(group_id, epoch, struct.pack(">HI", _PROPOSAL_REMOVE, leaf_index))


def proposals_append_payload(messages: list[bytes]) -> bytes:
    """The proposals of op 27 ``append`` (after the operation byte): ``MLSMessage proposal_messages<V>``."""
    return _vec(b"".join(messages))


def proposals_revoke_payload(refs: list[bytes]) -> bytes:
    """The proposals of op 27 ``revoke``: ``ProposalRef proposal_refs<V>``."""
    return _vec(b"".join(_vec(ref) for ref in refs))


Outgoing = list[tuple[int, GatewayMessageData]]


@dataclass(slots=True)
class _Proposal:
    kind: int  # _PROPOSAL_ADD / _PROPOSAL_REMOVE
    user_id: int
    message: bytes
    ref: bytes
    leaf: int = -1
    key_package: bytes = b""


@dataclass(slots=True)
class _Transition:
    protocol_version: int
    audience: set[int]
    waiting: set[int] = field(default_factory=set)


class DaveCallGroup:
    """One call's DAVE state on the server side, as the external sender runs it.

    Feed it what happens (:meth:`join`, :meth:`leave`, :meth:`key_package`,
    :meth:`commit_welcome`, :meth:`transition_ready`, :meth:`invalid_commit_welcome`,
    :meth:`downgrade`, :meth:`upgrade`); each returns the messages to send, as
    ``(user_id, message)`` pairs in order. Nothing here raises on bad client input: it is
    logged and ignored, and counted in :attr:`rejected_commits`.

    The group is established by the first commit the server accepts; until then every member
    with a key package waits in a pending group of its own, and once two exist each gets Add
    proposals for the others and the first commit back wins. One batch of proposals is open
    per epoch; changes that arrive meanwhile are proposed in the next epoch.
    """

    def __init__(self, channel_id: int, protocol_version: int = 1, sender: DaveExternalSender | None = None) -> None:
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
        #: Epoch of the established group, ``None`` while there is none.
        self.epoch: int | None = None
        #: User id at each leaf of the established group's tree (``None`` = blank).
        self.leaves: list[int | None] = []
        #: Users in the call.
        self.users: set[int] = set()
        self._key_packages: dict[int, bytes] = {}
        self._stale: set[int] = set()
        self._open: dict[bytes, _Proposal] = {}
        self._open_recipients: set[int] = set()
        self._transitions: dict[int, _Transition] = {}
        self._last_transition_id = 0
        #: Commits accepted (one per epoch) and rejected (late, malformed, or for the wrong epoch).
        self.accepted_commits = 0
        self.rejected_commits = 0

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
    def pending_transitions(self) -> dict[int, int]:
        """Transitions announced but not executed: ``{transition_id: protocol_version}``."""
        return {tid: t.protocol_version for tid, t in self._transitions.items()}

    def _new_transition(self, protocol_version: int, audience: set[int]) -> int:
        self._last_transition_id = self._last_transition_id % 0xFFFF + 1
        tid = self._last_transition_id
        self._transitions[tid] = _Transition(protocol_version, set(audience), set(audience))
        return tid

    # --- call events ------------------------------------------------------------------

    def join(self, user_id: int) -> Outgoing:
        """A user entered the call: it gets the external sender (op 25) if DAVE is on."""
        self.users.add(user_id)
        if self._target_version == 0:
            return []
        return [(user_id, GatewayMessageDataDaveMLSExternalSender(self.sender.payload))]

    def leave(self, user_id: int) -> Outgoing:
        """A user left the call: revoke its open Add, propose its Remove, or reset a sole member."""
        self.users.discard(user_id)
        self._key_packages.pop(user_id, None)
        out = self._forget_in_transitions(user_id)
        self._open_recipients.discard(user_id)
        revoked = [ref for ref, p in self._open.items() if p.kind == _PROPOSAL_ADD and p.user_id == user_id]
        for ref in revoked:
            del self._open[ref]
        if revoked:
            # Members drop the Add from their pending proposals (and a commit of it is refused).
            payload = proposals_revoke_payload(revoked)
            for uid in sorted(self._open_recipients):
                out.append((uid, GatewayMessageDataDaveMLSProposals(GatewayMessageDataDaveMLSProposals.REVOKE, payload)))
        if not self._open or not self._open_recipients:
            # Nothing left to commit, or nobody left to commit it: propose afresh.
            self._open.clear()
            self._open_recipients.clear()
        return out + self._reconcile()

    def key_package(self, user_id: int, key_package: bytes) -> Outgoing:
        """Op 26 from ``user_id``: keep its (single-use) key package and propose it when due."""
        try:
            owner = key_package_user_id(key_package)
        except MLSDecodeError as exc:
            _log.warning("ignoring a key package from user %s: %s", user_id, exc)
            return []
        if owner != user_id:
            _log.warning("ignoring a key package from user %s: its credential names user %s", user_id, owner)
            return []
        if self._target_version == 0 or user_id not in self.users:
            return []
        self._key_packages[user_id] = bytes(key_package)
        if user_id in self.leaves:
            # A member that re-initialised (op 31, or a reset) needs its old leaf removed.
            self._stale.add(user_id)
        return self._reconcile()

    def invalid_commit_welcome(self, user_id: int, transition_id: int) -> Outgoing:
        """Op 31: the member could not use a commit/welcome; it resets and sends a new key package."""
        _log.info("user %s reports an invalid commit/welcome for transition %s", user_id, transition_id)
        out = self._forget_in_transitions(user_id)
        if user_id in self.leaves:
            self._stale.add(user_id)
        return out + self._reconcile()

    def transition_ready(self, user_id: int, transition_id: int) -> Outgoing:
        """Op 23: ``user_id`` is ready for ``transition_id``; execute it (op 22) when all are."""
        transition = self._transitions.get(transition_id)
        if transition is None:
            return []
        transition.waiting.discard(user_id)
        return self._maybe_execute(transition_id)

    def commit_welcome(self, user_id: int, blob: bytes) -> Outgoing:
        """Op 28: accept the first valid commit of the open proposals and relay it (ops 29 and 30)."""
        try:
            parsed = parse_commit_welcome(blob)
        except MLSDecodeError as exc:
            return self._reject(user_id, str(exc))
        if not self._open or user_id not in self._open_recipients:
            return self._reject(user_id, "no proposals are open for this member (late or duplicate commit)")
        expected_epoch = 0 if self.epoch is None else self.epoch
        if parsed.group_id != self.group_id or parsed.epoch != expected_epoch:
            return self._reject(
                user_id, f"commit is for epoch {parsed.epoch} of group {parsed.group_id.hex()}, expected {expected_epoch}"
            )
        if any(kind != _PROPOSAL_UPDATE for kind in parsed.inline_proposal_types):
            return self._reject(user_id, f"commit proposes membership itself: {parsed.inline_proposal_types}")
        unknown = [ref for ref in parsed.proposal_refs if ref not in self._open]
        if unknown or not parsed.proposal_refs:
            return self._reject(user_id, "commit covers proposals the server did not make (or none)")
        committed = [self._open[ref] for ref in parsed.proposal_refs]
        if any(p.kind == _PROPOSAL_ADD for p in committed) and parsed.welcome is None:
            return self._reject(user_id, "commit adds members but carries no welcome")

        before = self.members
        if self.epoch is None:
            if parsed.sender_leaf != 0:
                return self._reject(user_id, f"a new group's creator is at leaf 0, commit says {parsed.sender_leaf}")
            self.leaves = [user_id]
            self._key_packages.pop(user_id, None)  # its key package created the group
        elif self.leaves[parsed.sender_leaf:parsed.sender_leaf + 1] != [user_id]:
            return self._reject(user_id, f"commit sender leaf {parsed.sender_leaf} is not this member's")
        for p in committed:
            if p.kind == _PROPOSAL_REMOVE:
                self.leaves[p.leaf] = None
                self._stale.discard(p.user_id)
        while self.leaves and self.leaves[-1] is None:
            self.leaves.pop()
        joined: list[int] = []
        for p in committed:
            if p.kind == _PROPOSAL_ADD:
                try:
                    index = self.leaves.index(None)
                    self.leaves[index] = p.user_id
                except ValueError:
                    self.leaves.append(p.user_id)
                joined.append(p.user_id)
                if self._key_packages.get(p.user_id) == p.key_package:
                    del self._key_packages[p.user_id]
        self.epoch = expected_epoch + 1
        self._open.clear()
        self._open_recipients.clear()
        self.accepted_commits += 1

        announce_to = (before | {user_id}) & self.users
        tid = self._new_transition(self._target_version, (announce_to | set(joined)) & self.users)
        out: Outgoing = []
        for uid in sorted(announce_to):
            out.append((uid, GatewayMessageDataDaveMLSAnnounceCommitTransition(tid, parsed.commit)))
        for uid in joined:
            if uid in self.users:
                out.append((uid, GatewayMessageDataDaveMLSWelcome(tid, parsed.welcome or b"")))
        return out + self._reconcile()

    def downgrade(self) -> Outgoing:
        """Take the call to protocol 0 (no E2EE): op 21 to every member, op 22 once all are ready."""
        self._target_version = 0
        self._open.clear()
        self._open_recipients.clear()
        self._key_packages.clear()
        audience = set(self.users)
        tid = self._new_transition(0, audience)
        return [(uid, GatewayMessageDataDavePrepareTransition(0, tid)) for uid in sorted(audience)]

    def upgrade(self, protocol_version: int = 1) -> Outgoing:
        """Bring the call back to DAVE: op 24 (epoch 1) to every member; a new group forms from their key packages."""
        if protocol_version < 1:
            raise ValueError(f"upgrade needs a protocol version >= 1, got {protocol_version!r}")
        self._target_version = protocol_version
        self._reset_group()
        out: Outgoing = []
        for uid in sorted(self.users):
            # Members keep the external sender across re-initialisation: op 24 is enough.
            out.append((uid, GatewayMessageDataDavePrepareEpoch(protocol_version, 1)))
        return out

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
        self._open_recipients.clear()
        self._key_packages.clear()

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
        if transition.protocol_version != self.protocol_version:
            self.protocol_version = transition.protocol_version
            if self.protocol_version == 0:
                self._reset_group()
        return out

    def _reconcile(self) -> Outgoing:
        """Propose what the group needs next, if no proposals are open."""
        if self._open or self._target_version == 0:
            return []
        self._key_packages = {u: kp for u, kp in self._key_packages.items() if u in self.users}
        if self.epoch is not None:
            committers = self.members & self.users
            removes = [
                (leaf, uid) for leaf, uid in enumerate(self.leaves)
                if uid is not None and (uid not in self.users or uid in self._stale)
            ]
            adds = [u for u in self._key_packages if u not in committers]
            if not committers:
                # Nobody left who can commit: start over from the key packages on hand.
                waiting = dict(self._key_packages)
                self._reset_group()
                self._key_packages = waiting
            elif len(committers) == 1 and not adds and removes:
                return self._sole_member_reset(next(iter(committers)))
            elif removes or adds:
                epoch = self.epoch
                proposals = [self._remove(uid, epoch, leaf) for leaf, uid in removes]
                proposals += [self._add(uid, epoch) for uid in adds]
                self._open_recipients = set(committers)
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
        proposals = {uid: self._add(uid, 0) for uid in candidates}
        self._open_recipients = set(candidates)
        out: Outgoing = []
        for uid in candidates:
            payload = proposals_append_payload([p.message for other, p in proposals.items() if other != uid])
            out.append((uid, GatewayMessageDataDaveMLSProposals(GatewayMessageDataDaveMLSProposals.APPEND, payload)))
        return out

    def _add(self, user_id: int, epoch: int) -> _Proposal:
        key_package = self._key_packages[user_id]
        message = self.sender.propose_add(self.group_id, epoch, key_package)
        proposal = _Proposal(_PROPOSAL_ADD, user_id, message, proposal_ref(message), key_package=key_package)
        self._open[proposal.ref] = proposal
        return proposal

    def _remove(self, user_id: int, epoch: int, leaf: int) -> _Proposal:
        message = self.sender.propose_remove(self.group_id, epoch, leaf)
        proposal = _Proposal(_PROPOSAL_REMOVE, user_id, message, proposal_ref(message), leaf=leaf)
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
