#!/usr/bin/env bash
# Make sure a Docker engine answers: install docker.io (and iptables, debootstrap for
# the base image) through apt-get when dockerd is missing, start dockerd when it is not
# running, wait until `docker info` answers; docker-compose too when neither it nor the
# `docker compose` plugin is there. Idempotent: a second run does nothing.
# DOCKERD_LOG sets where a dockerd started here logs (default /var/log/dockerd.log).
set -euo pipefail

have_compose() { command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; }

if docker info >/dev/null 2>&1 && have_compose; then
  exit 0
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# docker-compose.yml: Debian's docker-compose (1.29) when no `docker compose` plugin answers.
have_compose || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "== installing ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The package's own docker CLI may sit behind another one on PATH; both talk to the
# same socket, the client negotiates the API version.
if ! pgrep -x dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "dockerd is not running and only root can start it here" >&2
    exit 1
  fi
  echo "== starting dockerd (log: ${DOCKERD_LOG:-/var/log/dockerd.log})" >&2
  # setsid: the engine must outlive this script and the shell that ran it.
  setsid dockerd >"${DOCKERD_LOG:-/var/log/dockerd.log}" 2>&1 < /dev/null &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "docker engine did not answer within 60 s; see ${DOCKERD_LOG:-/var/log/dockerd.log}" >&2
exit 1
