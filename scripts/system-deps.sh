#!/usr/bin/env bash
# System packages the full test suite needs: PostgreSQL (the web tests run on it
# as well as SQLite), Redis (a real Celery worker's broker), Chromium (browser
# end-to-end tests) and kubectl (`kubectl kustomize` renders deploy/kubernetes offline;
# Debian's package is kubernetes-client, kubectl 1.20) and Prometheus (a real server scrapes
# a live federation in tests/integration/test_prometheus.py). Installs only what is missing,
# through apt-get, as root.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck) # lints the YunoHost package and install-debian.sh

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "== installing system packages: ${missing[*]}"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
