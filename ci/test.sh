#!/usr/bin/env bash
# CI: install exactly as the README says, run the README's test command (both twins
# through the shared fixture), the interop tests with their peers installed (ci/interop.sh),
# then the whole suite again on the pure twins, then every benchmark once, untimed, so a
# broken benchmark fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

export FASTVOICE_REQUIRE_EXTENSIONS=1   # a silently pure build must fail CI
python --version

echo "::: ffmpeg (with libopus) for the audio input tests"
export FASTVOICE_REQUIRE_FFMPEG=1       # a missing ffmpeg fails its tests instead of skipping them
export FASTVOICE_REQUIRE_LIBOPUS=1      # libopus (pulled in by ffmpeg) too: the decoder tests fail without it
if ! command -v ffmpeg >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends ffmpeg
fi
ffmpeg -hide_banner -encoders 2>/dev/null | grep libopus >/dev/null || { echo "ffmpeg lacks libopus" >&2; exit 1; }

echo "::: install and run the demo (README)"
pip install -e ".[test]" && python -m fastvoice demo

echo "::: tests, compiled + pure twins (README)"
python -m pytest

echo "::: interop: fastvoice with libdave (dave.py) and @discordjs/voice in one DAVE call (peers in a throwaway dir)"
bash ci/interop.sh

echo "::: type checking: mypy --strict over the package (pyproject: [tool.mypy])"
python -m mypy

echo "::: tests, FASTVOICE_NO_EXTENSIONS=1"
FASTVOICE_NO_EXTENSIONS=1 FASTVOICE_REQUIRE_EXTENSIONS=0 python -m pytest -q

echo "::: the wheel alone: built, checked, installed into a fresh venv outside the checkout, demo run elsewhere"
dist_work=$(mktemp -d)
python -m venv "$dist_work/tools" && "$dist_work/tools/bin/pip" install -q build
"$dist_work/tools/bin/python" -m build --outdir "$dist_work/dist" .   # the sdist, then the wheel from it
python ci/check_dist.py "$dist_work"/dist/*.whl "$dist_work"/dist/*.tar.gz   # LICENSE, no C/debug info/tests
python -m venv "$dist_work/user"
"$dist_work/user/bin/pip" install -q "$dist_work"/dist/*.whl   # no extras: no cryptography, no test tools
(cd "$dist_work" && "$dist_work/user/bin/python" -m fastvoice demo -n 20 -s 3)
# A user's code type-checks against the installed wheel, and against an editable install made
# the way the README says for that (editable_mode=compat; the pure build, to skip compiling).
"$dist_work/user/bin/pip" install -q "mypy==2.4.1"
cp ci/typecheck_user.py "$dist_work/user_script.py"
(cd "$dist_work" && "$dist_work/user/bin/python" -m mypy --strict user_script.py)
python -m venv "$dist_work/editable"
FASTVOICE_NO_EXTENSIONS=1 FASTVOICE_REQUIRE_EXTENSIONS=0 "$dist_work/editable/bin/pip" install -q \
    -e . --config-settings editable_mode=compat "mypy==2.4.1"
(cd "$dist_work" && "$dist_work/editable/bin/python" -m mypy --strict user_script.py)
rm -rf "$dist_work"

echo "::: other Pythons: a fresh venv each, compiled build, the test suite (compiled + pure twins)"
bash ci/pythons.sh 3.10 3.12 3.13

echo "::: fuzzing the parsers, 2 minutes (README: Fuzzing)"
pip install -e ".[test,fuzz]"
if python ci/fuzz.py --check-native; then
    # clang and its libFuzzer runtime are there: the compiled twin's C branches guide the search too.
    python ci/fuzz.py --target all --seconds 120 --native
else
    echo "(coverage of the Python code guides the search; the compiled twin is compared on every input)"
    python ci/fuzz.py --target all --seconds 120
fi

echo "::: benchmarks, smoke run"
FASTVOICE_BENCH_CONNECTIONS=10 FASTVOICE_BENCH_SCALEOUT=10 FASTVOICE_BENCH_RECEIVE=5 FASTVOICE_BENCH_SECONDS=1 FASTVOICE_BENCH_SEND_PHASE=50 python -m pytest bench --benchmark-disable -q

echo "::: the discord.py adapter on discord.py forks (py-cord)"
bash ci/forks.sh
