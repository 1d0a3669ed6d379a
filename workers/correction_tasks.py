"""Applying users' approved corrections (``train`` queue): each corrected head becomes a gallery reference.

Idempotent: a reference is keyed by its picture and head box, and a correction is marked applied only after its
reference was stored, so a redelivered task adds nothing twice and loses nothing.
"""

from __future__ import annotations

import logging

from PIL import Image

from core.characters.corrections import Corrections, head_crop_png
from core.chat.store import ChatStore
from core.storage.jobs import BlobNotFound
from core.vision.intake import IntakeError
from workers import runtime
from workers.admin_tasks import fail_job, finish_job, start_job
from workers.celery_app import APPLY_CORRECTIONS_TASK, HEAD_CROP_TASK, app
from workers.tasks import AnibotTask

log = logging.getLogger(__name__)


def _picture(image_sha256: str) -> Image.Image | None:
    """The decoded picture a correction was given on (its blob's key is the sha256 of the posted bytes); None
    when it expired or no longer decodes."""
    service = runtime.service()
    try:
        return service.decode_blob(image_sha256).image
    except BlobNotFound:
        return None
    except IntakeError as exc:
        log.warning("picture %s of a correction does not decode: %s", image_sha256[:12], exc.code)
        return None


@app.task(name=APPLY_CORRECTIONS_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def apply_corrections(self: AnibotTask, job_id: str) -> str:
    job = start_job(job_id)
    if job is None:
        return "skipped"
    service = runtime.service()
    corrections = Corrections(ChatStore(service.store), removed=service.store.removed_characters)
    if not corrections.to_apply():
        return finish_job(
            job, {"message": "No approved corrections were waiting to be applied.", "applied": []}
        )
    try:
        teacher = runtime.teacher()
    except runtime.NoEmbedder as exc:
        return fail_job(job, "no_embedder", str(exc))
    report = corrections.apply(
        teacher, _picture
    )  # publishing the new gallery also stops stale cached answers
    log.info("job %s: %s", job.id, report.message)
    return finish_job(job, report.to_dict())


@app.task(name=HEAD_CROP_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def crop_head(self: AnibotTask, job_id: str) -> str:
    """The head a correction names, cut from its kept picture for a reviewer: decoding pictures is a worker's job
    (front-ends read headers only). Result: ``{"png": <blob sha256>}``, or ``{"png": null}`` when the picture
    expired or no longer decodes."""
    job = start_job(job_id)
    if job is None:
        return "skipped"
    picture = _picture(job.params["image"])
    if picture is None:
        return finish_job(job, {"png": None})
    png = head_crop_png(picture, tuple(job.params["box"]))
    return finish_job(job, {"png": runtime.service().blobs.put(png)})
