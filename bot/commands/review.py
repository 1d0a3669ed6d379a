"""/review: admins go through users' corrections (oldest first) and approve, reject or skip each one.

An approved correction is applied on the train queue (``anibot.corrections.apply``): its head becomes a
reference of the named character. Buttons carry no permission, so each handler checks for a bot admin itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.invocation import Invocation, Progress
from bot.numbers import ascii_int
from bot.registry import BUTTONS, COMMANDS, Permission
from bot.replies import Button, Reply, ReplyField, ReplyImage, ReplyKind, refusal
from bot.waiting import WaitOutcome
from core.characters.corrections import Corrections, PendingReview
from core.storage.jobs import BlobNotFound, Job, JobStatus, Requester
from workers.celery_app import APPLY_CORRECTIONS_TASK, APPLY_KIND, HEAD_CROP_TASK, TASK_QUEUES

if TYPE_CHECKING:
    from bot.layer import CommandLayer

log = logging.getLogger(__name__)

NOTHING_WAITING = "No corrections waiting."


def corrections_of(layer: CommandLayer) -> Corrections:
    """The review rules; auto-accepting checks the names against the characters the store knows."""

    def characters() -> list[tuple[str, str]]:
        return [(c.name, c.series) for c in layer.store.list_characters() if c.n_references > 0]

    return Corrections(
        layer.chats,
        auto_accept=layer.settings.corrections_auto_accept,
        per_user_per_day=layer.settings.corrections_auto_accept_per_day,
        characters=characters,
        removed=layer.store.removed_characters,
    )


async def queue_apply(layer: CommandLayer, inv: Invocation) -> Job:
    """Queue the apply job without waiting for it (it applies every approved correction)."""
    job = await layer.run_sync(
        layer.client.submit_task, APPLY_CORRECTIONS_TASK, APPLY_KIND, requester=inv.requester, params={}
    )
    log.info("apply job %s queued (%s)", job.id, inv.where())
    return job


CROP_WAIT_S = 30.0


async def _crop_png(layer: CommandLayer, pending: PendingReview) -> bytes | None:
    """The corrected head, cut from the kept picture by a cpu worker (the bot decodes no picture); None when the
    picture expired, or no worker answered in time."""
    correction = pending.correction
    if correction.box is None or not correction.image_sha256:
        return None
    job = await layer.run_sync(
        layer.client.submit_task,
        HEAD_CROP_TASK,
        "crop",
        requester=Requester("review"),
        params={"image": correction.image_sha256, "box": list(correction.box)},
    )
    waited = await layer.waiter.wait(job, TASK_QUEUES[HEAD_CROP_TASK], timeout_s=CROP_WAIT_S)
    if waited.outcome is not WaitOutcome.FINISHED or waited.job.status is not JobStatus.DONE:
        log.warning("head crop for correction %s: %s", correction.id, waited.outcome)
        return None
    try:
        digest = (await layer.run_sync(layer.client.result_json, waited.job))["png"]
        return await layer.run_sync(layer.client.blobs.get, digest) if digest else None
    except BlobNotFound:
        return None


async def _review_card(layer: CommandLayer, after_id: int = 0) -> Reply:
    pending = await layer.run_sync(corrections_of(layer).next_pending, after_id)
    if pending is None:
        return Reply(text=NOTHING_WAITING if not after_id else "No more corrections waiting.")
    c = pending.correction
    png = await _crop_png(layer, pending)
    users = f"{pending.agreeing} user{'s' * (pending.agreeing != 1)}"
    picture = ReplyField(
        "Picture", f"{c.image_sha256[:12]}, head #{c.head}" + ("" if png else " (picture expired)")
    )
    if c.is_proposal:  # a confident tagger answer proposed as a reference (core.characters.proposals)
        fields: tuple[ReplyField, ...] = (
            ReplyField("The tagger says", c.label, inline=True),
            ReplyField("Why", c.reason or "a confident answer", inline=True),
            picture,
        )
        title = f"Proposed reference #{c.id} ({pending.waiting} waiting)"
    else:
        fields = (
            ReplyField("I said", c.predicted or "unknown", inline=True),
            ReplyField("They say", c.label, inline=True),
            ReplyField("Agreeing", users, inline=True),
            picture,
        )
        title = f"Correction #{c.id} ({pending.waiting} waiting)"
    payload = str(c.id)
    return Reply(
        title=title,
        fields=fields,
        image=ReplyImage(png, f"correction-{c.id}.png") if png else None,
        buttons=(
            Button("Approve", "review.approve", payload),
            Button("Reject", "review.reject", payload),
            Button("Skip", "review.skip", payload),
        ),
        data={
            "correction_id": c.id,
            "predicted": c.predicted,
            "name": c.name,
            "series": c.series,
            "agreeing": pending.agreeing,
            "image_sha256": c.image_sha256,
            "head": c.head,
            "waiting": pending.waiting,
            "kind": c.kind,
        },
    )


@COMMANDS.command(
    "review",
    summary="Review users' corrections of wrong names, oldest first (admins)",
    usage="/review",
    permission=Permission.BOT_ADMIN,
)
async def review(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    return [await _review_card(layer)]


def _reviewed(layer: CommandLayer, inv: Invocation) -> int | Reply:
    """The correction id a review button carries, or the refusal to answer instead."""
    if not layer.is_bot_admin(inv):
        log.warning("refused a review button to a non-admin (%s)", inv.where())
        return refusal("Only bot admins can review corrections.", "forbidden")
    correction_id = ascii_int(inv.args)
    if correction_id is None:
        return refusal("That button no longer works.", "expired")
    return correction_id


def _reviewer(inv: Invocation) -> str:
    return f"{inv.platform}:{inv.user_id}"


async def _not_pending(layer: CommandLayer, correction_id: int) -> Reply:
    current = await layer.run_sync(layer.chats.correction, correction_id)
    if current is None:
        return refusal(f"There is no correction #{correction_id}.", "not_found")
    by = f" by {current.reviewer}" if current.reviewer else ""
    return refusal(f"Correction #{correction_id} was already {current.status}{by}.", "already_reviewed")


@BUTTONS.action("review.approve")
async def approve(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    from bot.commands.admin import _enqueue_and_report

    correction_id = _reviewed(layer, inv)
    if isinstance(correction_id, Reply):
        return [correction_id]
    approved = await layer.run_sync(corrections_of(layer).approve, correction_id, _reviewer(inv))
    if approved is None:
        return [await _not_pending(layer, correction_id)]
    log.info("correction %d approved (%s)", correction_id, inv.where())
    return await _enqueue_and_report(
        layer,
        inv,
        progress,
        task=APPLY_CORRECTIONS_TASK,
        kind=APPLY_KIND,
        params={"correction": correction_id},
        queued_text=f"Approved correction #{correction_id} ({approved.label}); adding it as a reference…",
    )


@BUTTONS.action("review.reject")
async def reject(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    correction_id = _reviewed(layer, inv)
    if isinstance(correction_id, Reply):
        return [correction_id]
    rejected = await layer.run_sync(corrections_of(layer).reject, correction_id, _reviewer(inv))
    if rejected is None:
        return [await _not_pending(layer, correction_id)]
    log.info("correction %d rejected (%s)", correction_id, inv.where())
    done = Reply(kind=ReplyKind.RESULT, text=f"Rejected correction #{correction_id} ({rejected.label}).")
    return [done, await _review_card(layer)]


@BUTTONS.action("review.skip")
async def skip(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    correction_id = _reviewed(layer, inv)
    if isinstance(correction_id, Reply):
        return [correction_id]
    return [await _review_card(layer, after_id=correction_id)]
