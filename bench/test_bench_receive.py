"""Receive at scale: N calls, each with one speaker sent by the server's process, in one client process.

For each N, every contender's client opens N listener calls to ``receive_server_process.py``
(a VoiceServer in a process of its own), which then sends each call its speaker's audio,
20 ms packets for ``FASTVOICE_BENCH_SECONDS`` (default 10), from a thread of the server's
process. The client under test only receives. Figures (``receive_common.summarize``, the
same code for every contender): the client process's CPU time per received stream-second,
loss, the latency from the server's ``sendto`` to the receiver's callback (both on this
machine, ``time.time()``), and RSS growth per call.

    python -m pytest bench/test_bench_receive.py --benchmark-json=bench/receive.json
    python bench/report_receive.py bench/receive.json

Contenders, run one after another for each N (``FASTVOICE_BENCH_RECEIVE_ROUNDS`` > 1 runs the
whole row that many times, alternating):

- ``compiled`` / ``pure``: fastvoice (one Manager, uvloop) with an OpusFrameReceiver per call
  that keeps each packet's sequence number and arrival time (``receive_client.py``);
- ``compiled+playout``: a ``fastvoice.PlayoutReceiver`` per call, decoding every frame to PCM;
- ``voice-recv`` / ``voice-recv+decode``: discord.py 2.7 with discord-ext-voice-recv
  (``voicerecv_client.py``; a bench-only install, see bench/README.md), Opus kept or decoded;
- ``py-cord``: py-cord's recording (``pycord_client.py``), in a throwaway venv it needs since
  py-cord and discord.py cannot share one environment (``FASTVOICE_BENCH_PYCORD_PYTHON``);
  py-cord 2.8.1 delivers no audio from a call without DAVE, so it skips saying so;
- ``discord.js``: @discordjs/voice's receiver in Node.js (``discordjs/receive.mjs``).

Each runs in the encryption mode it can receive: the discord.py extension only decrypts
XChaCha20-Poly1305, @discordjs/voice only AES-256-GCM without an optional package, so
fastvoice compiled runs in both (``compiled`` and ``compiled/aes``) to be compared with each.
No contender runs DAVE here (the peers that lack DAVE receive could not take part).

``FASTVOICE_BENCH_RECEIVE`` (default ``100,500,1000``) picks the sizes; CI runs a tiny one.
``FASTVOICE_BENCH_VOICERECV_MAX`` (default 100: the discord.py-based peers run six threads per
call and already take more than a core at 100 calls; at 500 their 3,000 threads hold both cores
of a 2-core machine for minutes), ``FASTVOICE_BENCH_DISCORDJS_MAX`` (1000) and
``FASTVOICE_BENCH_DECODE_MAX`` (500, the decoding variants) cap the sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import receive_common  # noqa: E402

SIZES = [int(n) for n in os.environ.get("FASTVOICE_BENCH_RECEIVE", "100,500,1000").split(",")]
SECONDS = float(os.environ.get("FASTVOICE_BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("FASTVOICE_BENCH_RECEIVE_ROUNDS", "1"))
VOICERECV_MAX = int(os.environ.get("FASTVOICE_BENCH_VOICERECV_MAX", "100"))
DISCORDJS_MAX = int(os.environ.get("FASTVOICE_BENCH_DISCORDJS_MAX", "1000"))
DECODE_MAX = int(os.environ.get("FASTVOICE_BENCH_DECODE_MAX", "500"))
PYCORD_PYTHON = os.environ.get("FASTVOICE_BENCH_PYCORD_PYTHON")
DISCORDJS_DIR = os.path.join(HERE, "discordjs")
#: Speakers per call (the server reads it; see receive_server_process.py). The peers' clients
#: record one stream per call, so they run with one speaker only.
SPEAKERS = int(os.environ.get("FASTVOICE_BENCH_SPEAKERS", "1"))

#: contender -> (client command after the interpreter, encryption mode, FASTVOICE_NO_EXTENSIONS)
CONTENDERS = {
    "compiled": (["receive_client.py"], "xchacha", "0"),
    "pure": (["receive_client.py"], "xchacha", "1"),
    "voice-recv": (["voicerecv_client.py"], "xchacha", "0"),
    "py-cord": (["pycord_client.py"], "xchacha", "0"),
    "compiled/aes": (["receive_client.py"], "aes", "0"),
    "discord.js": (["discordjs/receive.mjs"], "aes", "0"),
    "compiled+playout": (["receive_client.py", "--playout"], "xchacha", "0"),
    "voice-recv+decode": (["voicerecv_client.py", "--decode"], "xchacha", "0"),
}


def discordjs_missing() -> str | None:
    """Why the @discordjs/voice peer cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not os.path.isdir(os.path.join(DISCORDJS_DIR, "node_modules", "@discordjs", "voice")):
        return "bench/discordjs/node_modules is missing (run: cd bench/discordjs && npm ci)"
    return None


def voicerecv_missing() -> str | None:
    try:
        import discord.ext.voice_recv  # noqa: F401
    except ImportError:
        return "discord-ext-voice-recv is not installed (see bench/README.md: pip install --no-deps discord-ext-voice-recv)"
    return None


def pycord_missing() -> str | None:
    if not PYCORD_PYTHON:
        return ("py-cord cannot share an environment with discord.py: set FASTVOICE_BENCH_PYCORD_PYTHON "
                "to the python of a venv with py-cord and PyNaCl (see bench/README.md)")
    if not os.path.exists(PYCORD_PYTHON):
        return f"FASTVOICE_BENCH_PYCORD_PYTHON={PYCORD_PYTHON[:80]!r} does not exist"
    return None


def run_client(contender: str, n: int, seconds: float) -> dict:
    script, mode, pure = CONTENDERS[contender]
    env = dict(os.environ)
    env.pop("FASTVOICE_REQUIRE_EXTENSIONS", None)
    env["FASTVOICE_NO_EXTENSIONS"] = pure
    if contender == "discord.js":
        env["FASTVOICE_PYTHON"] = sys.executable  # runs the server
        command = [shutil.which("node") or "node", os.path.join(HERE, script[0]), str(n), str(seconds)]
    else:
        python = PYCORD_PYTHON if contender == "py-cord" else sys.executable
        env["FASTVOICE_PYTHON"] = sys.executable  # runs the server
        command = [python, os.path.join(HERE, script[0]), str(n), str(seconds), *script[1:], f"--mode={mode}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900 + 3 * seconds)
    if out.returncode != 0:
        raise RuntimeError(f"{contender} client failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if contender == "discord.js":  # raw arrivals: the figures are computed here, as for the others
        raw = result
        result = receive_common.summarize(raw["report"], raw["arrivals"], n=n, seconds=seconds, cpu=raw["cpu"],
                                          wall=raw["wall"], rss_per_call_kib=raw["rss_kib_per_call"])
        result.update({k: raw[k] for k in ("opened", "peer", "node", "mode")})
    return result


@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("n", SIZES)
def test_receive(benchmark, n, round_, contender):
    _script, mode, _pure = CONTENDERS[contender]
    if contender in ("compiled", "compiled/aes", "compiled+playout"):
        import fastvoice

        if not fastvoice.speedups_enabled():
            pytest.skip("compiled twin not built (or FASTVOICE_NO_EXTENSIONS=1)")
    if SPEAKERS != 1 and contender not in ("compiled", "pure", "compiled/aes", "compiled+playout"):
        pytest.skip(f"{contender} is measured with one speaker per call (FASTVOICE_BENCH_SPEAKERS={SPEAKERS})")
    if contender == "pure" and n > 1000:
        pytest.skip("the pure twin is measured up to 1,000 calls")
    if contender.startswith("voice-recv"):
        pytest.importorskip("discord")
        missing = voicerecv_missing()
        if missing:
            pytest.skip(missing)
        if n > VOICERECV_MAX:
            pytest.skip(f"discord-ext-voice-recv (six threads per call, more than a core at 100 calls) is measured "
                        f"up to {VOICERECV_MAX} calls (FASTVOICE_BENCH_VOICERECV_MAX)")
    if contender == "py-cord":
        missing = pycord_missing()
        if missing:
            pytest.skip(missing)
        if n > VOICERECV_MAX:
            pytest.skip(f"py-cord (threads per call) is measured up to {VOICERECV_MAX} calls "
                        "(FASTVOICE_BENCH_VOICERECV_MAX)")
    if contender == "discord.js":
        missing = discordjs_missing()
        if missing:
            pytest.skip(f"@discordjs/voice peer not set up: {missing}")
        if n > DISCORDJS_MAX:
            pytest.skip(f"@discordjs/voice is measured up to {DISCORDJS_MAX} calls (FASTVOICE_BENCH_DISCORDJS_MAX)")
    if contender.endswith(("+playout", "+decode")) and n > DECODE_MAX:
        pytest.skip(f"decoding receivers are measured up to {DECODE_MAX} calls (FASTVOICE_BENCH_DECODE_MAX): "
                    "a 2-core machine decodes ~500 stereo streams in real time")
    benchmark.group = f"{n} calls"
    result = benchmark.pedantic(run_client, args=(contender, n, SECONDS), rounds=1, iterations=1)
    benchmark.extra_info.update(result, contender=contender, round=round_)
    if contender == "py-cord" and result["received"] == 0:
        # Measured, not assumed: see pycord_client.py. Its decrypt_rtp hands the payload on
        # only from a DAVE session; without one every packet is dropped as "no decrypted data".
        pytest.skip(f"{result.get('peer', 'py-cord')} received none of the {result['expected']} packets: its "
                    "receive path (2.8) delivers audio only in a DAVE call, and the benchmark's speakers are "
                    "not DAVE members")
    assert result["calls"] == n
    assert result.get("opened", n) == n
    assert result["received"] > 0, f"{contender} received nothing"
