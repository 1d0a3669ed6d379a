"""Teaching the bot: versioned galleries in the shared folder, reference intake, and characters added and removed
through Redis and a real worker without restarting it (also when a worker dies during the index switch)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.analysis.pipeline import GalleryProvider
from core.characters.gallery_versions import POINTER_NAME, GalleryVersions, version_folder
from core.datasets.synth import CAST_BY_KEY, render_portrait, render_scene
from core.storage.kv import MemoryKV
from core.storage.shared_store import SharedStore
from core.storage.store import Store
from core.vision.results import UNKNOWN
from tests.conftest import TRAIN_JOB_WAIT_S, wait_for

NEWCOMER = (
    "natsu"  # a cast member the embedder never trained on (its holdout), removed from the gallery first
)
NEW_NAME = "Hoshino Natsu"
NEW_SERIES = "Blue Archive"


# --- gallery versions (no models) ------------------------------------------------------------------------


def _store_with(tmp_path: Path, characters: dict[str, list[np.ndarray]]) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    store.create_all()
    for name, vectors in characters.items():
        cid = store.add_character(name)
        for i, v in enumerate(vectors):
            store.add_reference(cid, f"{name}{i}".ljust(64, "0"), "emb@1", v)
    return store


def test_a_published_version_is_switched_atomically_and_loaded(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=8).astype("float32"), rng.normal(size=8).astype("float32")
    store = _store_with(tmp_path, {"A": [a, a + 0.01], "B": [b]})
    kv = MemoryKV()
    versions = GalleryVersions(SharedStore(tmp_path / "shared"), kv, keep=3)
    assert versions.current("emb@1") is None and versions.announced("emb@1") is None

    first = versions.publish(store, "emb@1")
    assert first.switched and versions.current("emb@1") == first.manifest.version
    assert versions.announced("emb@1") == first.manifest.version
    assert (first.manifest.n_references, first.manifest.n_characters) == (3, 2)
    gallery = versions.load("emb@1", first.manifest.version)
    from core.characters.gallery import Calibration

    found = gallery.identify(b[None, :], top_n=2, threshold=0.9, calibration=Calibration())
    assert found[0].name == "B" and [c.name for c in found[0].candidates] == ["B", "A"]

    # Redis forgot the announcement: CURRENT is the truth
    kv.delete(next(iter(kv._data)))
    assert versions.announced("emb@1") == first.manifest.version

    # old versions are pruned, the current one never
    for _ in range(4):
        last = versions.publish(store, "emb@1")
    assert versions.versions("emb@1")[-1] == last.manifest.version
    assert len(versions.versions("emb@1")) == 3


def test_a_process_killed_during_the_switch_leaves_the_previous_version_serving(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8).astype("float32"), rng.normal(size=8).astype("float32")
    store = _store_with(tmp_path, {"A": [a]})
    shared = SharedStore(tmp_path / "shared")
    versions = GalleryVersions(shared, MemoryKV())
    before = versions.publish(store, "emb@1").manifest.version
    provider = GalleryProvider(store, "emb@1", 8, versions)
    assert (
        provider.current()[0].identify(b[None, :], top_n=1, threshold=0.99, calibration=_cal())[0].name
        == UNKNOWN
    )

    store.add_reference(store.add_character("B"), "b".ljust(64, "0"), "emb@1", b)

    class Killed(BaseException):
        pass

    def die(point: str) -> None:
        raise Killed(point)

    monkeypatch.setattr("core.characters.gallery_versions.fault_point", die)
    with pytest.raises(Killed):
        versions.publish(store, "emb@1")
    # the new version's folder is complete, but CURRENT still names the old one, which keeps serving
    pointer = json.loads((versions.folder("emb@1") / POINTER_NAME).read_text())
    assert pointer["version"] == before
    assert len(versions.versions("emb@1")) == 2
    gallery, version = provider.current()
    assert version == before
    assert gallery.identify(b[None, :], top_n=1, threshold=0.99, calibration=_cal())[0].name == UNKNOWN

    monkeypatch.undo()
    after = versions.publish(store, "emb@1")
    assert after.switched and after.manifest.version > before
    gallery, version = provider.current()  # picked up on the next call: no restart
    assert version == after.manifest.version
    assert gallery.identify(b[None, :], top_n=1, threshold=0.99, calibration=_cal())[0].name == "B"


def test_a_corrupt_version_is_never_served(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.normal(size=8).astype("float32")
    store = _store_with(tmp_path, {"A": [a]})
    versions = GalleryVersions(SharedStore(tmp_path / "shared"), MemoryKV())
    good = versions.publish(store, "emb@1").manifest.version
    provider = GalleryProvider(store, "emb@1", 8, versions)
    assert len(provider.current()[0]) == 1
    store.add_reference(store.add_character("B"), "b".ljust(64, "0"), "emb@1", a * -1)
    bad = versions.publish(store, "emb@1").manifest.version
    index = versions.folder("emb@1") / version_folder(bad) / "index.faiss"
    index.write_bytes(index.read_bytes()[:-8] + b"garbage!")
    gallery, _ = provider.current()
    assert gallery.version == f"g{good}" and len(gallery) == 1  # kept what it had


def _cal():  # type: ignore[no-untyped-def]
    from core.characters.gallery import Calibration

    return Calibration()


# --- reference intake and teaching in process (built models) ----------------------------------------------


def _teacher(settings, kv=None):  # type: ignore[no-untyped-def]
    from core.analysis.pipeline import LoadedSlots
    from core.characters.teaching import Teacher

    store = Store.from_settings(settings)
    store.create_all()
    slots = LoadedSlots.load(settings)
    versions = GalleryVersions(SharedStore(settings.shared_path), kv)
    return Teacher(store, versions, slots.embedder, slots.detector)


def test_a_reference_with_several_heads_uses_the_largest_and_says_so(model_settings):
    from core.characters.teaching import prepare_reference

    teacher = _teacher(model_settings)
    scene = render_scene(5_500_003, characters=["aoi", "rin", "momo"], size=(640, 384))
    prepared = prepare_reference(scene.image, "a" * 64, teacher.detector, label="picture 2")
    assert prepared.note == "picture 2: 3 heads, used the largest"
    largest = max(scene.heads, key=lambda h: (h.box.x2 - h.box.x1) * (h.box.y2 - h.box.y1))
    width = largest.box.x2 - largest.box.x1
    assert abs(prepared.crop.width - width) < 0.25 * width

    one = prepare_reference(render_portrait("aoi", 1), "b" * 64, teacher.detector)
    assert one.note == ""
    blank = prepare_reference(Image.new("RGB", (120, 120), "white"), "c" * 64, teacher.detector, label="p1")
    assert blank.note == "p1: no head found, used the whole picture" and blank.crop.size == (120, 120)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _newcomer_refs(n: int = 5) -> list[Image.Image]:
    return [render_portrait(NEWCOMER, 6_600_000 + k) for k in range(n)]


def _newcomer_scene() -> bytes:
    return _png(render_scene(6_700_001, characters=[NEWCOMER], size=(448, 384)).image)


def _forget_newcomer(settings) -> int:  # type: ignore[no-untyped-def]
    """Take the newcomer out of the gallery; returns the gallery version published without it."""
    from core.vision.slots.registry import active_manifest

    spec = CAST_BY_KEY[NEWCOMER]
    store = Store.from_settings(settings)
    assert store.delete_character(spec.name, spec.series)
    embedder = active_manifest(settings.models_dir, "embedder").version
    return GalleryVersions(SharedStore(settings.shared_path)).publish(store, embedder).manifest.version


def test_teaching_in_process_names_the_new_character_without_reloading(model_settings):
    from core.analysis.service import AnalysisService
    from core.characters.teaching import prepare_reference

    kv = MemoryKV()
    _forget_newcomer(model_settings)
    service = AnalysisService(model_settings, kv, Store.from_settings(model_settings))
    heads = service.analyze(_newcomer_scene(), top_n=3).result.heads
    assert [h.name for h in heads] == [UNKNOWN]

    teacher = _teacher(model_settings, kv)
    refs = [prepare_reference(img, f"{k:064x}", teacher.detector) for k, img in enumerate(_newcomer_refs())]
    outcome = teacher.add("hoshino natsu", NEW_SERIES, refs)  # a new name is taken as given
    assert outcome.message.startswith("Added hoshino natsu (Blue Archive): 5 references")
    again = teacher.add("HOSHINO NATSU", "", refs[:2])  # an existing name merges, nothing is added twice
    assert (again.name, again.series, again.added, again.total) == ("hoshino natsu", NEW_SERIES, 0, 5)
    assert all(teacher.crops.exists(r.sha256) for r in refs)  # kept for retraining

    outcome = service.analyze(_newcomer_scene(), top_n=3)
    assert not outcome.cached  # the gallery version is part of the cache key
    assert [h.name for h in outcome.result.heads] == ["hoshino natsu"]

    teacher.remove("Hoshino Natsu", "")
    assert [h.name for h in service.analyze(_newcomer_scene(), top_n=3).result.heads] == [UNKNOWN]


def test_every_analysed_head_is_logged_with_its_embedding(model_settings):
    from core.analysis.service import AnalysisService
    from core.storage.jobs import Requester

    service = AnalysisService(model_settings, MemoryKV(), Store.from_settings(model_settings))
    data = _png(render_scene(6_700_002, characters=["aoi", "rin"], size=(512, 384)).image)
    outcome = service.analyze(data, top_n=3, requester=Requester("telegram", "c1", "u1"), job_id="job-log-1")
    heads = service.store.logged_heads("job-log-1")
    assert [h.head for h in heads] == list(range(1, len(outcome.result.heads) + 1))
    for logged, head in zip(heads, outcome.result.heads, strict=True):
        assert logged.answer == head.name and logged.embedding is not None
        assert logged.embedding.shape == (service.pipeline.slots.embedder.dim,)
        assert logged.candidates[0][0] == head.candidates[0].name
    # the same picture again is answered from the cache and logged without embeddings
    service.analyze(data, top_n=3, requester=Requester("telegram", "c1", "u2"), job_id="job-log-2")
    assert [h.embedding for h in service.store.logged_heads("job-log-2")] == [None] * len(heads)


# --- through Redis and real workers --------------------------------------------------------------------


def _admin_layer(settings):  # type: ignore[no-untyped-def]
    from bot.layer import CommandLayer

    return CommandLayer.from_settings(settings.model_copy(update={"admin_ids": "test:admin"}))


def _inv(*images: bytes, args: str = "", user: str = "admin"):  # type: ignore[no-untyped-def]
    from bot.invocation import IncomingImage, Invocation
    from tests.conftest import fresh_id

    def incoming(data: bytes) -> IncomingImage:
        async def fetch() -> bytes:
            return data

        return IncomingImage(fetch, size=len(data), filename="ref.png")

    return Invocation(
        platform="test",
        chat_id=fresh_id(),
        user_id=user,
        args=args,
        images=tuple(incoming(d) for d in images),
    )


def _names(layer, data: bytes) -> list[str]:  # type: ignore[no-untyped-def]
    reply = asyncio.run(layer.command(_inv(data, user="someone"), "identify"))[0]
    assert reply.data and "result" in reply.data, reply
    return [h["name"] for h in reply.data["result"]["heads"]]


@pytest.mark.queue
def test_add_then_identify_then_remove_through_a_running_worker(
    redis_kv, model_env, model_settings, start_worker
):
    _forget_newcomer(model_settings)
    worker = start_worker(model_env, queues="gpu,train")
    layer = _admin_layer(model_settings)
    scene = _newcomer_scene()
    assert _names(layer, scene) == [UNKNOWN], worker.output()[-2000:]

    refs = [_png(img) for img in _newcomer_refs()]
    added = asyncio.run(layer.command(_inv(*refs, args=f"{NEW_NAME} | {NEW_SERIES}"), "addcharacter"))[0]
    assert added.data["message"] == f"Added {NEW_NAME} ({NEW_SERIES}): 5 references.", added
    assert _names(layer, scene) == [NEW_NAME], worker.output()[-2000:]  # same worker process, no restart

    listing = asyncio.run(layer.command(_inv(), "characters"))[0]
    assert f"{NEW_NAME} ({NEW_SERIES}): 5 refs, updated " in listing.text
    removed = asyncio.run(layer.command(_inv(args=NEW_NAME), "removecharacter"))[0]
    assert removed.text == f"Removed {NEW_NAME}.", removed
    assert _names(layer, scene) == [UNKNOWN]
    assert worker.proc.poll() is None  # one worker process throughout


@pytest.mark.queue
def test_a_worker_killed_during_the_index_switch_leaves_the_previous_gallery_serving(
    redis_kv, model_env, model_settings, start_worker
):
    from core.storage.jobs import JobStatus, Requester
    from workers.celery_app import ADD_CHARACTER_TASK
    from workers.client import QueueClient

    before = _forget_newcomer(model_settings)  # the version serving before the crash
    quick = {**model_env, "ANIBOT_VISIBILITY_TIMEOUT_S": "40", "ANIBOT_TASK_TIME_LIMIT_S": "30",
             "ANIBOT_REDELIVERY_CHECK_S": "2"}  # fmt: skip
    serving = start_worker(quick, queues="gpu")
    doomed = start_worker({**quick, "ANIBOT_TEST_CRASH_AT": "gallery.switch"}, queues="train")
    client = QueueClient(model_settings)
    layer = _admin_layer(model_settings)
    scene = _newcomer_scene()
    versions = GalleryVersions(SharedStore(model_settings.shared_path))
    assert _names(layer, scene) == [UNKNOWN]

    job = client.submit_task(
        ADD_CHARACTER_TASK, "characters.add", requester=Requester("test", "c", "admin"),
        params={"name": NEW_NAME, "series": NEW_SERIES}, images=[_png(img) for img in _newcomer_refs()],
    )  # fmt: skip
    assert wait_for(lambda: "fault point gallery.switch" in doomed.output(), 180), doomed.output()[-3000:]
    doomed.kill()
    # the new version was built but never switched to: the previous gallery keeps serving
    folders = list(versions.shared.path("gallery").iterdir())
    assert len(folders) == 1
    assert versions.current(folders[0].name) == before
    assert client.jobs.require(job.id).status is not JobStatus.DONE
    assert _names(layer, scene) == [UNKNOWN], serving.output()[-2000:]

    start_worker(quick, queues="train")  # the job is redelivered to a healthy worker and completes
    finished = client.wait(job.id, timeout_s=TRAIN_JOB_WAIT_S)
    assert finished.status is JobStatus.DONE, finished
    assert versions.current(folders[0].name) > before
    assert _names(layer, scene) == [NEW_NAME]


def test_the_characters_cli_adds_lists_and_removes(model_env, model_settings, tmp_path):
    from tests.test_cli import run_cli

    _forget_newcomer(model_settings)
    paths = []
    for k, img in enumerate(_newcomer_refs(3)):
        paths.append(tmp_path / f"ref{k}.png")
        img.save(paths[-1])
    (tmp_path / "notes.txt").write_text("not a picture")
    env = {**model_env, "ANIBOT_REDIS_URL": "redis://127.0.0.1:1/0"}  # Redis down: CURRENT still switches

    refused = run_cli(["characters", "add", NEW_NAME, str(tmp_path / "notes.txt")], env)
    assert refused.returncode == 2 and "not an image" in refused.stderr
    assert "Nothing was added" in " ".join(refused.stderr.split())  # rich wraps long lines
    bad = run_cli(["characters", "add", "../etc", str(paths[0])], env)
    assert bad.returncode == 2 and "path" in bad.stderr

    added = run_cli(["characters", "add", NEW_NAME, "--series", NEW_SERIES, *map(str, paths)], env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"Added {NEW_NAME} ({NEW_SERIES}): 3 references."
    listed = run_cli(["characters", "list", "--json", "--series", "blue"], env)
    assert [(c["name"], c["references"]) for c in json.loads(listed.stdout)] == [(NEW_NAME, 3)]

    from core.analysis.service import AnalysisService

    service = AnalysisService(model_settings, MemoryKV(), Store.from_settings(model_settings))
    assert [h.name for h in service.analyze(_newcomer_scene(), top_n=3).result.heads] == [NEW_NAME]
    removed = run_cli(["characters", "remove", NEW_NAME, "--series", NEW_SERIES], env)
    assert removed.returncode == 0 and removed.stdout.startswith(f"Removed {NEW_NAME} ({NEW_SERIES})")
    assert run_cli(["characters", "remove", NEW_NAME], env).returncode == 1
    assert [h.name for h in service.analyze(_newcomer_scene(), top_n=3).result.heads] == [UNKNOWN]


@pytest.mark.queue
@pytest.mark.timeout(2 * TRAIN_JOB_WAIT_S)  # two trainings, each within TRAIN_JOB_WAIT_S
def test_one_training_job_at_a_time_and_cancel_stops_it(
    redis_kv, model_env, model_settings, start_worker, tmp_path
):
    import shutil

    from core.storage.jobs import JobStatus
    from core.vision.slots.registry import read_active

    # a copy of the models: a retrain that got promoted must not change the models other tests use
    models = tmp_path / "models"
    shutil.copytree(model_settings.models_dir, models)
    model_settings = model_settings.model_copy(update={"models_dir": models})
    _forget_newcomer(model_settings)
    worker = start_worker({**model_env, "ANIBOT_MODELS_DIR": str(models)}, queues="gpu,train")
    layer = _admin_layer(model_settings)
    active_before = read_active(model_settings.models_dir)
    refs = [_png(img) for img in _newcomer_refs(4)]
    added = asyncio.run(layer.command(_inv(*refs, args=NEW_NAME), "addcharacter"))[0]
    assert added.data and added.data.get("references") == 4, added

    queued = asyncio.run(layer.command(_inv(args="identifier"), "retrain"))[0]
    job_id = queued.data["job_id"]
    assert "under way" in queued.text or queued.kind.value == "result", queued
    second = asyncio.run(layer.command(_inv(args="detector"), "retrain"))[0]
    assert second.code == "job_running" and job_id[:8] in second.text

    assert wait_for(lambda: layer.client.jobs.require(job_id).status is JobStatus.RUNNING, 120), (
        worker.output()[-3000:]
    )
    cancelled = asyncio.run(layer.command(_inv(args=f"cancel {job_id[:8]}"), "jobs"))[0]
    assert cancelled.data == {"job_id": job_id}, cancelled
    finished = layer.client.wait(job_id, timeout_s=TRAIN_JOB_WAIT_S)
    assert finished.status is JobStatus.FAILED and finished.error.code == "cancelled", finished
    assert read_active(model_settings.models_dir) == active_before  # nothing promoted
    listing = asyncio.run(layer.command(_inv(), "jobs"))[0]
    assert f"{job_id[:8]} retrain identifier: failed: Cancelled" in listing.text
    # the lock is free again: the next retrain is accepted
    again = asyncio.run(layer.command(_inv(args="identifier"), "retrain"))[0]
    assert again.code != "job_running", again
    done = layer.client.wait(again.data["job_id"], timeout_s=TRAIN_JOB_WAIT_S)
    assert done.status is JobStatus.DONE, done
    outcome = layer.client.result_json(done)
    assert outcome["metric"] == "heldout_top1" and outcome["message"].startswith("Retrained the identifier")
    promoted = read_active(model_settings.models_dir).get("embedder") != active_before.get("embedder")
    assert promoted == outcome["promoted"]
    if promoted:  # the running worker reloads the new embedder before its next job; the newcomer ranks first
        assert read_active(model_settings.models_dir)["embedder"] == outcome["model"]
        reply = asyncio.run(layer.command(_inv(_newcomer_scene(), user="someone"), "identify"))[0]
        [head] = reply.data["result"]["heads"]
        assert head["candidates"][0]["name"] == NEW_NAME, worker.output()[-3000:]
        assert "models reloaded" in worker.output()
