#!/usr/bin/env bash
# Start a throwaway Redis server (loopback, no persistence) and print its CELERY_BROKER_URL.
#   eval "$(bash scripts/redis.sh start)"   # exports CELERY_BROKER_URL and FEDOTA_REDIS_DIR
#   bash scripts/redis.sh stop "$FEDOTA_REDIS_DIR"
# The Celery worker tests start their own; this is for running a worker by hand.
set -euo pipefail

case "${1:-}" in
  start)
    command -v redis-server >/dev/null || { echo "redis-server is not installed: apt-get install -y redis-server" >&2; exit 1; }
    dir=$(mktemp -d /tmp/fedota-redis.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    for _ in $(seq 50); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    redis-cli -p "$port" ping >/dev/null || { cat "$dir/redis.log" >&2; exit 1; }
    echo "export FEDOTA_REDIS_DIR=$dir CELERY_BROKER_URL=redis://127.0.0.1:$port/0"
    ;;
  stop)
    dir=${2:?usage: redis.sh stop DIR}
    [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: redis.sh start | stop DIR" >&2
    exit 2
    ;;
esac
