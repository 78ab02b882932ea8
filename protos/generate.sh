#!/usr/bin/env bash
# Regenerate the Python code for every .proto under protos/. Compiled from the
# repo root so generated modules import each other absolutely (protos.x.v1...).
# CI runs this and fails if `git diff --exit-code protos/` shows drift.
set -euo pipefail
cd "$(dirname "$0")/.."
find protos -name '*_pb2*.py*' -delete
python -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  $(find protos -name '*.proto' | sort)
