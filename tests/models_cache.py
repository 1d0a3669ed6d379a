"""The starter models the tests use: trained once by `anibot models build`'s code path, cached under .cache/ by a
digest of the training code. ``scripts/test.sh`` builds them before pytest starts (``python -m
tests.models_cache``), so the first build is never cut short by a test's time limit."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def training_code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(
        [
            *REPO.glob("core/learning/starter/*.py"),
            *REPO.glob("core/datasets/*.py"),
            *REPO.glob("core/vision/slots/*.py"),
            REPO / "core/characters/starter_cast.py",
            REPO / "core/storage/store.py",
            REPO / "core/vision/grounding.py",
            REPO / "core/vision/caption_claims.py",
            REPO / "core/evaluation/captioning.py",
            REPO / "core/characters/gallery_versions.py",
            REPO / "core/characters/reference_crops.py",
        ]
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_test_models() -> Path:
    """The folder of built test models (models/, anibot.db, shared/): ANIBOT_TEST_MODELS_DIR, else the cache,
    built first when missing."""
    ready = os.environ.get("ANIBOT_TEST_MODELS_DIR")
    if ready:
        return Path(ready)
    root = REPO / ".cache" / "test-models" / training_code_digest()
    if (root / "complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    from core.learning.starter.build import BUILDERS, build_slot
    from core.settings import Settings

    print(f"building the test models in {root} (one time, a few minutes on a CPU)", file=sys.stderr)
    settings = Settings(models_dir=root / "models", data_dir=root, database_url="")
    for slot in BUILDERS:
        build_slot(settings, slot, seed=0)
    (root / "complete").write_text("ok\n")
    return root


if __name__ == "__main__":
    print(ensure_test_models())
