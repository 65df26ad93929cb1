#!/usr/bin/env bash
# Reproduce the paper's experiments: ./run_all.sh [--profile smoke|cpu|paper] [extra args for relam.runner]
#   smoke  minutes, checks the pipeline end to end
#   cpu    default; reduced budgets that finish on a 2-core CPU machine
#   paper  the paper's budgets (GPU recommended)
# Sets up the environment first (scripts/bootstrap.sh), then runs the numbered notebooks with papermill into
# results/<profile>/notebooks/ through `python -m relam.runner`, stopping at the first failure.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"

usage() { sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
available_profiles() {
    local f names=()
    for f in configs/*.yaml; do [ -f "$f" ] && names+=("$(basename "$f" .yaml)"); done
    if [ ${#names[@]} -eq 0 ]; then echo "(none: configs/*.yaml not found)"; else echo "${names[*]}"; fi
}

PROFILE="cpu"
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) [ $# -ge 2 ] || { echo "[run_all] ERROR: --profile needs a value ($(available_profiles))" >&2; exit 2; }
                   PROFILE="$2"; shift 2 ;;
        --profile=*) PROFILE="${1#--profile=}"; shift ;;
        -h|--help) usage; echo "available profiles: $(available_profiles)"; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done

if ! [[ "$PROFILE" =~ ^[A-Za-z0-9_.-]+$ ]] || [ ! -f "configs/$PROFILE.yaml" ]; then
    echo "[run_all] ERROR: unknown profile '$PROFILE' (no configs/$PROFILE.yaml). Available profiles: $(available_profiles)" >&2
    exit 2
fi

echo "[run_all] profile '$PROFILE' (configs/$PROFILE.yaml): setting up the environment"
./scripts/bootstrap.sh || { echo "[run_all] FAILED: environment setup (scripts/bootstrap.sh) failed, see its ERROR/fix lines above; notebooks not run." >&2; exit 1; }
# shellcheck source=/dev/null
. .venv/relam-env.sh

if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("relam.runner") is None)' 2>/dev/null; then
    echo "[run_all] ERROR: module relam.runner not found (relam/runner.py is missing from this checkout); cannot run the notebooks." >&2
    exit 1
fi
echo "[run_all] running: python -m relam.runner --profile $PROFILE ${ARGS[*]:-}"
exec .venv/bin/python -m relam.runner --profile "$PROFILE" ${ARGS[@]+"${ARGS[@]}"}
