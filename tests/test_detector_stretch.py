"""A yolo-onnx detector's ``extra.resize: stretch``: imgutils' plain resize, exactly, and boxes mapped back.

The model is a one-box stand-in exported here (ultralytics' output layout ``(1, 4 + classes, anchors)``, a static
non-square input), so the only thing under test is the preprocessing and the mapping of the box it returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings
from core.vision.slots.base import Manifest, file_sha256
from core.vision.slots.detector import Letterbox, OnnxYoloDetector, letterbox, resize_mode, stretch

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

INPUT_HW = (64, 96)  # (height, width), not square: each axis has its own gain when stretched
BOX_IN_INPUT = (48.0, 32.0, 48.0, 32.0)  # cx, cy, w, h in input pixels: x 24..72, y 16..48


class OneBox(torch.nn.Module):
    """Always one 'head' box at BOX_IN_INPUT with score 0.9 (plus a vanishing dependence on the pixels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = torch.tensor([*BOX_IN_INPUT, 0.9], dtype=torch.float32).reshape(1, 5, 1)
        return box + x.mean() * 1e-9


@pytest.fixture(scope="module")
def one_box_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.learning.starter.common import export_onnx

    path = tmp_path_factory.mktemp("one_box") / "model.onnx"
    return export_onnx(OneBox(), torch.zeros(1, 3, *INPUT_HW), path, input_names=("images",))


def picture(width: int = 200, height: int = 150) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def manifest_for(onnx: Path, **extra: object) -> Manifest:
    return Manifest(
        slot="detector",
        name="one-box",
        format="yolo-onnx",
        files={"onnx": onnx.name},
        sha256={onnx.name: file_sha256(onnx)},
        thresholds={"confidence": 0.5, "iou": 0.7},
        extra=dict(extra),
        folder=onnx.parent,
    )


def settings() -> Settings:
    return Settings(_env_file=None, device="cpu", onnx_threads=1)


def test_stretch_is_imgutils_plain_resize_and_maps_each_axis() -> None:
    image = picture()
    resized, box_map = stretch(image, INPUT_HW)
    # imgutils' _image_preprocess: image.resize((new_width, new_height)) with PIL's default filter
    assert np.array_equal(resized, np.asarray(image.resize((96, 64))))
    assert resized.shape == (64, 96, 3)
    assert box_map == Letterbox(gain_x=96 / 200, gain_y=64 / 150, pad_x=0, pad_y=0, width=200, height=150)
    # the letterbox keeps the ratio and pads: not the same pixels
    padded, boxed = letterbox(np.asarray(image), INPUT_HW)
    assert padded.shape == resized.shape and boxed.pad_x > 0 and not np.array_equal(padded, resized)


def test_stretched_input_tensor_is_bit_identical_to_imgutils(one_box_onnx: Path) -> None:
    image = picture()
    detector = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx, resize="stretch"), settings())
    assert detector.resize == "stretch" and detector.imgsz == INPUT_HW
    tensor, _ = detector.preprocess(image)
    # imgutils' rgb_encode of the resized picture: (array / 255.0).astype(float32), CHW, then a batch axis
    expected = (np.asarray(image.resize((96, 64))).transpose(2, 0, 1) / 255.0).astype(np.float32)[None]
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 64, 96)
    assert np.array_equal(tensor, expected)

    letterboxed = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx), settings())
    assert letterboxed.resize == "letterbox"
    other, _ = letterboxed.preprocess(image)
    assert other.shape == tensor.shape and not np.array_equal(other, tensor)
    assert np.allclose(other[0, :, :, 0], 114 / 255)  # the grey padding column on the left


def test_boxes_map_back_through_the_stretch_as_imgutils_does(one_box_onnx: Path) -> None:
    image = picture(200, 150)
    stretched = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx, resize="stretch"), settings())
    (found,) = stretched.detect(image)
    assert found.label == "head" and found.score == pytest.approx(0.9, abs=1e-6)
    # imgutils' _xy_postprocess: x / new_width * old_width, y / new_height * old_height
    x1, y1, x2, y2 = 24 / 96 * 200, 16 / 64 * 150, 72 / 96 * 200, 48 / 64 * 150
    assert (found.box.x1, found.box.y1, found.box.x2, found.box.y2) == pytest.approx(
        (x1, y1, x2, y2), abs=1e-3
    )
    assert (x1, y1, x2, y2) == (50.0, 37.5, 150.0, 112.5)

    # the same model output read through a letterbox lands elsewhere (the ratio is kept, the padding removed)
    letterboxed = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx), settings())
    (other,) = letterboxed.detect(image)
    _, box_map = letterbox(np.asarray(image), INPUT_HW)
    expected = box_map.to_original(np.array([[24.0, 16.0, 72.0, 48.0]]))[0]
    assert (other.box.x1, other.box.y1, other.box.x2, other.box.y2) == pytest.approx(
        tuple(expected), abs=1e-3
    )
    assert abs(other.box.x1 - found.box.x1) > 5  # the height limits the letterbox: x is padded


def test_resize_is_part_of_the_version_and_bad_values_fail_clearly(one_box_onnx: Path) -> None:
    plain = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx), settings())
    stretched = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx, resize="stretch"), settings())
    named = OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx, resize="letterbox"), settings())
    assert plain.version == named.version != stretched.version
    with pytest.raises(ValueError, match=r"one-box: extra\.resize 'squash' is not a detector preprocessing"):
        resize_mode(manifest_for(one_box_onnx, resize="squash"))
    with pytest.raises(ValueError, match="letterbox, stretch"):
        OnnxYoloDetector.from_manifest(manifest_for(one_box_onnx, resize="squash"), settings())
