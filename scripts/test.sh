#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, real-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -q "$@"
