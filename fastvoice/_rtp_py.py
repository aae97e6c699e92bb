"""Pure-Python twin of the packet core: RTP packing, transport encryption, SSRC dispatch.

Sans-I/O: bytes in, bytes or packets out; no socket, clock or logging (the router and the
send loop that meet sockets are the I/O edge, ``fastvoice._rtp_edge_py``).

This module is the typed source of truth for the API; ``fastvoice._rtp_c`` is its
compiled twin and must behave identically, byte for byte.  The crypto goes
through ``nacl.bindings`` (libsodium bundled in PyNaCl >= 1.6).
"""

from __future__ import annotations

import os
import struct

import nacl.bindings as _nb
from nacl.exceptions import CryptoError

from . import _rtp_common as common
from ._cpu import aes256gcm_available
from ._rtp_common import DispatchOutcome
from ._rtp_py_ssrc import SSRCEntry, SSRCTable
from .encryption import EncryptionMode
from .errors import DecryptionFailedError

__all__ = [
    "IMPLEMENTATION",
    "DispatchOutcome",
    "Packet",
    "Packetizer",
    "Depacketizer",
    "SSRCEntry",
    "SSRCTable",
    "aes256gcm_available",
]

IMPLEMENTATION = "py"

# Looked up at call time so tests can make the suffix mode's nonce deterministic.
_urandom = os.urandom

_HEADER = struct.Struct(">BBHII")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PREAMBLE = struct.Struct(">HH")
_ZERO20 = bytes(20)
_ZERO8 = bytes(8)
_ZERO12 = bytes(12)
_ROUTED, _UNMAPPED, _DUPLICATE, _NOT_AUDIO = DispatchOutcome


class Packet:
    """A received voice packet (the seed's ``Packet`` plus what a receiver needs).

    ``opus`` is the payload after transport decryption with the extension body and
    RTP padding removed (an Opus frame, or a DAVE frame in an end-to-end encrypted
    call).  ``extension_profile`` is ``None`` when the packet carried no header
    extension; otherwise ``extension`` holds the decrypted extension body.
    ``user_id`` is set by :meth:`Depacketizer.dispatch` (``None`` for an unmapped SSRC);
    it is routing information and not part of packet equality.
    """

    __slots__ = (
        "_sequence",
        "_timestamp",
        "_ssrc",
        "opus",
        "_marker",
        "_payload_type",
        "csrcs",
        "extension_profile",
        "extension",
        "user_id",
    )

    def __init__(
        self,
        sequence: int,
        timestamp: int,
        ssrc: int,
        opus: bytes,
        marker: bool = False,
        payload_type: int = 0x78,
        csrcs: tuple[int, ...] = (),
        extension_profile: int | None = None,
        extension: bytes = b"",
        user_id: int | None = None,
    ) -> None:
        self._sequence = common.check_uint("sequence", sequence, 16)
        self._timestamp = common.check_uint("timestamp", timestamp, 32)
        self._ssrc = common.check_uint("ssrc", ssrc, 32)
        self.opus = opus
        self._marker = bool(marker)
        self._payload_type = common.check_uint("payload_type", payload_type, 7)
        self.csrcs = tuple(csrcs)
        self.extension_profile = extension_profile
        self.extension = extension
        self.user_id = user_id

    @classmethod
    def _from_wire(
        cls, sequence: int, timestamp: int, ssrc: int, opus: bytes, marker: bool, payload_type: int,
        csrcs: tuple[int, ...], extension_profile: int | None, extension: bytes,
    ) -> Packet:
        # Values parsed from a header are in range by construction: skip the checks.
        p = cls.__new__(cls)
        p._sequence, p._timestamp, p._ssrc, p.opus = sequence, timestamp, ssrc, opus
        p._marker, p._payload_type, p.csrcs = marker, payload_type, csrcs
        p.extension_profile, p.extension, p.user_id = extension_profile, extension, None
        return p

    @property
    def sequence(self) -> int:
        """RTP sequence number (u16)."""
        return self._sequence

    @sequence.setter
    def sequence(self, value: int) -> None:
        self._sequence = common.check_uint("sequence", value, 16)

    @property
    def timestamp(self) -> int:
        """RTP timestamp (u32, 48 kHz)."""
        return self._timestamp

    @timestamp.setter
    def timestamp(self, value: int) -> None:
        self._timestamp = common.check_uint("timestamp", value, 32)

    @property
    def ssrc(self) -> int:
        """The sender's SSRC."""
        return self._ssrc

    @ssrc.setter
    def ssrc(self, value: int) -> None:
        self._ssrc = common.check_uint("ssrc", value, 32)

    @property
    def marker(self) -> bool:
        """The RTP marker bit."""
        return self._marker

    @marker.setter
    def marker(self, value: bool) -> None:
        self._marker = bool(value)

    @property
    def payload_type(self) -> int:
        """The RTP payload type (0x78 for Opus)."""
        return self._payload_type

    @payload_type.setter
    def payload_type(self, value: int) -> None:
        self._payload_type = common.check_uint("payload_type", value, 7)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return (
            self.sequence == other.sequence
            and self.timestamp == other.timestamp
            and self.ssrc == other.ssrc
            and self.opus == other.opus
            and self.marker == other.marker
            and self.payload_type == other.payload_type
            and self.csrcs == other.csrcs
            and self.extension_profile == other.extension_profile
            and self.extension == other.extension
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return common.packet_repr(self)


class Packetizer:
    """Builds encrypted RTP voice packets for one SSRC.

    ``packetize(opus)`` returns header + ciphertext + tag + nonce suffix as one
    ``bytes`` object and then advances ``sequence`` (+1, wraps at 2**16),
    ``timestamp`` (+960, wraps at 2**32) and the ``nonce`` counter (+1, wraps at
    2**32).  All three are readable and settable, so a stream can continue across
    reconnects, and a sender can move ``timestamp`` on across a pause.
    ``packetize(opus, marker=True)`` sets the RTP marker bit of that one packet (the
    first packet of a talkspurt: byte 1 is ``0xF8`` instead of ``0x78``).

    Modes: ``aead_aes256_gcm_rtpsize``, ``aead_xchacha20_poly1305_rtpsize`` and the
    seed's three ``xsalsa20_poly1305*`` modes.
    """

    __slots__ = ("_ssrc", "_mode", "_mode_no", "_key", "_sequence", "_timestamp", "_nonce", "_wiped")

    def __init__(
        self,
        ssrc: int,
        mode: EncryptionMode | str,
        secret_key: bytes,
        *,
        sequence: int = 0,
        timestamp: int = 0,
        nonce: int = 0,
    ) -> None:
        self._ssrc = common.check_uint("ssrc", ssrc, 32)
        self._mode, self._mode_no = common.resolve_mode(mode, aes256gcm_available())
        self._key = common.check_key(secret_key)
        self._sequence = common.check_uint("sequence", sequence, 16)
        self._timestamp = common.check_uint("timestamp", timestamp, 32)
        self._nonce = common.check_uint("nonce", nonce, 32)
        self._wiped = False

    def wipe(self) -> None:
        """Zero the secret key now; later ``packetize`` calls raise.

        Both twins hold a private copy of the key (never the caller's object) and overwrite
        it with zeros here, and when the object is freed.
        """
        common.scrub(self._key)
        self._wiped = True

    def __del__(self) -> None:
        key = getattr(self, "_key", None)
        if key is not None:
            common.scrub(key)

    @property
    def wiped(self) -> bool:
        """True after :meth:`wipe`."""
        return self._wiped

    @property
    def ssrc(self) -> int:
        """The SSRC written into every packet (from Ready)."""
        return self._ssrc

    @property
    def mode(self) -> EncryptionMode:
        """The transport encryption mode."""
        return self._mode

    @property
    def sequence(self) -> int:
        """RTP sequence number of the next packet."""
        return self._sequence

    @sequence.setter
    def sequence(self, value: int) -> None:
        self._sequence = common.check_uint("sequence", value, 16)

    @property
    def timestamp(self) -> int:
        """RTP timestamp of the next packet."""
        return self._timestamp

    @timestamp.setter
    def timestamp(self, value: int) -> None:
        self._timestamp = common.check_uint("timestamp", value, 32)

    @property
    def nonce(self) -> int:
        """Nonce counter of the next packet (counter modes)."""
        return self._nonce

    @nonce.setter
    def nonce(self, value: int) -> None:
        self._nonce = common.check_uint("nonce", value, 32)

    def packetize(self, opus: bytes, *, marker: bool = False) -> bytes:
        """Encrypt ``opus`` into a complete RTP datagram and advance the counters.

        ``marker`` sets the RTP marker bit of this packet (the first of a talkspurt).
        """
        if not isinstance(opus, bytes):
            opus = bytes(memoryview(opus))
        if self._wiped:
            raise common.wiped_error("Packetizer")
        if len(opus) > common.MAX_PAYLOAD:
            raise ValueError(f"payload of {len(opus)} bytes exceeds the maximum of {common.MAX_PAYLOAD}")
        header = _HEADER.pack(0x80, 0xF8 if marker else 0x78, self._sequence, self._timestamp, self._ssrc)
        mode = self._mode_no
        if mode == common.MODE_AES256GCM_RTPSIZE:
            suffix = _U32.pack(self._nonce)
            body = _nb.crypto_aead_aes256gcm_encrypt(opus, header, suffix + _ZERO8, self._key)
        elif mode == common.MODE_XCHACHA20_RTPSIZE:
            suffix = _U32.pack(self._nonce)
            body = _nb.crypto_aead_xchacha20poly1305_ietf_encrypt(opus, header, suffix + _ZERO20, self._key)
        elif mode == common.MODE_XSALSA20:
            suffix = b""
            body = _nb.crypto_secretbox_easy(opus, header + _ZERO12, self._key)
        elif mode == common.MODE_XSALSA20_SUFFIX:
            suffix = _urandom(24)
            body = _nb.crypto_secretbox_easy(opus, suffix, self._key)
        else:  # MODE_XSALSA20_LITE
            suffix = _U32.pack(self._nonce)
            body = _nb.crypto_secretbox_easy(opus, suffix + _ZERO20, self._key)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + 960) & 0xFFFFFFFF
        self._nonce = (self._nonce + 1) & 0xFFFFFFFF
        return header + body + suffix

    def __repr__(self) -> str:
        return f"Packetizer(ssrc={self._ssrc}, mode={self._mode.value!r}, sequence={self._sequence})"


class Depacketizer:
    """Parses and decrypts received RTP voice packets.

    ``depacketize(datagram)`` returns a :class:`Packet`, ``None`` for datagrams that
    are not RTP audio (RTCP, IP discovery replies, other payload types, anything
    shorter than an RTP header), and raises :class:`DecryptionFailedError` for a
    forged, truncated or wrongly keyed packet.  It raises nothing else, whatever
    the bytes.
    """

    __slots__ = ("_mode", "_mode_no", "_key", "_wiped")

    def __init__(self, mode: EncryptionMode | str, secret_key: bytes) -> None:
        self._mode, self._mode_no = common.resolve_mode(mode, aes256gcm_available())
        self._key = common.check_key(secret_key)
        self._wiped = False

    def wipe(self) -> None:
        """Zero the secret key now; later calls raise (see :meth:`Packetizer.wipe`)."""
        common.scrub(self._key)
        self._wiped = True

    def __del__(self) -> None:
        key = getattr(self, "_key", None)
        if key is not None:
            common.scrub(key)

    @property
    def wiped(self) -> bool:
        """True after :meth:`wipe`."""
        return self._wiped

    def dispatch(self, datagram: bytes, table: SSRCTable) -> Packet | None:
        """Depacketize ``datagram`` and route it through ``table`` in one call.

        Returns the :class:`Packet` with ``user_id`` set from the table (``None`` for an
        SSRC not in it), or ``None`` when the datagram is not RTP audio or repeats a
        packet already dispatched for its SSRC (counted in ``SSRCEntry.duplicates``).
        Raises :class:`DecryptionFailedError` like :meth:`depacketize`.
        :meth:`dispatch_outcome` also says which of these happened.
        """
        if not isinstance(table, SSRCTable):
            raise TypeError(f"table must be an SSRCTable, got {type(table).__name__}")
        return self.dispatch_outcome(datagram, table)[1]

    def dispatch_outcome(self, datagram: bytes, table: SSRCTable | None) -> tuple[DispatchOutcome, Packet | None]:
        """:meth:`dispatch`, saying what happened: ``(outcome, packet or None)``.

        ``(ROUTED, packet)`` for a mapped SSRC (``user_id`` set), ``(UNMAPPED, packet)`` for an
        SSRC not in ``table``, ``(DUPLICATE, None)`` for a repeat and ``(NOT_AUDIO, None)`` for
        anything that is not RTP audio (see :class:`DispatchOutcome`). The datagram is
        decrypted once, whatever the outcome. With ``table`` ``None`` nothing is routed: audio
        comes back ``(UNMAPPED, packet)`` with ``user_id`` ``None`` and no duplicate window
        applies (the receive router's route without a table). This is the one route of a
        datagram: :class:`~fastvoice.rtp.DatagramRouter` calls it for each one.
        """
        # The class is compared first, so a valid table costs no extra call per datagram.
        if table is not None and table.__class__ is not SSRCTable and not isinstance(table, SSRCTable):
            raise TypeError(f"table must be an SSRCTable or None, got {type(table).__name__}")
        packet = self._depacketize(datagram)
        if packet is None:
            return _NOT_AUDIO, None
        if table is None:
            return _UNMAPPED, packet
        entry = table._entries.get(packet.ssrc)
        if entry is None:
            return _UNMAPPED, packet
        table._clock += 1
        entry._active = table._clock
        if not entry.accept(packet.sequence):
            return _DUPLICATE, None
        packet.user_id = entry.user_id
        return _ROUTED, packet

    @property
    def mode(self) -> EncryptionMode:
        """The transport encryption mode."""
        return self._mode

    def _depacketize(self, datagram: bytes) -> Packet | None:
        """Return the :class:`Packet` in ``datagram``, or ``None`` if it is not RTP audio."""
        data = datagram if isinstance(datagram, bytes) else bytes(memoryview(datagram))
        if self._wiped:
            raise common.wiped_error("Depacketizer")
        n = len(data)
        if n < 12:
            return None
        b0 = data[0]
        b1 = data[1]
        if b0 >> 6 != 2 or 200 <= b1 <= 204 or (b1 & 0x7F) != 0x78:
            return None
        cc = b0 & 0x0F
        has_ext = b0 & 0x10
        _, _, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        mode = self._mode_no
        key = self._key
        profile = None
        ext_len = 0
        if mode <= common.MODE_XCHACHA20_RTPSIZE:
            # Header (fixed part, CSRCs, extension preamble) is the AAD.
            hlen = 12 + 4 * cc
            if has_ext:
                if n < hlen + 4:
                    raise DecryptionFailedError("truncated packet: header extension preamble missing")
                profile, words = _PREAMBLE.unpack_from(data, hlen)
                ext_len = words * 4
                hlen += 4
            if n < hlen + common.TAG_SIZE + 4:
                raise DecryptionFailedError("truncated packet: shorter than header + tag + nonce")
            suffix = data[-4:]
            try:
                if mode == common.MODE_AES256GCM_RTPSIZE:
                    plain = _nb.crypto_aead_aes256gcm_decrypt(data[hlen:-4], data[:hlen], suffix + _ZERO8, key)
                else:
                    plain = _nb.crypto_aead_xchacha20poly1305_ietf_decrypt(
                        data[hlen:-4], data[:hlen], suffix + _ZERO20, key
                    )
            except CryptoError:
                raise DecryptionFailedError("authentication failed") from None
            csrcs = struct.unpack_from(f">{cc}I", data, 12) if cc else ()
            start = 0
        else:
            # Legacy secretbox modes: only the fixed 12 bytes are in the clear.
            if mode == common.MODE_XSALSA20:
                if n < 12 + common.TAG_SIZE:
                    raise DecryptionFailedError("truncated packet: shorter than header + tag")
                nonce = data[:12] + _ZERO12
                box = data[12:]
            elif mode == common.MODE_XSALSA20_SUFFIX:
                if n < 12 + common.TAG_SIZE + 24:
                    raise DecryptionFailedError("truncated packet: shorter than header + tag + nonce")
                nonce = data[-24:]
                box = data[12:-24]
            else:
                if n < 12 + common.TAG_SIZE + 4:
                    raise DecryptionFailedError("truncated packet: shorter than header + tag + nonce")
                nonce = data[-4:] + _ZERO20
                box = data[12:-4]
            try:
                plain = _nb.crypto_secretbox_open_easy(box, nonce, key)
            except CryptoError:
                raise DecryptionFailedError("authentication failed") from None
            start = 4 * cc
            if len(plain) < start:
                raise DecryptionFailedError("malformed packet: CSRC list longer than the packet")
            csrcs = struct.unpack_from(f">{cc}I", plain, 0)
            if has_ext:
                if len(plain) < start + 4:
                    raise DecryptionFailedError("malformed packet: header extension preamble missing")
                profile, words = _PREAMBLE.unpack_from(plain, start)
                ext_len = words * 4
                start += 4
        end = len(plain)
        if end - start < ext_len:
            raise DecryptionFailedError("malformed packet: header extension longer than the packet")
        extension = plain[start : start + ext_len]
        start += ext_len
        if b0 & 0x20:
            if end == start:
                raise DecryptionFailedError("malformed packet: padding bit set on an empty payload")
            pad = plain[end - 1]
            if pad == 0 or pad > end - start:
                raise DecryptionFailedError(f"malformed packet: invalid padding count {pad}")
            end -= pad
        return Packet._from_wire(
            sequence, timestamp, ssrc, plain[start:end], bool(b1 & 0x80), b1 & 0x7F, csrcs, profile, extension
        )

    # The public name; dispatch and the router call ``_depacketize``, so a subclass that
    # wraps ``depacketize`` does not change what they do.
    depacketize = _depacketize

    def __repr__(self) -> str:
        return f"Depacketizer(mode={self._mode.value!r})"
