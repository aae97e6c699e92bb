"""Pure-Python twin of the local server's media engine (see ``fastvoice.testing._media_engine``).

The engine forwards the common case of the server's UDP path: an RTP audio datagram in
an AEAD ``_rtpsize`` mode with a plain 12-byte header, from a known session at its known
address, in a call the engine can serve. It decrypts it, counts or records it, and
re-encrypts it for every other member of the call with that member's key and mode (the
sender's SSRC, sequence, timestamp and marker; a nonce counter per recipient). Anything
else is handed back to the server's Python path, which handles it as before.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Hashable, Mapping
from typing import Any

import nacl._sodium
import nacl.bindings as _nb
from nacl.exceptions import CryptoError

__all__ = ["IMPLEMENTATION", "MediaEngine", "RECORDING_MODES", "NONCE_START", "MAX_FAST_DATAGRAM"]

IMPLEMENTATION = "py"
#: ``off``: forward only; ``counts``: count packets per SSRC; ``full``: hand every packet back for recording.
RECORDING_MODES = ("off", "counts", "full")
#: First nonce of each recipient's counter: far from the core Packetizers' counters (which
#: start at 0) that the server's Python path uses for the same keys.
NONCE_START = 0x80000000
#: Longest datagram the engine forwards itself (longer ones take the Python path).
MAX_FAST_DATAGRAM = 2048
#: Datagrams read from the socket per call of :meth:`MediaEngine.pump`, at most.
PUMP_LIMIT = 1024

_AES = "aead_aes256_gcm_rtpsize"
_XCHACHA = "aead_xchacha20_poly1305_rtpsize"
_MIN_DATAGRAM = 12 + 16 + 4
_SILENCE = b"\xf8\xff\xfe"
_ZEROS8 = bytes(8)
_ZEROS20 = bytes(20)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def aes_available() -> bool:
    """True when libsodium can use AES-256-GCM on this CPU."""
    return bool(nacl._sodium.lib.crypto_aead_aes256gcm_is_available())


def _is_dave_frame(p: bytes) -> bool:
    n = len(p)
    return n >= 13 and p[n - 1] == 0xFA and p[n - 2] == 0xFA and 12 <= p[n - 3] <= n


def check_recording(value: object) -> str:
    """Validate a recording mode name."""
    if value not in RECORDING_MODES:
        raise ValueError(f"media recording must be one of {', '.join(RECORDING_MODES)}, got {str(value)[:60]!r}")
    return str(value)


class _Session:
    __slots__ = ("ssrc", "owner", "call", "aes", "key", "address", "speaking", "dave", "count", "heard",
                 "handed_back", "nonce", "foreign")

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.owner: Any = None
        self.call: Any = None
        self.aes = False
        self.key = b""
        self.address: tuple[str, int] | None = None
        self.speaking = False
        self.dave = False
        self.count = 0
        self.heard = -1
        self.handed_back = 0  # the batch in which a datagram of this SSRC went to the Python path
        self.nonce = NONCE_START
        self.foreign = False


class _Call:
    __slots__ = ("members", "foreign", "plain")

    def __init__(self) -> None:
        self.members: list[_Session] = []
        self.foreign = 0  # members in a mode the engine does not serve
        self.plain = 0  # members that cannot decrypt DAVE frames


class MediaEngine:
    """The server's audio forwarding fast path (pure twin; same API as the compiled one).

    ``dave_groups`` is the server's live mapping of call -> DAVE group: a plaintext audio
    packet from a call in it, and a DAVE frame in a call with a member that cannot decrypt
    DAVE, go to the Python path (which checks and counts them exactly).
    """

    def __init__(self, dave_groups: Mapping[Any, Any] | None = None, recording: str = "full") -> None:
        self._groups: Mapping[Any, Any] = dave_groups if dave_groups is not None else {}
        self._recording = check_recording(recording)
        self._sessions: dict[int, _Session] = {}
        self._all: dict[int, _Session] = {}
        self._calls: dict[Hashable, _Call] = {}
        self._gen = 0
        self._batch = 0
        self._heard: list[Any] = []
        self._records: list[tuple[Any, ...]] = []
        self._aes_ok = aes_available()
        #: Datagrams forwarded by the engine (received and accepted).
        self.forwarded = 0
        #: Datagrams the engine sent to recipients.
        self.sent = 0
        #: Datagrams the socket refused to send (buffer full, or an error).
        self.send_drops = 0

    @property
    def recording(self) -> str:
        """``off``, ``counts`` or ``full`` (see :data:`RECORDING_MODES`)."""
        return self._recording

    @recording.setter
    def recording(self, value: str) -> None:
        self._recording = check_recording(value)

    # -- the session table -----------------------------------------------------------

    def set_session(self, ssrc: int, owner: Any, call: Hashable, mode: str | None, key: bytes | None,
                    address: tuple[str, int] | None, *, speaking: bool, dave: bool) -> None:
        """Add or update the session that owns ``ssrc``: its call, mode, 32-byte key, UDP address,
        whether it has sent Speaking and whether it can decrypt DAVE frames. A mode the engine
        does not serve (or no key yet) puts the session's whole call on the Python path."""
        session = self._sessions.get(ssrc)
        if session is None:
            session = self._all.get(ssrc)
            if session is None or session.owner is not owner:
                session = _Session(ssrc)
            self._all[ssrc] = session
            self._sessions[ssrc] = session
        else:
            self._leave(session)
        session.owner = owner
        session.call = call
        foreign = key is None or len(key) != 32 or mode not in (_AES, _XCHACHA) or (mode == _AES and not self._aes_ok)
        session.foreign = foreign
        session.aes = mode == _AES
        session.key = b"" if foreign else bytes(key)  # type: ignore[arg-type]
        session.address = None if address is None else (str(address[0]), int(address[1]))
        session.speaking = bool(speaking)
        session.dave = bool(dave)
        entry = self._calls.get(call)
        if entry is None:
            entry = self._calls[call] = _Call()
        entry.members.append(session)
        entry.foreign += foreign
        entry.plain += not session.dave

    def remove_session(self, ssrc: int) -> None:
        """Take ``ssrc`` out of the table and its call (its count stays readable)."""
        session = self._sessions.pop(ssrc, None)
        if session is not None:
            self._leave(session)
            session.key = b""
            session.address = None

    def _leave(self, session: _Session) -> None:
        entry = self._calls.get(session.call)
        if entry is None or session not in entry.members:
            return
        entry.members.remove(session)
        entry.foreign -= session.foreign
        entry.plain -= not session.dave
        if not entry.members:
            del self._calls[session.call]

    def count(self, ssrc: int) -> int:
        """Audio packets of ``ssrc`` the engine accepted while recording was ``counts`` or ``full``."""
        session = self._all.get(ssrc)
        return 0 if session is None else session.count

    def take(self) -> tuple[list[Any], list[tuple[Any, ...]]]:
        """Return and clear what the engine gathered since the last call: the owners of the
        sessions heard (each once) and, with ``full`` recording, one
        ``(owner, ssrc, sequence, timestamp, opus, marker, address)`` per accepted packet."""
        heard, records = self._heard, self._records
        self._heard, self._records = [], []
        self._gen += 1
        return heard, records

    # -- datagrams -------------------------------------------------------------------

    def handle(self, data: bytes, address: tuple[str, int]) -> list[tuple[tuple[str, int], bytes]] | None:
        """Process one datagram without a socket: the datagrams to send, as ``(address, bytes)``,
        or ``None`` when ``data`` belongs to the server's Python path."""
        self._batch += 1
        return self._process(bytes(data), (str(address[0]), int(address[1])))

    def pump(self, fd: int, data: bytes, address: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
        """Process ``data`` (already read), then read and process what waits on the socket
        ``fd`` (up to :data:`PUMP_LIMIT`), sending the forwarded datagrams on it. Returns the
        datagrams for the Python path, as ``(data, address)``, in arrival order. Within one
        call, once a datagram of an SSRC goes to the Python path, the later ones of that SSRC
        go there too: the Python path handles them after the engine's, and the members and the
        recordings must not see one stream out of order."""
        self._batch += 1
        # A socket object over the caller's descriptor for this call only (no duplicate kept).
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=fd)
        try:
            slow: list[tuple[bytes, tuple[str, int]]] = []
            self._one(sock, bytes(data), (str(address[0]), int(address[1])), slow)
            for _ in range(PUMP_LIMIT - 1):
                try:
                    data, address = sock.recvfrom(65536, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno == errno.ECONNREFUSED:  # a pending ICMP error from an earlier send
                        continue
                    raise
                self._one(sock, data, address, slow)
            return slow
        finally:
            sock.detach()

    def _one(self, sock: socket.socket, data: bytes, address: tuple[str, int],
             slow: list[tuple[bytes, tuple[str, int]]]) -> None:
        out = self._process(data, address)
        if out is None:
            slow.append((data, address))
            return
        for target, datagram in out:
            try:
                sock.sendto(datagram, target)
            except OSError:
                self.send_drops += 1
            else:
                self.sent += 1

    def close(self) -> None:
        """Forget every key (the engine holds no socket of its own)."""
        for session in self._all.values():
            session.key = b""
        self._sessions.clear()
        self._calls.clear()

    def _process(self, data: bytes, address: tuple[str, int]) -> list[tuple[tuple[str, int], bytes]] | None:
        n = len(data)
        if n < _MIN_DATAGRAM or n > MAX_FAST_DATAGRAM or data[0] != 0x80 or (data[1] & 0x7F) != 0x78:
            return None
        sender = self._sessions.get(int.from_bytes(data[8:12], "big"))
        if sender is None:
            return None
        out = self._forward(sender, data, address)
        if out is None:
            # The rest of this SSRC's datagrams in the batch follow it, so that neither the
            # members nor the recordings see them out of order.
            sender.handed_back = self._batch
        return out

    def _forward(self, sender: _Session, data: bytes, address: tuple[str, int]) -> list[tuple[tuple[str, int], bytes]] | None:
        if sender.handed_back == self._batch or sender.foreign or not sender.speaking or sender.address != address:
            return None
        call = self._calls[sender.call]
        if call.foreign:
            return None
        header = data[:12]
        try:
            if sender.aes:
                opus = _nb.crypto_aead_aes256gcm_decrypt(data[12:-4], header, data[-4:] + _ZEROS8, sender.key)
            else:
                opus = _nb.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    data[12:-4], header, data[-4:] + _ZEROS20, sender.key
                )
        except CryptoError:
            return None
        if _is_dave_frame(opus):
            if call.plain - (not sender.dave) > 0 and self._groups:
                return None  # a member without DAVE: the Python path withholds and counts
        elif opus != _SILENCE and self._groups and sender.call in self._groups:
            return None  # plaintext in a DAVE call: the Python path checks and counts it
        self.forwarded += 1
        recording = self._recording
        if recording != "off":
            sender.count += 1
            if recording == "full":
                self._records.append((
                    sender.owner, sender.ssrc, (data[2] << 8) | data[3], int.from_bytes(data[4:8], "big"),
                    opus, bool(data[1] & 0x80), sender.address,
                ))
        if sender.heard != self._gen:
            sender.heard = self._gen
            self._heard.append(sender.owner)
        out: list[tuple[tuple[str, int], bytes]] = []
        for member in call.members:
            if member is sender or member.address is None:
                continue
            nonce = member.nonce.to_bytes(4, "big")
            member.nonce = (member.nonce + 1) & 0xFFFFFFFF
            if member.aes:
                sealed = _nb.crypto_aead_aes256gcm_encrypt(opus, header, nonce + _ZEROS8, member.key)
            else:
                sealed = _nb.crypto_aead_xchacha20poly1305_ietf_encrypt(opus, header, nonce + _ZEROS20, member.key)
            out.append((member.address, header + sealed + nonce))
        return out
