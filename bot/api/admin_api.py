"""The admin routes of the REST API (``/v1/admin/*``): what an admin does in the chats (/addcharacter,
/removecharacter, /characters, /review, /jobs) plus what a page needs besides (reference thumbnails, the heads of
pictures before they are taught, the models installed).

Every handler starts with :func:`bot.api.auth.admin_refusal`: only the admin token (ANIBOT_API_ADMIN_TOKEN) gets
in, and with no admin token configured nobody does. Work that needs a model runs on a worker, as the commands'
does (heads are found by ``anibot.characters.preview``; teaching and forgetting are the ``train`` queue's jobs
the commands queue); this process never imports torch and never decodes an uploaded picture (headers only).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from PIL import Image

from bot.api.auth import admin_refusal, invocation
from bot.api.parts import FormRefused, read_picture_form
from bot.commands.admin import ADMIN_JOB_KINDS, MAX_REFERENCES
from bot.commands.review import _crop_png, corrections_of, queue_apply
from bot.numbers import ascii_int
from bot.waiting import WaitOutcome
from core.characters.corrections import PendingReview, is_known
from core.characters.names import BadName, normalise_name
from core.characters.reference_crops import ReferenceCrops
from core.characters.teaching import region_problem
from core.chat.store import CorrectionStatus
from core.storage.jobs import Job, JobStatus
from core.storage.shared_store import SharedStore
from core.vision.intake import ImageHeader, IntakeError, inspect_image, too_many_bytes
from core.vision.slots.base import Manifest
from core.vision.slots.registry import SLOTS, ModelNotInstalled, active_manifest, installed
from workers.celery_app import (
    ADD_CHARACTER_TASK,
    PREVIEW_HEADS_TASK,
    REMOVE_CHARACTER_TASK,
    REMOVE_REFERENCE_TASK,
    TASK_QUEUES,
)

if TYPE_CHECKING:
    from bot.layer import CommandLayer

log = logging.getLogger(__name__)

MAX_PICTURES = MAX_REFERENCES  # 20, as /addcharacter
MAX_FIELDS = 8  # form fields besides the pictures (name, series, boxes)
MAX_FIELD_BYTES = 8 * 1024  # 20 boxes of four numbers fit many times over
PART_SLACK = 64 * 1024  # boundaries and headers per part
THUMBNAIL_SIDE = 256  # reference crops are served at most this big
REVIEW_LIMIT = 200  # pending corrections listed at once (oldest first)
JOBS_LIMIT = 50
PREVIEW_KIND = "characters.preview"
REMOVE_REFERENCE_KIND = "characters.remove_reference"  # one of ADMIN_JOB_KINDS: /jobs lists it
ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height when the worker decodes


def _api() -> Any:
    """``bot.api.app`` (it imports this module, so its names are looked up when a request comes)."""
    from bot.api import app

    return app


def _layer(request: web.Request) -> CommandLayer:
    return request.app[_api().LAYER]


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _api().error_response(status, code, message, **extra)


class Refused(Exception):
    """A request the route answers with an error: status, code and a message for the caller."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def response(self) -> web.Response:
        return _error(self.status, self.code, self.message, **self.extra)


# --- forms with pictures --------------------------------------------------------------------------------


@dataclass
class Picture:
    filename: str
    data: bytes
    header: ImageHeader | None = None

    @property
    def size(self) -> tuple[int, int]:
        """Width and height as the worker will see the picture (after its EXIF orientation)."""
        assert self.header is not None
        width, height = self.header.width, self.header.height
        return (height, width) if _orientation(self.data) in ROTATED else (width, height)


@dataclass
class PictureForm:
    pictures: list[Picture] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _orientation(data: bytes) -> int:
    """The EXIF orientation tag from the header (1 when there is none or it does not read)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block: the worker's decode decides
        return 1


async def read_pictures(request: web.Request, layer: CommandLayer) -> PictureForm:
    """1-``MAX_PICTURES`` ``image`` parts and a few small fields, every read bounded (bytes, parts, time); each
    picture's header is checked (format, size) before anything is stored."""
    settings = layer.settings
    budget = MAX_PICTURES * (settings.max_image_bytes + PART_SLACK)
    if request.content_length is not None and request.content_length > budget:
        exc = too_many_bytes(request.content_length, budget)
        raise Refused(413, exc.code, exc.user_message)
    try:
        read = await read_picture_form(
            request,
            max_pictures=MAX_PICTURES,
            max_image_bytes=settings.max_image_bytes,
            max_fields=MAX_FIELDS,
            max_field_bytes=MAX_FIELD_BYTES,
            timeout_s=settings.api_read_timeout_s,
            unnamed=lambda index: f"picture {index + 1}",
            too_many=f"At most {MAX_PICTURES} pictures at once.",
            keep_fields=MAX_FIELDS,
        )
    except FormRefused as exc:
        raise Refused(400, exc.code, str(exc)) from None
    except TimeoutError:
        raise Refused(408, "timeout", "The upload was too slow; send the pictures again.") from None
    except IntakeError as exc:  # a part over the size limit, refused as it arrived
        raise Refused(_api().STATUS_OF_CODE.get(exc.code, 400), exc.code, exc.user_message) from None
    form = PictureForm([Picture(name, data) for name, data in read.pictures], read.fields)
    if not form.pictures:
        raise Refused(400, "no_image", f"Send 1-{MAX_PICTURES} pictures as form parts named 'image'.")
    for index, picture in enumerate(form.pictures):
        try:
            picture.header = inspect_image(
                picture.data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            )
        except IntakeError as exc:
            raise Refused(
                _api().STATUS_OF_CODE.get(exc.code, 400),
                exc.code,
                f"Picture {index + 1} ({picture.filename}): {exc.user_message} Nothing was sent.",
                index=index,
            ) from None
    return form


def parse_boxes(text: str, pictures: list[Picture]) -> list[list[float] | None] | None:
    """The ``boxes`` field: one entry per picture, ``[x1, y1, x2, y2]`` (that region) or null (the default
    head); None when the field is empty. Raises :class:`Refused` for bad JSON, a count that does not match, or a
    region outside its picture."""
    if not text.strip():
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        raise Refused(
            400, "bad_boxes", "boxes must be a JSON list: [[x1, y1, x2, y2] or null, ...]."
        ) from None
    if not isinstance(raw, list):
        raise Refused(400, "bad_boxes", "boxes must be a JSON list: [[x1, y1, x2, y2] or null, ...].")
    if len(raw) != len(pictures):
        raise Refused(
            400,
            "bad_boxes",
            f"boxes has {len(raw)} entries for {len(pictures)} pictures: give one per picture (null for the "
            "default head).",
        )
    boxes: list[list[float] | None] = []
    for index, (box, picture) in enumerate(zip(raw, pictures, strict=True)):
        if box is None:
            boxes.append(None)
            continue
        numbers = (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        )
        if not numbers:
            raise Refused(
                400, "bad_boxes", f"boxes[{index}] must be [x1, y1, x2, y2] (numbers) or null.", index=index
            )
        region = [float(v) for v in box]
        problem = region_problem(region, *picture.size)
        if problem:
            raise Refused(
                400, "bad_box", f"Picture {index + 1} ({picture.filename}): {problem}.", index=index
            )
        boxes.append(region)
    return boxes


def _name(text: str | None, what: str, *, required: bool) -> str:
    text = text or ""
    if not text.strip():
        if required:
            raise Refused(400, "no_name", f"Give the character's {what}.")
        return ""
    try:
        return normalise_name(text, what=what)
    except BadName as exc:
        raise Refused(400, "bad_name", str(exc)) from None


async def _worker_on(layer: CommandLayer, task: str) -> None:
    """Refuse at once when no worker consumes the task's queue (nothing is queued then)."""
    queue = TASK_QUEUES[task]
    if await layer.waiter.workers_for(queue) == 0:
        raise Refused(503, "unavailable", f"No worker on the {queue} queue is running; nothing was queued.")


async def _queued(
    request: web.Request,
    layer: CommandLayer,
    task: str,
    kind: str,
    params: dict[str, Any],
    images: Sequence[bytes] = (),
    what: str = "",
) -> web.Response:
    """Queue an admin job (refused at once when no worker consumes its queue) and answer 202 with its id."""
    await _worker_on(layer, task)
    inv = invocation(request)
    job = await layer.run_sync(
        layer.client.submit_task, task, kind, requester=inv.requester, params=params, images=images
    )
    log.info("admin job %s (%s%s) queued (%s)", job.id, kind, f", {what}" if what else "", inv.where())
    return web.json_response({"job_id": job.id}, status=202)


def admin_only(handler: Any) -> Any:
    """The admin check first, then the handler; a :class:`Refused` becomes its JSON error."""

    async def route(request: web.Request) -> web.StreamResponse:
        refused = admin_refusal(request)
        if refused is not None:
            log.warning("admin route %s %r refused to %s", request.method, request.path, request.remote)
            return refused
        try:
            return await handler(request)
        except Refused as exc:
            return exc.response()

    route.__name__ = route.__qualname__ = handler.__name__
    route.__doc__ = handler.__doc__
    return route


# --- who, characters, references ------------------------------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    """The page checks the admin token with it."""
    return web.json_response({"admin": True})


def reference_url(sha256: str) -> str:
    return f"/v1/admin/references/{sha256}.png"


async def characters(request: web.Request) -> web.Response:
    """Every character with its reference count, last update and a thumbnail URL per reference (oldest
    first)."""
    layer = _layer(request)
    known = await layer.run_sync(layer.store.list_characters)
    references = await layer.run_sync(layer.store.references)
    by_character: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for ref in references:
        by_character[(ref.name, ref.series)].append(ref)
    body = []
    for c in known:
        refs = sorted(by_character[(c.name, c.series)], key=_oldest_first)
        body.append(
            {
                "name": c.name,
                "series": c.series,
                "references": c.n_references,
                "updated_at": c.updated_at.isoformat() if c.updated_at else None,
                "thumbnails": [reference_url(r.image_sha256) for r in refs],
            }
        )
    return web.json_response({"characters": body})


def _oldest_first(ref: Any) -> float:
    return ref.created_at.timestamp() if ref.created_at else 0.0


def _thumbnail(crops: ReferenceCrops, sha256: str) -> bytes | None:
    """The kept crop as a PNG of at most ``THUMBNAIL_SIDE`` a side (our own small file: decoding it is safe)."""
    if not crops.exists(sha256):
        return None
    crop = crops.get(sha256)
    crop.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return buffer.getvalue()


async def reference_thumbnail(request: web.Request) -> web.Response:
    """A reference's head crop as kept in the shared folder (404 for references enrolled before crops were
    kept)."""
    layer = _layer(request)
    crops = ReferenceCrops(SharedStore(layer.settings.shared_path))
    png = await layer.run_sync(_thumbnail, crops, request.match_info["sha256"])
    if png is None:
        return _error(404, "not_found", "No crop is kept for this reference.")
    return web.Response(
        body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )


async def preview(request: web.Request) -> web.Response:
    """The heads a worker finds in each picture and the one /addcharacter would use (``chosen``: the largest;
    null for the whole picture): the same detector and rule as teaching."""
    layer = _layer(request)
    form = await read_pictures(request, layer)
    job = await layer.run_sync(
        layer.client.submit_task,
        PREVIEW_HEADS_TASK,
        PREVIEW_KIND,
        requester=invocation(request).requester,
        params={},
        images=[p.data for p in form.pictures],
    )
    waited = await layer.waiter.wait(job, TASK_QUEUES[PREVIEW_HEADS_TASK])
    if waited.outcome is WaitOutcome.UNAVAILABLE:
        return _error(503, "unavailable", "No worker is running to find the heads; try again later.")
    if waited.outcome is WaitOutcome.BUSY:
        return _error(503, "busy", "Too busy to find the heads in time; try again later.", job_id=job.id)
    if waited.job.status is JobStatus.FAILED:
        error = waited.job.error
        code = error.code if error else "internal"
        return _error(500 if code == "internal" else 400, code, error.message if error else "Failed.")
    result = await layer.run_sync(layer.client.result_json, waited.job)
    pictures = [
        {"index": index, "filename": picture.filename, **found}
        for index, (picture, found) in enumerate(zip(form.pictures, result["pictures"], strict=True))
    ]
    return web.json_response({"pictures": pictures, "detector": bool(result.get("detector", True))})


async def add_character(request: web.Request) -> web.Response:
    """The add-character job /addcharacter queues, with the admin's chosen region of each picture (``boxes``)."""
    layer = _layer(request)
    form = await read_pictures(request, layer)
    name = _name(form.fields.get("name"), "name", required=True)
    series = _name(form.fields.get("series"), "series", required=False)
    boxes = parse_boxes(form.fields.get("boxes", ""), form.pictures)
    params: dict[str, Any] = {"name": name, "series": series}
    if boxes is not None and any(box is not None for box in boxes):
        params["boxes"] = boxes
    chosen = sum(box is not None for box in boxes or [])
    return await _queued(
        request,
        layer,
        ADD_CHARACTER_TASK,
        "characters.add",
        params,
        images=[p.data for p in form.pictures],
        what=f"{len(form.pictures)} pictures, {chosen} chosen regions",
    )


def _who(request: web.Request) -> tuple[str, str]:
    return (
        _name(request.query.get("name"), "name", required=True),
        _name(request.query.get("series"), "series", required=False),
    )


async def remove_character(request: web.Request) -> web.Response:
    """The /removecharacter job: the character and its references go, a gallery without them is published."""
    layer = _layer(request)
    name, series = _who(request)
    known = await layer.run_sync(layer.store.list_characters)
    if not is_known([(c.name, c.series) for c in known], name, series):
        label = f"{name} ({series})" if series else name
        raise Refused(404, "not_found", f"I don't know {label}.")
    return await _queued(
        request, layer, REMOVE_CHARACTER_TASK, "characters.remove", {"name": name, "series": series}
    )


async def remove_reference(request: web.Request) -> web.Response:
    """One reference of a character goes and the gallery is published without it (a ``train`` job)."""
    layer = _layer(request)
    name, series = _who(request)
    sha256 = request.match_info["sha256"]
    references = await layer.run_sync(layer.store.references)
    holders = [(r.name, r.series) for r in references if r.image_sha256 == sha256]
    if not is_known(holders, name, series):
        label = f"{name} ({series})" if series else name
        raise Refused(404, "not_found", f"{label} has no reference {sha256[:12]}.")
    return await _queued(
        request,
        layer,
        REMOVE_REFERENCE_TASK,
        REMOVE_REFERENCE_KIND,
        {"name": name, "series": series, "reference": sha256},
        what=sha256[:12],
    )


# --- the review queue -----------------------------------------------------------------------------------


def _correction_id(request: web.Request) -> int:
    correction_id = ascii_int(request.match_info["id"])
    if correction_id is None:
        raise Refused(404, "not_found", "No such correction.")
    return correction_id


async def review(request: web.Request) -> web.Response:
    """Pending corrections, oldest first, with how many users agree (the cards of /review)."""
    layer = _layer(request)
    corrections = corrections_of(layer)

    def pending() -> list[dict[str, Any]]:
        items = []
        for c in layer.chats.corrections(status=CorrectionStatus.PENDING, limit=REVIEW_LIMIT):
            items.append(
                {
                    "id": c.id,
                    "kind": "proposal" if c.is_proposal else "correction",
                    "reason": c.reason if c.is_proposal else None,
                    "job_id": c.job_id,
                    "head": c.head,
                    "name": c.name,
                    "series": c.series,
                    "predicted": c.predicted or None,
                    "agreeing": corrections.agreeing(c),
                    "created_at": c.created_at.isoformat() if c.created_at else None,
                    "crop_url": f"/v1/admin/review/{c.id}/crop.png" if c.box and c.image_sha256 else None,
                }
            )
        return items

    return web.json_response({"items": await layer.run_sync(pending)})


async def review_crop(request: web.Request) -> web.Response:
    """The corrected head, cut from the kept picture by a cpu worker (as the /review card shows it)."""
    layer = _layer(request)
    correction = await layer.run_sync(layer.chats.correction, _correction_id(request))
    if correction is None:
        return _error(404, "not_found", "No such correction.")
    png = await _crop_png(layer, PendingReview(correction, 0, 0))
    if png is None:
        return _error(404, "expired", "The picture of this correction expired (or no worker cut it in time).")
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=600"})


async def _reviewed(request: web.Request, status: CorrectionStatus) -> web.Response:
    layer = _layer(request)
    correction_id = _correction_id(request)
    inv = invocation(request)
    reviewer = f"{inv.platform}:{inv.user_id}"
    rules = corrections_of(layer)
    review_ = rules.approve if status is CorrectionStatus.APPROVED else rules.reject
    changed = await layer.run_sync(review_, correction_id, reviewer)
    if changed is None:
        current = await layer.run_sync(layer.chats.correction, correction_id)
        if current is None:
            return _error(404, "not_found", f"There is no correction #{correction_id}.")
        by = f" by {current.reviewer}" if current.reviewer else ""
        return _error(
            409, "already_reviewed", f"Correction #{correction_id} was already {current.status}{by}."
        )
    log.info("correction %d %s (%s)", correction_id, status, inv.where())
    body: dict[str, Any] = {"id": correction_id, "status": str(changed.status)}
    if status is CorrectionStatus.APPROVED:
        body["job_id"] = (await queue_apply(layer, inv)).id  # the head becomes a reference on the train queue
    return web.json_response(body)


async def approve(request: web.Request) -> web.Response:
    """Approve a pending correction; the apply job (its job_id in the answer) makes the head a reference."""
    return await _reviewed(request, CorrectionStatus.APPROVED)


async def reject(request: web.Request) -> web.Response:
    return await _reviewed(request, CorrectionStatus.REJECTED)


# --- jobs -----------------------------------------------------------------------------------------------


def job_body(job: Job) -> dict[str, Any]:
    """An admin job as /jobs shows it: status, and its progress (fraction, stage, epoch, loss, ETA)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": str(job.status),
        "subject": job.params.get("name") or job.params.get("target") or "",
        "progress": {"fraction": job.progress, **job.detail},
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "error": {"code": job.error.code, "message": job.error.message} if job.error else None,
    }


async def jobs(request: web.Request) -> web.Response:
    """The admin jobs /jobs lists, newest first."""
    layer = _layer(request)
    recent = await layer.run_sync(layer.client.jobs.recent, ADMIN_JOB_KINDS, JOBS_LIMIT)
    return web.json_response({"jobs": [job_body(j) for j in recent]})


async def _admin_job(layer: CommandLayer, job_id: str) -> Job:
    job = (
        await layer.run_sync(layer.client.jobs.get, job_id)
        if job_id.isalnum() and len(job_id) <= 64
        else None
    )
    if job is None or job.kind not in ADMIN_JOB_KINDS:
        raise Refused(404, "not_found", "No such admin job (or it expired).")
    return job


async def job(request: web.Request) -> web.Response:
    """One admin job, with its result (``message`` and the rest) once done."""
    layer = _layer(request)
    found = await _admin_job(layer, request.match_info["job_id"])
    body = job_body(found)
    if found.status is JobStatus.DONE and found.result:
        try:
            body["result"] = await layer.run_sync(layer.client.result_json, found)
        except KeyError:
            body["result"] = None  # the result blob expired before the job record
    return web.json_response(body)


async def cancel(request: web.Request) -> web.Response:
    """Ask an admin job to stop (/jobs cancel): it stops at its next step and changes nothing."""
    layer = _layer(request)
    found = await _admin_job(layer, request.match_info["job_id"])
    if found.status.finished:
        return _error(409, "finished", f"Job {found.id[:8]} already {found.status}.")
    await layer.run_sync(layer.client.jobs.request_cancel, found.id)
    log.info("cancel of job %s requested (%s)", found.id, invocation(request).where())
    return web.json_response({"id": found.id, "status": "cancelling"})


# --- models ---------------------------------------------------------------------------------------------


def _manifest(manifest: Manifest, active: Manifest | None) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "format": manifest.format,
        "version": manifest.version,
        "provenance": manifest.provenance,
        "active": active is not None and manifest.name == active.name,
    }


def models_listing(layer: CommandLayer) -> list[dict[str, Any]]:
    """What ``anibot models list`` shows: each slot's installed models and the active one."""
    models_dir = layer.settings.models_dir
    slots = []
    for slot in SLOTS:
        try:
            active = active_manifest(models_dir, slot)
        except ModelNotInstalled:
            active = None  # active.json names a model that is not installed
        manifests = installed(models_dir, slot) or ([active] if active else [])
        slots.append(
            {
                "slot": slot,
                "active": _manifest(active, active) if active else None,
                "installed": [_manifest(m, active) for m in manifests],
            }
        )
    return slots


async def models(request: web.Request) -> web.Response:
    layer = _layer(request)
    return web.json_response({"slots": await layer.run_sync(models_listing, layer)})


SHA256 = "{sha256:[0-9a-f]{64}}"
ROUTES: list[web.RouteDef] = [
    web.get("/v1/admin/whoami", admin_only(whoami)),
    web.get("/v1/admin/characters", admin_only(characters)),
    web.post("/v1/admin/characters/preview", admin_only(preview)),
    web.post("/v1/admin/characters", admin_only(add_character)),
    web.delete("/v1/admin/characters", admin_only(remove_character)),
    web.get(f"/v1/admin/references/{SHA256}.png", admin_only(reference_thumbnail)),
    web.delete(f"/v1/admin/references/{SHA256}", admin_only(remove_reference)),
    web.get("/v1/admin/review", admin_only(review)),
    web.get("/v1/admin/review/{id:[0-9]{1,18}}/crop.png", admin_only(review_crop)),
    web.post("/v1/admin/review/{id:[0-9]{1,18}}/approve", admin_only(approve)),
    web.post("/v1/admin/review/{id:[0-9]{1,18}}/reject", admin_only(reject)),
    web.get("/v1/admin/jobs", admin_only(jobs)),
    web.get("/v1/admin/jobs/{job_id}", admin_only(job)),
    web.post("/v1/admin/jobs/{job_id}/cancel", admin_only(cancel)),
    web.get("/v1/admin/models", admin_only(models)),
]
