"""/retrain detector and /retrain tagger on the built starter models: tiny budgets, real training code paths."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.characters.reference_crops import ReferenceCrops
from core.datasets.synth import CAST, render_portrait, render_scene
from core.learning.retrain.base import (
    Cancelled,
    NothingToLearn,
    RetrainInputs,
    SliceEnded,
    TrainingContext,
    TrainProgress,
    retrainer,
)
from core.settings import Settings
from core.storage.kv import MemoryKV
from core.storage.shared_store import SharedStore
from core.storage.store import Store
from core.vision.slots.registry import active_manifest, load_slot, read_active

DETECTOR_BUDGET = {"n_train": 12, "n_heldout": 6}
TAGGER_BUDGET = {"n_train": 48, "n_val": 16, "n_heldout": 16}


@pytest.fixture
def env(built_models: Path, tmp_path: Path) -> dict[str, Any]:
    """A writable copy of the built models, a store with taught reference crops of four characters."""
    shutil.copytree(built_models / "models", tmp_path / "models")

    def inputs(**overrides: Any) -> RetrainInputs:
        settings = Settings(
            models_dir=tmp_path / "models",
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'anibot.db'}",
            **overrides,
        )
        store = Store.from_settings(settings)
        store.create_all()
        return RetrainInputs(
            settings=settings, store=store, shared=SharedStore(settings.shared_path), kv=MemoryKV()
        )

    first = inputs()
    crops = ReferenceCrops(first.shared)
    for i, spec in enumerate(CAST[:4]):
        character = first.store.add_character(spec.name, spec.series)
        for k in range(3):
            crop = render_portrait(spec.key, 900 + 10 * i + k)
            sha = hashlib.sha256(crop.tobytes()).hexdigest()
            crops.put(sha, crop)
            first.store.add_reference(character, sha, "test-embedder", np.ones(4, np.float32))
    return {"inputs": inputs, "root": tmp_path}


def context(
    root: Path,
    options: dict[str, Any],
    *,
    job_id: str = "job0001abc",
    deadline_s: float = 1e9,
    cancel_on: str | None = None,
) -> tuple[TrainingContext, list[TrainProgress]]:
    seen: list[TrainProgress] = []
    ctx = TrainingContext(
        job_id=job_id,
        work_dir=root / "training" / job_id,
        report=seen.append,
        cancel_requested=lambda: cancel_on is not None and any(p.stage == cancel_on for p in seen),
        slice_deadline=time.monotonic() + deadline_s,
        options=options,
    )
    return ctx, seen


def installed_names(models: Path, slot: str) -> set[str]:
    return {p.name for p in (models / slot).iterdir() if p.is_dir()}


@pytest.mark.parametrize("target", ["detector", "tagger"])
def test_slice_resume_promote(env: dict[str, Any], target: str) -> None:
    inputs = env["inputs"](retrain_max_regression=0.5)  # promotion is what is tested here, not quality
    models = inputs.settings.models_dir
    before = active_manifest(models, target)
    budget = DETECTOR_BUDGET if target == "detector" else TAGGER_BUDGET
    retrain = retrainer(target)

    ctx, seen = context(env["root"], {**budget, "epochs": 2, "seed": 1}, deadline_s=-1)
    with pytest.raises(SliceEnded):
        retrain(inputs, ctx)
    assert (ctx.work_dir / "checkpoint.pt").is_file()
    assert json.loads((ctx.work_dir / "state.json").read_text())["epochs_done"] == 1
    assert [p.epoch for p in seen if p.stage == "training"] == [1]
    assert active_manifest(models, target).name == before.name

    ctx2, seen2 = context(env["root"], {**budget, "epochs": 2, "seed": 1})
    outcome = retrain(inputs, ctx2)
    assert [p.epoch for p in seen2 if p.stage == "training"] == [2]  # resumed: epoch 1 was not trained again
    assert outcome.promoted, outcome.to_dict()
    assert outcome.model == f"{before.name}-rjob0001a"
    assert outcome.details["reference_crops_heldout"] >= 1
    active = active_manifest(models, target)
    assert active.name == outcome.model and active.format == before.format
    assert active.extra["retrained_from"] == before.name
    model = load_slot(active, inputs.settings)
    scene = render_scene(12_345)
    if target == "detector":
        assert model.detect(scene.image)
    else:
        assert any(t.category == "rating" for t in model.tag(scene.image))
    assert (
        retrain(inputs, ctx2) == outcome
    )  # a redelivered job answers from its outcome, installs nothing new


@pytest.mark.parametrize("target", ["detector", "tagger"])
def test_rejected_by_heldout_metric(env: dict[str, Any], target: str) -> None:
    inputs = env["inputs"]()
    models = inputs.settings.models_dir
    active, names = read_active(models), installed_names(models, target)
    budget = DETECTOR_BUDGET if target == "detector" else TAGGER_BUDGET
    lr = 0.5 if target == "detector" else 50.0  # wrecks the weights in a few steps
    ctx, _ = context(env["root"], {**budget, "epochs": 1, "learning_rate": lr})
    outcome = retrainer(target)(inputs, ctx)
    assert not outcome.promoted and outcome.after < outcome.before, outcome.to_dict()
    assert read_active(models) == active and installed_names(models, target) == names


@pytest.mark.parametrize("target", ["detector", "tagger"])
def test_cancel_installs_nothing(env: dict[str, Any], target: str) -> None:
    inputs = env["inputs"]()
    models = inputs.settings.models_dir
    active, names = read_active(models), installed_names(models, target)
    budget = DETECTOR_BUDGET if target == "detector" else TAGGER_BUDGET
    ctx, _ = context(env["root"], {**budget, "epochs": 2}, cancel_on="training")
    with pytest.raises(Cancelled):
        retrainer(target)(inputs, ctx)
    assert read_active(models) == active and installed_names(models, target) == names


def test_untrainable_models_and_unknown_options(env: dict[str, Any]) -> None:
    inputs = env["inputs"]()
    folder = active_manifest(inputs.settings.models_dir, "detector").folder
    manifest = json.loads((folder / "manifest.json").read_text())
    for role in ("pt", "torch"):  # the YOLO starter's ultralytics weights, the Lite0 starter's torch weights
        manifest["files"].pop(role, None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NothingToLearn, match="no trainable"):
        retrainer("detector")(inputs, context(env["root"], {})[0])
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        retrainer("tagger")(inputs, context(env["root"], {"epoch": 1}, job_id="job2")[0])


class Planted:
    """What an attacker with write access to the shared folder would put in a checkpoint: code run on load."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (shutil.rmtree, ("/nonexistent-anibot-planted",))


def test_tagger_checkpoints_load_weights_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Checkpoints sit in the shared folder: loaded with ``weights_only=True`` (tensors and plain data), a file
    carrying objects is refused and training starts over, instead of unpickling arbitrary code."""
    import torch

    from core.learning.retrain.tagger import _load_checkpoint, _save_checkpoint

    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    gen = torch.Generator().manual_seed(3)
    path = tmp_path / "checkpoint.pt"
    _save_checkpoint(path, 4, net, optimizer, scheduler, gen)
    saved = _load_checkpoint(path)
    assert saved is not None and saved["epoch"] == 4
    assert torch.equal(saved["net"]["weight"], net.state_dict()["weight"])
    assert torch.equal(saved["generator"], gen.get_state())

    torch.save({"epoch": 1, "net": Planted()}, path)
    calls: list[str] = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(shutil, "rmtree", lambda *a, **k: calls.append("ran"))  # what loading would have run
    try:
        assert _load_checkpoint(path) is None
    finally:
        monkey.undo()
    assert calls == []  # nothing of the planted file ran
    assert any("unreadable: starting over" in r.getMessage() for r in caplog.records)


def test_report_epoch_fraction_eta_and_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-epoch report the detector's two loops and the tagger's share: the job's fraction, the rounded loss,
    the ETA from the epochs this run trained, and SliceEnded only while epochs remain."""
    from core.learning.retrain import common

    ctx, seen = context(tmp_path, {})
    over, _ = context(tmp_path, {}, deadline_s=-1)
    start = time.monotonic()
    now = [start + 10.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    common.report_epoch(ctx, "detector", 2, 5, started=start, first_epoch=1, loss=0.123456)
    now[0] = start + 30.0
    common.report_epoch(
        ctx, "tagger", 3, 4, started=start, first_epoch=1, loss=None, fraction_from=0.1, fraction_span=0.75
    )
    assert seen == [
        TrainProgress(stage="training", fraction=0.37, epoch=2, epochs=5, loss=0.1235, eta_s=30.0),
        TrainProgress(stage="training", fraction=0.6625, epoch=3, epochs=4, loss=None, eta_s=15.0),
    ]
    with pytest.raises(SliceEnded, match="detector retraining paused after epoch 2/3"):
        common.report_epoch(over, "detector", 2, 3, started=start, first_epoch=0, loss=1.0)
    common.report_epoch(over, "detector", 3, 3, started=start, first_epoch=0, loss=1.0)  # the last: no slice
