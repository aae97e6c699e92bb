#!/usr/bin/env bash
# The discord.py adapter against discord.py's forks: for each fork, a throwaway venv with the
# fork (without its voice extra) and this checkout, then tests/test_ext_discord.py.
# discord.py itself is covered by the main test run. About a minute per fork.
set -euo pipefail
cd "$(dirname "$0")/.."

FORKS=("py-cord>=2.7")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for fork in "${FORKS[@]}"; do
    echo "::: fastvoice.ext.discord with ${fork}"
    python -m venv "$work/venv"
    "$work/venv/bin/pip" install -q "$fork" "pytest>=8" "pytest-asyncio>=0.23"
    # Pure-Python twins: no compile here; the compiled core is tested by the main run.
    FASTVOICE_NO_EXTENSIONS=1 FASTVOICE_REQUIRE_EXTENSIONS=0 "$work/venv/bin/pip" install -q -e .
    "$work/venv/bin/python" -c "import discord; print(discord.__title__, discord.__version__)"
    FASTVOICE_NO_EXTENSIONS=1 FASTVOICE_REQUIRE_EXTENSIONS=0 \
        "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_ext_discord.py
    rm -rf "$work/venv"
done
