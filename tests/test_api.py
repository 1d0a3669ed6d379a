"""The REST API through aiohttp's test server, over the real queue (Redis and a worker process)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema.validators import Draft202012Validator
from PIL import Image

from bot.api.app import build_app
from bot.api.openapi import openapi_document
from bot.replies import Button, Reply, ReplyKind
from core.datasets.synth import render_scene
from core.storage.jobs import Requester

pytestmark = pytest.mark.queue

# every test but the rate-limit one gets room: they share the client address 127.0.0.1 and the chat "api"
ROOMY = {
    "rate_user_burst": 100,
    "rate_user_per_min": 600.0,
    "rate_chat_burst": 100,
    "rate_chat_per_min": 600.0,
    "rate_command_burst": 100,
    "rate_command_per_min": 600.0,
}
SMALL_LIMIT = 200_000
API_TOKEN = "test-token-0123456789abcdef"


def scene_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    render_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


def with_client(stack, test: Callable[[TestClient, Any], Awaitable[None]], **overrides: Any) -> None:  # type: ignore[no-untyped-def]
    """Run ``test(client, layer)`` against the app over ``stack.layer(**ROOMY, **overrides)``."""

    async def main() -> None:
        layer = stack.layer(**{**ROOMY, **overrides})
        async with TestClient(TestServer(build_app(layer.settings, layer))) as client:
            await test(client, layer)

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
    jsonschema.validate(body, schema, cls=Draft202012Validator)


async def expect_error(
    response: aiohttp.ClientResponse, status: int, code: str, path: str, method: str
) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    validate(body, path, method, status)
    assert body["error"]["code"] == code, body
    return body


def test_analyze_then_fetch_the_job_and_the_annotated_picture(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        png = scene_png(5_500_001)
        response = await client.post("/v1/analyze", data=form(png, top_n="2"))
        assert response.status == 200, await response.text()
        body = await response.json()
        validate(body, "/v1/analyze", "post", 200)
        assert body["result"]["heads"], body
        assert body["result"]["image_sha256"] == hashlib.sha256(png).hexdigest()
        assert all(len(h["candidates"]) <= 2 for h in body["result"]["heads"])
        assert body["annotated_url"] == f"/v1/jobs/{body['job_id']}/annotated.jpg"
        assert "annotated_png_url" not in body  # the full-size PNG only on request

        job = await client.get(f"/v1/jobs/{body['job_id']}")
        assert job.status == 200
        job_body = await job.json()
        validate(job_body, "/v1/jobs/{job_id}", "get", 200)
        assert job_body["status"] == "done" and job_body["progress"] == 1.0
        assert job_body["result"]["image_sha256"] == body["result"]["image_sha256"]
        assert job_body["annotated_url"] == body["annotated_url"]

        annotated = await client.get(body["annotated_url"])
        assert annotated.status == 200 and annotated.content_type == "image/jpeg"
        assert (await annotated.read()).startswith(b"\xff\xd8\xff")
        no_full = await client.get(f"/v1/jobs/{body['job_id']}/annotated.png")
        await expect_error(no_full, 404, "not_found", "/v1/jobs/{job_id}/annotated.png", "get")

        again = await (await client.post("/v1/analyze", data=form(png))).json()
        assert again["cached"] is True and again["job_id"] != body["job_id"]

        # on request, the full-size annotated PNG too (drawn by a worker: never answered by the front-end's cache)
        full = await (await client.post("/v1/analyze?full_size=true", data=form(png))).json()
        assert full["annotated_png_url"] == f"/v1/jobs/{full['job_id']}/annotated.png"
        full_png = await client.get(full["annotated_png_url"])
        assert full_png.status == 200 and full_png.content_type == "image/png"
        with Image.open(io.BytesIO(await full_png.read())) as drawn, Image.open(io.BytesIO(png)) as posted:
            assert drawn.size == posted.size

    with_client(bot_stack, test)


def test_refusals_are_json_with_codes(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        path = "/v1/analyze"
        await expect_error(
            await client.post(path, data=form(b"this is text, not a picture")),
            400,
            "not_an_image",
            path,
            "post",
        )
        missing = await client.post(path, data=aiohttp.FormData({"top_n": "3"}))
        await expect_error(missing, 400, "no_image", path, "post")
        bad_top_n = await client.post(path, data=form(scene_png(5_500_003), top_n="many"))
        await expect_error(bad_top_n, 400, "bad_request", path, "post")
        unknown = await client.get("/v1/jobs/0123456789abcdef0123456789abcdef")
        await expect_error(unknown, 404, "not_found", "/v1/jobs/{job_id}", "get")
        no_png = await client.get("/v1/jobs/0123456789abcdef0123456789abcdef/annotated.png")
        await expect_error(no_png, 404, "not_found", "/v1/jobs/{job_id}/annotated.png", "get")
        # a chat's job is not the API's to show, even by its id
        chat_job = await asyncio.to_thread(
            layer.client.jobs.create, "analyze", Requester("telegram", "1", "2"), {"image": "x"}
        )
        await expect_error(
            await client.get(f"/v1/jobs/{chat_job.id}"), 404, "not_found", "/v1/jobs/{job_id}", "get"
        )
        nowhere = await client.get("/v1/nowhere")
        assert nowhere.status == 404 and (await nowhere.json())["error"]["code"] == "not_found"
        wrong_method = await client.get(path)
        assert wrong_method.status == 405 and "error" in await wrong_method.json()

    with_client(bot_stack, test)


def test_too_large_is_refused_before_the_worker_sees_it(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        path = "/v1/analyze"
        far_too_big = b"\x89PNG" + uuid.uuid4().bytes + b"0" * 400_000  # refused on Content-Length
        just_too_big = b"\x89PNG" + uuid.uuid4().bytes + b"1" * (SMALL_LIMIT + 10_000)  # refused while read
        for payload in (far_too_big, just_too_big):
            await expect_error(await client.post(path, data=form(payload)), 413, "too_large", path, "post")
        # a chunked upload announces no length: counted as it arrives
        boundary = "anibotboundary"
        chunked_payload = b"\x89PNG" + uuid.uuid4().bytes + b"2" * (SMALL_LIMIT + 10_000)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            for start in range(0, len(chunked_payload), 50_000):
                yield chunked_payload[start : start + 50_000]
            yield f"\r\n--{boundary}--\r\n".encode()

        chunked = await client.post(
            path, data=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        await expect_error(chunked, 413, "too_large", path, "post")
        for payload in (far_too_big, just_too_big, chunked_payload):
            stored = await asyncio.to_thread(layer.client.blobs.exists, hashlib.sha256(payload).hexdigest())
            assert not stored, "a refused upload reached the blob store (and so the queue)"

    with_client(bot_stack, test, max_image_bytes=SMALL_LIMIT)


def test_rate_limit_answers_429(bot_stack):
    token = uuid.uuid4().hex  # a bucket of its own: the caller is the token, not the shared test address

    async def test(client: TestClient, layer: Any) -> None:
        client.session.headers["Authorization"] = f"Bearer {token}"
        first = await client.post("/v1/analyze", data=form(scene_png(5_500_002)))
        assert first.status == 200, await first.text()
        second = await client.post("/v1/analyze", data=form(scene_png(5_500_002)))
        body = await expect_error(second, 429, "rate_limited", "/v1/analyze", "post")
        assert int(second.headers["Retry-After"]) == body["error"]["retry_after_s"] >= 1

    with_client(bot_stack, test, rate_user_burst=1, rate_user_per_min=0.5, api_token=token)


def test_bearer_token_is_required_when_set(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        job_path = "/v1/jobs/0123456789abcdef0123456789abcdef"
        wrong = (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": API_TOKEN},
            {"Authorization": "Bearer"},
        )
        for headers in wrong:
            refused = await client.get(job_path, headers=headers)
            await expect_error(refused, 401, "unauthorised", "/v1/jobs/{job_id}", "get")
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        refused = await client.post("/v1/analyze", data=form(scene_png(5_500_004)))
        await expect_error(refused, 401, "unauthorised", "/v1/analyze", "post")
        right = await client.get(job_path, headers={"Authorization": f"Bearer {API_TOKEN}"})
        await expect_error(right, 404, "not_found", "/v1/jobs/{job_id}", "get")  # authorised; no such job
        document = await client.get("/v1/openapi.json")  # the description and health stay open
        assert document.status == 200 and (await document.json())["security"] == [{"bearer": []}]
        assert (await client.get("/v1/health")).status in (200, 503)

    with_client(bot_stack, test, api_token=API_TOKEN)


def test_unicode_digits_are_a_bad_request_and_paths_cannot_forge_log_lines(bot_stack, caplog):
    async def test(client: TestClient, layer: Any) -> None:
        # "²".isdigit() is true but int("²") fails: these were 500s
        client.session.headers["Authorization"] = f"Bearer {API_TOKEN}"
        recommend = await client.get("/v1/recommend", params={"title": "Naruto", "n": "²"})
        await expect_error(recommend, 400, "bad_request", "/v1/recommend", "get")
        analyze = await client.post("/v1/analyze", data=form(scene_png(5_500_007), top_n="²"))
        await expect_error(analyze, 400, "bad_request", "/v1/analyze", "post")
        del client.session.headers["Authorization"]
        forged = await client.get("/v1/jobs/x%0A2026-01-01 INFO forged line")  # no token: logged
        assert forged.status == 401
        [record] = [r for r in caplog.records if r.getMessage().startswith("unauthorised")]
        assert "\n" not in record.getMessage() and "\\n" in record.getMessage()

    with_client(bot_stack, test, api_token=API_TOKEN)


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_token_means_no_token_and_a_short_one_is_refused(blank, monkeypatch):
    """``ANIBOT_API_TOKEN=`` once made an empty token that an empty bearer header matched, while the document
    advertised bearer auth and the warning for non-loopback hosts stayed quiet."""
    from pydantic import ValidationError

    from bot.api.app import exposure_warning
    from core.settings import Settings

    monkeypatch.setenv("ANIBOT_API_TOKEN", blank)
    settings = Settings(_env_file=None, api_host="0.0.0.0")
    assert settings.api_token is None
    assert openapi_document(auth=settings.api_token is not None)["security"] == []
    assert "without ANIBOT_API_TOKEN" in (exposure_warning(settings) or "")
    assert exposure_warning(Settings(_env_file=None, api_host="127.0.0.1")) is None
    assert exposure_warning(Settings(_env_file=None, api_host="0.0.0.0", api_token=API_TOKEN)) is None
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(_env_file=None, api_token="s3cret")


def test_catalogue_routes(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        await expect_error(await client.get("/v1/recommend"), 400, "bad_request", "/v1/recommend", "get")
        await expect_error(
            await client.get("/v1/recommend", params={"title": "Naruto", "n": "0"}),
            400,
            "bad_request",
            "/v1/recommend",
            "get",
        )
        await expect_error(await client.get("/v1/anime"), 400, "bad_request", "/v1/anime", "get")
        for path in ("/v1/recommend", "/v1/anime"):
            response = await client.get(path, params={"title": "Cowboy Bebop", "n": "7"})
            body = await response.json()
            # the catalogue (core.catalog) may not be on this worker yet: then it says so
            assert response.status in (200, 404, 503), body
            validate(body, path, "get", response.status)
            if response.status == 503:
                assert body["error"]["code"] == "not_available"
            elif path == "/v1/recommend" and response.status == 200:
                assert len(body.get("items") or []) <= 7

    with_client(bot_stack, test)


def test_openapi_documents_every_route(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        document = await (await client.get("/v1/openapi.json")).json()
        assert document["openapi"].startswith("3.1") and document["security"] == []
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in client.server.app.router.routes()
            if route.method != "HEAD"
            and route.resource is not None
            and route.resource.canonical.startswith("/v1/")  # the web page's static files are no API
        }
        documented = {(method, path) for path, methods in document["paths"].items() for method in methods}
        assert routes == documented
        for schema in document["components"]["schemas"].values():
            Draft202012Validator.check_schema(schema)
        for method, path in sorted(documented):
            operation = document["paths"][path][method]
            assert operation["summary"] and {"200", "202"} & set(operation["responses"])  # 202: a job queued
            for name in (p["name"] for p in operation.get("parameters", []) if p["in"] == "path"):
                assert "{" + name + "}" in path
        assert set(_refs(document)) <= {
            f"#/components/schemas/{name}" for name in document["components"]["schemas"]
        }

        page = await client.get("/v1/docs")
        text = await page.text()
        assert page.content_type == "text/html" and all(path in text for path in document["paths"])
        health = await client.get("/v1/health")
        body = await health.json()
        validate(body, "/v1/health", "get", health.status)
        assert health.status == 200 and body["redis"] and body["workers"]["gpu"] >= 1

    with_client(bot_stack, test)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


class PagedCatalogue:
    """A stand-in command layer for /recommend alone: ``total`` items, served a page at a time like the
    real command (a "More" button carries the next offset)."""

    def __init__(self, total: int) -> None:
        from core.settings import Settings

        self.settings = Settings(api_token=None)
        self.total = total
        self.calls: list[str] = []

    def page(self, offset: int) -> Reply:
        items = [{"title": f"Anime {i}"} for i in range(offset, min(offset + 5, self.total))]
        return Reply(
            kind=ReplyKind.RESULT,
            buttons=(Button("More", "recmore", f"{offset + 5}:k"),),
            data={"matched": {"title": "Cowboy Bebop"}, "items": items},
        )

    async def command(self, inv: Any, name: str, progress: Any = None) -> list[Reply]:
        assert (name, inv.args, inv.platform) == ("recommend", "Cowboy Bebop", "api")
        self.calls.append("command")
        return [self.page(0)]

    async def button(self, inv: Any, data: str, progress: Any = None) -> list[Reply]:
        self.calls.append(data)
        return [self.page(int(data.split(":")[1]))]


@pytest.mark.parametrize(("total", "n", "expected", "calls"), [(30, 3, 3, 1), (30, 12, 12, 3), (8, 25, 8, 3)])
def test_recommend_pages_through_the_more_button(total: int, n: int, expected: int, calls: int):
    async def main() -> None:
        layer = PagedCatalogue(total)
        async with TestClient(TestServer(build_app(layer.settings, layer))) as client:  # type: ignore[arg-type]
            response = await client.get("/v1/recommend", params={"title": "Cowboy  Bebop", "n": str(n)})
            body = await response.json()
            assert response.status == 200, body
            validate(body, "/v1/recommend", "get", 200)
            assert [item["title"] for item in body["items"]] == [f"Anime {i}" for i in range(expected)]
            assert len(layer.calls) == calls and layer.calls[1:] == [
                f"recmore:{5 * i}:k" for i in range(1, calls)
            ]

    asyncio.run(main())


def test_an_unexpected_exception_is_a_json_500_with_a_logged_error_id(caplog: pytest.LogCaptureFixture):
    class Broken(PagedCatalogue):
        async def command(self, inv: Any, name: str, progress: Any = None) -> list[Reply]:
            raise RuntimeError("boom")

    async def main() -> None:
        layer = Broken(0)
        async with TestClient(TestServer(build_app(layer.settings, layer))) as client:  # type: ignore[arg-type]
            response = await client.get("/v1/recommend", params={"title": "Cowboy Bebop"})
            body = await expect_error(response, 500, "internal", "/v1/recommend", "get")
            logged = [r for r in caplog.records if body["error"]["error_id"] in r.getMessage()]
            assert logged and logged[0].exc_info and "GET '/v1/recommend'" in logged[0].getMessage()  # repr

    asyncio.run(main())


def test_no_worker_means_503_unavailable_and_unhealthy(bot_stack):
    from tests.conftest import IDLE_REDIS_URL

    async def test(client: TestClient, layer: Any) -> None:
        health = await client.get("/v1/health")
        body = await health.json()
        validate(body, "/v1/health", "get", 503)
        assert health.status == 503 and body["redis"] and body["workers"]["gpu"] == 0 and not body["healthy"]
        refused = await client.post("/v1/analyze", data=form(scene_png(5_500_005)))
        await expect_error(refused, 503, "unavailable", "/v1/analyze", "post")

    with_client(bot_stack, test, redis_url=IDLE_REDIS_URL, unavailable_after_s=1.0)


BOUNDARY = "anibotboundary"


def stalled_upload(head: bytes, release: asyncio.Event):  # type: ignore[no-untyped-def]
    """A multipart body that sends ``head`` (the image part begun) and then stalls until ``release`` is set."""

    async def body():  # type: ignore[no-untyped-def]
        yield head
        await release.wait()
        yield b"\r\n--" + BOUNDARY.encode() + b"--\r\n"

    return body()


def image_part_head(data: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data


def test_limits_are_checked_before_the_upload_is_read(bot_stack):
    """The one-job check (and the rate limit before it) answers while the picture is still arriving; a stalled
    upload gets 408 after the read timeout; a form of too many parts is refused."""
    token = "api-token-" + uuid.uuid4().hex

    async def test(client: TestClient, layer: Any) -> None:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        }
        caller = "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]
        slot = f"api:api:{caller}"
        release = asyncio.Event()
        assert await asyncio.to_thread(layer.active.acquire, slot, "another-request")
        body = stalled_upload(image_part_head(scene_png(5_500_021)[:1000]), release)
        response = await asyncio.wait_for(client.post("/v1/analyze", data=body, headers=headers), 20)
        await expect_error(response, 429, "job_running", "/v1/analyze", "post")  # the picture never finished
        release.set()
        await asyncio.to_thread(layer.active.release, slot, "another-request")

        # the picture's bytes stop coming: 408 after the read timeout, and the caller's one-job lock is free again
        stuck = asyncio.Event()
        slow = stalled_upload(image_part_head(scene_png(5_500_022)[:1000]), stuck)
        timed_out = await asyncio.wait_for(client.post("/v1/analyze", data=slow, headers=headers), 20)
        assert timed_out.status == 408, await timed_out.text()
        assert (await timed_out.json())["error"]["code"] == "timeout"
        stuck.set()
        assert await asyncio.to_thread(layer.active.holder, slot) is None

        many = aiohttp.FormData()
        for i in range(20):
            many.add_field(f"f{i}", "x")
        many.add_field("image", scene_png(5_500_023), filename="a.png", content_type="image/png")
        refused = await client.post("/v1/analyze", data=many, headers={"Authorization": f"Bearer {token}"})
        await expect_error(refused, 400, "bad_request", "/v1/analyze", "post")

    with_client(bot_stack, test, api_token=token, api_read_timeout_s=1.0)


# --- POST /v1/tag: a batch of pictures captioned as `anibot tag` does ------------------------------------------


def tag_form(pictures: list[tuple[str, bytes]], **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    for name, data in pictures:
        body.add_field("image", data, filename=name, content_type="image/png")
    for name, value in fields.items():
        body.add_field(name, value)
    return body


def test_tag_route_captions_a_batch_as_the_command_does(bot_stack):
    from core.settings import Settings
    from core.tagging.captions import CaptionOptions, caption_text, select_tags
    from core.tagging.implications import Implications
    from core.tagging.runner import tag_blobs
    from core.vision.slots.registry import active_manifest, load_slot

    settings = Settings(models_dir=bot_stack.settings().models_dir)
    tagger = load_slot(active_manifest(settings.models_dir, "tagger"), settings)
    pictures = [
        ("a.png", scene_png(5_600_001)),
        ("broken.png", b"not a picture"),
        ("b.png", scene_png(5_600_002)),
    ]
    options = CaptionOptions(max_tags=6, underscores="keep", exclude=("solo",), rating=False, general=0.3)
    expected = [
        caption_text(select_tags(scores, options, Implications.load()), options)
        for scores in tag_blobs(
            tagger, [pictures[0][1], pictures[2][1]], options.floor, max_bytes=10**8, max_pixels=10**8
        )
    ]

    async def test(client: TestClient, layer: Any) -> None:
        fields = {
            "max_tags": "6",
            "underscores": "keep",
            "exclude": "solo",
            "rating": "false",
            "general": "0.3",
        }
        response = await client.post("/v1/tag", data=tag_form(pictures, **fields))
        assert response.status == 200, await response.text()
        body = await response.json()
        validate(body, "/v1/tag", "post", 200)
        assert body["model"] == tagger.version and body["job_id"]
        first, broken, second = body["pictures"]
        assert [first["caption"], second["caption"]] == expected
        assert first["filename"] == "a.png" and first["sha256"] == hashlib.sha256(pictures[0][1]).hexdigest()
        assert (
            len(first["tags"]) <= 6 and "solo" not in first["caption"].split(", ") and first["rating"] is None
        )
        assert broken["error"]["code"] == "not_an_image" and "caption" not in broken

    with_client(bot_stack, test)


def test_tag_route_limits(bot_stack):
    token = uuid.uuid4().hex  # a bucket of its own

    async def test(client: TestClient, layer: Any) -> None:
        client.session.headers["Authorization"] = f"Bearer {token}"
        picture = ("a.png", scene_png(5_600_003))
        too_many = await client.post("/v1/tag", data=tag_form([picture] * 3))
        await expect_error(too_many, 400, "too_many_images", "/v1/tag", "post")
        bad = await client.post("/v1/tag", data=tag_form([picture], general="2"))
        assert (
            "general" in (await expect_error(bad, 400, "bad_request", "/v1/tag", "post"))["error"]["message"]
        )
        unknown = await client.post("/v1/tag", data=tag_form([picture], thresh="0.5"))
        await expect_error(unknown, 400, "bad_request", "/v1/tag", "post")
        none = await client.post("/v1/tag", data=tag_form([], general="0.5"))
        await expect_error(none, 400, "no_image", "/v1/tag", "post")
        big = await client.post(
            "/v1/tag", data=tag_form([("big.png", b"\x89PNG" + b"0" * (SMALL_LIMIT + 10))])
        )
        await expect_error(big, 413, "too_large", "/v1/tag", "post")
        limited = await client.post("/v1/tag", data=tag_form([picture]))
        body = await expect_error(limited, 429, "rate_limited", "/v1/tag", "post")
        assert int(limited.headers["Retry-After"]) == body["error"]["retry_after_s"] >= 1

    with_client(
        bot_stack,
        test,
        tag_max_images=2,
        max_image_bytes=SMALL_LIMIT,
        rate_user_burst=5,
        rate_user_per_min=0.5,
        api_token=token,
    )


def test_a_request_lost_with_redis_is_a_503_to_send_again_not_a_400():
    from bot.api.app import reply_response
    from bot.replies import refusal
    from bot.waiting import LOST

    response = reply_response(refusal(LOST, code="lost"))
    assert response.status == 503  # the service's fault, not the caller's: send it again
    assert b'"code": "lost"' in response.body and b"send it again" in response.body
    assert reply_response(refusal("no such title", code="not_found")).status == 404


def test_the_answer_says_which_confidence_it_is_sure_at(redis_kv, tmp_path):
    """The web page shows "not sure" below ``sure_threshold`` (the chat's; the API's is the default)."""
    from tests.cached_answers import SeededStack, picture

    stack = SeededStack(tmp_path)
    data = picture(7_700_201)
    seeded = stack.seed(data)

    async def test(client: TestClient, layer: Any) -> None:
        response = await client.post("/v1/analyze", data=form(data))
        assert response.status == 200, await response.text()
        body = await response.json()
        validate(body, "/v1/analyze", "post", 200)
        assert body["sure_threshold"] == 0.5 and body["cached"] is True
        assert [h["name"] for h in body["result"]["heads"]] == [h.name for h in seeded.heads]

    with_client(stack, test)
