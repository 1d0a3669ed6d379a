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
            *REPO.glob("core/training/*.py"),
            REPO / "core/synth.py",
            *REPO.glob("core/slots/*.py"),
            REPO / "core/characters.py",
            REPO / "core/store.py",
            REPO / "core/real_faces.py",
            REPO / "core/grounding.py",
            REPO / "core/caption_claims.py",
            REPO / "core/caption_eval.py",
            REPO / "core/gallery_versions.py",
            REPO / "core/reference_crops.py",
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
    from core.settings import Settings
    from core.training.build import BUILDERS, build_slot

    print(f"building the test models in {root} (one time, a few minutes on a CPU)", file=sys.stderr)
    settings = Settings(models_dir=root / "models", data_dir=root, database_url="")
    for slot in BUILDERS:
        build_slot(settings, slot, seed=0)
    (root / "complete").write_text("ok\n")
    return root


if __name__ == "__main__":
    print(ensure_test_models())
