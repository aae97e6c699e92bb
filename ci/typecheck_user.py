"""A user's script, type-checked by CI against an installed fastvoice (wheel and editable).

It is never run: `mypy --strict` must find fastvoice and fastvoice.testing with their types.
"""

from __future__ import annotations

import fastvoice
from fastvoice.testing import MainGatewayStandIn, VoiceServer


async def join_one_call() -> fastvoice.Conn:
    async with VoiceServer() as server:
        main = MainGatewayStandIn(server, 1)
        manager = fastvoice.Manager(main.update_voice_state, 1)
        main.attach(manager)
        conn = manager.create_conn(10)
        await conn.open(20)
        stats: fastvoice.FrameStats | None = conn.sender.stats if conn.sender is not None else None
        print(stats, fastvoice.speedups_enabled())
        return conn
