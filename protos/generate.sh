#!/usr/bin/env bash
# Regenerate the Python code for every .proto under protos/. Compiled from the
# repo root so generated modules import each other absolutely (protos.x.v1...).
# CI runs this and fails if `git diff --exit-code protos/` shows drift.
# The code is generated into a scratch folder first: the committed files are replaced
# only once protoc has succeeded (without grpc_tools, e.g. outside .venv, nothing changes).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if ! python -c "import grpc_tools.protoc" 2>/dev/null; then
  echo "protos/generate.sh: grpc_tools is missing; run it with .venv active (scripts/setup.sh installs it)" >&2
  exit 1
fi
# shellcheck disable=SC2046  # one argument per .proto file
python -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  $(find protos -name '*.proto' | sort)
find protos -name '*_pb2*.py*' -delete
cp -R "$out/protos/." protos/
