"""The REST API through aiohttp's test server, over the real queue (Redis and a worker process)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.api.app import build_app
from bot.api.openapi import openapi_document
from core.synth import render_scene

pytestmark = pytest.mark.queue


def scene_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    render_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


def with_client(stack, test: Callable[[TestClient], Awaitable[None]], **overrides: Any) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        layer = stack.layer(**overrides)
        async with TestClient(TestServer(build_app(layer.settings, layer))) as client:
            await test(client)

    asyncio.run(main())


def form(data: bytes, **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("image", data, filename="scene.png", content_type="image/png")
    for name, value in fields.items():
        body.add_field(name, value)
    return body


def validate(body: Any, path: str, method: str, status: int) -> None:
    """Check a response body against the schema the OpenAPI document gives for it."""
    document = openapi_document(auth=False)
    content = document["paths"][path][method]["responses"][str(status)]["content"]["application/json"]
    schema = {**content["schema"], "components": document["components"]}
    jsonschema.validate(body, schema)


def test_analyze_then_fetch_the_job_and_the_annotated_picture(bot_stack):
    async def test(client: TestClient) -> None:
        response = await client.post("/v1/analyze", data=form(scene_png(5_500_001), top_n="2"))
        assert response.status == 200, await response.text()
        body = await response.json()
        validate(body, "/v1/analyze", "post", 200)
        assert body["result"]["heads"], body
        assert all(len(h["candidates"]) <= 2 for h in body["result"]["heads"])
        job = await client.get(f"/v1/jobs/{body['job_id']}")
        assert job.status == 200
        job_body = await job.json()
        validate(job_body, "/v1/jobs/{job_id}", "get", 200)
        assert (
            job_body["status"] == "done"
            and job_body["result"]["image_sha256"] == body["result"]["image_sha256"]
        )
        png = await client.get(body["annotated_url"])
        assert png.status == 200 and (await png.read()).startswith(b"\x89PNG")

    with_client(bot_stack, test)


def test_refusals_are_json_with_codes(bot_stack):
    async def test(client: TestClient) -> None:
        bad = await client.post("/v1/analyze", data=form(b"this is text, not a picture"))
        assert bad.status == 400
        body = await bad.json()
        validate(body, "/v1/analyze", "post", 400)
        assert body["error"]["code"] == "not_an_image"
        big = await client.post("/v1/analyze", data=form(b"\x89PNG" + b"0" * 300_000))
        assert big.status == 413 and (await big.json())["error"]["code"] == "too_large"
        missing = await client.post("/v1/analyze", data=aiohttp.FormData({"top_n": "3"}))
        assert missing.status == 400 and (await missing.json())["error"]["code"] == "no_image"
        unknown = await client.get("/v1/jobs/0123456789abcdef0123456789abcdef")
        assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_found"

    with_client(bot_stack, test, max_image_bytes=200_000)


def test_rate_limit_answers_429(bot_stack):
    async def test(client: TestClient) -> None:
        first = await client.post("/v1/analyze", data=form(scene_png(5_500_002)))
        assert first.status == 200
        second = await client.post("/v1/analyze", data=form(scene_png(5_500_002)))
        assert second.status == 429 and second.headers["Retry-After"]
        assert (await second.json())["error"]["code"] == "rate_limited"

    # the test client's address is shared by every test: a bucket of its own via a fresh token
    import uuid

    token = uuid.uuid4().hex

    async def authed(client: TestClient) -> None:
        client.session.headers["Authorization"] = f"Bearer {token}"
        await test(client)

    with_client(bot_stack, authed, rate_user_burst=1, rate_user_per_min=0.5, api_token=token)


def test_bearer_token_is_required_when_set(bot_stack):
    async def test(client: TestClient) -> None:
        assert (await client.get("/v1/jobs/abc")).status == 401
        wrong = await client.get("/v1/jobs/abc", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        right = await client.get("/v1/jobs/abc", headers={"Authorization": "Bearer s3cret"})
        assert right.status == 404  # authorised; the job does not exist
        assert (await client.get("/v1/openapi.json")).status == 200  # the description stays open

    with_client(bot_stack, test, api_token="s3cret")


def test_openapi_documents_every_route(bot_stack):
    async def test(client: TestClient) -> None:
        document = await (await client.get("/v1/openapi.json")).json()
        assert document["openapi"].startswith("3.1")
        app = client.server.app
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD"
        }
        documented = {(method, path) for path, methods in document["paths"].items() for method in methods}
        assert routes == documented
        page = await client.get("/v1/docs")
        assert "/v1/analyze" in await page.text()
        health = await client.get("/v1/health")
        assert health.status == 200 and (await health.json())["workers"]["gpu"] >= 1

    with_client(bot_stack, test)
