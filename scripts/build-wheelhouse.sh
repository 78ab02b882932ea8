#!/usr/bin/env bash
# Fill a wheelhouse with every wheel an image installs, exactly as locked in
# requirements/*.txt (scripts/lock.sh), so the image builds need no package index:
# the Dockerfiles run `pip install --no-index --find-links /wheels --no-deps
# --require-hashes -r requirements/<lock>`.
#
#   scripts/build-wheelhouse.sh              # amd64: build/wheelhouse (selector, torch, web locks)
#   ARCH=arm64 scripts/build-wheelhouse.sh   # arm64: build/wheelhouse-arm64 (client-arm64 lock),
#                                            # unpacked into build/arm64-site/site-packages
#
# Wheels only (--only-binary): every locked package has one, so no image needs a
# compiler and a wheel's hash is the one in the lock. Platform tags are the images'
# (Debian bookworm: glibc 2.36, CPython 3.11), whatever machine runs this. A second run
# first checks the wheelhouse offline and needs no network when nothing changed.
# WHEELHOUSE sets another folder; PYTHON another interpreter (default .venv's).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-amd64}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
case "$ARCH" in
  amd64) machine=x86_64 locks=(selector torch web) default=build/wheelhouse ;;
  arm64) machine=aarch64 locks=(client-arm64) default=build/wheelhouse-arm64 ;;
  *) echo "ARCH must be amd64 or arm64, not $ARCH" >&2; exit 2 ;;
esac
WHEELHOUSE=${WHEELHOUSE:-$default}
mkdir -p "$WHEELHOUSE"

# manylinux_2_17 (= manylinux2014) up to bookworm's 2_36: pip takes the tags literally.
platforms=()
for glibc in 17 27 28 31 34 35 36; do platforms+=(--platform "manylinux_2_${glibc}_$machine"); done
platforms+=(--platform "manylinux2014_$machine")
target=(--only-binary=:all: --no-deps --require-hashes --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}")
quiet() { grep -v -E "is ignored: it is neither a file nor a directory|^(Collecting|Saved|File was already|Successfully downloaded)" >&2 || true; }

for lock in "${locks[@]}"; do
  req=requirements/$lock.txt
  if "$PY" -m pip download --quiet --no-index --find-links "$WHEELHOUSE" "${target[@]}" \
    -d "$WHEELHOUSE" -r "$req" >/dev/null 2>&1; then
    continue
  fi
  echo "== $WHEELHOUSE: fetching the wheels of $req (only what is missing)" >&2
  if ! "$PY" -m pip download --quiet "${target[@]}" -d "$WHEELHOUSE" -r "$req" 2> >(quiet); then
    echo "could not fetch every wheel of $req for linux/$ARCH (see above)" >&2
    exit 1
  fi
done
# arm64: unpack the wheels here too, into build/arm64-site/site-packages (what the arm64
# client image copies into its venv). This machine's Python unpacks and byte-compiles
# them at native speed (CPython 3.11 makes the same .pyc on every architecture); pip
# doing it inside the arm64 build, through QEMU, took five minutes more.
if [ "$ARCH" = arm64 ]; then
  site=${ARM64_SITE:-build/arm64-site}
  want=$(sha256sum <"requirements/${locks[0]}.txt" | cut -d' ' -f1)
  if [ "$(cat "$site/.lock.sha256" 2>/dev/null)" != "$want" ]; then
    echo "== unpacking requirements/${locks[0]}.txt into $site/site-packages" >&2
    rm -rf "$site"
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" "${target[@]}" \
      --target "$site/site-packages" -r "requirements/${locks[0]}.txt" 2> >(quiet)
    # Console scripts carry this machine's interpreter path; the client runs `python -m`.
    rm -rf "$site/site-packages/bin"
    echo "$want" >"$site/.lock.sha256"
  fi
fi
echo "== wheelhouse $WHEELHOUSE (linux/$ARCH) is complete: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)" >&2
