#!/usr/bin/env bash
# Create .venv and install Fedota with its development dependencies, from the lock
# (requirements/dev.txt, exact versions and hashes; scripts/lock.sh makes it from
# pyproject.toml). Nothing installs outside the lock: pip checks every file's hash, and
# Fedota itself goes in editable without an isolated build environment.
# Idempotent: a second run with the same lock does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fedota-lock.sha256
want=$(cat requirements/dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# torch==2.13.0+cpu is not on PyPI: pip finds it in this machine's /opt/wheels (its
# pip.conf says so). Elsewhere: PIP_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/
# --no-deps: the lock is the whole set (pip's resolver would only re-derive it, and pip
# 23 trips over extras such as sqlalchemy[asyncio] under --require-hashes); pip check
# then proves the set is consistent.
if ! .venv/bin/python -m pip install --quiet --no-deps --require-hashes -r requirements/dev.txt 2> >(grep -v 'is ignored: it is neither' >&2); then
  echo "installing requirements/dev.txt failed (see above). A hash mismatch means a file" >&2
  echo "differs from the one locked; 'No matching distribution' for torch==2.13.0+cpu means" >&2
  echo "pip needs PIP_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/ on this machine." >&2
  exit 1
fi
.venv/bin/python -m pip check
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" >"$stamp"
