"""The starter tagger: a small timm CNN trained here on synthetic scenes, exported in the WD14 format.

Measurements (2 shared CPU cores): filled in below after experiments.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.results import Box
from core.slots.base import Manifest, file_sha256
from core.slots.tagger import (
    CATEGORY_GENERAL,
    CATEGORY_RATING,
    TagDef,
    Wd14Tagger,
    wd14_preprocess,
    write_selected_tags,
)
from core.synth import (
    ACCESSORIES,
    CAST,
    EXPRESSIONS,
    EYE_COLOURS,
    HAIR_COLOURS,
    HAIR_STYLES,
    CharacterSpec,
    SceneHead,
    render_scene,
    scene_tags,
)

Progress = Callable[[str, float], None]
RATINGS = ("general", "sensitive", "questionable", "explicit")
MODEL_NAME = "anibot-starter-tagger"
BACKBONE = "mobilenetv3_small_100"
# scene seeds: training and validation ranges never overlap each other (nor the small seeds tests use)
TRAIN_SEED_BASE = 1_000_000
VAL_SEED_BASE = 2_000_000
MAX_CHARACTERS = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def synth_vocabulary(max_characters: int = MAX_CHARACTERS) -> list[str]:
    """Every general tag core.synth can produce, derived from its constants (sorted)."""
    tags: set[str] = set()
    for style in HAIR_STYLES:
        for hair in HAIR_COLOURS:
            for eye in EYE_COLOURS:
                tags.update(CharacterSpec("_", "_", "_", hair, style, eye, ACCESSORIES).tags)
    box = Box(0, 0, 1, 1)
    for expression in EXPRESSIONS:
        for n in range(1, max_characters + 1):
            tags.update(
                scene_tags([SceneHead(box, CAST[i % len(CAST)].key, expression, False) for i in range(n)])
            )
    return sorted(tags)


def render_set(seeds: range, size: int, vocab: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scenes preprocessed exactly like inference (``wd14_preprocess``, stored losslessly as uint8):
    ``(N,size,size,3)`` BGR 0-255, general-tag targets ``(N, len(vocab))`` and rating indices ``(N,)``."""
    index = {t: i for i, t in enumerate(vocab)}
    images = np.empty((len(seeds), size, size, 3), np.uint8)
    targets = np.zeros((len(seeds), len(vocab)), np.float32)
    ratings = np.zeros(len(seeds), np.int64)
    for row, seed in enumerate(seeds):
        scene = render_scene(seed, max_characters=MAX_CHARACTERS)
        images[row] = wd14_preprocess(scene.image, size)[0]
        for tag in scene.tags:
            targets[row, index[tag]] = 1.0
        ratings[row] = RATINGS.index(scene.rating)
    return images, targets, ratings


def f1_scores(probs: np.ndarray, targets: np.ndarray, threshold: float) -> np.ndarray:
    """Per-column F1 (NaN where a tag is neither present nor predicted)."""
    pred = probs >= threshold
    truth = targets > 0.5
    tp = (pred & truth).sum(0)
    denom = pred.sum(0) + truth.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def best_threshold(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The threshold maximising macro-F1 (a plateau's middle), and that macro-F1."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    macro = np.array([np.nanmean(f1_scores(probs, targets, t)) for t in grid])
    best = macro.max()
    plateau = grid[macro >= best - 1e-9]
    return float(plateau[len(plateau) // 2]), float(best)


def _jpeg(batch: Any, quality: int) -> Any:
    """Round-trip uint8 NCHW images through JPEG."""
    import torch

    out = []
    for img in batch.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _augment(batch: Any, gen: Any) -> Any:
    """uint8 RGB NCHW -> augmented float 0-1: flip, zoom/shift on white, small light/contrast/saturation
    changes (hair colour names survive them), blur and JPEG."""
    import torch
    import torch.nn.functional as F

    n = batch.shape[0]

    def uniform(lo: float, hi: float, shape: tuple[int, ...] = (n,)) -> Any:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    jpeg = torch.rand(n, generator=gen) < 0.25
    if jpeg.any():
        batch = batch.clone()
        batch[jpeg] = _jpeg(batch[jpeg], int(uniform(40, 90, (1,)).item()))
    x = batch.float() / 255.0
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    # zoom out (smaller heads, like bigger pictures) or slightly in, and shift; white fill like the padding
    zoom = torch.rand(n, generator=gen) < 0.6
    if zoom.any():
        m = int(zoom.sum())
        scale = uniform(0.75, 1.08, (m,))
        theta = torch.zeros(m, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = uniform(-0.08, 0.08, (m, 2)) * (scale < 1).float()[:, None]
        grid = F.affine_grid(theta, [m, *x.shape[1:]], align_corners=False)
        x[zoom] = (
            F.grid_sample(x[zoom] - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            + 1.0
        )
    # photometric: brightness, contrast, saturation within +-8 %
    grey = x.mean(1, keepdim=True)
    sat = uniform(0.92, 1.08)[:, None, None, None]
    x = grey + (x - grey) * sat
    contrast = uniform(0.92, 1.08)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = x * uniform(0.92, 1.08)[:, None, None, None]
    blur = torch.rand(n, generator=gen) < 0.2
    if blur.any():
        sigma = float(uniform(0.4, 1.1, (1,)).item())
        k = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / (2 * sigma**2))
        k = (k / k.sum()).view(1, 1, 1, 5).repeat(3, 1, 1, 1)
        xb = F.conv2d(F.pad(x[blur], (2, 2, 0, 0), mode="replicate"), k, groups=3)
        xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3), groups=3)
        x[blur] = xb
    return x.clamp_(0.0, 1.0)


class _Wd14Wrapper:  # built lazily so importing this module does not import torch
    @staticmethod
    def build(backbone: Any, n_ratings: int) -> Any:
        import torch
        from torch import nn

        class Wd14Export(nn.Module):
            """NHWC BGR 0-255 float in, WD14 probabilities out: softmax over the ratings, sigmoid for the rest."""

            def __init__(self) -> None:
                super().__init__()
                self.backbone = backbone
                self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
                self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = x.permute(0, 3, 1, 2)[:, [2, 1, 0]]  # NHWC BGR -> NCHW RGB
                logits = self.backbone((x - self.mean) / self.std)
                return torch.cat(
                    [torch.softmax(logits[:, :n_ratings], dim=1), torch.sigmoid(logits[:, n_ratings:])], dim=1
                )

        return Wd14Export()


def train_starter_tagger(
    out_dir: Path,
    *,
    n_train: int = 3000,
    epochs: int = 6,
    input_size: int = 160,
    seed: int = 0,
    progress: Progress | None = None,
    n_val: int | None = None,
    backbone: str = BACKBONE,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> Manifest:
    """Train the starter tagger on ``n_train`` synthetic scenes and write a WD14 model folder at ``out_dir``."""
    from core.training.common import (
        torch_threads,
        training_threads,
    )

    with torch_threads(training_threads()):
        return _train(
            out_dir,
            n_train=n_train,
            epochs=epochs,
            input_size=input_size,
            seed=seed,
            progress=progress,
            n_val=n_val,
            backbone=backbone,
            batch_size=batch_size,
            lr=lr,
        )


def _train(
    out_dir: Path,
    *,
    n_train: int,
    epochs: int,
    input_size: int,
    seed: int,
    progress: Progress | None,
    n_val: int | None,
    backbone: str,
    batch_size: int,
    lr: float,
) -> Manifest:
    import timm
    import torch
    import torch.nn.functional as F

    from core.training.common import choose_device, export_onnx, seed_everything

    started = time.monotonic()
    report = progress or (lambda _stage, _fraction: None)
    out_dir = Path(out_dir)
    seed_everything(seed)
    device = choose_device("auto")
    vocab = synth_vocabulary()
    n_r = len(RATINGS)
    n_val = n_val if n_val is not None else min(200, max(8, n_train // 4))

    report("render", 0.0)
    train_seeds = range(TRAIN_SEED_BASE + seed * 100_000, TRAIN_SEED_BASE + seed * 100_000 + n_train)
    val_seeds = range(VAL_SEED_BASE + seed * 100_000, VAL_SEED_BASE + seed * 100_000 + n_val)
    train_x, train_y, train_r = render_set(train_seeds, input_size, vocab)
    val_x, val_y, _ = render_set(val_seeds, input_size, vocab)
    # uint8 RGB NCHW in memory; the float conversion happens per batch
    images = torch.from_numpy(np.ascontiguousarray(train_x[..., ::-1].transpose(0, 3, 1, 2)))
    del train_x
    labels = torch.from_numpy(train_y)
    rating_labels = torch.from_numpy(train_r)
    render_s = time.monotonic() - started
    report("render", 1.0)

    model = timm.create_model(backbone, pretrained=False, num_classes=n_r + len(vocab))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.02)
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    total = steps_per_epoch * epochs
    warmup = max(1, total // 15)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            if idx.numel() < 2 and n_train >= 2:  # BatchNorm needs two samples
                idx = order[-2:]
            x = ((_augment(images[idx], gen).to(device) - mean) / std).contiguous(
                memory_format=torch.channels_last
            )
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(
                logits[:, n_r:], labels[idx].to(device)
            ) + 0.1 * F.cross_entropy(logits[:, :n_r], rating_labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * idx.numel()
            seen += idx.numel()
        report(f"epoch {epoch + 1}/{epochs} loss {running / max(1, seen):.4f}", (epoch + 1) / epochs)
    train_s = time.monotonic() - started - render_s

    # export in the WD14 format, then measure the exported file itself on the held-out scenes
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    tags_path = out_dir / "selected_tags.csv"
    wrapper = _Wd14Wrapper.build(model.to(memory_format=torch.contiguous_format), n_r)
    export_onnx(
        wrapper,
        torch.full((1, input_size, input_size, 3), 255.0),
        onnx_path,
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    counts = labels.sum(0).long().tolist()
    rating_counts = torch.bincount(rating_labels, minlength=n_r).tolist()
    tag_defs = [TagDef(i, name, CATEGORY_RATING, rating_counts[i]) for i, name in enumerate(RATINGS)]
    tag_defs += [TagDef(n_r + i, name, CATEGORY_GENERAL, counts[i]) for i, name in enumerate(vocab)]
    write_selected_tags(tags_path, tag_defs)

    tagger = Wd14Tagger(onnx_path, tags_path, version="validation")
    probs = np.concatenate(
        [tagger._run(val_x[i : i + 64].astype(np.float32)) for i in range(0, len(val_x), 64)]
    )
    general_probs = probs[:, n_r:]
    threshold, macro = best_threshold(general_probs, val_y)
    per_tag = f1_scores(general_probs, val_y, threshold)
    rating_acc = float((probs[:, :n_r].argmax(1) == 0).mean())  # synthetic scenes are all rated "general"

    manifest = Manifest(
        slot="tagger",
        name=MODEL_NAME,
        format="wd14-onnx",
        files={"onnx": onnx_path.name, "tags": tags_path.name},
        sha256={onnx_path.name: file_sha256(onnx_path), tags_path.name: file_sha256(tags_path)},
        thresholds={"general": threshold, "character": 0.85},
        input_size=input_size,
        provenance=(
            f"trained here by core.training.tagger from scratch (timm {backbone}, pretrained=False) on {n_train} "
            f"synthetic scenes (core.synth seeds {train_seeds.start}..{train_seeds.stop - 1}), {epochs} epochs, "
            f"seed {seed}; general threshold chosen for macro-F1 on {n_val} held-out scenes"
        ),
        extra={
            "backbone": backbone,
            "macro_f1": round(macro, 4),
            "per_tag_f1": {
                t: (None if np.isnan(f) else round(float(f), 4)) for t, f in zip(vocab, per_tag, strict=True)
            },
            "rating_accuracy": round(rating_acc, 4),
            "val_scenes": n_val,
            "n_train": n_train,
            "input_size": input_size,
            "torch_threads": torch.get_num_threads(),
            "epochs": epochs,
            "render_s": round(render_s, 1),
            "train_s": round(train_s, 1),
            "total_s": round(time.monotonic() - started, 1),
        },
        folder=out_dir,
    )
    manifest.save()
    report("done", 1.0)
    return manifest
