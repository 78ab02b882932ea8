#!/usr/bin/env bash
# Everything CI checks: install, generated-code drift, lint, types, the Docker
# engine and images, all tests (SQLite), then the web tests again on a throwaway
# PostgreSQL server.
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

# Container tests (tests/docker) need a running engine and the images. Where no
# engine can be started they are skipped with a loud reason, except in CI, which
# fails instead: FEDOTA_REQUIRE_DOCKER=1 turns every such skip into a failure.
echo "== Docker engine and images (offline; log: build/images.log)"
mkdir -p build
if bash scripts/build-images.sh >build/images.log 2>&1; then
  tail -n 8 build/images.log
  export FEDOTA_REQUIRE_DOCKER=1
elif [ "${CI:-}" = "true" ]; then
  tail -n 40 build/images.log >&2
  echo "CI needs a Docker engine and the images for tests/docker; see build/images.log" >&2
  exit 1
else
  tail -n 20 build/images.log >&2
  echo "!! NO DOCKER ENGINE OR IMAGES: tests/docker will be SKIPPED (see build/images.log)" >&2
  export FEDOTA_REQUIRE_DOCKER=0
fi

echo "== pytest (SQLite)"
python -m pytest -q

echo "== pytest tests/web on PostgreSQL"
eval "$(bash scripts/pg.sh start)"
trap 'bash scripts/pg.sh stop "$FEDOTA_PG_DIR"' EXIT
python -m pytest -q tests/web
