"""The REST API: the command layer over HTTP (aiohttp). JSON in and out; errors are JSON with a code.

Routes are in ``ROUTES``; their description is ``bot.api.openapi``. The API enforces the same limits as the
bots (rate limits per caller, one running job per caller, the image size checked before it is read).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from bot.api import admin_api, pages, tagging, web_api
from bot.api.auth import SETTINGS, invocation, is_user
from bot.api.openapi import MAX_RECOMMEND, MAX_TOP_N, openapi_document
from bot.api.parts import read_part
from bot.commands.catalog import PAGE as RECOMMEND_PAGE
from bot.invocation import IncomingImage, Invocation
from bot.layer import CommandLayer, new_error_id
from bot.numbers import ascii_int_in
from bot.replies import Reply, ReplyKind
from bot.waiting import WaitOutcome
from core.chat.ratelimit import BucketRule
from core.settings import Settings
from core.storage.jobs import Job, JobStatus
from core.vision.intake import IntakeError, too_many_bytes
from workers.celery_app import TAG_TASK, TASK_QUEUES

log = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("bot.api.access")  # never headers: the bearer token stays out of the logs

LAYER: web.AppKey[CommandLayer] = web.AppKey("layer", CommandLayer)
MULTIPART_SLACK = 64 * 1024  # form boundaries and fields around the image
MAX_FIELDS = 8  # form fields besides the image (only top_n is used)
MAX_PARTS = 16  # form parts in all: more is refused
MAX_FIELD_BYTES = 1024
TRUE_WORDS = ("1", "true", "yes")  # a query flag that is on
OPEN_PATHS = frozenset({"/v1/health", "/v1/openapi.json", "/v1/docs", "/", "/web"})
OPEN_PREFIXES = ("/web/",)  # the web page's static files: no data in them, the page sends the token itself


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# HTTP status of each refusal code (anything else is 400)
STATUS_OF_CODE = {
    "too_large": 413,
    "rate_limited": 429,
    "job_running": 429,
    "unavailable": 503,
    "busy": 503,
    "not_available": 503,
    "forbidden": 403,
    "not_found": 404,
    "ambiguous": 404,
    "expired": 404,
    "timeout": 408,
    "lost": 503,  # the job record went with a Redis that kept nothing: send it again
}


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def reply_response(reply: Reply) -> web.Response:
    """A refusal or an error reply as its JSON error (successes are shaped by each route)."""
    if reply.kind is ReplyKind.ERROR:
        return error_response(500, "internal", reply.text, error_id=reply.error_id)
    code = reply.code or "refused"
    data = reply.data or {}
    extra: dict[str, Any] = {}
    if "retry_after_s" in data:
        extra["retry_after_s"] = int(data["retry_after_s"])
    if data.get("did_you_mean"):
        extra["did_you_mean"] = list(data["did_you_mean"])
    response = error_response(STATUS_OF_CODE.get(code, 400), code, reply.text, **extra)
    if code in ("rate_limited", "job_running"):
        response.headers["Retry-After"] = str(extra.get("retry_after_s", 5))
    return response


@web.middleware
async def errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return error_response(413, "too_large", "The request is too large.")
        if exc.content_type == "application/json":
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        error_id = new_error_id()
        log.exception("error %s in %s %r", error_id, request.method, request.path)  # repr: no forged lines
        return error_response(500, "internal", "Something went wrong on our side.", error_id=error_id)


@web.middleware
async def bearer_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if is_open_path(request.path) or is_user(request):
        return await handler(request)
    log.warning("unauthorised %s %r from %s", request.method, request.path, request.remote)
    response = error_response(401, "unauthorised", "A valid bearer token is required.")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


class UploadTimeout(IntakeError):
    code = "timeout"
    default_message = "The upload was too slow; send the picture again."


class Upload:
    """A multipart form read in order and bounded: the small fields before the ``image`` part at once, the image
    itself only when :meth:`image` is awaited (after the caller passed the rate limits and the one-job check),
    the fields after it last. At most ``MAX_PARTS`` parts; every read must finish within ``timeout_s``."""

    def __init__(self, request: web.Request, limit: int, timeout_s: float) -> None:
        self.request = request
        self.limit = limit
        self.timeout_s = timeout_s
        self.fields: dict[str, str] = {}
        self.filename = "image"
        self._reader: Any = None
        self._part: BodyPartReader | None = None
        self._parts = 0
        self.image_read = False

    async def until_image(self) -> bool:
        """Read up to the image part; False when the form has none (or is no multipart form)."""
        if not self.request.content_type.startswith("multipart/"):
            return False
        async with asyncio.timeout(self.timeout_s):
            self._reader = await self.request.multipart()
            async for part in self._reader:
                if not await self._take(part):
                    return True
        return False

    async def _take(self, part: Any) -> bool:
        """Keep one part; False when it is the image part (left unread)."""
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"error": {"code": "bad_request", "message": f"At most {MAX_PARTS} form parts."}}
                ),
                content_type="application/json",
            )
        if not isinstance(part, BodyPartReader):
            return True  # a nested multipart: not ours
        if part.name == "image" and self._part is None:
            self._part = part
            self.filename = (part.filename or self.filename)[:100]
            return False
        value = await read_part(part, MAX_FIELD_BYTES)  # skipped or kept, always bounded
        if part.name and len(self.fields) < MAX_FIELDS:
            self.fields.setdefault(part.name, value.decode(errors="replace"))
        return True

    async def image(self) -> bytes:
        """The image part's bytes, at most ``limit`` of them, within the read timeout."""
        assert self._part is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                data = await read_part(self._part, self.limit)
        except TimeoutError as exc:
            raise UploadTimeout(detail=f"image part not read within {self.timeout_s} s") from exc
        self.image_read = True
        return data

    async def rest(self) -> None:
        """The fields after the image part (only once the image was read: else the body is left unread)."""
        if not self.image_read or self._reader is None:
            return
        async with asyncio.timeout(self.timeout_s):
            async for part in self._reader:
                await self._take(part)


@dataclass(frozen=True)
class AnalyzeForm:
    """A POST /v1/analyze request read up to its picture: what the layer is handed, and what shapes the answer."""

    upload: Upload
    inv: Invocation
    top_n_text: str
    full_size: bool


async def analyze_form(request: web.Request) -> AnalyzeForm | web.Response:
    """The form up to the image part (the picture itself is read by the layer, after the caller's limits), or
    the error to answer: too large as announced, too slow, no image part, a bad top_n."""
    layer = request.app[LAYER]
    limit = layer.settings.max_image_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        exc = too_many_bytes(request.content_length, limit)
        return error_response(413, exc.code, exc.user_message)
    upload = Upload(request, limit, layer.settings.api_read_timeout_s)
    try:
        found = await upload.until_image()
    except TimeoutError:
        return error_response(408, "timeout", UploadTimeout.default_message)
    if not found:
        return error_response(400, "no_image", "Send the picture as a multipart form part named 'image'.")
    top_n_text = upload.fields.get("top_n", "")
    top_n = ascii_int_in(top_n_text, 1, MAX_TOP_N) if top_n_text else None
    if top_n_text and top_n is None:
        return error_response(400, "bad_request", f"top_n must be a number from 1 to {MAX_TOP_N}.")
    full_size = request.query.get("full_size", "").lower() in TRUE_WORDS
    inv = invocation(
        request, images=(IncomingImage(upload.image, filename=upload.filename),), full_size=full_size
    )
    return AnalyzeForm(upload, inv, top_n_text, full_size)


async def analysis_response(form: AnalyzeForm, reply: Reply) -> web.Response:
    """The answer of POST /v1/analyze to the layer's reply: the analysis (``top_n`` applied), or the refusal."""
    if reply.kind is not ReplyKind.RESULT or not reply.data:
        return reply_response(reply)
    try:
        await form.upload.rest()
    except TimeoutError:
        return error_response(408, "timeout", UploadTimeout.default_message)
    top_n_text = form.top_n_text or form.upload.fields.get("top_n", "")  # a top_n sent after the image
    top_n = ascii_int_in(top_n_text, 1, MAX_TOP_N) if top_n_text else None
    if top_n_text and top_n is None:
        return error_response(400, "bad_request", f"top_n must be a number from 1 to {MAX_TOP_N}.")
    result = reply.data["result"]
    if top_n:
        for head in result["heads"]:
            head["candidates"] = head["candidates"][:top_n]
    job_id = reply.data["job_id"]
    body = {
        "job_id": job_id,
        "cached": bool(reply.data.get("cached")),
        "result": result,
        "sure_threshold": reply.data.get("sure_threshold"),
        "annotated_url": f"/v1/jobs/{job_id}/annotated.jpg",
    }
    if form.full_size:
        body["annotated_png_url"] = f"/v1/jobs/{job_id}/annotated.png"
    return web.json_response(body)


async def analyze(request: web.Request) -> web.Response | web.StreamResponse:
    """The announced length first, then the caller's limits (rate, one job), and only then the picture is read.
    With ``?stream=true`` the answer is NDJSON progress lines ending with the same body (bot.api.web_api)."""
    form = await analyze_form(request)
    if isinstance(form, web.Response):
        return form
    if request.query.get("stream", "").lower() in TRUE_WORDS:
        return await web_api.analyze_stream(request, form)
    layer = request.app[LAYER]
    reply = (await layer.images(form.inv, explicit=True))[0]
    return await analysis_response(form, reply)


async def tag(request: web.Request) -> web.Response:
    """A batch of pictures tagged by a worker as one job; captions with ``anibot tag``'s options (bot.api.tagging).

    The caller's limits first (one token of the user's bucket a request, one job at a time), then the form is
    read, bounded; a picture that is no picture gets its error in its place and is never stored."""
    layer = request.app[LAYER]
    settings = layer.settings
    budget = settings.tag_max_images * (settings.max_image_bytes + MULTIPART_SLACK)
    if request.content_length is not None and request.content_length > budget:
        exc = too_many_bytes(request.content_length, budget)
        return error_response(413, exc.code, exc.user_message)
    inv = invocation(request)
    rule = BucketRule(settings.rate_user_per_min, settings.rate_user_burst)
    decision = await layer.run_sync(layer.buckets.take, f"user:{inv.platform}:{inv.user_id}", rule)
    if not decision.allowed:
        retry = max(1, math.ceil(decision.retry_after_s))
        response = error_response(
            429, "rate_limited", f"Slow down: try again in {decision.retry_after_text}.", retry_after_s=retry
        )
        response.headers["Retry-After"] = str(retry)
        return response
    slot, owner = f"api:tag:{inv.user_id}", uuid.uuid4().hex
    if not await layer.run_sync(layer.active.acquire, slot, owner):
        response = error_response(429, "job_running", "A tagging request of yours is still running.")
        response.headers["Retry-After"] = "5"
        return response
    try:
        try:
            form = await tagging.read_form(request, settings)
            options = tagging.parse_options(form.fields)
        except TimeoutError:
            return error_response(408, "timeout", UploadTimeout.default_message)
        except tagging.BadForm as exc:
            return error_response(exc.status, exc.code, str(exc))
        except IntakeError as exc:  # a part over the size limit: refused as it arrives
            return error_response(STATUS_OF_CODE.get(exc.code, 400), exc.code, exc.user_message)
        refusals = tagging.checked(form.pictures, settings)
        good = [data for (_, data), refused in zip(form.pictures, refusals, strict=True) if refused is None]
        body, job_id = None, ""
        if good:
            job = await layer.run_sync(
                layer.client.submit_task,
                TAG_TASK,
                "tag",
                requester=inv.requester,
                params={"floor": options.floor},
                images=good,
            )
            job_id = job.id
            waited = await layer.waiter.wait(job, TASK_QUEUES[TAG_TASK])
            if waited.outcome is WaitOutcome.UNAVAILABLE:
                return error_response(503, "unavailable", "No worker is running; try again later.")
            if waited.outcome is WaitOutcome.BUSY:
                return error_response(
                    503, "busy", "Too busy to tag these in time; try again later.", job_id=job.id
                )
            if waited.job.status is JobStatus.FAILED:
                error = waited.job.error
                code = error.code if error else "internal"
                return error_response(
                    STATUS_OF_CODE.get(code, 500), code, error.message if error else "Failed."
                )
            body = await layer.run_sync(layer.client.result_json, waited.job)
        implied = tagging.implications(settings.tag_implications) if options.drop_implied else None
        log.info(
            "tagged %d pictures (%d refused) for %s", len(good), len(form.pictures) - len(good), inv.where()
        )
        return web.json_response(tagging.answer_body(job_id, form.pictures, refusals, body, options, implied))
    finally:
        await layer.run_sync(layer.active.release, slot, owner)


async def _job(request: web.Request) -> tuple[CommandLayer, Job]:
    """The job named in the path; only jobs asked for through the API (a chat's jobs stay the chat's)."""
    layer = request.app[LAYER]
    job_id = request.match_info["job_id"]
    job = (
        await layer.run_sync(layer.client.jobs.get, job_id)
        if job_id.isalnum() and len(job_id) <= 64
        else None
    )
    if job is None or job.requester.platform != "api":
        raise web.HTTPNotFound(
            text=json.dumps({"error": {"code": "not_found", "message": "No such job."}}),
            content_type="application/json",
        )
    return layer, job


async def job_status(request: web.Request) -> web.Response:
    layer, job = await _job(request)
    body: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": str(job.status),
        "progress": job.progress,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "error": {"code": job.error.code, "message": job.error.message} if job.error else None,
    }
    if job.status is JobStatus.DONE and job.result:
        try:
            body["result"] = await layer.run_sync(layer.client.result_json, job)
        except KeyError:
            body["result"] = None  # the result blob expired before the job record
        if "reply_image" in job.result:
            body["annotated_url"] = f"/v1/jobs/{job.id}/annotated.jpg"
        if "annotated_png" in job.result:
            body["annotated_png_url"] = f"/v1/jobs/{job.id}/annotated.png"
    return web.json_response(body)


async def _annotated(request: web.Request, key: str, content_type: str, missing: str) -> web.Response:
    layer, job = await _job(request)
    if job.status is not JobStatus.DONE or not job.result or key not in job.result:
        return error_response(404, "not_found", missing)
    try:
        data = await layer.run_sync(layer.client.blobs.get, job.result[key])
    except KeyError:
        return error_response(404, "expired", "The annotated picture has expired.")
    return web.Response(body=data, content_type=content_type)


async def job_annotated(request: web.Request) -> web.Response:
    """The annotated picture as the chats get it: a JPEG of at most ANIBOT_REPLY_IMAGE_MAX_SIDE pixels."""
    return await _annotated(request, "reply_image", "image/jpeg", "This job has no annotated picture (yet).")


async def job_annotated_png(request: web.Request) -> web.Response:
    """The full-size annotated PNG: only for analyses asked for with ``?full_size=true``."""
    return await _annotated(
        request,
        "annotated_png",
        "image/png",
        "This job has no full-size picture: ask for one with POST /v1/analyze?full_size=true.",
    )


def catalog_answer(reply: Reply) -> web.Response:
    """A catalogue command's reply: its answer dict (a plain message when it has none), or the refusal."""
    if reply.kind in (ReplyKind.REFUSAL, ReplyKind.ERROR):
        return reply_response(reply)
    return web.json_response(reply.data if reply.data is not None else {"message": reply.plain_text()})


def _title(request: web.Request) -> str:
    title = " ".join(request.query.get("title", "").split())[:200]
    if not title:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"code": "bad_request", "message": "Give a title: ?title=..."}}),
            content_type="application/json",
        )
    return title


async def recommend(request: web.Request) -> web.Response:
    """``/recommend <title>`` through the layer; pages past the first come from its "More" button."""
    title = _title(request)
    n = ascii_int_in(request.query.get("n", str(RECOMMEND_PAGE)), 1, MAX_RECOMMEND)
    if n is None:
        return error_response(400, "bad_request", f"n must be a number from 1 to {MAX_RECOMMEND}.")
    layer = request.app[LAYER]
    inv = invocation(request, args=title)
    reply = (await layer.command(inv, "recommend"))[0]
    if reply.kind is not ReplyKind.RESULT or reply.data is None:
        return catalog_answer(reply)
    answer = dict(reply.data)
    items = list(answer.get("items") or [])
    while len(items) < n:
        more = next((b for b in reply.buttons if b.action == "recmore"), None)
        if more is None:
            break
        reply = (await layer.button(inv, more.callback_data))[0]
        page = (reply.data or {}).get("items") or [] if reply.kind is ReplyKind.RESULT else []
        if not page:
            break
        items.extend(page)
    answer["items"] = items[:n]
    return web.json_response(answer)


async def anime(request: web.Request) -> web.Response:
    layer = request.app[LAYER]
    return catalog_answer((await layer.command(invocation(request, args=_title(request)), "anime"))[0])


async def health(request: web.Request) -> web.Response:
    layer = request.app[LAYER]
    try:
        redis_ok = await layer.run_sync(layer.kv.ping)
    except Exception as exc:
        log.warning("health: Redis unreachable: %s", exc)
        redis_ok = False
    workers = {}
    if redis_ok:
        workers = dict(
            zip(
                ("gpu", "cpu", "train"),
                await asyncio.gather(*(layer.waiter.workers_for(q) for q in ("gpu", "cpu", "train"))),
                strict=True,
            )
        )
    healthy = redis_ok and workers.get("gpu", 0) > 0
    return web.json_response(
        {"redis": redis_ok, "workers": workers, "healthy": healthy}, status=200 if healthy else 503
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(auth=request.app[SETTINGS].api_token is not None))


async def docs(request: web.Request) -> web.Response:
    document = openapi_document(auth=False)
    rows = "".join(
        f"<li><code>{method.upper()} {html.escape(path)}</code>: {html.escape(spec.get('summary', ''))}</li>"
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    )
    page = (
        "<!doctype html><title>anibot API</title><h1>anibot API</h1>"
        f"<p><a href='/v1/openapi.json'>OpenAPI description</a></p><ul>{rows}</ul>"
    )
    return web.Response(text=page, content_type="text/html")


ROUTES = [
    web.post("/v1/analyze", analyze),
    web.post("/v1/tag", tag),
    web.get("/v1/jobs/{job_id}", job_status),
    web.get("/v1/jobs/{job_id}/annotated.jpg", job_annotated),
    web.get("/v1/jobs/{job_id}/annotated.png", job_annotated_png),
    web.get("/v1/recommend", recommend),
    web.get("/v1/anime", anime),
    web.get("/v1/health", health),
    web.get("/v1/openapi.json", openapi),
    web.get("/v1/docs", docs),
    *web_api.ROUTES,  # what the web page uses besides the routes above (bot/api/web_api.py)
    *admin_api.ROUTES,  # /v1/admin/*: the admin token only (bot/api/admin_api.py)
    *pages.ROUTES,  # the web page's static files (bot/api/pages.py, bot/web/)
]


def build_app(settings: Settings, layer: CommandLayer) -> web.Application:
    app = web.Application(
        middlewares=[errors, bearer_auth], client_max_size=settings.max_image_bytes + MULTIPART_SLACK
    )
    app[SETTINGS] = settings
    app[LAYER] = layer
    app.add_routes(ROUTES)
    return app


def exposure_warning(settings: Settings) -> str | None:
    """What to warn about when the API is open to whoever reaches it (no token, not on loopback)."""
    if settings.api_token is not None or settings.api_host in LOOPBACK_HOSTS:
        return None
    return (
        f"the API listens on {settings.api_host} without ANIBOT_API_TOKEN: anyone who reaches it can use it"
    )


def run(settings: Settings) -> None:
    layer = CommandLayer.from_settings(settings)
    warning = exposure_warning(settings)
    if warning:
        log.warning("%s", warning)
    web.run_app(
        build_app(settings, layer),
        host=settings.api_host,
        port=settings.api_port,
        access_log=ACCESS_LOG,  # aiohttp's format: address, time, request line, status, size, referer, agent
    )
