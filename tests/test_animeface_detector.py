"""The animeface-2009 detector through our Pillow-independent adapter (core/vision/slots/animeface_detector.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.datasets.synth import render_scene
from core.settings import Settings
from core.vision.results import Box
from core.vision.slots import animeface_detector
from core.vision.slots.animeface_detector import (
    AnimeFaceDetector,
    AnimeFaceMissing,
    animeface_available,
    animeface_manifest,
    install_animeface,
)
from core.vision.slots.base import HeadDetector, Manifest
from core.vision.slots.registry import active_manifest, load_slot, read_active
from tests.conftest import shared_data_dir

needs_animeface = pytest.mark.skipif(
    not animeface_available(),
    reason=f"animeface is not usable here (pip install {animeface_detector.REQUIREMENT})",
)
PIXIV = shared_data_dir() / "scenes" / "pixiv-faces-train"
DRAWN_SEEDS = (7, 12, 21)  # synth scenes whose every drawn face animeface finds


@pytest.fixture(scope="module")
def detector() -> AnimeFaceDetector:
    return AnimeFaceDetector(confidence=0.0)


def best_iou(box: Box, others: list[Box]) -> float:
    return max((box.iou(other) for other in others), default=0.0)


@needs_animeface
def test_loads_through_load_slot(tmp_path: Path) -> None:
    install_animeface(tmp_path)
    manifest = Manifest.load(tmp_path / "detector" / "animeface")
    assert manifest.format == "animeface" and manifest.files == {}
    slot = load_slot(manifest, Settings(_env_file=None, models_dir=tmp_path, database_url=""))
    assert isinstance(slot, AnimeFaceDetector) and isinstance(slot, HeadDetector)
    assert slot.confidence == manifest.thresholds["confidence"]
    assert slot.version == manifest.version


@needs_animeface
def test_an_explicit_setting_overrides_the_manifest_threshold(tmp_path: Path) -> None:
    manifest = animeface_manifest(tmp_path)
    slot = load_slot(manifest, Settings(_env_file=None, database_url="", detector_confidence=0.95))
    assert slot.confidence == 0.95
    assert slot.version != manifest.version


@needs_animeface
@pytest.mark.parametrize("seed", DRAWN_SEEDS)
def test_finds_every_drawn_face(detector: AnimeFaceDetector, seed: int) -> None:
    scene = render_scene(seed)
    heads = [h.box for h in scene.heads]
    found = detector.detect(scene.image)
    assert len(found) == len(heads)
    assert all(best_iou(d.box, heads) > 0.3 for d in found)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert all(0.5 <= d.score <= 1.0 for d in found)


@needs_animeface
def test_a_large_picture_is_shrunk_and_its_boxes_scaled_back(detector: AnimeFaceDetector) -> None:
    scene = render_scene(7)
    small = detector.detect(scene.image)
    width, height = scene.image.size
    big = scene.image.resize((width * 4, height * 4), Image.Resampling.NEAREST)
    assert max(big.size) > detector.max_side
    large = detector.detect(big)
    assert len(large) == len(small)
    for d in large:
        scaled = Box(d.box.x1 / 4, d.box.y1 / 4, d.box.x2 / 4, d.box.y2 / 4)
        assert best_iou(scaled, [s.box for s in small]) > 0.6


@needs_animeface
def test_the_confidence_threshold_drops_weaker_faces() -> None:
    scene = render_scene(12)
    every = AnimeFaceDetector(confidence=0.0).detect(scene.image)
    strict_threshold = (min(d.score for d in every) + max(d.score for d in every)) / 2
    strict = AnimeFaceDetector(confidence=strict_threshold).detect(scene.image)
    assert 0 < len(strict) < len(every)
    assert all(d.score >= strict_threshold for d in strict)


@needs_animeface
def test_hair_colour_of_a_drawn_face(detector: AnimeFaceDetector) -> None:
    from core.datasets.synth import CAST_BY_KEY, HAIR_COLOURS

    scene = render_scene(7)
    for face in detector.faces(scene.image):
        head = max(scene.heads, key=lambda h: face.box.iou(h.box))
        drawn = np.array(HAIR_COLOURS[CAST_BY_KEY[head.character].hair_colour], float)
        distances = {
            name: float(np.linalg.norm(np.array(rgb, float) - np.array(face.hair_rgb, float)))
            for name, rgb in HAIR_COLOURS.items()
        }
        assert float(np.linalg.norm(drawn - np.array(face.hair_rgb, float))) == min(distances.values())


ODD_IMAGES = {
    "blank": Image.new("RGB", (640, 480), "white"),
    "one pixel": Image.new("RGB", (1, 1)),
    "thin strip": Image.new("RGB", (3, 900), "grey"),
    "grey L": Image.new("L", (300, 200), 128),
    "RGBA": Image.new("RGBA", (256, 256), (10, 200, 30, 0)),
    "palette": Image.new("P", (200, 200), 3),
    "1-bit": Image.new("1", (200, 120), 1),
    "CMYK": Image.new("CMYK", (128, 128), (0, 50, 100, 0)),
    "noise": Image.fromarray(np.random.default_rng(0).integers(0, 256, (333, 517, 3), dtype=np.uint8)),
    "huge blank": Image.new("RGB", (5000, 40), "black"),
}


@needs_animeface
@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_pictures_give_a_list(detector: AnimeFaceDetector, name: str) -> None:
    image = ODD_IMAGES[name]
    found = detector.detect(image)
    assert isinstance(found, list)
    assert all(
        0 <= d.box.x1 <= d.box.x2 <= image.width and 0 <= d.box.y1 <= d.box.y2 <= image.height for d in found
    )
    assert name not in {"blank", "one pixel", "thin strip", "huge blank"} or found == []


@needs_animeface
def test_drawn_rgba_and_grey_pictures_are_converted() -> None:
    scene = render_scene(7)
    detector = AnimeFaceDetector(confidence=0.0)
    assert len(detector.detect(scene.image.convert("RGBA"))) == len(scene.heads)
    assert detector.detect(scene.image.convert("L")) is not None


@needs_animeface
def test_real_pixiv_faces_match_their_labels(detector: AnimeFaceDetector) -> None:
    labels_path = PIXIV / "labels.json"
    if not labels_path.is_file():
        pytest.skip(f"{labels_path} is not here")
    entries = sorted(json.loads(labels_path.read_text(encoding="utf-8")), key=lambda e: e["file"])[:10]
    matched = 0
    for entry in entries:
        with Image.open(PIXIV / entry["file"]) as image:
            assert image.size == (entry["width"], entry["height"])
            found = detector.detect(image)
        labelled = [Box(*box) for box in entry["boxes"]]
        matched += any(best_iou(d.box, labelled) > 0.3 for d in found)
    assert matched >= 7, f"only {matched} of {len(entries)} labelled faces found"


@needs_animeface
def test_installing_keeps_the_detector_in_use(tmp_path: Path) -> None:
    Manifest(
        slot="detector", name="yolo-heads", format="yolo-onnx", folder=tmp_path / "detector" / "yolo-heads"
    ).save()
    assert active_manifest(tmp_path, "detector").name == "yolo-heads"
    install_animeface(tmp_path)  # "animeface" sorts first: without the pin it would become the default
    assert active_manifest(tmp_path, "detector").name == "yolo-heads"
    assert read_active(tmp_path)["detector"] == "yolo-heads"
    install_animeface(tmp_path, activate=True)
    assert active_manifest(tmp_path, "detector").name == "animeface"


def test_a_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "animeface", None)  # `import animeface` raises ImportError
    with pytest.raises(AnimeFaceMissing, match=r"pip install animeface==2\.0\.3"):
        AnimeFaceDetector()


def test_bad_arguments_are_refused() -> None:
    if not animeface_available():
        pytest.skip("animeface is not usable here")
    with pytest.raises(ValueError, match="confidence"):
        AnimeFaceDetector(confidence=1.5)
    with pytest.raises(ValueError, match="max_side"):
        AnimeFaceDetector(max_side=4)
