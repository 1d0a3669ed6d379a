"""Head detectors: ultralytics YOLO detection models served by ONNX Runtime (or by ultralytics for ``.pt``).

Manifest formats served (see :data:`DETECTOR_LOADERS`):

- ``yolo-onnx``: ``files["onnx"]``, an ultralytics YOLOv8/YOLO11 detection export such as the models of
  deepghs/anime_head_detection. Labels and input size travel inside the file (ONNX metadata ``names`` and
  ``imgsz``); the manifest's ``input_size`` is only a fallback.
- ``yolo-pt``: ``files["pt"]``, ultralytics weights run by ultralytics itself (needs torch).

Thresholds: the manifest's ``thresholds["confidence"]`` / ``thresholds["iou"]`` unless the settings set
``detector_confidence`` / ``detector_iou`` explicitly (environment, ``.env`` or arguments): then the settings win.

Preprocessing of ``yolo-onnx``: the manifest's ``extra["resize"]``, ``"letterbox"`` (the default: ultralytics'
own, the picture fitted with its ratio kept onto grey padding) or ``"stretch"`` (a plain resize to the input size,
ratio not kept, no padding: what deepghs/imgutils' ``yolo_predict`` feeds these models, PIL's bicubic resize and
``/ 255`` in float64, so an installed deepghs model sees exactly the pixels imgutils gives it).
"""

from __future__ import annotations

import ast
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.settings import Settings
from core.vision.results import Box
from core.vision.slots.base import Detection, Manifest
from core.vision.slots.onnx_runtime import onnx_session, run_model

log = logging.getLogger(__name__)

PAD_VALUE = 114  # ultralytics' letterbox grey
RESIZE_MODES = ("letterbox", "stretch")  # manifest extra["resize"] of a yolo-onnx detector
MAX_NMS_CANDIDATES = 30_000  # as ultralytics: the best candidates kept before NMS
MAX_DETECTIONS = 300
DEFAULT_LABELS = {0: "head"}


# --- pure helpers (no model needed) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model input: ``input = original * gain + pad`` on each axis."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int
    width: int  # original image size
    height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(n, 4)`` xyxy boxes from input pixels back to original pixels, clamped to the image."""
        out = boxes.astype(np.float64, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.gain_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.gain_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.height)
        return out


def letterbox(
    rgb: np.ndarray, size: tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``rgb`` (h, w, 3) to fit ``size`` = (height, width) keeping its ratio, centred on grey padding.

    Mirrors ultralytics' ``LetterBox(auto=False)`` and ``scale_boxes`` (same rounding), so an exported model sees
    the pixels it saw in validation.
    """
    h, w = rgb.shape[:2]
    out_h, out_w = size
    r = min(out_h / h, out_w / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    if (new_w, new_h) != (w, h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return padded, Letterbox(new_w / w, new_h / h, left, top, w, h)


def stretch(image: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` to ``size`` = (height, width) ignoring its ratio: no padding, each axis its own gain.

    The plain resize of deepghs/imgutils' ``_image_preprocess`` (``image.resize((width, height))``: PIL's default
    filter for RGB, bicubic); boxes map back as imgutils' ``_xy_postprocess`` does, ``x / width * original``.
    Returns the resized (h, w, 3) uint8 RGB array and the box map.
    """
    rgb = image.convert("RGB")
    out_h, out_w = size
    resized = rgb if rgb.size == (out_w, out_h) else rgb.resize((out_w, out_h), Image.Resampling.BICUBIC)
    return np.asarray(resized), Letterbox(out_w / rgb.width, out_h / rgb.height, 0, 0, rgb.width, rgb.height)


def resize_mode(manifest: Manifest) -> str:
    """The manifest's ``extra["resize"]`` (``"letterbox"`` when absent); anything else is a clear error."""
    mode = manifest.extra.get("resize", "letterbox")
    if mode not in RESIZE_MODES:
        raise ValueError(
            f"{manifest.name}: extra.resize {mode!r} is not a detector preprocessing; use one of "
            f"{', '.join(RESIZE_MODES)}"
        )
    return str(mode)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy class-agnostic non-maximum suppression; indices of the kept ``(n, 4)`` xyxy boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo_output(
    output: np.ndarray,
    box_map: Letterbox,
    *,
    confidence: float,
    iou: float,
    num_classes: int | None = None,
    end2end: bool = False,
    max_detections: int = MAX_DETECTIONS,
) -> list[tuple[tuple[float, float, float, float], float, int]]:
    """Decode one image's raw YOLO output into ``[((x1, y1, x2, y2), score, class_id), ...]``, best first.

    ``output`` is ``(1, 4+nc, N)`` (ultralytics' export: cx, cy, w, h in input pixels, then class scores), or the
    transposed ``(1, N, 4+nc)``; with ``end2end`` (exports that contain their NMS, YOLO26 / ``nms=True``) it is
    ``(1, N, 6)``: x1, y1, x2, y2, score, class. Boxes come back in original pixels, clamped to the image;
    boxes with no area left after clamping are dropped.
    """
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 3:
        if pred.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got output shape {output.shape}")
        pred = pred[0]
    if pred.ndim != 2:
        raise ValueError(f"unexpected YOLO output shape {np.shape(output)}")

    if end2end:
        if pred.shape[-1] < 6 and pred.shape[0] >= 6:
            pred = pred.T
        xyxy, scores, classes = pred[:, :4], pred[:, 4], pred[:, 5].astype(np.int64)
        keep = scores >= confidence
        xyxy, scores, classes = xyxy[keep], scores[keep], classes[keep]
        order = np.argsort(-scores, kind="stable")
    else:
        pred = _channels_first(pred, num_classes)
        if pred.shape[0] < 5:
            raise ValueError(f"YOLO output needs 4 box rows and at least one class row, got {pred.shape}")
        cls_scores = pred[4:]
        classes = cls_scores.argmax(axis=0)
        scores = cls_scores[classes, np.arange(cls_scores.shape[1])]
        keep = scores >= confidence
        boxes, scores, classes = pred[:4, keep].T, scores[keep], classes[keep]
        if scores.size > MAX_NMS_CANDIDATES:
            top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        xyxy = np.empty_like(boxes)
        xyxy[:, 0] = boxes[:, 0] - boxes[:, 2] / 2
        xyxy[:, 1] = boxes[:, 1] - boxes[:, 3] / 2
        xyxy[:, 2] = boxes[:, 0] + boxes[:, 2] / 2
        xyxy[:, 3] = boxes[:, 1] + boxes[:, 3] / 2
        order = nms(xyxy, scores, iou) if scores.size else np.zeros(0, dtype=np.int64)

    order = order[:max_detections]
    mapped = box_map.to_original(xyxy[order]) if order.size else np.zeros((0, 4))
    found = []
    for (x1, y1, x2, y2), score, cls in zip(mapped, scores[order], classes[order], strict=True):
        if x2 > x1 and y2 > y1:
            found.append(((float(x1), float(y1), float(x2), float(y2)), float(score), int(cls)))
    return found


def _channels_first(pred: np.ndarray, num_classes: int | None) -> np.ndarray:
    """``(4+nc, N)`` from either layout; ultralytics' own ``(4+nc, N)`` wins when both sides could fit."""
    if num_classes is not None:
        channels = 4 + num_classes
        if pred.shape[0] == channels:
            return pred
        if pred.shape[1] == channels:
            return pred.T
        raise ValueError(f"YOLO output {pred.shape} does not match {num_classes} classes")
    return pred if pred.shape[0] <= pred.shape[1] else pred.T


def parse_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """The useful part of an ultralytics ONNX export's metadata: names, imgsz, end2end (as Python values)."""
    out: dict[str, Any] = {}
    names = _literal(meta.get("names"))
    if isinstance(names, dict):
        out["names"] = {int(k): str(v) for k, v in names.items()}
    elif isinstance(names, (list, tuple)):
        out["names"] = {i: str(v) for i, v in enumerate(names)}
    imgsz = _literal(meta.get("imgsz"))
    if isinstance(imgsz, int):
        out["imgsz"] = (imgsz, imgsz)
    elif isinstance(imgsz, (list, tuple)) and len(imgsz) in (1, 2) and all(isinstance(v, int) for v in imgsz):
        out["imgsz"] = (int(imgsz[0]), int(imgsz[-1]))
    args = _literal(meta.get("args"))
    end2end = _literal(meta.get("end2end"))
    out["end2end"] = bool(end2end is True or (isinstance(args, dict) and args.get("nms") is True))
    return out


def _literal(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def effective_thresholds(manifest: Manifest, settings: Settings) -> tuple[float, float]:
    """(confidence, iou): explicitly set settings win over the manifest, which wins over settings defaults."""
    explicit = settings.model_fields_set
    confidence = (
        settings.detector_confidence
        if "detector_confidence" in explicit
        else float(manifest.thresholds.get("confidence", settings.detector_confidence))
    )
    iou = (
        settings.detector_iou
        if "detector_iou" in explicit
        else float(manifest.thresholds.get("iou", settings.detector_iou))
    )
    return confidence, iou


def _version_for(manifest: Manifest, confidence: float, iou: float, resize: str = "letterbox") -> str:
    """The manifest's version, changed when the thresholds in use differ from its own, and by a plain resize
    (cached results of the letterboxed model are not the stretched one's)."""
    used = {**manifest.thresholds, "confidence": confidence, "iou": iou}
    if resize != "letterbox":
        used[f"resize:{resize}"] = 1.0
    return replace(manifest, thresholds=used).version


# --- ONNX Runtime ------------------------------------------------------------------------------------------------


class OnnxYoloDetector:
    """An ultralytics YOLO detection ONNX export run by ONNX Runtime (one session, thread-safe ``detect``)."""

    resize: str = "letterbox"  # or "stretch" (imgutils' plain resize): the manifest's extra["resize"]

    def __init__(
        self,
        onnx_path: Path,
        *,
        version: str,
        confidence: float,
        iou: float,
        providers: list[str] | None = None,
        threads: int = 0,
        input_size: int | None = None,
        device: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.session = onnx_session(
            onnx_path, providers=providers, threads=threads, device=device, cache_dir=cache_dir
        )
        self.version = version
        self.confidence = float(confidence)
        self.iou = float(iou)
        meta = parse_metadata(self.session.get_modelmeta().custom_metadata_map or {})
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self.names: dict[int, str] = meta.get("names") or dict(DEFAULT_LABELS)
        self.end2end: bool = meta["end2end"]
        self.imgsz: tuple[int, int] = (
            meta.get("imgsz")
            or _static_hw(model_input.shape)
            or ((input_size, input_size) if input_size else (640, 640))
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings) -> OnnxYoloDetector:
        confidence, iou = effective_thresholds(manifest, settings)
        resize = resize_mode(manifest)
        detector = cls(
            manifest.path("onnx"),
            version=_version_for(manifest, confidence, iou, resize),
            confidence=confidence,
            iou=iou,
            device=settings.device,
            threads=settings.onnx_threads,
            input_size=manifest.input_size,
        )
        detector.resize = resize
        return detector

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, Letterbox]:
        """NCHW input in [0, 1] (RGB; letterboxed, or stretched as imgutils does) and how to map boxes back."""
        if self.resize == "stretch":
            resized, box_map = stretch(image, self.imgsz)
            # as imgutils' rgb_encode: divided in float64, then cast
            tensor = (resized.transpose(2, 0, 1)[None] / 255.0).astype(self.input_dtype)
            return np.ascontiguousarray(tensor), box_map
        rgb = np.asarray(image.convert("RGB"))
        padded, box_map = letterbox(rgb, self.imgsz)
        tensor = padded.transpose(2, 0, 1)[None].astype(self.input_dtype) / self.input_dtype(255.0)
        return np.ascontiguousarray(tensor), box_map

    def detect(self, image: Image.Image) -> list[Detection]:
        tensor, box_map = self.preprocess(image)
        output = run_model(self.session, {self.input_name: tensor})[0]
        found = decode_yolo_output(
            output,
            box_map,
            confidence=self.confidence,
            iou=self.iou,
            num_classes=None if self.end2end else len(self.names),
            end2end=self.end2end,
        )
        return [
            Detection(box=Box(*xyxy), score=score, label=self.names.get(cls, str(cls)))
            for xyxy, score, cls in found
        ]


def _static_hw(shape: list[Any]) -> tuple[int, int] | None:
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return int(shape[2]), int(shape[3])
    return None


# --- ultralytics (.pt) -------------------------------------------------------------------------------------------


class UltralyticsDetector:
    """ultralytics ``.pt`` weights run by ultralytics itself (imported lazily; predictions serialised by a lock)."""

    def __init__(
        self,
        pt_path: Path,
        *,
        version: str,
        confidence: float,
        iou: float,
        device: str = "cpu",
        imgsz: int | None = None,
        config_dir: Path | None = None,
    ) -> None:
        from core.vision.slots.ultralytics_env import default_config_dir, ultralytics_offline

        ultralytics_offline(config_dir or default_config_dir())
        from ultralytics import YOLO

        self.model = YOLO(str(pt_path), task="detect")
        self.version = version
        self.confidence = float(confidence)
        self.iou = float(iou)
        self.device = device
        self.imgsz = imgsz
        self.names: dict[int, str] = {int(k): str(v) for k, v in (self.model.names or DEFAULT_LABELS).items()}
        self._lock = threading.Lock()  # ultralytics' predictor keeps per-call state

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings) -> UltralyticsDetector:
        confidence, iou = effective_thresholds(manifest, settings)
        return cls(
            manifest.path("pt"),
            version=_version_for(manifest, confidence, iou),
            confidence=confidence,
            iou=iou,
            device=_torch_device(settings.device),
            imgsz=manifest.input_size,
            config_dir=settings.data_dir / "ultralytics",
        )

    def detect(self, image: Image.Image) -> list[Detection]:
        extra = {"imgsz": self.imgsz} if self.imgsz else {}
        with self._lock:
            results = self.model.predict(
                image.convert("RGB"),
                conf=self.confidence,
                iou=self.iou,
                device=self.device,
                agnostic_nms=True,
                max_det=MAX_DETECTIONS,
                verbose=False,
                **extra,
            )
        boxes = results[0].boxes
        xyxy = boxes.xyxy.cpu().numpy()
        scores = boxes.conf.cpu().numpy()
        classes = boxes.cls.cpu().numpy().astype(int)
        width, height = image.size
        found = []
        for (x1, y1, x2, y2), score, cls in zip(xyxy, scores, classes, strict=True):
            box = Box(
                float(np.clip(x1, 0, width)),
                float(np.clip(y1, 0, height)),
                float(np.clip(x2, 0, width)),
                float(np.clip(y2, 0, height)),
            )
            if box.width > 0 and box.height > 0:
                found.append(Detection(box=box, score=float(score), label=self.names.get(int(cls), str(cls))))
        found.sort(key=lambda d: -d.score)
        return found


def _torch_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "0"
    if device == "cuda":
        log.warning("device=cuda but torch sees no GPU: using the CPU")
    return "cpu"


DETECTOR_LOADERS = {
    "yolo-onnx": OnnxYoloDetector.from_manifest,
    "yolo-pt": UltralyticsDetector.from_manifest,
}
