"""Installing a retrained model: complete or not at all, then announced to every worker.

The model is written to a staging folder beside the installed ones; its files are checked against the sha256
digests its manifest lists, the folder is renamed into place, ``active.json`` is replaced atomically, and the
change is announced through Redis (each worker reloads its models before its next job). A process killed at any
point leaves the previous model active; a staged folder that never got renamed is never read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.storage.kv import KeyValue
from core.storage.shared_store import SharedStore, file_sha256
from core.vision.slots.base import Manifest
from core.vision.slots.registry import announce_models, set_active

log = logging.getLogger(__name__)


class IncompleteModel(RuntimeError):
    """A staged model whose files are missing or differ from its manifest: never installed."""


MODEL_STAGING = ".staging"


def model_staging(models_dir: Path):  # type: ignore[no-untyped-def]
    """A context manager giving a fresh folder (outside every slot's folder) to write a model in."""
    return SharedStore(models_dir).staging(MODEL_STAGING)


def verify(manifest: Manifest, folder: Path) -> None:
    for role, name in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise IncompleteModel(f"{manifest.name}: {role} file {name} is missing")
        expected = manifest.sha256.get(name)
        if expected is None:
            raise IncompleteModel(f"{manifest.name}: no sha256 recorded for {name}")
        if file_sha256(path) != expected:
            raise IncompleteModel(f"{manifest.name}: {name} does not match its sha256")


def install_model(models_dir: Path, staged: Path, kv: KeyValue | None) -> Manifest:
    """Install the model staged in ``staged`` (its manifest.json included) and make it the active one."""
    manifest = Manifest.load(staged)
    verify(manifest, staged)
    target = models_dir / manifest.slot / manifest.name
    if target.exists():
        raise IncompleteModel(f"{target} already exists; a retrained model needs a new name")
    target.parent.mkdir(parents=True, exist_ok=True)
    SharedStore.commit_folder(staged, target)
    installed = Manifest.load(target)
    verify(installed, target)
    set_active(models_dir, manifest.slot, manifest.name)
    if kv is not None:
        announce_models(kv)
    log.info("model %s installed and active in slot %s", manifest.name, manifest.slot)
    return installed
