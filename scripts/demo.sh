#!/usr/bin/env bash
# The README's main job: set up the environment, then build the starter models (first run) and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh worker,dev
# real face crops for training and measuring, when this checkout sits beside the shared data (never copied in)
if [ -z "${ANIBOT_FACES_DIR:-}" ] && [ -d ../shared/data/faces/moeimouto10/train ]; then
  export ANIBOT_FACES_DIR="$(cd ../shared/data/faces/moeimouto10 && pwd)"
fi
.venv/bin/anibot demo "$@"
