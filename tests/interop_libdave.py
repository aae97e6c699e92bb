"""A voice client whose DAVE is Discord's own libdave (C++, through PyPI ``dave.py``): a test peer.

fastvoice's DAVE runs on ``davey`` (Rust/OpenMLS). To check that a fastvoice member and a
member built on libdave hear each other in one end-to-end encrypted call, this module is the
libdave member. Nothing in it comes from fastvoice: it speaks the voice gateway v8 with a
plain aiohttp websocket, does IP discovery, RTP and the AEAD transport encryption of
PROTOCOL.md section 3 itself (``cryptography``'s AES-GCM, PyNaCl's XChaCha20-Poly1305), and
runs the DAVE client state machine of PROTOCOL.md section 5 on libdave's primitives
(``Session``, ``Encryptor``, ``Decryptor``, key ratchets), with the timing libdave's own
reference client uses: receivers take a new epoch's key ratchets when the commit or welcome
is processed, the sender switches only when the gateway executes the transition (op 22).

It records what it heard, frame by frame, for the test to compare. A frame that no key
decrypts when it arrives is kept for a while and tried again whenever the key ratchets
change: one that decrypts then is marked ``early`` (a libdave client would have lost it: it
came before this member had its key), one that never does stays ``None`` in ``frames``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import dave
import nacl.bindings
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_log = logging.getLogger("tests.interop_libdave")

SILENCE = b"\xf8\xff\xfe"
AES_GCM = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
#: How long a frame that no key decrypts is kept for another try (libdave keeps old keys 10 s;
#: a new epoch's key comes within a round trip of the gateway).
RETRY_SECONDS = 2.0
#: Frames kept for another try, at most.
RETRY_FRAMES = 500


def displayable_code(data: bytes, length: int) -> str:
    """DAVE's displayable code (groups of 5 digits) from libdave's bytes, by dave.py's own function."""
    return dave.generate_displayable_code(data, length, 5)


class _Transport:
    """The UDP side: IP discovery, then RTP in and out with AEAD ``_rtpsize`` transport encryption."""

    def __init__(self, on_audio: Any) -> None:
        self._on_audio = on_audio
        self.transport: asyncio.DatagramTransport | None = None
        self.discovery: asyncio.Future[tuple[str, int]] | None = None
        self.ssrc = 0
        self.mode = ""
        self._key = b""
        self._nonce = 0
        self.sequence = secrets.randbelow(1 << 16)
        self.timestamp = secrets.randbelow(1 << 32)
        #: Datagrams that were not audio this member could read, by reason.
        self.ignored: dict[str, int] = {}

    # asyncio.DatagramProtocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) == 74 and data[:2] == b"\x00\x02":
            if self.discovery is not None and not self.discovery.done():
                address = data[8:72].split(b"\x00", 1)[0].decode("ascii")
                self.discovery.set_result((address, struct.unpack_from(">H", data, 72)[0]))
            return
        if len(data) < 12 or data[0] >> 6 != 2 or (data[1] & 0x7F) != 0x78 or not self._key:
            self._ignore("not RTP audio")
            return
        try:
            ssrc, sequence, opus = self._open(data)
        except Exception as exc:  # noqa: BLE001 - counted; the test asserts there is none
            self._ignore(f"transport decryption failed: {type(exc).__name__}")
            return
        self._on_audio(ssrc, sequence, opus)

    def error_received(self, exc: Exception) -> None:
        self._ignore(f"socket error {type(exc).__name__}")

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    # ---------------------------------------------------------------------------------

    def start(self, mode: str, key: bytes) -> None:
        self.mode = mode
        self._key = bytes(key)

    def _cipher(self, nonce4: bytes) -> tuple[Any, bytes]:
        if self.mode == AES_GCM:
            return "aes", nonce4 + bytes(8)
        return "xchacha", nonce4 + bytes(20)

    def _open(self, data: bytes) -> tuple[int, int, bytes]:
        """Transport-decrypt one RTP packet: (SSRC, sequence, payload without extension or padding)."""
        first = data[0]
        header_len = 12 + 4 * (first & 0x0F)
        extension_words = 0
        if first & 0x10:
            extension_words = struct.unpack_from(">H", data, header_len + 2)[0]
            header_len += 4  # only the extension's preamble is authenticated, not encrypted
        aad = data[:header_len]
        nonce4 = data[-4:]
        body = data[header_len:-4]
        kind, nonce = self._cipher(nonce4)
        if kind == "aes":
            plain = AESGCM(self._key).decrypt(nonce, body, aad)
        else:
            plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(body, aad, nonce, self._key)
        plain = plain[4 * extension_words:]
        if first & 0x20 and plain:
            plain = plain[: len(plain) - plain[-1]]
        sequence, _, ssrc = struct.unpack_from(">HII", data, 2)
        return ssrc, sequence, plain

    def send_audio(self, payload: bytes) -> None:
        """One RTP packet with ``payload``, transport-encrypted, then sequence and timestamp move on."""
        header = struct.pack(">BBHII", 0x80, 0x78, self.sequence, self.timestamp, self.ssrc)
        self._nonce = (self._nonce + 1) & 0xFFFFFFFF
        nonce4 = struct.pack(">I", self._nonce)
        kind, nonce = self._cipher(nonce4)
        if kind == "aes":
            sealed = AESGCM(self._key).encrypt(nonce, payload, header)
        else:
            sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(payload, header, nonce, self._key)
        assert self.transport is not None
        self.transport.sendto(header + sealed + nonce4)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 960) & 0xFFFFFFFF


@dataclass
class LibdaveStats:
    """What the member's DAVE side did, for the test's report."""

    key_packages: int = 0
    commits_sent: int = 0
    commits_processed: int = 0
    welcomes_processed: int = 0
    commits_ignored: int = 0
    invalid_commit_welcomes: int = 0
    transitions_executed: int = 0
    prepare_epochs: int = 0
    frames_encrypted: int = 0
    encrypt_failures: int = 0
    frames_decrypted: int = 0
    mls_failures: list[tuple[str, str]] = field(default_factory=list)


class LibdaveMember:
    """One voice connection whose DAVE is libdave: joins ``server``'s call as ``user_id``.

    ``await join()`` connects (websocket, UDP, Session Description); ``await play(frames)``
    sends Opus frames at 20 ms pacing (DAVE-encrypted with libdave), then five silence
    frames; ``frames[user_id]`` is every DAVE frame received from that user, decrypted by
    libdave, in arrival order; ``await close()`` leaves the call.
    """

    def __init__(self, server: Any, guild_id: int, channel_id: int, user_id: int, *, mode: str = AES_GCM) -> None:
        self.server = server
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.mode = mode
        self.stats = LibdaveStats()
        #: ``{user_id: [opus or None, ...]}``: every DAVE frame from that user in arrival order,
        #: decrypted by libdave (``None``: no key ever decrypted it).
        self.frames: dict[int, list[bytes | None]] = {}
        #: ``{user_id: {index, ...}}``: frames (indices in ``frames``) that no key decrypted on
        #: arrival but the next key ratchet did: they came before this member had the key.
        self.early: dict[int, set[int]] = {}
        #: ``{user_id: [sequence, ...]}``: the RTP sequence number of every audio packet from
        #: that user (DAVE and silence frames alike), in arrival order.
        self.sequences: dict[int, list[int]] = {}
        #: ``{user_id: count}``: exact silence frames received (they travel unencrypted).
        self.silence: dict[int, int] = {}
        #: What happened, in order: ``("frame", user_id, index, decrypted)`` per DAVE frame and
        #: ``("keys", transition_id)`` whenever a commit or welcome gave new receive ratchets.
        self.events: list[tuple[Any, ...]] = []
        #: Voice privacy codes, one per group state this member reached, in order.
        self.privacy_codes: list[str] = []
        #: Every DAVE op received, in order.
        self.dave_ops: list[int] = []
        self.protocol_version = 0
        self._retry: list[tuple[float, int, int, bytes]] = []
        self._ssrc_users: dict[int, int] = {}
        self._connected: set[int] = set()
        self._pending: dict[int, int] = {}
        self._session = dave.Session(self._mls_failure)
        self._encryptor = dave.Encryptor()
        self._decryptors: dict[int, Any] = {}
        self._udp = _Transport(self._on_audio)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._seq = -1
        self._described: asyncio.Future[None] | None = None

    # --- public -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether this member encrypts with a group key (the call is end-to-end encrypted for it)."""
        return self.protocol_version > 0 and self._encryptor.has_key_ratchet()

    @property
    def ssrc(self) -> int:
        return self._udp.ssrc

    @property
    def ignored_datagrams(self) -> dict[str, int]:
        return dict(self._udp.ignored)

    async def join(self, timeout: float = 10.0) -> None:
        """Connect to the voice server and wait for Session Description."""
        state, update = self.server.voice_updates(self.guild_id, self.user_id, self.channel_id)
        endpoint = update["endpoint"]
        url = endpoint if "://" in endpoint else f"wss://{endpoint}"
        loop = asyncio.get_running_loop()
        self._described = loop.create_future()
        self._http = aiohttp.ClientSession()
        context = self.server.ssl_context
        options = {"ssl": context} if context is not None else {}
        self._ws = await self._http.ws_connect(f"{url}/?v=8", **options)
        self._tasks.append(loop.create_task(self._read()))
        await self._send_json(0, {
            "server_id": str(self.guild_id),
            "user_id": str(self.user_id),
            "session_id": state["session_id"],
            "token": update["token"],
            "max_dave_protocol_version": dave.get_max_supported_protocol_version(),
        })
        await asyncio.wait_for(self._described, timeout)

    async def play(self, frames: list[bytes], silence_tail: int = 5) -> None:
        """Send ``frames`` (then ``silence_tail`` silence frames) at 20 ms pacing, as a client's audio loop."""
        await self._send_json(5, {"speaking": 1, "delay": 0, "ssrc": self.ssrc})
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, frame in enumerate(list(frames) + [SILENCE] * silence_tail):
            delay = start + 0.02 * index - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if frame == SILENCE:
                self._udp.send_audio(frame)
                continue
            sealed = self._encryptor.encrypt(dave.MediaType.audio, self.ssrc, frame)
            if sealed is None:
                self.stats.encrypt_failures += 1
                continue
            self.stats.frames_encrypted += 1
            self._udp.send_audio(bytes(sealed))
        await self._send_json(5, {"speaking": 0, "delay": 0, "ssrc": self.ssrc})

    async def verification_code(self, user_id: int) -> str | None:
        """The 45-digit verification code of this member and ``user_id`` (libdave's pairwise fingerprint)."""
        fingerprint = await self._session.get_pairwise_fingerprint(0, str(user_id))
        if not fingerprint:
            return None
        return displayable_code(bytes(fingerprint), 45)

    async def close(self) -> None:
        """Leave the call (websocket close 1000) and release everything."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._udp.transport is not None:
            self._udp.transport.close()
        self._retry.clear()

    # --- gateway ----------------------------------------------------------------------

    async def _send_json(self, op: int, d: Any) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"op": op, "d": d}))

    async def _send_binary(self, op: int, payload: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(bytes([op]) + payload)

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                message = json.loads(msg.data)
                if message.get("seq") is not None:
                    self._seq = message["seq"]
                await self._on_json(message["op"], message.get("d"))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                data = msg.data
                self._seq, op = struct.unpack_from(">HB", data)
                await self._on_binary(op, bytes(data[3:]))

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._send_json(3, {"t": int(time.time() * 1000), "seq_ack": self._seq})

    async def _on_json(self, op: int, d: Any) -> None:
        loop = asyncio.get_running_loop()
        if op == 8:
            self._tasks.append(loop.create_task(self._heartbeat(d["heartbeat_interval"] / 1000)))
        elif op == 2:
            await self._on_ready(d)
        elif op == 4:
            self._udp.start(d["mode"], bytes(d["secret_key"]))
            await self._on_protocol(int(d.get("dave_protocol_version") or 0))
            if self._described is not None and not self._described.done():
                self._described.set_result(None)
        elif op == 5:
            self._ssrc_users[int(d["ssrc"])] = int(d["user_id"])
        elif op == 11:
            self._connected.update(int(u) for u in d["user_ids"])
        elif op == 13:
            gone = int(d["user_id"])
            self._connected.discard(gone)
            self._decryptors.pop(gone, None)
        elif op in (21, 22, 24):
            self.dave_ops.append(op)
            if op == 21:
                await self._prepare_transition(int(d["transition_id"]), int(d["protocol_version"]))
            elif op == 22:
                self._execute_transition(int(d["transition_id"]))
            else:
                self.stats.prepare_epochs += 1
                if int(d["epoch"]) == 1:
                    await self._on_protocol(int(d["protocol_version"]))

    async def _on_ready(self, d: Any) -> None:
        loop = asyncio.get_running_loop()
        self._udp.ssrc = int(d["ssrc"])
        self._encryptor.assign_ssrc_to_codec(self._udp.ssrc, dave.Codec.opus)
        await loop.create_datagram_endpoint(lambda: self._udp, remote_addr=(d["ip"], int(d["port"])))
        assert self._udp.transport is not None
        self._udp.discovery = loop.create_future()
        request = struct.pack(">HHI", 1, 70, self._udp.ssrc) + bytes(66)
        self._udp.transport.sendto(request)
        address, port = await asyncio.wait_for(self._udp.discovery, 5.0)
        if self.mode not in d["modes"]:
            raise AssertionError(f"the server does not offer {self.mode}: {d['modes']}")
        await self._send_json(1, {"protocol": "udp", "data": {"address": address, "port": port, "mode": self.mode}})

    # --- DAVE: the client state machine (PROTOCOL.md section 5) on libdave ----------------

    def _mls_failure(self, source: str, reason: str) -> None:
        self.stats.mls_failures.append((source, reason))

    def _recognized(self) -> set[str]:
        return {str(u) for u in self._connected | {self.user_id}}

    async def _on_protocol(self, version: int) -> None:
        """Op 4 (or op 24 with epoch 1): a new group starts; send a fresh key package (or go without DAVE)."""
        self.protocol_version = version
        self._pending.clear()
        if version == 0:
            self._session.reset()
            self._encryptor.set_passthrough_mode(True)
            for decryptor in self._decryptors.values():
                decryptor.transition_to_passthrough_mode(True)
            return
        self._session.init(version, self.channel_id, str(self.user_id))
        await self._send_key_package()

    async def _send_key_package(self) -> None:
        package = self._session.get_marshalled_key_package()
        if package:
            self.stats.key_packages += 1
            await self._send_binary(26, bytes(package))

    async def _on_binary(self, op: int, payload: bytes) -> None:
        self.dave_ops.append(op)
        if op == 25:
            self._session.set_external_sender(payload)
        elif op == 27:
            # libdave reads the operation type byte itself.
            result = self._session.process_proposals(payload, self._recognized())
            if result:
                self.stats.commits_sent += 1
                await self._send_binary(28, bytes(result))
        elif op == 29:
            transition_id = struct.unpack_from(">H", payload)[0]
            outcome = self._session.process_commit(payload[2:])
            if outcome is dave.RejectType.ignored:
                self.stats.commits_ignored += 1  # not for this member's pending state (a joiner)
            elif isinstance(outcome, dave.RejectType):
                await self._invalid(transition_id, reinit=True)
            else:
                self.stats.commits_processed += 1
                await self._joined(transition_id)
        elif op == 30:
            transition_id = struct.unpack_from(">H", payload)[0]
            roster = self._session.process_welcome(payload[2:], self._recognized())
            if roster is None:
                await self._invalid(transition_id, reinit=False)
            else:
                self.stats.welcomes_processed += 1
                await self._joined(transition_id)

    async def _invalid(self, transition_id: int, *, reinit: bool) -> None:
        """A commit or welcome libdave could not use: op 31, then a new key package."""
        self.stats.invalid_commit_welcomes += 1
        await self._send_json(31, {"transition_id": transition_id})
        if reinit:
            self._session.init(self.protocol_version, self.channel_id, str(self.user_id))
        await self._send_key_package()

    async def _joined(self, transition_id: int) -> None:
        """A commit or welcome made a new group state: new receive ratchets now, the send ratchet at op 22."""
        authenticator = self._session.get_last_epoch_authenticator()
        if authenticator:
            self.privacy_codes.append(displayable_code(bytes(authenticator), 30))
        self._prepare_ratchets(transition_id, self.protocol_version)
        if transition_id != 0:
            await self._send_json(23, {"transition_id": transition_id})

    def _prepare_ratchets(self, transition_id: int, version: int) -> None:
        for user_id in self._connected:
            if user_id == self.user_id:
                continue
            decryptor = self._decryptors.get(user_id)
            if decryptor is None:
                decryptor = self._decryptors[user_id] = dave.Decryptor()
            if version == 0:
                decryptor.transition_to_passthrough_mode(True)
            else:
                ratchet = self._session.get_key_ratchet(str(user_id))
                if ratchet is not None:
                    decryptor.transition_to_key_ratchet(ratchet)
        if transition_id == 0:
            self._use_version(version)
        else:
            self._pending[transition_id] = version
        self.events.append(("keys", transition_id))
        self._flush_retry()

    async def _prepare_transition(self, transition_id: int, version: int) -> None:
        """Op 21: a protocol change (a downgrade to 0 or an upgrade) prepared; ready when set up."""
        self._prepare_ratchets(transition_id, version)
        if transition_id != 0:
            await self._send_json(23, {"transition_id": transition_id})

    def _execute_transition(self, transition_id: int) -> None:
        """Op 22: the sender switches to the new key ratchet (or to plaintext for protocol 0)."""
        version = self._pending.pop(transition_id, None)
        if version is None:
            return
        self.stats.transitions_executed += 1
        self._use_version(version)

    def _use_version(self, version: int) -> None:
        self.protocol_version = version
        if version == 0:
            self._session.reset()
            self._encryptor.set_key_ratchet(None)
            self._encryptor.set_passthrough_mode(True)
            return
        self._encryptor.set_key_ratchet(self._session.get_key_ratchet(str(self.user_id)))
        self._encryptor.set_passthrough_mode(False)

    # --- receive --------------------------------------------------------------------------

    def _on_audio(self, ssrc: int, sequence: int, frame: bytes) -> None:
        user_id = self._ssrc_users.get(ssrc)
        if user_id is None:
            self._udp._ignore("audio from an SSRC no op 5 named")
            return
        self.sequences.setdefault(user_id, []).append(sequence)
        if frame == SILENCE:
            self.silence[user_id] = self.silence.get(user_id, 0) + 1
            return
        frames = self.frames.setdefault(user_id, [])
        index = len(frames)
        opus = self._decrypt(user_id, frame)
        frames.append(opus)
        self.events.append(("frame", user_id, index, opus is not None))
        if opus is None:
            if len(self._retry) >= RETRY_FRAMES:
                self._retry.pop(0)
            self._retry.append((time.monotonic(), user_id, index, frame))

    def _decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        decryptor = self._decryptors.get(user_id)
        if decryptor is None:
            return None
        opus = decryptor.decrypt(dave.MediaType.audio, frame)
        if opus is None:
            return None
        self.stats.frames_decrypted += 1
        return bytes(opus)

    def _flush_retry(self) -> None:
        now = time.monotonic()
        keep = []
        for item in self._retry:
            arrived, user_id, index, frame = item
            opus = self._decrypt(user_id, frame)
            if opus is not None:
                self.frames[user_id][index] = opus
                self.early.setdefault(user_id, set()).add(index)
            elif now - arrived <= RETRY_SECONDS:
                keep.append(item)
        self._retry = keep
