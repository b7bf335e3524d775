#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, real-model tests included, on every core
# (pytest-xdist, one worker per core; the tests run one torch thread each). Serial:
# MASKSHARE_TEST_WORKERS=0 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -q -n "${MASKSHARE_TEST_WORKERS:-auto}" --dist worksteal "$@"
