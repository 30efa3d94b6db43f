#!/usr/bin/env bash
# An MLflow tracking server for many concurrent jobs (instead of each job opening the sqlite file).
#   scripts/mlflow_server.sh [results_dir]        then: python -m harness sweep ... tracking.uri=http://127.0.0.1:5000
# HOST defaults to 127.0.0.1 (this machine only); set HOST=0.0.0.0 to serve compute nodes, on a trusted network.
set -euo pipefail
RESULTS="${1:-results}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
mkdir -p "$RESULTS"
exec "${PYTHON:-python}" -m mlflow server --backend-store-uri "sqlite:///$(cd "$RESULTS" && pwd)/mlflow.db" \
    --artifacts-destination "$(cd "$RESULTS" && pwd)/mlruns" --host "$HOST" --port "$PORT" --workers "${WORKERS:-2}"
