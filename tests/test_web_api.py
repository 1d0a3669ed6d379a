"""The web page's user routes (bot/api/web_api.py) through aiohttp's test server, over the real queue (Redis and a
worker process): the streamed analysis, corrections, anime search and genres, favourites per browser."""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from bot.api import web_api
from core.storage.jobs import Requester
from tests.test_api import API_TOKEN, expect_error, form, scene_png, validate, with_client

pytestmark = pytest.mark.queue

JOB_ID = re.compile(r"[0-9a-f]{32}")
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def browser_id() -> str:
    return uuid.uuid4().hex[:24]


async def stream_lines(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every NDJSON line of a streamed answer, parsed as it arrives."""
    assert response.status == 200, await response.text()
    assert response.content_type == "application/x-ndjson"
    lines = []
    async for raw in response.content:
        if raw.strip():
            lines.append(json.loads(raw))
    return lines


def without_event(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != "event"}


def test_streamed_analysis_tells_queued_status_then_the_same_result(bot_stack, monkeypatch):
    monkeypatch.setattr(web_api, "STATUS_EVERY_S", 0.05)  # a status line every 50 ms: some while it waits

    async def test(client: TestClient, layer: Any) -> None:
        png = scene_png(15_000_001)
        response = await client.post("/v1/analyze?stream=true", data=form(png, top_n="2"))
        lines = await stream_lines(response)
        events = [line["event"] for line in lines]
        assert events[0] == "queued" and events[-1] == "result", events
        assert set(events[1:-1]) <= {"status"} and "status" in events, events
        job_id = lines[0]["job_id"]
        assert JOB_ID.fullmatch(job_id) and lines[0]["position"] >= 1

        statuses = lines[1:-1]
        assert all(s["job_id"] == job_id and s["status"] in ("queued", "running") for s in statuses)
        assert all((s["position"] is None) == (s["status"] == "running") for s in statuses), statuses
        queued = [s["position"] for s in statuses if s["status"] == "queued"]
        assert queued == sorted(queued, reverse=True) and all(p >= 1 for p in queued)
        assert all(s["stage"] is None or isinstance(s["stage"], str) for s in statuses)

        result = without_event(lines[-1])
        validate(result, "/v1/analyze", "post", 200)
        assert result["job_id"] == job_id and result["cached"] is False
        assert result["result"]["heads"], result
        assert all(len(h["candidates"]) <= 2 for h in result["result"]["heads"])
        assert result["annotated_url"] == f"/v1/jobs/{job_id}/annotated.jpg"
        job = await (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "done" and job["result"]["image_sha256"] == result["result"]["image_sha256"]
        annotated = await client.get(result["annotated_url"])
        assert annotated.status == 200
        with Image.open(io.BytesIO(await annotated.read())) as picture:
            assert picture.format == "JPEG"

        # the same picture again, not streamed: the cached analysis has the very body of the stream's last line
        plain = await (await client.post("/v1/analyze", data=form(png, top_n="2"))).json()
        assert plain["cached"] is True
        assert plain["result"] == result["result"]
        # streamed, a cached answer needs no queue: its result line alone
        cached = await stream_lines(await client.post("/v1/analyze?stream=true", data=form(png, top_n="2")))
        assert [line["event"] for line in cached] == ["result"]
        assert cached[0]["cached"] is True and cached[0]["result"] == result["result"]

    with_client(bot_stack, test)


def test_stream_refusals_are_clean_errors(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        path = "/v1/analyze?stream=true"
        # refused before anything is queued: the plain route's JSON error
        text = await client.post(path, data=form(b"this is text, not a picture"))
        assert text.content_type == "application/json"
        await expect_error(text, 400, "not_an_image", "/v1/analyze", "post")
        missing = await client.post(path, data=aiohttp.FormData({"top_n": "3"}))
        await expect_error(missing, 400, "no_image", "/v1/analyze", "post")
        top_n_first = aiohttp.FormData()
        top_n_first.add_field("top_n", "0")
        top_n_first.add_field("image", scene_png(15_000_002), filename="scene.png", content_type="image/png")
        await expect_error(
            await client.post(path, data=top_n_first), 400, "bad_request", "/v1/analyze", "post"
        )
        # a top_n after the picture is read once it was analysed (as the plain route does): the last line says so
        late = await stream_lines(await client.post(path, data=form(scene_png(15_000_002), top_n="0")))
        assert late[-1] == {
            "event": "error",
            "status": 400,
            "error": {"code": "bad_request", "message": "top_n must be a number from 1 to 50."},
        }

        # a picture whose header passes but whose pixels do not: queued, then the worker's error as the last line
        png = scene_png(15_000_003)
        lines = await stream_lines(await client.post(path, data=form(png[: len(png) // 2])))
        assert lines[0]["event"] == "queued" and lines[-1]["event"] == "error", lines
        assert [line["event"] for line in lines[1:-1]] == ["status"] * (len(lines) - 2)
        last = lines[-1]
        assert last["status"] == 400 and last["error"]["code"] and last["error"]["message"], last
        assert "Traceback" not in json.dumps(last)

    with_client(bot_stack, test)


def test_stream_rate_limit_is_a_429(bot_stack):
    token = uuid.uuid4().hex  # the caller is the token: buckets of its own

    async def test(client: TestClient, layer: Any) -> None:
        client.session.headers["Authorization"] = f"Bearer {token}"
        first = await client.post("/v1/analyze?stream=true", data=form(scene_png(15_000_004)))
        assert [line["event"] for line in await stream_lines(first)][-1] == "result"
        second = await client.post("/v1/analyze?stream=true", data=form(scene_png(15_000_005)))
        body = await expect_error(second, 429, "rate_limited", "/v1/analyze", "post")
        assert body["error"]["retry_after_s"] >= 1 and int(second.headers["Retry-After"]) >= 1

    with_client(bot_stack, test, rate_user_burst=1, rate_user_per_min=0.5, api_token=token)


async def analysed_job(client: TestClient, seed: int) -> dict[str, Any]:
    response = await client.post("/v1/analyze", data=form(scene_png(seed)))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["result"]["heads"], body
    return body


def test_a_correction_is_recorded_for_review(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        body = await analysed_job(client, 15_000_011)
        job_id, heads = body["job_id"], body["result"]["heads"]
        path = f"/v1/jobs/{job_id}/corrections"
        answer = await client.post(path, json={"head": 1, "name": "Webpage Person", "series": "Test Series"})
        assert answer.status == 200, await answer.text()
        recorded = await answer.json()
        validate(recorded, "/v1/jobs/{job_id}/corrections", "post", 200)
        assert recorded["status"] == "pending" and isinstance(recorded["correction_id"], int)
        stored = layer.chats.correction(recorded["correction_id"])
        assert stored is not None
        assert (stored.job_id, stored.head, stored.name, stored.series) == (
            job_id,
            1,
            "Webpage Person",
            "Test Series",
        )
        assert (stored.platform, stored.chat_id, stored.status) == ("api", "api", "pending")
        assert stored.image_sha256 == body["result"]["image_sha256"]

        kind = "/v1/jobs/{job_id}/corrections", "post"
        no_head = await client.post(path, json={"head": len(heads) + 1, "name": "Webpage Person"})
        await expect_error(no_head, 400, "bad_head", *kind)
        for head in ("1", True, 0, -3, 1.5):
            await expect_error(
                await client.post(path, json={"head": head, "name": "X"}), 400, "bad_head", *kind
            )
        for name in ("", "   ", "<script>", 42, "a" * 101):
            await expect_error(await client.post(path, json={"name": name}), 400, "bad_name", *kind)
        bad_series = await client.post(path, json={"name": "Webpage Person", "series": "(x)"})
        await expect_error(bad_series, 400, "bad_name", *kind)
        await expect_error(await client.post(path, data=b"{not json"), 400, "bad_json", *kind)
        await expect_error(await client.post(path, json=[1, "Rem"]), 400, "bad_json", *kind)
        await expect_error(await client.post(path, data=b"[" * 4000), 400, "bad_json", *kind)
        await expect_error(await client.post(path, data=b'{"name": "\xff"}'), 400, "bad_json", *kind)
        huge = await client.post(path, json={"name": "Rem", "pad": "x" * 5000})
        await expect_error(huge, 413, "too_large", *kind)

        unknown = f"/v1/jobs/{uuid.uuid4().hex}/corrections"
        await expect_error(await client.post(unknown, json={"name": "Rem"}), 404, "not_found", *kind)
        await expect_error(
            await client.post("/v1/jobs/..%2f/corrections", json={"name": "Rem"}), 404, "not_found", *kind
        )
        # a chat's analysis is the chat's: not correctable through the API
        chat_job = await layer.run_sync(
            layer.client.submit_analysis, scene_png(15_000_012), requester=Requester("telegram", "5", "5")
        )
        chats = await client.post(f"/v1/jobs/{chat_job.id}/corrections", json={"name": "Rem"})
        await expect_error(chats, 404, "not_found", *kind)

    with_client(bot_stack, test)


def test_corrections_cost_a_command_token_of_the_caller(bot_stack):
    token = uuid.uuid4().hex

    async def test(client: TestClient, layer: Any) -> None:
        client.session.headers["Authorization"] = f"Bearer {token}"
        job_id = (await analysed_job(client, 15_000_013))["job_id"]
        path = f"/v1/jobs/{job_id}/corrections"
        assert (await client.post(path, json={"name": "Webpage Person"})).status == 200
        limited = await client.post(path, json={"name": "Webpage Person"})
        body = await expect_error(limited, 429, "rate_limited", "/v1/jobs/{job_id}/corrections", "post")
        assert body["error"]["retry_after_s"] >= 1

    with_client(bot_stack, test, rate_command_burst=1, rate_command_per_min=0.5, api_token=token)


async def search(client: TestClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/anime/search", params=params)
    assert response.status == 200, await response.text()
    body = await response.json()
    validate(body, "/v1/anime/search", "get", 200)
    return body


def test_search_by_name_and_by_genre_and_the_genre_list(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        by_name = await search(client, q="Cowboy Bebop")
        assert by_name["items"][0]["title"] == "Cowboy Bebop", by_name
        bebop = by_name["items"][0]
        assert isinstance(bebop["id"], int) and {"Action", "Sci-Fi"} <= set(bebop["genres"])
        fuzzy = await search(client, q="cowboy bebopp")
        assert fuzzy["items"] and fuzzy["items"][0]["id"] == bebop["id"]

        listed = await client.get("/v1/genres")
        assert listed.status == 200
        genres = (await listed.json())["genres"]
        validate({"genres": genres}, "/v1/genres", "get", 200)
        assert "Action" in genres and "Sci-Fi" in genres
        assert genres == sorted(set(genres), key=str.casefold)

        sci_fi = await search(client, genre="Sci-Fi")
        assert sci_fi["items"] and all("Sci-Fi" in item["genres"] for item in sci_fi["items"])
        assert bebop["id"] in {
            item["id"] for item in (await search(client, q="Bebop", genre="Sci-Fi"))["items"]
        }
        assert (await search(client, q="Cowboy Bebop", genre="Romance"))["items"] == []
        both = await search(client, genre=["Action", "Sci-Fi"])
        assert both["items"] and all({"Action", "Sci-Fi"} <= set(i["genres"]) for i in both["items"])

        # pages: ten a page, none twice, as many as the total says
        first = await search(client, genre="Action")
        assert first["page"] == 1 and first["total"] > web_api.SEARCH_PAGE, first
        assert len(first["items"]) == web_api.SEARCH_PAGE
        assert first["pages"] == -(-first["total"] // web_api.SEARCH_PAGE)
        second = await search(client, genre="Action", page="2")
        assert second["page"] == 2 and second["items"]
        assert not {i["id"] for i in first["items"]} & {i["id"] for i in second["items"]}
        past = await search(client, genre="Action", page=str(first["pages"] + 1))
        assert past["items"] == [] and past["total"] == first["total"]

        nothing = await search(client, q="zzqxj wvvk")
        assert nothing == {"items": [], "page": 1, "pages": 1, "total": 0}
        for page in ("0", "x", "²", "1001"):
            bad = await client.get("/v1/anime/search", params={"q": "Bebop", "page": page})
            await expect_error(bad, 400, "bad_request", "/v1/anime/search", "get")
        many = await client.get("/v1/anime/search", params=[("genre", g) for g in "ABCDEF"])
        await expect_error(many, 400, "bad_request", "/v1/anime/search", "get")

    with_client(bot_stack, test)


async def favourites(client: TestClient, method: str, browser: str | None, anime_id: Any = None) -> Any:
    path = "/v1/favourites" if anime_id is None else f"/v1/favourites/{anime_id}"
    headers = {} if browser is None else {"X-Anibot-Browser": browser}
    return await client.request(method, path, headers=headers)


async def favourite_ids(client: TestClient, browser: str) -> list[int]:
    response = await favourites(client, "GET", browser)
    assert response.status == 200, await response.text()
    body = await response.json()
    validate(body, "/v1/favourites", "get", 200)
    return [item["id"] for item in body["items"]]


def test_favourites_belong_to_the_browser(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        bebop = (await search(client, q="Cowboy Bebop"))["items"][0]
        other = next(i for i in (await search(client, genre="Action"))["items"] if i["id"] != bebop["id"])
        alice, bob = browser_id(), browser_id()
        assert await favourite_ids(client, alice) == []

        added = await favourites(client, "PUT", alice, bebop["id"])
        assert added.status == 200, await added.text()
        body = await added.json()
        validate(body, "/v1/favourites/{anime_id}", "put", 200)
        assert [i["id"] for i in body["items"]] == [bebop["id"]] and body["changed"] is True
        assert body["items"][0]["title"] == "Cowboy Bebop"
        again = await (await favourites(client, "PUT", alice, bebop["id"])).json()
        assert again["changed"] is False and [i["id"] for i in again["items"]] == [bebop["id"]]
        assert (await (await favourites(client, "PUT", bob, other["id"])).json())["changed"] is True

        assert await favourite_ids(client, alice) == [bebop["id"]]
        assert await favourite_ids(client, bob) == [other["id"]]  # neither sees the other's
        # kept in the store as the browser's, on platform "api"
        stored = await layer.run_sync(layer.store.favourites, "api", f"browser-{alice}")
        assert [r.id for r in stored] == [bebop["id"]]

        removed = await favourites(client, "DELETE", alice, bebop["id"])
        assert removed.status == 200
        body = await removed.json()
        validate(body, "/v1/favourites/{anime_id}", "delete", 200)
        assert body == {"items": [], "changed": True}
        assert await favourite_ids(client, alice) == []
        assert await favourite_ids(client, bob) == [other["id"]]

        for browser in (None, "", "short", "x" * 65, "bad id with spaces!!!!!!", "é" * 30):
            for method, anime_id in (("GET", None), ("PUT", bebop["id"]), ("DELETE", bebop["id"])):
                response = await favourites(client, method, browser, anime_id)
                path = "/v1/favourites" if anime_id is None else "/v1/favourites/{anime_id}"
                await expect_error(response, 400, "no_browser_id", path, method.lower())
        for bad_id in ("abc", "0", "-1", "1.5", "99999999999"):
            response = await favourites(client, "PUT", alice, bad_id)
            await expect_error(response, 400, "bad_request", "/v1/favourites/{anime_id}", "put")
        unknown = await favourites(client, "PUT", alice, 987654321)
        await expect_error(unknown, 404, "not_found", "/v1/favourites/{anime_id}", "put")

    with_client(bot_stack, test)


def test_the_rate_limit_is_the_callers_not_the_browsers(bot_stack):
    token = uuid.uuid4().hex

    async def test(client: TestClient, layer: Any) -> None:
        client.session.headers["Authorization"] = f"Bearer {token}"
        assert (await favourites(client, "GET", browser_id())).status == 200
        assert (await favourites(client, "GET", browser_id())).status == 200
        # a third browser id from the same caller: the caller's bucket is spent all the same
        limited = await favourites(client, "GET", browser_id())
        body = await expect_error(limited, 429, "rate_limited", "/v1/favourites", "get")
        assert int(limited.headers["Retry-After"]) >= 1 and body["error"]["retry_after_s"] >= 1
        await expect_error(await client.get("/v1/genres"), 429, "rate_limited", "/v1/genres", "get")

    with_client(bot_stack, test, rate_command_burst=2, rate_command_per_min=0.5, api_token=token)


def test_the_user_token_is_required_when_set(bot_stack):
    async def test(client: TestClient, layer: Any) -> None:
        browser = {"X-Anibot-Browser": browser_id()}
        job = f"/v1/jobs/{uuid.uuid4().hex}/corrections"
        calls = [
            ("GET", "/v1/genres", {}),
            ("GET", "/v1/anime/search?q=Bebop", {}),
            ("GET", "/v1/favourites", browser),
            ("PUT", "/v1/favourites/1", browser),
            ("DELETE", "/v1/favourites/1", browser),
            ("POST", job, {}),
        ]
        for method, path, headers in calls:
            for token in (None, "wrong-token-0123456789abcdef"):
                auth = {"Authorization": f"Bearer {token}"} if token else {}
                response = await client.request(
                    method, path, headers={**headers, **auth}, json={"name": "Rem"}
                )
                assert response.status == 401, (method, path, await response.text())
                assert (await response.json())["error"]["code"] == "unauthorised"
        stream = await client.post("/v1/analyze?stream=true", data=form(scene_png(15_000_021)))
        assert stream.status == 401
        for token in (API_TOKEN, ADMIN_TOKEN):
            auth = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/v1/genres", headers=auth)).status == 200
            listed = await client.get("/v1/favourites", headers={**browser, **auth})
            assert listed.status == 200 and (await listed.json())["items"] == []
            missing = await client.post(job, headers=auth, json={"name": "Rem"})
            assert missing.status == 404

    with_client(bot_stack, test, api_token=API_TOKEN, api_admin_token=ADMIN_TOKEN)
