#!/usr/bin/env bash
# Submit `rlsys train` to an existing Ray cluster as a Ray job and wait for it.
#
#   launchers/submit.sh [ADDRESS] [--config FILE] [key=value ...]
#
#   ADDRESS  the cluster's dashboard (job server) address; default ${RAY_ADDRESS:-http://127.0.0.1:8265}
#            (RAY_API_SERVER_ADDRESS, if set, wins over RAY_ADDRESS, as for `ray job`).
#            The first argument is taken as ADDRESS unless it contains '=' or starts with '-'.
#   --config a YAML experiment file, relative to the repo root (it travels with the working dir).
#   key=value  config overrides, as for `rlsys train` (see `rlsys train --print-config`).
#
# Examples:
#   launchers/submit.sh train.num_steps=20
#   launchers/submit.sh http://head-node:8265 --config configs/default.yaml learner.num_gpus=1 rollout.num_gpus=1
#   ray dashboard cluster.yaml &   # port-forward a cluster-launcher cluster, then:
#   launchers/submit.sh http://127.0.0.1:8265 learner.num_gpus=1
#
# What runs where:
#   * The repo root is uploaded as the job's working dir (`--working-dir .`), minus .venv, runs, .git, caches
#     (see EXCLUDES below; Ray also honours .gitignore). Ray puts it first on PYTHONPATH of the driver and of
#     every actor of the job, so the job runs the rlsys *source you submit*, not whatever copy a node has.
#   * The nodes still need rlsys INSTALLED: the entrypoint is the `rlsys` console script, and the working dir
#     ships source only, not torch / deepspeed / transformers / ray. A local `ray start` from this repo's .venv
#     (with .venv/bin on PATH, i.e. activated) has all of it; on a real cluster the setup_commands of
#     ../cluster.yaml install it. `ray start` must run with that environment's bin/ on PATH, because the job's
#     entrypoint is a shell command resolved on the head node.
#   * The driver (`rlsys train`, including data preparation and the supervised warm-up) runs on the HEAD node;
#     ray.address=auto makes it join that cluster instead of starting its own Ray. The run directory
#     (<output.root>/<run_name>) is therefore on the head node: this script defaults output.root to
#     ~/rlsys-runs there (expanded on the head node) because the default `runs` would resolve inside the job's
#     temporary working-dir copy. Pass output.root=... to change it.
#   * The job's runtime env only sets working_dir/excludes. Do not add env_vars named DS_ACCELERATOR,
#     TOKENIZERS_PARALLELISM or OMP_NUM_THREADS to it: rlsys' ray.init() sets those, and Ray refuses to merge
#     a job env and a driver env that set the same key.
#
# Authentication (Ray >= 2.60 token auth): the cluster uses token auth if it was started with
# RAY_AUTH_MODE=token, or with RAY_AUTH_MODE unset while ~/.ray/auth_token existed on the head node. This
# client then has to send the same token. If RAY_AUTH_MODE is unset here and a token is available
# (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), this script exports RAY_AUTH_MODE=token so the
# token is sent (an auth-disabled cluster ignores it). Set RAY_AUTH_MODE=disabled to send nothing.
# See launchers/README.md.
#
# Exit status: 0 if the job SUCCEEDED, 1 if it FAILED (or could not be submitted), 3 if it was STOPPED,
# 2 on a usage error. Interrupting this script (Ctrl-C) does not stop the job; it prints how to.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

ADDRESS="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}"
if [[ $# -gt 0 && "$1" != *=* && "$1" != -* ]]; then
    ADDRESS="$1"
    shift
fi
case "$ADDRESS" in
    *://*) ;;
    *) ADDRESS="http://$ADDRESS" ;;  # host:port → the dashboard's HTTP address
esac

CONFIG_ARGS=()
OVERRIDES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --config) [[ $# -ge 2 ]] || { echo "submit.sh: --config needs a FILE" >&2; exit 2; }
                  CONFIG_ARGS=(--config "$2"); shift 2 ;;
        --config=*) CONFIG_ARGS=(--config "${1#--config=}"); shift ;;
        *=*) OVERRIDES+=("$1"); shift ;;
        *) echo "submit.sh: unexpected argument '$1' (overrides are key=value; see --help)" >&2; exit 2 ;;
    esac
done

# The Ray CLI: $RAY_BIN, else `ray` on PATH, else this repo's virtualenv.
if [[ -z "${RAY_BIN:-}" ]]; then
    if command -v ray >/dev/null 2>&1; then RAY_BIN="$(command -v ray)"
    elif [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then RAY_BIN="$REPO_ROOT/.venv/bin/ray"
    else echo "submit.sh: no 'ray' CLI found; activate the environment that has ray[default] or set RAY_BIN" >&2
         exit 2
    fi
fi

# Token auth: send the token if one is available and the caller did not choose a mode.
if [[ -z "${RAY_AUTH_MODE:-}" ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" || ( -n "${RAY_AUTH_TOKEN_PATH:-}" && -f "${RAY_AUTH_TOKEN_PATH}" ) \
          || -f "$HOME/.ray/auth_token" ]]; then
        export RAY_AUTH_MODE=token
    fi
fi

EXCLUDES='[".venv", "venv", ".git", "runs", "outputs", "build", "**/__pycache__", "*.pyc", "*.egg-info",
           ".pytest_cache", ".mypy_cache", ".ruff_cache", "benchmarks/results", ".ci"]'
RUNTIME_ENV_JSON="{\"excludes\": $(echo "$EXCLUDES" | tr -d '\n')}"

SUBMISSION_ID="rlsys-$(date +%Y%m%d-%H%M%S)-$RANDOM"
DEFAULTS=("output.root=~/rlsys-runs" "output.progress_bar=false")  # user overrides come later and win

echo "submit.sh: job $SUBMISSION_ID → $ADDRESS (auth mode: ${RAY_AUTH_MODE:-disabled})" >&2
on_interrupt() {
    echo >&2
    echo "submit.sh: interrupted; the job keeps running. Follow: $RAY_BIN job logs -f --address $ADDRESS" \
         "$SUBMISSION_ID   Stop: $RAY_BIN job stop --address $ADDRESS $SUBMISSION_ID" >&2
    exit 130
}
trap on_interrupt INT

rc=0
"$RAY_BIN" job submit \
    --address "$ADDRESS" \
    --submission-id "$SUBMISSION_ID" \
    --working-dir . \
    --runtime-env-json "$RUNTIME_ENV_JSON" \
    -- rlsys train ${CONFIG_ARGS[@]+"${CONFIG_ARGS[@]}"} "${DEFAULTS[@]}" ${OVERRIDES[@]+"${OVERRIDES[@]}"} \
       ray.address=auto \
    || rc=$?

# `ray job submit` exits 1 for FAILED but 0 for STOPPED; ask for the final status explicitly. `ray job status`
# prints "Job '<id>' succeeded" / "... was stopped" / "... failed", or "Status for job '<id>': <STATUS>".
status_out="$("$RAY_BIN" job status --address "$ADDRESS" "$SUBMISSION_ID" 2>&1)" || true
status_lc="$(printf '%s' "$status_out" | tr '[:upper:]' '[:lower:]')"
case "$status_lc" in
    *"' succeeded"*|*"': succeeded"*)
        echo "submit.sh: job $SUBMISSION_ID SUCCEEDED" >&2; exit 0 ;;
    *"' was stopped"*|*"': stopped"*)
        echo "submit.sh: job $SUBMISSION_ID was STOPPED" >&2; exit 3 ;;
    *"' failed"*|*"': failed"*)
        echo "submit.sh: job $SUBMISSION_ID FAILED (logs: $RAY_BIN job logs --address $ADDRESS $SUBMISSION_ID)" >&2
        exit 1 ;;
    *)
        echo "submit.sh: could not get the final status of job $SUBMISSION_ID (ray job submit exited $rc):" >&2
        echo "$status_out" >&2
        exit 1 ;;
esac
