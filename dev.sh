#!/usr/bin/env sh
# The two quick-start commands. Each creates ./.venv and installs the project (with test extras) first.
#   ./dev.sh serve   run the service on its embedded defaults (embedded queue + sandbox FHIR store)
#   ./dev.sh test    lint (ruff, import layers) and run the test suite (it starts its own redis-server)
set -eu
cd "$(dirname "$0")"
VENV=${SMARTFLOW_VENV:-.venv}
PY=${PYTHON:-python3}

install() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    stamp="$VENV/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e '.[test]'
        touch "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    serve)
        install
        exec "$VENV/bin/fhir-smartflow" serve --embedded "$@"
        ;;
    test)
        install
        "$VENV/bin/ruff" check fhir_smartflow plugins tests benchmarks
        "$VENV/bin/lint-imports" --no-cache --config .importlinter
        # Three pytest processes, each with its own redis-server: most tests wait on child processes, so
        # three keep two cores busy. SMARTFLOW_TEST_PROCESSES=0 runs the suite in one process.
        exec "$VENV/bin/python" -m pytest -q -n "${SMARTFLOW_TEST_PROCESSES:-3}" "$@"
        ;;
    *)
        echo "usage: ./dev.sh serve|test [args...]" >&2
        exit 2
        ;;
esac
