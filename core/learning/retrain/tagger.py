"""``/retrain tagger``: fine-tune the active starter tagger on fresh synthetic tagged scenes (plus the taught
references whose character has a known look), and promote it only if its held-back macro-F1 does not regress.

- Base data: fresh synthetic scenes (seeds apart from the starter's training, validation and evaluation seeds),
  labelled exactly by core.datasets.synth; with ``Settings.faces_dir``, also the face set's train split with each
  character's canonical look, as the starter trained.
- Taught data: a reference crop carries a character, not tags. The sound part of that label is the character's
  canonical look when it has one: the synthetic cast's specs (core.datasets.synth.CAST) and the face set's characters
  (core.datasets.real_faces.CANONICAL_LOOKS, matched by display name and series). Those crops join the training set as
  single-head pictures with weak labels (only the tag families the look names are supervised; the rest are masked
  out), the same treatment the starter gives real faces. References of other characters are not used.
  The held-back fifth of the references (see :func:`core.learning.retrain.detector.split_references`) is never
  trained on.
- Held-back split: the fixed scenes of :func:`core.evaluation.tagging.evaluate_synthetic` (seeds 800,000,000..),
  measured through the slot loader's public ``tag()`` with each model's own threshold; macro-F1 compared. The new
  model's general threshold is chosen on the starter's validation scenes (900,000,000..), never on the held-back ones.
- Fine-tuning starts from the active model's eager weights (``files["torch"]``, see
  :func:`core.learning.starter.tagger.load_eager`); a tagger without them (a pulled WD14 model) raises
  :class:`NothingToLearn`. The new model is a WD14 folder like the current one (ONNX, selected_tags.csv, torch).
- Checkpoints: weights, optimizer, scheduler and augmentation generator after every epoch, atomically, in the
  work folder; a continuation re-renders the same scenes and goes on from the next epoch.

Measured on 2 CPU cores while another training job shared them (the embedder build), from a weak tagger (400 scenes,
3 epochs: macro-F1 0.52), 1000 scenes x 3 epochs, 150 held-back scenes: 261 s in all (render + training 250 s,
threshold choice and evaluation 9 s), held-back macro-F1 0.505 -> 0.640. Hence the default of 600 scenes (about
2.5 minutes on shared cores, well under one on idle ones: the starter trains 14,000 samples in about 70 s).
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.characters.danbooru import from_tag, same_character
from core.learning.retrain.base import (
    NothingToLearn,
    RetrainInputs,
    RetrainOutcome,
    TrainingContext,
)
from core.learning.retrain.common import (
    STATE_FILE,
    base_manifest,
    finish,
    job_options,
    promote,
    read_json,
    report_epoch,
    retrained_name,
    split_references,
    stage_progress,
    stored_outcome,
    write_json,
)
from core.learning.starter.common import export_onnx, seed_everything, torch_threads, training_threads
from core.learning.starter.tagger import (
    RATINGS,
    VAL_SEED_BASE,
    SceneSet,
    augment,
    best_threshold,
    cell_targets,
    character_tags,
    concat_sets,
    load_eager,
    render_real_faces,
    render_set,
    synth_vocabulary,
    weakly_known,
)
from core.settings import Settings
from core.storage.shared_store import file_sha256, write_atomic
from core.storage.store import ReferenceInfo
from core.vision.slots.base import Manifest
from core.vision.slots.registry import load_slot
from core.vision.slots.tagger import (
    CATEGORY_CHARACTER,
    CATEGORY_GENERAL,
    Wd14Tagger,
    read_selected_tags,
    wd14_preprocess,
)

log = logging.getLogger(__name__)

TARGET = "tagger"
RETRAIN_SEED_BASE = (
    1_500_000_000  # apart from training (1e9 + seed * 1e6), validation (9e8) and evaluation (8e8)
)
DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "learning_rate": 0.003,  # an eighth of the starter's peak: fine-tuning
    "seed": None,  # None: derived from the job id
    "n_train": 600,
    "n_val": 100,  # threshold choice
    "n_heldout": 150,  # comparison
    "batch_size": 32,
}
CHECKPOINT = "checkpoint.pt"


def _reference_looks() -> dict[tuple[str, str], tuple[str, ...]]:
    """(name, series) -> canonical look tags, for the characters whose look is known."""
    from core.datasets.real_faces import CANONICAL_LOOKS, DISPLAY
    from core.datasets.synth import CAST

    looks = {DISPLAY[label]: look for label, look in CANONICAL_LOOKS.items() if label in DISPLAY}
    looks.update({(spec.name, spec.series): spec.tags for spec in CAST})
    return looks


def reference_set(
    refs: list[tuple[ReferenceInfo, Image.Image]], size: int, vocab: list[str]
) -> tuple[SceneSet, int]:
    """The reference crops of characters with a known look as single-head pictures with weak labels (only the
    families the look names are known), and how many there were."""
    looks = _reference_looks()
    index = {t: i for i, t in enumerate(vocab)}
    characters = vocabulary_characters(vocab)
    character_cols = [index[t] for t in characters]
    chosen = [(r, image, looks[(r.name, r.series)]) for r, image in refs if (r.name, r.series) in looks]
    out = SceneSet.empty(len(chosen), size, len(vocab), known=False)
    for row, (ref, image, look) in enumerate(chosen):
        out.images[row] = wd14_preprocess(image, size)[0]
        positives = [index[t] for t in look if t in index]
        named = [t for t in characters if same_character(*from_tag(t).pair, ref.name, ref.series)]
        positives += [index[t] for t in named[:1]]  # the taught character's own tag, when the tagger has one
        out.tags[row, positives] = 1.0
        w, h = image.size
        f = size / max(w, h)
        dx, dy = (max(w, h) - w) / 2 * f, (max(w, h) - h) / 2 * f
        out.boxes[row, 0] = (dx, dy, dx + w * f, dy + h * f)
        out.head_tags[row, 0, positives] = 1.0
        out.valid[row, 0] = True
        out.known[row] = weakly_known(vocab, look)
        out.known[row, character_cols] = True
    return out, len(chosen)


def vocabulary_characters(vocab: list[str]) -> list[str]:
    """The character tags of a starter tagger's vocabulary: whatever follows the synthetic general tags."""
    return [t for t in vocab if t not in set(synth_vocabulary())]


def _check_trainable(base: Manifest) -> tuple[list[str], dict[str, Any]]:
    spec = base.extra.get("net")
    if (
        base.format != "wd14-onnx"
        or "torch" not in base.files
        or not spec
        or not base.path("torch").is_file()
    ):
        raise NothingToLearn(
            f"the active tagger {base.name} has no trainable weights (a starter tagger's model.pt): it can only be "
            "replaced (`anibot models build tagger` trains one that can be retrained)"
        )
    rows = read_selected_tags(base.path("tags"))
    vocab = [t.name for t in rows if t.category == CATEGORY_GENERAL]
    if vocab != synth_vocabulary():
        raise NothingToLearn(
            f"the tagger {base.name} was trained on another tag vocabulary than core.datasets.synth renders now: "
            "build a new starter tagger instead of retraining it"
        )
    # the general tags, then the character tags (starter taggers before character tags had none)
    return vocab + [t.name for t in rows if t.category == CATEGORY_CHARACTER], spec


def _save_checkpoint(path: Path, epoch: int, net: Any, optimizer: Any, scheduler: Any, gen: Any) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "epoch": epoch,
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": gen.get_state(),
        },
        buffer,
    )
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint of :func:`_save_checkpoint`, read with ``weights_only=True``: tensors and plain data only, so
    a file planted in the shared folder cannot run code in the worker. None (start over) when unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torn, foreign or carrying objects: start over rather than fail or trust it
        log.warning("tagger checkpoint %s unreadable: starting over", path, exc_info=True)
        return None


def _train(
    ctx: TrainingContext,
    work: Path,
    state: dict[str, Any],
    model: Any,
    train: SceneSet,
    vocab: list[str],
) -> None:
    """Fine-tune ``model.net`` in place on ``train``, from the checkpoint when there is one."""
    net = model.net
    per_girl = character_tags() | set(vocabulary_characters(vocab))
    cell_idx = [i for i, t in enumerate(vocab) if t in per_girl]
    pooled_idx = [i for i, t in enumerate(vocab) if t not in per_girl]
    n_r, batch_size, epochs = len(RATINGS), state["batch_size"], state["epochs"]
    images = torch.from_numpy(np.ascontiguousarray(train.images[..., ::-1].transpose(0, 3, 1, 2)))
    tags, ratings = torch.from_numpy(train.tags), torch.from_numpy(train.ratings)
    boxes, valid = torch.from_numpy(train.boxes), torch.from_numpy(train.valid)
    head_tags = torch.from_numpy(train.head_tags[..., cell_idx])
    known = torch.from_numpy(train.known).float()
    n = len(images)
    optimizer = torch.optim.AdamW(net.parameters(), lr=state["learning_rate"], weight_decay=0.02)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    gen = torch.Generator().manual_seed(state["seed"])
    checkpoint = work / CHECKPOINT
    saved = _load_checkpoint(checkpoint) if state["epochs_done"] > 0 and checkpoint.is_file() else None
    if saved is None:
        state["epochs_done"] = 0
    else:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        state["epochs_done"] = int(saved["epoch"])
    mean = model.mean / 255.0
    std = model.std / 255.0
    stride, grid = 16, train.images.shape[1] // 16
    started, first_epoch = time.monotonic(), state["epochs_done"]
    for epoch in range(state["epochs_done"], epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs two pictures
                idx = torch.cat([idx, order[:1]]) if n > 1 else idx.repeat(2)
            x, b = augment(images[idx], gen, boxes[idx])
            target, weight = cell_targets(b, head_tags[idx], valid[idx], grid, stride)
            cells, pooled = net((x - mean) / std)
            known_cell = known[idx][:, cell_idx]
            dense = F.binary_cross_entropy_with_logits(
                cells, target, weight * known_cell[..., None, None], reduction="sum"
            ) / (len(idx) * len(cell_idx))
            mil = F.binary_cross_entropy_with_logits(
                cells.flatten(2).amax(2), tags[idx][:, cell_idx], known_cell
            )
            whole = F.binary_cross_entropy_with_logits(
                pooled[:, n_r : n_r + len(pooled_idx)], tags[idx][:, pooled_idx], known[idx][:, pooled_idx]
            )
            loss = dense + mil + whole + 0.1 * F.cross_entropy(pooled[:, :n_r], ratings[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        done = epoch + 1
        _save_checkpoint(checkpoint, done, net, optimizer, scheduler, gen)
        state["epochs_done"] = done
        write_json(work / STATE_FILE, state)
        loss_value = running / max(1, seen)
        report_epoch(
            ctx,
            TARGET,
            done,
            epochs,
            started=started,
            first_epoch=first_epoch,
            loss=loss_value if math.isfinite(loss_value) else None,
            fraction_from=0.1,
            fraction_span=0.75,
        )


def _export(model: Any, base: Manifest, folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(
        model,
        torch.full((1, size, size, 3), 255.0),
        folder / base.files["onnx"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    torch.save(model.state_dict(), folder / base.files["torch"])
    (folder / base.files["tags"]).write_bytes(base.path("tags").read_bytes())


def _macro_f1(manifest: Manifest, settings: Settings, n: int) -> tuple[float, dict[str, float]]:
    from core.evaluation.tagging import evaluate_synthetic

    report = evaluate_synthetic(load_slot(manifest, settings), n)
    macro = report.macro_f1 if math.isfinite(report.macro_f1) else 0.0
    return round(macro, 4), {t: round(f, 4) for t, f in report.per_tag_f1.items()}


def retrain_tagger(inputs: RetrainInputs, ctx: TrainingContext) -> RetrainOutcome:
    settings, work = inputs.settings, Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    done = stored_outcome(work)
    if done is not None:
        return done
    state = read_json(work / STATE_FILE)
    base = base_manifest(inputs, state, TARGET)
    vocab, spec = _check_trainable(base)
    stage_progress(ctx, "preparing", 0.0)
    if state is None:
        opts = job_options(ctx, DEFAULTS)
        state = {
            "target": TARGET,
            "base_model": base.name,
            **{k: opts[k] for k in DEFAULTS},
            "input_size": int(base.input_size or 160),
            "epochs_done": 0,
            "trained": False,
            "train_s": 0.0,
        }
        write_json(work / STATE_FILE, state)
    size, first = state["input_size"], RETRAIN_SEED_BASE + state["seed"] * 100_000
    candidate_dir = work / "candidate"
    with torch_threads(training_threads()):
        seed_everything(state["seed"])
        model = load_eager(base)
        train_refs, held_refs = split_references(inputs)
        if not state["trained"]:
            started = time.monotonic()
            train = render_set(range(first, first + state["n_train"]), size, vocab)
            taught, n_taught = reference_set(train_refs, size, vocab)
            if n_taught:
                train = concat_sets(train, taught)
            if settings.faces_dir is not None:
                from core.datasets.real_faces import load_face_splits, load_images

                splits = load_face_splits(Path(settings.faces_dir), seed=0)
                labels = [i.label for i in splits.train]
                train = concat_sets(
                    train,
                    render_real_faces(
                        load_images(splits.train), labels, size, vocab, vocabulary_characters(vocab)
                    ),
                )
            state["n_taught"] = n_taught
            stage_progress(ctx, "preparing", 0.1)
            try:
                _train(ctx, work, state, model, train, vocab)
            finally:
                state["train_s"] = round(state["train_s"] + time.monotonic() - started, 1)
                write_json(work / STATE_FILE, state)
            _export(model, base, candidate_dir, size)
            state["trained"] = True
            write_json(work / STATE_FILE, state)
        elif not (
            candidate_dir / base.files["onnx"]
        ).is_file():  # trained, export lost: redo it from the weights
            saved = torch.load(work / CHECKPOINT, map_location="cpu", weights_only=False)
            model.net.load_state_dict(saved["net"])
            _export(model, base, candidate_dir, size)

    stage_progress(ctx, "evaluating", 0.85)
    eval_started = time.monotonic()
    n_r = len(RATINGS)
    unsized = Wd14Tagger(
        candidate_dir / base.files["onnx"], candidate_dir / base.files["tags"], version="candidate"
    )
    val = render_set(range(VAL_SEED_BASE, VAL_SEED_BASE + state["n_val"]), size, vocab)
    val_x = val.images.astype(np.float32)
    probs = np.concatenate([unsized._run(val_x[i : i + 50]) for i in range(0, len(val_x), 50)])
    threshold, _ = best_threshold(np.nan_to_num(probs[:, n_r:], nan=0.0), val.tags)
    name = retrained_name(base.name, ctx.job_id)
    candidate = replace(
        base,
        name=name,
        thresholds={**base.thresholds, "general": threshold},
        sha256={f: file_sha256(candidate_dir / f) for f in base.files.values()},
        folder=candidate_dir,
    )
    before, before_tags = _macro_f1(base, settings, state["n_heldout"])
    after, after_tags = _macro_f1(candidate, settings, state["n_heldout"])
    eval_s = round(time.monotonic() - eval_started, 1)
    promoted = before - after <= settings.retrain_max_regression + 1e-9
    details = {
        "base_model": base.name,
        "heldout_scenes": state["n_heldout"],
        "per_tag_f1_before": before_tags,
        "per_tag_f1_after": after_tags,
        "threshold_before": base.thresholds.get("general"),
        "threshold_after": threshold,
        "n_train_scenes": state["n_train"],
        "reference_crops_used": state.get("n_taught", 0),
        "reference_crops_heldout": len(held_refs),
        "real_faces": str(settings.faces_dir) if settings.faces_dir else None,
        "epochs": state["epochs"],
        "learning_rate": state["learning_rate"],
        "seed": state["seed"],
        "input_size": size,
        "train_s": state["train_s"],
        "eval_s": eval_s,
        "max_regression": settings.retrain_max_regression,
    }
    if promoted:
        stage_progress(ctx, "promoting", 0.95)
        manifest = replace(
            candidate,
            provenance=(
                f"fine-tuned from {base.name} by /retrain tagger (job {ctx.job_id}): {state['epochs']} epochs at lr "
                f"{state['learning_rate']} on {state['n_train']} synthetic scenes (core.datasets.synth seeds {first}.."
                f"{first + state['n_train'] - 1}) and {state.get('n_taught', 0)} taught reference crops weakly "
                f"labelled with their character's canonical look; held-back macro-F1 {before:.3f} -> {after:.3f}"
            ),
            extra={
                **base.extra,
                "net": spec,
                "macro_f1": after,
                "heldout_macro_f1_before": before,
                "retrained_from": base.name,
                "retrain_job": ctx.job_id,
                "epochs": state["epochs"],
                "n_train": state["n_train"],
                "reference_crops": state.get("n_taught", 0),
                "seed": state["seed"],
                "train_s": state["train_s"],
            },
        )
        promote(settings, inputs.kv, manifest, {role: candidate_dir / f for role, f in base.files.items()})
    return finish(
        work,
        RetrainOutcome(
            target=TARGET,
            promoted=promoted,
            metric="macro-F1",
            before=before,
            after=after,
            model=name,
            details=details,
        ),
    )
