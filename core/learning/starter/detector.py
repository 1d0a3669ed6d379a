"""The starter head detector: YOLOv8n trained from scratch on synthetic scenes, offline, in minutes.

Measured on the 2-core CPU build machine while other jobs shared it (load 2-6), so the figure to compare is this
process's CPU time: on CPU ultralytics trains with one torch thread (its NUM_THREADS = cores - 1), so an idle
machine finishes in about that time. (Two threads on the busy machine were 6x slower per step: OpenMP barriers.)
mAP on 60 synthetic val scenes, AdamW, nbs = batch, warmup 0.5 epoch, close_mosaic 2, seed 0:

    n_train x epochs @ imgsz, changes      mAP50  mAP50-95  CPU s
    200 x 3  @ 320, batch 16, lr0 .002     0.009  0.003      78   (far too few steps)
    400 x 8  @ 256                         0.995  0.852     218
    325 x 8  @ 256                         0.995  0.823     189
    520 x 5  @ 256                         0.981  0.783     189
    325 x 8  @ 256, no mosaic              0.995  0.771     186
    260 x 10 @ 256                         0.995  0.850     189
    200 x 12 @ 256                         0.995  0.821     174
    200 x 8  @ 320                         0.973  0.727     178
    240 x 10 @ 256, lr0 .006               0.995  0.834     180
    240 x 10 @ 256, batch 16               0.995  0.764     178
    240 x 10 @ 256, batch 4, lr0 .002      0.995  0.854     197   (P 0.98, R 0.99)
    240 x 10 @ 256  (the defaults)         0.995  0.837     184   (P 0.997, R 1.0)

(batch 8 and lr0 .003 unless stated.) Epochs beat extra images, 256 px beats 320 px at equal cost, mosaic helps.
The ONNX export of the defaults found all 40 heads of 20 fresh scenes (seeds 5_000_000+) with no false positive.

With a real face set (``faces_dir``), 60 % of the scenes get 1-3 real faces pasted in
(core.datasets.real_faces.compose_scene: soft elliptical edge, a body below, 12-55 % of the shorter side, some cut by
the border, some blurred): faces of the train split in training scenes, of the test split in validation scenes. The
defaults then train in 172 s on 2 idle cores; ``anibot eval detector`` on 200 held-out pictures each: drawn scenes
mAP50 1.000 / mAP50-95 0.787, scenes with pasted real (test-split) heads mAP50 0.988 / mAP50-95 0.700 (precision 0.99,
recall 0.95 at confidence 0.35). Pasted faces are not real anime pictures: a pulled community detector (``anibot models
pull deepghs-head-v2.0-s``) is what real artwork needs.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from core.datasets.detection_scenes import render_detection_scene
from core.datasets.real_faces import FaceSplits, load_face_splits, load_images
from core.vision.slots.base import Manifest
from core.vision.slots.ultralytics_env import default_config_dir, ultralytics_offline

STARTER_NAME = "anibot-starter-yolov8n-head"
VAL_SEED_OFFSET = 1_000_000
LABELS = {0: "head"}

# Passed to ultralytics' train(); callers may override any key through ``train_overrides``.
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch": 8,  # more optimizer steps in a short run; batch 16 lost 0.07 mAP50-95 at the same cost
    "nbs": 8,  # one optimizer step per batch (the default nbs=64 would accumulate 8 batches per step)
    "optimizer": "AdamW",
    "lr0": 0.003,
    "lrf": 0.1,
    "cos_lr": False,
    "warmup_epochs": 0.5,  # in epochs (ultralytics >= 8.4 no longer forces 100 warmup iterations)
    "mosaic": 1.0,  # mosaic on: +0.05 mAP50-95 over no mosaic at the same cost
    "close_mosaic": 2,
    "mixup": 0.0,
    "fliplr": 0.5,
    "scale": 0.5,
    "translate": 0.1,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "workers": 1,  # ultralytics uses 0 (the main process) on CPU anyway
}

Progress = Callable[[str, float], None]


def _yolo_rows(boxes: list[tuple[float, float, float, float]], size: tuple[int, int]) -> str:
    w, h = size
    return "".join(
        f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
        for x1, y1, x2, y2 in boxes
    )


def write_yolo_dataset(
    root: Path,
    *,
    n_train: int,
    n_val: int,
    seed: int = 0,
    faces: FaceSplits | None = None,
    real_share: float = 0.6,
) -> Path:
    """Render ``n_train`` + ``n_val`` scenes as a YOLO dataset under ``root``; return its data.yaml.

    Train scenes use seeds ``seed .. seed+n_train-1`` and are saved as JPEG at a random quality (a stand-in for the
    blur/JPEG augmentations of albumentations, which is not a dependency); val scenes use seeds offset by
    :data:`VAL_SEED_OFFSET` and are saved losslessly. With ``faces``, ``real_share`` of the scenes get real faces
    pasted in: faces of the train split (and its validation part) in train scenes, of the test split only in val
    scenes, so the validation mAP is measured on heads the detector never saw.
    """
    pools: dict[str, list[Image.Image] | None] = {"train": None, "val": None}
    if faces is not None:
        pools = {"train": load_images([*faces.train, *faces.val]), "val": load_images(faces.test)}
    for split, count, first in (("train", n_train, seed), ("val", n_val, seed + VAL_SEED_OFFSET)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for scene_seed in range(first, first + count):
            image, boxes = render_detection_scene(scene_seed, pools[split], real_share)
            stem = f"{scene_seed:08d}"
            if split == "train":
                quality = random.Random(scene_seed).randint(45, 95)
                image.save(images / f"{stem}.jpg", quality=quality)
            else:
                image.save(images / f"{stem}.png")
            (labels / f"{stem}.txt").write_text(_yolo_rows(boxes, image.size), encoding="utf-8")
    data_yaml = root / "data.yaml"
    names = "\n".join(f"  {k}: {v}" for k, v in LABELS.items())
    data_yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n", encoding="utf-8"
    )
    return data_yaml


def _pick_device(device: str | None) -> str:
    if device and device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def _metric(metrics: Any, key: str) -> float:
    values = metrics if isinstance(metrics, dict) else getattr(metrics, "results_dict", {})
    value = values.get(key)
    return round(float(value), 4) if value is not None else float("nan")


def train_starter_detector(
    out_dir: Path,
    *,
    n_train: int = 240,
    n_val: int = 60,
    epochs: int = 10,
    imgsz: int = 256,
    seed: int = 0,
    workdir: Path | None = None,
    progress: Progress | None = None,
    device: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    ultralytics_dir: Path | None = None,
    faces_dir: Path | None = None,
    real_share: float = 0.6,
) -> Manifest:
    """Train the starter detector on synthetic scenes, export it to ONNX and write its manifest in ``out_dir``.

    ``out_dir`` receives ``model.onnx``, ``model.pt`` and ``manifest.json`` (format ``yolo-onnx``). ``workdir``
    holds the dataset and ultralytics' run folder (a temporary folder, removed afterwards, when omitted);
    ``ultralytics_dir`` is ultralytics' settings folder
    (see :func:`core.vision.slots.ultralytics_env.ultralytics_offline`).
    ``progress(stage, fraction)`` is called as the work advances, ``fraction`` in [0, 1].
    """
    report: Progress = progress or (lambda stage, fraction: None)
    out_dir = Path(out_dir)
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="anibot-detector-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        ultralytics_offline(ultralytics_dir or default_config_dir())
        from ultralytics import YOLO

        started = time.monotonic()
        report("rendering dataset", 0.0)
        faces = load_face_splits(Path(faces_dir), seed=seed) if faces_dir is not None else None
        data_yaml = write_yolo_dataset(
            work / "dataset", n_train=n_train, n_val=n_val, seed=seed, faces=faces, real_share=real_share
        )
        report("training", 0.05)

        model = YOLO("yolov8n.yaml")

        def on_epoch_end(trainer: Any) -> None:
            done = trainer.epoch + 1
            report(f"epoch {done}/{trainer.epochs}", 0.05 + 0.85 * done / max(1, trainer.epochs))

        model.add_callback("on_train_epoch_end", on_epoch_end)
        args: dict[str, Any] = {
            **TRAIN_DEFAULTS,
            **(train_overrides or {}),
            "data": str(data_yaml),
            "epochs": epochs,
            "imgsz": imgsz,
            "seed": seed,
            "deterministic": True,
            "device": _pick_device(device),
            "amp": False,
            "plots": False,
            "val": False,  # ultralytics still validates the final epoch (and best.pt after training)
            "project": str(work / "runs"),
            "name": "starter",
            "exist_ok": True,
            "verbose": False,
        }
        model.train(**args)
        trainer = model.trainer
        metrics = trainer.metrics
        best = trainer.best if Path(trainer.best).is_file() else trainer.last

        report("exporting ONNX", 0.92)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")  # tracing
            exported = YOLO(str(best)).export(
                format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False, device="cpu"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, out_dir / "model.onnx")
        shutil.copyfile(best, out_dir / "model.pt")
        files = {"onnx": "model.onnx", "pt": "model.pt"}
        # here, not at the top: this module imports no torch until ultralytics does
        from core.learning.starter.common import save_starter_manifest

        manifest = save_starter_manifest(
            out_dir,
            slot="detector",
            name=STARTER_NAME,
            format="yolo-onnx",
            files=files,
            thresholds={"confidence": 0.35, "iou": 0.5},
            input_size=imgsz,
            provenance=(
                f"trained by anibot models build on synthetic scenes (core.datasets.synth), seed {seed}: "
                f"train seeds {seed}..{seed + n_train - 1}, val seeds from {seed + VAL_SEED_OFFSET}; "
                + (
                    f"{real_share:.0%} of them with real faces from {faces_dir} pasted in (train split in training "
                    "scenes, test split in validation scenes); "
                    if faces is not None
                    else ""
                )
                + "YOLOv8n from scratch (ultralytics, no pretrained weights)"
            ),
            extra={
                "map50": _metric(metrics, "metrics/mAP50(B)"),
                "map50_95": _metric(metrics, "metrics/mAP50-95(B)"),
                "precision": _metric(metrics, "metrics/precision(B)"),
                "recall": _metric(metrics, "metrics/recall(B)"),
                "epochs": epochs,
                "n_train": n_train,
                "n_val": n_val,
                "real_faces": str(faces_dir) if faces is not None else None,
                "real_share": real_share if faces is not None else 0.0,
                "imgsz": imgsz,
                "seed": seed,
                "train_seconds": round(time.monotonic() - started, 1),
            },
        )
        report("done", 1.0)
        return manifest
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)
