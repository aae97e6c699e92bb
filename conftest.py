"""Fixtures shared by every test: the two twins of the packet core."""

from __future__ import annotations

import importlib
import types

import pytest

from fastvoice._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS


def _load_twin(name: str) -> types.ModuleType:
    if name == "py":
        return importlib.import_module("fastvoice._rtp_py")
    if NO_EXTENSIONS:
        pytest.skip("FASTVOICE_NO_EXTENSIONS is set: compiled twin not under test")
    try:
        return importlib.import_module("fastvoice._rtp_c")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise
        pytest.skip(f"compiled twin not built: {exc}")


@pytest.fixture(scope="session", params=["c", "py"])
def rtp(request: pytest.FixtureRequest) -> types.ModuleType:
    """The packet core module under test: compiled (``c``) or pure (``py``)."""
    return _load_twin(request.param)


@pytest.fixture(scope="session")
def rtp_c() -> types.ModuleType:
    """The compiled twin (skipped when it is not built or not wanted)."""
    return _load_twin("c")


@pytest.fixture(scope="session")
def rtp_py() -> types.ModuleType:
    """The pure-Python twin."""
    return _load_twin("py")
