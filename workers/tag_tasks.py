"""The tagging task on the ``gpu`` queue: one chunk of pictures (blob hashes in the job) scored as one batch.

The worker returns each picture's scored tags (every tag at or above the job's ``floor``, and the rating tags);
captions are made from them where the run is (``anibot tag --queue``, ``POST /v1/tag``) with
:mod:`core.tagging.captions`, so a folder tagged through the queue gets the captions of the in-process run.
Idempotent (a finished job is left alone), hence ``acks_late``.
"""

from __future__ import annotations

import json
import logging

from core.storage.jobs import BlobNotFound, JobError, JobStatus
from workers import runtime
from workers.celery_app import TAG_TASK, app
from workers.tasks import AnibotTask

log = logging.getLogger(__name__)


def encode_results(version: str, results: list) -> dict:  # type: ignore[type-arg]
    """The job's JSON: per picture ``{"scores": [[name, score, category], ...]}`` or ``{"error": {...}}``."""
    from core.tagging.runner import PictureFailure

    pictures = []
    for result in results:
        if isinstance(result, PictureFailure):
            pictures.append({"error": {"code": result.code, "message": result.message}})
        else:
            pictures.append({"scores": [[t.name, t.score, t.category] for t in result]})
    return {"model": version, "pictures": pictures}


@app.task(name=TAG_TASK, base=AnibotTask, bind=True, queue="gpu", acks_late=True, reject_on_worker_lost=True)
def tag(self: AnibotTask, job_id: str) -> str:
    from core.tagging.runner import tag_blobs

    service = runtime.service()
    jobs = service.jobs
    job = jobs.get(job_id)
    if job is None or job.status.finished:
        return "skipped"
    job = jobs.update(job, status=JobStatus.RUNNING, attempts=job.attempts + 1, progress=0.05)
    tagger = service.pipeline.slots.tagger
    if tagger is None or not hasattr(tagger, "scores_batch"):
        jobs.update(
            job,
            status=JobStatus.FAILED,
            error=JobError("not_available", "No tagging model is installed on this worker."),
        )
        return "failed"
    try:
        blobs = [service.blobs.get(digest) for digest in job.params.get("images", [])]
    except BlobNotFound:
        jobs.update(
            job,
            status=JobStatus.FAILED,
            error=JobError("blob_expired", "The pictures expired before they could be tagged."),
        )
        return "failed"
    settings = service.settings
    results = tag_blobs(
        tagger,
        blobs,
        float(job.params.get("floor", 0.35)),
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    log.info("job %s: %d pictures tagged on %s", job_id, len(blobs), runtime.worker_id())
    blob = service.blobs.put(json.dumps(encode_results(tagger.version, results)).encode())
    jobs.update(job, status=JobStatus.DONE, progress=1.0, result={"json": blob})
    return "done"
