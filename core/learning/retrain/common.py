"""What the detector and tagger retrainers share: job options, state and outcome files in the job's work folder,
the model a job fine-tunes, the retrained model's name, promotion, the per-epoch report, and the held-back split of
taught crops."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from core.characters.reference_crops import ReferenceCrops
from core.learning.retrain.base import (
    NothingToLearn,
    RetrainInputs,
    RetrainOutcome,
    SliceEnded,
    TrainingContext,
    TrainProgress,
)
from core.learning.retrain.promote import install_model, model_staging
from core.settings import Settings
from core.storage.kv import KeyValue
from core.storage.shared_store import file_sha256, write_atomic
from core.storage.store import ReferenceInfo
from core.vision.slots.base import Manifest
from core.vision.slots.registry import active_manifest

log = logging.getLogger(__name__)

HELDOUT_EVERY = 5  # one reference crop in five (by sha256) is held back for evaluation
MAX_CROPS = 500  # reference crops used per retrain at most (a deterministic sample)
STATE_FILE = "state.json"
OUTCOME_FILE = "outcome.json"


def job_options(ctx: TrainingContext, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``ctx.options``; an unknown key fails loudly, with a suggestion."""
    for key in ctx.options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown retraining option {key!r}{hint}; options: {', '.join(defaults)}")
    merged = {**defaults, **ctx.options}
    if merged.get("seed") is None:
        merged["seed"] = int(hashlib.sha256(ctx.job_id.encode()).hexdigest()[:6], 16) % 10_000
    for key in ("epochs", "seed", "n_train", "n_heldout", "n_val"):
        if key in merged:
            merged[key] = int(merged[key])
    if merged["epochs"] < 1:
        raise ValueError("epochs must be at least 1")
    merged["learning_rate"] = float(merged["learning_rate"])
    return merged


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def copy_atomic(source: Path, target: Path) -> None:
    write_atomic(target, Path(source).read_bytes())


def retrained_name(base: str, job_id: str) -> str:
    """``<base>-r<short job id>``; a previous retrain's suffix is replaced, not stacked."""
    short = re.sub(r"[^0-9a-zA-Z]", "", job_id)[:8] or "job"
    return f"{re.sub(r'-r[0-9a-zA-Z]{1,8}$', '', base)}-r{short}"


def base_manifest(inputs: RetrainInputs, state: dict[str, Any] | None, slot: str) -> Manifest:
    """The model this job fine-tunes: the one recorded in its state (a continuation), else the active one."""
    current = active_manifest(inputs.settings.models_dir, slot)
    if state is not None:
        folder = inputs.settings.models_dir / slot / state["base_model"]
        if current is None or current.name != state["base_model"]:
            log.warning(
                "the active %s changed during job; still comparing with %s", slot, state["base_model"]
            )
        return Manifest.load(folder)
    if current is None:
        raise NothingToLearn(f"no {slot} model is installed: build or pull one first")
    return current


def promote(settings: Settings, kv: KeyValue | None, manifest: Manifest, files: dict[str, Path]) -> Manifest:
    """Install ``manifest`` with ``files`` (role -> source path) as the active model of its slot, all or nothing."""
    target = settings.models_dir / manifest.slot / manifest.name
    if target.exists():  # a redelivered job that had installed it already
        return Manifest.load(target)
    with model_staging(settings.models_dir) as staged:
        for role, source in files.items():
            shutil.copyfile(source, staged / manifest.files[role])
        sha = {name: file_sha256(staged / name) for name in manifest.files.values()}
        replace(manifest, sha256=sha, folder=staged).save()
        return install_model(settings.models_dir, staged, kv)


def stage_progress(ctx: TrainingContext, stage: str, fraction: float) -> None:
    ctx.progress(TrainProgress(stage=stage, fraction=round(fraction, 4)))


def report_epoch(
    ctx: TrainingContext,
    target: str,
    done: int,
    epochs: int,
    *,
    started: float,
    first_epoch: int,
    loss: float | None,
    fraction_from: float = 0.05,
    fraction_span: float = 0.8,
) -> None:
    """Report epoch ``done`` of ``epochs`` (``loss`` rounded, None for none): the job's fraction
    ``fraction_from + fraction_span * done / epochs`` and the ETA from the epochs this run trained since
    ``first_epoch`` (``started`` a ``time.monotonic()``); raise :class:`SliceEnded` when the slice is over and epochs
    remain (the caller saved its checkpoint first)."""
    per_epoch = (time.monotonic() - started) / max(1, done - first_epoch)
    ctx.progress(
        TrainProgress(
            stage="training",
            fraction=round(fraction_from + fraction_span * done / epochs, 4),
            epoch=done,
            epochs=epochs,
            loss=round(loss, 4) if loss is not None else None,
            eta_s=round(per_epoch * (epochs - done), 1),
        )
    )
    if done < epochs and ctx.slice_over():
        raise SliceEnded(f"{target} retraining paused after epoch {done}/{epochs}")


def finish(work: Path, outcome: RetrainOutcome) -> RetrainOutcome:
    write_json(work / OUTCOME_FILE, outcome.to_dict())
    return outcome


def stored_outcome(work: Path) -> RetrainOutcome | None:
    data = read_json(work / OUTCOME_FILE)
    if data is None:
        return None
    data.pop("message", None)
    return RetrainOutcome(**data)


def split_references(
    inputs: RetrainInputs, limit: int = MAX_CROPS
) -> tuple[list[tuple[ReferenceInfo, Image.Image]], list[tuple[ReferenceInfo, Image.Image]]]:
    """(train, held back) taught reference crops, each with its reference. Held back: one in :data:`HELDOUT_EVERY`
    by sha256 (at least one when there are two or more). References whose crop was never stored are skipped."""
    crops = ReferenceCrops(inputs.shared)
    refs = [r for r in inputs.store.references() if crops.exists(r.image_sha256)]
    refs.sort(key=lambda r: hashlib.sha256(r.image_sha256.encode()).hexdigest())
    refs = refs[:limit]
    held = [r for r in refs if int(r.image_sha256[:8], 16) % HELDOUT_EVERY == 0]
    if len(refs) >= 2 and not held:
        held = [refs[0]]
    if refs and len(held) == len(refs):
        held = held[:-1]
    held_shas = {r.image_sha256 for r in held}
    train = [(r, crops.get(r.image_sha256)) for r in refs if r.image_sha256 not in held_shas]
    heldout = [(r, crops.get(r.image_sha256)) for r in held]
    return train, heldout
