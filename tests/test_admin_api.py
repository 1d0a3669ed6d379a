"""The admin REST API (/v1/admin/*, bot/api/admin_api.py): refused to everyone but the admin token on every route,
then over the real queue (Redis and a worker process): characters and their thumbnails, the heads of pictures
before they are taught, a character taught from 5 pictures (one region chosen) and then named, a reference and a
character forgotten, the review queue, jobs and their cancel, the models."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from bot.api import admin_api
from bot.api.app import build_app
from core.characters.teaching import largest_head, reference_sha256, region_problem
from core.datasets.synth import CAST_BY_KEY, render_portrait, render_scene
from core.settings import Settings
from core.storage.jobs import Requester
from core.storage.store import Store
from core.vision.results import Box
from core.vision.slots.base import Detection
from tests.conftest import REPO
from tests.test_api import ROOMY, expect_error, validate

ADMIN_TOKEN = "admin-token-0123456789abcdef"
USER_TOKEN = "user-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NATSU = CAST_BY_KEY["natsu"]  # the embedder's holdout: forgotten, then taught again through the API
JOB_WAIT_S = 240.0


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pictures_form(pictures: list[bytes], **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    for name, value in fields.items():
        body.add_field(name, value)
    for k, data in enumerate(pictures):
        body.add_field("image", data, filename=f"picture-{k}.png", content_type="image/png")
    return body


def with_admin_client(stack, test, **overrides: Any) -> None:  # type: ignore[no-untyped-def]
    """``test(client, layer)`` against the app over the stack, with the admin token configured."""

    async def main() -> None:
        layer = stack.layer(**{**ROOMY, "api_admin_token": ADMIN_TOKEN, **overrides})
        async with TestClient(TestServer(build_app(layer.settings, layer))) as client:
            await test(client, layer)

    asyncio.run(main())


async def wait_job(client: TestClient, job_id: str) -> dict:
    """Follow an admin job through GET /v1/admin/jobs/{id} until it ends."""
    deadline = time.monotonic() + JOB_WAIT_S
    while True:
        response = await client.get(f"/v1/admin/jobs/{job_id}", headers=ADMIN)
        assert response.status == 200, await response.text()
        body = await response.json()
        validate(body, "/v1/admin/jobs/{job_id}", "get", 200)
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.5)


async def analysed_names(client: TestClient, png: bytes) -> list[str]:
    body = aiohttp.FormData()
    body.add_field("image", png, filename="scene.png", content_type="image/png")
    response = await client.post("/v1/analyze", data=body)
    assert response.status == 200, await response.text()
    return [h["name"] for h in (await response.json())["result"]["heads"]]


def iou(a: list[float], b: Box) -> float:
    return Box(*a).iou(b)


# --- every admin route refuses whoever is not the admin (no worker needed) ---------------------------------


def _concrete(path: str) -> str:
    """A route's path with its placeholders filled (what a caller would send)."""
    values = {"sha256": "a" * 64, "id": "1", "job_id": "0123456789abcdef"}
    return re.sub(r"\{(\w+)(?::[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}", lambda m: values[m.group(1)], path)


def _app_client(tmp_path: Path, **settings: Any):  # type: ignore[no-untyped-def]
    from bot.layer import CommandLayer

    values = {"database_url": f"sqlite:///{tmp_path / 'a.db'}", "data_dir": tmp_path, **settings}
    layer = CommandLayer.from_settings(Settings(**values))
    return TestClient(TestServer(build_app(layer.settings, layer)))


CONTRACT_ROUTES = {
    ("GET", "/v1/admin/whoami"),
    ("GET", "/v1/admin/characters"),
    ("POST", "/v1/admin/characters/preview"),
    ("POST", "/v1/admin/characters"),
    ("DELETE", "/v1/admin/characters"),
    ("GET", "/v1/admin/references/{sha256}.png"),
    ("DELETE", "/v1/admin/references/{sha256}"),
    ("GET", "/v1/admin/review"),
    ("GET", "/v1/admin/review/{id}/crop.png"),
    ("POST", "/v1/admin/review/{id}/approve"),
    ("POST", "/v1/admin/review/{id}/reject"),
    ("GET", "/v1/admin/jobs"),
    ("GET", "/v1/admin/jobs/{job_id}"),
    ("POST", "/v1/admin/jobs/{job_id}/cancel"),
    ("GET", "/v1/admin/models"),
}


def test_the_admin_routes_are_the_contract_and_documented():
    from bot.api.openapi import openapi_document

    canonical = {
        (r.method, re.sub(r"\{(\w+):[^{}]*(?:\{[^{}]*\}[^{}]*)*\}", r"{\1}", r.path))
        for r in admin_api.ROUTES
    }
    assert canonical == CONTRACT_ROUTES
    document = openapi_document(auth=False)
    for method, path in CONTRACT_ROUTES:
        operation = document["paths"][path][method.lower()]
        assert operation["security"] == [{"bearer": []}], (
            method,
            path,
        )  # the admin token, even with no user token
        assert "403" in operation["responses"] and operation["summary"]


@pytest.mark.parametrize("route", admin_api.ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_admin_route_refuses_a_non_admin(route, tmp_path):
    """No admin token configured: off for everyone (admin_off), whatever token is sent. With one configured: a
    wrong token, the user token, or none is forbidden. Every route, so a new one is covered when it is added."""
    path = _concrete(route.path)

    async def call(client: TestClient, token: str | None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await client.request(route.method, path, headers=headers)
        return response.status, await response.json()

    async def main() -> None:
        async with _app_client(tmp_path, redis_url="redis://127.0.0.1:1/0") as client:  # no Redis is needed
            for token in (None, ADMIN_TOKEN, "some-other-token-0123456789"):
                status, body = await call(client, token)
                assert (status, body["error"]["code"]) == (403, "admin_off"), body
        async with _app_client(
            tmp_path, redis_url="redis://127.0.0.1:1/0", api_admin_token=ADMIN_TOKEN
        ) as client:
            for token in (None, "some-other-token-0123456789", ADMIN_TOKEN[:-1]):
                status, body = await call(client, token)
                assert (status, body["error"]["code"]) == (403, "forbidden"), body
                assert "ANIBOT_API_ADMIN_TOKEN" in body["error"]["message"]
        async with _app_client(
            tmp_path, redis_url="redis://127.0.0.1:1/0", api_admin_token=ADMIN_TOKEN, api_token=USER_TOKEN
        ) as client:
            status, body = await call(client, USER_TOKEN)  # a user, not an admin
            assert (status, body["error"]["code"]) == (403, "forbidden"), body
            status, body = await call(client, None)  # no token at all: the user routes' 401 comes first
            assert (status, body["error"]["code"]) == (401, "unauthorised"), body
            whoami = await client.get("/v1/admin/whoami", headers=ADMIN)
            assert whoami.status == 200 and await whoami.json() == {"admin": True}

    asyncio.run(main())


def test_the_api_process_imports_no_model_runtime():
    code = (
        "import sys, bot.api.app, bot.api.admin_api; "
        "print(','.join(m for m in ('torch', 'torchvision', 'timm', 'ultralytics', 'onnxruntime', 'faiss') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


# --- the pieces, without a worker -----------------------------------------------------------------------


def test_boxes_are_checked_against_each_picture():
    from bot.api.admin_api import Picture, Refused, parse_boxes
    from core.vision.intake import inspect_image

    def picture(width: int, height: int) -> Picture:
        data = png_of(Image.new("RGB", (width, height), "white"))
        return Picture("p.png", data, inspect_image(data, max_bytes=10**7, max_pixels=10**8))

    pictures = [picture(200, 100), picture(50, 80)]
    assert parse_boxes("", pictures) is None
    assert parse_boxes("[null, [1, 2, 40.5, 70]]", pictures) == [None, [1.0, 2.0, 40.5, 70.0]]
    for text, code in (
        ("[[1, 2, 3", "bad_boxes"),  # not JSON
        ('{"0": null}', "bad_boxes"),  # not a list
        ("[null]", "bad_boxes"),  # one entry for two pictures
        ("[null, [1, 2, 3]]", "bad_boxes"),  # three numbers
        ('[null, [1, 2, "3", 4]]', "bad_boxes"),
        ("[null, [true, 2, 30, 40]]", "bad_boxes"),
        ("[[0, 0, 201, 50], null]", "bad_box"),  # wider than the picture
        ("[null, [10, 10, 5, 40]]", "bad_box"),  # x2 before x1
        ("[null, [-1, 0, 20, 20]]", "bad_box"),
        ("[null, [0, 0, 2, 2]]", "bad_box"),  # too small to be a head
    ):
        with pytest.raises(Refused) as refused:
            parse_boxes(text, pictures)
        assert (refused.value.status, refused.value.code) == (400, code), text
    # a region is checked against the picture as the worker decodes it: an EXIF rotation swaps the sides
    rotated = Image.new("RGB", (200, 100), "white")
    exif = rotated.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif.tobytes())
    data = buffer.getvalue()
    turned = Picture("r.jpg", data, inspect_image(data, max_bytes=10**7, max_pixels=10**8))
    assert turned.size == (100, 200)
    assert parse_boxes("[[0, 0, 90, 190]]", [turned]) == [[0.0, 0.0, 90.0, 190.0]]


def test_the_default_head_is_the_largest_and_a_chosen_region_is_the_crop():
    from core.characters.teaching import prepare_reference

    heads = [
        Detection(Box(0, 0, 10, 10), 0.9),
        Detection(Box(20, 20, 60, 50), 0.5),
        Detection(Box(5, 5, 30, 30), 0.8),
    ]
    assert largest_head(heads) == 1 and largest_head([]) is None
    assert region_problem([0, 0, 10, 10], 10, 10) is None and region_problem([0, 0, 11, 10], 10, 10)

    class Finds:
        version = "fake"

        def detect(self, image: Image.Image) -> list[Detection]:
            return heads

    picture = Image.new("RGB", (100, 80), "white")
    default = prepare_reference(picture, "f" * 64, Finds(), label="picture 1")
    assert default.crop.size == (40, 30) and default.sha256 == "f" * 64
    assert default.note == "picture 1: 3 heads, used the largest"
    chosen = prepare_reference(picture, "f" * 64, Finds(), label="picture 2", box=(5.0, 5.0, 30.0, 30.0))
    assert chosen.crop.size == (25, 25) and chosen.note == "picture 2: used the chosen region"
    assert chosen.sha256 == reference_sha256("f" * 64, (5.0, 5.0, 30.0, 30.0)) != default.sha256
    with pytest.raises(ValueError, match="not inside the picture"):
        prepare_reference(picture, "f" * 64, Finds(), box=(50.0, 50.0, 120.0, 70.0))


def test_the_worker_takes_one_region_or_null_per_picture():
    from workers.admin_tasks import chosen_regions

    assert chosen_regions(None, 2) == [None, None]
    assert chosen_regions([None, [1, 2, 30, 40.5]], 2) == [None, (1.0, 2.0, 30.0, 40.5)]
    for bad in ([None], "[null]", [[1, 2, "3", 4]], [[True, 2, 3, 4]], [[1, 2, 3]]):
        assert chosen_regions(bad, 1 if bad != [None] else 2) is None, bad


def test_one_reference_is_deleted_and_the_gallery_version_moves(tmp_path):
    import numpy as np

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_all()
    a, b = store.add_character("A", "S"), store.add_character("B")
    vector = np.ones(4, dtype="float32")
    for sha in ("1" * 64, "2" * 64):
        store.add_reference(a, sha, "emb@1", vector)
        store.add_reference(a, sha, "emb@2", vector)
    store.add_reference(b, "1" * 64, "emb@1", vector)  # the same picture is a reference of B too
    before = store.gallery_version()
    assert not store.delete_reference("A", "", "1" * 64)  # A has a series: no such character
    assert store.gallery_version() == before
    assert store.delete_reference("A", "S", "1" * 64)
    assert store.gallery_version() == before + 1
    left = {(r.name, r.image_sha256) for r in store.references()}
    assert left == {("A", "2" * 64), ("B", "1" * 64)}  # both embedders' rows went; B keeps its own
    assert not store.delete_reference("A", "S", "1" * 64)
    assert [(c.name, c.n_references) for c in store.list_characters()] == [("A", 1), ("B", 1)]


# --- over the real queue ---------------------------------------------------------------------------------


@pytest.mark.queue
def test_preview_finds_the_heads_and_chooses_the_largest(bot_stack):
    scene = render_scene(7_100_001, characters=["aoi", "momo", "rin"], size=(640, 384))
    portrait = render_portrait("aoi", 7_100_002)

    async def test(client: TestClient, layer: Any) -> None:
        response = await client.post(
            "/v1/admin/characters/preview",
            data=pictures_form([png_of(scene.image), png_of(portrait)]),
            headers=ADMIN,
        )
        assert response.status == 200, await response.text()
        body = await response.json()
        validate(body, "/v1/admin/characters/preview", "post", 200)
        first, second = body["pictures"]
        assert (first["index"], first["filename"], first["width"], first["height"]) == (
            0,
            "picture-0.png",
            640,
            384,
        )
        assert len(first["heads"]) >= 3
        for truth in scene.heads:  # every drawn head is found
            assert max(iou(h["box"], truth.box) for h in first["heads"]) > 0.5, (truth, first["heads"])
        areas = [(h["box"][2] - h["box"][0]) * (h["box"][3] - h["box"][1]) for h in first["heads"]]
        assert first["chosen"] == areas.index(max(areas))
        largest = max(scene.heads, key=lambda h: h.box.width * h.box.height)
        assert iou(first["heads"][first["chosen"]]["box"], largest.box) > 0.5  # the largest drawn head
        assert second["index"] == 1 and len(second["heads"]) >= 1 and second["chosen"] is not None

        refused = await client.post(
            "/v1/admin/characters/preview", data=pictures_form([b"not a picture at all"]), headers=ADMIN
        )
        body = await expect_error(refused, 400, "not_an_image", "/v1/admin/characters/preview", "post")
        assert body["error"]["message"].startswith("Picture 1 (picture-0.png):")
        too_many = await client.post(
            "/v1/admin/characters/preview", data=pictures_form([png_of(portrait)] * 21), headers=ADMIN
        )
        await expect_error(too_many, 400, "too_many_images", "/v1/admin/characters/preview", "post")

    with_admin_client(bot_stack, test)


def _scene_with_a_smaller_natsu() -> tuple[Any, Box]:
    """A scene of Natsu and Rin where Natsu's head is not the largest: teaching it needs the chosen region."""
    for seed in range(7_200_000, 7_200_200):
        scene = render_scene(seed, characters=["rin", "natsu"], size=(512, 384))
        rin, natsu = scene.heads
        if natsu.box.width * natsu.box.height < 0.7 * rin.box.width * rin.box.height and natsu.box.width > 40:
            return scene, natsu.box
    raise AssertionError("no scene with a smaller Natsu")


@pytest.mark.queue
def test_an_admin_forgets_and_teaches_a_character_and_it_is_named(bot_stack):
    portraits = [png_of(render_portrait("natsu", 7_300_000 + k)) for k in range(4)]
    scene, natsu_box = _scene_with_a_smaller_natsu()
    scene_png = png_of(scene.image)
    box = [round(v, 1) for v in (natsu_box.x1, natsu_box.y1, natsu_box.x2, natsu_box.y2)]
    query = {"name": NATSU.name, "series": NATSU.series}

    async def test(client: TestClient, layer: Any) -> None:
        # listed with thumbnails to begin with
        listing = await (await client.get("/v1/admin/characters", headers=ADMIN)).json()
        validate(listing, "/v1/admin/characters", "get", 200)
        assert (NATSU.name, NATSU.series) in {(c["name"], c["series"]) for c in listing["characters"]}

        # forget Natsu: a new scene of her is no longer named
        removed = await client.delete("/v1/admin/characters", params=query, headers=ADMIN)
        assert removed.status == 202, await removed.text()
        validate(await removed.json(), "/v1/admin/characters", "delete", 202)
        job = await wait_job(client, (await removed.json())["job_id"])
        assert job["status"] == "done" and job["kind"] == "characters.remove", job
        assert job["result"]["message"] == f"Removed {NATSU.name} ({NATSU.series})."
        query_scene = png_of(render_scene(7_400_001, characters=["natsu"], size=(448, 384)).image)
        names = await analysed_names(client, query_scene)
        assert len(names) == 1 and names != [NATSU.name], names  # unknown, or a look-alike
        again = await client.delete("/v1/admin/characters", params=query, headers=ADMIN)
        await expect_error(again, 404, "not_found", "/v1/admin/characters", "delete")

        # refusals before anything is queued
        path = "/v1/admin/characters"
        for fields, code in (
            ({}, "no_name"),
            ({"name": "../etc"}, "bad_name"),
            ({"name": NATSU.name, "boxes": "[null, "}, "bad_boxes"),
            ({"name": NATSU.name, "boxes": "[null, null]"}, "bad_boxes"),
            ({"name": NATSU.name, "boxes": json.dumps([None] * 4 + [[0, 0, 513, 100]])}, "bad_box"),
        ):
            refused = await client.post(
                path, data=pictures_form([*portraits, scene_png], **fields), headers=ADMIN
            )
            await expect_error(refused, 400, code, path, "post")
        no_picture = await client.post(path, data=aiohttp.FormData({"name": NATSU.name}), headers=ADMIN)
        await expect_error(no_picture, 400, "no_image", path, "post")

        # teach her again from 5 pictures, the scene's head chosen by its region
        boxes = json.dumps([None] * 4 + [box])
        added = await client.post(
            path,
            data=pictures_form([*portraits, scene_png], name=NATSU.name, series=NATSU.series, boxes=boxes),
            headers=ADMIN,
        )
        assert added.status == 202, await added.text()
        job_id = (await added.json())["job_id"]
        job = await wait_job(client, job_id)
        assert job["status"] == "done", job
        assert job["kind"] == "characters.add" and job["progress"]["fraction"] == 1.0
        assert job["result"]["message"] == (
            f"Added {NATSU.name} ({NATSU.series}): 5 references. picture 5: used the chosen region."
        )
        assert await analysed_names(
            client, png_of(render_scene(7_400_002, characters=["natsu"], size=(448, 384)).image)
        ) == [NATSU.name]

        # listed with 5 thumbnails that serve PNGs; the chosen region's crop is that region
        listing = await (await client.get("/v1/admin/characters", headers=ADMIN)).json()
        natsu = next(
            c for c in listing["characters"] if (c["name"], c["series"]) == (NATSU.name, NATSU.series)
        )
        assert natsu["references"] == 5 and len(natsu["thumbnails"]) == 5
        boxed = reference_sha256(hashlib.sha256(scene_png).hexdigest(), tuple(float(v) for v in box))
        expected = {hashlib.sha256(p).hexdigest() for p in portraits} | {boxed}
        assert {re.search(r"([0-9a-f]{64})\.png$", url).group(1) for url in natsu["thumbnails"]} == expected
        for url in natsu["thumbnails"]:
            thumb = await client.get(url, headers=ADMIN)
            assert thumb.status == 200 and thumb.content_type == "image/png"
            with Image.open(io.BytesIO(await thumb.read())) as image:
                if boxed in url:
                    assert (
                        abs(image.width - natsu_box.width) <= 2 and abs(image.height - natsu_box.height) <= 2
                    )
        missing = await client.get(f"/v1/admin/references/{'0' * 64}.png", headers=ADMIN)
        await expect_error(missing, 404, "not_found", "/v1/admin/references/{sha256}.png", "get")

        # forget the chosen-region reference: 4 left, the gallery published without it
        gone = await client.delete(f"/v1/admin/references/{boxed}", params=query, headers=ADMIN)
        assert gone.status == 202, await gone.text()
        job = await wait_job(client, (await gone.json())["job_id"])
        assert job["status"] == "done" and job["kind"] == "characters.remove_reference", job
        assert job["result"]["references"] == 4
        listing = await (await client.get("/v1/admin/characters", headers=ADMIN)).json()
        natsu = next(
            c for c in listing["characters"] if (c["name"], c["series"]) == (NATSU.name, NATSU.series)
        )
        assert natsu["references"] == 4 and not any(boxed in url for url in natsu["thumbnails"])
        twice = await client.delete(f"/v1/admin/references/{boxed}", params=query, headers=ADMIN)
        await expect_error(twice, 404, "not_found", "/v1/admin/references/{sha256}", "delete")

        # the jobs, newest first, as /jobs lists them
        jobs = await (await client.get("/v1/admin/jobs", headers=ADMIN)).json()
        validate(jobs, "/v1/admin/jobs", "get", 200)
        kinds = [(j["kind"], j["status"]) for j in jobs["jobs"][:3]]
        assert kinds == [
            ("characters.remove_reference", "done"),
            ("characters.add", "done"),
            ("characters.remove", "done"),
        ]
        assert [j["created_at"] for j in jobs["jobs"]] == sorted(
            (j["created_at"] for j in jobs["jobs"]), reverse=True
        )
        assert jobs["jobs"][1]["id"] == job_id and jobs["jobs"][1]["subject"] == NATSU.name

    with_admin_client(bot_stack, test)


@pytest.mark.queue
def test_jobs_are_cancelled_before_they_change_anything(bot_stack):
    from workers.celery_app import REINDEX_TASK, TASK_QUEUES

    async def test(client: TestClient, layer: Any) -> None:
        queued = layer.client.jobs.create("reindex", Requester("api", "api", "admin-test"), params={})
        cancelled = await client.post(f"/v1/admin/jobs/{queued.id}/cancel", headers=ADMIN)
        assert cancelled.status == 200, await cancelled.text()
        body = await cancelled.json()
        validate(body, "/v1/admin/jobs/{job_id}/cancel", "post", 200)
        assert body == {"id": queued.id, "status": "cancelling"}
        assert layer.client.jobs.cancel_requested(queued.id)
        # the worker that takes it up stops before it starts
        layer.client.app.send_task(REINDEX_TASK, args=[queued.id], queue=TASK_QUEUES[REINDEX_TASK])
        job = await wait_job(client, queued.id)
        assert job["status"] == "failed" and job["error"]["code"] == "cancelled", job
        finished = await client.post(f"/v1/admin/jobs/{queued.id}/cancel", headers=ADMIN)
        await expect_error(finished, 409, "finished", "/v1/admin/jobs/{job_id}/cancel", "post")
        unknown = await client.post(f"/v1/admin/jobs/{'f' * 32}/cancel", headers=ADMIN)
        await expect_error(unknown, 404, "not_found", "/v1/admin/jobs/{job_id}/cancel", "post")
        analysis = layer.client.jobs.create("analyze", Requester("api", "api", "someone"), params={})
        not_admin = await client.get(f"/v1/admin/jobs/{analysis.id}", headers=ADMIN)  # only admin jobs
        await expect_error(not_admin, 404, "not_found", "/v1/admin/jobs/{job_id}", "get")

    with_admin_client(bot_stack, test)


@pytest.mark.queue
def test_the_review_queue_approves_and_rejects_corrections(bot_stack):
    from core.chat.store import Correction

    aoi = CAST_BY_KEY["aoi"]
    scene = png_of(render_scene(7_500_001, characters=["aoi", "momo"], size=(512, 384)).image)

    async def test(client: TestClient, layer: Any) -> None:
        body = aiohttp.FormData()
        body.add_field("image", scene, filename="scene.png", content_type="image/png")
        analysed = await (await client.post("/v1/analyze", data=body)).json()
        heads = analysed["result"]["heads"]
        assert len(heads) == 2, heads

        def correction(head: int, user: str) -> int:
            return layer.chats.add_correction(
                Correction(
                    job_id=analysed["job_id"], head=head, name=aoi.name, series=aoi.series, platform="api",
                    chat_id="api", user_id=user, predicted=heads[head - 1]["name"],
                    image_sha256=analysed["result"]["image_sha256"], box=tuple(heads[head - 1]["box"]),
                )
            )  # fmt: skip

        first, second = correction(1, "reviewer-test-1"), correction(2, "reviewer-test-2")
        listing = await client.get("/v1/admin/review", headers=ADMIN)
        assert listing.status == 200
        items = (await listing.json())["items"]
        validate({"items": items}, "/v1/admin/review", "get", 200)
        mine = {item["id"]: item for item in items if item["id"] in (first, second)}
        assert set(mine) == {first, second}
        item = mine[first]
        assert (item["kind"], item["job_id"], item["head"], item["name"], item["series"], item["agreeing"]) == (
            "correction", analysed["job_id"], 1, aoi.name, aoi.series, 1,
        )  # fmt: skip
        assert (
            item["predicted"] == heads[0]["name"] and item["crop_url"] == f"/v1/admin/review/{first}/crop.png"
        )
        crop = await client.get(item["crop_url"], headers=ADMIN)
        assert crop.status == 200 and crop.content_type == "image/png"
        with Image.open(io.BytesIO(await crop.read())) as image:
            box = Box(*heads[0]["box"])
            assert abs(image.width - min(box.width, 512)) <= 2

        approved = await client.post(f"/v1/admin/review/{first}/approve", headers=ADMIN)
        assert approved.status == 200, await approved.text()
        body = await approved.json()
        validate(body, "/v1/admin/review/{id}/approve", "post", 200)
        assert (body["id"], body["status"]) == (first, "approved")
        job = await wait_job(client, body["job_id"])
        assert job["status"] == "done" and first in job["result"]["applied"], job
        assert layer.chats.correction(first).status == "applied"

        rejected = await client.post(f"/v1/admin/review/{second}/reject", headers=ADMIN)
        assert rejected.status == 200 and await rejected.json() == {"id": second, "status": "rejected"}
        assert layer.chats.correction(second).status == "rejected"
        left = (await (await client.get("/v1/admin/review", headers=ADMIN)).json())["items"]
        assert not {first, second} & {i["id"] for i in left}

        twice = await client.post(f"/v1/admin/review/{second}/approve", headers=ADMIN)
        body = await expect_error(twice, 409, "already_reviewed", "/v1/admin/review/{id}/approve", "post")
        assert "rejected" in body["error"]["message"]
        none = await client.post("/v1/admin/review/999999999/reject", headers=ADMIN)
        await expect_error(none, 404, "not_found", "/v1/admin/review/{id}/reject", "post")
        no_crop = await client.get("/v1/admin/review/999999999/crop.png", headers=ADMIN)
        await expect_error(no_crop, 404, "not_found", "/v1/admin/review/{id}/crop.png", "get")

    with_admin_client(bot_stack, test)


@pytest.mark.queue
def test_the_models_installed_and_active(bot_stack):
    from core.vision.slots.registry import SLOTS, active_manifest, installed

    async def test(client: TestClient, layer: Any) -> None:
        response = await client.get("/v1/admin/models", headers=ADMIN)
        assert response.status == 200
        body = await response.json()
        validate(body, "/v1/admin/models", "get", 200)
        models_dir = layer.settings.models_dir
        assert [s["slot"] for s in body["slots"]] == list(SLOTS)
        for slot in body["slots"]:
            active = active_manifest(models_dir, slot["slot"])
            assert (slot["active"] or {}).get("version") == (active.version if active else None)
            names = [m.name for m in installed(models_dir, slot["slot"])] or ([active.name] if active else [])
            assert [m["name"] for m in slot["installed"]] == names
            assert sum(m["active"] for m in slot["installed"]) == (1 if active else 0)
        assert body["slots"][0]["active"]["name"]  # the built detector

    with_admin_client(bot_stack, test)
