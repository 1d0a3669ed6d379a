"""Which code loads which model format, and which model is installed and active in each slot.

Layout of the models folder::

    models/<slot>/<name>/manifest.json   one installed model (plus its weight files)
    models/active.json                   {"<slot>": "<name>"}: the active model of each slot

A slot with a single installed model uses it without an entry in ``active.json``. Loaders are imported lazily,
by dotted path, so listing models never imports torch or ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.storage.kv import KeyValue
from core.storage.result_cache import FINGERPRINT_KEY
from core.vision.slots.base import MANIFEST_NAME, Manifest

SLOTS = ("detector", "embedder", "tagger", "captioner")
ACTIVE_FILE = "active.json"

# manifest format -> "module:callable(manifest, settings)" building the slot implementation
LOADERS: dict[str, str] = {
    "yolo-onnx": "core.vision.slots.detector:OnnxYoloDetector.from_manifest",
    "yolo-pt": "core.vision.slots.detector:UltralyticsDetector.from_manifest",
    "animeface": "core.vision.slots.animeface_detector:AnimeFaceDetector.from_manifest",
    "onnx-embedder": "core.vision.slots.embedder:OnnxEmbedder.from_manifest",
    "timm-embedder": "core.vision.slots.embedder:TimmEmbedder.from_manifest",
    "wd14-onnx": "core.vision.slots.tagger:Wd14Tagger.from_manifest",
    "grounded-template": "core.vision.slots.captioner:GroundedTemplateCaptioner.from_manifest",
    "hf-vision-encoder-decoder": "core.vision.slots.hf_captioner:HfCaptioner.from_manifest",
    "hf-blip": "core.vision.slots.hf_captioner:HfCaptioner.from_manifest",
}

# slots that work without any installed files
BUILTIN: dict[str, Manifest] = {
    "captioner": Manifest(
        slot="captioner",
        name="grounded-template",
        format="grounded-template",
        provenance="built in: composed from the identified characters and the tags",
    ),
}


MODELS_ANNOUNCE_KEY = "anibot:models:announced"


def announce_models(kv: KeyValue) -> None:
    """Tell every worker that the active models changed: each loads them again before its next job."""
    kv.set(MODELS_ANNOUNCE_KEY, uuid.uuid4().hex.encode(), 365 * 24 * 3600)
    kv.delete(FINGERPRINT_KEY)  # no duplicate is answered from the cache with the old models


class ModelNotInstalled(RuntimeError):
    def __init__(self, slot: str, models_dir: Path) -> None:
        super().__init__(f"no {slot} model installed in {models_dir} (run `anibot models build`)")
        self.slot = slot


def _resolve(dotted: str) -> Callable[[Manifest, Settings], Any]:
    module_name, _, attr_path = dotted.partition(":")
    target: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    return target


def installed(models_dir: Path, slot: str) -> list[Manifest]:
    folder = models_dir / slot
    if not folder.is_dir():
        return []
    return [Manifest.load(p.parent) for p in sorted(folder.glob(f"*/{MANIFEST_NAME}"))]


def read_active(models_dir: Path) -> dict[str, str]:
    path = models_dir / ACTIVE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def set_active(models_dir: Path, slot: str, name: str) -> None:
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; slots are {', '.join(SLOTS)}")
    active = read_active(models_dir)
    active[slot] = name
    from core.storage.shared_store import write_atomic  # readers never see a half-written active.json

    write_atomic(models_dir / ACTIVE_FILE, (json.dumps(active, indent=2) + "\n").encode())


def active_manifest(models_dir: Path, slot: str) -> Manifest | None:
    choices = installed(models_dir, slot)
    wanted = read_active(models_dir).get(slot)
    if wanted:
        for manifest in choices:
            if manifest.name == wanted:
                return manifest
        builtin = BUILTIN.get(slot)
        if builtin is not None and builtin.name == wanted:
            return builtin
        raise ModelNotInstalled(slot, models_dir)
    if choices:
        return choices[-1] if len(choices) == 1 else sorted(choices, key=lambda m: m.name)[0]
    return BUILTIN.get(slot)


def load_slot(manifest: Manifest, settings: Settings) -> Any:
    try:
        loader = LOADERS[manifest.format]
    except KeyError:
        known = ", ".join(sorted(LOADERS))
        raise ValueError(
            f"{manifest.name}: unknown model format {manifest.format!r} (known: {known})"
        ) from None
    return _resolve(loader)(manifest, settings)


def models_fingerprint(models_dir: Path) -> str:
    """A digest of the active model versions of every slot, computed without loading any model."""
    versions = []
    for slot in SLOTS:
        try:
            manifest = active_manifest(models_dir, slot)
        except ModelNotInstalled:
            manifest = None
        versions.append(f"{slot}={manifest.version if manifest else 'none'}")
    return hashlib.sha256("|".join(versions).encode()).hexdigest()[:16]
