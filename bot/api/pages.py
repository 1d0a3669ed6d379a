"""The web page's static files (``bot/web/static``), served by ``anibot api`` under ``/web/``.

The files are listed once, at import, into a fixed allow-list keyed by file name: a request only ever picks an
entry of that list, its path is never joined to a folder. Every answer carries a strict Content-Security-Policy
(scripts and styles from this server only, no inline script; pictures also from ``blob:`` and ``data:``, which the
page uses for the annotated pictures it fetches with the bearer token) and ``Cache-Control: no-cache`` (the
browser revalidates with the ETag, so a new release is picked up at once)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[a-z]+$")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """The allow-list: every plain file directly in ``folder`` with a known type and a plain name."""
    files: dict[str, StaticFile] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not SAFE_NAME.match(path.name) or not path.is_file() or path.is_symlink():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[path.name] = StaticFile(body, content_type, etag)
    return files


STATIC = load_static()


def _not_found() -> web.Response:
    return web.json_response({"error": {"code": "not_found", "message": "No such page."}}, status=404)


def _serve(request: web.Request, name: str) -> web.Response:
    entry = STATIC.get(name)
    if entry is None:
        return _not_found()
    if entry.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        response = web.Response(status=304)
    else:
        response = web.Response(body=entry.body, headers={"Content-Type": entry.content_type})
    response.headers["ETag"] = entry.etag
    response.headers.update(SECURITY_HEADERS)
    return response


async def root(request: web.Request) -> web.Response:
    # answered, not raised: the error middleware turns raised HTTP exceptions into JSON errors
    return web.Response(status=302, headers={"Location": "/web/", "Cache-Control": "no-cache"})


async def index(request: web.Request) -> web.Response:
    return _serve(request, INDEX)


async def static_file(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["name"])


ROUTES: list[web.RouteDef] = [
    web.get("/", root),
    web.get("/web", root),  # typed without its slash
    web.get("/web/", index),
    web.get("/web/{name}", static_file),
]
