#!/usr/bin/env bash
# Print the base image to build Fedota's images on, making one if needed.
#
#   BASE_IMAGE=$(scripts/build-base-image.sh)
#
# Uses BASE_IMAGE (default python:3.11-slim-bookworm) when it is present locally or can
# be pulled. Otherwise (no registry reachable) builds an equivalent from Debian's
# packages: debootstrap a minimal bookworm with Python 3.11, strip docs and apt caches,
# `docker import` it as FEDOTA_BASE_TAG (default fedota/base:bookworm). An image already
# built under that tag is reused; REBUILD=1 builds it again.
# Only the tag goes to stdout; progress goes to stderr.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
FEDOTA_BASE_TAG=${FEDOTA_BASE_TAG:-fedota/base:bookworm}
MIRROR=${DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}

log() { echo "== $*" >&2; }

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "$BASE_IMAGE"
  exit 0
fi
if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$FEDOTA_BASE_TAG" >/dev/null 2>&1; then
  echo "$FEDOTA_BASE_TAG"
  exit 0
fi
if [ "${NO_PULL:-0}" != 1 ]; then
  log "trying to pull $BASE_IMAGE"
  if timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    exit 0
  fi
  log "cannot pull $BASE_IMAGE; building $FEDOTA_BASE_TAG from Debian packages"
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "debootstrap is missing (apt-get install debootstrap, or run scripts/docker-engine.sh)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "debootstrap needs root" >&2
  exit 1
fi

work=$(mktemp -d /tmp/fedota-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

log "debootstrap bookworm into $rootfs (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

log "trimming docs, locales and caches"
# Packages installed later (in images built FROM this one) skip docs as well.
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-fedota-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/01-fedota-clean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/* "$rootfs"/root/.cache
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$rootfs/usr/lib/python3"* -name __pycache__ -type d -prune -exec rm -rf {} +
# The host's resolver and name must not leak into the image; Docker provides both at run time.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

log "docker import as $FEDOTA_BASE_TAG"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase bookworm + python3 (scripts/build-base-image.sh)" \
  - "$FEDOTA_BASE_TAG" >/dev/null
log "$FEDOTA_BASE_TAG: $(docker image inspect -f '{{.Size}}' "$FEDOTA_BASE_TAG" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$FEDOTA_BASE_TAG"
