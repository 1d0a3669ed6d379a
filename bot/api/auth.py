"""Who is calling the REST API: the bearer tokens (users' ``ANIBOT_API_TOKEN``, admins' ``ANIBOT_API_ADMIN_TOKEN``),
the caller id that rate limits and the one-job lock key on, and the invocations the routes hand the command layer.

An admin is whoever sends the admin token; with no admin token configured nobody is (the admin routes and the web
page's admin pages are off, never open by default)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from aiohttp import web

from bot.invocation import Invocation
from core.chat.store import ChatKind
from core.settings import Settings

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
ADMIN_OFF = "The admin API is off: the server has no ANIBOT_API_ADMIN_TOKEN."
NOT_ADMIN = "This needs the admin token (ANIBOT_API_ADMIN_TOKEN) as the bearer token."


def bearer_token(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ("" when there is none)."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matches(token: str, secret: Any) -> bool:
    return (
        secret is not None
        and bool(token)
        and hmac.compare_digest(token.encode(), secret.get_secret_value().encode())
    )


def is_admin(request: web.Request) -> bool:
    """The caller sent the admin token (always False when the server has none)."""
    return _matches(bearer_token(request), request.app[SETTINGS].api_admin_token)


def is_user(request: web.Request) -> bool:
    """The caller may use the user routes: no user token is required, or it sent it (or the admin token)."""
    settings = request.app[SETTINGS]
    if settings.api_token is None:
        return True
    token = bearer_token(request)
    return _matches(token, settings.api_token) or _matches(token, settings.api_admin_token)


def caller_id(request: web.Request, settings: Settings) -> str:
    """Who is asking, for rate limits and the one-job lock: a digest of the token when the server checks tokens
    (never the token itself: ids reach logs), else the client's address."""
    token = bearer_token(request)
    admin = is_admin(request)
    if token and (settings.api_token is not None or admin):
        prefix = "admin-" if admin else "token-"
        return prefix + hashlib.sha256(token.encode()).hexdigest()[:12]
    return request.remote or "unknown"


def invocation(request: web.Request, **kwargs: Any) -> Invocation:
    """The command layer's view of this request: chat "api", the caller's id, admin rights with the admin token."""
    settings = request.app[SETTINGS]
    return Invocation(
        platform="api",
        chat_id="api",
        user_id=caller_id(request, settings),
        chat_kind=ChatKind.API,
        has_admin_role=is_admin(request),
        **kwargs,
    )


def admin_refusal(request: web.Request) -> web.Response | None:
    """None for an admin; else the 403 to answer (saying whether the admin API is off or the token is wrong)."""
    if is_admin(request):
        return None
    off = request.app[SETTINGS].api_admin_token is None
    body = {
        "error": {"code": "admin_off" if off else "forbidden", "message": ADMIN_OFF if off else NOT_ADMIN}
    }
    return web.Response(text=json.dumps(body), status=403, content_type="application/json")
