#!/usr/bin/env bash
# The nightly-size CLI fuzz: the suite's property tests with many more examples (tests/test_fuzz_cli.py).
#   bash scripts/fuzz_cli.sh [examples]     # default 5000 (about 5 minutes on 2 cores), plus real runs
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_EXAMPLES="${1:-5000}" "${PYTHON:-.venv/bin/python}" -m pytest -q -p no:cacheprovider tests/test_fuzz_cli.py
