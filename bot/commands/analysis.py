"""Analysing posted pictures: /identify (and auto-analysis, mentions, the context menu), the result buttons."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import TYPE_CHECKING

from bot.invocation import IncomingImage, Invocation, Progress
from bot.registry import ANSWERS, BUTTONS, COMMANDS
from bot.render import analysis_reply, candidates_reply, guesses_reply
from bot.replies import Reply, ReplyKind, rate_limited, refusal
from bot.waiting import Waited, WaitOutcome
from core.characters.names import BadName, split_name_and_series
from core.chat.ratelimit import BucketRule
from core.chat.store import Correction
from core.storage.jobs import Job, JobStatus
from core.vision.intake import IntakeError, too_many_bytes
from core.vision.results import UNKNOWN, AnalysisResult
from workers.celery_app import ANALYZE_TASK, TASK_QUEUES

if TYPE_CHECKING:
    from bot.layer import CommandLayer

log = logging.getLogger(__name__)

GPU_QUEUE = TASK_QUEUES[ANALYZE_TASK]
UNAVAILABLE = "The picture service is unavailable right now (no worker is running). Please try again later."
BUSY = "I'm very busy right now and could not finish your picture in time. Please try again in a few minutes."
EXPIRED = "That answer has expired; post the picture again."


async def _rate_limited(layer: CommandLayer, inv: Invocation, wanted: int) -> tuple[int, Reply | None]:
    """How many of ``wanted`` pictures the user's and the chat's buckets allow (one token each, never capped at
    the burst), and the refusal or the notice to send when that is fewer."""
    s = layer.settings
    buckets = [
        (f"user:{inv.platform}:{inv.user_id}", BucketRule(s.rate_user_per_min, s.rate_user_burst)),
        (f"chat:{inv.platform}:{inv.chat_id}", BucketRule(s.rate_chat_per_min, s.rate_chat_burst)),
    ]
    grant = await layer.run_sync(layer.buckets.take_up_to, buckets, wanted)
    if grant.granted >= wanted:
        return wanted, None
    who = ("you", "this chat")[max(0, grant.limiting)]
    log.info(
        "rate limited (%s, %d of %d, %s)",
        ("user", "chat")[max(0, grant.limiting)],
        grant.granted,
        wanted,
        inv.where(),
    )
    if grant.granted == 0:
        text = f"Slow down: too many pictures from {who}. Try again in {grant.retry_after_text}."
        return 0, rate_limited(text, grant.retry_after_s)
    text = (
        f"Slow down: too many pictures from {who}, so I answered the first {grant.granted} of {wanted}. "
        f"Send the others again in {grant.retry_after_text}."
    )
    return grant.granted, rate_limited(text, grant.retry_after_s)


async def _over_byte_budget(layer: CommandLayer, inv: Invocation, n_bytes: int) -> Reply | None:
    """The per-user byte budget (``ANIBOT_USER_BYTES_PER_HOUR``): what one user can make Redis hold is bounded."""
    s = layer.settings
    budget = max(s.user_bytes_per_hour, s.max_image_bytes)
    rule = BucketRule(per_minute=budget / 60, burst=budget)
    decision = await layer.run_sync(layer.buckets.take, f"bytes:{inv.platform}:{inv.user_id}", rule, n_bytes)
    if decision.allowed:
        return None
    log.info("byte budget spent (%d bytes asked, %s)", n_bytes, inv.where())
    return rate_limited(
        f"You have sent a lot of picture data this past hour (the limit is {budget >> 20} MB an hour). "
        f"Try again in {decision.retry_after_text}.",
        decision.retry_after_s,
    )


async def _fetch(layer: CommandLayer, image: IncomingImage) -> bytes:
    """The bytes of a posted image; the announced size is checked before anything is downloaded."""
    limit = layer.settings.max_image_bytes
    if image.size is not None and image.size > limit:
        raise too_many_bytes(image.size, limit)
    data = await image.fetch()
    if len(data) > limit:
        raise too_many_bytes(len(data), limit)
    return data


async def _answer(layer: CommandLayer, inv: Invocation, waited: Waited) -> Reply:
    from bot.layer import error_reply, new_error_id

    job = waited.job
    if waited.outcome is WaitOutcome.UNAVAILABLE:
        return refusal(UNAVAILABLE, "unavailable")
    if waited.outcome is WaitOutcome.BUSY:
        return refusal(BUSY, "busy")
    if job.status is JobStatus.FAILED:
        error = job.error
        if error is not None and error.code != "internal":
            return refusal(error.message, error.code)
        error_id = new_error_id()
        log.error("error %s: analysis job %s failed: %s (%s)", error_id, job.id, job.error, inv.where())
        return error_reply(error_id)
    finished = await layer.run_sync(layer.client.fetch_analysis, job)
    chat = await layer.chat_settings(inv)
    return analysis_reply(
        finished.result,
        finished.reply_image,
        job_id=job.id,
        chat=chat,
        channel_nsfw=inv.channel_nsfw,
        cached=job.cached,
        max_heads=layer.settings.reply_max_heads,
    )


@COMMANDS.command(
    "identify",
    summary="Find and name the characters in a picture (attach it, or reply to it)",
    usage="/identify (with an image attached, or as a reply to one)",
    takes_images=True,
)
async def identify(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    limit = layer.settings.max_images_per_message
    if not inv.images:
        return [refusal("Attach a picture to /identify, or reply to a picture with it.", "no_image")]
    images = inv.images[:limit]
    slot = f"{inv.platform}:{inv.chat_id}:{inv.user_id}"
    owner = uuid.uuid4().hex
    # the one-analysis lock before the rate limit: a request refused as "job_running" spends no tokens (it did,
    # and a burst of them used up the whole chat's bucket: tests/test_faults.py)
    if not await layer.run_sync(layer.active.acquire, slot, owner):
        return [
            refusal("I'm still working on your previous picture here; I'll answer it first.", "job_running")
        ]
    try:
        granted, limited = await _rate_limited(layer, inv, len(images))
        if limited is not None and not granted:
            return [limited]
        images = images[:granted]
        replies: list[Reply | None] = [None] * len(images)
        jobs: list[tuple[int, Job]] = []
        chat = await layer.chat_settings(inv)
        top_n = max(layer.settings.top_n, chat.top_n)
        for index, image in enumerate(images):
            try:
                data = await _fetch(layer, image)
                spent = await _over_byte_budget(layer, inv, len(data))
                if spent is not None:
                    replies[index] = spent
                    continue
                job = await layer.run_sync(
                    layer.client.submit_analysis,
                    data,
                    requester=inv.requester,
                    top_n=top_n,
                    full_size=inv.full_size,
                )
            except IntakeError as exc:
                log.info("refused image %d: %s (%s)", index, exc.code, inv.where())
                name = f"{image.filename}: " if len(images) > 1 else ""
                replies[index] = refusal(name + exc.user_message, exc.code)
                continue
            jobs.append((index, job))
        pending = [job for _, job in jobs if not job.status.finished]
        if pending:
            backlog = await layer.waiter.backlog(GPU_QUEUE)
            ahead = max(0, backlog - len(pending))
            text = "Looking at your picture…" if len(images) == 1 else f"Looking at {len(jobs)} pictures…"
            if ahead:
                text += f" ({ahead} ahead of you in the queue)"
            # the jobs being waited for go with it: the REST API's stream follows them (bot/api/web_api.py)
            data = {"queue_position": ahead + 1, "job_ids": [job.id for job in pending]}
            await progress(Reply(kind=ReplyKind.ACK, text=text, data=data))
        waited = await asyncio.gather(*(layer.waiter.wait(job, GPU_QUEUE) for _, job in jobs))
        for (index, _), outcome in zip(jobs, waited, strict=True):
            replies[index] = await _answer(layer, inv, outcome)
        answered = [r for r in replies if r is not None]
        if limited is not None:  # some of the pictures: say why the others were not answered
            answered.append(limited)
        if len(inv.images) > limit:
            answered.append(
                Reply(text=f"I answer at most {limit} pictures per message; the rest were skipped.")
            )
        return answered
    finally:
        await layer.run_sync(layer.active.release, slot, owner)


async def _finished_result(layer: CommandLayer, job_id: str, inv: Invocation) -> AnalysisResult | None:
    """The result of a finished analysis asked for in this chat, on this platform (a job id from elsewhere is
    as good as expired: its buttons work only where its answer was posted)."""
    job = (
        await layer.run_sync(layer.client.jobs.get, job_id) if re.fullmatch(r"[0-9a-f]{32}", job_id) else None
    )
    if job is None or job.status is not JobStatus.DONE:
        return None
    if (job.requester.platform, job.requester.chat_id) != (inv.platform, inv.chat_id):
        log.warning("job %s is not of this chat: refused (%s)", job_id, inv.where())
        return None
    try:
        return AnalysisResult.from_dict(await layer.run_sync(layer.client.result_json, job))
    except KeyError:  # the result blob expired before the job record
        return None


@BUTTONS.action("more")
async def more_candidates(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    result = await _finished_result(layer, inv.args, inv)
    if result is None:
        return [refusal(EXPIRED, "expired")]
    chat = await layer.chat_settings(inv)
    return [candidates_reply(result, inv.args, layer.settings.reply_max_heads, chat.sure_threshold)]


@BUTTONS.action("guesses")
async def show_guesses(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    """The best guesses for the heads an answer was not sure of, from the stored result (no new job)."""
    result = await _finished_result(layer, inv.args, inv)
    if result is None:
        return [refusal(EXPIRED, "expired")]
    chat = await layer.chat_settings(inv)
    return [guesses_reply(result, inv.args, chat, layer.settings.reply_max_heads)]


@BUTTONS.action("wrong")
async def wrong_name(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    result = await _finished_result(layer, inv.args, inv)
    if result is None or not result.heads:
        return [refusal(EXPIRED, "expired")]
    await layer.ask(inv, "wrong", inv.args)
    how = "Reply with the character's name."
    if len(result.heads) > 1:
        how = f"Reply with the head number and the name, e.g. `2 Hatsune Miku` (heads 1-{len(result.heads)})."
    return [Reply(text=f"Who is it? {how}", expects_answer=True)]


@ANSWERS.action("wrong")
async def correction_given(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    from bot.commands.review import corrections_of, queue_apply

    job_id, _, answer = inv.args.partition(" ")
    result = await _finished_result(layer, job_id, inv)
    if result is None or not result.heads:
        return [refusal(EXPIRED, "expired")]
    match = re.fullmatch(r"\s*(?:#?([0-9]{1,4})[\s:.)-]+)?(.+?)\s*", answer, flags=re.DOTALL)
    head = int(match.group(1)) if match and match.group(1) else 1
    try:
        name, series = split_name_and_series(match.group(2) if match else "")
    except BadName as exc:
        return [refusal(f"{exc} Reply with the character's name, e.g. `Hatsune Miku`.", "bad_name")]
    if not 1 <= head <= len(result.heads):
        return [refusal(f"There is no head {head} in that picture (1-{len(result.heads)}).", "bad_head")]
    shown = result.heads[head - 1]
    job = await layer.run_sync(layer.client.jobs.get, job_id)
    picture = (job.params.get("image") if job is not None else None) or result.image_sha256
    if not await layer.run_sync(layer.client.blobs.keep, picture, layer.settings.correction_keep_s):
        log.warning("correction for job %s: the picture already expired (%s)", job_id, inv.where())
    recorded = await layer.run_sync(
        corrections_of(layer).record,
        Correction(
            job_id=job_id,
            head=head,
            name=name,
            series=series,
            platform=inv.platform,
            chat_id=inv.chat_id,
            user_id=inv.user_id,
            predicted="" if shown.name == UNKNOWN else shown.name,
            image_sha256=result.image_sha256,
            box=(shown.box.x1, shown.box.y1, shown.box.x2, shown.box.y2),
        ),
    )
    label = recorded.correction.label
    log.info(
        "correction %s stored for job %s head %d (%s)", recorded.correction.id, job_id, head, inv.where()
    )
    if recorded.accepted:
        await queue_apply(layer, inv)
        return [
            Reply(
                text=f"Thanks! {recorded.agreeing} people say #{head} is {label}, so I accepted it: "
                "I'll recognise them from now on.",
                data={"correction_id": recorded.correction.id, "status": "approved"},
            )
        ]
    return [
        Reply(
            text=f"Thanks! Noted that #{head} is {label}; an admin will review it.",
            data={"correction_id": recorded.correction.id, "status": recorded.correction.status},
        )
    ]
