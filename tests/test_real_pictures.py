"""Real pictures as the yardstick: the built starter models on fixed subsets of ../shared/data they never trained on.

The test models are built like a fresh machine's (drawn scenes and the pretrained backbones, no real data), so these
floors are the fresh-machine figures less a margin; the README's table has the measured values of both build modes.
Skips cleanly where the shared data is absent.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_data_dir

PICTURES = shared_data_dir() / "scenes" / "pixiv-faces-train"
KEIMA3 = shared_data_dir() / "faces" / "keima3"
ONEPIECE5 = shared_data_dir() / "faces" / "onepiece5"

DETECTOR_RECALL_FLOOR = 0.25  # fresh-machine build: 0.343 (precision 0.923); with real pictures 0.9+
FEW_SHOT_FLOOR = 0.65  # fresh-machine build: 0.796 (93 keima3 queries, 8 characters in the gallery)


@pytest.fixture(scope="module")
def settings(built_models: Path):  # type: ignore[no-untyped-def]
    from core.settings import Settings

    return Settings(models_dir=built_models / "models", data_dir=built_models, database_url="")


def _installed(settings, slot: str):  # type: ignore[no-untyped-def]
    from core.vision.slots.registry import active_manifest, load_slot

    return load_slot(active_manifest(settings.models_dir, slot), settings)


@pytest.mark.skipif(
    not (PICTURES / "labels.json").is_file(), reason="no ../shared/data/scenes/pixiv-faces-train"
)
def test_the_detector_finds_faces_in_real_illustrations(settings) -> None:  # type: ignore[no-untyped-def]
    from core.evaluation.picture_folders import load_picture_folder, picture_split
    from core.evaluation.real_pictures import evaluate_on_pictures

    detector = _installed(settings, "detector")
    test = [p for p in load_picture_folder(PICTURES).pictures if picture_split(p.name) == "test"]
    assert len(test) >= 30
    report = evaluate_on_pictures(detector, test, detector.confidence)
    at_30 = report.operating[0.3]
    assert at_30.recall >= DETECTOR_RECALL_FLOOR, at_30
    assert at_30.precision >= 0.7, at_30


@pytest.mark.skipif(
    not (KEIMA3.is_dir() and ONEPIECE5.is_dir()), reason="no ../shared/data/faces/keima3, onepiece5"
)
def test_few_shot_identification_of_real_characters_never_trained_on(settings) -> None:  # type: ignore[no-untyped-def]
    """5 references of each of 8 real characters (keima3's 3, onepiece5's 5) in the gallery; every other image of
    keima3 (never trained on in either build mode) is a query."""
    from core.datasets.folders import load_folder_dataset
    from core.datasets.real_faces import load_images

    embedder = _installed(settings, "embedder")
    rng = random.Random(0)
    refs, queries = [], []
    for root in (KEIMA3, ONEPIECE5):
        items = load_folder_dataset(root)["all"]
        for label in sorted({i.label for i in items}):
            own = [i for i in items if i.label == label]
            rng.shuffle(own)
            refs += own[:5]
            if root == KEIMA3:
                queries += own[5:]
    ref_emb = embedder.embed(load_images(refs, longest=256))
    query_emb = embedder.embed(load_images(queries, longest=256))
    best = (query_emb @ ref_emb.T).argmax(1)
    top1 = float(np.mean([refs[j].label == q.label for j, q in zip(best, queries, strict=True)]))
    print(f"few-shot top-1 {top1:.3f} on {len(queries)} queries")
    assert top1 >= FEW_SHOT_FLOOR, top1
