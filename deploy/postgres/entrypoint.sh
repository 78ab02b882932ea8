#!/bin/sh
# Entrypoint of fedota/postgres: initialise PGDATA on first start, then run the server.
set -eu

# <NAME>_FILE: read the value from a file (Docker secrets).
for name in POSTGRES_PASSWORD POSTGRES_USER POSTGRES_DB; do
  eval "file=\${${name}_FILE:-}"
  if [ -n "$file" ]; then
    value=$(cat "$file") || { echo "cannot read ${name}_FILE=$file" >&2; exit 1; }
    export "$name=$value"
  fi
done
: "${POSTGRES_USER:=fedota}" "${POSTGRES_DB:=fedota}"

if [ "$(id -u)" = 0 ]; then
  # Started as root (e.g. `user: root` or a bind mount owned by someone else): fix the
  # folders' owner, then drop to postgres for good.
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) must be set to initialise the database" >&2
    exit 1
  fi
  case "$POSTGRES_USER" in postgres) echo "POSTGRES_USER must not be postgres (the superuser)" >&2; exit 1 ;; esac
  echo "initialising $PGDATA: role $POSTGRES_USER, database $POSTGRES_DB" >&2
  initdb --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  # Any address may connect, always with the password; the superuser only through the socket.
  {
    echo "host all postgres all reject"
    echo "host all all all scram-sha-256"
  } >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.auto.conf"

  # A server on the socket only, so nothing outside sees (or health-checks) it half-made.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
    -v user="$POSTGRES_USER" -v password="$POSTGRES_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
\connect :"db"
ALTER SCHEMA public OWNER TO :"user";
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "initialised; starting PostgreSQL" >&2
fi

exec "$@"
