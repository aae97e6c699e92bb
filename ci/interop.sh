#!/usr/bin/env bash
# Interop: a fastvoice member and a member on another DAVE implementation in one end-to-end
# encrypted call on the local voice server, each hearing every frame of the other
# (tests/test_dave_interop_libdave.py, tests/test_dave_interop_discordjs.py).
#
# The peers are test-only installs, never fastvoice dependencies: they go into a throwaway
# directory, removed on exit. libdave's Python binding (dave.py) into a venv that also sees the
# calling Python's packages (fastvoice and its test tools); @discordjs/voice, with its DAVE
# package @snazzah/davey, from bench/discordjs's lock file with `npm ci`. The tests run from this
# checkout, compiled and pure, with FASTVOICE_REQUIRE_INTEROP=1: a peer that is missing fails the run
# instead of skipping.
#
#     bash ci/interop.sh            (PYTHON=python3.12 bash ci/interop.sh for another Python)
#
# 75 to 95 s on a shared 2-core machine (peers installed in ~5 s, each of the two test runs 27-34 s).
set -euo pipefail
cd "$(dirname "$0")/.."

DAVE_PY_VERSION=1.1.0
python=${PYTHON:-python}
command -v node >/dev/null || { echo "ci/interop.sh: node is not on PATH (the @discordjs/voice member runs in it)" >&2; exit 1; }
command -v npm >/dev/null || { echo "ci/interop.sh: npm is not on PATH" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "::: interop peers into $work: dave.py $DAVE_PY_VERSION (venv), @discordjs/voice (npm ci, node $(node --version))"
"$python" -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "dave.py==$DAVE_PY_VERSION"
mkdir "$work/discordjs"
cp bench/discordjs/package.json bench/discordjs/package-lock.json "$work/discordjs/"
(cd "$work/discordjs" && npm ci --no-audit --no-fund --loglevel=error)

export FASTVOICE_REQUIRE_INTEROP=1
export FASTVOICE_DISCORDJS_DIR="$work/discordjs"
tests=(tests/test_dave_interop_libdave.py tests/test_dave_interop_discordjs.py)

echo "::: interop tests, compiled extensions"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"

echo "::: interop tests, pure fallback (FASTVOICE_NO_EXTENSIONS=1)"
FASTVOICE_NO_EXTENSIONS=1 FASTVOICE_REQUIRE_EXTENSIONS=0 \
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
