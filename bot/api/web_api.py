"""The user routes the web page needs besides app.py's: the analysis streamed as NDJSON progress lines, a
correction of a named head ("Wrong? Tell me who"), anime search by name and genre, the genre list, and the
favourites of a browser.

Everything goes through the command layer and its limits: the streamed analysis is the layer's ``images`` (the
buckets and the one-job lock of POST /v1/analyze), a correction is the bots' "wrong" answer, and each catalogue
route costs one token of the caller's command bucket (``layer.throttled``) and runs on a cpu worker
(``ask_catalog``). Rate limits are per caller (``bot.api.auth.caller_id``); the browser id of the favourites
routes only says whose list it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import shlex
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.api.auth import invocation
from bot.commands.analysis import GPU_QUEUE
from bot.commands.catalog import ask_catalog
from bot.invocation import Invocation, no_progress
from bot.numbers import ascii_int_in
from bot.outage import UNREACHABLE_ERRORS
from bot.replies import Reply, ReplyKind
from core.characters.names import BadName, normalise_name
from core.storage.jobs import JobStatus

if TYPE_CHECKING:
    from bot.api.app import AnalyzeForm
    from bot.layer import CommandLayer

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
STATUS_EVERY_S = 1.0  # a status line this often while the analysis waits
JOB_ID = re.compile(r"[0-9a-f]{32}")
MAX_JSON_BYTES = 4096  # a correction's body
MAX_HEAD = 999
BROWSER_HEADER = "X-Anibot-Browser"
BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")
BROWSER_USER_PREFIX = "browser-"  # the favourites' user id of a browser: browser-<its id>, platform "api"
SEARCH_PAGE = 10  # items per search page
MAX_PAGE = 1000
MAX_QUERY_CHARS = 200
MAX_GENRES = 5
MAX_GENRE_CHARS = 60
MAX_ANIME_ID = 2**31 - 1


def _layer(request: web.Request) -> CommandLayer:
    from bot.api.app import LAYER  # app.py imports this module

    return request.app[LAYER]


def _error(status: int, code: str, message: str) -> web.Response:
    from bot.api.app import error_response

    return error_response(status, code, message)


def _refused(reply: Reply) -> web.Response:
    from bot.api.app import reply_response

    return reply_response(reply)


# --- POST /v1/analyze?stream=true -----------------------------------------------------------------------------


async def analyze_stream(request: web.Request, form: AnalyzeForm) -> web.StreamResponse:
    """The layer's analysis of the picture, told as NDJSON lines: ``queued`` (its gpu queue position), ``status``
    about every second while it waits or runs, and one last ``result`` (the body POST /v1/analyze answers) or
    ``error`` line. Answered before anything was queued (a refusal, a cached analysis): a refusal is the plain
    JSON error, an answer a stream of its ``result`` line alone."""
    layer = _layer(request)
    acks: asyncio.Queue[Reply] = asyncio.Queue()

    async def progress(reply: Reply) -> None:
        if reply.kind is ReplyKind.ACK:
            acks.put_nowait(reply)

    task = asyncio.create_task(layer.images(form.inv, progress, explicit=True))
    first_ack = asyncio.create_task(acks.get())
    try:
        await asyncio.wait({task, first_ack}, return_when=asyncio.FIRST_COMPLETED)
        if not first_ack.done():  # nothing was queued
            first_ack.cancel()
            answer = await _answer(form, task)
            if answer.status != 200:
                return answer
            stream = await _open(request)
            if await _send(stream, _line(answer)):
                await stream.write_eof()
            return stream
        ack = first_ack.result()
        data = ack.data or {}
        job_id = next(iter(data.get("job_ids") or []), "")
        position: int | None = int(data.get("queue_position") or 1)
        stream = await _open(request)
        alive = await _send(stream, {"event": "queued", "job_id": job_id, "position": position})
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=STATUS_EVERY_S)
            if done or not alive or not job_id:
                continue  # a client gone away: the analysis is waited for all the same (the one-job lock)
            line, position = await _status(layer, job_id, position)
            if line is not None:
                alive = await _send(stream, line)
        if alive and await _send(stream, await _final(form, task)):
            await stream.write_eof()
        return stream
    finally:
        first_ack.cancel()
        if not task.done():  # the server is stopping
            task.cancel()


async def _open(request: web.Request) -> web.StreamResponse:
    stream = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    stream.content_type = NDJSON
    stream.charset = "utf-8"
    await stream.prepare(request)
    return stream


async def _send(stream: web.StreamResponse, line: dict[str, Any]) -> bool:
    """Write one line now; False when the client has gone."""
    try:
        await stream.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    except ConnectionError as exc:
        log.info("analysis stream: the client went away (%s)", exc)
        return False
    return True


async def _status(
    layer: CommandLayer, job_id: str, position: int | None
) -> tuple[dict[str, Any] | None, int | None]:
    """The job's status line (None once it finished: the final line follows) and its queue position, which
    never grows while it waits (pictures queued after it count in the backlog too)."""
    try:
        job = await layer.run_sync(layer.client.jobs.get, job_id)
        if job is None or job.status.finished:
            return None, position
        if job.status is JobStatus.RUNNING:
            position = None
        else:
            backlog = await layer.waiter.backlog(GPU_QUEUE)
            position = max(1, min(backlog, position or backlog))
    except UNREACHABLE_ERRORS as exc:  # Redis restarting: the layer's own wait rides it out, no line now
        log.warning("analysis stream: status of job %s unknown: %s", job_id, exc)
        return None, position
    stage = (job.detail or {}).get("stage")
    line = {"event": "status", "job_id": job_id, "status": str(job.status), "position": position}
    return {**line, "stage": stage if isinstance(stage, str) else None}, position


async def _answer(form: AnalyzeForm, task: asyncio.Task[list[Reply]]) -> web.Response:
    """What POST /v1/analyze answers to the layer's reply."""
    from bot.api.app import analysis_response

    return await analysis_response(form, (await task)[0])


def _line(answer: web.Response) -> dict[str, Any]:
    """The last line: POST /v1/analyze's body as ``result``, or its error as ``error`` with the HTTP status."""
    body = json.loads(answer.text or "{}")
    if answer.status == 200:
        return {"event": "result", **body}
    return {"event": "error", "status": answer.status, **body}


async def _final(form: AnalyzeForm, task: asyncio.Task[list[Reply]]) -> dict[str, Any]:
    """The last line, once the response has begun (an exception can no longer be a 500: it is a line too)."""
    from bot.layer import new_error_id

    try:
        return _line(await _answer(form, task))
    except Exception:
        error_id = new_error_id()
        log.exception("error %s in the analysis stream (%s)", error_id, form.inv.where())
        message = "Something went wrong on our side."
        return {
            "event": "error",
            "status": 500,
            "error": {"code": "internal", "message": message, "error_id": error_id},
        }


# --- POST /v1/jobs/{job_id}/corrections -------------------------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, read bounded (at most ``MAX_JSON_BYTES``), or the 400/413 to answer."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        return _error(413, "too_large", f"The body may hold at most {MAX_JSON_BYTES} bytes.")
    data = b""
    try:
        async with asyncio.timeout(_layer(request).settings.api_read_timeout_s):
            while len(data) <= MAX_JSON_BYTES:
                chunk = await request.content.read(MAX_JSON_BYTES + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        return _error(408, "timeout", "The request was too slow to arrive; send it again.")
    if len(data) > MAX_JSON_BYTES:
        return _error(413, "too_large", f"The body may hold at most {MAX_JSON_BYTES} bytes.")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past any sense
        return _error(400, "bad_json", 'Send a JSON object, e.g. {"head": 1, "name": "Hatsune Miku"}.')
    if not isinstance(body, dict):
        return _error(400, "bad_json", 'Send a JSON object, e.g. {"head": 1, "name": "Hatsune Miku"}.')
    return body


def _correction_args(body: dict[str, Any]) -> str | web.Response:
    """``"<head> <name> | <series>"``, the answer a user types to "Who is it?", from the body's fields."""
    head = body.get("head", 1)
    if not isinstance(head, int) or isinstance(head, bool) or not 1 <= head <= MAX_HEAD:
        return _error(400, "bad_head", "head must be the number of a head in the picture (1 = the first).")
    name, series = body.get("name"), body.get("series") or ""
    if not isinstance(name, str) or not name.strip():
        return _error(400, "bad_name", 'Give the character\'s name, e.g. "Hatsune Miku".')
    if not isinstance(series, str):
        return _error(400, "bad_name", "series must be text (or left out).")
    try:
        name = normalise_name(name)
        series = normalise_name(series, what="series") if series.strip() else ""
    except BadName as exc:
        return _error(400, "bad_name", str(exc))
    return f"{head} {name}" + (f" | {series}" if series else "")


async def add_correction(request: web.Request) -> web.Response:
    """The bots' "Wrong? Tell me who" answer for an analysis asked for through the API: recorded for review
    (``pending``), or accepted at once when enough people agree (``approved``)."""
    layer = _layer(request)
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    answer = _correction_args(body)
    if isinstance(answer, web.Response):
        return answer
    job_id = request.match_info["job_id"]
    job = await layer.run_sync(layer.client.jobs.get, job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or job.kind != "analyze" or job.requester.platform != "api":
        return _error(404, "not_found", "No such analysis.")
    if job.status is not JobStatus.DONE:
        return _error(409, "not_done", "This analysis has not finished (or it failed): nothing to correct.")
    inv = invocation(request, args=f"{job_id} {answer}")
    correction_given = layer.answers.get("wrong")
    assert correction_given is not None  # bot.commands.analysis registers it
    # one command token, as the bots' "Wrong?" button costs one (their typed answer after it costs none)
    run = layer.throttled(inv, lambda: correction_given(layer, inv, no_progress))
    reply = (await layer.guarded(inv, "answer wrong (api)", run))[0]
    if reply.kind in (ReplyKind.REFUSAL, ReplyKind.ERROR) or not reply.data:
        return _refused(reply)
    return web.json_response({"correction_id": reply.data["correction_id"], "status": reply.data["status"]})


# --- the catalogue: search, genres, favourites ------------------------------------------------------------------


async def _catalog(
    request: web.Request, operation: str, *, owner: Invocation | None = None, **kwargs: Any
) -> dict[str, Any] | web.Response:
    """One catalogue operation on a cpu worker, behind the caller's command bucket (one token), for ``owner``
    (whose list it is: the caller unless said); its answer, or the refusal to answer."""
    layer = _layer(request)
    caller = invocation(request)
    asked = owner or caller

    async def run() -> list[Reply]:
        answer = await ask_catalog(layer, asked, operation, **kwargs)
        return [answer if isinstance(answer, Reply) else Reply(kind=ReplyKind.RESULT, data=answer)]

    reply = (await layer.guarded(caller, f"api catalogue {operation}", layer.throttled(caller, run)))[0]
    if reply.kind is not ReplyKind.RESULT or reply.data is None:
        return _refused(reply)
    return reply.data


def _words(text: str, limit: int) -> str:
    return " ".join(text.split())[:limit]


async def search(request: web.Request) -> web.Response:
    """Anime by name (fuzzy) and genres (every one must hold), a page of ``SEARCH_PAGE`` at a time; neither
    given: the most popular first."""
    query = _words(request.query.get("q", ""), MAX_QUERY_CHARS)
    genres = [_words(g, MAX_GENRE_CHARS) for g in request.query.getall("genre", []) if g.strip()]
    if len(genres) > MAX_GENRES:
        return _error(400, "bad_request", f"At most {MAX_GENRES} genres.")
    page = ascii_int_in(request.query.get("page", "1"), 1, MAX_PAGE)
    if page is None:
        return _error(400, "bad_request", f"page must be a number from 1 to {MAX_PAGE}.")
    filters = " ".join(f"genre:{shlex.quote(g)}" for g in genres)  # /search's syntax: genre:"Slice of Life"
    answer = await _catalog(
        request,
        "search",
        query=" ".join(p for p in (query, filters) if p),
        limit=SEARCH_PAGE,
        offset=(page - 1) * SEARCH_PAGE,
    )
    if isinstance(answer, web.Response):
        return answer
    total = int(answer.get("total") or 0)
    return web.json_response(
        {
            "items": list(answer.get("items") or []),
            "page": page,
            "pages": max(1, math.ceil(total / SEARCH_PAGE)),
            "total": total,
        }
    )


async def genres(request: web.Request) -> web.Response:
    answer = await _catalog(request, "genres")
    if isinstance(answer, web.Response):
        return answer
    return web.json_response({"genres": list(answer.get("genres") or [])})


def _browser(request: web.Request) -> Invocation | web.Response:
    """The invocation whose user is the browser (``browser-<id>`` on platform "api"), or the 400 to answer."""
    browser = request.headers.get(BROWSER_HEADER, "").strip()
    if not BROWSER_ID.fullmatch(browser):
        return _error(
            400,
            "no_browser_id",
            f"Send the header {BROWSER_HEADER}: a random id of 22-64 characters (letters, digits, _ and -) "
            "that this browser keeps.",
        )
    return replace(invocation(request), user_id=BROWSER_USER_PREFIX + browser)


async def _favourites(request: web.Request, op: str) -> web.Response:
    """List, add or remove (by the catalogue's id) the browser's favourites; ``{"items": [...]}`` after it."""
    owner = _browser(request)
    if isinstance(owner, web.Response):
        return owner
    anime_id = None
    if op != "list":
        anime_id = ascii_int_in(request.match_info["anime_id"], 1, MAX_ANIME_ID)
        if anime_id is None:
            return _error(400, "bad_request", "The anime id is a number (an item's id).")
    answer = await _catalog(
        request,
        "favourites",
        owner=owner,
        op=op,
        title=None,
        anime_id=anime_id,
        platform=owner.platform,
        user_id=owner.user_id,
    )
    if isinstance(answer, web.Response):
        return answer
    if answer.get("lookup") == "not_found":
        return _error(404, "not_found", answer.get("message") or "No such anime.")
    body: dict[str, Any] = {"items": list(answer.get("items") or [])}
    if op != "list":
        body["changed"] = bool(answer.get("changed"))
    return web.json_response(body)


async def list_favourites(request: web.Request) -> web.Response:
    return await _favourites(request, "list")


async def add_favourite(request: web.Request) -> web.Response:
    return await _favourites(request, "add")


async def remove_favourite(request: web.Request) -> web.Response:
    return await _favourites(request, "remove")


ROUTES: list[web.RouteDef] = [
    # POST /v1/analyze?stream=true is app.py's route: it hands the form to analyze_stream
    web.post("/v1/jobs/{job_id}/corrections", add_correction),
    web.get("/v1/anime/search", search),
    web.get("/v1/genres", genres),
    web.get("/v1/favourites", list_favourites),
    web.put("/v1/favourites/{anime_id}", add_favourite),
    web.delete("/v1/favourites/{anime_id}", remove_favourite),
]
