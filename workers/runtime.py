"""Per-process state of a worker: the analysis service and its models, created on first use in the child.

Celery's prefork parent never calls this, so no model (and no CUDA context) exists before fork.
"""

from __future__ import annotations

import os
from functools import lru_cache

from core.kv import RedisKV
from core.service import AnalysisService
from core.settings import get_settings
from core.store import Store


@lru_cache(maxsize=1)
def service() -> AnalysisService:
    settings = get_settings()
    store = Store.from_settings(settings)
    store.create_all()
    return AnalysisService(settings, RedisKV(settings.redis_url), store)


def worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
