#!/usr/bin/env bash
# shellcheck disable=SC2317  # the phase functions are only called through `phase`
# Everything CI checks, as phases: install, locks match pyproject.toml, generated-code
# drift, lint, types, the Docker engine and images, all tests on SQLite (on parallel
# workers; tests/docker after the rest), then the web tests again on a throwaway PostgreSQL
# server, with tests/docker's swarm files beside them. Every phase runs even when an earlier one failed (only a failed
# install stops the rest: nothing else could run); the end is one summary of all phases,
# and the exit status is non-zero if any failed.
# With arguments, only `pytest ARGS` runs after the checks (e.g. tests/unit; add -n 3 to
# spread them over three workers as the full run does).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

names=() results=() seconds=()
# phase NAME COMMAND...: run one phase, record how it ended and how long it took.
phase() {
  local name=$1 start rc
  shift
  echo
  echo "== $name"
  start=$(date +%s)
  "$@"
  rc=$?
  names+=("$name") results+=("$rc") seconds+=($(($(date +%s) - start)))
  [ "$rc" -eq 0 ] || echo "!! phase '$name' FAILED (exit $rc); going on with the others" >&2
  return "$rc"
}
# summary: print every phase's outcome and end the script (non-zero if any failed).
summary() {
  local i failed=0
  echo
  echo "== summary"
  for i in "${!names[@]}"; do
    if [ "${results[$i]}" -eq 0 ]; then
      printf '  ok      %5s s  %s\n' "${seconds[$i]}" "${names[$i]}"
    else
      printf '  FAILED  %5s s  %s (exit %s)\n' "${seconds[$i]}" "${names[$i]}" "${results[$i]}"
      failed=$((failed + 1))
    fi
  done
  if [ "$failed" -gt 0 ]; then
    echo "$failed of ${#names[@]} phases failed" >&2
    exit 1
  fi
  echo "all ${#names[@]} phases passed"
  exit 0
}

install() { bash scripts/setup.sh && bash scripts/system-deps.sh; }
if ! phase "install (.venv from requirements/dev.txt, system packages)" install; then
  summary
fi
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# Tests never touch the developer's own database, media or broker files.
export FEDOTA_VAR_DIR=${FEDOTA_VAR_DIR:-$(mktemp -d /tmp/fedota-test-var.XXXXXX)}

phase "locks match pyproject.toml (scripts/lock.sh --check)" bash scripts/lock.sh --check

protos_match() {
  bash protos/generate.sh || return 1
  if ! git diff --exit-code --stat -- protos/; then
    echo "protos/: generated code drifted from the .proto files; run protos/generate.sh and commit" >&2
    return 1
  fi
  if [ -n "$(git status --porcelain --untracked-files=all -- protos/)" ]; then
    git status --porcelain -- protos/ >&2
    echo "protos/: regenerating created files that are not committed" >&2
    return 1
  fi
}
phase "generated protobuf code matches protos/*.proto" protos_match

lint() { ruff check . && ruff format --check .; }
phase "ruff" lint
phase "mypy" mypy coordinator selector client_image fedota_common webserver

if [ $# -gt 0 ]; then
  phase "pytest $*" python -m pytest -q "$@"
  summary
fi

# Container tests (tests/docker) need a running engine and the images. Where none can be
# built, the phase fails and the docker tests skip with a loud reason; in CI they fail
# instead (FEDOTA_REQUIRE_DOCKER=1 turns every such skip into a failure).
images() {
  local arm rc=0
  mkdir -p build
  : >build/images.log
  # The engine and the arm64 wheels (unpacked for the image) first, so that nothing the
  # amd64 builds send as their context changes while they run; then the client for ARM
  # data holders builds under QEMU emulation, mostly on one core, while the amd64 images
  # take the other (about four minutes saved on a new machine).
  if ! bash scripts/docker-engine.sh >>build/images.log 2>&1 ||
    ! ARCH=arm64 bash scripts/build-wheelhouse.sh >>build/images.log 2>&1; then
    tail -n 40 build/images.log >&2
    echo "no Docker engine or no arm64 wheels (see build/images.log): tests/docker cannot run" >&2
    return 1
  fi
  bash scripts/build-images.sh client-arm64 >build/images-arm64.log 2>&1 &
  arm=$!
  bash scripts/build-images.sh >>build/images.log 2>&1 || rc=1
  wait "$arm" || rc=1
  cat build/images-arm64.log >>build/images.log
  if [ "$rc" -eq 0 ]; then
    grep -A 8 '^IMAGE' build/images.log
    return 0
  fi
  tail -n 40 build/images.log >&2
  echo "no Docker engine or images (see build/images.log): tests/docker cannot run" >&2
  return 1
}
if phase "Docker engine and images (offline; log: build/images.log)" images || [ "${CI:-}" = "true" ]; then
  export FEDOTA_REQUIRE_DOCKER=1
else
  echo "!! NO DOCKER ENGINE OR IMAGES: tests/docker will be SKIPPED" >&2
  export FEDOTA_REQUIRE_DOCKER=0
fi

# Most of the tests' time is waiting (round deadlines, federations of processes, a
# browser), not CPU, so they run on PYTEST_WORKERS pytest-xdist workers (3 by default).
# A file's tests stay together on one worker (its module fixtures start once). tests/e2e's
# long federations are handed out first (tests/conftest.py), the many short files after
# them fill the gaps (--no-loadscope-reorder keeps that order: xdist's default puts the
# files with most tests first, and so the e2e files last). Each worker has its own test
# database and var folder (tests/conftest.py).
# tests/docker runs afterwards, on 2 workers: its tests share one engine, and each
# worker's session ends by checking that nothing labelled with its own prefix is left.
# Its swarm files run after the rest, one after another: each makes this engine a swarm
# manager and leaves the swarm at its end, and the multi-node one loads gigabytes of
# images into engines in containers; beside them, other tests' containers saw their DNS
# time out. No other container runs by then, so they run beside the web tests on
# PostgreSQL, which use no engine (349 + 150 s one after the other, 404 to 413 s together).
xdist=(-n "${PYTEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder)
phase "pytest (SQLite, ${PYTEST_WORKERS:-3} workers; all but tests/docker)" \
  python -m pytest -q "${xdist[@]}" --ignore=tests/docker
phase "pytest tests/docker (SQLite; 2 workers; not the swarm files)" \
  python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests/docker \
  --ignore-glob='tests/docker/test_swarm_*'

postgres() {
  local rc
  eval "$(bash scripts/pg.sh start)" || return 1
  python -m pytest -q "${xdist[@]}" tests/web
  rc=$?
  bash scripts/pg.sh stop "$FEDOTA_PG_DIR"
  unset DATABASE_URL FEDOTA_PG_DIR
  return "$rc"
}
# The swarm files' output is shown once they end, after the web tests' (build/swarm-tests.log).
swarm_and_postgres() {
  local rc=0 swarm
  mkdir -p build
  python -m pytest -q tests/docker/test_swarm_*.py >build/swarm-tests.log 2>&1 &
  swarm=$!
  echo "-- tests/web on PostgreSQL"
  postgres || rc=1
  wait "$swarm" || rc=1
  echo "-- tests/docker/test_swarm_*.py (SQLite), beside them"
  cat build/swarm-tests.log
  return "$rc"
}
phase "pytest tests/web on PostgreSQL, and tests/docker's swarm files beside them" swarm_and_postgres

summary
