"""Admin tasks on the ``train`` queue: teach a character, forget one, re-index the gallery.

Each finishes its job with a JSON result blob holding a ``message`` for the admin. Adding references is
idempotent (references are keyed by image hash), so these tasks may be redelivered safely.
"""

from __future__ import annotations

import json
import logging

from core.characters import Reference, enrol
from core.intake import IntakeError, decode_image
from core.jobs import Job, JobError, JobStatus
from core.names import BadName, normalise_name
from workers import runtime
from workers.celery_app import ADD_CHARACTER_TASK, REMOVE_CHARACTER_TASK, RETRAIN_TASK, app
from workers.tasks import AnibotTask

log = logging.getLogger(__name__)


def _start(job_id: str) -> Job | None:
    jobs = runtime.service().jobs
    job = jobs.get(job_id)
    if job is None or job.status.finished:
        log.info("job %s missing or finished: redelivery ignored", job_id)
        return None
    return jobs.update(job, status=JobStatus.RUNNING, attempts=job.attempts + 1, progress=0.05)


def _finish(job: Job, result: dict) -> str:
    service = runtime.service()
    blob = service.blobs.put(json.dumps(result, ensure_ascii=False).encode())
    service.jobs.update(job, status=JobStatus.DONE, progress=1.0, result={"json": blob})
    return "done"


def _fail(job: Job, code: str, message: str) -> str:
    runtime.service().jobs.update(job, status=JobStatus.FAILED, error=JobError(code, message))
    return "failed"


@app.task(name=ADD_CHARACTER_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def add_character(self: AnibotTask, job_id: str) -> str:
    job = _start(job_id)
    if job is None:
        return "skipped"
    service = runtime.service()
    try:
        name = normalise_name(job.params["name"])
        series = normalise_name(job.params["series"], what="series") if job.params.get("series") else ""
    except BadName as exc:
        return _fail(job, "bad_name", str(exc))
    references = []
    for index, digest in enumerate(job.params.get("images", []), start=1):
        try:
            decoded = decode_image(
                service.blobs.get(digest),
                max_bytes=service.settings.max_image_bytes,
                max_pixels=service.settings.max_image_pixels,
            )
        except (IntakeError, KeyError) as exc:
            message = getattr(exc, "user_message", "the picture expired")
            return _fail(job, "bad_reference", f"Picture {index}: {message} Nothing was added.")
        references.append(Reference(decoded.image, decoded.sha256))
    pipeline = service.pipeline
    if pipeline.slots.embedder is None:
        return _fail(job, "no_embedder", "No identification model is installed on the training worker.")
    added = enrol(service.store, pipeline.slots.embedder, name, series, references, pipeline.slots.detector)
    total = next(
        (c.n_references for c in service.store.list_characters() if c.name == name and c.series == series),
        added,
    )
    label = f"{name} ({series})" if series else name
    log.info("job %s: added %d references to %s", job.id, added, label)
    return _finish(
        job,
        {
            "message": f"Added {label}: {added} new reference{'s' * (added != 1)}, {total} in all.",
            "name": name,
            "series": series,
            "added": added,
            "references": total,
        },
    )


@app.task(name=REMOVE_CHARACTER_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def remove_character(self: AnibotTask, job_id: str) -> str:
    job = _start(job_id)
    if job is None:
        return "skipped"
    name, series = job.params["name"], job.params.get("series", "")
    removed = runtime.service().store.delete_character(name, series)
    label = f"{name} ({series})" if series else name
    if not removed:
        return _fail(job, "not_found", f"I don't know {label}; /characters lists who I know.")
    return _finish(job, {"message": f"Removed {label}.", "name": name, "series": series, "removed": True})


@app.task(name=RETRAIN_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def retrain(self: AnibotTask, job_id: str) -> str:
    """The identifier is re-indexed: a new gallery version makes every worker rebuild its index from the
    store on its next job. Fine-tuning model weights on what admins taught is not built yet."""
    job = _start(job_id)
    if job is None:
        return "skipped"
    target = job.params.get("target", "identifier")
    if target != "identifier":
        return _fail(
            job, "not_available", f"Retraining the {target} is not available yet; nothing was changed."
        )
    version = runtime.service().store.bump_gallery_version()
    return _finish(
        job, {"message": f"Re-indexed the gallery (version {version}).", "gallery_version": version}
    )
