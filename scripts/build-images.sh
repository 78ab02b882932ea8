#!/usr/bin/env bash
# Build Fedota's container images offline, in one command:
#
#   scripts/build-images.sh                  # all six
#   scripts/build-images.sh selector client  # some of them
#   scripts/build-images.sh postgres redis   # only docker-compose.yml's database and broker
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
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-latest}
declare -A DOCKERFILES=(
  [coordinator]=coordinator/Dockerfile
  [selector]=selector/Dockerfile
  [client]=client_image/Dockerfile
  [web]=webserver/Dockerfile
  [postgres]=deploy/postgres/Dockerfile
  [redis]=deploy/redis/Dockerfile
)
# Images built from Debian packages (apt-get) rather than the wheelhouse: their own
# context folder, the network for apt-get, a fixed tag.
declare -A APT_TAGS=([postgres]=15 [redis]=7)
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(coordinator selector client web postgres redis)
for name in "${images[@]}"; do
  [ -n "${DOCKERFILES[$name]:-}" ] || {
    echo "unknown image $name (coordinator, selector, client, web, postgres, redis)" >&2
    exit 2
  }
done
wheels=0
for name in "${images[@]}"; do [ -n "${APT_TAGS[$name]:-}" ] || wheels=1; done

scripts/docker-engine.sh
base=$(scripts/build-base-image.sh)
echo "== base image: $base" >&2
[ "$wheels" = 0 ] || scripts/build-wheelhouse.sh

mkdir -p build
tag_of() { echo "${APT_TAGS[$1]:-$TAG}"; }
for name in "${images[@]}"; do
  if [ -n "${APT_TAGS[$name]:-}" ]; then
    network=host context=$(dirname "${DOCKERFILES[$name]}")
  else
    # --network none: RUN steps cannot reach any index; pip installs from /wheels only.
    network=none context=.
  fi
  echo "== building fedota/$name:$(tag_of "$name") (${DOCKERFILES[$name]}, network $network)" >&2
  start=$(date +%s)
  docker build --network "$network" --force-rm --build-arg "BASE_IMAGE=$base" \
    -f "${DOCKERFILES[$name]}" -t "fedota/$name:$(tag_of "$name")" "$context" >"build/docker-build-$name.log" 2>&1 || {
    tail -n 40 "build/docker-build-$name.log" >&2
    echo "docker build of fedota/$name failed; full log: build/docker-build-$name.log" >&2
    exit 1
  }
  echo "   done in $(($(date +%s) - start)) s" >&2
done

echo
printf '%-28s %s\n' IMAGE SIZE
for name in "${images[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "fedota/$name:$(tag_of "$name")")
  printf '%-28s %s\n' "fedota/$name:$(tag_of "$name")" "$(awk -v s="$size" 'BEGIN { printf "%.0f MB", s / 1e6 }')"
done
