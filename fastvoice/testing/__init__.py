"""A local Discord voice server for tests, benchmarks and demos.

:class:`VoiceServer` speaks the voice gateway v8 over websockets (``ws://`` or,
with ``tls=True``, ``wss://`` with a generated self-signed certificate) and the
UDP media side (IP discovery, transport decryption, SFU-style forwarding to the
other members of a call), records what it saw, and has knobs for faults.

    async with VoiceServer() as server:
        state = server.make_state(guild_id=1, user_id=2)
        ...

:class:`MainGatewayStandIn` (from :meth:`VoiceServer.main_gateway`) plays the bot's
main gateway: it takes op 4 Voice State Updates and answers with the
VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE dispatches that lead to the server.

:class:`VoiceServerProcess` runs a VoiceServer in a child process (its own event loop and
core), so that a client under test does not share its loop with the server.

``tls=True`` needs the ``cryptography`` package.
"""

from __future__ import annotations

from ._dave import DaveCallGroup, DaveExternalSender, MLSDecodeError, MLSValidationError, is_dave_frame
from ._dave_relay import DaveRelay
from ._keepalive import KeepaliveLapse
from ._main_gateway import MainGatewayStandIn
from ._process import VoiceServerProcess
from ._recording import ReceivedKeepalive, Recording
from ._server import (
    ReceivedPacket,
    RecordedMessage,
    RejectedDatagram,
    ServerConnection,
    ServerSession,
    VoiceServer,
    build_ip_discovery_reply,
    build_rtcp_receiver_report,
)
from ._stamps import kernel_receive_clock

__all__ = [
    # the server, its stand-in main gateway, and what it records
    "VoiceServer",
    "MainGatewayStandIn",
    "VoiceServerProcess",
    "ServerSession",
    "ServerConnection",
    "RecordedMessage",
    "ReceivedPacket",
    "RejectedDatagram",
    "Recording",
    "build_ip_discovery_reply",
    "build_rtcp_receiver_report",
    # the server's DAVE side: the external sender, a call's MLS group state, the relay that runs
    # the groups for the server (with DAVE's fault knobs), and the ciphertext check
    "DaveCallGroup",
    "DaveExternalSender",
    "DaveRelay",
    "MLSDecodeError",
    "MLSValidationError",
    "is_dave_frame",
    # UDP keepalives as the server records them
    "KeepaliveLapse",
    "ReceivedKeepalive",
    # pacing measurements: when the kernel received a datagram, not when the loop read it
    "kernel_receive_clock",
]
