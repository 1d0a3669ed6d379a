"""What every retraining target shares: progress and cancellation, time slices, the outcome, the registry.

A retraining target is a function ``(RetrainInputs, TrainingContext) -> RetrainOutcome`` registered by name in
:data:`RETRAINERS`. It must

- call ``ctx.progress(...)`` at least once per epoch (it raises :class:`Cancelled` when ``/jobs cancel`` asked);
- keep its state in ``ctx.work_dir`` (the shared folder, per job) and, when ``ctx.slice_over()`` after an epoch,
  save a checkpoint there and raise :class:`SliceEnded`: the task queues its own continuation, which resumes
  from the checkpoint (a redelivery after a worker died resumes from the last checkpoint the same way);
- evaluate the current and the new model on the same held-back split, and promote (through
  :func:`core.learning.retrain.promote.install_model`) only when the new one does not regress by more than
  ``inputs.settings.retrain_max_regression``; a model is installed complete or not at all.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.storage.kv import KeyValue
from core.storage.shared_store import SharedStore
from core.storage.store import Store

# target -> "module:function"; imported lazily (torch is only imported by the worker that trains)
RETRAINERS: dict[str, str] = {
    "identifier": "core.learning.retrain.identifier:retrain_identifier",
    "detector": "core.learning.retrain.detector:retrain_detector",
    "tagger": "core.learning.retrain.tagger:retrain_tagger",
}
TRAINING_DIR = "training"


class Cancelled(Exception):
    """An admin cancelled the job; nothing was promoted."""


class SliceEnded(Exception):
    """The task's time slice is over; a checkpoint is saved and a continuation must be queued."""


class NothingToLearn(Exception):
    """Not enough data to retrain (the message says what is missing; safe to show an admin)."""


@dataclass(frozen=True)
class TrainProgress:
    stage: str  # "preparing", "training", "evaluating", "promoting"
    fraction: float  # of the whole job, 0..1
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    eta_s: float | None = None

    def as_detail(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class TrainingContext:
    job_id: str
    work_dir: Path  # per job, in the shared folder: checkpoints survive a worker restart
    report: Callable[[TrainProgress], None]
    cancel_requested: Callable[[], bool]
    slice_deadline: float  # time.monotonic() after which the task should checkpoint and hand over
    options: dict[str, Any] = field(default_factory=dict)  # per-job knobs (epochs, learning rate, seed)

    def progress(self, progress: TrainProgress) -> None:
        self.report(progress)
        if self.cancel_requested():
            raise Cancelled(self.job_id)

    def slice_over(self) -> bool:
        return time.monotonic() > self.slice_deadline


@dataclass(frozen=True)
class RetrainInputs:
    settings: Settings
    store: Store
    shared: SharedStore
    kv: KeyValue


@dataclass(frozen=True)
class RetrainOutcome:
    target: str
    promoted: bool
    metric: str  # name of the held-back metric compared
    before: float
    after: float
    model: str | None = None  # name of the promoted (or rejected) model
    details: dict[str, Any] = field(default_factory=dict)  # other figures, before and after

    @property
    def message(self) -> str:
        figures = f"{self.metric} {self.before:.3f} → {self.after:.3f}"
        if self.promoted:
            return f"Retrained the {self.target}: {figures}. Promoted {self.model}."
        return f"Retrained the {self.target}, but {figures} is a regression: kept the current model."

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "promoted": self.promoted,
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "model": self.model,
            "details": self.details,
            "message": self.message,
        }


def retrainer(target: str) -> Callable[[RetrainInputs, TrainingContext], RetrainOutcome]:
    try:
        dotted = RETRAINERS[target]
    except KeyError:
        raise ValueError(f"unknown retraining target {target!r}; targets: {', '.join(RETRAINERS)}") from None
    module_name, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def work_dir(shared: SharedStore, job_id: str) -> Path:
    folder = shared.path(TRAINING_DIR, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
