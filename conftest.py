"""Fixtures shared by every test: the two twins of the packet core and of the Opus decoder."""

from __future__ import annotations

import importlib
import os
import types

import pytest

from fastvoice._env import NO_EXTENSIONS, REQUIRE_EXTENSIONS


def _load_twin(name: str, core: str = "rtp") -> types.ModuleType:
    if name == "py":
        return importlib.import_module(f"fastvoice._{core}_py")
    if NO_EXTENSIONS:
        pytest.skip("FASTVOICE_NO_EXTENSIONS is set: compiled twin not under test")
    try:
        return importlib.import_module(f"fastvoice._{core}_c")
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


def _load_opus_twin(name: str) -> types.ModuleType:
    """An Opus decoder twin with libopus loaded: skipped without libopus, unless
    FASTVOICE_REQUIRE_LIBOPUS=1 (CI) makes that a failure."""
    twin = _load_twin(name, "opus")
    from fastvoice._opus_common import OpusNotAvailableError, load_opus

    try:
        load_opus()
    except OpusNotAvailableError as exc:
        if os.environ.get("FASTVOICE_REQUIRE_LIBOPUS") == "1":
            pytest.fail(f"FASTVOICE_REQUIRE_LIBOPUS=1 but {exc}")
        pytest.skip(str(exc))
    return twin


@pytest.fixture(scope="session", params=["c", "py"])
def opus(request: pytest.FixtureRequest) -> types.ModuleType:
    """The Opus decoder module under test: compiled (``c``) or pure (``py``), libopus loaded."""
    return _load_opus_twin(request.param)


@pytest.fixture(scope="session")
def opus_c() -> types.ModuleType:
    """The compiled Opus decoder twin (skipped when it is not built or not wanted)."""
    return _load_opus_twin("c")


@pytest.fixture(scope="session")
def opus_py() -> types.ModuleType:
    """The pure-Python Opus decoder twin."""
    return _load_opus_twin("py")
