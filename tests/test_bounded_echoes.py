"""Peer-supplied values reach log lines and error messages only bounded (about 60 characters each).

A hostile voice server (or anything on the path) can send megabytes where a few bytes are
expected; each test here feeds one such value through a real path and measures every message
and log line it produced.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from fastvoice.conn import ConnOpenError, VoiceStateUpdate
from fastvoice.encryption import EncryptionMode, choose_encryption_mode
from fastvoice.errors import GatewayClosedError, IPDiscoveryError
from fastvoice.gateway import Gateway, GatewayConfig, State
from fastvoice.ipdiscovery import parse_ip_discovery_response
from fastvoice.testing import VoiceServer

from _calls import make_manager

# A message may explain itself at length, but never grow with what the peer sent.
MESSAGE_MAX = 500


def assert_bounded_logs(records) -> None:
    long = [r.getMessage()[:120] for r in records if len(r.getMessage()) > MESSAGE_MAX]
    assert not long, long


def test_choose_encryption_mode_names_a_few_of_20000_offered_modes():
    offered = [f"mode_{i:05d}" for i in range(20_000)]
    with pytest.raises(ValueError) as info:
        choose_encryption_mode(offered)
    text = str(info.value)
    assert len(text) < MESSAGE_MAX
    assert "20000 offered" in text and "'mode_00000'" in text and "..." in text


def test_choose_encryption_mode_cuts_one_huge_mode_name():
    with pytest.raises(ValueError) as info:
        choose_encryption_mode(["x" * 1_000_000])
    assert len(str(info.value)) < MESSAGE_MAX and "(1000000 characters)" in str(info.value)


def test_encryption_mode_parse_cuts_the_value():
    with pytest.raises(ValueError) as info:
        EncryptionMode.parse("y" * 100_000)
    assert len(str(info.value)) < MESSAGE_MAX and "(100000 characters)" in str(info.value)


async def test_a_ready_offering_20000_modes_fails_open_with_a_bounded_error(caplog):
    caplog.set_level(logging.DEBUG, logger="fastvoice")
    async with VoiceServer(modes=[f"not_a_mode_{i}" for i in range(20_000)]) as server:
        _, bots = make_manager(server, 5)
        conn = bots.create_conn(9)
        with pytest.raises(ConnOpenError, match="20000 offered") as info:
            await conn.open(90)
        assert len(str(info.value)) < MESSAGE_MAX
        await bots.close()
    assert_bounded_logs(caplog.records)
    assert any("voice UDP setup failed" in r.getMessage() for r in caplog.records)


async def test_a_session_description_naming_a_huge_mode_fails_open_with_a_bounded_error(monkeypatch, caplog):
    import fastvoice.testing._gateway_side as server_module

    real = server_module.GatewayMessageDataSessionDescription
    monkeypatch.setattr(
        server_module, "GatewayMessageDataSessionDescription", lambda _mode, key, dave: real("m" * 200_000, key, dave)
    )
    caplog.set_level(logging.DEBUG, logger="fastvoice")
    async with VoiceServer() as server:
        _, bots = make_manager(server, 5)
        conn = bots.create_conn(9)
        with pytest.raises(ConnOpenError, match="unusable") as info:
            await conn.open(90)
        assert len(str(info.value)) < MESSAGE_MAX and "(200000 characters)" in str(info.value)
        await bots.close()
    assert_bounded_logs(caplog.records)


def test_an_ip_discovery_reply_with_a_garbage_address_is_reported_bounded():
    reply = struct.pack(">HHI64sH", 2, 70, 7, b"\xfe" * 63, 5000)
    with pytest.raises(IPDiscoveryError) as info:
        parse_ip_discovery_response(reply, 7)
    assert len(str(info.value)) < 150 and "(63 bytes)" in str(info.value)


def test_a_huge_snowflake_in_a_voice_state_update_is_reported_bounded():
    with pytest.raises(ValueError) as info:
        VoiceStateUpdate.from_dict({"guild_id": "9x" * 50_000, "user_id": "1", "session_id": "s"})
    assert len(str(info.value)) < 200 and "(100000 characters)" in str(info.value)


async def test_a_bad_http_status_line_from_the_voice_endpoint_is_logged_bounded(caplog):
    """aiohttp's parser errors quote the server's status line: 7 KB of it reached every log
    line and the final GatewayClosedError."""

    async def handle(reader, writer):
        await reader.read(4096)
        writer.write(b"HTTP/1.1 1x1 " + b"y" * 7000 + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    caplog.set_level(logging.DEBUG, logger="fastvoice")
    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        gateway = Gateway(config=GatewayConfig(backoff_base=0.01, max_reconnect_attempts=1))
        with pytest.raises(GatewayClosedError) as info:
            await gateway.open(State(1, 2, None, "s", "t", f"ws://127.0.0.1:{port}"))
    finally:
        listener.close()
        await listener.wait_closed()
    assert "Bad status line" in str(info.value) and len(str(info.value)) < MESSAGE_MAX
    assert any("connect failed" in r.getMessage() for r in caplog.records)
    assert_bounded_logs(caplog.records)
