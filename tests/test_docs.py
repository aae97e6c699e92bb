"""The documentation cannot fall behind the code.

* every public name (each public module's ``__all__``) has an entry in docs/api.md, and the
  parameters of every signature shown in an entry heading are the code's;
* every seed name of tests/test_seed_api.py's map has a row in docs/api.md's seed map,
  next to its Python name;
* the example test file in docs/testing.md runs and passes, in a pytest of its own;
* relative links in docs/*.md and README.md lead to files that exist;
* examples/load_test.py runs (local server, and a stand-in for Discord's main gateway);
* every code block of README.md and docs/*.md runs as written, with stand-ins where it leaves
  names to the reader (``<!-- docs-test: run with stand-ins for a, b -->``), or says why not
  (``<!-- docs-test: not run: <reason> -->``, a reason this file checks against the block);
  shell blocks are checked (extras exist, every option is in the command's --help).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import re
import typing
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
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
        # A compiled class: its pure-Python twin is the typed source of truth (``_x_c`` has
        # ``_x_py``, ``_x_c_part`` has ``_x_py_part``).
        twin = re.sub(r"_c(?=_|$)", "_py", obj.__module__, count=1)
        signature = inspect.signature(getattr(importlib.import_module(twin), name))
    actual = [p for p in signature.parameters if p != "self"]
    forms = [actual] if documented == actual else [actual] + _overload_forms(obj)
    if documented not in forms and any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        if not hasattr(typing, "get_overloads"):
            pytest.skip(f"{name} takes two argument orders (overloads), readable from Python 3.11")
    assert documented in forms, f"docs/api.md: {name}({', '.join(documented)}); the code: {forms}"


def _overload_forms(obj) -> list[list[str]]:
    """The parameter names of each ``@overload`` of ``obj`` (of its ``__init__`` for a class)."""
    get_overloads = getattr(typing, "get_overloads", None)
    if get_overloads is None:
        return []
    target = obj.__init__ if isinstance(obj, type) else obj
    return [[p for p in inspect.signature(f).parameters if p != "self"] for f in get_overloads(target)]


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


def _example_config() -> str:
    block = next(b for b in _code_blocks() if b.lang == "ini" and b.marker.startswith("pytest.ini for the example"))
    return block.code


def test_testing_guide_shows_the_loop_scope_setting():
    # pytest-asyncio 0.24-0.26 warn at start-up unless this is set: the guide shows the line.
    config = _example_config()
    assert config.splitlines()[0] == "[pytest]"
    assert re.search(r"^asyncio_default_fixture_loop_scope = function$", config, re.MULTILINE)


async def test_testing_guide_example_passes(tmp_path):
    files = _example_files()
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text(_example_config(), encoding="utf-8")
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
    assert "asyncio_default_fixture_loop_scope" not in report and "PytestConfigWarning" not in report, report


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


# -- 6. every code block runs as written, or says why not ----------------------------------------


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    marker: str  # what the <!-- docs-test: ... --> line before the fence says ("" for none)

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"(?:<!-- docs-test: (?P<marker>[^\n]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```",
                    re.DOTALL | re.MULTILINE)

#: Why a Python block may stay unrun, and what the block must show for the reason to hold.
NOT_RUN = {
    "it needs a Discord bot token": lambda code: "bot.run(" in code and "YOUR_BOT_TOKEN" in code,
    "it fetches a URL": lambda code: re.search(r"\bhttps?://", code) is not None,
}


def _code_blocks() -> list[Block]:
    blocks = []
    for path in _markdown_files():
        text = path.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            line = text.count("\n", 0, m.start("lang")) + 1
            blocks.append(Block(path, line, m.group("lang"), m.group("code"), m.group("marker") or ""))
    return blocks


def _blocks(kind: str) -> list[Block]:
    def kind_of(b: Block) -> str:
        if b.lang == "python" and not b.marker:
            return "run"
        if b.lang == "python" and b.marker.startswith("run with stand-ins for "):
            return "stand-ins"
        if b.lang == "python" and b.marker.startswith("not run: "):
            return "not run"
        if b.lang == "sh":
            return "shell"
        return "other"

    return [b for b in _code_blocks() if kind_of(b) == kind]


def _free_names(code: str) -> set[str]:
    """Names a block reads that it neither assigns, imports, defines nor gets from builtins
    (function parameters count inside their function only)."""

    def scope(body: list[ast.AST], params: set[str]) -> set[str]:
        loaded, bound, nested = set(), set(params), []
        stack = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not isinstance(node, ast.Lambda):
                    bound.add(node.name)
                    stack.extend(node.decorator_list)
                args = node.args
                names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
                names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
                stack.extend(d for d in args.defaults + args.kw_defaults if d is not None)
                nested.append((node.body if isinstance(node.body, list) else [node.body], names))
                continue
            if isinstance(node, ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            stack.extend(ast.iter_child_nodes(node))
        free = loaded - bound
        for inner_body, names in nested:
            free |= scope(inner_body, names) - bound
        return free

    return scope(ast.parse(code).body, set()) - set(dir(builtins))


def _stand_in_names(block: Block) -> set[str]:
    return {n.strip() for n in block.marker.removeprefix("run with stand-ins for ").split(",")}


async def _execute(block: Block, namespace: dict) -> None:
    """Run a block as written, at module level (top-level ``await`` allowed, as in asyncio's REPL).

    A block that starts its own loop (``asyncio.run(...)``, a script's way) runs in a thread of
    its own, where no loop is running yet."""
    if re.search(r"^asyncio\.run\(", block.code, re.M):
        script = compile(block.code, str(block), "exec")
        await asyncio.wait_for(asyncio.to_thread(exec, script, namespace), 60)
        return
    code = compile(block.code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # noqa: S307 - the repository's own documentation
    if inspect.iscoroutine(result):
        await asyncio.wait_for(result, 60)


def test_every_code_block_is_run_or_says_why_not():
    blocks = _code_blocks()
    assert len(blocks) >= 10
    for block in blocks:
        assert block.lang in ("python", "sh", "ini", "text"), f"{block}: a fence needs one of these languages"
        if block.lang == "text":
            assert not block.marker, block
        elif block.lang == "ini":
            assert block.marker.startswith("pytest.ini for the example"), block
        elif block.lang == "sh":
            assert block.marker.startswith("checked, not run: "), f"{block}: say why a shell block is not run"
        elif block.marker.startswith("a pytest file"):
            assert re.match(r"# test_\w+\.py", block.code), block
            assert "test_testing_guide_example_passes" in block.marker
        elif block.marker.startswith("not run: "):
            reason = block.marker.removeprefix("not run: ")
            assert reason in NOT_RUN, f"{block}: unknown reason {reason!r}"
            assert NOT_RUN[reason](block.code), f"{block}: the block does not show that {reason}"
        elif block.marker.startswith("run with stand-ins for "):
            # The stand-ins are exactly the names the block leaves to the reader.
            assert _free_names(block.code) == _stand_in_names(block), block
        else:
            assert not block.marker, f"{block}: unknown docs-test marker {block.marker!r}"
            assert not _free_names(block.code), f"{block}: uses names it does not define: {_free_names(block.code)}"
    assert _blocks("run") and _blocks("stand-ins") and _blocks("not run") and _blocks("shell")


@pytest.mark.parametrize("block", _blocks("not run"), ids=str)
def test_blocks_that_are_not_run_compile_and_import(block):
    tree = ast.parse(block.code)
    compile(block.code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    imports = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    if "discord" in block.code:
        pytest.importorskip("discord")
    exec(compile(imports, str(block), "exec"), {})  # every name it imports exists


@pytest.mark.parametrize("block", _blocks("run"), ids=str)
async def test_python_blocks_run_as_written(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    await _execute(block, namespace)
    if "kernel_receive_clock" in block.code:
        # The guide's protocol, used as its text says: arrivals on the wall clock, near now.
        loop = asyncio.get_running_loop()
        transport, receiver = await loop.create_datagram_endpoint(namespace["Receiver"], local_addr=("127.0.0.1", 0))
        try:
            import socket

            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.sendto(b"x", transport.get_extra_info("sockname"))
            sender.close()
            for _ in range(100):
                if receiver.arrivals:
                    break
                await asyncio.sleep(0.01)
            assert len(receiver.arrivals) == 1 and abs(receiver.arrivals[0] - time.time()) < 5
        finally:
            transport.close()


async def test_readme_connect_block_runs_with_a_stand_in_main_gateway(tmp_path, monkeypatch):
    from fastvoice._demo import load_clip
    from fastvoice.testing import MainGatewayStandIn, VoiceServer

    (block,) = [b for b in _blocks("stand-ins") if "my_shard_for" in b.marker]
    monkeypatch.chdir(tmp_path)
    clip = load_clip()[:50]
    (tmp_path / "song.dca").write_bytes(b"".join(len(f).to_bytes(4, "little") + f for f in clip))
    namespace: dict = {"__name__": "__docs__", "BOT_USER_ID": 4242, "guild_id": 10, "channel_id": 20}
    async with VoiceServer() as server:
        main = MainGatewayStandIn(server, 4242)

        class Shard:  # the bot's shard: its op 4 goes to the stand-in, whose dispatches reach `voice`
            async def send_voice_state(self, guild_id, channel_id, self_mute, self_deaf):
                main.attach(namespace["voice"])  # the block's dispatch handler, as its comment says
                await main.update_voice_state(guild_id, channel_id, self_mute, self_deaf)

        namespace["my_shard_for"] = lambda guild_id: Shard()
        await _execute(block, namespace)
        assert main.requests[0][:2] == (10, 20)  # open() joined through the shard
        assert main.requests[-1][:2] == (10, None)  # voice.close() left
        assert [s.guild_id for s in server.sessions] == [10]
    assert (tmp_path / "call.dca").exists()


async def test_readme_discordpy_block_runs_with_stand_in_channels(tmp_path, monkeypatch):
    pytest.importorskip("discord")
    if shutil.which("ffmpeg") is None:
        pytest.skip("the block plays a file through discord.FFmpegOpusAudio: needs ffmpeg")
    import wave

    from fastvoice.testing import VoiceServer

    spec = importlib.util.spec_from_file_location("_ext_discord_harness", ROOT / "tests" / "test_ext_discord.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)  # a discord.Client with a guild of two voice channels
    (block,) = [b for b in _blocks("stand-ins") if "other_channel" in b.marker]
    monkeypatch.chdir(tmp_path)
    with wave.open(str(tmp_path / "song.mp3"), "wb") as song:  # ffmpeg goes by the content, not the name
        song.setnchannels(1)
        song.setsampwidth(2)
        song.setframerate(48000)
        song.writeframes(bytes(48000 * 2))
    async with VoiceServer(heartbeat_interval=1000.0) as server:
        client, guild = harness.make_client(server)
        try:
            channel, other_channel = guild.get_channel(harness.VOICE_A), guild.get_channel(harness.VOICE_B)
            namespace = {"__name__": "__docs__", "channel": channel, "other_channel": other_channel}
            await _execute(block, namespace)
            requests = client.ws.stand_in.requests
            assert [r[:2] for r in requests] == [(harness.GUILD, harness.VOICE_A), (harness.GUILD, harness.VOICE_B),
                                                 (harness.GUILD, None)]
            assert not namespace["vc"].is_connected() and guild.voice_client is None
        finally:
            await client.close()
    assert (tmp_path / "call.dca").exists()


def _extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text[text.index("[project.optional-dependencies]"):]
    section = section[:section.index("\n[", 1)]
    return set(re.findall(r"^(\w[\w-]*) = \[", section, re.MULTILINE))


def _shell_commands(block: Block) -> list[str]:
    commands = []
    for line in block.code.splitlines():
        line = line.split("#", 1)[0].strip()
        commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


@pytest.mark.parametrize("block", _blocks("shell"), ids=str)
def test_shell_blocks_use_real_extras_and_options(block):
    ci = (ROOT / "ci" / "test.sh").read_text(encoding="utf-8")
    checked = 0
    for command in _shell_commands(block):
        words = command.split()
        if words[:2] == ["pip", "install"]:
            extras = re.search(r'"\.\[([\w,-]+)\]"', command)
            assert extras and set(extras.group(1).split(",")) <= _extras(), f"{block}: {command}"
        elif words[:3] in (["python", "-m", "pytest"], ["python", "-m", "fastvoice"]) or words[1:2] == ["ci/fuzz.py"]:
            # Every option the command uses is one its --help lists.
            head = words[:4] if words[:3] == ["python", "-m", "fastvoice"] else words[:3] if words[1] == "-m" else words[:2]
            helptext = subprocess.run([sys.executable, *head[1:], "--help"], cwd=ROOT, capture_output=True, text=True,
                                      timeout=120).stdout
            for option in (w for w in words[len(head):] if w.startswith("--")):
                assert option.split("=")[0] in helptext, f"{block}: {command}: {option} is not an option"
        else:
            raise AssertionError(f"{block}: no check for the command {command!r}")
        if "ci/test.sh runs these" in block.marker:
            assert command in ci, f"{block}: ci/test.sh does not run {command!r}"
        checked += 1
    assert checked >= 2
