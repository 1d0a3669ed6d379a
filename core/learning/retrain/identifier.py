"""``/retrain identifier``: fine-tune the active embedder on the references admins taught, promote it if it is
not worse.

Data: every reference of the active embedder whose head crop is kept
(:class:`core.characters.reference_crops.ReferenceCrops`; label = the character's name and series) plus a small
rendering of the embedder's own base training data (the drawn cast less its holdout characters and generated
identities, and with ``Settings.faces_dir`` the real face set's train split), so the network keeps what it knew.

Held back, never trained on: of each character with two or more references about 20 % (at least one, chosen by a
hash of the image's sha256, so a redelivered job holds back the same ones) are queries against the other
references; and the synthetic validation renders of :func:`core.learning.starter.embedder.evaluate`. The metric
``heldout_top1`` is the mean of the two top-1 accuracies (the synthetic one alone when no character has two
references); the current model and the new one are both measured on the same split, through ONNX Runtime as
deployed.

Training: the starter's recipe (CosFace over identities x augmented views, AdamW, cosine schedule) started from
the current weights, the CosFace class weights imprinted with each identity's mean embedding. A checkpoint (model,
head, optimiser, epoch, the before-figures and the split) is written atomically to ``ctx.work_dir`` after every
epoch; a job that finds one resumes from it.

Promotion (``after >= before - Settings.retrain_max_regression``): the new ONNX embedder (with its ``model.pt``,
thresholds and calibration re-fitted as the starter does) is staged beside the installed models; every reference
crop is embedded with it and stored for its version, a gallery is published for it, and only then is it installed
and announced. A rejected model leaves the models folder and the store as they were.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.characters.gallery import Calibration, Gallery, GalleryItem
from core.characters.gallery_versions import GalleryVersions
from core.characters.reference_crops import ReferenceCrops
from core.datasets.synth import CAST, CAST_BY_KEY
from core.learning.retrain.base import (
    NothingToLearn,
    RetrainInputs,
    RetrainOutcome,
    SliceEnded,
    TrainingContext,
    TrainProgress,
)
from core.learning.retrain.common import retrained_name
from core.learning.retrain.promote import MODEL_STAGING, install_model, model_staging, verify
from core.learning.starter.common import torch_threads
from core.learning.starter.embedder import (
    DEFAULT_HOLDOUT,
    FORMAT,
    HeadSample,
    _shrink,
    augment,
    evaluate,
    evaluate_real,
    load_eager,
    random_identities,
    render_identity,
    render_training_set,
)
from core.settings import Settings
from core.storage.shared_store import SharedStore, file_sha256, write_atomic
from core.storage.store import Store
from core.vision.slots.base import Manifest
from core.vision.slots.embedder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OnnxEmbedder,
    pad_to_square,
    squaring,
    to_tensor,
)
from core.vision.slots.registry import active_manifest, announce_models, set_active

log = logging.getLogger(__name__)

TARGET = "identifier"
METRIC = "heldout_top1"
CHECKPOINT_FILE = "identifier-checkpoint.pt"
EXPORT_DIR = "identifier-export"
QUERY_SHARE = 0.2  # of each character's references held back as queries (at least one, when it has two)
REFERENCE_PICK = (
    0.7  # chance that a view of a taught character is drawn from its references, not base renders
)
COSFACE_SCALE = 16.0  # as the starter trains (core.learning.starter.embedder.train_starter_embedder)
COSFACE_MARGIN = 0.25
RAW = Calibration(scale=1.0, shift=0.0)

Key = tuple[str, str]  # (name, series) of a character


@dataclass(frozen=True)
class FineTuneOptions:
    """Per-job knobs (``ctx.options``); defaults fine-tune ~10 characters x 5 references in well under two
    minutes on 2 CPU cores."""

    epochs: int = 4
    steps_per_epoch: int = 25
    learning_rate: float = 3e-4
    seed: int = 0
    batch_size: int = 48  # identities x views
    views: int = 3
    val_scenes: int = 80  # synthetic validation scenes (held back; the threshold is fitted on them)
    portraits_per_character: int = 8  # base data: drawn cast portraits per character
    base_scenes: int = 30  # base data: scenes whose cast heads are cropped
    extra_identities: int = 100  # base data: generated identities (at most as many as the starter had)
    extra_renders: int = 4

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> FineTuneOptions:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(known)}"
                raise ValueError(f"unknown identifier retraining option {key!r}{hint}")
            kind = float if isinstance(getattr(cls, key), float) else int
            values[key] = kind(value)
        made = cls(**values)
        if made.epochs < 1 or made.steps_per_epoch < 1 or made.learning_rate <= 0 or made.views < 2:
            raise ValueError(f"identifier retraining options out of range: {made}")
        return made

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ReferenceCrop:
    key: Key
    sha: str
    image: Image.Image


@dataclass(frozen=True)
class Split:
    gallery: list[ReferenceCrop]  # trained on, and the gallery the queries search
    queries: list[ReferenceCrop]  # held back: never trained on

    @property
    def query_shas(self) -> set[str]:
        return {r.sha for r in self.queries}


# --- the held-back split ------------------------------------------------------------------------------------


def _rank(sha: str) -> str:
    return hashlib.sha256(f"anibot-heldout:{sha}".encode()).hexdigest()


def split_references(references: Sequence[ReferenceCrop], query_share: float = QUERY_SHARE) -> Split:
    """Per character with two or more references, ``query_share`` of them (at least one, never all) become
    queries, chosen by a hash of their sha256: the same references give the same split on every machine."""
    by_key: dict[Key, list[ReferenceCrop]] = {}
    for ref in references:
        by_key.setdefault(ref.key, []).append(ref)
    gallery: list[ReferenceCrop] = []
    queries: list[ReferenceCrop] = []
    for key in sorted(by_key):
        refs = sorted(by_key[key], key=lambda r: _rank(r.sha))
        n_queries = min(len(refs) - 1, max(1, round(query_share * len(refs)))) if len(refs) >= 2 else 0
        queries += refs[:n_queries]
        gallery += refs[n_queries:]
    held = {r.sha for r in queries}  # an image taught for two characters is held back for both
    return Split([r for r in gallery if r.sha not in held], queries)


# --- evaluation ---------------------------------------------------------------------------------------------


class _Finite:
    """An embedder whose non-finite outputs (a diverged model) become zero vectors, so evaluation never fails."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.version = embedder.version
        self.dim = embedder.dim

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        return np.nan_to_num(self.embedder.embed(crops), nan=0.0, posinf=0.0, neginf=0.0)


def reference_searches(embedder: Any, split: Split) -> dict[str, Any]:
    """Top-1 of the held-back reference queries against the other references (None without queries)."""
    if not split.queries or not split.gallery:
        return {"top1": None, "n_queries": len(split.queries)}
    items = [GalleryItem(r.key[0], r.key[1], r.sha) for r in split.gallery]
    gallery = Gallery(embedder.embed([r.image for r in split.gallery]), items, version="heldout")
    found = gallery.identify(
        embedder.embed([r.image for r in split.queries]), top_n=1, threshold=-2.0, calibration=RAW
    )
    right = [
        (f.candidates[0].name, f.candidates[0].series) == r.key
        for f, r in zip(found, split.queries, strict=True)
    ]
    return {"top1": float(np.mean(right)), "n_queries": len(split.queries)}


def measure(
    embedder: Any,
    split: Split,
    *,
    holdout: Sequence[str],
    val_scenes: int,
    real: tuple[Any, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Every held-back figure of one embedder; ``heldout_top1`` is the one promotion compares. Also returns the
    threshold and calibration fitted as the starter fits them (synthetic validation, plus real faces if any)."""
    embedder = _Finite(embedder)
    refs = reference_searches(embedder, split)
    figures: dict[str, Any] = {}
    also_fit_on = None
    if real is not None:
        splits, unseen = real
        real_figures = evaluate_real(embedder, splits, unseen=unseen)
        also_fit_on = tuple(real_figures.pop(k) for k in ("_known_sims", "_known_right", "_unknown_sims"))
        figures.update(real_figures)
    synthetic = evaluate(embedder, holdout=holdout, n_scenes=val_scenes, also_fit_on=also_fit_on)
    n_all, n_holdout = synthetic["n_queries"], synthetic["n_unknown_queries"]
    base_top1 = (
        synthetic["top1"] * (n_all - n_holdout) + synthetic["fewshot_top1_holdout"] * n_holdout
    ) / max(1, n_all)
    figures.update({k: v for k, v in synthetic.items() if k not in ("threshold", "calibration")})
    parts = [base_top1] + ([refs["top1"]] if refs["top1"] is not None else [])
    figures.update(
        {
            METRIC: float(np.mean(parts)),
            "references_top1": refs["top1"],
            "reference_queries": refs["n_queries"],
            "base_top1": float(base_top1),
        }
    )
    figures["threshold"] = float(synthetic["threshold"])
    figures["calibration"] = synthetic["calibration"]
    return figures


def _public(figures: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly figures (no fitted threshold objects), rounded."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if key in ("threshold", "calibration") or key.startswith("_"):
            continue
        out[key] = round(float(value), 4) if isinstance(value, (float, np.floating)) else value
    return out


# --- data ---------------------------------------------------------------------------------------------------


def load_references(inputs: RetrainInputs, embedder_version: str) -> tuple[list[ReferenceCrop], int]:
    """The references of ``embedder_version`` whose crops are kept, and how many have no crop."""
    crops = ReferenceCrops(inputs.shared)
    found: list[ReferenceCrop] = []
    missing = 0
    for info in inputs.store.references(embedder=embedder_version):
        try:
            image = crops.get(info.image_sha256)
        except (FileNotFoundError, ValueError):
            missing += 1
            continue
        found.append(ReferenceCrop((info.name, info.series), info.image_sha256, image))
    return found, missing


@dataclass
class TrainingData:
    samples: list[HeadSample]
    by_label: dict[int, list[HeadSample]]
    reference_samples: dict[int, list[HeadSample]]
    reference_labels: list[int]  # identities with admin references
    named_labels: list[int]  # drawn cast and real characters without references
    extra_labels: list[int]  # generated identities
    n_classes: int


def _real_faces(settings: Settings, manifest: Manifest) -> tuple[Any, list[str]] | None:
    if settings.faces_dir is None:
        return None
    from core.datasets.real_faces import DEFAULT_UNSEEN, load_face_splits

    splits = load_face_splits(Path(settings.faces_dir), seed=0)
    unseen = list(manifest.extra.get("real_unseen") or [n for n in DEFAULT_UNSEEN if n in splits.labels])
    return splits, unseen


def build_training_data(
    split: Split,
    manifest: Manifest,
    opts: FineTuneOptions,
    real: tuple[Any, list[str]] | None,
) -> TrainingData:
    """The trained-on references plus a small rendering of the embedder's base training data, one label per
    identity (a taught drawn-cast or real character shares its label with its base renders)."""
    from core.datasets.real_faces import display_name, load_images

    input_size = int(manifest.input_size or 80)
    store_size = max(64, int(input_size * 1.6))
    holdout = list(manifest.extra.get("holdout", DEFAULT_HOLDOUT))
    label_of: dict[Key, int] = {}

    def label(key: Key) -> int:
        return label_of.setdefault(key, len(label_of))

    samples: list[HeadSample] = []
    reference_samples: dict[int, list[HeadSample]] = {}
    for ref in split.gallery:
        image, box = _shrink(
            ref.image, (0.0, 0.0, float(ref.image.width), float(ref.image.height)), store_size
        )
        sample = HeadSample(image, box, label(ref.key), True)
        samples.append(sample)
        reference_samples.setdefault(sample.label, []).append(sample)
    train_keys = [c.key for c in CAST if c.key not in holdout]
    cast = render_training_set(
        train_keys,
        seed=opts.seed,
        n_scenes=opts.base_scenes,
        portraits_per_character=opts.portraits_per_character,
        store_size=store_size,
    )
    cast_labels = [label((CAST_BY_KEY[k].name, CAST_BY_KEY[k].series)) for k in train_keys]
    for sample in cast:
        samples.append(HeadSample(sample.image, sample.box, cast_labels[sample.label], sample.portrait))
    named = set(cast_labels)
    if real is not None:
        splits, unseen = real
        trained = set(
            manifest.extra.get("real_characters_trained") or [n for n in splits.labels if n not in unseen]
        )
        items = [i for i in splits.train if i.label in trained]
        for item, image in zip(items, load_images(items, longest=store_size), strict=True):
            y = label(display_name(item.label))
            named.add(y)
            samples.append(HeadSample(image, (0.0, 0.0, float(image.width), float(image.height)), y, True))
    n_extra = min(opts.extra_identities, int(manifest.extra.get("extra_identities", opts.extra_identities)))
    extra_labels = []
    for i, spec in enumerate(random_identities(n_extra, seed=opts.seed)):
        y = label((spec.key, "\0generated"))
        extra_labels.append(y)
        samples += render_identity(
            spec,
            y,
            seed=opts.seed * 100_000 + i,
            n_portraits=opts.extra_renders // 2,
            n_heads=opts.extra_renders - opts.extra_renders // 2,
            store_size=store_size,
        )
    by_label: dict[int, list[HeadSample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    reference_labels = sorted(reference_samples)
    return TrainingData(
        samples=samples,
        by_label=by_label,
        reference_samples=reference_samples,
        reference_labels=reference_labels,
        named_labels=sorted(named - set(reference_labels)),
        extra_labels=extra_labels,
        n_classes=len(label_of),
    )


def _batch_labels(data: TrainingData, per_batch: int, rng: random.Random) -> list[int]:
    """Half the identities of a batch from the taught characters, a quarter from the base's named characters,
    the rest generated identities (and whatever is left when one group runs short)."""
    chosen = rng.sample(data.reference_labels, min(len(data.reference_labels), max(1, per_batch // 2)))
    for pool, share in ((data.named_labels, 0.5), (data.extra_labels, 1.0), (data.named_labels, 1.0)):
        rest = [y for y in pool if y not in chosen]
        want = min(len(rest), math.ceil((per_batch - len(chosen)) * share))
        chosen += rng.sample(rest, want)
    return chosen[:per_batch]


# --- checkpoints --------------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over rather than fail the job forever
        log.warning("identifier checkpoint %s unreadable: starting over", path, exc_info=True)
        return None


# --- the entry point ----------------------------------------------------------------------------------------


def _fine_tunable(manifest: Manifest | None) -> Manifest:
    if manifest is None:
        raise NothingToLearn(
            "No embedder is installed (run `anibot models build`): there is nothing to retrain."
        )
    missing = [k for k in ("backbone", "embedding_dim") if k not in manifest.extra]
    if manifest.format != FORMAT or "torch" not in manifest.files or "onnx" not in manifest.files or missing:
        raise NothingToLearn(
            f"The active embedder {manifest.name} ({manifest.format}) has no eager weights anibot can fine-tune; "
            "only embedders built by `anibot models build` (or retrained from one) can be retrained."
        )
    return manifest


def _model_name(base: str, job_id: str, models_dir: Path) -> str:
    """``<base>-r<short job id>`` (as every retrainer names its model), made unique among the installed ones."""
    name = retrained_name(base, job_id)
    taken = models_dir / "embedder"
    suffix = 2
    candidate = name
    while (taken / candidate).exists() and _job_of(taken / candidate) != job_id:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    return candidate


def _job_of(folder: Path) -> str | None:
    try:
        return Manifest.load(folder).extra.get("retrain", {}).get("job")
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _outcome_of(manifest: Manifest, promoted: bool) -> RetrainOutcome:
    info = manifest.extra.get("retrain", {})
    return RetrainOutcome(
        target=TARGET,
        promoted=promoted,
        metric=METRIC,
        before=float(info.get("before", 0.0)),
        after=float(info.get("after", 0.0)),
        model=manifest.name,
        details=dict(info.get("details", {})),
    )


def retrain_identifier(inputs: RetrainInputs, ctx: TrainingContext) -> RetrainOutcome:
    """Fine-tune the active embedder on the enrolled references; promote it (with a re-embedded gallery) unless
    its held-back top-1 regresses by more than ``Settings.retrain_max_regression``."""
    import torch

    started = time.perf_counter()
    settings = inputs.settings
    opts = FineTuneOptions.from_options(dict(ctx.options))
    manifest = _fine_tunable(active_manifest(settings.models_dir, "embedder"))
    if manifest.extra.get("retrain", {}).get("job") == ctx.job_id:  # a redelivery after this job promoted
        log.info("job %s: %s is already installed and active", ctx.job_id, manifest.name)
        return _outcome_of(manifest, promoted=True)
    logp = f"retrain identifier job {ctx.job_id} ({manifest.version})"
    ctx.progress(TrainProgress(stage="preparing", fraction=0.0))

    references, missing = load_references(inputs, manifest.version)
    if missing:
        # a new embedder must embed every reference again: without the crop, its character would be forgotten
        raise NothingToLearn(
            f"{missing} references of {manifest.name} have no kept head crop (they were enrolled before crops "
            "were stored), so a retrained embedder would forget them: teach those characters again (or rebuild "
            "the starter gallery with `anibot models build --force`), then retrain. Nothing was changed."
        )
    if not references:
        raise NothingToLearn(
            f"No references are enrolled for the embedder {manifest.name}: teach characters first (/addcharacter)."
        )
    checkpoint_path = ctx.work_dir / CHECKPOINT_FILE
    checkpoint = _load_checkpoint(checkpoint_path)
    if checkpoint is not None and checkpoint.get("base_version") != manifest.version:
        log.warning(
            "%s: checkpoint is of %s, not the active embedder: starting over",
            logp,
            checkpoint.get("base_version"),
        )
        checkpoint = None
    if checkpoint is not None:
        opts = FineTuneOptions(**checkpoint["options"])  # the run continues as it began
        used = set(checkpoint["references"])
        references = [r for r in references if r.sha in used]
        held = set(checkpoint["queries"])
        split = Split([r for r in references if r.sha not in held], [r for r in references if r.sha in held])
    else:
        split = split_references(references)
    holdout = list(manifest.extra.get("holdout", DEFAULT_HOLDOUT))
    real = _real_faces(settings, manifest)  # with Settings.faces_dir: trained on and measured, as the starter
    n_characters = len({r.key for r in references})
    log.info(
        "%s: %d references of %d characters (%d held back, %d without a kept crop)%s",
        logp,
        len(references),
        n_characters,
        len(split.queries),
        missing,
        f"; resuming after epoch {checkpoint['epoch']}" if checkpoint else "",
    )

    threads = settings.train_threads or os.cpu_count() or 1
    onnx_threads = settings.onnx_threads
    with torch_threads(threads):
        if checkpoint is not None:
            before = dict(checkpoint["before"])
        else:
            ctx.progress(TrainProgress(stage="evaluating", fraction=0.03))
            current = OnnxEmbedder.from_manifest(manifest, settings)
            before = _public(measure(current, split, holdout=holdout, val_scenes=opts.val_scenes, real=real))
            log.info("%s: before %s %.4f", logp, METRIC, before[METRIC])
        ctx.progress(TrainProgress(stage="preparing", fraction=0.08))
        data = build_training_data(split, manifest, opts, real)
        model, head, optimiser, first_epoch, losses = _prepare_model(torch, manifest, data, opts, checkpoint)
        train_s = _train(
            torch,
            ctx,
            model,
            head,
            optimiser,
            data,
            opts,
            manifest,
            first_epoch=first_epoch,
            losses=losses,
            before=before,
            split=split,
            checkpoint_path=checkpoint_path,
        )

        ctx.progress(TrainProgress(stage="evaluating", fraction=0.86, epoch=opts.epochs, epochs=opts.epochs))
        export = ctx.work_dir / EXPORT_DIR
        onnx_path = _export(torch, model, manifest, export)
        candidate = OnnxEmbedder(
            onnx_path,
            version="retrain-candidate",
            input_size=manifest.input_size,
            mean=manifest.extra.get("mean", IMAGENET_MEAN),
            std=manifest.extra.get("std", IMAGENET_STD),
            threads=onnx_threads,
            resize=squaring(manifest),
        )
        after_full = measure(candidate, split, holdout=holdout, val_scenes=opts.val_scenes, real=real)
    after = _public(after_full)
    promoted = after[METRIC] >= before[METRIC] - settings.retrain_max_regression
    name = _model_name(manifest.name, ctx.job_id, settings.models_dir)
    finite = all(math.isfinite(v) for v in losses) if losses else True
    details = {
        "before": before,
        "after": after,
        "references": len(references),
        "characters": n_characters,
        "references_trained": len(split.gallery),
        "references_held_back": len(split.queries),
        "references_without_crop": missing,
        "train_crops": len(data.samples),
        "identities": data.n_classes,
        "epochs": opts.epochs,
        "steps": opts.epochs * opts.steps_per_epoch,
        "learning_rate": opts.learning_rate,
        "final_loss": round(float(np.mean(losses[-opts.steps_per_epoch :])), 4) if losses else None,
        "loss_finite": finite,
        "resumed_from_epoch": int(checkpoint["epoch"]) if checkpoint else 0,
        "train_seconds": round(train_s, 1),
        "max_regression": settings.retrain_max_regression,
        "replaces": manifest.version,
    }
    log.info(
        "%s: %s %.4f -> %.4f (%s)",
        logp,
        METRIC,
        before[METRIC],
        after[METRIC],
        "promoting" if promoted else "rejected: regression",
    )
    if not promoted:
        shutil.rmtree(export, ignore_errors=True)
        details["wall_seconds"] = round(time.perf_counter() - started, 1)
        return RetrainOutcome(
            TARGET, False, METRIC, before[METRIC], after[METRIC], model=name, details=details
        )

    ctx.progress(TrainProgress(stage="promoting", fraction=0.93))
    installed = _promote(inputs, ctx, manifest, name, export, after_full, details, started)
    shutil.rmtree(export, ignore_errors=True)
    log.info("%s: promoted %s (%.1f s)", logp, installed.version, time.perf_counter() - started)
    return _outcome_of(installed, promoted=True)


def _prepare_model(
    torch: Any,
    manifest: Manifest,
    data: TrainingData,
    opts: FineTuneOptions,
    checkpoint: dict[str, Any] | None,
):  # type: ignore[no-untyped-def]
    """The network (current weights, or the checkpoint's), the CosFace head (imprinted, or the checkpoint's) and
    the optimiser."""
    model = load_eager(manifest)
    dim = int(manifest.extra["embedding_dim"])
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        weight = torch.nn.Parameter(checkpoint["head"].clone())
    else:
        weight = torch.nn.Parameter(
            _imprint(torch, model, data, dim, int(manifest.input_size or 80), manifest)
        )
    params = [{"params": model.parameters(), "weight_decay": 5e-4}, {"params": [weight], "weight_decay": 0.0}]
    optimiser = torch.optim.AdamW(params, lr=opts.learning_rate)
    first_epoch, losses = 0, []
    if checkpoint is not None:
        optimiser.load_state_dict(checkpoint["optimizer"])
        first_epoch = int(checkpoint["epoch"])
        losses = [float(v) for v in checkpoint["losses"]]
    return model, weight, optimiser, first_epoch, losses


def _mean_std(manifest: Manifest) -> tuple[Sequence[float], Sequence[float]]:
    return manifest.extra.get("mean", IMAGENET_MEAN), manifest.extra.get("std", IMAGENET_STD)


def _imprint(torch: Any, model: Any, data: TrainingData, dim: int, size: int, manifest: Manifest):  # type: ignore[no-untyped-def]
    """CosFace class weights = each identity's mean embedding by the current model (a few plain crops each), so
    fine-tuning starts from a head that already agrees with the embedding instead of a random one."""
    mean, std = _mean_std(manifest)
    rows, owners = [], []
    for y in range(data.n_classes):
        pool = data.reference_samples.get(y) or data.by_label.get(y, [])
        for sample in pool[:3]:
            crop = sample.image.crop(tuple(round(v) for v in sample.box))
            rows.append(to_tensor(pad_to_square(crop), size, mean, std))
            owners.append(y)
    weight = torch.zeros(data.n_classes, dim)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            emb = model(torch.from_numpy(np.stack(rows[start : start + 64])))
            weight.index_add_(0, torch.tensor(owners[start : start + 64]), emb)
    model.train()
    return torch.nn.functional.normalize(weight, dim=1)


def _train(
    torch: Any,
    ctx: TrainingContext,
    model: Any,
    head: Any,
    optimiser: Any,
    data: TrainingData,
    opts: FineTuneOptions,
    manifest: Manifest,
    *,
    first_epoch: int,
    losses: list[float],
    before: dict[str, Any],
    split: Split,
    checkpoint_path: Path,
) -> float:
    """Epochs ``first_epoch + 1 .. opts.epochs``: a checkpoint and a progress report after each; ``SliceEnded``
    when the slice is over and epochs remain. Returns the seconds spent."""
    import torch.nn.functional as F

    size = int(manifest.input_size or 80)
    mean, std = _mean_std(manifest)
    per_batch = max(2, opts.batch_size // opts.views)
    total = opts.epochs * opts.steps_per_epoch
    warmup = max(1, total // 10)
    started = time.perf_counter()
    model.train()
    for epoch in range(first_epoch, opts.epochs):
        # each epoch draws from its own seed: a resumed run sees the batches an uninterrupted one would
        rng = random.Random(opts.seed * 1_000_003 + epoch)
        torch.manual_seed(opts.seed * 1_000_003 + epoch)
        for step_in_epoch in range(opts.steps_per_epoch):
            step = epoch * opts.steps_per_epoch + step_in_epoch
            factor = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in optimiser.param_groups:
                group["lr"] = opts.learning_rate * factor
            labels = _batch_labels(data, per_batch, rng)
            ys = [y for y in labels for _ in range(opts.views)]
            views = []
            for y in ys:
                refs = data.reference_samples.get(y)
                pool = refs if refs and rng.random() < REFERENCE_PICK else data.by_label[y]
                views.append(to_tensor(augment(rng.choice(pool), size, rng), size, mean, std))
            x = torch.from_numpy(np.stack(views))
            y = torch.tensor(ys)
            emb = model(x)
            cos = emb @ F.normalize(head, dim=1).T
            logits = COSFACE_SCALE * (cos - COSFACE_MARGIN * F.one_hot(y, data.n_classes))
            loss = F.cross_entropy(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.item()))
        done = epoch + 1
        _save_checkpoint(
            checkpoint_path,
            {
                "base_version": manifest.version,
                "epoch": done,
                "model": model.state_dict(),
                "head": head.detach().clone(),
                "optimizer": optimiser.state_dict(),
                "losses": losses,
                "before": before,
                "options": opts.as_dict(),
                "references": sorted({r.sha for r in split.gallery} | split.query_shas),
                "queries": sorted(split.query_shas),
            },
        )
        elapsed = time.perf_counter() - started
        epoch_loss = float(np.mean(losses[-opts.steps_per_epoch :]))
        log.info(
            "retrain identifier job %s: epoch %d/%d loss %.4f", ctx.job_id, done, opts.epochs, epoch_loss
        )
        ctx.progress(
            TrainProgress(
                stage="training",
                fraction=0.1 + 0.75 * done / opts.epochs,
                epoch=done,
                epochs=opts.epochs,
                loss=round(epoch_loss, 4),
                eta_s=round(elapsed / (done - first_epoch) * (opts.epochs - done), 1),
            )
        )
        if done < opts.epochs and ctx.slice_over():
            raise SliceEnded(f"{ctx.job_id}: checkpoint after epoch {done}/{opts.epochs}")
    model.eval()
    return time.perf_counter() - started


def _export(torch: Any, model: Any, manifest: Manifest, folder: Path) -> Path:
    """The ONNX graph and ``model.pt`` of the fine-tuned network, under the current model's file names."""
    from core.learning.starter.common import export_onnx

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    size = int(manifest.input_size or 80)
    onnx_path = export_onnx(
        model,
        torch.zeros(1, 3, size, size),
        folder / manifest.files["onnx"],
        output_names=("embedding",),
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
    )
    torch.save(model.state_dict(), folder / manifest.files["torch"])
    return onnx_path


def _promote(
    inputs: RetrainInputs,
    ctx: TrainingContext,
    manifest: Manifest,
    name: str,
    export: Path,
    after: dict[str, Any],
    details: dict[str, Any],
    started: float,
) -> Manifest:
    """Stage the new embedder, embed every reference with it, publish its gallery, then install it."""
    settings = inputs.settings
    target = settings.models_dir / "embedder" / name
    if target.exists():  # this job installed it and died before activating it: finish the job
        installed = Manifest.load(target)
        verify(installed, target)
        set_active(settings.models_dir, "embedder", name)
        announce_models(inputs.kv)
        return installed
    SharedStore(settings.models_dir).remove_stale_staging(MODEL_STAGING)
    with model_staging(settings.models_dir) as staged:
        files = {}
        for role, file_name in manifest.files.items():
            if role in ("onnx", "torch"):
                shutil.copyfile(export / file_name, staged / file_name)
                files[role] = file_name
        calibration: Calibration = after["calibration"]
        public = _public(after)
        details = {**details, "wall_seconds": round(time.perf_counter() - started, 1)}
        extra = {
            **manifest.extra,
            **{k: v for k, v in public.items() if k in manifest.extra},
            "calibration": calibration.to_dict(),
            "retrain": {
                "job": ctx.job_id,
                "from": manifest.version,
                "metric": METRIC,
                "before": details["before"][METRIC],
                "after": public[METRIC],
                "details": details,
            },
        }
        new = Manifest(
            slot="embedder",
            name=name,
            format=manifest.format,
            files=files,
            sha256={f: file_sha256(staged / f) for f in files.values()},
            thresholds={**manifest.thresholds, "identify": round(float(after["threshold"]), 6)},
            input_size=manifest.input_size,
            provenance=(
                f"{manifest.name} ({manifest.version}) fine-tuned by retraining job {ctx.job_id} on "
                f"{details['references_trained']} references of {details['characters']} characters plus its "
                f"base training data ({details['steps']} AdamW steps, lr {details['learning_rate']:g}); "
                f"{METRIC} {details['before'][METRIC]:.3f} -> {public[METRIC]:.3f}. Before: {manifest.provenance}"
            ),
            extra=extra,
            folder=staged,
        )
        new.save()
        verify(new, staged)
        # every reference with a kept crop, held-back ones and any taught since the job began included
        references, _ = load_references(inputs, manifest.version)
        _embed_references(inputs.store, new, settings, references)
        GalleryVersions(inputs.shared, inputs.kv, keep=settings.gallery_keep_versions).publish(
            inputs.store, new.version
        )
        install_model(settings.models_dir, staged, inputs.kv)
    return Manifest.load(target)


def _embed_references(
    store: Store, manifest: Manifest, settings: Settings, references: list[ReferenceCrop]
) -> int:
    embedder = OnnxEmbedder.from_manifest(manifest, settings)
    added = 0
    ids: dict[Key, int] = {}
    for start in range(0, len(references), 64):
        part = references[start : start + 64]
        vectors = embedder.embed([r.image for r in part])
        for ref, vector in zip(part, vectors, strict=True):
            if ref.key not in ids:
                ids[ref.key] = store.add_character(*ref.key)
            added += store.add_reference(ids[ref.key], ref.sha, manifest.version, vector)
    log.info("embedded %d references (%d new) with %s", len(references), added, manifest.version)
    return added
