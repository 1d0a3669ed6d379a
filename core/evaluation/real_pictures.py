"""A head detector measured on real labelled pictures (core.evaluation.picture_folders).

Beside the COCO-style AP of core.evaluation.detection (mAP50, mAP50-95, whose matching and AP code is reused
here), what a user of the detector sees: precision, recall and F1 of the boxes it keeps at its operating
confidence, at IoU 0.3 (a head box against a face label overlaps loosely) and 0.5, and the confidence that would
have given the best F1 on these pictures (reported, never applied). Each picture's misses and false boxes are
kept for the contact sheet of the worst ones (core.evaluation.picture_plots).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.evaluation.detection import (
    IOU_THRESHOLDS,
    BoxT,
    LabelledPicture,
    as_arrays,
    assign,
    average_precision,
    detect_all,
)
from core.vision.slots.base import Detection, HeadDetector

OPERATING_IOUS = (0.3, 0.5)  # IoUs of the precision / recall / F1 rows and of the PR curves
SHEET_IOU = 0.3  # what counts as a miss or a false box on the contact sheet


def f1_score(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@dataclass(frozen=True)
class OperatingPoint:
    """The boxes kept at ``confidence`` (score >= it), matched at ``iou``."""

    iou: float
    confidence: float
    true_positives: int
    predictions: int
    truths: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predictions if self.predictions else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.truths if self.truths else 0.0

    @property
    def f1(self) -> float:
        return f1_score(self.precision, self.recall)


@dataclass(frozen=True)
class PrCurve:
    """Precision and recall after each prediction, best score first, at ``iou``; ``scores`` in that order."""

    iou: float
    ap: float
    precision: list[float]
    recall: list[float]
    scores: list[float]


@dataclass(frozen=True)
class PictureOutcome:
    """One picture at the operating confidence, matched at :data:`SHEET_IOU`."""

    index: int  # of the picture in the evaluated sequence
    name: str
    truth: list[BoxT]
    kept: list[Detection]  # predictions at or above the operating confidence, best first
    missed: list[int]  # indexes into ``truth`` no kept prediction matched
    false: list[int]  # indexes into ``kept`` that matched no truth box

    @property
    def errors(self) -> int:
        return len(self.missed) + len(self.false)


@dataclass(frozen=True)
class PicturesReport:
    detector: str
    n_pictures: int
    n_boxes: int
    operating_confidence: float
    operating: dict[float, OperatingPoint]  # by IoU (OPERATING_IOUS)
    best_f1: dict[float, OperatingPoint]  # by IoU: the confidence with the best F1 on these pictures
    curves: dict[float, PrCurve]  # by IoU (OPERATING_IOUS)
    ap_per_iou: dict[float, float]  # COCO IoUs 0.5..0.95
    outcomes: list[PictureOutcome]
    seconds_per_picture: float

    @property
    def map50(self) -> float:
        return self.ap_per_iou[0.5]

    @property
    def map50_95(self) -> float:
        return float(np.nanmean(list(self.ap_per_iou.values())))

    def worst(self, n: int = 12) -> list[PictureOutcome]:
        """Up to ``n`` pictures with at least one miss or false box, most errors first (misses break ties)."""
        wrong = [o for o in self.outcomes if o.errors]
        return sorted(wrong, key=lambda o: (-o.errors, -len(o.missed), o.index))[:n]


def _assignments(
    found: Sequence[Sequence[Detection]], pictures: Sequence[LabelledPicture], iou: float
) -> list[np.ndarray]:
    return [
        assign(*as_arrays(dets), np.array(p.boxes, float).reshape(-1, 4), iou)
        for dets, p in zip(found, pictures, strict=True)
    ]


def _best_f1(scores: np.ndarray, tp: np.ndarray, n_truth: int, iou: float) -> OperatingPoint:
    """The confidence whose kept boxes give the best F1; it only cuts between different scores (a confidence
    keeps all the boxes of a score), and the highest of equally good ones wins."""
    if len(scores) == 0 or n_truth == 0:
        return OperatingPoint(iou, 1.0, 0, 0, n_truth)
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    hits = np.cumsum(tp[order])
    kept = np.arange(1, len(order) + 1)
    cut = np.append(ordered[1:] != ordered[:-1], True)  # the last box of each run of equal scores
    f1 = np.where(cut, 2 * hits / (kept + n_truth), -1.0)
    best = int(np.argmax(f1))
    return OperatingPoint(iou, float(ordered[best]), int(hits[best]), int(kept[best]), n_truth)


def _curve(scores: np.ndarray, tp: np.ndarray, n_truth: int, iou: float) -> PrCurve:
    ap, precision, recall = average_precision(scores, tp, n_truth)
    ordered = scores[np.argsort(-scores, kind="stable")]
    return PrCurve(
        iou, ap, [float(v) for v in precision], [float(v) for v in recall], [float(v) for v in ordered]
    )


def evaluate_on_pictures(
    detector: HeadDetector, pictures: Sequence[LabelledPicture], operating_confidence: float
) -> PicturesReport:
    """``detector`` on ``pictures``: every detection down to 0.001 for the curves and AP, the ones at or above
    ``operating_confidence`` for precision, recall, F1 and each picture's outcome."""
    if not pictures:
        raise ValueError("no pictures to evaluate on")
    started = time.perf_counter()
    found = detect_all(detector, [p.image for p in pictures])
    seconds = (time.perf_counter() - started) / len(pictures)
    n_truth = sum(len(p.boxes) for p in pictures)
    scores = np.concatenate([as_arrays(dets)[1] for dets in found])
    kept = scores >= operating_confidence

    ious = sorted({*OPERATING_IOUS, SHEET_IOU, *(float(i) for i in IOU_THRESHOLDS)})
    matched = {iou: _assignments(found, pictures, iou) for iou in ious}  # per picture: truth index or -1
    tp = {iou: np.concatenate(per_picture) >= 0 for iou, per_picture in matched.items()}
    operating = {
        iou: OperatingPoint(iou, operating_confidence, int(tp[iou][kept].sum()), int(kept.sum()), n_truth)
        for iou in OPERATING_IOUS
    }
    curves = {iou: _curve(scores, tp[iou], n_truth, iou) for iou in OPERATING_IOUS}
    best = {iou: _best_f1(scores, tp[iou], n_truth, iou) for iou in OPERATING_IOUS}
    ap_per_iou = {float(iou): average_precision(scores, tp[float(iou)], n_truth)[0] for iou in IOU_THRESHOLDS}

    outcomes = []
    for index, (dets, picture, pairs) in enumerate(zip(found, pictures, matched[SHEET_IOU], strict=True)):
        keep = [i for i, d in enumerate(dets) if d.score >= operating_confidence]
        order = sorted(keep, key=lambda i: -dets[i].score)
        hit = {int(pairs[i]) for i in keep if pairs[i] >= 0}
        outcomes.append(
            PictureOutcome(
                index=index,
                name=picture.name or f"picture {index}",
                truth=list(picture.boxes),
                kept=[dets[i] for i in order],
                missed=[j for j in range(len(picture.boxes)) if j not in hit],
                false=[k for k, i in enumerate(order) if pairs[i] < 0],
            )
        )
    return PicturesReport(
        detector=str(getattr(detector, "version", type(detector).__name__)),
        n_pictures=len(pictures),
        n_boxes=n_truth,
        operating_confidence=operating_confidence,
        operating=operating,
        best_f1=best,
        curves=curves,
        ap_per_iou=ap_per_iou,
        outcomes=outcomes,
        seconds_per_picture=seconds,
    )


def _ratio(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}" if peer > 0 else "n/a"


def _rows(report: PicturesReport) -> list[tuple[str, float, str]]:
    """(metric, value, formatted) of one report, in table order."""
    rows: list[tuple[str, float, str]] = [("operating confidence", report.operating_confidence, "")]
    for iou in OPERATING_IOUS:
        point = report.operating[iou]
        rows += [
            (f"precision @ IoU {iou}", point.precision, ""),
            (f"recall @ IoU {iou}", point.recall, ""),
            (f"F1 @ IoU {iou}", point.f1, ""),
        ]
    rows += [("mAP50", report.map50, ""), ("mAP50-95", report.map50_95, "")]
    for iou in OPERATING_IOUS:
        point = report.best_f1[iou]
        rows.append(
            (
                f"best-F1 confidence @ IoU {iou}",
                point.confidence,
                f"{point.confidence:.3f} (F1 {point.f1:.3f})",
            )
        )
    rows.append(
        ("ms per picture", 1000 * report.seconds_per_picture, f"{1000 * report.seconds_per_picture:.1f}")
    )
    return [(name, value, text or f"{value:.3f}") for name, value, text in rows]


RATIO_ROWS = {f"{m} @ IoU {iou}" for m in ("precision", "recall", "F1") for iou in OPERATING_IOUS} | {
    "mAP50",
    "mAP50-95",
}


def pictures_markdown(reports: dict[str, PicturesReport], title: str, note: str = "") -> str:
    """One column per detector (the first is ours); with two, a third column ours/peer for the rates."""
    names = list(reports)
    columns = [f"{name} `{r.detector}`" for name, r in reports.items()]
    paired = len(names) == 2
    header = ["metric", *columns] + (["ours/peer"] if paired else [])
    first = reports[names[0]]
    lines = [
        f"# {title}",
        "",
        f"{first.n_pictures} pictures, {first.n_boxes} labelled boxes. Precision, recall and F1 of the boxes each "
        "detector keeps at its operating confidence; mAP over all its boxes down to confidence 0.001.",
    ]
    if note:
        lines += ["", note]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = [_rows(r) for r in reports.values()]
    for i, (metric, _, _) in enumerate(table[0]):
        cells = [metric] + [rows[i][2] for rows in table]
        if paired:
            cells.append(_ratio(table[0][i][1], table[1][i][1]) if metric in RATIO_ROWS else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
