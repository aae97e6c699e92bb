"""A local voice server in its own process, so that a client under test does not share its event loop."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
import sys
from collections.abc import Coroutine
from typing import Any

from .._shown import cut
from ._dispatches import voice_dispatches
from ._main_gateway import MainGatewayStandIn

__all__ = ["VoiceServerProcess", "end_child"]

_MAX_REPLY = 256 * 1024 * 1024  # one reply line (sequences of thousands of calls)


async def end_child(process: asyncio.subprocess.Process, grace: float) -> None:
    """End a child that stops when its stdin closes: close it, wait ``grace`` seconds, then
    terminate, and kill after 5 more; return once it has exited."""
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


class VoiceServerProcess:
    """A :class:`VoiceServer` running in a child Python process.

    The keyword arguments are VoiceServer options with JSON values (``tls``,
    ``dave_protocol_version``, ``require_dave``, ``heartbeat_interval``, ``record_packets``...)::

        async with VoiceServerProcess(dave_protocol_version=1) as server:
            main = server.main_gateway(user_id)        # the same stand-in as VoiceServer's
            main.attach(manager)
            ...
            print(await server.stats())

    The child serves on its own event loop (uvloop when installed) and on its own core; it
    ends when :meth:`close` is called, when this process closes the pipe to it, or when this
    process dies (it reads the end of its stdin), so nothing is left behind. Fault knobs are
    set with :meth:`set`; what the server saw comes from :meth:`stats`.
    """

    def __init__(self, *, python: str | None = None, startup_timeout: float = 30.0, **options: Any) -> None:
        try:
            self._options = json.dumps(options)
        except TypeError as exc:
            raise TypeError(f"VoiceServerProcess options must be JSON values: {exc}") from None
        self._python = python or sys.executable
        self._startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._info: dict[str, Any] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._last_registration: asyncio.Future[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and wait until it serves (``startup_timeout`` seconds at most)."""
        if self._process is not None:
            raise RuntimeError("VoiceServerProcess is already started")
        self._process = await asyncio.create_subprocess_exec(
            self._python, "-m", "fastvoice.testing._serve", self._options,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=_MAX_REPLY,
        )
        try:
            assert self._process.stdout is not None
            line = await asyncio.wait_for(self._process.stdout.readline(), self._startup_timeout)
            if not line:
                raise RuntimeError(f"the voice server process exited with code {await self._process.wait()} "
                                   "before serving (its error is above, on stderr)")
            self._info = json.loads(line)
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_replies())

    async def close(self) -> None:
        """Stop the child (close its stdin, then terminate or kill it if it lingers) and wait for it."""
        process, self._process = self._process, None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if process is None:
            return
        try:
            await end_child(process, 10)
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
                self._reader = None
            self._fail_pending(ConnectionError("the voice server process ended"))

    async def __aenter__(self) -> VoiceServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- addresses -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The websocket URL with scheme (``ws://`` or ``wss://``)."""
        return str(self._started()["url"])

    @property
    def endpoint(self) -> str:
        """``host:port``, the ``endpoint`` a VOICE_SERVER_UPDATE carries (no scheme)."""
        return str(self._started()["endpoint"])

    @property
    def tls(self) -> bool:
        """Whether the server speaks ``wss://``."""
        return bool(self._started()["tls"])

    @property
    def udp_port(self) -> int:
        """The UDP port announced in Ready."""
        return int(self._started()["udp_port"])

    @property
    def pid(self) -> int:
        """The child's process id (to measure its CPU time, for instance)."""
        return int(self._started()["pid"])

    @property
    def ca_file(self) -> str | None:
        """With ``tls=True``: path of the PEM certificate clients must trust."""
        ca_file = self._started()["ca_file"]
        return None if ca_file is None else str(ca_file)

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """With ``tls=True``: a client ``SSLContext`` that trusts this server; ``None`` otherwise."""
        ca_file = self.ca_file
        return None if ca_file is None else ssl.create_default_context(cafile=ca_file)

    # -- what the main gateway would deliver ---------------------------------------

    def voice_updates(
        self, guild_id: int, user_id: int, channel_id: int | None = None, *,
        session_id: str | None = None, token: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Register a session with the child and return the two dispatch payloads (as
        :meth:`VoiceServer.voice_updates`). The registration travels to the child in order;
        updates delivered through :meth:`main_gateway` wait until it has arrived."""
        channel = guild_id if channel_id is None else channel_id
        session_id = session_id or secrets.token_hex(16)
        token = token or secrets.token_hex(8)
        self._last_registration = self._send(
            "register", guild_id=guild_id, user_id=user_id, channel_id=channel, session_id=session_id, token=token,
        )
        return voice_dispatches(self.endpoint if self.tls else self.url, guild_id, user_id, channel,
                                session_id, token)

    def main_gateway(self, user_id: int, *, server_update_first: bool = False) -> MainGatewayStandIn:
        """Return a :class:`MainGatewayStandIn` for ``user_id`` that leads to this server."""
        return MainGatewayStandIn(self, user_id, server_update_first=server_update_first)

    async def close_voice_sessions(
        self, user_id: int, guild_id: int, *, keep_channel: int | None = None, code: int = 4014,
        reason: str = "disconnected",
    ) -> int:
        """As :meth:`VoiceServer.close_voice_sessions`, in the child."""
        return int(await self._send("close_sessions", user_id=user_id, guild_id=guild_id,
                                    keep_channel=keep_channel, code=code, reason=reason))

    # -- knobs and records ---------------------------------------------------------

    async def set(self, name: str, value: Any) -> None:
        """Set one of the server's knobs in the child (``udp_loss``, ``udp_delay``, ``udp_jitter``...)."""
        await self._send("set", name=name, value=value)

    async def stats(self) -> dict[str, Any]:
        """What the server saw: ``sessions`` (live), ``ssrcs`` (user id -> SSRC, keys as strings),
        ``packets`` (SSRC -> audio packets received from it), ``udp_receive_drops``,
        ``udp_receive_buffer``, ``dave_plaintext_packets`` (summed over sessions) and ``udp_lost``
        (datagrams the ``udp_loss`` knob dropped, the newest 65,536)."""
        result = await self._send("stats")
        assert isinstance(result, dict)
        return result

    async def sequences(self, ssrcs: list[int]) -> dict[int, list[int]]:
        """The RTP sequence numbers of the audio packets the server recorded from each SSRC, in
        arrival order (``VoiceServer.packets(ssrc)``; the newest ``record_packets``)."""
        result = await self._send("sequences", ssrcs=[int(s) for s in ssrcs])
        return {int(ssrc): list(seqs) for ssrc, seqs in result.items()}

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the child has used so far, or ``None`` where unknown (not Linux)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # -- internals -----------------------------------------------------------------

    def _started(self) -> dict[str, Any]:
        if not self._info:
            raise RuntimeError("VoiceServerProcess is not started")
        return self._info

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` once every registration sent so far has reached the child."""
        registration = self._last_registration

        async def after_registration() -> Any:
            try:
                if registration is not None:
                    await asyncio.shield(registration)
            except BaseException:
                coro.close()  # never started
                raise
            return await coro

        task = asyncio.get_running_loop().create_task(after_registration())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _send(self, op: str, **fields: Any) -> asyncio.Future[Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            raise RuntimeError("VoiceServerProcess is not running")
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        process.stdin.write(json.dumps({"id": self._next_id, "op": op, **fields}).encode() + b"\n")
        return future

    async def _read_replies(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            while True:
                line = await process.stdout.readline()
                if not line:
                    break
                try:
                    reply = json.loads(line)
                    future = self._pending.pop(int(reply["id"]))
                except (ValueError, KeyError, TypeError):
                    continue  # not an answer to a request (the child printed something else)
                if future.done():
                    continue
                if "error" in reply:
                    future.set_exception(RuntimeError(f"voice server process: {cut(str(reply['error']), 200)}"))
                else:
                    future.set_result(reply.get("result"))
        finally:
            self._fail_pending(ConnectionError("the voice server process ended"))

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting for it
