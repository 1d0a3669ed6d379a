"""``anibot models build``: train every starter model here, offline, and install it in the models folder.

Builders take the real data they accept, by parameter name: ``faces_dir`` (``Settings.faces_dir``), ``faces_dirs``
(it and ``Settings.more_faces_dirs``) and ``pictures_dir`` (``Settings.pictures_dir``, pictures with boxes).
Each builder trains through the project's own code and writes the same formats the community's models ship in
(YOLO ONNX, an ONNX embedder, a WD14 tagger, a Hugging Face ``from_pretrained`` captioner), so one loading path
serves both. The embedder build also enrols the synthetic cast in the character gallery.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.vision.slots.base import Manifest
from core.vision.slots.registry import BUILTIN, active_manifest, load_slot, set_active

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]

# slot -> "module:function(out_dir, *, seed, progress, **budget) -> Manifest"
BUILDERS: dict[str, str] = {
    "detector": "core.learning.starter.lite_detector:train_lite_detector",
    "embedder": "core.learning.starter.embedder:train_starter_embedder",
    "tagger": "core.learning.starter.tagger:train_starter_tagger",
    "captioner": "core.learning.starter.captioner:train_starter_captioner",
}
# tiny budgets: a few steps each, for tests of the build path (models are not expected to be good)
SMOKE_BUDGETS: dict[str, dict[str, Any]] = {
    "detector": {"steps": 2, "batch": 2, "imgsz": 96, "export_size": 128, "n_synthetic": 6},
    "embedder": {"epochs": 1, "steps_per_epoch": 2, "input_size": 32},
    "tagger": {"n_train": 8, "epochs": 1, "input_size": 64},
    "captioner": {
        "n_train": 8,
        "warmup_steps": 2,
        "epochs": 1,
        "image_size": 32,
        "batch_size": 4,
        "n_val": 2,
    },
}


def _builder(slot: str) -> Callable[..., Manifest]:
    module, _, name = BUILDERS[slot].partition(":")
    return getattr(importlib.import_module(module), name)


def missing_slots(settings: Settings) -> list[str]:
    """Buildable slots with no installed model (a built-in fallback, like the template captioner, counts as none)."""
    return [
        slot for slot in BUILDERS if active_manifest(settings.models_dir, slot) in (None, BUILTIN.get(slot))
    ]


def real_data_options(settings: Settings, builder: Callable[..., Manifest]) -> dict[str, Any]:
    """The real data of ``settings`` that ``builder`` takes, by its parameter names."""
    accepted = inspect.signature(builder).parameters
    faces = [d for d in (settings.faces_dir, *settings.more_faces_dirs) if d is not None]
    offered: dict[str, Any] = {
        "faces_dir": settings.faces_dir,
        "faces_dirs": faces or None,
        "pictures_dir": settings.pictures_dir,
    }
    options = {k: v for k, v in offered.items() if k in accepted and v is not None}
    if "faces_dirs" in options:
        options.pop("faces_dir", None)  # the list holds it
    return options


def build_slot(
    settings: Settings,
    slot: str,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    budget: dict[str, Any] | None = None,
) -> Manifest:
    """Train the starter model of ``slot`` and install it as the slot's active model."""
    with tempfile.TemporaryDirectory(prefix=f"anibot-build-{slot}-") as tmp:
        staging = Path(tmp) / "model"
        builder = _builder(slot)
        options = {**real_data_options(settings, builder), **(budget or {})}
        manifest = builder(staging, seed=seed, progress=progress, **options)
        target = settings.models_dir / slot / manifest.name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, target)
    set_active(settings.models_dir, slot, manifest.name)
    installed = Manifest.load(target)
    log.info("installed %s model %s", slot, installed.version)
    if slot == "embedder":
        enrol_cast(settings, installed)
    return installed


def enrol_cast(settings: Settings, manifest: Manifest) -> int:
    """Enrol the synthetic cast for this embedder (and, with ``Settings.faces_dir`` and ``more_faces_dirs``, each face
    set's characters from 5 training images each), cropping heads with the installed detector when there is one."""
    from core.characters.starter_cast import enrol_face_set, enrol_synthetic_cast
    from core.storage.store import Store

    store = Store.from_settings(settings)
    store.create_all()
    detector_manifest = active_manifest(settings.models_dir, "detector")
    detector = load_slot(detector_manifest, settings) if detector_manifest else None
    embedder = load_slot(manifest, settings)
    from core.characters.gallery_versions import GalleryVersions
    from core.characters.reference_crops import ReferenceCrops
    from core.storage.shared_store import SharedStore

    crops = ReferenceCrops(SharedStore(settings.shared_path))  # kept: a retrained embedder re-embeds them
    total = enrol_synthetic_cast(store, embedder, detector=detector, crops=crops)
    for faces_dir in (settings.faces_dir, *settings.more_faces_dirs):
        if faces_dir is not None:
            total += enrol_face_set(store, embedder, faces_dir, detector=detector, crops=crops)
    # the gallery workers serve: a version in the shared folder (Redis is not needed to build models)
    GalleryVersions(SharedStore(settings.shared_path), keep=settings.gallery_keep_versions).publish(
        store, embedder.version
    )
    return total
