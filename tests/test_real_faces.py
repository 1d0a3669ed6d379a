"""Real-face data helpers, detection mAP and tag F1 measurement (on stand-in face sets made here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.datasets.real_faces import CANONICAL_LOOKS, compose_scene, load_face_splits, load_images
from core.evaluation.detection import LabelledPicture, average_precision, evaluate_detector, iou_matrix, match
from core.evaluation.tagging import f1_per_tag, is_eye_colour, is_hair_colour
from core.learning.starter.tagger import synth_vocabulary, weakly_known
from core.vision.results import Box
from core.vision.slots.base import Detection


def test_splits_keep_the_test_split_and_carve_validation_from_train(face_set: Path):
    splits = load_face_splits(face_set, val_fraction=0.25, seed=0)
    labels = {"fate_testarossa", "kinomoto_sakura", "lelouch_lamperouge", "hatsune_miku"}
    assert set(splits.labels) == labels
    assert {i.label for i in splits.val} == labels  # every character has validation images
    train_paths = {i.path for i in splits.train}
    assert not train_paths & {i.path for i in splits.val}
    assert all(i.path.parts[-3] == "test" for i in splits.test)
    assert len(splits.train) + len(splits.val) == len(list((face_set / "train").glob("*/*.png")))
    again = load_face_splits(face_set, val_fraction=0.25, seed=0)
    assert [i.path for i in again.val] == [i.path for i in splits.val]


def test_compose_scene_pastes_faces_inside_the_picture_deterministically(face_set: Path):
    faces = load_images(load_face_splits(face_set).test)
    for seed in range(6):
        scene = compose_scene(seed, faces)
        again = compose_scene(seed, faces)
        assert np.array_equal(np.asarray(scene.image), np.asarray(again.image))
        assert scene.boxes == again.boxes and scene.n_real >= 1
        w, h = scene.image.size
        for x1, y1, x2, y2 in scene.boxes:
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        # pasted heads overlap no other head much
        boxes = np.array(scene.boxes)
        ious = iou_matrix(boxes, boxes)
        np.fill_diagonal(ious, 0)
        assert ious.max() < 0.3


def test_match_and_average_precision():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    pred = np.array([[0, 0, 10, 10], [22, 22, 32, 32], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.95])
    tp50 = match(pred, scores, truth, 0.5)
    assert tp50.tolist() == [True, False, False]  # the shifted box has IoU 64/136 < 0.5
    tp40 = match(pred, scores, truth, 0.4)
    assert tp40.tolist() == [True, True, False]
    ap_perfect, _, _ = average_precision(np.array([0.9, 0.8]), np.array([True, True]), 2)
    assert ap_perfect == pytest.approx(1.0)
    ap, precision, recall = average_precision(scores, tp40, 2)
    assert 0.5 < ap < 1.0  # the best-scored detection is a false positive
    assert recall[-1] == 1.0 and precision[0] == 0.0


class _FixedDetector:
    version = "fixed"

    def __init__(self, answers: list[list[Detection]]) -> None:
        self.answers = answers
        self.calls = 0
        self.confidence = 0.35

    def detect(self, image):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.answers[self.calls - 1]


def test_evaluate_detector_counts_misses_and_localisation():
    from PIL import Image

    pictures = [LabelledPicture(Image.new("RGB", (64, 64)), [(0, 0, 20, 20), (30, 30, 60, 60)])]
    exact = _FixedDetector([[Detection(Box(0, 0, 20, 20), 0.9), Detection(Box(30, 30, 60, 60), 0.8)]])
    report = evaluate_detector(exact, pictures, operating_confidence=0.35)
    assert report.map50 == pytest.approx(1.0) and report.map50_95 == pytest.approx(1.0)
    assert exact.confidence == 0.35  # restored after the low-threshold run
    loose = _FixedDetector([[Detection(Box(0, 0, 24, 24), 0.9)]])  # IoU 0.69 with one head, other missed
    report = evaluate_detector(loose, pictures, operating_confidence=0.35)
    assert report.recall == pytest.approx(0.5) and report.precision == pytest.approx(1.0)
    assert report.map50 == pytest.approx(0.5, abs=0.01)
    assert report.ap_per_iou[0.65] > 0.5 and report.ap_per_iou[0.7] == 0.0
    assert report.map50_95 == pytest.approx(0.4 * report.map50)  # 4 of the 10 IoU thresholds


def test_tag_f1_and_colour_families():
    truth = [{"blonde_hair", "red_eyes"}, {"brown_hair", "green_eyes"}, {"brown_hair", "green_eyes"}]
    said = [{"blonde_hair", "red_eyes"}, {"brown_hair", "blue_eyes"}, {"blonde_hair", "green_eyes"}]
    f1, support = f1_per_tag(
        truth, said, {"blonde_hair", "brown_hair", "red_eyes", "green_eyes", "blue_eyes"}
    )
    assert f1["blonde_hair"] == pytest.approx(2 / 3) and f1["brown_hair"] == pytest.approx(2 / 3)
    assert f1["blue_eyes"] == 0.0 and support["blue_eyes"] == 0
    assert (
        is_hair_colour("aqua_hair")
        and not is_hair_colour("long_hair")
        and not is_hair_colour("very_long_hair")
    )
    assert is_eye_colour("grey_eyes") and not is_eye_colour("closed_eyes")


def test_weak_labels_know_only_the_families_a_look_names():
    vocab = synth_vocabulary()
    known = dict(zip(vocab, weakly_known(vocab, CANONICAL_LOOKS["kinomoto_sakura"]), strict=True))
    assert known["brown_hair"] and known["blonde_hair"] and known["green_eyes"] and known["red_eyes"]
    assert known["short_hair"] and known["long_hair"]
    assert not known["smile"] and not known["glasses"] and not known["1girl"]
    assert {t for look in CANONICAL_LOOKS.values() for t in look} <= set(vocab)


def test_the_shared_face_set_decodes_and_every_character_has_a_look():
    from tests.conftest import shared_data_dir

    root = shared_data_dir() / "faces" / "moeimouto10"
    if not (root / "train").is_dir():
        pytest.skip(f"real face set not present at {root}")
    splits = load_face_splits(root)
    items = [*splits.train, *splits.val, *splits.test]
    assert len(items) == 974 and len(splits.test) == 185
    assert set(splits.labels) <= set(CANONICAL_LOOKS)
    for flat in (
        "onepiece5",
        "keima3",
    ):  # the flat sets' characters have looks too (core.datasets.real_faces)
        folder = shared_data_dir() / "faces" / flat
        if folder.is_dir():
            assert {p.name for p in folder.iterdir() if p.is_dir()} <= set(CANONICAL_LOOKS)
    images = load_images(items, longest=64)  # one file is a JPEG named .png: decoded by content
    assert len(images) == len(items) and all(im.mode == "RGB" for im in images)
