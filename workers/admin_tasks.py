"""Admin tasks on the ``train`` queue: teach a character, forget one or one of its references, rebuild the gallery,
retrain a model; and on the ``gpu`` queue the heads of the pictures an admin is about to teach (a preview).

Each finishes its job with a JSON result blob holding a ``message`` for the admin, and reports its progress
(stage, and for training epoch, loss and ETA) on the job record that ``/jobs`` shows. Teaching is idempotent
(references are keyed by picture hash, gallery versions only move forward), so those tasks are ``acks_late``:
a worker killed mid-way leaves the previous gallery serving and the job is redelivered. Training is one job at a
time (a Redis lock), runs in time slices that each end well inside the visibility timeout, checkpoints to the
shared folder and queues its own continuation, so a redelivered or continued job resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from core.characters.names import BadName, normalise_name
from core.characters.teaching import (
    RegionBox,
    UnknownCharacter,
    largest_head,
    prepare_reference,
)
from core.learning.retrain.base import (
    TRAINING_DIR,
    Cancelled,
    NothingToLearn,
    RetrainInputs,
    SliceEnded,
    TrainingContext,
    TrainProgress,
    retrainer,
    work_dir,
)
from core.settings import Settings
from core.storage.jobs import BlobNotFound, Job, JobError, JobStatus
from core.storage.shared_store import SharedStore
from core.vision.intake import IntakeError
from core.vision.results import Box
from workers import runtime
from workers.celery_app import (
    ADD_CHARACTER_TASK,
    PREVIEW_HEADS_TASK,
    REINDEX_TASK,
    REMOVE_CHARACTER_TASK,
    REMOVE_REFERENCE_TASK,
    RETRAIN_TASK,
    TASK_QUEUES,
    app,
)
from workers.tasks import AnibotTask

log = logging.getLogger(__name__)

TRAIN_LOCK_KEY = "anibot:train:lock"  # holds the id of the one training job running
CANCELLED_CODE = "cancelled"


def start_job(job_id: str) -> Job | None:
    jobs = runtime.service().jobs
    job = jobs.get(job_id)
    if job is None or job.status.finished:
        log.info("job %s missing or finished: redelivery ignored", job_id)
        return None
    if jobs.cancel_requested(job_id):
        fail_job(job, CANCELLED_CODE, "Cancelled before it started; nothing was changed.")
        return None
    return jobs.update(job, status=JobStatus.RUNNING, attempts=job.attempts + 1, progress=0.05)


def _progress(job: Job, stage: str, fraction: float, **detail: Any) -> Job:
    return runtime.service().jobs.update(job, progress=fraction, detail={"stage": stage, **detail})


def finish_job(job: Job, result: dict) -> str:
    service = runtime.service()
    blob = service.blobs.put(json.dumps(result, ensure_ascii=False).encode())
    service.jobs.update(job, status=JobStatus.DONE, progress=1.0, result={"json": blob})
    return "done"


def fail_job(job: Job, code: str, message: str) -> str:
    runtime.service().jobs.update(job, status=JobStatus.FAILED, error=JobError(code, message))
    return "failed"


@app.task(name=ADD_CHARACTER_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def add_character(self: AnibotTask, job_id: str) -> str:
    job = start_job(job_id)
    if job is None:
        return "skipped"
    service = runtime.service()
    try:
        name = normalise_name(job.params["name"])
        series = normalise_name(job.params["series"], what="series") if job.params.get("series") else ""
    except BadName as exc:
        return fail_job(job, "bad_name", str(exc))
    try:
        teacher = runtime.teacher()
    except runtime.NoEmbedder as exc:
        return fail_job(job, "no_embedder", str(exc))
    digests = job.params.get("images", [])
    boxes = chosen_regions(job.params.get("boxes"), len(digests))
    if boxes is None:
        return fail_job(job, "bad_boxes", "The chosen regions do not match the pictures; nothing was added.")
    prepared = []
    for index, (digest, box) in enumerate(zip(digests, boxes, strict=True), start=1):
        job = _progress(job, f"detecting heads ({index}/{len(digests)})", 0.05 + 0.3 * index / len(digests))
        try:
            decoded = service.decode_blob(digest)
        except (IntakeError, BlobNotFound) as exc:
            message = getattr(exc, "user_message", "the picture expired.")
            return fail_job(job, "bad_reference", f"Picture {index}: {message} Nothing was added.")
        try:
            prepared.append(
                prepare_reference(
                    decoded.image, decoded.sha256, teacher.detector, label=f"picture {index}", box=box
                )
            )
        except ValueError as exc:  # a chosen region outside the decoded picture
            return fail_job(job, "bad_box", f"{exc}. Nothing was added.")
    if not prepared:
        return fail_job(job, "no_reference", "No reference pictures; nothing was added.")

    def report(stage: str, fraction: float) -> None:
        nonlocal job
        job = _progress(job, stage, fraction)

    outcome = teacher.add(name, series, prepared, report)
    log.info("job %s: %s", job.id, outcome.message)
    return finish_job(job, outcome.to_dict())


@app.task(name=REMOVE_CHARACTER_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def remove_character(self: AnibotTask, job_id: str) -> str:
    job = start_job(job_id)
    if job is None:
        return "skipped"
    name, series = job.params["name"], job.params.get("series", "")
    try:
        published = runtime.teacher().remove(name, series)
    except UnknownCharacter as exc:
        return fail_job(job, "not_found", str(exc))
    except runtime.NoEmbedder as exc:
        return fail_job(job, "no_embedder", str(exc))
    label = f"{name} ({series})" if series else name
    return finish_job(
        job,
        {
            "message": f"Removed {label}.",
            "name": name,
            "series": series,
            "removed": True,
            "gallery_version": published.manifest.version,
        },
    )


@app.task(name=REMOVE_REFERENCE_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def remove_reference(self: AnibotTask, job_id: str) -> str:
    """Forget one reference of a character and publish the gallery without it (the character stays)."""
    job = start_job(job_id)
    if job is None:
        return "skipped"
    sha256 = job.params["reference"]
    try:
        teacher = runtime.teacher()
    except runtime.NoEmbedder as exc:
        return fail_job(job, "no_embedder", str(exc))
    name, series = teacher.resolve(job.params["name"], job.params.get("series", ""))
    label = f"{name} ({series})" if series else name
    deleted = teacher.store.delete_reference(name, series, sha256)
    if not deleted and job.attempts <= 1:  # (a redelivery may find it deleted already: it still publishes)
        return fail_job(job, "not_found", f"{label} has no reference {sha256[:12]}.")
    published = teacher.publish()
    left = next(
        (c.n_references for c in teacher.store.list_characters() if (c.name, c.series) == (name, series)), 0
    )
    log.info("job %s: removed reference %s of %s (%d left)", job.id, sha256[:12], label, left)
    return finish_job(
        job,
        {
            "message": f"Removed a reference of {label}; {left} left.",
            "name": name,
            "series": series,
            "reference": sha256,
            "references": left,
            "gallery_version": published.manifest.version,
        },
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def chosen_regions(raw: Any, n: int) -> list[RegionBox | None] | None:
    """The admin's chosen region of each of ``n`` pictures (None: the default head); None when they do not match
    the pictures (the API checked this; a message from elsewhere may not have)."""
    if raw is None:
        return [None] * n
    if not isinstance(raw, list) or len(raw) != n:
        return None
    regions: list[RegionBox | None] = []
    for box in raw:
        if box is None:
            regions.append(None)
        elif isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box):
            regions.append((float(box[0]), float(box[1]), float(box[2]), float(box[3])))
        else:
            return None
    return regions


def _inside(box: Box, width: int, height: int) -> list[float]:
    """A head's box clipped to the picture: sent back as a chosen region, it must lie inside it."""
    x1, y1, x2, y2 = box.as_list()
    return [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]


@app.task(name=PREVIEW_HEADS_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def preview_heads(self: AnibotTask, job_id: str) -> str:
    """The heads of each picture an admin is about to teach, and the one ``anibot.characters.add`` would cut
    around (``chosen``: the largest, None for the whole picture): the same detector and rule as teaching."""
    job = start_job(job_id)
    if job is None:
        return "skipped"
    service = runtime.service()
    detector = service.pipeline.slots.detector
    pictures = []
    for index, digest in enumerate(job.params.get("images", []), start=1):
        try:
            decoded = service.decode_blob(digest)
        except (IntakeError, BlobNotFound) as exc:
            message = getattr(exc, "user_message", "the picture expired.")
            return fail_job(job, "bad_reference", f"Picture {index}: {message}")
        found = detector.detect(decoded.image) if detector is not None else []
        pictures.append(
            {
                "width": decoded.width,
                "height": decoded.height,
                "heads": [
                    {"box": _inside(d.box, decoded.width, decoded.height), "score": round(float(d.score), 4)}
                    for d in found
                ],
                "chosen": largest_head(found),
            }
        )
    return finish_job(job, {"pictures": pictures, "detector": detector is not None})


@app.task(name=REINDEX_TASK, base=AnibotTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def reindex(self: AnibotTask, job_id: str) -> str:
    """Build a new gallery version from the store's references and make it current."""
    job = start_job(job_id)
    if job is None:
        return "skipped"
    try:
        published = runtime.teacher().publish()
    except runtime.NoEmbedder as exc:
        return fail_job(job, "no_embedder", str(exc))
    m = published.manifest
    return finish_job(
        job,
        {
            "message": f"Gallery version {m.version}: {m.n_references} references of {m.n_characters} characters.",
            "gallery_version": m.version,
            "references": m.n_references,
            "characters": m.n_characters,
        },
    )


# --- training ----------------------------------------------------------------------------------------------


def slice_seconds(settings: Settings) -> float:
    """How long one retrain task trains before it checkpoints and hands over: the setting, but never more than
    half the visibility timeout (the last epoch and the hand-over must end before Redis redelivers)."""
    return float(min(settings.train_slice_s, max(5, settings.visibility_timeout_s // 2)))


def train_lock_holder() -> str | None:
    raw = runtime.service().kv.get(TRAIN_LOCK_KEY)
    return raw.decode() if raw is not None else None


def _take_train_lock(job_id: str) -> bool:
    """One training job at a time; the job holding the lock may take it again (a continuation, a redelivery)."""
    service = runtime.service()
    ttl = service.settings.visibility_timeout_s + service.settings.train_slice_s
    if service.kv.set_if_absent(TRAIN_LOCK_KEY, job_id.encode(), ttl):
        return True
    if train_lock_holder() == job_id:
        service.kv.set(TRAIN_LOCK_KEY, job_id.encode(), ttl)
        return True
    return False


def _release_train_lock(job_id: str) -> None:
    """The job is over (done, failed or cancelled): its lock and its checkpoints go."""
    if train_lock_holder() == job_id:
        runtime.service().kv.delete(TRAIN_LOCK_KEY)
    shutil.rmtree(
        SharedStore(runtime.service().settings.shared_path).path(TRAINING_DIR, job_id), ignore_errors=True
    )


@app.task(
    name=RETRAIN_TASK,
    base=AnibotTask,
    bind=True,
    acks_late=True,  # safe: state lives in checkpoints, a model is only ever installed whole
    reject_on_worker_lost=True,
    time_limit=max(20, app.conf.broker_transport_options["visibility_timeout"] - 30),
    soft_time_limit=max(15, app.conf.broker_transport_options["visibility_timeout"] - 45),
)
def retrain(self: AnibotTask, job_id: str) -> str:
    service = runtime.service()
    jobs = service.jobs
    job = jobs.get(job_id)
    if job is None or job.status.finished:
        log.info("retrain job %s missing or finished: ignored", job_id)
        return "skipped"
    target = job.params.get("target", "identifier")
    if jobs.cancel_requested(job_id):
        _release_train_lock(job_id)
        return fail_job(job, CANCELLED_CODE, "Cancelled; the current model is still in use.")
    if not _take_train_lock(job_id):
        holder = train_lock_holder()
        log.info("retrain job %s waits: job %s is training", job_id, holder)
        job = jobs.update(job, detail={"stage": f"waiting for job {str(holder)[:8]} to finish"})
        self.apply_async(args=[job_id], queue=TASK_QUEUES[RETRAIN_TASK], countdown=30)
        return "waiting"
    job = jobs.update(job, status=JobStatus.RUNNING, attempts=job.attempts + 1)
    settings = service.settings
    shared = SharedStore(settings.shared_path)
    started = time.monotonic()

    def report(progress: TrainProgress) -> None:
        nonlocal job
        job = jobs.update(job, progress=max(0.01, min(0.99, progress.fraction)), detail=progress.as_detail())

    ctx = TrainingContext(
        job_id=job_id,
        work_dir=work_dir(shared, job_id),
        report=report,
        cancel_requested=lambda: jobs.cancel_requested(job_id),
        slice_deadline=started + slice_seconds(settings),
        options=dict(job.params.get("options") or {}),
    )
    inputs = RetrainInputs(settings=settings, store=service.store, shared=shared, kv=service.kv)
    try:
        outcome = retrainer(target)(inputs, ctx)
    except SliceEnded:
        log.info("retrain job %s: slice over after %.0f s, continuing", job_id, time.monotonic() - started)
        self.apply_async(args=[job_id], queue=TASK_QUEUES[RETRAIN_TASK])
        return "continued"
    except Cancelled:
        _release_train_lock(job_id)
        log.info("retrain job %s cancelled", job_id)
        return fail_job(job, CANCELLED_CODE, "Cancelled; the current model is still in use.")
    except NothingToLearn as exc:
        _release_train_lock(job_id)
        return fail_job(job, "nothing_to_learn", str(exc))
    except SoftTimeLimitExceeded:
        # the slice should have ended long before: let the redelivery resume from the last checkpoint
        log.error("retrain job %s hit its time limit; it resumes from its last checkpoint", job_id)
        self.apply_async(args=[job_id], queue=TASK_QUEUES[RETRAIN_TASK])
        return "continued"
    except BaseException:
        _release_train_lock(job_id)
        raise
    _release_train_lock(job_id)
    log.info("retrain job %s: %s", job_id, outcome.message)
    return finish_job(job, outcome.to_dict())
