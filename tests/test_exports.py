"""The top-level names of fastvoice: one ordered list, the same set as before it was written so,
and DaveManager kept as a deprecated name of DaveSession."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import fastvoice
import fastvoice.dave
import fastvoice.testing

# Every name ``fastvoice`` exported before its export list was rewritten, plus DaveSession.
EXPORTED = {
    "AsyncOggOpusReader", "AsyncOpusReader", "AudioReceiver", "AudioReceiverCreateFunc", "AudioSender",
    "AudioSenderCreateFunc", "CloseBehaviour", "CloseHandlerFunc", "Conn", "ConnConfig", "ConnCreateFunc",
    "ConnOpenError", "DAVE_PROTOCOL_VERSION", "DaveConfig", "DaveManager", "DaveStats", "DaveUnavailableError",
    "DecodePool", "DecryptionFailedError", "Depacketizer", "EncryptionMode", "EventHandlerFunc", "FFmpegError",
    "FFmpegNotFoundError", "FFmpegOpusProvider", "FanOut", "FanOutSubscription", "FrameStats",
    "GATEWAY_CLOSE_EVENT_CODES", "GATEWAY_VERSION", "Gateway", "GatewayAlreadyConnectedError",
    "GatewayCloseEventCode", "GatewayClosedError", "GatewayConfig", "GatewayCreateFunc", "GatewayDecodeError",
    "GatewayMessage", "GatewayNotConnectedError", "GatewayTimeoutError", "IPDiscoveryError", "Manager",
    "ManagerConfig", "OPUS_FRAME_SIZE", "OPUS_FRAME_SIZE_BYTES", "OPUS_FRAME_SIZE_MS", "OPUS_PACKET_HEADER_SIZE",
    "OggError", "OggOpusDemuxer", "OggOpusReader", "Opcode", "OpusDecodeError", "OpusDecoder",
    "OpusFrameProvider", "OpusFrameReceiver", "OpusHead", "OpusNotAvailableError", "OpusReader", "OpusTags",
    "OpusWriter", "Packet", "Packetizer", "PlayoutClock", "PlayoutReceiver", "PlayoutStats", "Protocol",
    "Resampler", "SILENCE_AUDIO_FRAME", "SSRCEntry", "SSRCTable", "SendClock", "SpeakingFlags", "State",
    "StateProviderFunc", "StateUpdateFunc", "Status", "ThreadedOpusFrameReceiver", "UDPConn", "UDPConnConfig",
    "UDPConnCreateFunc", "UDPNotReadyError", "UDP_TIMEOUT", "UnsafeSourceError", "UserFilterFunc", "Utterance",
    "VoiceError", "VoiceServerUpdate", "VoiceStateUpdate", "VoiceTick", "build_ip_discovery_request",
    "choose_encryption_mode", "gateway_close_event_code_by_code", "load_opus", "parse_ip_discovery_response",
    "speedups_enabled",
} | {"DaveSession"}


def test_the_exported_names_are_the_same_set():
    assert len(fastvoice.__all__) == len(set(fastvoice.__all__)), "a name is listed twice"
    assert set(fastvoice.__all__) == EXPORTED


@pytest.mark.parametrize("package", [fastvoice, fastvoice.testing], ids=lambda p: p.__name__)
def test_every_exported_name_resolves(package):
    assert len(package.__all__) == len(set(package.__all__))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []


@pytest.mark.parametrize("package", [fastvoice, fastvoice.testing], ids=lambda p: p.__name__)
def test_the_export_list_is_written_once(package):
    tree = ast.parse(Path(package.__file__).read_text())
    assignments = [
        node for node in tree.body
        if isinstance(node, (ast.Assign, ast.AugAssign))
        and "__all__" in [getattr(t, "id", None) for t in getattr(node, "targets", [getattr(node, "target", None)])]
    ]
    assert len(assignments) == 1 and isinstance(assignments[0], ast.Assign)
    imports_after = [node.lineno for node in tree.body[tree.body.index(assignments[0]):]
                     if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports_after == [], "imports after the export list"


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(fastvoice.dave, "_warned_dave_manager", False)


def test_dave_manager_is_dave_session_and_warns_once(fresh_warning):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fastvoice.DaveManager
        again = fastvoice.dave.DaveManager
        from fastvoice.dave import DaveManager
    assert first is again is DaveManager is fastvoice.DaveSession
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    assert "DaveSession" in str(deprecations[0].message)
    assert deprecations[0].filename == __file__  # it points at the code that used the old name


def test_dave_manager_warns_from_the_module_too(fresh_warning):
    with pytest.warns(DeprecationWarning, match="use fastvoice.DaveSession"):
        assert fastvoice.dave.DaveManager is fastvoice.dave.DaveSession


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'DaveManagr'"):
        fastvoice.DaveManagr  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fastvoice.dave.nothing  # noqa: B018
