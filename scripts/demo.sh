#!/usr/bin/env bash
# The README's main job: set up the environment, then build the starter models (first run) and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh worker,dev
.venv/bin/anibot demo "$@"
