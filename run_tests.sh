#!/usr/bin/env bash
# Full test suite: ./run_tests.sh [pytest args]
#   1. scripts/bootstrap.sh (environment), 2. pytest on tests/ (extra args go to pytest),
#   3. the smoke notebooks: python -m relam.runner --profile smoke --results-dir ${RELAM_TEST_RESULTS:-results/smoke-ci}
# Exits non-zero if either part fails. RELAM_TEST_SKIP_NOTEBOOKS=1 runs only pytest (for quick iteration).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"

echo "[run_tests] setting up the environment"
./scripts/bootstrap.sh || { echo "[run_tests] FAILED: environment setup (scripts/bootstrap.sh) failed, see its ERROR/fix lines above; tests not run." >&2; exit 1; }
# shellcheck source=/dev/null
. .venv/relam-env.sh

RESULTS_DIR="${RELAM_TEST_RESULTS:-results/smoke-ci}"
t0=$SECONDS

echo "[run_tests] pytest: python -m pytest -q tests $*"
set +e
.venv/bin/python -m pytest -q tests "$@"
pytest_rc=$?
set -e
case "$pytest_rc" in
    0) pytest_msg="passed" ;;
    5) pytest_msg="FAILED (no tests were collected: pytest exit code 5; check tests/ and the arguments given)" ;;
    1) pytest_msg="FAILED (some tests failed)" ;;
    2) pytest_msg="FAILED (interrupted: pytest exit code 2)" ;;
    3) pytest_msg="FAILED (pytest internal error: exit code 3)" ;;
    4) pytest_msg="FAILED (pytest usage error, e.g. tests/ missing or bad arguments: exit code 4)" ;;
    *) pytest_msg="FAILED (pytest exit code $pytest_rc)" ;;
esac
[ "$pytest_rc" = 5 ] && echo "[run_tests] ERROR: pytest collected no tests (exit code 5); treated as a failure." >&2
t1=$SECONDS

if [ "${RELAM_TEST_SKIP_NOTEBOOKS:-0}" = 1 ]; then
    nb_rc=0
    nb_msg="skipped (RELAM_TEST_SKIP_NOTEBOOKS=1)"
elif [ ! -f configs/smoke.yaml ]; then
    nb_rc=1
    nb_msg="FAILED (configs/smoke.yaml is missing)"
    echo "[run_tests] ERROR: configs/smoke.yaml is missing; cannot run the smoke notebooks." >&2
elif ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("relam.runner") is None)' 2>/dev/null; then
    nb_rc=1
    nb_msg="FAILED (module relam.runner not found)"
    echo "[run_tests] ERROR: module relam.runner not found (relam/runner.py is missing); cannot run the smoke notebooks." >&2
else
    echo "[run_tests] smoke notebooks: python -m relam.runner --profile smoke --results-dir $RESULTS_DIR"
    set +e
    .venv/bin/python -m relam.runner --profile smoke --results-dir "$RESULTS_DIR"
    nb_rc=$?
    if [ "$nb_rc" = 0 ]; then   # the opt-in ablation notebook, on the smoke results just made: every ablation on
        # one task per simulator (door-open: its own K; PickCube: its own anticipation options), so CI stays short
        .venv/bin/python -m relam.runner --profile smoke --results-dir "$RESULTS_DIR" --only 08 \
            --param 'ppo_tasks=[door-open]' --param 'iql_tasks=[PickCube]' --param 'validation_states=2'
        nb_rc=$?
    fi
    set -e
    if [ "$nb_rc" = 0 ]; then nb_msg="passed (outputs in $RESULTS_DIR)"; else nb_msg="FAILED (runner exit code $nb_rc; outputs in $RESULTS_DIR)"; fi
fi
t2=$SECONDS

if [ "$pytest_rc" = 0 ] && [ "$nb_rc" = 0 ]; then overall="OK"; rc=0; else overall="FAILED"; rc=1; fi
echo "[run_tests] ${overall}: pytest ${pytest_msg} in $((t1 - t0))s; smoke notebooks ${nb_msg} in $((t2 - t1))s"
exit "$rc"
