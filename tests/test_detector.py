from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings
from core.vision.slots.base import Detection, HeadDetector, Manifest, file_sha256
from core.vision.slots.detector import (
    DETECTOR_LOADERS,
    Letterbox,
    OnnxYoloDetector,
    UltralyticsDetector,
    decode_yolo_output,
    effective_thresholds,
    letterbox,
    nms,
    parse_metadata,
)
from core.vision.slots.ultralytics_env import ultralytics_offline

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # ultralytics' ONNX export

STAND_IN_IMGSZ = (64, 96)  # (height, width): not square, so the metadata's imgsz is really the one used


@pytest.fixture(scope="module")
def yolo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ultralytics")
    ultralytics_offline(folder)
    return folder


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory, yolo_config: Path) -> dict[str, Path]:
    """An untrained YOLOv8n (80 classes, renamed) saved as .pt and exported to ONNX with ultralytics' metadata."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("stand_in")
    model = YOLO("yolov8n.yaml")
    model.model.names = {i: f"label{i}" for i in range(80)} | {0: "head", 1: "face"}
    pt = folder / "stand_in.pt"
    model.save(pt)
    onnx_path = Path(
        YOLO(str(pt)).export(
            format="onnx", imgsz=list(STAND_IN_IMGSZ), simplify=False, dynamic=False, device="cpu"
        )
    )
    assert onnx_path.parent == folder
    return {"pt": pt, "onnx": onnx_path}


# --- pure decoding -----------------------------------------------------------------------------------------------


def test_letterbox_matches_ultralytics_geometry() -> None:
    rgb = np.full((150, 200, 3), 7, dtype=np.uint8)
    padded, box_map = letterbox(rgb, (96, 96))
    assert padded.shape == (96, 96, 3)
    assert box_map == Letterbox(gain_x=96 / 200, gain_y=72 / 150, pad_x=0, pad_y=12, width=200, height=150)
    assert (padded[:12] == 114).all() and (padded[-12:] == 114).all() and (padded[12:84] == 7).all()


def test_decode_nms_and_mapping_through_the_letterbox() -> None:
    # a 200x100 image letterboxed into 100x100: gain 0.5, 25 px of padding above and below
    box_map = Letterbox(gain_x=0.5, gain_y=0.5, pad_x=0, pad_y=25, width=200, height=100)
    # columns: cx, cy, w, h (input pixels), score of class 0, score of class 1
    candidates = np.array(
        [
            [30, 50, 20, 20, 0.90, 0.05],  # kept
            [
                32,
                51,
                20,
                20,
                0.05,
                0.80,
            ],  # overlaps the first (IoU ~0.75), other class: suppressed (class-agnostic)
            [75, 40, 10, 30, 0.10, 0.70],  # separate: kept, class 1
            [60, 60, 10, 10, 0.20, 0.10],  # below the confidence
        ],
        dtype=np.float32,
    )
    for output in (candidates.T[None], candidates[None]):  # (1, 4+nc, N) and the transposed (1, N, 4+nc)
        found = decode_yolo_output(output, box_map, confidence=0.5, iou=0.6, num_classes=2)
        assert len(found) == 2
        (b0, s0, c0), (b1, s1, c1) = found
        assert (s0, c0, s1, c1) == (pytest.approx(0.9), 0, pytest.approx(0.7), 1)
        # input (20, 40)-(40, 60) -> original ((20-0)/0.5, (40-25)/0.5) ...
        assert b0 == pytest.approx((40.0, 30.0, 80.0, 70.0))
        assert b1 == pytest.approx((140.0, 0.0, 160.0, 60.0))  # y1 = (25-25)/0.5


def test_decode_clamps_to_the_image_and_sorts_with_zero_confidence() -> None:
    box_map = Letterbox(gain_x=1.0, gain_y=1.0, pad_x=0, pad_y=0, width=50, height=40)
    candidates = np.array(
        [
            [10, 10, 8, 8, 0.2],
            [40, 20, 8, 8, 0.7],
            [-5, 5, 30, 6, 0.4],
            [25, 35, 10, 20, 0.0],
            [-20, -20, 4, 4, 0.9],
        ],
        dtype=np.float32,
    )
    found = decode_yolo_output(candidates.T[None], box_map, confidence=0.0, iou=0.5, num_classes=1)
    scores = [s for _, s, _ in found]
    assert scores == sorted(scores, reverse=True) and len(found) == 4  # the box wholly outside is dropped
    for (x1, y1, x2, y2), _, _ in found:
        assert 0 <= x1 < x2 <= 50 and 0 <= y1 < y2 <= 40
    assert found[1][0] == pytest.approx((0.0, 2.0, 10.0, 8.0))  # (-20, 2)-(10, 8) clamped on the left


def test_decode_end2end_layout() -> None:
    box_map = Letterbox(gain_x=2.0, gain_y=2.0, pad_x=0, pad_y=0, width=100, height=100)
    rows = np.array(
        [[10, 10, 30, 30, 0.4, 0], [50, 50, 90, 90, 0.8, 2], [0, 0, 5, 5, 0.1, 1]], dtype=np.float32
    )
    found = decode_yolo_output(rows[None], box_map, confidence=0.3, iou=0.5, end2end=True)
    expected = [((25.0, 25.0, 45.0, 45.0), 0.8, 2), ((5.0, 5.0, 15.0, 15.0), 0.4, 0)]
    assert [(b, round(s, 2), c) for b, s, c in found] == expected


def test_nms_keeps_best_of_overlaps() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.3, 0.1], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]


def test_parse_metadata_reads_ultralytics_reprs() -> None:
    meta = {
        "names": "{0: 'head', 1: 'face'}",
        "imgsz": "[640, 480]",
        "stride": "32",
        "args": "{'nms': False}",
    }
    assert parse_metadata(meta) == {"names": {0: "head", 1: "face"}, "imgsz": (640, 480), "end2end": False}
    assert parse_metadata({"imgsz": "320", "end2end": "True"}) == {"imgsz": (320, 320), "end2end": True}
    assert parse_metadata({"names": "not python"}) == {"end2end": False}


def test_thresholds_settings_win_only_when_set() -> None:
    manifest = Manifest(
        slot="detector", name="m", format="yolo-onnx", thresholds={"confidence": 0.5, "iou": 0.4}
    )
    assert effective_thresholds(manifest, Settings(_env_file=None)) == (0.5, 0.4)
    assert effective_thresholds(manifest, Settings(_env_file=None, detector_confidence=0.2)) == (0.2, 0.4)
    assert effective_thresholds(
        Manifest(slot="detector", name="m", format="yolo-onnx"), Settings(_env_file=None)
    ) == (0.35, 0.5)


# --- the stand-in ONNX export -------------------------------------------------------------------------------------


def test_onnx_detector_reads_names_and_imgsz_from_metadata(stand_in: dict[str, Path]) -> None:
    detector = OnnxYoloDetector(
        stand_in["onnx"], version="t@1", confidence=0.0, iou=0.5, input_size=320, threads=1
    )
    assert isinstance(detector, HeadDetector)
    assert detector.imgsz == STAND_IN_IMGSZ  # from the metadata, not the fallback input_size
    assert len(detector.names) == 80 and detector.names[0] == "head" and detector.names[1] == "face"
    meta = parse_metadata(detector.session.get_modelmeta().custom_metadata_map)
    assert meta["names"] == detector.names

    image = Image.new("RGB", (200, 150), (200, 120, 90))
    found = detector.detect(image)
    assert isinstance(found, list) and found and all(isinstance(d, Detection) for d in found)
    for d in found:
        assert 0 <= d.box.x1 < d.box.x2 <= 200 and 0 <= d.box.y1 < d.box.y2 <= 150
        assert d.label in detector.names.values()
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)


def test_onnx_detector_sorts_a_crafted_output(stand_in: dict[str, Path]) -> None:
    detector = OnnxYoloDetector(stand_in["onnx"], version="t@1", confidence=0.0, iou=0.5)
    n = 126  # anchors of a 64x96 input: 8x12 + 4x6 + 2x3
    rng = np.random.default_rng(0)
    output = np.zeros((1, 84, n), dtype=np.float32)
    output[0, 0] = rng.uniform(0, 96, n)  # cx
    output[0, 1] = rng.uniform(0, 64, n)  # cy
    output[0, 2:4] = 3.0  # small boxes: few suppressions
    output[0, 4:] = rng.uniform(0, 1, (80, n)) ** 4

    class Crafted:
        def run(self, names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            (tensor,) = feeds.values()
            assert tensor.shape == (1, 3, *STAND_IN_IMGSZ) and tensor.dtype == np.float32
            assert tensor.min() >= 0.0 and tensor.max() <= 1.0
            return [output]

    detector.session = Crafted()  # type: ignore[assignment]
    found = detector.detect(Image.new("RGB", (200, 150)))
    scores = [d.score for d in found]
    assert len(found) > 10 and scores == sorted(scores, reverse=True)
    assert {d.label for d in found} <= set(detector.names.values())


def test_loaders_and_ultralytics_detector(
    stand_in: dict[str, Path], yolo_config: Path, tmp_path: Path
) -> None:
    assert set(DETECTOR_LOADERS) == {"yolo-onnx", "yolo-pt"}
    folder = stand_in["onnx"].parent
    manifest = Manifest(
        slot="detector",
        name="stand-in",
        format="yolo-pt",
        files={"onnx": stand_in["onnx"].name, "pt": "stand_in.pt"},
        thresholds={"confidence": 0.01, "iou": 0.6},
        input_size=96,
        folder=folder,
    )
    settings = Settings(_env_file=None, device="cpu", data_dir=tmp_path, onnx_threads=1)
    onnx_detector = DETECTOR_LOADERS["yolo-onnx"](manifest, settings)
    assert isinstance(onnx_detector, OnnxYoloDetector) and onnx_detector.version == manifest.version
    assert (onnx_detector.confidence, onnx_detector.iou) == (0.01, 0.6)
    explicit = Settings(_env_file=None, device="cpu", data_dir=tmp_path, detector_iou=0.3)
    overridden = DETECTOR_LOADERS["yolo-onnx"](manifest, explicit)
    assert (overridden.confidence, overridden.iou) == (0.01, 0.3)
    assert overridden.version != manifest.version  # the thresholds in use are part of the version

    pt_detector = DETECTOR_LOADERS["yolo-pt"](manifest, settings)
    assert isinstance(pt_detector, UltralyticsDetector) and isinstance(pt_detector, HeadDetector)
    assert pt_detector.names[0] == "head"
    found = pt_detector.detect(Image.new("RGB", (200, 150), (90, 160, 220)))
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)
    for d in found:
        assert 0 <= d.box.x1 < d.box.x2 <= 200 and 0 <= d.box.y1 < d.box.y2 <= 150


# --- training -----------------------------------------------------------------------------------------------------


def test_train_starter_detector_tiny(tmp_path: Path, yolo_config: Path) -> None:
    from core.learning.starter.detector import train_starter_detector

    stages: list[tuple[str, float]] = []
    out = tmp_path / "out"
    manifest = train_starter_detector(
        out,
        n_train=6,
        n_val=2,
        epochs=1,
        imgsz=64,
        seed=3,
        workdir=tmp_path / "work",
        progress=lambda stage, fraction: stages.append((stage, fraction)),
        device="cpu",
        ultralytics_dir=yolo_config,
    )
    assert manifest.slot == "detector" and manifest.format == "yolo-onnx" and manifest.input_size == 64
    assert manifest.files == {"onnx": "model.onnx", "pt": "model.pt"}
    for name in manifest.files.values():
        assert (out / name).is_file()
        assert manifest.sha256[name] == file_sha256(out / name)
    assert Manifest.load(out) == manifest
    assert {"map50", "map50_95", "epochs", "n_train"} <= set(manifest.extra)
    assert manifest.extra["n_train"] == 6 and manifest.extra["epochs"] == 1
    assert any(stage.startswith("epoch 1/1") for stage, _ in stages) and stages[-1] == ("done", 1.0)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)
    assert (tmp_path / "work" / "dataset" / "data.yaml").is_file()

    detector = OnnxYoloDetector.from_manifest(manifest, Settings(_env_file=None, device="cpu"))
    assert detector.names == {0: "head"} and detector.imgsz == (64, 64)
    assert isinstance(detector.detect(Image.new("RGB", (120, 90))), list)


def test_importing_ultralytics_keeps_intake_answers(yolo_config: Path) -> None:
    """ultralytics patches PIL.Image.open to install a HEIF plugin on unknown files; intake must not notice."""
    from core.vision.intake import NotAnImage, decode_image
    from core.vision.slots.ultralytics_env import ultralytics_offline

    ultralytics_offline(yolo_config)
    from ultralytics import YOLO  # noqa: F401

    with pytest.raises(NotAnImage):
        decode_image(b"hello, this is text", max_bytes=1 << 20, max_pixels=1 << 20)
