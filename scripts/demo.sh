#!/usr/bin/env bash
# One command from a fresh checkout to a federation training live on this machine:
# installs what is needed, writes demo hospital data, runs 1 coordinator,
# 2 selectors and 4 hospital clients as separate processes over gRPC.
# Extra arguments go to `python -m coordinator.local` (e.g. --strategy FedProx).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
python -m scripts.make_demo_data --out demo-data --holders 4
python -m coordinator.local --app apps/tabular --data-dir demo-data/breast_cancer/clients \
  --selectors 2 --rounds 5 "$@"
