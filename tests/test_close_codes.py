"""The close code table (PROTOCOL.md section 2) as data."""

from __future__ import annotations

import pytest

from fastvoice.close_codes import (
    GATEWAY_CLOSE_EVENT_CODE_UNKNOWN,
    GATEWAY_CLOSE_EVENT_CODES,
    CloseBehaviour,
    gateway_close_event_code_by_code,
)

R, N, S = CloseBehaviour.RESUME, CloseBehaviour.NEW_SESSION, CloseBehaviour.STOP

# code: (behaviour, client bug, stop unless moved) -- straight from the protocol table
EXPECTED = {
    1000: (R, False, False),
    4000: (R, False, False),
    4001: (N, True, False),
    4002: (N, True, False),
    4003: (N, True, False),
    4004: (S, False, False),
    4005: (N, True, False),
    4006: (N, False, False),
    4009: (N, False, False),
    4011: (N, False, False),
    4012: (S, True, False),
    4014: (S, False, True),
    4015: (R, False, False),
    4016: (S, False, False),
    4017: (S, False, False),
    4020: (N, True, False),
    4021: (S, False, False),
    4022: (S, False, True),
}


def test_table_has_exactly_the_documented_codes():
    assert set(GATEWAY_CLOSE_EVENT_CODES) == set(EXPECTED)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_each_code_behaviour(code):
    behaviour, client_bug, unless_moved = EXPECTED[code]
    entry = gateway_close_event_code_by_code(code)
    assert entry.code == code
    assert entry.behaviour is behaviour
    assert entry.client_bug is client_bug
    assert entry.stop_unless_moved is unless_moved
    assert entry.reconnect is (behaviour is not S)
    assert entry.description and entry.explanation
    assert str(code) in str(entry)


def test_seed_descriptions_are_kept():
    assert gateway_close_event_code_by_code(4004).description == "Authentication failed"
    assert gateway_close_event_code_by_code(4015).explanation == "The server crashed. Our bad! Try resuming."
    assert gateway_close_event_code_by_code(1000).description == "Heartbeat timeout"


@pytest.mark.parametrize("code", [None, 0, 1001, 1006, 1011, 3000, 4007, 4999, 65535])
def test_unknown_codes_give_the_seed_unknown_entry(code):
    entry = gateway_close_event_code_by_code(code)
    assert entry is GATEWAY_CLOSE_EVENT_CODE_UNKNOWN
    assert entry.code == 0 and entry.description == "Unknown" and entry.reconnect
    assert entry.behaviour is R  # a dropped transport is resumed


def test_table_is_read_only():
    with pytest.raises(TypeError):
        GATEWAY_CLOSE_EVENT_CODES[4004] = GATEWAY_CLOSE_EVENT_CODE_UNKNOWN  # type: ignore[index]
    with pytest.raises(AttributeError):
        gateway_close_event_code_by_code(4004).code = 1  # type: ignore[misc]
