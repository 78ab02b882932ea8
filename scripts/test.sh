#!/usr/bin/env bash
# Everything CI checks: install, generated-code drift, lint, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

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
mypy coordinator selector client_image fedota_common

echo "== pytest"
python -m pytest -q "$@"
