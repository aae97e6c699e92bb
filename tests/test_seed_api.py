"""Every name of the seed API (disgo's voice package) has its Python counterpart."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import fastvoice
from fastvoice import close_codes, gateway_messages

# Seed types and values whose Python name at the top of the package is the same.
SAME_NAME = [
    "AudioReceiver", "AudioReceiverCreateFunc", "AudioSender", "AudioSenderCreateFunc", "CloseHandlerFunc",
    "Conn", "ConnConfig", "ConnCreateFunc", "EncryptionMode", "EventHandlerFunc", "Gateway",
    "GatewayCloseEventCode", "GatewayConfig", "GatewayCreateFunc", "GatewayMessage", "Manager", "ManagerConfig",
    "Opcode", "OpusFrameProvider", "OpusFrameReceiver", "OpusReader", "OpusWriter", "Packet", "Protocol",
    "SpeakingFlags", "State", "StateProviderFunc", "StateUpdateFunc", "Status", "UDPConn", "UDPConnConfig",
    "UDPConnCreateFunc", "UserFilterFunc",
]

RENAMED = {
    "OpusFrameSizeMs": "OPUS_FRAME_SIZE_MS",
    "OpusFrameSize": "OPUS_FRAME_SIZE",
    "OpusFrameSizeBytes": "OPUS_FRAME_SIZE_BYTES",
    "OpusPacketHeaderSize": "OPUS_PACKET_HEADER_SIZE",
    "UDPTimeout": "UDP_TIMEOUT",
    "GatewayVersion": "GATEWAY_VERSION",
    "SilenceAudioFrame": "SILENCE_AUDIO_FRAME",
    "ErrDecryptionFailed": "DecryptionFailedError",
    "ErrGatewayNotConnected": "GatewayNotConnectedError",
    "ErrGatewayAlreadyConnected": "GatewayAlreadyConnectedError",
    "GatewayCloseEventCodes": "GATEWAY_CLOSE_EVENT_CODES",
    "GatewayCloseEventCodeByCode": "gateway_close_event_code_by_code",
}

MESSAGE_TYPES = [
    "GatewayMessageData", "GatewayMessageDataClientConnect", "GatewayMessageDataClientDisconnect",
    "GatewayMessageDataHeartbeat", "GatewayMessageDataHeartbeatACK", "GatewayMessageDataHello",
    "GatewayMessageDataIdentify", "GatewayMessageDataReady", "GatewayMessageDataResume",
    "GatewayMessageDataSelectProtocol", "GatewayMessageDataSelectProtocolData",
    "GatewayMessageDataSessionDescription", "GatewayMessageDataSpeaking", "GatewayMessageDataUnknown",
]

CLOSE_CODE_VALUES = [
    "HeartbeatTimeout", "UnknownError", "UnknownOpcode", "FailedDecode", "NotAuthenticated",
    "AuthenticationFailed", "AlreadyAuthenticated", "SessionNoLongerValid", "SessionTimeout", "ServerNotFound",
    "UnknownProtocol", "Disconnected", "VoiceServerCrash", "UnknownEncryptionMode", "Unknown",
]

ENUM_MEMBERS = {
    "Opcode": ["IDENTIFY", "SELECT_PROTOCOL", "READY", "HEARTBEAT", "SESSION_DESCRIPTION", "SPEAKING",
               "HEARTBEAT_ACK", "RESUME", "HELLO", "RESUMED", "CLIENT_DISCONNECT", "GUILD_SYNC"],
    "Status": ["UNCONNECTED", "CONNECTING", "WAITING_FOR_HELLO", "IDENTIFYING", "RESUMING", "WAITING_FOR_READY",
               "READY", "DISCONNECTED"],
    "SpeakingFlags": ["MICROPHONE", "SOUNDSHARE", "PRIORITY", "NONE"],
    "EncryptionMode": ["NORMAL", "SUFFIX", "LITE"],
    "Protocol": ["UDP"],
}

# The seed's functional options, as fields of the config objects.
OPTIONS = {
    "WithConnLogger": ("ConnConfig", "logger"),
    "WithConnGatewayCreateFunc": ("ConnConfig", "gateway_create_func"),
    "WithConnGatewayConfigOpts": ("ConnConfig", "gateway_config"),
    "WithUDPConnCreateFunc": ("ConnConfig", "udp_conn_create_func"),
    "WithUDPConnConfigOpts": ("ConnConfig", "udp_config"),
    "WithConnAudioSenderCreateFunc": ("ConnConfig", "audio_sender_create_func"),
    "WithConnAudioReceiverCreateFunc": ("ConnConfig", "audio_receiver_create_func"),
    "WithConnEventHandlerFunc": ("ConnConfig", "event_handler_func"),
    "WithGatewayLogger": ("GatewayConfig", "logger"),
    "WithGatewayDialer": ("GatewayConfig", "session"),
    "WithGatewayAutoReconnect": ("GatewayConfig", "auto_reconnect"),
    "WithLogger": ("ManagerConfig", "logger"),
    "WithConnCreateFunc": ("ManagerConfig", "conn_create_func"),
    "WithConnConfigOpts": ("ManagerConfig", "conn_config"),
    "WithUDPConnLogger": ("UDPConnConfig", "logger"),
    "WithUDPConnDialer": ("UDPConnConfig", "local_addr"),
}

METHODS = {
    "Conn": ["gateway", "udp", "channel_id", "guild_id", "user_id_by_ssrc", "set_speaking", "set_opus_frame_provider",
             "set_opus_frame_receiver", "set_event_handler_func", "open", "close", "handle_voice_state_update",
             "handle_voice_server_update"],
    "Manager": ["handle_voice_state_update", "handle_voice_server_update", "create_conn", "get_conn",
                "for_each_conn", "remove_conn", "close"],
    "Gateway": ["ssrc", "latency", "open", "close", "close_with_code", "send"],
    "UDPConn": ["local_addr", "remote_addr", "set_secret_key", "set_deadline", "set_read_deadline",
                "set_write_deadline", "open", "close", "read", "read_packet", "write"],
    "AudioSender": ["open", "close"],
    "AudioReceiver": ["open", "cleanup_user", "close"],
    "OpusReader": ["provide_opus_frame", "close"],
    "OpusWriter": ["receive_opus_frame", "cleanup_user", "close"],
    "OpusFrameProvider": ["provide_opus_frame", "close"],
    "OpusFrameReceiver": ["receive_opus_frame", "cleanup_user", "close"],
    "Packet": ["sequence", "timestamp", "ssrc", "opus"],
    "State": ["guild_id", "user_id", "channel_id", "session_id", "token", "endpoint"],
    "GatewayCloseEventCode": ["code", "description", "explanation", "reconnect"],
}


@pytest.mark.parametrize("name", SAME_NAME)
def test_same_name(name):
    assert name in fastvoice.__all__ and getattr(fastvoice, name) is not None


@pytest.mark.parametrize("seed, python", sorted(RENAMED.items()))
def test_renamed(seed, python):
    assert python in fastvoice.__all__, f"{seed} -> {python}"


@pytest.mark.parametrize("name", MESSAGE_TYPES)
def test_message_types(name):
    assert inspect.isclass(getattr(gateway_messages, name))


@pytest.mark.parametrize("name", CLOSE_CODE_VALUES)
def test_close_code_values(name):
    snake = "".join("_" + c if c.isupper() else c for c in name).lstrip("_").upper()
    entry = getattr(close_codes, f"GATEWAY_CLOSE_EVENT_CODE_{snake}")
    assert isinstance(entry, fastvoice.GatewayCloseEventCode)


@pytest.mark.parametrize("enum_name, members", sorted(ENUM_MEMBERS.items()))
def test_enum_members(enum_name, members):
    enum_type = getattr(fastvoice, enum_name)
    for member in members:
        assert hasattr(enum_type, member), f"{enum_name}.{member}"


@pytest.mark.parametrize("option, target", sorted(OPTIONS.items()))
def test_options_are_config_fields(option, target):
    config_name, field_name = target
    config_type = getattr(fastvoice, config_name)
    assert field_name in {f.name for f in dataclasses.fields(config_type)}, f"{option} -> {config_name}.{field_name}"
    config_type()  # the seed's Default*Config: every field has a default


@pytest.mark.parametrize("type_name, methods", sorted(METHODS.items()))
def test_methods(type_name, methods):
    cls = getattr(fastvoice, type_name)
    for method in methods:
        assert hasattr(cls, method) or method in getattr(cls, "__dataclass_fields__", {}) or method in getattr(
            cls, "__annotations__", {}
        ), f"{type_name}.{method}"
