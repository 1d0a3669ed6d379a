"""The catalogue task on the ``cpu`` queue: one operation of core.catalog's CatalogService per job.

Read-only operations and favourites (set semantics) are safe to redeliver, hence ``acks_late``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from core.settings import get_settings
from core.storage.jobs import JobError, JobStatus
from workers import runtime
from workers.celery_app import CATALOG_TASK, app
from workers.tasks import AnibotTask

log = logging.getLogger(__name__)

# each operation: how the job's kwargs become a CatalogService call
OPERATIONS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "recommend": lambda svc, kw: svc.recommend(kw.pop("title", None), **kw),
    "details": lambda svc, kw: svc.details(kw["title"]),
    "search": lambda svc, kw: svc.search(kw["query"], limit=kw.get("limit", 10), offset=kw.get("offset", 0)),
    "genres": lambda svc, kw: svc.genres(),
    "favourites": lambda svc, kw: svc.favourites(
        kw["op"], kw.get("title"), platform=kw["platform"], user_id=kw["user_id"], anime_id=kw.get("anime_id")
    ),
}


@lru_cache(maxsize=1)
def catalog() -> Any:
    """The catalogue service of this worker process (index and embedder loaded once, lazily)."""
    from core.catalog.service import CatalogService

    return CatalogService(get_settings(), runtime.service().store)


@app.task(name=CATALOG_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def catalog_query(self: AnibotTask, job_id: str) -> str:
    jobs = runtime.service().jobs
    job = jobs.get(job_id)
    if job is None or job.status.finished:
        return "skipped"
    job = jobs.update(job, status=JobStatus.RUNNING, attempts=job.attempts + 1)
    op = job.params.get("op")
    if op not in OPERATIONS:
        jobs.update(job, status=JobStatus.FAILED, error=JobError("bad_request", f"Unknown operation {op!r}."))
        return "failed"
    try:
        service = catalog()
    except ImportError as exc:  # core.catalog (or its libraries) missing on this worker
        log.error("catalogue unavailable on this worker: %s", exc)
        jobs.update(
            job,
            status=JobStatus.FAILED,
            error=JobError("not_available", "Anime recommendations are not available on this server yet."),
        )
        return "failed"
    answer = OPERATIONS[op](service, dict(job.params.get("kwargs") or {}))
    blob = runtime.service().blobs.put(json.dumps(answer.to_dict(), ensure_ascii=False).encode())
    jobs.update(job, status=JobStatus.DONE, progress=1.0, result={"json": blob})
    return "done"
