"""Per-process state of a worker: the analysis service and its models, created on first use in the child.

Celery's prefork parent never calls this, so no model (and no CUDA context) exists before fork.
"""

from __future__ import annotations

import os
from functools import lru_cache

from core.analysis.service import AnalysisService
from core.characters.gallery_versions import GalleryVersions
from core.characters.teaching import Teacher
from core.settings import get_settings
from core.storage.kv import RedisKV
from core.storage.shared_store import SharedStore
from core.storage.store import Store


@lru_cache(maxsize=1)
def service() -> AnalysisService:
    settings = get_settings()
    store = Store.from_settings(settings)
    store.create_all()
    return AnalysisService(settings, RedisKV(settings.redis_url), store)


def teacher() -> Teacher:
    """The teaching service over this process's models (loaded on first use, like the analysis models)."""
    svc = service()
    pipeline = svc.pipeline
    if pipeline.slots.embedder is None:
        raise NoEmbedder("No identification model is installed on this worker.")
    versions = GalleryVersions(
        SharedStore(svc.settings.shared_path), svc.kv, keep=svc.settings.gallery_keep_versions
    )
    return Teacher(svc.store, versions, pipeline.slots.embedder, pipeline.slots.detector)


class NoEmbedder(RuntimeError):
    pass


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
