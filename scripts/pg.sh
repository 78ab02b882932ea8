#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the tests and print its DATABASE_URL.
#   eval "$(bash scripts/pg.sh start)"   # exports DATABASE_URL and FEDOTA_PG_DIR
#   bash scripts/pg.sh stop "$FEDOTA_PG_DIR"
# The cluster lives in a temporary folder owned by the postgres user (the server
# refuses to run as root), listens on loopback only and trusts local connections.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    dir=$(mktemp -d /tmp/fedota-pg.XXXXXX)
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null
    echo "export FEDOTA_PG_DIR=$dir DATABASE_URL=postgres://postgres@127.0.0.1:$port/fedota"
    ;;
  stop)
    dir=${2:?usage: pg.sh stop DIR}
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: pg.sh start | stop DIR" >&2
    exit 2
    ;;
esac
