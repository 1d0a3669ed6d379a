"""``/retrain identifier``: fine-tuning the active embedder on the kept reference crops, judged on a held-back split,
promoted with a re-embedded gallery, cancellable, and resumable across time slices."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.characters.gallery_versions import GalleryVersions
from core.characters.reference_crops import ReferenceCrops
from core.characters.starter_cast import Reference, enrol
from core.datasets.synth import CAST_BY_KEY, render_portrait
from core.learning.retrain.base import (
    Cancelled,
    NothingToLearn,
    RetrainInputs,
    SliceEnded,
    TrainingContext,
    TrainProgress,
    retrainer,
    work_dir,
)
from core.learning.retrain.identifier import (
    CHECKPOINT_FILE,
    METRIC,
    FineTuneOptions,
    ReferenceCrop,
    retrain_identifier,
    split_references,
)
from core.settings import Settings
from core.storage.kv import MemoryKV
from core.storage.shared_store import SharedStore
from core.storage.store import Store
from core.vision.slots.base import Manifest
from core.vision.slots.registry import MODELS_ANNOUNCE_KEY, active_manifest, load_slot

TAUGHT = ("aoi", "hikari", "rin", "momo", "akane", "mizu")
REFS_PER_CHARACTER = 4
# a tiny fine-tune: the behaviour under test is the job's, not the model's quality
FAST: dict[str, Any] = {
    "epochs": 2,
    "steps_per_epoch": 3,
    "batch_size": 24,
    "val_scenes": 24,
    "portraits_per_character": 2,
    "base_scenes": 6,
    "extra_identities": 24,
    "extra_renders": 2,
}


@dataclass
class Rig:
    settings: Settings
    store: Store
    shared: SharedStore
    kv: MemoryKV

    @property
    def inputs(self) -> RetrainInputs:
        return RetrainInputs(self.settings, self.store, self.shared, self.kv)

    def active(self) -> Manifest:
        manifest = active_manifest(self.settings.models_dir, "embedder")
        assert manifest is not None
        return manifest

    def context(
        self,
        job_id: str,
        reports: list[TrainProgress],
        *,
        options: dict[str, Any] | None = None,
        slice_s: float = 3600.0,
        cancel: Callable[[], bool] = lambda: False,
    ) -> TrainingContext:
        return TrainingContext(
            job_id=job_id,
            work_dir=work_dir(self.shared, job_id),
            report=reports.append,
            cancel_requested=cancel,
            slice_deadline=time.monotonic() + slice_s,
            options={**FAST, **(options or {})},
        )


def make_rig(built_models: Path, root: Path, *, teach: bool = True, **settings: Any) -> Rig:
    """A copy of the built embedder (promotion writes into the models folder), a fresh store and shared folder,
    and (``teach``) a few drawn characters enrolled with their crops kept, as /addcharacter leaves them."""
    models = root / "models"
    shutil.copytree(built_models / "models" / "embedder", models / "embedder")
    shutil.copy(built_models / "models" / "active.json", models / "active.json")
    values: dict[str, Any] = {
        "models_dir": models,
        "data_dir": root,
        "database_url": f"sqlite:///{root / 'anibot.db'}",
        "shared_dir": root / "shared",
        "train_threads": 1,  # predictable on a shared 2-core machine
        **settings,
    }
    rig = Rig(Settings(**values), Store(values["database_url"]), SharedStore(root / "shared"), MemoryKV())
    rig.store.create_all()
    if teach:
        embedder = load_slot(rig.active(), rig.settings)
        crops = ReferenceCrops(rig.shared)
        for i, key in enumerate(TAUGHT):
            spec = CAST_BY_KEY[key]
            refs = [
                Reference.from_image(render_portrait(key, 9_100_000 + 100 * i + k))
                for k in range(REFS_PER_CHARACTER)
            ]
            enrol(rig.store, embedder, spec.name, spec.series, refs)
            for ref in refs:
                crops.put(ref.sha256, ref.image)
    return rig


def installed_names(rig: Rig) -> set[str]:
    return {p.name for p in (rig.settings.models_dir / "embedder").iterdir()}


def training_reports(reports: list[TrainProgress]) -> list[TrainProgress]:
    return [r for r in reports if r.stage == "training"]


# --- no models needed ---------------------------------------------------------------------------------------


def _crop(name: str, n: int) -> ReferenceCrop:
    return ReferenceCrop((name, "S"), f"{n:064x}", Image.new("RGB", (8, 8)))


def test_split_holds_back_a_fifth_of_each_character_deterministically() -> None:
    refs = [_crop("a", i) for i in range(10)] + [_crop("b", 100 + i) for i in range(2)] + [_crop("c", 200)]
    split = split_references(refs)
    held = {key: sum(r.key == (key, "S") for r in split.queries) for key in "abc"}
    assert held == {"a": 2, "b": 1, "c": 0}  # 20 %, at least one, none of a single reference
    assert not split.query_shas & {r.sha for r in split.gallery}
    assert len(split.gallery) + len(split.queries) == len(refs)
    again = split_references(list(reversed(refs)))
    assert again.query_shas == split.query_shas


def test_unknown_options_fail_loudly_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        FineTuneOptions.from_options({"epoch": 3})
    assert FineTuneOptions.from_options({"learning_rate": "0.01", "epochs": "2"}).learning_rate == 0.01
    with pytest.raises(ValueError, match="out of range"):
        FineTuneOptions.from_options({"epochs": 0})


# --- with the built starter embedder ------------------------------------------------------------------------


def test_nothing_to_learn_without_references_or_with_a_frozen_embedder(
    built_models: Path, tmp_path: Path
) -> None:
    rig = make_rig(built_models, tmp_path, teach=False)
    with pytest.raises(NothingToLearn, match="No references"):
        retrain_identifier(rig.inputs, rig.context("job-empty", []))
    # an embedder without eager weights (e.g. a pulled ONNX model) cannot be fine-tuned
    manifest = rig.active()
    data = json.loads((manifest.folder / "manifest.json").read_text())
    data["files"].pop("torch")
    (manifest.folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(NothingToLearn, match="no eager weights"):
        retrain_identifier(rig.inputs, rig.context("job-frozen", []))


def test_retrain_promotes_a_model_that_does_not_regress(built_models: Path, tmp_path: Path) -> None:
    rig = make_rig(built_models, tmp_path, retrain_max_regression=0.05)
    old = rig.active()
    old_refs = rig.store.references(embedder=old.version)
    reports: list[TrainProgress] = []
    job = uuid.uuid4().hex
    assert retrainer("identifier") is retrain_identifier

    outcome = retrain_identifier(rig.inputs, rig.context(job, reports))

    epochs = training_reports(reports)
    assert [r.epoch for r in epochs] == [1, 2] and all(r.epochs == 2 for r in epochs)
    assert all(r.loss is not None and r.loss > 0 and r.eta_s is not None for r in epochs)
    assert {"preparing", "training", "evaluating", "promoting"} <= {r.stage for r in reports}
    assert outcome.metric == METRIC == "heldout_top1"
    assert 0.0 <= outcome.before <= 1.0 and 0.0 <= outcome.after <= 1.0
    assert outcome.after >= outcome.before - 0.05
    assert outcome.promoted, outcome.message
    assert outcome.model == f"{old.name}-r{job[:8]}"
    details = outcome.details
    assert details["references"] == len(TAUGHT) * REFS_PER_CHARACTER
    assert details["references_held_back"] == len(TAUGHT)  # 20 % of 4 rounds to 1 per character
    assert details["before"]["reference_queries"] == len(TAUGHT)

    new = rig.active()
    assert new.name == outcome.model and new.version != old.version
    assert new.extra["retrain"]["job"] == job and new.extra["retrain"]["from"] == old.version
    assert "identify" in new.thresholds and set(new.extra["calibration"]) == {"scale", "shift"}
    assert not list((rig.settings.models_dir / ".staging").glob("*"))  # nothing half-written left behind
    # every reference (the held-back ones too) is embedded by the new model, and its gallery is published
    new_refs = rig.store.references(embedder=new.version)
    assert {r.image_sha256 for r in new_refs} == {r.image_sha256 for r in old_refs}
    assert rig.store.references(embedder=old.version) == old_refs
    versions = GalleryVersions(rig.shared, rig.kv)
    current = versions.current(new.version)
    assert current is not None and versions.announced(new.version) == current
    assert len(versions.load(new.version, current)) == len(old_refs)
    assert rig.kv.get(MODELS_ANNOUNCE_KEY) is not None
    embedder = load_slot(new, rig.settings)  # the installed model loads and embeds
    assert embedder.embed([render_portrait("aoi", 1)]).shape == (1, int(old.extra["embedding_dim"]))


def test_retrain_that_regresses_is_rejected_and_installs_nothing(built_models: Path, tmp_path: Path) -> None:
    rig = make_rig(built_models, tmp_path)
    old = rig.active()
    before_names = installed_names(rig)
    old_refs = rig.store.references(embedder=old.version)

    outcome = retrain_identifier(rig.inputs, rig.context("job-bad", [], options={"learning_rate": 1000.0}))

    assert not outcome.promoted
    assert outcome.after < outcome.before - rig.settings.retrain_max_regression
    assert "regression" in outcome.message
    assert rig.active().version == old.version
    assert installed_names(rig) == before_names
    assert rig.store.references(embedder=old.version) == old_refs
    assert len(rig.store.references()) == len(old_refs)  # no references stored for any other embedder
    assert rig.kv.get(MODELS_ANNOUNCE_KEY) is None


def test_cancel_after_the_first_epoch_installs_nothing(built_models: Path, tmp_path: Path) -> None:
    rig = make_rig(built_models, tmp_path)
    old = rig.active()
    before_names = installed_names(rig)
    reports: list[TrainProgress] = []

    def cancel() -> bool:
        return any(r.stage == "training" for r in reports)

    with pytest.raises(Cancelled):
        retrain_identifier(
            rig.inputs, rig.context("job-cancel", reports, options={"epochs": 3}, cancel=cancel)
        )

    assert [r.epoch for r in training_reports(reports)] == [1]
    assert rig.active().version == old.version
    assert installed_names(rig) == before_names
    assert len(rig.store.references()) == len(TAUGHT) * REFS_PER_CHARACTER


def test_slice_end_checkpoints_and_the_continuation_resumes(built_models: Path, tmp_path: Path) -> None:
    import torch

    rig = make_rig(
        built_models, tmp_path, retrain_max_regression=1.0
    )  # the resume is under test, not quality
    job = "job-slices"
    first: list[TrainProgress] = []
    with pytest.raises(SliceEnded):
        retrain_identifier(rig.inputs, rig.context(job, first, options={"epochs": 3}, slice_s=-1.0))
    assert [r.epoch for r in training_reports(first)] == [1]
    checkpoint_path = work_dir(rig.shared, job) / CHECKPOINT_FILE
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and {"model", "optimizer", "head", "before"} <= set(checkpoint)
    assert "retrain" not in rig.active().extra  # nothing promoted yet

    second: list[TrainProgress] = []
    outcome = retrain_identifier(rig.inputs, rig.context(job, second, options={"epochs": 3}))
    assert [r.epoch for r in training_reports(second)] == [2, 3]
    assert outcome.details["resumed_from_epoch"] == 1
    assert outcome.before == checkpoint["before"][METRIC]  # measured once, before the first epoch
    assert outcome.promoted and rig.active().name == outcome.model

    # a redelivery of the finished job changes nothing and reports the same outcome
    again = retrain_identifier(rig.inputs, rig.context(job, []))
    assert again.model == outcome.model and again.after == outcome.after
