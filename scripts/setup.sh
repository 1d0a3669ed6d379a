#!/usr/bin/env bash
# Create .venv and install anibot with the extras given (default: worker,bot,dev). Idempotent.
# torch and torchvision are pinned in the `worker` extra; installing them first, explicitly, keeps pip from
# swapping in another torch build when it resolves timm and ultralytics.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-worker,bot,dev}"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
if [[ "$EXTRAS" == *worker* ]]; then
  .venv/bin/python -m pip install -q "torch==2.15.0" "torchvision==0.29.2"
fi
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
# a font with CJK glyphs for non-Latin character names in annotated images (Debian/Ubuntu, when root)
if ! fc-list 2>/dev/null | grep -qiE 'droid sans fallback|noto sans cjk|wenquanyi'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq fonts-droid-fallback >/dev/null 2>&1 || \
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fonts-droid-fallback >/dev/null 2>&1)) || \
      echo "note: could not install fonts-droid-fallback; non-Latin names may render as boxes" >&2
  else
    echo "note: install a CJK font (fonts-droid-fallback or fonts-noto-cjk) for non-Latin names" >&2
  fi
fi
# headless Chromium and its driver for the web page's browser tests (tests/test_web_browser.py skips without them)
if [[ "$EXTRAS" == *dev* ]] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) || \
      echo "note: could not install chromium and chromium-driver; the browser tests of the web page will skip" >&2
  else
    echo "note: install chromium and chromium-driver (Debian/Ubuntu) for the web page's browser tests" >&2
  fi
fi
echo "anibot installed in .venv (extras: ${EXTRAS})"
