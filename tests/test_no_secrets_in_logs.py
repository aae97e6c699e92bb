"""Tokens, session ids and secret keys never appear in logs, reprs or exception messages."""

from __future__ import annotations

import asyncio
import io
import logging
import struct

import pytest

from fastvoice.conn import ConnConfig
from fastvoice.gateway import GatewayConfig
from fastvoice.manager import Manager
from fastvoice.opus import OpusReader
from fastvoice.testing import MainGatewayStandIn, VoiceServer


def forms_of(secret: bytes | str) -> list[str]:
    """The ways a secret could show up in text."""
    if isinstance(secret, str):
        return [secret]
    return [secret.hex(), repr(secret), str(list(secret)), ", ".join(str(b) for b in secret)]


@pytest.mark.parametrize("dave", [0, 1])
async def test_debug_logs_of_a_whole_session_hold_no_secret(caplog, dave):
    caplog.set_level(logging.DEBUG)
    async with VoiceServer(heartbeat_interval=50.0, dave_protocol_version=dave) as server:
        main = MainGatewayStandIn(server, 3)
        bots = Manager(main.update_voice_state, 3,
                       conn_config=ConnConfig(open_timeout=5, gateway_config=GatewayConfig(backoff_base=0.01)))
        main.attach(bots)
        conn = bots.create_conn(30)
        await conn.open(31)
        frames = b"".join(struct.pack("<I", 20) + bytes(20) for _ in range(30))
        conn.set_opus_frame_provider(OpusReader(io.BytesIO(frames)))
        session = server.session_for_ssrc(conn.udp.ssrc)
        await asyncio.sleep(0.2)
        session.drop()  # a resume (session id and token go out again)
        await server.wait_for(lambda: len(session.connections) >= 2 and session.connection is not None, timeout=5)
        await asyncio.sleep(0.3)
        texts = [repr(conn), repr(conn.gateway.state), repr(session), str(conn.udp.packetizer)]
        await bots.close()
        secrets = [session.token, session.session_id, main.session_id, session.secret_key]
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "fastvoice" in {r.name.split(".")[0] for r in caplog.records}
    text = logged + "\n".join(texts)
    for secret in secrets:
        assert secret
        for form in forms_of(secret):
            assert form not in text, f"a secret appears in the logs or reprs ({len(form)} chars)"
