#!/usr/bin/env bash
# Install Fedota on a plain Debian 12 (bookworm) server, the way scripts/start.sh runs it:
# SQLite, the embedded Celery broker (SQLite), the process backend for problems'
# coordinators and selectors; the website under gunicorn on loopback, a Celery worker and
# Celery beat as three services. The YunoHost package (deploy/yunohost/) calls this script
# for all of its real work; docs/yunohost.md says what has run where.
#
#   install-debian.sh install  [options]   venv, code, data folder, env file, migrations,
#                                           static files, admin account, services
#   install-debian.sh upgrade  [options]   new code (and venv when the locks changed),
#                                           migrations, static files; data and env file kept
#   install-debian.sh start | stop | status [options]
#   install-debian.sh remove   [options]   services, code and venv; data kept unless --purge
#
# Options (each also as an environment variable):
#   --prefix DIR        FEDOTA_PREFIX       code in DIR/app, venv in DIR/venv, commands in
#                                           DIR/bin, env file DIR/fedota.env (/opt/fedota)
#   --data-dir DIR      FEDOTA_DATA_DIR     database, broker, uploads, problems' state,
#                                           static files (/var/lib/fedota)
#   --log-dir DIR       FEDOTA_LOG_DIR      (/var/log/fedota)
#   --user NAME         FEDOTA_USER         system user the services run as (fedota)
#   --port N            FEDOTA_PORT         gunicorn's port on 127.0.0.1 (8095)
#   --public-url URL    FEDOTA_PUBLIC_URL   where users reach the site (http://127.0.0.1:PORT)
#   --selector-host H   FEDOTA_SELECTOR_HOST  where data holders' clients dial the selectors
#                                           (default: the public URL's host)
#   --source DIR        FEDOTA_SOURCE       the Fedota source tree (the one holding this script)
#   --wheelhouse DIR    FEDOTA_WHEELHOUSE   install the locked wheels from DIR only, no index
#                                           (scripts/build-wheelhouse.sh makes one)
#   --admin NAME        FEDOTA_ADMIN        site admin account to create (none if empty);
#   --admin-email ADDR  FEDOTA_ADMIN_EMAIL  its password from FEDOTA_ADMIN_PASSWORD (never a flag)
#   --services MODE     FEDOTA_SERVICES     systemd: units fedota-web, -worker, -beat;
#                                           direct: started here in the background (no init
#                                           system, e.g. a container); none: not managed here
#                                           (the YunoHost package writes its own units).
#                                           Default: systemd when systemd runs, else direct.
#   --unit-prefix NAME  FEDOTA_UNIT_PREFIX  systemd unit names NAME-web ... (fedota)
#   --purge                                 remove: also the data, logs, user and env file
#
# Idempotent: `install` on an installed prefix keeps its env file (secret key) and data and
# acts as `upgrade`. Run as root.
set -euo pipefail

die() {
  echo "install-debian.sh: error: $*" >&2
  exit 1
}
say() { echo "== $*" >&2; }

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  install | upgrade | start | stop | status | remove) ;;
  -h | --help | help)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown command '${command}': use install, upgrade, start, stop, status or remove (--help)" ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
declare -A opt=()
purge=0
while [ $# -gt 0 ]; do
  option=$1
  case "$option" in
    --purge) purge=1; shift; continue ;;
    --prefix | --data-dir | --log-dir | --user | --port | --public-url | --selector-host | --source | \
      --wheelhouse | --admin | --admin-email | --services | --unit-prefix)
      [ $# -ge 2 ] || die "$option needs a value"
      opt[${option#--}]=$2
      shift 2
      ;;
    *) die "unknown option '$option' (--help lists them)" ;;
  esac
done

prefix=${opt[prefix]:-${FEDOTA_PREFIX:-/opt/fedota}}
case "$prefix" in /?*) ;; *) die "--prefix must be an absolute path, not '$prefix'" ;; esac
# What install chose, so the other commands (and a re-install) need only --prefix.
install_conf=$prefix/install.conf
declare -A saved=()
if [ -f "$install_conf" ]; then
  while IFS='=' read -r key value; do
    case "$key" in data_dir | log_dir | user | port | services | unit_prefix) saved[$key]=$value ;; esac
  done <"$install_conf"
fi
# An option, else its environment variable, else what install saved, else the default.
pick() { # name env_var default
  local value=${opt[$1]:-}
  [ -n "$value" ] || value=${!2:-}
  [ -n "$value" ] || value=${saved[${1//-/_}]:-}
  echo "${value:-$3}"
}
data_dir=$(pick data-dir FEDOTA_DATA_DIR /var/lib/fedota)
log_dir=$(pick log-dir FEDOTA_LOG_DIR /var/log/fedota)
user=$(pick user FEDOTA_USER fedota)
port=$(pick port FEDOTA_PORT 8095)
services=$(pick services FEDOTA_SERVICES "")
unit_prefix=$(pick unit-prefix FEDOTA_UNIT_PREFIX fedota)
public_url=$(pick public-url FEDOTA_PUBLIC_URL "")
selector_host=$(pick selector-host FEDOTA_SELECTOR_HOST "")
source_dir=$(pick source FEDOTA_SOURCE "$here")
wheelhouse=$(pick wheelhouse FEDOTA_WHEELHOUSE "")
admin=$(pick admin FEDOTA_ADMIN "")
admin_email=$(pick admin-email FEDOTA_ADMIN_EMAIL "")

if [ -z "$services" ]; then
  if [ -d /run/systemd/system ]; then services=systemd; else services=direct; fi
fi
case "$services" in systemd | direct | none) ;; *) die "--services must be systemd, direct or none, not '$services'" ;; esac
case "$user" in '' | *[!a-z0-9_-]*) die "--user must be a plain user name, not '$user'" ;; esac
case "$port" in '' | *[!0-9]*) die "--port must be a number, not '$port'" ;; esac
for dir in "$prefix" "$data_dir" "$log_dir"; do
  case "$dir" in *[[:space:]]*) die "paths must not contain spaces: '$dir'" ;; esac
  case "$dir" in /?*) ;; *) die "paths must be absolute: '$dir'" ;; esac
  [ "$dir" != / ] || die "refusing to use / as a folder"
done
public_url=${public_url:-http://127.0.0.1:$port}
public_url=${public_url%/}
env_file=$prefix/fedota.env
venv=$prefix/venv
app=$prefix/app
run_dir=$prefix/run
[ "$(id -u)" -eq 0 ] || die "run as root (it creates a system user and writes under $prefix)"

# The folders of the source tree the services need (as webserver/Dockerfile copies them).
CODE=(manage.py webserver fedota_common protos client_image coordinator selector apps requirements scripts/install-debian.sh)
# The locks installed into the venv: the website and Celery (web), plus torch and Flower for
# the coordinators the process backend runs with the worker's interpreter (torch).
LOCKS=(requirements/web.txt requirements/torch.txt)
ROLES=(web worker beat)

installed() { [ -f "$env_file" ] && [ -d "$app" ]; }

check_python() {
  command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3 python3-venv)"
  local version
  version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$version" = 3.11 ] || die "Fedota's locked packages are for Python 3.11 (Debian 12 bookworm); python3 here is $version"
  python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3-venv is missing (apt-get install python3-venv)"
}

check_source() {
  local path
  for path in "${CODE[@]}"; do
    [ -e "$source_dir/$path" ] || die "$source_dir is not a Fedota source tree: $path is missing (--source)"
  done
  if [ -n "$wheelhouse" ]; then
    [ -d "$wheelhouse" ] || die "wheelhouse $wheelhouse is not a folder (scripts/build-wheelhouse.sh makes build/wheelhouse)"
  fi
}

ensure_user() {
  if ! id "$user" >/dev/null 2>&1; then
    say "creating system user $user"
    useradd --system --user-group --home-dir "$data_dir" --no-create-home --shell /usr/sbin/nologin "$user"
  fi
}

# The code, copied whole into a new folder and swapped in, so a failed copy leaves the old one.
install_code() {
  say "copying the code into $app"
  rm -rf "$app.new"
  mkdir -p "$app.new/scripts"
  local path
  for path in "${CODE[@]}"; do
    cp -a "$source_dir/$path" "$app.new/$path"
  done
  find "$app.new" \( -name __pycache__ -o -name Dockerfile \) -prune -exec rm -rf {} +
  rm -rf "$app.old"
  [ ! -e "$app" ] || mv "$app" "$app.old"
  mv "$app.new" "$app"
  rm -rf "$app.old"
  chown -R root:root "$app"
  chmod -R go-w "$app"
}

# The venv, made again only when the locks differ from the ones it was made from.
install_venv() {
  local stamp=$venv/.fedota-locks.sha256 want lock
  want=$(cd "$app" && cat "${LOCKS[@]}" | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "venv $venv is up to date with the locks"
    return
  fi
  say "installing the locked packages into $venv (exact versions, every file's hash checked)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  local source_args=()
  if [ -n "$wheelhouse" ]; then
    source_args=(--no-index --find-links "$wheelhouse")
  else
    # torch==2.13.0+cpu (the CPU build) is on PyTorch's own index, not on PyPI.
    source_args=(--find-links https://download.pytorch.org/whl/cpu/torch/)
  fi
  local requirements=()
  for lock in "${LOCKS[@]}"; do requirements+=(-r "$app/$lock"); done
  # --no-deps: the locks are the whole set; pip check proves it is consistent.
  if ! "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --no-deps --require-hashes \
    "${source_args[@]}" "${requirements[@]}"; then
    rm -rf "$venv"
    die "installing the locked packages failed (see above)${wheelhouse:+; is $wheelhouse complete for ${LOCKS[*]}?}"
  fi
  "$venv/bin/pip" check >/dev/null || die "the installed packages are inconsistent: $("$venv/bin/pip" check)"
  echo "$want" >"$stamp"
}

# Settings for every service, written once: the secret key is generated here and kept.
write_env_file() {
  if [ -f "$env_file" ]; then
    say "keeping $env_file (secret key and settings)"
    return
  fi
  say "writing $env_file with a new secret key"
  local host secret
  host=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname or "")' "$public_url")
  secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')
  local hosts="127.0.0.1,localhost"
  [ -z "$host" ] || hosts="$host,$hosts"
  umask 027
  cat >"$env_file.new" <<EOF
# Fedota's settings (.env.example in the source lists every one). Written by
# scripts/install-debian.sh at install; upgrades keep this file.
FEDOTA_ENV=production
DJANGO_SECRET_KEY=$secret
DJANGO_ALLOWED_HOSTS=$hosts
DJANGO_CSRF_TRUSTED_ORIGINS=$public_url
FEDOTA_PUBLIC_URL=$public_url
FEDOTA_INTERNAL_URL=http://127.0.0.1:$port
FEDOTA_SELECTOR_HOST=$selector_host
FEDOTA_VAR_DIR=$data_dir
FEDOTA_SPAWNER=process
FEDOTA_PORT=$port
WEB_CONCURRENCY=2
FLWR_TELEMETRY_ENABLED=0
FLWR_DISABLE_UPDATE_CHECK=1
EOF
  umask 022
  chown "root:$user" "$env_file.new"
  chmod 640 "$env_file.new"
  mv "$env_file.new" "$env_file"
}

# The commands every way of running the services uses: systemd units (ours and the
# YunoHost package's) and --services direct start exactly these.
write_commands() {
  mkdir -p "$prefix/bin"
  local role command
  # Expanded by the wrapper when it runs, not here.
  # shellcheck disable=SC2016
  for role in web worker beat manage; do
    case "$role" in
      web) command='exec "$venv/bin/gunicorn" webserver.wsgi --bind "127.0.0.1:$FEDOTA_PORT" --worker-class gthread --workers "${WEB_CONCURRENCY:-2}" --threads 8 --access-logfile -' ;;
      worker) command='exec "$venv/bin/celery" -A webserver worker --loglevel INFO --concurrency 2' ;;
      beat) command='exec "$venv/bin/celery" -A webserver beat --loglevel INFO --schedule "$FEDOTA_VAR_DIR/celerybeat-schedule"' ;;
      manage) command='exec "$venv/bin/python" manage.py "$@"' ;;
    esac
    cat >"$prefix/bin/fedota-$role.new" <<EOF
#!/bin/sh
# Written by scripts/install-debian.sh. Runs as the user $user (systemd's User=, or
# install-debian.sh start). Run fedota-manage as $user too (sudo -u $user): files it makes
# in the data folder as root would lock the services out.
set -eu
venv=$venv
set -a
. "$env_file"
set +a
export PYTHONPATH=$app DJANGO_SETTINGS_MODULE=webserver.settings PYTHONUNBUFFERED=1 HOME=$data_dir
cd $app
$command
EOF
    chmod 755 "$prefix/bin/fedota-$role.new"
    mv "$prefix/bin/fedota-$role.new" "$prefix/bin/fedota-$role"
  done
}

as_user() { setpriv --reuid "$user" --regid "$user" --init-groups "$@"; }

prepare_data() {
  mkdir -p "$data_dir" "$log_dir" "$run_dir"
  chown "$user:$user" "$data_dir" "$log_dir"
  chmod 750 "$data_dir"
  say "migrating the database and collecting static files"
  as_user "$prefix/bin/fedota-manage" migrate --noinput >"$log_dir/migrate.log" 2>&1 ||
    { tail -n 30 "$log_dir/migrate.log" >&2; die "migrate failed (log: $log_dir/migrate.log)"; }
  as_user "$prefix/bin/fedota-manage" collectstatic --noinput -v 0 >"$log_dir/collectstatic.log" 2>&1 ||
    { tail -n 30 "$log_dir/collectstatic.log" >&2; die "collectstatic failed (log: $log_dir/collectstatic.log)"; }
}

create_admin() {
  [ -n "$admin" ] || return 0
  [ -n "${FEDOTA_ADMIN_PASSWORD:-}" ] || die "--admin $admin needs its password in FEDOTA_ADMIN_PASSWORD"
  say "site admin account $admin"
  FEDOTA_ADMIN="$admin" FEDOTA_ADMIN_EMAIL="$admin_email" as_user "$prefix/bin/fedota-manage" shell -c '
import os
from django.contrib.auth import get_user_model
User = get_user_model()
user, made = User.objects.get_or_create(username=os.environ["FEDOTA_ADMIN"])
user.email = os.environ.get("FEDOTA_ADMIN_EMAIL") or user.email
user.is_staff = user.is_superuser = user.is_active = True
if made:
    user.set_password(os.environ["FEDOTA_ADMIN_PASSWORD"])
user.save()
print("created" if made else "kept (password unchanged)", user.username)
' >&2
}

write_units() {
  local role description after
  for role in "${ROLES[@]}"; do
    case "$role" in
      web) description="Fedota website (gunicorn)" after="" ;;
      worker) description="Fedota Celery worker (starts problems' coordinators and selectors)" after="$unit_prefix-web.service" ;;
      beat) description="Fedota Celery beat (reconciles problems every 15 s)" after="$unit_prefix-worker.service" ;;
    esac
    cat >"/etc/systemd/system/$unit_prefix-$role.service" <<EOF
# Written by scripts/install-debian.sh.
[Unit]
Description=$description
After=network.target $after

[Service]
Type=simple
User=$user
Group=$user
WorkingDirectory=$app
ExecStart=$prefix/bin/fedota-$role
Restart=on-failure
RestartSec=5
TimeoutStopSec=40
StandardOutput=append:$log_dir/$role.log
StandardError=inherit
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
ReadWritePaths=$data_dir $log_dir

[Install]
WantedBy=multi-user.target
EOF
  done
  systemctl daemon-reload
  for role in "${ROLES[@]}"; do systemctl enable --quiet "$unit_prefix-$role.service"; done
}

pid_of() {
  local file=$run_dir/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 1
  # A zombie has ended (its parent has not reaped it yet, e.g. an init that does not).
  [ "$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f2)" != Z ] || return 1
  echo "$pid"
}

start_services() {
  case "$services" in
    none) return 0 ;;
    systemd)
      local role
      for role in "${ROLES[@]}"; do systemctl restart "$unit_prefix-$role.service"; done
      ;;
    direct)
      mkdir -p "$run_dir"
      local role
      for role in "${ROLES[@]}"; do
        if pid_of "$role" >/dev/null; then continue; fi
        # Its own session (so `stop` finds what it leaves), the env of a systemd unit.
        env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
          setsid setpriv --reuid "$user" --regid "$user" --init-groups "$prefix/bin/fedota-$role" \
          </dev/null >>"$log_dir/$role.log" 2>&1 &
        echo $! >"$run_dir/$role.pid"
      done
      ;;
  esac
  wait_healthy
}

wait_healthy() {
  local url="http://127.0.0.1:$port/healthz"
  for _ in $(seq 120); do
    if python3 -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=3).status != 200)' \
      "$url" 2>/dev/null; then
      say "the website answers at $url"
      return 0
    fi
    sleep 1
  done
  tail -n 30 "$log_dir/web.log" >&2 || true
  die "the website did not answer at $url within 120 s (log: $log_dir/web.log)"
}

# The problems' coordinators and selectors run in their own sessions under the worker.
# systemd stops them with the worker's cgroup; here the process backend's own stop does.
# Their runs stay "running": at the next start the reconciler starts them again (a
# coordinator resumes from its last checkpoint), as after a systemd restart.
stop_problem_services() {
  [ -x "$prefix/bin/fedota-manage" ] || return 0
  as_user "$prefix/bin/fedota-manage" shell -c '
from webserver.spawner import get_spawner
spawner = get_spawner("process")
for problem_id in spawner.problems():
    spawner.stop(problem_id)
    print("stopped the services of problem", problem_id)
' >&2 || echo "install-debian.sh: warning: could not stop the problems' services" >&2
}

stop_services() {
  case "$services" in
    none) return 0 ;;
    systemd)
      local role
      for role in beat worker web; do
        systemctl stop "$unit_prefix-$role.service" 2>/dev/null || true
      done
      ;;
    direct)
      local role pid
      # The main processes only: signalling Celery's pool children directly leaves its main
      # process waiting for them.
      for role in beat worker web; do
        if pid=$(pid_of "$role"); then kill -TERM "$pid" 2>/dev/null || true; fi
      done
      for role in beat worker web; do
        for _ in $(seq 40); do pid_of "$role" >/dev/null || break; sleep 1; done
        if pid=$(pid_of "$role"); then
          echo "install-debian.sh: $role ($pid) did not stop within 40 s; killing its session" >&2
          kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$run_dir/$role.pid"
      done
      stop_problem_services
      ;;
  esac
}

status_services() {
  local role state=0 pid
  for role in "${ROLES[@]}"; do
    case "$services" in
      systemd)
        if systemctl is-active --quiet "$unit_prefix-$role.service"; then echo "$role: running"; else
          echo "$role: stopped"
          state=3
        fi
        ;;
      direct) if pid=$(pid_of "$role"); then echo "$role: running ($pid)"; else echo "$role: stopped"; state=3; fi ;;
      none) echo "$role: not managed by this script" ;;
    esac
  done
  return $state
}

remove_units() {
  local role
  for role in "${ROLES[@]}"; do
    local unit=/etc/systemd/system/$unit_prefix-$role.service
    if [ -f "$unit" ]; then
      systemctl disable --quiet "$unit_prefix-$role.service" 2>/dev/null || true
      rm -f "$unit"
    fi
  done
  systemctl daemon-reload 2>/dev/null || true
}

case "$command" in
  install | upgrade)
    check_python
    check_source
    if [ "$command" = upgrade ] && ! installed; then
      die "nothing to upgrade at $prefix (no $env_file): use install"
    fi
    if [ "$command" = install ] && installed; then
      say "Fedota is already installed at $prefix: upgrading it (data and settings kept)"
    fi
    ensure_user
    mkdir -p "$prefix"
    printf '%s\n' "data_dir=$data_dir" "log_dir=$log_dir" "user=$user" "port=$port" "services=$services" \
      "unit_prefix=$unit_prefix" >"$install_conf"
    if installed; then stop_services; fi
    install_code
    install_venv
    write_env_file
    write_commands
    prepare_data
    create_admin
    [ "$services" != systemd ] || write_units
    start_services
    say "Fedota is installed at $prefix (data: $data_dir, logs: $log_dir, services: $services)"
    ;;
  start)
    installed || die "Fedota is not installed at $prefix"
    start_services
    ;;
  stop)
    installed || die "Fedota is not installed at $prefix"
    stop_services
    ;;
  status)
    installed || die "Fedota is not installed at $prefix"
    status_services
    ;;
  remove)
    if [ -d "$prefix" ]; then
      stop_services
      [ "$services" != systemd ] || remove_units
      say "removing the code and venv in $prefix"
      rm -rf "$app" "$app.new" "$app.old" "$venv" "${prefix:?}/bin" "$run_dir"
    fi
    if [ "$purge" = 1 ]; then
      say "--purge: removing the data ($data_dir), logs ($log_dir), settings and user $user"
      rm -rf "$data_dir" "$log_dir" "$env_file" "$install_conf"
      rmdir "$prefix" 2>/dev/null || true
      if id "$user" >/dev/null 2>&1; then userdel "$user" 2>/dev/null || true; fi
    else
      say "kept: the data in $data_dir, the settings in $env_file (remove --purge deletes them)"
    fi
    ;;
esac
