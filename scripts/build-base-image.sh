#!/usr/bin/env bash
# Print the base image to build Fedota's images on, making one if needed.
#
#   BASE_IMAGE=$(scripts/build-base-image.sh)             # linux/amd64
#   BASE_IMAGE=$(ARCH=arm64 scripts/build-base-image.sh)  # linux/arm64: fedota/base:bookworm-arm64
#
# Uses BASE_IMAGE (default python:3.11-slim-bookworm) when it is present locally or can
# be pulled. Otherwise (no registry reachable) builds an equivalent from Debian's
# packages: debootstrap a minimal bookworm with Python 3.11, strip docs and apt caches,
# `docker import` it as FEDOTA_BASE_TAG (default fedota/base:bookworm). An image already
# built under that tag is reused; REBUILD=1 builds it again.
#
# ARCH=arm64 (on an amd64 machine) makes the same base for linux/arm64 under QEMU user
# emulation (scripts/arm64-emulation.sh sets it up): `debootstrap --arch arm64` runs the
# arm64 packages' scripts through binfmt. BASE_IMAGE is then used only when it is
# already here as an arm64 image (pulling a multi-arch tag for arm64 would replace the
# amd64 image of the same name), and the default tag is fedota/base:bookworm-arm64.
# That image is loaded with an image configuration that says arm64: Docker 20.10's
# `docker import` ignores --platform and labels every import with the engine's own
# architecture.
# Only the tag goes to stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-amd64}
case "$ARCH" in
  amd64) default_tag=fedota/base:bookworm ;;
  arm64) default_tag=fedota/base:bookworm-arm64 ;;
  *) echo "ARCH must be amd64 or arm64, not $ARCH" >&2; exit 2 ;;
esac
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
FEDOTA_BASE_TAG=${FEDOTA_BASE_TAG:-$default_tag}
MIRROR=${DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}

log() { echo "== $*" >&2; }
# The architecture an image says it is for (empty when there is no such image).
arch_of() { docker image inspect -f '{{.Architecture}}' "$1" 2>/dev/null || true; }

if [ "$ARCH" = amd64 ]; then
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    exit 0
  fi
elif [ "$(arch_of "$BASE_IMAGE")" = "$ARCH" ]; then
  echo "$BASE_IMAGE"
  exit 0
fi
if [ "${REBUILD:-0}" != 1 ] && [ "$(arch_of "$FEDOTA_BASE_TAG")" = "$ARCH" ]; then
  echo "$FEDOTA_BASE_TAG"
  exit 0
fi
if [ "$ARCH" = amd64 ] && [ "${NO_PULL:-0}" != 1 ]; then
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

# python3-venv brings what `python3 -m venv` needs (pip's wheel for ensurepip); the
# images never use Debian's own pip, and leaving python3-pip out spares the slowest part
# of a build under emulation (byte-compiling pip and setuptools through QEMU).
packages=python3,python3-venv,ca-certificates
arch_args=()
if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
  # The foreign packages' maintainer scripts run in the chroot through binfmt + QEMU.
  [ "$ARCH" = arm64 ] || { echo "cannot build a $ARCH base on $(dpkg --print-architecture)" >&2; exit 1; }
  scripts/arm64-emulation.sh
  arch_args=(--arch "$ARCH")
fi

work=$(mktemp -d /tmp/fedota-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

log "debootstrap bookworm ($ARCH) into $rootfs (about a minute; several under emulation)"
debootstrap --variant=minbase "${arch_args[@]}" \
  --include="$packages" \
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

message="debootstrap --variant=minbase bookworm + python3 (scripts/build-base-image.sh)"
if [ "$ARCH" = "$(docker version -f '{{.Server.Arch}}')" ]; then
  log "docker import as $FEDOTA_BASE_TAG"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "$message" \
    - "$FEDOTA_BASE_TAG" >/dev/null
else
  # What `docker import` makes, as a `docker save` archive whose image configuration
  # names the architecture: one layer (the root file system), PATH, LANG and CMD.
  log "docker load as $FEDOTA_BASE_TAG (linux/$ARCH)"
  tar --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
  python3 - "$work/layer.tar" "$ARCH" "$FEDOTA_BASE_TAG" "$message" <<'EOF' | docker load -q >/dev/null
import hashlib, io, json, sys, tarfile, time

layer, arch, tag, message = sys.argv[1:]
digest = hashlib.sha256()
with open(layer, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
config = json.dumps({
    "architecture": arch,
    "os": "linux",
    "created": created,
    "comment": message,
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        "Cmd": ["python3"],
    },
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
    "history": [{"created": created, "comment": message}],
}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["rootfs/layer.tar"]}]).encode()
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as out:
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    out.add(layer, arcname="rootfs/layer.tar")
EOF
  got=$(arch_of "$FEDOTA_BASE_TAG")
  [ "$got" = "$ARCH" ] || { echo "$FEDOTA_BASE_TAG says it is for '$got', not $ARCH" >&2; exit 1; }
fi
log "$FEDOTA_BASE_TAG: $(docker image inspect -f '{{.Size}}' "$FEDOTA_BASE_TAG" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$FEDOTA_BASE_TAG"
