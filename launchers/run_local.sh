#!/usr/bin/env bash
# `rlsys train "$@"` on this machine (a local Ray is started and stopped by the run; see launchers/README.md).
#
# RAY_AUTH_MODE defaults to "disabled" here: with it unset, Ray >= 2.60's ray.init() turns on token auth for
# the local cluster and writes ~/.ray/auth_token if missing, after which every later `ray start` on this
# machine without RAY_AUTH_MODE comes up token-protected too. Export RAY_AUTH_MODE=token to keep auth on.
set -euo pipefail
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
RLSYS="$(command -v rlsys || echo "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/rlsys")"
exec "$RLSYS" train "$@"
