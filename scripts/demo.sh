#!/usr/bin/env bash
# The README's main job: set up the environment, then build the starter models (first run) and run the demo.
# `scripts/demo.sh --pull` installs the community models recommended for this machine instead (when online; offline
# it says so and trains the starters); on a terminal, the demo asks before it trains.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh worker,dev
# real face crops for training and measuring, when this checkout sits beside the shared data (never copied in)
if [ -z "${ANIBOT_FACES_DIR:-}" ] && [ -d ../shared/data/faces/moeimouto10/train ]; then
  export ANIBOT_FACES_DIR="$(cd ../shared/data/faces/moeimouto10 && pwd)"
fi
# more face sets (flat <character>/* folders) for the embedder and tagger, as a JSON list
if [ -z "${ANIBOT_MORE_FACES_DIRS:-}" ] && [ -d ../shared/data/faces/onepiece5 ]; then
  export ANIBOT_MORE_FACES_DIRS="[\"$(cd ../shared/data/faces/onepiece5 && pwd)\"]"
fi
# real pictures with face boxes for the detector (its train part; the test part is what reports use)
if [ -z "${ANIBOT_PICTURES_DIR:-}" ] && [ -f ../shared/data/scenes/pixiv-faces-train/labels.json ]; then
  export ANIBOT_PICTURES_DIR="$(cd ../shared/data/scenes/pixiv-faces-train && pwd)"
fi
.venv/bin/anibot demo "$@"
