#!/usr/bin/env bash
# The README's test command: set up the environment, make sure Redis is up, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh worker,bot,dev
bash scripts/ensure_redis.sh
bash scripts/ensure_postgres.sh
.venv/bin/ruff check .
.venv/bin/python -m tests.models_cache  # the starter models the tests use: built once, cached under .cache/
.venv/bin/python -m pytest "$@"
