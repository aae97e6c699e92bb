"""@discordjs/voice in Node as a member of a call on the local VoiceServer: a test peer.

``tests/interop/discordjs_member.mjs`` joins the call through @discordjs/voice's own
networking and DAVE (on @snazzah/davey) and takes commands on stdin; this module starts it
and talks to it. Needs ``node`` and ``cd bench/discordjs && npm ci`` (the pinned packages;
``FASTVOICE_DISCORDJS_DIR`` names another directory holding that ``package.json`` and its
``node_modules``, as ``ci/interop.sh`` does), and a server with ``tls=True``: @discordjs/voice connects to ``wss://`` only, so Node is
started with the server's certificate in ``NODE_EXTRA_CA_CERTS``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "interop", "discordjs_member.mjs")
PACKAGE_DIR = os.environ.get("FASTVOICE_DISCORDJS_DIR") or os.path.join(os.path.dirname(HERE), "bench", "discordjs")


def discordjs_missing() -> str | None:
    """Why the @discordjs/voice member cannot run here, or ``None``."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not os.path.isdir(os.path.join(PACKAGE_DIR, "node_modules", "@discordjs", "voice")):
        if os.environ.get("FASTVOICE_DISCORDJS_DIR"):
            return "FASTVOICE_DISCORDJS_DIR has no node_modules/@discordjs/voice (run npm ci there)"
        return "bench/discordjs/node_modules is missing (run: cd bench/discordjs && npm ci)"
    return None


class DiscordjsMember:
    """The Node process of one @discordjs/voice member; ``await join()``, then commands, ``await close()``.

    ``privacy_codes`` collects every voice privacy code the member showed, in order (one
    per epoch); ``speakers`` the users whose SSRC its receiver has from op 5 (it drops audio
    from an SSRC that no op 5 named); ``log_lines`` what it reported besides (errors).
    """

    def __init__(self, server: Any, guild_id: int, channel_id: int, user_id: int, peers: list[int]) -> None:
        if not server.tls:
            raise ValueError("@discordjs/voice connects to wss:// only: the server needs tls=True")
        self.server = server
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.peers = peers
        self.privacy_codes: list[str] = []
        #: Users whose SSRC the member's receiver knows (from op 5): it drops audio from others.
        self.speakers: set[int] = set()
        self.log_lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._stderr: list[str] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def join(self, timeout: float = 30.0) -> None:
        """Start Node, join the call and wait until the connection is ready."""
        state, update = self.server.voice_updates(self.guild_id, self.user_id, self.channel_id)
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=self.server.ca_file, FASTVOICE_DISCORDJS_DIR=PACKAGE_DIR)
        self._proc = await asyncio.create_subprocess_exec(
            "node", SCRIPT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        loop = asyncio.get_running_loop()
        self._tasks += [loop.create_task(self._read_stdout()), loop.create_task(self._read_stderr())]
        await self._send({
            "guild_id": str(self.guild_id),
            "channel_id": str(self.channel_id),
            "user_id": str(self.user_id),
            "session_id": state["session_id"],
            "token": update["token"],
            "endpoint": update["endpoint"],
            "peers": [str(p) for p in self.peers],
        })
        await self.expect("ready", timeout)

    async def play(self, frames: list[bytes]) -> None:
        """Start playing ``frames`` through an AudioPlayer (see :meth:`expect` ``"played"``)."""
        await self._send({"cmd": "play", "frames": [base64.b64encode(f).decode() for f in frames]})

    async def verification_code(self, user_id: int, timeout: float = 10.0) -> str | None:
        """The member's verification code with ``user_id`` (``VoiceConnection.getVerificationCode``)."""
        await self._send({"cmd": "verification", "user_id": str(user_id)})
        code: str | None = (await self.expect("verification", timeout))["code"]
        return code

    async def report(self, timeout: float = 10.0) -> tuple[dict[int, list[bytes]], list[tuple[Any, ...]]]:
        """What the member's receiver delivered per user, and its log of packets and key changes."""
        await self._send({"cmd": "report"})
        event = await self.expect("report", timeout)
        frames = {int(u): [base64.b64decode(f) for f in fs] for u, fs in event["frames"].items()}
        log = []
        for entry in event["log"]:
            if entry[0] == "packet":
                log.append(("packet", int(entry[1]), entry[2], bool(entry[3])))
            else:
                log.append(("keys", entry[1]))
        return frames, log

    async def expect(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event ``name`` from the member (others in between are dropped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                event = await asyncio.wait_for(self._events.get(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise AssertionError(f"@discordjs/voice member: no {name!r} within {timeout} s{self._tail()}") from None
            if event is None:
                raise AssertionError(f"@discordjs/voice member exited before {name!r}{self._tail()}")
            if event.get("event") == "error":
                raise AssertionError(f"@discordjs/voice member failed: {event.get('message', '')[:2000]}")
            if event.get("event") == name:
                return event

    async def close(self) -> None:
        """Leave the call and end the Node process (killed if it does not exit within 5 s)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await self._send({"cmd": "leave"})
                await asyncio.wait_for(proc.wait(), 5.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                proc.kill()
                await proc.wait()
            except BaseException:
                proc.kill()
                await proc.wait()
                raise
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()

    # ---------------------------------------------------------------------------------

    def _tail(self) -> str:
        lines = self.log_lines[-5:] + self._stderr[-20:]
        return (":\n" + "\n".join(lines)) if lines else ""

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(message) + "\n").encode())
        await self._proc.stdin.drain()

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while True:
                line = await self._proc.stdout.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    self.log_lines.append(line.decode(errors="replace").rstrip()[:200])
                    continue
                if event.get("event") == "code":
                    self.privacy_codes.append(event["code"])
                elif event.get("event") == "speaker":
                    self.speakers.add(int(event["user_id"]))
                elif event.get("event") == "log":
                    self.log_lines.append(str(event.get("message"))[:500])
                else:
                    self._events.put_nowait(event)
        finally:
            self._events.put_nowait(None)

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                return
            self._stderr.append(line.decode(errors="replace").rstrip()[:300])
            del self._stderr[:-200]
