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


class _RtpTwin:
    """One twin of the packet core (``_rtp_c`` / ``_rtp_py``) with its I/O edge
    (``_rtp_edge_c`` / ``_rtp_edge_py``): names are read from the core, then the edge;
    attributes set (``monkeypatch.setattr``) go to the core module."""

    def __init__(self, core: types.ModuleType, edge: types.ModuleType) -> None:
        object.__setattr__(self, "_core", core)
        object.__setattr__(self, "_edge", edge)
        #: The core module itself, for ``monkeypatch.setattr(rtp.core, ...)`` (monkeypatch
        #: looks a name up without ``__getattr__`` in newer pytest releases).
        object.__setattr__(self, "core", core)

    def __getattr__(self, name: str) -> object:
        try:
            return getattr(self._core, name)
        except AttributeError:
            return getattr(self._edge, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._core, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._core, name)


def _load_rtp_twin(name: str) -> _RtpTwin:
    return _RtpTwin(_load_twin(name), _load_twin(name, "rtp_edge"))


@pytest.fixture(scope="session", params=["c", "py"])
def rtp(request: pytest.FixtureRequest) -> _RtpTwin:
    """The packet core and its I/O edge under test: compiled (``c``) or pure (``py``)."""
    return _load_rtp_twin(request.param)


@pytest.fixture(scope="session")
def rtp_c() -> _RtpTwin:
    """The compiled twin (skipped when it is not built or not wanted)."""
    return _load_rtp_twin("c")


@pytest.fixture(scope="session")
def rtp_py() -> _RtpTwin:
    """The pure-Python twin."""
    return _load_rtp_twin("py")


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
