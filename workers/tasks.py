"""Celery tasks: thin wrappers over core. Only ids travel in messages; bytes are read from the blob store."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import sqlalchemy.exc
from celery import signals

from core.analysis.service import AnalysisService
from core.characters.gallery_versions import fault_point
from core.characters.proposals import ProposalRules, Proposals
from core.chat.store import ChatStore, CorrectionStatus
from core.settings import get_settings
from core.storage.jobs import BlobNotFound, BlobStore, Job, JobError, JobStatus, JobStore, Requester
from core.storage.kv import RedisKV
from core.vision.intake import IntakeError
from core.vision.results import AnalysisResult
from workers import runtime
from workers.celery_app import ANALYZE_TASK, APPLY_CORRECTIONS_TASK, APPLY_KIND, TASK_QUEUES, app
from workers.outage import OutageTolerantTask

log = logging.getLogger(__name__)

# Errors worth a retry through the broker: the database blinked. Bad input and bugs are never retried; Redis
# (the broker itself) going away is waited out in process (workers.outage), since no retry can be sent then.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (sqlalchemy.exc.OperationalError,)


def analysis_refs(result_blob: str, reply_blob: str, full_png_blob: str | None = None) -> dict[str, str]:
    """A finished analysis job's blobs: the result JSON, the reply picture, the full-size PNG when asked for."""
    refs = {"json": result_blob, "reply_image": reply_blob}
    if full_png_blob:
        refs["annotated_png"] = full_png_blob
    return refs


DATABASE_DOWN = "I could not reach my database in time, so your request was not finished. Please try again."


def failure_of(exc: BaseException) -> JobError:
    """What a user is told of a job that failed with ``exc`` (transient errors after their last retry included)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return JobError("busy", DATABASE_DOWN)
    return JobError("internal", "Something went wrong.")


def poison_message(attempts: int) -> str:
    return (
        f"This picture could not be analysed: the worker analysing it stopped on each of {attempts} attempts. "
        "Try another picture (or a smaller one)."
    )


class AnibotTask(OutageTolerantTask):
    """Cross-cutting concerns: bounded retries for transient errors, failed jobs recorded, log context."""

    autoretry_for = TRANSIENT_ERRORS
    max_retries = get_settings().task_max_retries
    # 2, 4, 8 s: a database restarting (crash recovery included) has 14 s to come back; with jitter the three
    # retries could all fall within a second and fail a job a restart had only delayed (seen in tests/test_faults)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = False

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        log.error("task %s failed for job %s: %s", self.name, job_id, exc)
        try:
            jobs = runtime.service().jobs
            job = jobs.get(job_id) if job_id else None
            if job is not None and not job.status.finished:
                jobs.update(job, status=JobStatus.FAILED, error=failure_of(exc))
        except Exception:  # the store itself may be what failed
            log.exception("could not record the failure of job %s", job_id)


@app.task(
    name=ANALYZE_TASK, base=AnibotTask, bind=True, queue="gpu", acks_late=True, reject_on_worker_lost=True
)
def analyze(self: AnibotTask, job_id: str) -> str:
    """Analyse the image of job ``job_id``. Idempotent: a redelivered, already finished job is left as it is."""
    service = runtime.service()
    job = service.jobs.get(job_id)
    if job is None:
        log.warning("job %s not found (expired?): dropped", job_id)
        return "missing"
    if job.status.finished:
        log.info("job %s already %s: redelivery ignored", job_id, job.status)
        return str(job.status)
    # one attempt per delivery: a run again in process after a Redis outage (workers.outage) is the same attempt
    counted = getattr(self.request, "attempt_counted", False)
    # runs of this job that ended neither done nor failed nor retried: its worker died (SIGKILL, out of memory)
    lost = job.attempts - self.request.retries
    if not counted and lost >= service.settings.max_attempts:
        log.error(
            "job %s: its worker died on each of %d attempts; failed, message acknowledged", job_id, lost
        )
        service.jobs.update(job, status=JobStatus.FAILED, error=JobError("worker_lost", poison_message(lost)))
        release_input(service, job.params.get("image"))
        return "failed"
    job = service.jobs.update(
        job, status=JobStatus.RUNNING, attempts=job.attempts + (0 if counted else 1), progress=0.05
    )
    self.request.attempt_counted = True
    log.info("job %s running (attempt %d) on %s", job_id, job.attempts, runtime.worker_id())
    fault_point(f"analyze.image:{job.params.get('image', '')}")
    delay = service.settings.test_task_delay_s
    if delay:
        time.sleep(delay)
    try:
        data = service.blobs.get(job.params["image"])
        outcome = service.analyze(
            data,
            top_n=int(job.params.get("top_n", service.settings.top_n)),
            requester=job.requester,
            job_id=job.id,
            store_full_size=bool(job.params.get("full_size")),
        )
    except BlobNotFound:
        service.jobs.update(
            job,
            status=JobStatus.FAILED,
            error=JobError("blob_expired", "The image expired before it could be analysed."),
        )
        return "failed"
    except IntakeError as exc:
        service.jobs.update(job, status=JobStatus.FAILED, error=JobError(exc.code, exc.user_message))
        release_input(service, job.params.get("image"))
        return "failed"
    if not outcome.logged:
        log.warning("job %s had already been completed once; result kept", job_id)
    service.jobs.update(
        job,
        status=JobStatus.DONE,
        progress=1.0,
        cached=outcome.cached,
        result=analysis_refs(
            outcome.refs.result_blob, outcome.refs.annotated_blob, outcome.annotated_png_blob
        ),
    )
    release_input(service, job.params.get("image"))
    propose_reference(service, job, outcome.result)
    return "done"


@lru_cache(maxsize=1)
def _proposals(service: AnalysisService) -> Proposals:
    s = service.settings
    rules = ProposalRules(s.autoref_min_confidence, s.autoref_accept, s.autoref_per_character)
    return Proposals(ChatStore(service.store), service.store.removed_characters, rules)


def propose_reference(service: AnalysisService, job: Job, result: AnalysisResult) -> None:
    """A confident tagger answer, alone in its picture, becomes a proposed reference (core.characters.proposals):
    its picture is kept for review, and an accepted one is applied by a queued apply job. Never fails the
    analysis: a proposal is a bonus."""
    image = job.params.get("image")
    if not image or service.settings.autoref_min_confidence >= 1.0:
        return
    try:
        proposal = _proposals(service).consider(result, job.id, job.requester.chat_id)
        if proposal is None:
            return
        service.blobs.keep(image, service.settings.correction_keep_s)
        if proposal.status == CorrectionStatus.APPROVED:
            apply_job = service.jobs.create(APPLY_KIND, Requester("autoref"), params={})
            app.send_task(
                APPLY_CORRECTIONS_TASK, args=[apply_job.id], queue=TASK_QUEUES[APPLY_CORRECTIONS_TASK]
            )
            log.info("job %s: proposal %s accepted, apply job %s queued", job.id, proposal.id, apply_job.id)
    except Exception:  # the answer is given; a lost proposal is only logged
        log.exception("job %s: the reference proposal could not be kept", job.id)


EXPIRED_MESSAGE = "I was too busy to start on this in time. Please try again in a few minutes."


@signals.task_revoked.connect
def _expired(request: Any = None, expired: bool | None = None, **_: Any) -> None:
    """A task dropped unstarted because it expired (``ANIBOT_TASK_EXPIRES_S``): its job fails with 'busy' instead
    of staying queued forever. Runs in the worker's main process, so it touches only Redis (no model, no SQL)."""
    if not expired or request is None or not request.args:
        return
    job_id = request.args[0]
    jobs, blobs = _light_stores()
    job = jobs.get(job_id)
    if job is None or job.status.finished:
        return
    log.warning("job %s expired in the queue (task %s): failed as busy", job_id, request.task)
    jobs.update(job, status=JobStatus.FAILED, error=JobError("busy", EXPIRED_MESSAGE))
    if job.kind == "analyze" and job.params.get("image"):
        blobs.expire_within(job.params["image"], get_settings().input_keep_s)


@lru_cache(maxsize=1)
def _light_stores() -> tuple[JobStore, BlobStore]:
    settings = get_settings()
    kv = RedisKV(settings.redis_url)
    return JobStore(kv, settings.job_ttl_s), BlobStore.from_settings(settings, kv)


def release_input(service: AnalysisService, image: str | None) -> None:
    """A finished job's posted picture lives only ``ANIBOT_INPUT_KEEP_S`` more (a "Wrong?" keeps it for review)."""
    if image:
        service.blobs.expire_within(image, service.settings.input_keep_s)
