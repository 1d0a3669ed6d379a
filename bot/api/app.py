"""The REST API: the command layer over HTTP (aiohttp). JSON in and out; errors are JSON with a code.

Routes are in ``ROUTES``; their description is ``bot.api.openapi``. The API enforces the same limits as the
bots (rate limits per caller, one running job per caller, the image size checked before it is read).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.api.openapi import openapi_document
from bot.invocation import IncomingImage, Invocation
from bot.layer import CommandLayer, new_error_id
from bot.replies import Reply, ReplyKind
from core.chat_store import ChatKind
from core.intake import IntakeError, too_many_bytes
from core.jobs import JobStatus
from core.settings import Settings

log = logging.getLogger(__name__)

LAYER: web.AppKey[CommandLayer] = web.AppKey("layer", CommandLayer)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MULTIPART_SLACK = 64 * 1024  # form boundaries and fields around the image
OPEN_PATHS = frozenset({"/v1/health", "/v1/openapi.json", "/v1/docs"})

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
}


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def reply_response(reply: Reply) -> web.Response:
    """A refusal or an error reply as its JSON error (successes are shaped by each route)."""
    if reply.kind is ReplyKind.ERROR:
        return error_response(500, "internal", reply.text, error_id=reply.error_id)
    code = reply.code or "refused"
    response = error_response(
        STATUS_OF_CODE.get(code, 400), code, reply.text, **({"data": reply.data} if reply.data else {})
    )
    if code == "rate_limited":
        response.headers["Retry-After"] = "60"
    return response


def caller_id(request: web.Request, settings: Settings) -> str:
    """Who is asking, for rate limits: the token's digest when there is one, else the client address."""
    header = request.headers.get("Authorization", "")
    if settings.api_token is not None and header:
        return "token-" + hashlib.sha256(header.encode()).hexdigest()[:12]
    return request.remote or "unknown"


def invocation(request: web.Request, **kwargs: Any) -> Invocation:
    settings = request.app[SETTINGS]
    return Invocation(
        platform="api", chat_id="api", user_id=caller_id(request, settings), chat_kind=ChatKind.API, **kwargs
    )


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
        log.exception("error %s in %s %s", error_id, request.method, request.path)
        return error_response(500, "internal", "Something went wrong on our side.", error_id=error_id)


@web.middleware
async def bearer_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[SETTINGS].api_token
    if token is not None and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            log.warning("unauthorised %s %s from %s", request.method, request.path, request.remote)
            return error_response(401, "unauthorised", "A valid bearer token is required.")
    return await handler(request)


async def read_image(request: web.Request, limit: int) -> tuple[bytes | None, dict[str, str]]:
    """The multipart ``image`` part (read at most ``limit`` bytes) and the other small fields."""
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise too_many_bytes(request.content_length, limit)
    data: bytes | None = None
    fields: dict[str, str] = {}
    if not request.content_type.startswith("multipart/"):
        return data, fields
    reader = await request.multipart()
    async for part in reader:
        if part.name == "image":
            chunks = bytearray()
            while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
                chunks.extend(chunk)
                if len(chunks) > limit:
                    raise too_many_bytes(len(chunks), limit)
            data = bytes(chunks)
        elif part.name:
            fields[part.name] = (await part.text())[:100]  # type: ignore[union-attr]
    return data, fields


async def analyze(request: web.Request) -> web.Response:
    layer = request.app[LAYER]
    limit = layer.settings.max_image_bytes
    try:
        data, fields = await read_image(request, limit)
    except IntakeError as exc:  # too large: refused before the rest is read
        return error_response(STATUS_OF_CODE.get(exc.code, 400), exc.code, exc.user_message)
    if data is None:
        return error_response(400, "no_image", "Send the picture as a multipart form part named 'image'.")
    top_n = fields.get("top_n", "")
    if top_n and (not top_n.isdigit() or not 1 <= int(top_n) <= 50):
        return error_response(400, "bad_request", "top_n must be a number from 1 to 50.")

    async def fetch() -> bytes:
        return data

    inv = invocation(request, images=(IncomingImage(fetch, size=len(data), filename="image"),))
    replies = await layer.images(inv, explicit=True)
    reply = replies[0]
    if reply.kind is not ReplyKind.RESULT or not reply.data:
        return reply_response(reply)
    result = reply.data["result"]
    if top_n:
        for head in result["heads"]:
            head["candidates"] = head["candidates"][: int(top_n)]
    job_id = reply.data["job_id"]
    return web.json_response(
        {
            "job_id": job_id,
            "cached": "cached" in reply.footer,
            "result": result,
            "annotated_url": f"/v1/jobs/{job_id}/annotated.png",
        }
    )


async def _job(request: web.Request):  # type: ignore[no-untyped-def]
    layer = request.app[LAYER]
    job_id = request.match_info["job_id"]
    job = (
        await layer.run_sync(layer.client.jobs.get, job_id)
        if job_id.isalnum() and len(job_id) <= 64
        else None
    )
    if job is None:
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
        if "annotated_png" in job.result:
            body["annotated_url"] = f"/v1/jobs/{job.id}/annotated.png"
    return web.json_response(body)


async def job_annotated(request: web.Request) -> web.Response:
    layer, job = await _job(request)
    if job.status is not JobStatus.DONE or not job.result or "annotated_png" not in job.result:
        return error_response(404, "not_found", "This job has no annotated picture (yet).")
    try:
        png = await layer.run_sync(layer.client.blobs.get, job.result["annotated_png"])
    except KeyError:
        return error_response(404, "expired", "The annotated picture has expired.")
    return web.Response(body=png, content_type="image/png")


def _catalog_route(command: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        title = request.query.get("title", "").strip()
        if not title:
            return error_response(400, "bad_request", "Give a title: ?title=...")
        layer = request.app[LAYER]
        reply = (await layer.command(invocation(request, args=title[:200]), command))[0]
        if reply.kind is not ReplyKind.RESULT:
            return reply_response(reply)
        return web.json_response(reply.data or {})

    return route


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
    web.get("/v1/jobs/{job_id}", job_status),
    web.get("/v1/jobs/{job_id}/annotated.png", job_annotated),
    web.get("/v1/recommend", _catalog_route("recommend")),
    web.get("/v1/anime", _catalog_route("anime")),
    web.get("/v1/health", health),
    web.get("/v1/openapi.json", openapi),
    web.get("/v1/docs", docs),
]


def build_app(settings: Settings, layer: CommandLayer) -> web.Application:
    app = web.Application(
        middlewares=[errors, bearer_auth], client_max_size=settings.max_image_bytes + MULTIPART_SLACK
    )
    app[SETTINGS] = settings
    app[LAYER] = layer
    app.add_routes(ROUTES)
    return app


def run(settings: Settings) -> None:
    layer = CommandLayer.from_settings(settings)
    if settings.api_token is None and settings.api_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the API listens on %s without ANIBOT_API_TOKEN: anyone who reaches it can use it",
            settings.api_host,
        )
    web.run_app(build_app(settings, layer), host=settings.api_host, port=settings.api_port, access_log=log)
