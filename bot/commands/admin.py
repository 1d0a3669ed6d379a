"""Admin commands: teach and forget characters, re-index, watch the jobs (they enqueue on the train queue)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bot.invocation import Invocation, Progress
from bot.registry import COMMANDS, Permission
from bot.replies import Reply, ReplyField, ReplyKind, refusal
from bot.waiting import WaitOutcome
from core.characters.names import BadName, split_name_and_series
from core.storage.jobs import Job, JobStatus
from core.vision.intake import IntakeError
from workers.celery_app import (
    ADD_CHARACTER_TASK,
    REINDEX_TASK,
    REMOVE_CHARACTER_TASK,
    RETRAIN_TASK,
    TASK_QUEUES,
)

if TYPE_CHECKING:
    from bot.layer import CommandLayer

log = logging.getLogger(__name__)

MAX_REFERENCES = 20
RETRAIN_TARGETS = ("identifier", "tagger", "detector")
ADMIN_JOB_KINDS = [
    "characters.add",
    "characters.remove",
    "characters.remove_reference",
    "retrain",
    "reindex",
    "corrections.apply",
]
ADMIN_WAIT_S = 60.0  # how long the command waits to report the outcome; /jobs shows it afterwards
RETRAIN_WAIT_S = 10.0  # training takes minutes: the command reports the queued job, /jobs its progress


async def _enqueue_and_report(
    layer: CommandLayer,
    inv: Invocation,
    progress: Progress,
    *,
    task: str,
    kind: str,
    params: dict,
    images: list[bytes] | None = None,
    queued_text: str,
    wait_s: float = ADMIN_WAIT_S,
) -> list[Reply]:
    job = await layer.run_sync(
        layer.client.submit_task, task, kind, requester=inv.requester, params=params, images=images or []
    )
    log.info("admin job %s (%s) queued (%s)", job.id, kind, inv.where())
    await progress(Reply(kind=ReplyKind.ACK, text=f"{queued_text} (job {job.id[:8]})"))
    waited = await layer.waiter.wait(job, TASK_QUEUES[task], timeout_s=wait_s)
    if waited.outcome is WaitOutcome.UNAVAILABLE:
        await layer.run_sync(layer.client.jobs.request_cancel, job.id)
        return [
            refusal(
                "No training worker is running, so nothing was changed. Start one and try again.",
                "unavailable",
            )
        ]
    if waited.outcome is WaitOutcome.BUSY:
        return [
            Reply(
                text=f"Job {job.id[:8]} is under way; /jobs shows its progress.",
                data={"job_id": job.id, "status": str(waited.job.status)},
            )
        ]
    if waited.job.status is JobStatus.FAILED:
        error = waited.job.error
        return [refusal(error.message if error else "The job failed.", error.code if error else "failed")]
    result = await layer.run_sync(layer.client.result_json, waited.job)
    return [
        Reply(kind=ReplyKind.RESULT, text=result.get("message", "Done."), data={**result, "job_id": job.id})
    ]


@COMMANDS.command(
    "addcharacter",
    summary="Teach me a character from 1-20 reference pictures (admins)",
    usage="/addcharacter <name> [| series] (with pictures attached or replied to)",
    permission=Permission.BOT_ADMIN,
    takes_images=True,
    argument="name",
)
async def add_character(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    from bot.commands.analysis import _fetch

    try:
        name, series = split_name_and_series(inv.args)
    except BadName as exc:
        return [refusal(f"{exc} Usage: /addcharacter <name> [| series] with 1-{MAX_REFERENCES} pictures.")]
    if not inv.images:
        return [refusal(f"Attach 1-{MAX_REFERENCES} pictures of {name} (or reply to them).")]
    if len(inv.images) > MAX_REFERENCES:
        return [refusal(f"At most {MAX_REFERENCES} reference pictures at once.")]
    images: list[bytes] = []
    for image in inv.images:
        try:
            images.append(await _fetch(layer, image))
        except IntakeError as exc:
            return [refusal(f"{image.filename}: {exc.user_message} Nothing was added.")]
    return await _enqueue_and_report(
        layer,
        inv,
        progress,
        task=ADD_CHARACTER_TASK,
        kind="characters.add",
        params={"name": name, "series": series},
        images=images,
        queued_text=f"Adding {name} from {len(images)} picture{'s' * (len(images) != 1)}…",
    )


@COMMANDS.command(
    "removecharacter",
    summary="Forget a character (admins)",
    usage="/removecharacter <name> [| series]",
    permission=Permission.BOT_ADMIN,
    argument="name",
)
async def remove_character(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    try:
        name, series = split_name_and_series(inv.args)
    except BadName as exc:
        return [refusal(f"{exc} Usage: /removecharacter <name> [| series]")]
    return await _enqueue_and_report(
        layer,
        inv,
        progress,
        task=REMOVE_CHARACTER_TASK,
        kind="characters.remove",
        params={"name": name, "series": series},
        queued_text=f"Removing {name}…",
    )


@COMMANDS.command(
    "characters",
    summary="The characters I know, with their reference counts (admins)",
    usage="/characters [series]",
    permission=Permission.BOT_ADMIN,
    argument="series",
)
async def characters(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    known = await layer.run_sync(layer.store.list_characters)
    wanted = inv.args.strip().casefold()
    if wanted:
        known = [c for c in known if wanted in c.series.casefold()]
    if not known:
        return [
            Reply(text="No characters known yet." if not wanted else f"No characters of {inv.args.strip()}.")
        ]
    lines = [
        f"{c.name}"
        + (f" ({c.series})" if c.series else "")
        + f": {c.n_references} refs"
        + (f", updated {c.updated_at:%Y-%m-%d}" if c.updated_at else "")
        for c in known
    ]
    return [
        Reply(
            title=f"{len(known)} characters",
            text="\n".join(lines),
            data={
                "characters": [
                    {"name": c.name, "series": c.series, "references": c.n_references,
                     "updated_at": c.updated_at.isoformat() if c.updated_at else None}
                    for c in known
                ]
            },
        )
    ]  # fmt: skip


def _active_training(jobs: list[Job]) -> Job | None:
    return next((j for j in jobs if j.kind == "retrain" and not j.status.finished), None)


@COMMANDS.command(
    "retrain",
    summary="Retrain a model on what I was taught; promoted only if it does not regress (admins)",
    usage="/retrain [identifier|tagger|detector]",
    permission=Permission.BOT_ADMIN,
    argument="model",
)
async def retrain(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    target = (inv.args.strip() or "identifier").lower()
    if target not in RETRAIN_TARGETS:
        return [refusal(f"Usage: /retrain [{'|'.join(RETRAIN_TARGETS)}]")]
    recent = await layer.run_sync(layer.client.jobs.recent, ["retrain"], 20)
    running = _active_training(recent)
    if running is not None:
        return [
            refusal(
                f"Job {running.id[:8]} is already retraining the {running.params.get('target')}; one at a time. "
                f"/jobs shows it, /jobs cancel {running.id[:8]} stops it.",
                "job_running",
            )
        ]
    return await _enqueue_and_report(
        layer,
        inv,
        progress,
        task=RETRAIN_TASK,
        kind="retrain",
        params={"target": target},
        queued_text=f"Retraining the {target}…",
        wait_s=RETRAIN_WAIT_S,
    )


@COMMANDS.command(
    "reindex",
    summary="Rebuild the character gallery from every stored reference (admins)",
    usage="/reindex",
    permission=Permission.BOT_ADMIN,
)
async def reindex(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    return await _enqueue_and_report(
        layer,
        inv,
        progress,
        task=REINDEX_TASK,
        kind="reindex",
        params={},
        queued_text="Rebuilding the gallery…",
    )


def _eta(seconds: float) -> str:
    return f"{round(seconds)} s" if seconds < 90 else f"{round(seconds / 60)} min"


def job_line(job: Job) -> str:
    age = int(time.time() - job.created_at)
    ago = f"{age} s" if age < 120 else f"{age // 60} min"
    what = job.params.get("name") or job.params.get("target") or ""
    state = str(job.status)
    if job.status is JobStatus.RUNNING:
        detail = job.detail
        state += f" {round(job.progress * 100)}%"
        if detail.get("epoch") and detail.get("epochs"):
            state += f", epoch {detail['epoch']}/{detail['epochs']}"
        if detail.get("loss") is not None:
            state += f", loss {float(detail['loss']):.3f}"
        if detail.get("eta_s") is not None:
            state += f", ETA {_eta(float(detail['eta_s']))}"
        elif detail.get("stage"):
            state += f", {detail['stage']}"
    elif job.status is JobStatus.QUEUED and job.detail.get("stage"):
        state += f", {job.detail['stage']}"
    error = f": {job.error.message}" if job.error else ""
    return f"{job.id[:8]} {job.kind} {what}: {state}{error} ({ago} ago)"


@COMMANDS.command(
    "jobs",
    summary="Admin jobs with progress and ETA; /jobs cancel <id> stops one (admins)",
    usage="/jobs [cancel <id>]",
    permission=Permission.BOT_ADMIN,
    argument="action",
)
async def jobs(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    words = inv.args.split()
    if words and words[0].lower() == "cancel":
        return [await _cancel(layer, inv, words[1] if len(words) > 1 else "")]
    if words:
        return [refusal("Usage: /jobs, or /jobs cancel <id>")]
    recent = await layer.run_sync(layer.client.jobs.recent, ADMIN_JOB_KINDS, 10)
    if not recent:
        return [Reply(text="No admin jobs yet.")]
    backlog = await layer.waiter.backlog(TASK_QUEUES[RETRAIN_TASK])
    return [
        Reply(
            title="Recent jobs",
            text="\n".join(job_line(job) for job in recent),
            fields=(ReplyField("Waiting on the train queue", str(backlog), inline=True),),
            data={
                "jobs": [
                    {"id": j.id, "kind": j.kind, "status": str(j.status), "progress": j.progress,
                     "detail": j.detail}
                    for j in recent
                ]
            },
        )
    ]  # fmt: skip


async def _cancel(layer: CommandLayer, inv: Invocation, prefix: str) -> Reply:
    prefix = prefix.strip().lower()
    if len(prefix) < 4 or not all(c in "0123456789abcdef" for c in prefix):
        return refusal("Usage: /jobs cancel <id> (the first characters /jobs shows).")
    recent = await layer.run_sync(layer.client.jobs.recent, ADMIN_JOB_KINDS, 50)
    matches = [j for j in recent if j.id.startswith(prefix)]
    if len(matches) != 1:
        return refusal(f"No single recent job starts with {prefix}; /jobs lists them.", "not_found")
    job = matches[0]
    if job.status.finished:
        return refusal(f"Job {job.id[:8]} already {job.status}.", "finished")
    await layer.run_sync(layer.client.jobs.request_cancel, job.id)
    log.info("cancel of job %s requested (%s)", job.id, inv.where())
    return Reply(
        text=f"Cancelling job {job.id[:8]}; it stops at its next step and changes nothing.",
        data={"job_id": job.id},
    )
