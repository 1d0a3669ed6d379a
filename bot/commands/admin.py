"""Admin commands: teach and forget characters, re-index, watch the jobs (they enqueue on the train queue)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bot.invocation import Invocation, Progress
from bot.registry import COMMANDS, Permission
from bot.replies import Reply, ReplyField, ReplyKind, refusal
from bot.waiting import WaitOutcome
from core.intake import IntakeError
from core.jobs import Job, JobStatus
from core.names import BadName, split_name_and_series
from workers.celery_app import ADD_CHARACTER_TASK, REMOVE_CHARACTER_TASK, RETRAIN_TASK, TASK_QUEUES

if TYPE_CHECKING:
    from bot.layer import CommandLayer

log = logging.getLogger(__name__)

MAX_REFERENCES = 20
RETRAIN_TARGETS = ("identifier", "tagger", "detector")
ADMIN_JOB_KINDS = ["characters.add", "characters.remove", "retrain"]
ADMIN_WAIT_S = 60.0  # how long the command waits to report the outcome; /jobs shows it afterwards


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
) -> list[Reply]:
    job = await layer.run_sync(
        layer.client.submit_task, task, kind, requester=inv.requester, params=params, images=images or []
    )
    log.info("admin job %s (%s) queued (%s)", job.id, kind, inv.where())
    await progress(Reply(kind=ReplyKind.ACK, text=f"{queued_text} (job {job.id[:8]})"))
    waited = await layer.waiter.wait(job, TASK_QUEUES[task], timeout_s=ADMIN_WAIT_S)
    if waited.outcome is WaitOutcome.UNAVAILABLE:
        return [
            refusal(
                "No training worker is running, so nothing was changed. Start one and try again.",
                "unavailable",
            )
        ]
    if waited.outcome is WaitOutcome.BUSY:
        return [Reply(text=f"Still working on job {job.id[:8]}; /jobs shows how it goes.")]
    if waited.job.status is JobStatus.FAILED:
        error = waited.job.error
        return [refusal(error.message if error else "The job failed.", error.code if error else "failed")]
    result = await layer.run_sync(layer.client.result_json, waited.job)
    return [Reply(kind=ReplyKind.RESULT, text=result.get("message", "Done."), data=result)]


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
    lines = [f"{c.name}" + (f" ({c.series})" if c.series else "") + f": {c.n_references} refs" for c in known]
    return [Reply(title=f"{len(known)} characters", text="\n".join(lines))]


@COMMANDS.command(
    "retrain",
    summary="Re-index or retrain a model on what I was taught (admins)",
    usage="/retrain [identifier|tagger|detector]",
    permission=Permission.BOT_ADMIN,
    argument="model",
)
async def retrain(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    target = (inv.args.strip() or "identifier").lower()
    if target not in RETRAIN_TARGETS:
        return [refusal(f"Usage: /retrain [{'|'.join(RETRAIN_TARGETS)}]")]
    return await _enqueue_and_report(
        layer,
        inv,
        progress,
        task=RETRAIN_TASK,
        kind="retrain",
        params={"target": target},
        queued_text=f"Retraining job for the {target} queued…",
    )


def _job_line(job: Job) -> str:
    age = int(time.time() - job.created_at)
    ago = f"{age} s" if age < 120 else f"{age // 60} min"
    what = job.params.get("name") or job.params.get("target") or ""
    progress = f" {round(job.progress * 100)}%" if job.status is JobStatus.RUNNING else ""
    error = f": {job.error.message}" if job.error else ""
    return f"{job.id[:8]} {job.kind} {what}: {job.status}{progress}{error} ({ago} ago)"


@COMMANDS.command(
    "jobs",
    summary="Recent admin jobs and their progress (admins)",
    usage="/jobs",
    permission=Permission.BOT_ADMIN,
)
async def jobs(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    recent = await layer.run_sync(layer.client.jobs.recent, ADMIN_JOB_KINDS, 10)
    if not recent:
        return [Reply(text="No admin jobs yet.")]
    backlog = await layer.waiter.backlog(TASK_QUEUES[RETRAIN_TASK])
    return [
        Reply(
            title="Recent jobs",
            text="\n".join(_job_line(job) for job in recent),
            fields=(ReplyField("Waiting on the train queue", str(backlog), inline=True),),
            data={"jobs": [{"id": j.id, "kind": j.kind, "status": str(j.status)} for j in recent]},
        )
    ]
