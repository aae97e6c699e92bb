"""The MLS wire pieces (RFC 9420) the local voice server needs as DAVE's external sender.

Only what the server must read or write is here: the TLS presentation language's vectors,
key packages (whose owner, signature key and lifetime the server checks, and whose signatures
it verifies, as the DAVE protocol requires of the voice gateway), commits (which proposals they
cover, who sent them, where the welcome starts), and the external sender's own signed proposals.
Everything else is checked by the members' MLS stacks.

The server's own key signs with the built-in P-256 code of ``_p256``; signatures are verified
with ``cryptography`` when it is installed (faster), else with the built-in code too.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ._p256 import P256SigningKey
from ._p256 import verify as p256_verify

__all__ = [
    "DAVE_MAGIC",
    "DaveExternalSender",
    "KeyPackageInfo",
    "LeafNodeInfo",
    "MAX_LIFETIME",
    "MLSDecodeError",
    "MLSValidationError",
    "ParsedCommit",
    "is_dave_frame",
    "key_package_user_id",
    "parse_commit_welcome",
    "parse_key_package",
    "proposal_ref",
    "proposals_append_payload",
    "proposals_revoke_payload",
    "validate_key_package",
]

MLS10 = 1
WIRE_PUBLIC_MESSAGE = 1
WIRE_WELCOME = 3
SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
CONTENT_PROPOSAL = 2
CONTENT_COMMIT = 3
PROPOSAL_ADD = 1
PROPOSAL_UPDATE = 2
PROPOSAL_REMOVE = 3
CREDENTIAL_BASIC = 1
CIPHERSUITE_P256 = 2  # DHKEMP256_AES128GCM_SHA256_P256, the one DAVE v1 uses
_LEAF_SOURCE_KEY_PACKAGE = 1
_LEAF_SOURCE_UPDATE = 2
_LEAF_SOURCE_COMMIT = 3

#: The key package lifetime DAVE requires (``not_before = 0``, ``not_after = 2**64 - 1``).
MAX_LIFETIME = (0, 2**64 - 1)

#: The trailer every DAVE v1 media frame ends with.
DAVE_MAGIC = b"\xfa\xfa"


class MLSDecodeError(ValueError):
    """An MLS structure from a client could not be decoded (truncated, or a kind the server does not expect)."""


class MLSValidationError(MLSDecodeError):
    """An MLS structure decoded but breaks a rule the voice gateway enforces (signature, lifetime, identity)."""


# --- TLS presentation language (RFC 9420 §2.1.2) ------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return struct.pack(">H", 0x4000 | n)
    if n < 0x40000000:
        return struct.pack(">I", 0x80000000 | n)
    raise ValueError(f"an MLS vector holds fewer than 2**30 bytes, got {n}")


def vec(data: bytes) -> bytes:
    """``data`` as an MLS variable-length vector ``<V>``."""
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


@dataclass(frozen=True, slots=True)
class LeafNodeInfo:
    """What the server reads from a LeafNode: the member's identity, signature key and (key packages) lifetime.

    ``identity`` is the basic credential's identity (empty for another credential type);
    ``tbs`` the signed part (LeafNodeTBS for a key package's leaf) and ``signature`` its signature.
    """

    identity: bytes
    credential_type: int
    signature_key: bytes
    source: int
    lifetime: tuple[int, int] | None
    tbs: bytes
    signature: bytes


def _read_leaf_node(r: _Reader) -> LeafNodeInfo:
    start = r.pos
    r.vec()  # encryption_key
    signature_key = r.vec()
    credential_type = r.uint(2)
    identity = r.vec()  # basic: identity; x509: the certificate chain (also one vector)
    if credential_type != CREDENTIAL_BASIC:
        identity = b""
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, credentials
        r.vec()
    source = r.uint(1)
    lifetime = None
    if source == _LEAF_SOURCE_KEY_PACKAGE:
        lifetime = (r.uint(8), r.uint(8))
    elif source == _LEAF_SOURCE_COMMIT:
        r.vec()  # parent_hash
    elif source != _LEAF_SOURCE_UPDATE:
        raise MLSDecodeError(f"{r.what} has an unknown leaf node source {source}")
    r.vec()  # extensions
    tbs = r.data[start:r.pos]
    signature = r.vec()
    return LeafNodeInfo(identity, credential_type, signature_key, source, lifetime, tbs, signature)


@dataclass(frozen=True, slots=True)
class KeyPackageInfo:
    """A decoded KeyPackage: the owner's ``user_id``, its ``leaf``, and the signed ``tbs`` with its ``signature``."""

    user_id: int
    leaf: LeafNodeInfo
    tbs: bytes
    signature: bytes


def parse_key_package(key_package: bytes) -> KeyPackageInfo:
    """Decode a serialized MLS KeyPackage of DAVE v1 (no signature check: see :func:`validate_key_package`).

    Raises :class:`MLSDecodeError` if the bytes are not such a key package.
    """
    r = _Reader(bytes(key_package), "key package")
    version = r.uint(2)
    if version != MLS10:
        raise MLSDecodeError(f"key package protocol version must be 1 (mls10), got {version}")
    suite = r.uint(2)
    if suite != CIPHERSUITE_P256:
        raise MLSDecodeError(f"key package cipher suite must be {CIPHERSUITE_P256} (P-256), got {suite}")
    r.vec()  # init_key
    leaf = _read_leaf_node(r)
    r.vec()  # extensions
    tbs = r.data[:r.pos]
    signature = r.vec()
    if r.pos != len(r.data):
        raise MLSDecodeError(f"key package has {len(r.data) - r.pos} trailing bytes")
    if leaf.source != _LEAF_SOURCE_KEY_PACKAGE:
        raise MLSDecodeError(f"key package leaf node source must be 1 (key_package), got {leaf.source}")
    if len(leaf.identity) != 8:
        raise MLSDecodeError(
            f"key package credential identity must be an 8-byte user id, got {len(leaf.identity)} bytes"
        )
    return KeyPackageInfo(int.from_bytes(leaf.identity, "big"), leaf, tbs, signature)


def key_package_user_id(key_package: bytes) -> int:
    """Return the Discord user id a serialized MLS KeyPackage belongs to.

    DAVE members use basic credentials whose identity is the user id as a big-endian u64.
    Raises :class:`MLSDecodeError` if the bytes are not such a key package.
    """
    return parse_key_package(key_package).user_id


def _sign_content(label: bytes, content: bytes) -> bytes:
    """SignContent of RFC 9420 §5.1.2: ``opaque label<V> = "MLS 1.0 " + label; opaque content<V>``."""
    return vec(b"MLS 1.0 " + label) + vec(content)


def verify_with_label(public_key: bytes, label: bytes, content: bytes, signature: bytes) -> bool:
    """VerifyWithLabel for ciphersuite 2: ECDSA P-256 over SHA-256, DER signature, uncompressed public key.

    Uses ``cryptography`` when it is installed, else the built-in P-256 code (same answers,
    slower: about a millisecond per signature)."""
    message = _sign_content(label, content)
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:  # cryptography is optional: the built-in code gives the same answers
        return p256_verify(public_key, message, signature)
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def validate_key_package(key_package: bytes) -> KeyPackageInfo:
    """Decode a key package and check it as DAVE's voice gateway must before proposing it.

    The lifetime must be the maximum span (:data:`MAX_LIFETIME`), and both signatures (the leaf
    node's over LeafNodeTBS and the key package's over KeyPackageTBS, made with the leaf's
    signature key) must verify. Raises :class:`MLSDecodeError` (undecodable) or
    :class:`MLSValidationError` (a rule broken), naming what was wrong.
    """
    info = parse_key_package(key_package)
    if info.leaf.lifetime != MAX_LIFETIME:
        raise MLSValidationError(
            f"key package lifetime must be not_before=0, not_after=2**64-1, got {info.leaf.lifetime}"
        )
    if not verify_with_label(info.leaf.signature_key, b"LeafNodeTBS", info.leaf.tbs, info.leaf.signature):
        raise MLSValidationError("key package leaf node signature does not verify with its signature key")
    if not verify_with_label(info.leaf.signature_key, b"KeyPackageTBS", info.tbs, info.signature):
        raise MLSValidationError("key package signature does not verify with its leaf's signature key")
    return info


def _ref_hash(label: bytes, value: bytes) -> bytes:
    return hashlib.sha256(vec(label) + vec(value)).digest()


def proposal_ref(public_message: bytes) -> bytes:
    """The ProposalRef of a proposal sent as an MLSMessage(PublicMessage) by an external sender.

    It is RefHash over the AuthenticatedContent (wire format, content, auth data), which for an
    external sender's PublicMessage is the message without its 2-byte protocol version.
    """
    return _ref_hash(b"MLS 1.0 Proposal Reference", public_message[2:])


@dataclass(frozen=True, slots=True)
class ParsedCommit:
    """What the server reads from a member's op 28: the commit's framing and where the welcome is.

    ``path_leaf`` is the committer's new leaf node when the commit carries an update path.
    """

    commit: bytes
    welcome: bytes | None
    group_id: bytes
    epoch: int
    sender_leaf: int
    proposal_refs: tuple[bytes, ...]
    inline_proposal_types: tuple[int, ...]
    has_path: bool
    path_leaf: LeafNodeInfo | None = None


def _skip_proposal(r: _Reader) -> int:
    kind = r.uint(2)
    if kind == PROPOSAL_ADD:
        r.take(4)  # version, suite
        r.vec()
        _read_leaf_node(r)
        r.vec()
        r.vec()
    elif kind == PROPOSAL_UPDATE:
        _read_leaf_node(r)
    elif kind == PROPOSAL_REMOVE:
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
    if version != MLS10 or wire != WIRE_PUBLIC_MESSAGE:
        raise MLSDecodeError(
            f"commit must start with version 1 and wire format 1 (public message), got {version} and {wire}"
        )
    group_id = r.vec()
    epoch = r.uint(8)
    sender_type = r.uint(1)
    if sender_type != SENDER_MEMBER:
        raise MLSDecodeError(f"commit sender type must be 1 (member), got {sender_type}")
    sender_leaf = r.uint(4)
    r.vec()  # authenticated_data
    content_type = r.uint(1)
    if content_type != CONTENT_COMMIT:
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
    path_leaf = None
    if present == 1:
        path_leaf = _read_leaf_node(r)
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
        if len(rest) < 4 or (rest[:2] != struct.pack(">H", CIPHERSUITE_P256)
                             and struct.unpack_from(">HH", rest) != (MLS10, WIRE_WELCOME)):
            raise MLSDecodeError(
                f"the bytes after the commit must be a Welcome for cipher suite {CIPHERSUITE_P256}, "
                f"got {rest[:4].hex()}..."
            )
        welcome = rest
    return ParsedCommit(
        commit, welcome, group_id, epoch, sender_leaf, tuple(refs), tuple(inline), present == 1, path_leaf
    )


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
            builtin = P256SigningKey()
            self._sign_bytes: Callable[[bytes], bytes] = builtin.sign
            self.public_key = builtin.public_key
        else:
            try:
                from cryptography.hazmat.primitives import hashes, serialization
                from cryptography.hazmat.primitives.asymmetric import ec
            except ImportError:
                raise ValueError("a signing_key other than None needs the cryptography package") from None
            if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or signing_key.curve.name != "secp256r1":
                raise ValueError(f"signing_key must be None or a SECP256R1 EllipticCurvePrivateKey, got {signing_key!r}")
            algorithm = ec.ECDSA(hashes.SHA256())
            key = signing_key
            self._sign_bytes = lambda data: key.sign(data, algorithm)
            self.public_key = signing_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        self.identity = bytes(identity)

    def __repr__(self) -> str:
        return f"DaveExternalSender(public_key={self.public_key[:8].hex()}...)"

    @property
    def payload(self) -> bytes:
        """The op 25 payload: ``ExternalSender{signature_key<V>, Credential{basic, identity<V>}}``."""
        return vec(self.public_key) + struct.pack(">H", CREDENTIAL_BASIC) + vec(self.identity)

    def _sign(self, label: bytes, content: bytes) -> bytes:
        return self._sign_bytes(_sign_content(label, content))

    def _proposal_message(self, group_id: bytes, epoch: int, proposal: bytes) -> bytes:
        content = (
            vec(group_id)
            + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)  # sender_index 0: the only external sender
            + vec(b"")  # authenticated_data
            + bytes((CONTENT_PROPOSAL,))
            + proposal
        )
        framing = struct.pack(">HH", MLS10, WIRE_PUBLIC_MESSAGE)
        # FramedContentTBS for an external sender has no GroupContext.
        signature = self._sign(b"FramedContentTBS", framing + content)
        # An external sender's PublicMessage has no confirmation tag and no membership tag.
        return framing + content + vec(signature)

    def propose_add(self, group_id: bytes, epoch: int, key_package: bytes) -> bytes:
        """An MLSMessage carrying an Add proposal of ``key_package`` for ``group_id`` at ``epoch``."""
        return self._proposal_message(group_id, epoch, struct.pack(">H", PROPOSAL_ADD) + bytes(key_package))

    def propose_remove(self, group_id: bytes, epoch: int, leaf_index: int) -> bytes:
        """An MLSMessage carrying a Remove proposal of the member at ``leaf_index``."""
        return self._proposal_message(group_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf_index))


def proposals_append_payload(messages: list[bytes]) -> bytes:
    """The proposals of op 27 ``append`` (after the operation byte): ``MLSMessage proposal_messages<V>``."""
    return vec(b"".join(messages))


def proposals_revoke_payload(refs: list[bytes]) -> bytes:
    """The proposals of op 27 ``revoke``: ``ProposalRef proposal_refs<V>``."""
    return vec(b"".join(vec(ref) for ref in refs))
