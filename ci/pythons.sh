#!/usr/bin/env bash
# The test suite on other Python versions: for each MAJOR.MINOR given, the newest patch
# release pyenv has, a fresh venv, fastvoice installed editable with its compiled core
# (FASTVOICE_REQUIRE_EXTENSIONS=1: a pure fallback fails), then `python -m pytest`
# (both twins through the shared fixture), less the few tests that do not depend on the
# Python version. The main version's full run is ci/test.sh's.
#
#     bash ci/pythons.sh 3.10 3.12 3.13
set -euo pipefail
cd "$(dirname "$0")/.."

command -v pyenv >/dev/null || { echo "ci/pythons.sh needs pyenv to find Python $*" >&2; exit 1; }
export FASTVOICE_REQUIRE_EXTENSIONS=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Installs one after the other (each compiles the extensions in the checkout), then the
# suites side by side: they mostly wait on sockets and timers, so together they take little
# longer than one. Each suite's output goes to its own log, printed when all are done.
versions=()
for minor in "$@"; do
    version=$(pyenv versions --bare | grep -E "^${minor//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)
    if [ -z "$version" ]; then
        echo "Python $minor is not installed (pyenv install $minor)" >&2
        exit 1
    fi
    python=$(PYENV_VERSION="$version" pyenv which python)
    echo "::: Python $version ($python): install"
    "$python" -m venv "$work/py$minor"
    "$work/py$minor/bin/pip" install -q --upgrade pip
    "$work/py$minor/bin/pip" install -q -e ".[test]"
    "$work/py$minor/bin/python" -c "import fastvoice, sys; assert fastvoice.speedups_enabled(); print(sys.version)"
    versions+=("$minor:$version")
done

suite() {
    local minor=$1 version=$2 started=$SECONDS
    local args=(-o "cache_dir=$work/cache$minor")
    # What does not depend on the Python version runs once, in ci/test.sh: packaging builds
    # (test_build), the long soak, and interrupting the benchmark suite (test_cli's bench runs).
    args+=(--ignore=tests/test_build.py --ignore=tests/test_soak.py
           --deselect "tests/test_cli.py::test_interrupted_bench_leaves_no_process_and_prints_one_line")
    if ! "$work/py$minor/bin/python" -m pytest -q "${args[@]}"; then
        # A few tests measure pacing and flake when the machine is busy; a failure that is
        # the Python version's fails again. Said loudly, so that a flake is not forgotten.
        echo "::: Python $version: rerunning only the tests that failed, once"
        "$work/py$minor/bin/python" -m pytest -q "${args[@]}" --last-failed --last-failed-no-failures none || return 1
        echo "::: Python $version: the failures above passed on a rerun (flaky)"
    fi
    echo "::: Python $version: $((SECONDS - started)) s"
}

pids=()
for entry in "${versions[@]}"; do
    suite "${entry%%:*}" "${entry#*:}" > "$work/log${entry%%:*}" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    entry=${versions[$i]}
    if ! wait "${pids[$i]}"; then
        failed=1
    fi
    echo "::: Python ${entry#*:}: the test suite"
    cat "$work/log${entry%%:*}"
done
exit $failed
