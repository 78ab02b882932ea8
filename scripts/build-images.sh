#!/usr/bin/env bash
# Build Fedota's container images offline, in one command:
#
#   scripts/build-images.sh                  # all six
#   scripts/build-images.sh selector client  # some of them
#   scripts/build-images.sh postgres redis   # only docker-compose.yml's database and broker
#   scripts/build-images.sh client-arm64     # the client for ARM data holders (linux/arm64)
#
# 1. scripts/docker-engine.sh      a Docker engine answers (installs/starts one if needed)
# 2. scripts/build-base-image.sh   BASE_IMAGE: python:3.11-slim-bookworm if present or
#                                  pullable, else fedota/base:bookworm from debootstrap
# 3. scripts/build-wheelhouse.sh   build/wheelhouse/: the wheels of the locks (requirements/*.txt)
# 4. docker build --network none   each image installs its lock from the wheelhouse only
#
# Images: fedota/coordinator, fedota/selector, fedota/client, fedota/web, tagged
# TAG (default latest). Set BASE_IMAGE to force a base image.
# Also fedota/postgres:15 and fedota/redis:7 (deploy/, for docker-compose.yml): Debian's
# packages on the same base, installed by apt-get, so their first build needs Debian's
# mirror (docker build --network host, about 25 s); later builds come from the layer cache
# and need no network. Their tags are their major versions, not TAG.
# client-arm64 is fedota/client:TAG-arm64 for linux/arm64, built on this amd64 machine
# under QEMU user emulation (scripts/arm64-emulation.sh registers it with the kernel,
# installing Debian's qemu-user-static and binfmt-support if needed) from
# fedota/base:bookworm-arm64 (ARCH=arm64 scripts/build-base-image.sh),
# build/wheelhouse-arm64 and requirements/client-arm64.txt (unpacked on this machine into
# build/arm64-site, see build-wheelhouse.sh). It is not in the default
# list: it changes the host (binfmt handlers) and takes several minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-latest}
declare -A DOCKERFILES=(
  [coordinator]=coordinator/Dockerfile
  [selector]=selector/Dockerfile
  [client]=client_image/Dockerfile
  [client-arm64]=client_image/Dockerfile
  [web]=webserver/Dockerfile
  [postgres]=deploy/postgres/Dockerfile
  [redis]=deploy/redis/Dockerfile
)
# Images built from Debian packages (apt-get) rather than the wheelhouse: their own
# context folder, the network for apt-get, a fixed tag.
declare -A APT_TAGS=([postgres]=15 [redis]=7)
# Images for another architecture: the same repository as their amd64 image, the tag
# TAG-<arch> (a registry's per-architecture tags, ready for one manifest list later).
declare -A ARCH_OF=([client-arm64]=arm64)
declare -A LOCK_OF=([client-arm64]=requirements/client-arm64.txt)
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(coordinator selector client web postgres redis)
for name in "${images[@]}"; do
  [ -n "${DOCKERFILES[$name]:-}" ] || {
    echo "unknown image $name (coordinator, selector, client, web, postgres, redis, client-arm64)" >&2
    exit 2
  }
done
wheels=0 amd64=0 arm64=0 base="" base_arm64=""
for name in "${images[@]}"; do
  if [ -n "${ARCH_OF[$name]:-}" ]; then arm64=1; else amd64=1; fi
  [ -n "${APT_TAGS[$name]:-}" ] || [ -n "${ARCH_OF[$name]:-}" ] || wheels=1
done

scripts/docker-engine.sh
if [ "$amd64" = 1 ]; then
  base=$(scripts/build-base-image.sh)
  echo "== base image: $base" >&2
  [ "$wheels" = 0 ] || scripts/build-wheelhouse.sh
fi
if [ "$arm64" = 1 ]; then
  scripts/arm64-emulation.sh
  base_arm64=$(ARCH=arm64 scripts/build-base-image.sh)
  echo "== base image (linux/arm64): $base_arm64" >&2
  ARCH=arm64 scripts/build-wheelhouse.sh
fi

mkdir -p build
tag_of() {
  if [ -n "${ARCH_OF[$1]:-}" ]; then echo "$TAG-${ARCH_OF[$1]}"; else echo "${APT_TAGS[$1]:-$TAG}"; fi
}
# client-arm64 -> fedota/client:latest-arm64
ref_of() { echo "fedota/${1%-"${ARCH_OF[$1]:-}"}:$(tag_of "$1")"; }
for name in "${images[@]}"; do
  arch_args=() image_base=$base
  if [ -n "${APT_TAGS[$name]:-}" ]; then
    network=host context=$(dirname "${DOCKERFILES[$name]}")
  else
    # --network none: RUN steps cannot reach any index; pip installs from /wheels only.
    network=none context=.
  fi
  if [ "${ARCH_OF[$name]:-}" = arm64 ]; then
    # The classic builder runs the RUN steps of an arm64 base through binfmt + QEMU, and
    # the image inherits the base's architecture.
    arch_args=(--platform linux/arm64 --build-arg WHEELS=build/arm64-site --build-arg "LOCK=${LOCK_OF[$name]}")
    image_base=$base_arm64
  fi
  echo "== building $(ref_of "$name") (${DOCKERFILES[$name]}, network $network${arch_args:+, linux/arm64 under emulation})" >&2
  start=$(date +%s)
  docker build --network "$network" --force-rm --build-arg "BASE_IMAGE=$image_base" "${arch_args[@]}" \
    -f "${DOCKERFILES[$name]}" -t "$(ref_of "$name")" "$context" >"build/docker-build-$name.log" 2>&1 || {
    tail -n 40 "build/docker-build-$name.log" >&2
    echo "docker build of $(ref_of "$name") failed; full log: build/docker-build-$name.log" >&2
    exit 1
  }
  if [ -n "${ARCH_OF[$name]:-}" ]; then
    got=$(docker image inspect -f '{{.Architecture}}' "$(ref_of "$name")")
    [ "$got" = "${ARCH_OF[$name]}" ] || {
      echo "$(ref_of "$name") says it is for '$got', not ${ARCH_OF[$name]}" >&2
      exit 1
    }
  fi
  echo "   done in $(($(date +%s) - start)) s" >&2
done

echo
printf '%-28s %s\n' IMAGE SIZE
for name in "${images[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "$(ref_of "$name")")
  printf '%-28s %s\n' "$(ref_of "$name")" "$(awk -v s="$size" 'BEGIN { printf "%.0f MB", s / 1e6 }')"
done
