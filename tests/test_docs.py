"""The documentation cannot fall behind the code.

* every public name (each public module's ``__all__``) has an entry in docs/api.md, and the
  parameters of every signature shown in an entry heading are the code's;
* every seed name of tests/test_seed_api.py's map has a row in docs/api.md's seed map,
  next to its Python name;
* the example test file in docs/testing.md runs and passes, in a pytest of its own;
* relative links in docs/*.md and README.md lead to files that exist;
* examples/load_test.py runs (local server, and a stand-in for Discord's main gateway).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import re
import sys
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

import fastvoice

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api.md"
LOAD_TEST = ROOT / "examples" / "load_test.py"


def _api_text() -> str:
    return API.read_text(encoding="utf-8")


# -- 1. every public name has an entry ---------------------------------------------------------


def _public_modules() -> list[str]:
    """fastvoice and every submodule whose dotted name has no part starting with ``_``."""
    names = ["fastvoice"]
    for info in pkgutil.walk_packages(fastvoice.__path__, "fastvoice."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def _public_names() -> list[tuple[str, str | None]]:
    """(module, name) for every name in a public module's ``__all__``; (module, None) when the
    module cannot be imported here (an adapter whose framework is not installed)."""
    pairs: list[tuple[str, str | None]] = []
    for module_name in _public_modules():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            pairs.append((module_name, None))
            continue
        for name in getattr(module, "__all__", ()):
            pairs.append((module_name, name))
    return pairs


def _entry_pattern(name: str) -> re.Pattern[str]:
    # A heading holding the name in backticks, bare or qualified, maybe followed by a signature.
    return re.compile(rf"^#+ .*`(?:[A-Za-z_][\w.]*\.)?{re.escape(name)}(?:[`(\[ ])", re.MULTILINE)


def test_public_modules_are_found():
    modules = _public_modules()
    assert {"fastvoice", "fastvoice.testing", "fastvoice.conn", "fastvoice.gateway_messages"} <= set(modules)


@pytest.mark.parametrize("module_name, name", _public_names())
def test_every_public_name_has_an_entry(module_name, name):
    if name is None:
        pytest.skip(f"{module_name} cannot be imported here (its framework is not installed)")
    assert _entry_pattern(name).search(_api_text()), f"docs/api.md has no heading entry for {module_name}.{name}"


def _split_params(text: str) -> list[str]:
    """Top-level comma-separated parts of a parameter list (defaults may hold commas)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts]


def _documented_signatures() -> list[tuple[str, list[str]]]:
    """(name, parameter names) of every ``Name(params)`` in an entry heading of docs/api.md."""
    found = []
    for heading in re.findall(r"^#+ (.*)$", _api_text(), re.MULTILINE):
        for name, params in re.findall(r"`([A-Za-z_][\w.]*)\((.*?)\)`", heading):
            names = []
            for part in _split_params(params):
                if part == "*":
                    continue
                names.append(re.match(r"\**([A-Za-z_]\w*)", part).group(1))
            found.append((name.split(".")[-1], names))
    return found


def _find_callable(name: str):
    for module_name in _public_modules() + ["fastvoice._rtp_py"]:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    return None


@pytest.mark.parametrize("name, documented", _documented_signatures(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_signature_matches_the_code(name, documented):
    obj = _find_callable(name)
    assert obj is not None, f"docs/api.md documents {name}(...), which no public module has"
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        # A compiled class: its pure-Python twin is the typed source of truth.
        signature = inspect.signature(getattr(importlib.import_module(re.sub(r"_c$", "_py", obj.__module__)), name))
    actual = [p for p in signature.parameters if p != "self"]
    assert documented == actual, f"docs/api.md: {name}({', '.join(documented)}); the code: {name}({', '.join(actual)})"


def test_signatures_are_checked():
    assert len(_documented_signatures()) > 60


def test_entry_pattern_needs_a_heading():
    assert _entry_pattern("Conn").search("### `Conn(guild_id)`")
    assert _entry_pattern("open").search("#### `Conn.open(channel_id)`")
    assert not _entry_pattern("Conn").search("mentioned `Conn` in prose")
    assert not _entry_pattern("Conn").search("### `ConnConfig`")


# -- 2. the seed map ---------------------------------------------------------------------------


def _seed_api_module():
    spec = importlib.util.spec_from_file_location("_seed_api_map", ROOT / "tests" / "test_seed_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _map_rows() -> list[tuple[list[str], list[str]]]:
    """(seed names, Python names): the backticked names of the first two cells of each table row."""
    rows = []
    for line in _api_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = line.strip().strip("|").split("|")
        if len(cells) < 2:
            continue
        seed = re.findall(r"`([^`]+)`", cells[0])
        python = re.findall(r"`([^`]+)`", cells[1])
        if seed and python:
            rows.append((seed, [p.split("(")[0] for p in python]))
    return rows


def _squash(name: str) -> str:
    return name.replace("_", "").replace(".", "").lower()


def _expected_seed_pairs() -> list[tuple[str, str]]:
    """(seed name, Python name) for every entry of the seed map test, spelled as in the seed."""
    m = _seed_api_module()
    pairs = [(name, name) for name in m.SAME_NAME]
    pairs += sorted(m.RENAMED.items())
    pairs += [(name, name) for name in m.MESSAGE_TYPES]
    for value in m.CLOSE_CODE_VALUES:
        snake = "".join("_" + c if c.isupper() else c for c in value).lstrip("_").upper()
        pairs.append((f"GatewayCloseEventCode{value}", f"GATEWAY_CLOSE_EVENT_CODE_{snake}"))
    pairs += [(option, f"{config}.{field}") for option, (config, field) in sorted(m.OPTIONS.items())]
    return pairs


def _expected_member_names() -> list[str]:
    """Python names of the seed's enum constants and methods; their seed names vary in spelling."""
    m = _seed_api_module()
    names = [f"{enum}.{member}" for enum, members in sorted(m.ENUM_MEMBERS.items()) for member in members]
    names += [f"{cls}.{method}" for cls, methods in sorted(m.METHODS.items()) for method in methods]
    return names


@pytest.mark.parametrize("seed, python", _expected_seed_pairs())
def test_seed_name_has_a_row_with_its_python_name(seed, python):
    rows = _map_rows()
    assert any(seed in s and python in p for s, p in rows), f"no seed map row `{seed}` | `{python}` in docs/api.md"


@pytest.mark.parametrize("python", _expected_member_names())
def test_seed_member_has_a_row_with_its_python_name(python):
    owner, member = python.split(".")
    rows = _map_rows()
    # The seed cell spells it the Go way (OpcodeIdentify, SpeakingFlagNone, Conn.UserIDBySSRC):
    # compared without case, dots and underscores. The seed's own spelling slips are listed.
    prefix = {"SpeakingFlags": "speakingflag"}.get(owner, _squash(owner))
    seed_member = {"Manager.for_each_conn": "ForEachCon"}.get(python, member)
    matching = [s for s, p in rows if python in p]
    assert matching, f"no seed map row for {python} in docs/api.md"
    assert any(_squash(name) == prefix + _squash(seed_member) for seeds in matching for name in seeds), (
        f"the seed cell of {python}'s row does not name the seed's {owner} {seed_member}"
    )


def test_every_seed_row_names_real_python_names():
    # The other direction: a Python name in the map's second column exists.
    checked = 0
    for _, pythons in _map_rows():
        for python in pythons:
            if not re.fullmatch(r"[A-Za-z_][\w.]*", python):
                continue
            head, _, rest = python.partition(".")
            holder = None
            for module_name in _public_modules():
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    continue
                if hasattr(module, head):
                    holder = getattr(module, head)
                    break
            if holder is None:
                continue  # prose names such as keyword arguments are not checked
            obj = holder
            for part in rest.split(".") if rest else ():
                fields = getattr(obj, "__dataclass_fields__", {})
                assert hasattr(obj, part) or part in fields, f"docs/api.md maps to {python}, which does not exist"
                obj = getattr(obj, part, None)
            checked += 1
    assert checked > 100


# -- 3. the testing guide's example runs --------------------------------------------------------


def _example_files() -> dict[str, str]:
    text = (DOCS / "testing.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# (test_\w+\.py)\b.*?)```", text, re.DOTALL)
    return {name: code for code, name in blocks}


def test_testing_guide_has_an_example_file():
    files = _example_files()
    assert files and all(code.count("def test_") >= 3 for code in files.values())


async def test_testing_guide_example_passes(tmp_path):
    files = _example_files()
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    expected = sum(code.count("\nasync def test_") + code.count("\ndef test_") for code in files.values())
    # A pytest of its own, outside this repository's configuration: as a bot author would run it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
        *sorted(files), cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
    assert f"{expected} passed" in report, report


def _knob_tables() -> str:
    text = (DOCS / "testing.md").read_text(encoding="utf-8")
    start = text.index("## Fault knobs")
    return text[start:text.index("\n## ", start + 1)]


def test_testing_guide_lists_every_knob_of_the_server():
    from fastvoice.testing import VoiceServer

    doc = VoiceServer.__doc__
    knobs = doc[doc.index("Knobs"):doc.index("Recordings")]
    names = {name.split(".")[-1] for name in re.findall(r"``([A-Za-z_][\w.]*)", knobs)}
    names |= set(re.findall(r":meth:`([A-Za-z_]\w*)`", knobs))
    assert len(names) > 15
    guide = (DOCS / "testing.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if not re.search(rf"`[^`\n]*\b{n}\b[^`\n]*`", guide))
    assert not missing, f"docs/testing.md does not mention these VoiceServer knobs: {missing}"


def test_knobs_in_the_testing_guide_exist():
    from fastvoice.testing import ServerConnection, ServerSession, VoiceServer, _server

    source = Path(_server.__file__).read_text(encoding="utf-8")
    rows = [line for line in _knob_tables().splitlines() if line.startswith("| `")]
    assert len(rows) > 20
    for row in rows:
        for cell_name in re.findall(r"`(?:await )?([A-Za-z_]\w*)", row.split("|")[1]):
            exists = any(hasattr(cls, cell_name) for cls in (VoiceServer, ServerSession, ServerConnection))
            exists = exists or cell_name in inspect.signature(VoiceServer).parameters
            assert exists or f"self.{cell_name} =" in source or f"self.{cell_name}:" in source, (
                f"docs/testing.md lists a knob {cell_name!r} the local voice server does not have"
            )


# -- 4. relative links --------------------------------------------------------------------------


def _markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def test_docs_exist():
    for name in ("README.md", "api.md", "architecture.md", "testing.md"):
        assert (DOCS / name).is_file(), name


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks are not links
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute URLs and anchors in the same page
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files: {broken}"


def test_readme_links_to_docs():
    assert "](docs/" in (ROOT / "README.md").read_text(encoding="utf-8")


# -- 5. the load script --------------------------------------------------------------------------


async def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(LOAD_TEST), *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace")


def _report_rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if re.match(r"^\s*\d+\.\ds\s", line)]


async def test_load_script_help():
    code, out = await _run("--help")
    assert code == 0, out
    assert "--connections" in out and "--discord" in out


async def test_load_script_rejects_bad_arguments():
    code, out = await _run("--connections", "0")
    assert code == 2 and "--connections must be >= 1, got 0" in out
    code, out = await _run("--discord")
    assert code == 2 and "--discord needs --channels" in out


async def test_load_script_streams_against_the_local_server():
    code, out = await _run("-n", "5", "-s", "2", "--interval", "1")
    assert code == 0, out
    assert "5 of 5 connections open" in out, out
    rows = _report_rows(out)
    assert len(rows) == 2, out
    # calls live, and frames sent per second: 5 calls x 50 frames/s, give or take a start-up tick
    assert all(row[1] == "5" and 200 <= float(row[2]) <= 260 for row in rows), out


class StandInDiscordGateway:
    """Discord's main gateway as far as the load script uses it, leading to a local VoiceServer."""

    USER_ID = 777

    def __init__(self, server, token: str, guilds: dict[int, int]) -> None:
        self.server = server
        self.token = token
        self.guilds = guilds  # guild id -> voice channel id
        self.identified_with: list[str] = []
        self.voice_requests: list[tuple[int, int | None]] = []
        self.session_id = "main-session"
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seq = 0

        async def dispatch(name: str, data: dict) -> None:
            nonlocal seq
            seq += 1
            await ws.send_str(json.dumps({"op": 0, "t": name, "s": seq, "d": data}))

        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame["op"] == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif frame["op"] == 2:
                self.identified_with.append(frame["d"]["token"])
                await dispatch("READY", {"user": {"id": str(self.USER_ID)}, "session_id": self.session_id})
                for guild, channel in self.guilds.items():
                    await dispatch("GUILD_CREATE", {"id": str(guild), "channels": [
                        {"id": str(guild + 1), "type": 0}, {"id": str(channel), "type": 2}]})
            elif frame["op"] == 4:
                d = frame["d"]
                guild = int(d["guild_id"])
                channel = None if d["channel_id"] is None else int(d["channel_id"])
                self.voice_requests.append((guild, channel))
                state, server_update = self.server.voice_updates(
                    guild, self.USER_ID, channel, session_id=self.session_id, token=f"voice-{guild}")
                if channel is None:
                    state["channel_id"] = None
                    await dispatch("VOICE_STATE_UPDATE", state)
                else:
                    await dispatch("VOICE_STATE_UPDATE", state)
                    await dispatch("VOICE_SERVER_UPDATE", server_update)
        return ws


async def test_load_script_against_a_stand_in_for_discord():
    from fastvoice.testing import VoiceServer

    guilds = {501: 601, 502: 602}
    async with VoiceServer() as server:
        discord = StandInDiscordGateway(server, "not-a-real-token", guilds)
        await discord.start()
        try:
            env = dict(os.environ, LOAD_TEST_TOKEN="not-a-real-token")
            code, out = await _run("--discord", "--channels", "601,602", "--token-env", "LOAD_TEST_TOKEN",
                                   "--gateway-url", discord.url, "-s", "2", "--interval", "1", env=env)
        finally:
            await discord.close()
        assert code == 0, out
        assert discord.identified_with == ["not-a-real-token"]
        assert "not-a-real-token" not in out  # the token is never printed
        assert set(discord.voice_requests) == {(501, 601), (502, 602), (501, None), (502, None)}
        assert len(discord.voice_requests) == 4
        assert "2 of 2 connections open" in out, out
        rows = _report_rows(out)
        assert rows and all(row[1] == "2" for row in rows), out
        for session in server.sessions:
            assert len(session.packets) >= 50, session  # each call streamed about 2 s of the clip
        assert {s.channel_id for s in server.sessions} == {601, 602}


async def test_load_script_without_the_token():
    env = {k: v for k, v in os.environ.items() if k != "LOAD_TEST_TOKEN"}
    code, out = await _run("--discord", "--channels", "1", "--token-env", "LOAD_TEST_TOKEN", env=env)
    assert code == 2 and "LOAD_TEST_TOKEN" in out
