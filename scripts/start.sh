#!/usr/bin/env bash
# One command from a fresh checkout to the whole platform with a live demo:
# installs what is needed, migrates, creates a demo problem setter and three demo
# hospitals (their logins are printed), publishes a breast-cancer problem on the
# built-in tabular app, starts the web server, a Celery worker and Celery beat,
# and runs the three hospitals' clients on generated data. Open the printed URL
# and log in as the setter to watch the federation train live.
# Ctrl-C stops everything this script started (including the problem's
# coordinator and selectors).
#
# SQLite and an embedded Celery broker (kombu's SQLAlchemy transport on SQLite)
# by default: no server to install. Set DATABASE_URL / CELERY_BROKER_URL to use
# PostgreSQL / Redis instead. FEDOTA_PORT changes the web port (default 8000).
# The problem's coordinator and selectors run as processes; FEDOTA_SPAWNER=docker
# runs them as containers instead (images from scripts/build-images.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
port=${FEDOTA_PORT:-8000}
export FEDOTA_PUBLIC_URL=${FEDOTA_PUBLIC_URL:-http://127.0.0.1:$port}
export FEDOTA_INTERNAL_URL=${FEDOTA_INTERNAL_URL:-http://127.0.0.1:$port}
export FEDOTA_SPAWNER=${FEDOTA_SPAWNER:-process}
# The demo runs as production does: DEBUG off (a bad URL gets the site's own 404 page, not
# Django's debug page), static files collected into var/static and served by WhiteNoise.
# Its secret key is the one settings.py generates in var/dev-secret-key (never committed);
# it answers to the hosts of FEDOTA_PUBLIC_URL and this machine (settings.py's ALLOWED_HOSTS).
# DJANGO_DEBUG=1 brings Django's debug pages back.
export DJANGO_DEBUG=${DJANGO_DEBUG:-0}
var=${FEDOTA_VAR_DIR:-var}
logs="$var/demo/logs"
mkdir -p "$logs"

pids=()        # the web server, Celery worker and beat: each stops its own children
client_loops=() # the hospitals' restart loops: their current client is stopped with them
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping: the demo problem's coordinator and selectors, clients, Celery, web server"
  python manage.py fedota_demo --teardown >/dev/null 2>&1 || true
  for pid in "${client_loops[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true # its current client (the loop then sleeps)
    kill "$pid" 2>/dev/null || true
  done
  # Only the main processes: signalling Celery's pool children directly leaves its
  # main process waiting for them forever.
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for _ in $(seq 30); do
    alive=0
    for pid in "${pids[@]}" "${client_loops[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 1
  done
  for pid in "${pids[@]}" "${client_loops[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "  $pid did not stop within 30 s; killing it"
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

python manage.py migrate --noinput >"$logs/migrate.log"
python manage.py collectstatic --noinput >"$logs/collectstatic.log"
python -m scripts.make_demo_data --out demo-data --holders 3 >"$logs/demo-data.log"

binds=(--bind "127.0.0.1:$port")
if [ "$FEDOTA_SPAWNER" = docker ]; then
  # Coordinator containers report to the site through the host gateway (docker0's address;
  # the engine's bridge network may not list it, see webserver/spawner/addresses.py).
  gateway=$(python -m webserver.spawner.addresses)
  binds+=(--bind "$gateway:$port")
fi
gunicorn webserver.wsgi "${binds[@]}" --worker-class gthread --workers 3 --threads 8 \
  --access-logfile "$logs/web-access.log" >"$logs/web.log" 2>&1 &
pids+=($!)
celery -A webserver worker --loglevel INFO --concurrency 2 >"$logs/celery-worker.log" 2>&1 &
pids+=($!)
celery -A webserver beat --loglevel INFO --schedule "$var/demo/celerybeat-schedule" >"$logs/celery-beat.log" 2>&1 &
pids+=($!)

# Users, the problem, approved join requests, bundles; then publish and wait
# until the problem's selectors answer. Prints the logins.
python manage.py fedota_demo --data demo-data/breast_cancer --bundles "$var/demo/bundles" --wait 180

# A hospital's client takes part in every run: when one ends it joins the next
# (a new run started from the problem page reuses the same selector endpoints).
# The hospitals stand in for remote machines: niced, so the website stays responsive.
for i in 1 2 3; do
  (
    while true; do
      nice -n 10 fedota-client --join-bundle "$var/demo/bundles/hospital-$i.json" \
        --data-path "demo-data/breast_cancer/clients/hospital_$((i - 1))" || true
      sleep 5
    done
  ) >>"$logs/client-hospital-$i.log" 2>&1 &
  client_loops+=($!)
done

# Where join bundles send data holders' clients (docs/joining.md).
selectors=$(DJANGO_SETTINGS_MODULE=webserver.settings python -c "
from webserver.spawner.addresses import selector_host, selector_host_is_local
host = selector_host()
local = ' (this machine only: set FEDOTA_SELECTOR_HOST to take data holders from other machines)'
print(host + (local if selector_host_is_local(host) else ''))")
echo
echo "Fedota is running at $FEDOTA_PUBLIC_URL  (logs in $logs; Ctrl-C stops everything)"
echo "Data holders' clients dial the selectors at $selectors"
wait "${pids[0]}"
