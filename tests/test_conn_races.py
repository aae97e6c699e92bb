"""Races around Conn.open: a Ready twice, a voice server update while connecting, cancellation.

Each test counts what must not be left behind: UDP sockets and file descriptors of this
process, tasks, and anything reported to the event loop's exception handler ("Future
exception was never retrieved", "Task exception was never retrieved"). The race tests run
on asyncio's default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random

import pytest

from fastvoice.conn import Conn, ConnConfig, ConnOpenError
from fastvoice.errors import GatewayClosedError
from fastvoice.gateway import Gateway, GatewayConfig
from fastvoice.gateway_messages import Opcode
from fastvoice.testing import ServerSession, VoiceServer

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    uvloop = None

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(uvloop is None, reason="no uvloop"))]
GUILD, USER, CHANNEL = 7, 8, 9


def _loop_factory(name):
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop


def run_on(loop_name, body):
    """Run ``body()`` on a fresh loop of that kind; return what reached its exception handler
    (including futures and tasks collected with an exception nobody retrieved)."""
    reported = []
    loop = _loop_factory(loop_name)()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        loop.run_until_complete(body())
        gc.collect()  # "never retrieved" is reported when the future is collected
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    return [
        f"{c.get('message')}: {c.get('exception')!r}" for c in reported
    ]


def udp_sockets() -> int:
    """UDP sockets this process holds (descriptors whose inode is in /proc/net/udp or udp6)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                inodes.update(line.split()[9] for line in f)
        except OSError:
            pass
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class MainGateway:
    """Answers op 4 with the two voice dispatches for ``server``; ``then`` (if set) is called
    after them, e.g. to deliver a second VOICE_SERVER_UPDATE a few milliseconds later."""

    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self.conn: Conn | None = None
        self.then = None

    async def update_voice_state(self, guild_id, channel_id, self_mute=False, self_deaf=False):
        if channel_id is None or self.conn is None:
            return
        state, update = self.server.voice_updates(guild_id, USER, channel_id, session_id="main-session")
        conn, then = self.conn, self.then
        loop = asyncio.get_running_loop()

        def deliver():
            from fastvoice.conn import VoiceServerUpdate, VoiceStateUpdate

            conn.handle_voice_state_update(VoiceStateUpdate.from_dict(state))
            conn.handle_voice_server_update(VoiceServerUpdate.from_dict(update))
            if then is not None:
                then(conn)

        loop.call_soon(deliver)


def make_conn(server: VoiceServer, **options) -> tuple[Conn, MainGateway]:
    main = MainGateway(server)
    options.setdefault("open_timeout", 5)
    options.setdefault("gateway_config", GatewayConfig(backoff_base=0.01, backoff_max=0.05))
    conn = Conn(GUILD, USER, main.update_voice_state, config=ConnConfig(**options))
    main.conn = conn
    return conn, main


async def settle(server: VoiceServer, *servers: VoiceServer) -> None:
    """Wait until every server connection has ended (the server side of a closed client)."""
    for s in (server, *servers):
        await s.wait_for(lambda s=s: all(c.closed for c in s.connections), timeout=5)
    await asyncio.sleep(0.05)


# -- 1. Ready twice before Session Description ----------------------------------------


def count(session: ServerSession, direction: str, op: int) -> int:
    return sum(1 for m in session.messages if m.direction == direction and m.op == op)


def _send_ready_twice(monkeypatch):
    original = ServerSession.send

    async def send(self, op, data):
        seq = await original(self, op, data)
        if op == Opcode.READY:
            await original(self, op, data)  # a broken (or hostile) server repeats it at once
        return seq

    monkeypatch.setattr(ServerSession, "send", send)


class GatewayPassingRepeatedReadies(Gateway):
    """Lets a repeated Ready through to the connection, to test the connection's own guard."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        protocol = self._protocol
        receive_text = protocol.receive_text

        def forgetful_receive_text(text, now):
            if json.loads(text).get("op") == Opcode.READY:
                protocol.session_ready = False  # the protocol's own guard would drop the repeat
            return receive_text(text, now)

        protocol.receive_text = forgetful_receive_text


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("guard", ["gateway", "conn"])
def test_ready_twice_before_session_description_leaks_nothing_and_selects_once(loop_name, guard, monkeypatch):
    _send_ready_twice(monkeypatch)
    found = {}

    async def body():
        async with VoiceServer() as server:
            options = {"gateway_create_func": GatewayPassingRepeatedReadies} if guard == "conn" else {}
            conn, _ = make_conn(server, **options)
            udp_before, fds_before = udp_sockets(), open_fds()
            for _ in range(20):
                await conn.open(CHANNEL)
                assert conn.udp is not None and conn.udp.packetizer is not None
                await conn.close()
            await settle(server)
            found["udp"] = udp_sockets() - udp_before
            found["fds"] = open_fds() - fds_before
            found["select"] = [count(s, "in", Opcode.SELECT_PROTOCOL) for s in server.sessions]
            found["readies"] = [count(s, "out", Opcode.READY) for s in server.sessions]

    reported = run_on(loop_name, body)
    assert found["readies"] == [2] * 20  # the server really sent Ready twice each time
    assert found["select"] == [1] * 20, "Select Protocol must go out once per session"
    assert found["udp"] == 0 and found["fds"] <= 0, found
    assert reported == []


async def test_the_gateway_dispatches_one_ready_per_session(monkeypatch, caplog):
    _send_ready_twice(monkeypatch)
    events = []
    async with VoiceServer() as server:
        gateway = Gateway(lambda op, data: events.append(op), None, GatewayConfig(backoff_base=0.01))
        await gateway.open(server.make_state(GUILD, USER))
        session = server.sessions[0]
        await session.send(Opcode.CLIENTS_CONNECT, {"user_ids": ["5"]})  # a marker: later frames got through
        await server.wait_for(lambda: Opcode.CLIENTS_CONNECT in events)
        assert count(session, "out", Opcode.READY) == 2
        assert events.count(Opcode.READY) == 1
        assert any("repeated Ready" in r.getMessage() for r in caplog.records)
        # A new session (after 4006) gets its Ready through.
        await session.close(4006)
        await server.wait_for(lambda: events.count(Opcode.READY) == 2, timeout=5)
        await gateway.close()


# -- 2. A second VOICE_SERVER_UPDATE while open() connects ----------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("new_server", [False, True], ids=["new-token", "new-server"])
@pytest.mark.parametrize("delay_ms", [0, 1, 3, 5])
def test_a_voice_server_update_while_opening_takes_over(loop_name, new_server, delay_ms):
    found = {}

    async def body():
        async with VoiceServer() as first, VoiceServer() as second:
            target = second if new_server else first
            conn, main = make_conn(first)

            def move(conn):
                async def later():
                    await asyncio.sleep(delay_ms / 1000)
                    _, update = target.voice_updates(GUILD, USER, CHANNEL, session_id="main-session")
                    found["token"] = update["token"]
                    from fastvoice.conn import VoiceServerUpdate

                    conn.handle_voice_server_update(VoiceServerUpdate.from_dict(update))
                found["mover"] = asyncio.get_running_loop().create_task(later())

            main.then = move
            udp_before = udp_sockets()
            await conn.open(CHANNEL)  # must neither raise CancelledError nor anything else
            await found["mover"]
            # The new server has the connection: its session got Select Protocol and a key.
            await target.wait_for(
                lambda: any(s.secret_key is not None and s.token == found["token"] and not s.ended
                            for s in target.sessions), timeout=5)
            # The server sent Session Description; the client takes it in a moment later.
            await target.wait_for(lambda: conn.udp is not None and conn.udp.packetizer is not None, timeout=5)
            assert conn.gateway is not None and conn.gateway.state.token == found["token"]
            assert conn.udp.remote_addr[1] == target.udp_port
            live = [s for s in first.sessions + (second.sessions if new_server else []) if not s.ended]
            assert len(live) == 1 and live[0].token == found["token"]  # the old session was left
            found["udp_open"] = udp_sockets() - udp_before
            await conn.close()
            await settle(first, second)
            found["udp_after"] = udp_sockets() - udp_before

    reported = run_on(loop_name, body)
    assert found["udp_open"] == 1, "one voice socket while open"
    assert found["udp_after"] == 0
    assert reported == []


def test_an_update_while_opening_that_fails_names_why_in_conn_open_error():
    """The new server is unreachable: open() fails naming why, not with CancelledError."""
    found = {}

    async def body():
        async with VoiceServer() as first:
            conn, main = make_conn(first, open_timeout=1.5,
                                   gateway_config=GatewayConfig(open_timeout=0.5, connect_timeout=0.5,
                                                                backoff_base=0.01, max_reconnect_attempts=1))

            def move(conn):
                from fastvoice.conn import VoiceServerUpdate

                # A port nothing listens on.
                conn.handle_voice_server_update(VoiceServerUpdate(GUILD, "other-token", "ws://127.0.0.1:9"))

            main.then = move
            try:
                await conn.open(CHANNEL)
            except BaseException as exc:  # noqa: BLE001 - the type is the point
                found["error"] = exc
            await conn.close()

    reported = run_on("asyncio", body)
    error = found.get("error")
    # Retries used up on the new server: GatewayClosedError, as open() documents for a give-up.
    assert isinstance(error, (ConnOpenError, GatewayClosedError)), repr(error)
    assert "Cannot connect to host 127.0.0.1:9" in str(error), str(error)
    assert reported == []


def test_a_ready_delivered_while_the_session_is_torn_down_opens_no_socket():
    """The gateway may hand over a Ready it read while it is being closed; it must start no
    UDP setup (which would leave ``conn.udp`` set after a cancelled open)."""
    found = {}

    async def body():
        async with VoiceServer() as server:
            conn, _ = make_conn(server)
            await conn.open(CHANNEL)
            port = conn.udp.remote_addr[1]
            await conn.close()
            udp_before = udp_sockets()
            from fastvoice.gateway_messages import GatewayMessageDataReady

            ready = GatewayMessageDataReady(ssrc=5, ip="127.0.0.1", port=port, modes=["aead_xchacha20_poly1305_rtpsize"])
            await conn._on_event(Opcode.READY, ready)
            for _ in range(5):
                await asyncio.sleep(0)
            found["udp"] = conn.udp
            found["sockets"] = udp_sockets() - udp_before
            await asyncio.sleep(0.05)

    assert run_on("asyncio", body) == []
    assert found["udp"] is None and found["sockets"] == 0


# -- 3. Cancelling open() at any point -------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_cancelling_open_at_random_points_leaves_nothing_behind(loop_name):
    """250 opens per loop, each cancelled after a random delay spanning the whole open
    (from before the first await to after Session Description)."""
    rng = random.Random(12)
    found = {"outcomes": {"cancelled": 0, "opened": 0}}

    async def body():
        async with VoiceServer() as server:
            conn, _ = make_conn(server)
            # How long a whole open takes here, to spread the cancellations over it: the
            # quickest of a few (the first is slowed by warming up; a slow estimate would let
            # most opens finish before their cancellation).
            full = float("inf")
            for _ in range(5):
                started = asyncio.get_running_loop().time()
                await conn.open(CHANNEL)
                full = min(full, asyncio.get_running_loop().time() - started)
                await conn.close()
            await settle(server)
            udp_before, fds_before = udp_sockets(), open_fds()
            tasks_before = asyncio.all_tasks()
            loop = asyncio.get_running_loop()
            for _ in range(250):
                started = loop.time()
                task = loop.create_task(conn.open(CHANNEL))
                delay = rng.uniform(0, full * 1.3)
                if delay < full * 0.1:
                    for _ in range(rng.randrange(4)):
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(delay)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    found["outcomes"]["cancelled"] += 1
                    assert conn.udp is None and conn.gateway is None
                else:
                    found["outcomes"]["opened"] += 1
                    # The machine got quicker than the estimate (load varies): follow it, so
                    # that the cancellations keep spanning the whole open.
                    full = min(full, loop.time() - started)
                await conn.close()
            await settle(server)
            found["udp"] = udp_sockets() - udp_before
            found["fds"] = open_fds() - fds_before
            found["tasks"] = [t for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task()]

    reported = run_on(loop_name, body)
    assert found["outcomes"]["cancelled"] >= 100, found["outcomes"]
    assert found["udp"] == 0 and found["fds"] <= 0, found
    assert found["tasks"] == []
    assert reported == []


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_udp_conn_cancelled_or_closed_while_opening_leaves_no_socket(loop_name):
    """Cancelled (or closed) at any point of open(): no socket left, and the caller gets what
    it asked for: CancelledError for a cancel, ConnectionError for a close, never the other.
    (uvloop leaks the socket of a datagram endpoint cancelled half-made; UDPConn must not.)"""
    import socket

    from fastvoice.udp import UDPConn

    rng = random.Random(5)
    found = {}

    async def body():
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers IP discovery
        silent.bind(("127.0.0.1", 0))
        try:
            before = udp_sockets()
            outcomes = []
            for i in range(300):
                udp = UDPConn(discovery_timeout=1.0)
                task = asyncio.get_running_loop().create_task(udp.open("127.0.0.1", silent.getsockname()[1], i))
                await asyncio.sleep(rng.uniform(0, 0.004))
                action = "cancel" if i % 2 else "close"
                if action == "cancel":
                    task.cancel()
                else:
                    udp.close()
                try:
                    await task
                    outcome = "opened"
                except (asyncio.CancelledError, ConnectionError) as exc:
                    outcome = type(exc).__name__
                outcomes.append(f"{action}: {outcome}")
                udp.close()
            await asyncio.sleep(0.05)
            found["udp"] = udp_sockets() - before
            found["outcomes"] = {o: outcomes.count(o) for o in set(outcomes)}
        finally:
            silent.close()

    reported = run_on(loop_name, body)
    assert found["udp"] == 0, found
    assert set(found["outcomes"]) == {"cancel: CancelledError", "close: ConnectionError"}, found
    assert reported == []
