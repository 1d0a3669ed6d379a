"""Measuring a head detector: COCO-style mAP50 and mAP50-95 on held-out pictures with known head boxes.

The held-out set is rendered, never stored: synthetic scenes and, when a real face set is given, scenes with its
*test-split* faces pasted in (core.datasets.real_faces.compose_scene), at seeds no training run uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from core.vision.slots.base import Detection, HeadDetector

BoxT = tuple[float, float, float, float]
IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
EVAL_SEED_BASE = 7_000_000  # above the detector's training (0..) and validation (1_000_000..) seeds


@dataclass(frozen=True)
class LabelledPicture:
    image: Image.Image
    boxes: list[BoxT]
    has_real: bool = False
    name: str = ""  # where the picture came from (a file of a labelled folder), for reports


def heldout_pictures(
    n: int, *, faces_dir: Path | None = None, real_share: float = 0.6, seed: int = EVAL_SEED_BASE
) -> list[LabelledPicture]:
    """``n`` pictures: drawn scenes, and with ``faces_dir`` scenes with its test-split faces pasted in."""
    from core.datasets.detection_scenes import render_detection_scene, uses_real_faces
    from core.datasets.real_faces import load_face_splits, load_images

    faces = load_images(load_face_splits(faces_dir).test) if faces_dir is not None else None
    out = []
    for s in range(seed, seed + n):
        image, boxes = render_detection_scene(s, faces, real_share)
        out.append(LabelledPicture(image, boxes, has_real=bool(faces) and uses_real_faces(s, real_share)))
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def assign(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou: float) -> np.ndarray:
    """Greedy COCO matching, best score first: the truth box each prediction matches at ``iou``, or -1."""
    order = np.argsort(-scores, kind="stable")
    ious = iou_matrix(pred, truth)
    taken = np.zeros(len(truth), bool)
    matched = np.full(len(pred), -1, int)
    for i in order:
        if len(truth) == 0:
            break
        candidates = np.where(~taken, ious[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            taken[j] = True
            matched[i] = j
    return matched


def match(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou: float) -> np.ndarray:
    """Greedy COCO matching, best score first: whether each prediction is a true positive at ``iou``."""
    return assign(pred, scores, truth, iou) >= 0


def detect_all(detector: HeadDetector, images: Sequence[Image.Image]) -> list[list[Detection]]:
    """Every detection down to confidence 0.001 (as ultralytics' val does) of each image; a detector with a
    ``confidence`` attribute gets it back afterwards."""
    before = getattr(detector, "confidence", None)
    if before is not None:
        detector.confidence = 0.001  # type: ignore[attr-defined]
    try:
        return [detector.detect(image) for image in images]
    finally:
        if before is not None:
            detector.confidence = before  # type: ignore[attr-defined]


def as_arrays(detections: Sequence[Detection]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) as x1, y1, x2, y2 and scores (N,) of ``detections``."""
    boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in detections], float).reshape(-1, 4)
    return boxes, np.array([d.score for d in detections], float)


def average_precision(
    scores: np.ndarray, tp: np.ndarray, n_truth: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """101-point interpolated AP (as COCO), with the precision and recall curves."""
    if n_truth == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(tp[order])
    precision = hits / np.arange(1, len(order) + 1)
    recall = hits / n_truth
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    sampled = np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])
    return float(sampled.mean()), precision, recall


@dataclass
class DetectionReport:
    n_pictures: int
    n_heads: int
    map50: float
    map50_95: float
    precision: float  # at the detector's operating confidence, IoU 0.5
    recall: float
    operating_confidence: float
    ap_per_iou: dict[float, float] = field(default_factory=dict)
    curve_precision: list[float] = field(default_factory=list)
    curve_recall: list[float] = field(default_factory=list)


def evaluate_detector(
    detector: HeadDetector, pictures: Sequence[LabelledPicture], *, operating_confidence: float
) -> DetectionReport:
    """mAP over ``pictures`` with every detection down to confidence 0.001 (as ultralytics' val does)."""
    found = detect_all(detector, [p.image for p in pictures])
    n_truth = sum(len(p.boxes) for p in pictures)
    scores = np.array([d.score for dets in found for d in dets])
    ap_per_iou: dict[float, float] = {}
    curve_p = curve_r = np.zeros(0)
    tp50 = np.zeros(0, bool)
    for iou in IOU_THRESHOLDS:
        tp = (
            np.concatenate(
                [
                    match(*as_arrays(dets), np.array(p.boxes, float).reshape(-1, 4), float(iou))
                    for dets, p in zip(found, pictures, strict=True)
                ]
            )
            if pictures
            else np.zeros(0, bool)
        )
        ap, prec, rec = average_precision(scores, tp, n_truth)
        ap_per_iou[float(iou)] = ap
        if iou == 0.5:
            curve_p, curve_r, tp50 = prec, rec, tp
    kept = scores >= operating_confidence
    return DetectionReport(
        n_pictures=len(pictures),
        n_heads=n_truth,
        map50=ap_per_iou[0.5],
        map50_95=float(np.nanmean(list(ap_per_iou.values()))),
        precision=float(tp50[kept].mean()) if kept.any() else 0.0,
        recall=float(tp50[kept].sum() / n_truth) if n_truth else 0.0,
        operating_confidence=operating_confidence,
        ap_per_iou=ap_per_iou,
        curve_precision=[float(v) for v in curve_p],
        curve_recall=[float(v) for v in curve_r],
    )


def detection_markdown(reports: dict[str, DetectionReport], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| set | pictures | heads | mAP50 | mAP50-95 | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        lines.append(
            f"| {name} | {r.n_pictures} | {r.n_heads} | {r.map50:.3f} | {r.map50_95:.3f} | "
            f"{r.precision:.3f} | {r.recall:.3f} |"
        )
    first = next(iter(reports.values()), None)
    if first is not None:
        lines += [
            "",
            f"Precision and recall at the detector's operating confidence "
            f"{first.operating_confidence:.2f} and IoU 0.5.",
        ]
    return "\n".join(lines) + "\n"


def write_detection_plots(reports: dict[str, DetectionReport], out_dir: Path) -> list[Path]:
    """The precision-recall curve at IoU 0.5 of each set, and AP against the IoU threshold."""
    from core.evaluation.plots import pyplot, save

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
    for name, r in reports.items():
        left.plot(r.curve_recall, r.curve_precision, label=f"{name} (AP50 {r.map50:.3f})")
        right.plot(list(r.ap_per_iou), list(r.ap_per_iou.values()), marker="o", label=name)
    left.set_xlabel("recall")
    left.set_ylabel("precision")
    left.set_title("heads: precision-recall at IoU 0.5")
    left.set_ylim(0, 1.02)
    left.legend(fontsize=8)
    right.set_xlabel("IoU threshold")
    right.set_ylabel("AP")
    right.set_title("AP by IoU threshold")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=8)
    return [save(fig, out_dir / "detector-pr.png")]
