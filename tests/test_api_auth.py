"""Who may call the REST API: the users' token, the admins' token, the open paths (no Redis, no worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from bot.api.app import bearer_auth
from bot.api.auth import SETTINGS, admin_refusal, caller_id, invocation
from core.settings import Settings

USER_TOKEN = "user-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def run_app(settings: Settings, test: Callable[[TestClient], Awaitable[None]]) -> None:
    """``test(client)`` against the bearer middleware over three routes: a user route that says who the
    command layer would see, an admin route, and the web page's static path."""

    async def who(request: web.Request) -> web.Response:
        inv = invocation(request)
        return web.json_response({"user_id": inv.user_id, "admin": inv.has_admin_role})

    async def admin(request: web.Request) -> web.Response:
        return admin_refusal(request) or web.json_response({"admin": True})

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="page")

    async def main() -> None:
        app = web.Application(middlewares=[bearer_auth])
        app[SETTINGS] = settings
        app.add_routes([web.get("/v1/who", who), web.get("/v1/admin/x", admin), web.get("/web/x", page)])
        async with TestClient(TestServer(app)) as client:
            await test(client)

    asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_admin_token_makes_an_admin_and_passes_where_the_user_token_does():
    async def test(client: TestClient) -> None:
        assert (await client.get("/v1/who")).status == 401
        user = await (await client.get("/v1/who", headers=bearer(USER_TOKEN))).json()
        assert user["admin"] is False and user["user_id"].startswith("token-")
        admin = await (await client.get("/v1/who", headers=bearer(ADMIN_TOKEN))).json()
        assert admin["admin"] is True and admin["user_id"].startswith("admin-")
        assert ADMIN_TOKEN not in admin["user_id"] and USER_TOKEN not in user["user_id"]
        refused = await client.get("/v1/admin/x", headers=bearer(USER_TOKEN))
        assert refused.status == 403 and (await refused.json())["error"]["code"] == "forbidden"
        assert (await client.get("/v1/admin/x", headers=bearer(ADMIN_TOKEN))).status == 200
        assert (await client.get("/web/x")).status == 200  # static files need no token

    run_app(Settings(_env_file=None, api_token=USER_TOKEN, api_admin_token=ADMIN_TOKEN), test)


def test_without_an_admin_token_nobody_is_an_admin():
    async def test(client: TestClient) -> None:
        for headers in ({}, bearer(ADMIN_TOKEN), bearer("")):
            refused = await client.get("/v1/admin/x", headers=headers)
            assert refused.status == 403
            assert (await refused.json())["error"]["code"] == "admin_off"
            who = await (await client.get("/v1/who", headers=headers)).json()
            assert who["admin"] is False and who["user_id"] == "127.0.0.1"  # no tokens: the address

    run_app(Settings(_env_file=None), test)


def test_an_admin_token_alone_leaves_the_user_routes_open():
    async def test(client: TestClient) -> None:
        assert (await client.get("/v1/who")).status == 200
        wrong = await client.get("/v1/admin/x", headers=bearer("not-the-admin-token-at-all"))
        assert wrong.status == 403 and (await wrong.json())["error"]["code"] == "forbidden"
        assert (await client.get("/v1/admin/x", headers=bearer(ADMIN_TOKEN))).status == 200

    run_app(Settings(_env_file=None, api_admin_token=ADMIN_TOKEN), test)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_admin_token": "short"}, "ANIBOT_API_ADMIN_TOKEN must be at least 16"),
        ({"api_token": USER_TOKEN, "api_admin_token": USER_TOKEN}, "must differ from ANIBOT_API_TOKEN"),
    ],
)
def test_a_weak_admin_token_is_refused(values: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **values)


def test_a_blank_admin_token_means_the_admin_api_is_off(monkeypatch):
    monkeypatch.setenv("ANIBOT_API_ADMIN_TOKEN", "  ")
    assert Settings(_env_file=None).api_admin_token is None


def test_caller_ids_never_hold_the_token():
    settings = Settings(_env_file=None, api_token=USER_TOKEN, api_admin_token=ADMIN_TOKEN)

    class Request:  # what caller_id reads
        def __init__(self, token: str) -> None:
            self.headers = bearer(token)
            self.remote = "10.0.0.7"
            self.app = {SETTINGS: settings}

    ids = {caller_id(Request(t), settings) for t in (USER_TOKEN, ADMIN_TOKEN)}  # type: ignore[arg-type]
    assert len(ids) == 2 and all(USER_TOKEN not in i and ADMIN_TOKEN not in i for i in ids)
