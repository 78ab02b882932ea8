#!/usr/bin/env bash
# Build Fedota's container images offline, in one command:
#
#   scripts/build-images.sh                  # all four
#   scripts/build-images.sh selector client  # some of them
#
# 1. scripts/docker-engine.sh      a Docker engine answers (installs/starts one if needed)
# 2. scripts/build-base-image.sh   BASE_IMAGE: python:3.11-slim-bookworm if present or
#                                  pullable, else fedota/base:bookworm from debootstrap
# 3. scripts/build-wheelhouse.sh   build/wheelhouse/: every wheel the images install
# 4. docker build --network none   each image installs from the wheelhouse only
#
# Images: fedota/coordinator, fedota/selector, fedota/client, fedota/web, tagged
# TAG (default latest). Set BASE_IMAGE to force a base image.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-latest}
declare -A DOCKERFILES=(
  [coordinator]=coordinator/Dockerfile
  [selector]=selector/Dockerfile
  [client]=client_image/Dockerfile
  [web]=webserver/Dockerfile
)
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(coordinator selector client web)
for name in "${images[@]}"; do
  [ -n "${DOCKERFILES[$name]:-}" ] || { echo "unknown image $name (coordinator, selector, client, web)" >&2; exit 2; }
done

scripts/docker-engine.sh
base=$(scripts/build-base-image.sh)
echo "== base image: $base" >&2
# Checked with the base image's own Python: its markers may want other wheels.
TARGET_IMAGE=$base scripts/build-wheelhouse.sh

for name in "${images[@]}"; do
  echo "== building fedota/$name:$TAG (${DOCKERFILES[$name]}, no network)" >&2
  start=$(date +%s)
  # --network none: RUN steps cannot reach any index; pip installs from /wheels only.
  docker build --network none --force-rm --build-arg "BASE_IMAGE=$base" \
    -f "${DOCKERFILES[$name]}" -t "fedota/$name:$TAG" . >"build/docker-build-$name.log" 2>&1 || {
    tail -n 40 "build/docker-build-$name.log" >&2
    echo "docker build of fedota/$name failed; full log: build/docker-build-$name.log" >&2
    exit 1
  }
  echo "   done in $(($(date +%s) - start)) s" >&2
done

echo
printf '%-28s %s\n' IMAGE SIZE
for name in "${images[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "fedota/$name:$TAG")
  printf '%-28s %s\n' "fedota/$name:$TAG" "$(awk -v s="$size" 'BEGIN { printf "%.0f MB", s / 1e6 }')"
done
