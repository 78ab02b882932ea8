#!/usr/bin/env bash
# Everything CI checks: install, generated-code drift, lint, types, all tests
# (SQLite), then the web tests again on a throwaway PostgreSQL server.
# With arguments, only `pytest ARGS` runs after the checks (e.g. tests/unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-deps.sh
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# Tests never touch the developer's own database, media or broker files.
export FEDOTA_VAR_DIR=${FEDOTA_VAR_DIR:-$(mktemp -d /tmp/fedota-test-var.XXXXXX)}

echo "== generated protobuf code matches protos/*.proto"
bash protos/generate.sh
if ! git diff --exit-code --stat -- protos/; then
  echo "protos/: generated code drifted from the .proto files; run protos/generate.sh and commit" >&2
  exit 1
fi
if [ -n "$(git status --porcelain --untracked-files=all -- protos/)" ]; then
  git status --porcelain -- protos/ >&2
  echo "protos/: regenerating created files that are not committed" >&2
  exit 1
fi

echo "== ruff"
ruff check .
ruff format --check .

echo "== mypy"
mypy coordinator selector client_image fedota_common webserver

if [ $# -gt 0 ]; then
  echo "== pytest $*"
  exec python -m pytest -q "$@"
fi

echo "== pytest (SQLite)"
python -m pytest -q

echo "== pytest tests/web on PostgreSQL"
eval "$(bash scripts/pg.sh start)"
trap 'bash scripts/pg.sh stop "$FEDOTA_PG_DIR"' EXIT
python -m pytest -q tests/web
