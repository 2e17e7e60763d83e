#!/usr/bin/env bash
# Runs the real Envoy binary from .venv (not the python wrapper) with the demo
# secrets from .run/secrets.env in its environment, from the repository root.
#   bash scripts/envoy.sh --mode validate -c envoy/envoy.yaml
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
envoy_bin=$(find .venv -path '*envoy/_bin/envoy' -type f 2>/dev/null | head -n1 || true)
if [[ -z "$envoy_bin" ]]; then
  echo "envoy: binary not found under .venv; run 'make setup'" >&2
  exit 1
fi
if [[ ! -f .run/secrets.env ]]; then
  echo "envoy: .run/secrets.env missing; run 'make setup'" >&2
  exit 1
fi
set -a
# shellcheck disable=SC1091
. .run/secrets.env
set +a
exec "$envoy_bin" "$@"
