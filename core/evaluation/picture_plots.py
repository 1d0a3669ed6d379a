"""PNG plots of detectors measured on real pictures: PR curves, and a contact sheet of the worst pictures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from core.evaluation.detection import LabelledPicture
from core.evaluation.real_pictures import OPERATING_IOUS, SHEET_IOU, PictureOutcome, PicturesReport

TILE = 256  # longest side of a contact-sheet tile, pixels
TRUTH_COLOUR = (40, 200, 60)
MISSED_COLOUR = (255, 210, 0)
PREDICTION_COLOUR = (230, 30, 30)


def write_pr_curves(reports: dict[str, PicturesReport], path: Path) -> Path:
    """One panel per IoU of :data:`OPERATING_IOUS`: each detector's curve, its operating point (dot) and the
    best-F1 point (cross)."""
    from core.evaluation.plots import pyplot, save

    fig, axes = pyplot().subplots(1, len(OPERATING_IOUS), figsize=(5 * len(OPERATING_IOUS), 4))
    for ax, iou in zip(axes, OPERATING_IOUS, strict=True):
        for name, report in reports.items():
            curve = report.curves[iou]
            (line,) = ax.plot(curve.recall, curve.precision, label=f"{name} (AP {curve.ap:.3f})")
            point, best = report.operating[iou], report.best_f1[iou]
            ax.plot([point.recall], [point.precision], "o", color=line.get_color())
            ax.plot([best.recall], [best.precision], "x", color=line.get_color(), markersize=9)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"real pictures: precision-recall at IoU {iou}\n(dot: operating confidence, x: best F1)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="lower left")
    return save(fig, path)


def _tile(picture: LabelledPicture, outcome: PictureOutcome) -> Image.Image:
    """The picture at most :data:`TILE` pixels wide and high, truth boxes green (missed ones yellow and thick),
    kept predictions red with their score (false ones thick)."""
    image = picture.image.convert("RGB")
    scale = TILE / max(image.size)
    tile = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(tile)
    for j, box in enumerate(outcome.truth):
        missed = j in outcome.missed
        draw.rectangle(
            [v * scale for v in box],
            outline=MISSED_COLOUR if missed else TRUTH_COLOUR,
            width=4 if missed else 2,
        )
    for k, detection in enumerate(outcome.kept):
        b = detection.box
        corners = [b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale]
        draw.rectangle(corners, outline=PREDICTION_COLOUR, width=3 if k in outcome.false else 1)
        draw.text((corners[0] + 2, corners[1] + 1), f"{detection.score:.2f}", fill=PREDICTION_COLOUR)
    return tile


def write_worst_sheet(
    report: PicturesReport, pictures: Sequence[LabelledPicture], path: Path, *, tiles: int = 12
) -> Path:
    """Up to ``tiles`` pictures with the most misses and false boxes (IoU :data:`SHEET_IOU`), one tile each;
    a sheet saying so when every picture is right."""
    from core.evaluation.plots import pyplot, save

    worst = report.worst(tiles)
    columns = min(4, max(1, len(worst)))
    rows = max(1, math.ceil(len(worst) / columns))
    fig, axes = pyplot().subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, outcome in zip(axes.flat, worst, strict=False):
        ax.imshow(_tile(pictures[outcome.index], outcome))
        ax.set_title(f"{outcome.name}\n{len(outcome.missed)} missed, {len(outcome.false)} false", fontsize=8)
    if not worst:
        axes[0, 0].text(0.5, 0.5, "no misses, no false boxes", ha="center", va="center")
    fig.suptitle(
        f"{report.detector}: worst pictures at confidence {report.operating_confidence:.2f}, IoU {SHEET_IOU} "
        "(green truth, yellow missed truth, red predictions; thick red: false)",
        fontsize=9,
    )
    return save(fig, path)


def write_picture_plots(
    reports: dict[str, PicturesReport], pictures: Sequence[LabelledPicture], out_dir: Path
) -> list[Path]:
    """``detector-pictures-pr.png`` and a ``detector-pictures-worst-<name>.png`` per detector."""
    written = [write_pr_curves(reports, out_dir / "detector-pictures-pr.png")]
    for name, report in reports.items():
        written.append(write_worst_sheet(report, pictures, out_dir / f"detector-pictures-worst-{name}.png"))
    return written
