"""`anibot tag`: caption text for a fixed tag set, the folder walker and its ledger, every option on a generated
folder (scenes, a broken file, a nested folder), the same captions in process and through a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.datasets.synth import render_scene
from core.tagging.captions import (
    CaptionOptions,
    ScoredTag,
    caption_text,
    merge_captions,
    read_tag_list,
    select_tags,
)
from core.tagging.folders import LEDGER_NAME, collect
from core.tagging.implications import SHIPPED, Implications, derive_implications
from core.tagging.runner import FolderRun, LocalSource
from tests.conftest import IDLE_REDIS_URL, REPO

# --- caption text for a fixed tag set ------------------------------------------------------------------------

SCORES = [
    ScoredTag("hatsune_miku", 0.95, "character"),
    ScoredTag("kagamine_rin", 0.60, "character"),  # under the character threshold
    ScoredTag("gloves", 0.95, "general"),
    ScoredTag("long_hair", 0.90, "general"),
    ScoredTag("very_long_hair", 0.80, "general"),
    ScoredTag("fingerless_gloves", 0.70, "general"),
    ScoredTag("^_^", 0.60, "general"),
    ScoredTag("smile", 0.50, "general"),
    ScoredTag("white_background", 0.45, "general"),
    ScoredTag("simple_background", 0.40, "general"),
    ScoredTag("solo", 0.30, "general"),  # under the general threshold
    ScoredTag("general", 0.70, "rating"),
    ScoredTag("sensitive", 0.25, "rating"),
]
IMPLIED = Implications(
    [
        ("very_long_hair", "long_hair"),
        ("fingerless_gloves", "gloves"),
        ("white_background", "simple_background"),
    ]
)


def caption(**options: object) -> str:
    chosen = CaptionOptions(**options)  # type: ignore[arg-type]
    return caption_text(select_tags(SCORES, chosen, IMPLIED), chosen)


def test_default_caption_order_spaces_kaomoji_and_implications():
    assert caption() == (
        "general, hatsune miku, very long hair, fingerless gloves, ^_^, smile, white background"
    )


def test_each_caption_option_changes_exactly_its_part():
    assert caption(drop_implied=False) == (
        "general, hatsune miku, gloves, long hair, very long hair, fingerless gloves, ^_^, smile, "
        "white background, simple background"
    )
    assert caption(underscores="keep") == (
        "general, hatsune_miku, very_long_hair, fingerless_gloves, ^_^, smile, white_background"
    )
    assert caption(keep_kaomoji=False).split(", ")[4] == "^ ^"
    assert (
        caption(rating=False)
        == "hatsune miku, very long hair, fingerless gloves, ^_^, smile, white background"
    )
    assert caption(general=0.65) == "general, hatsune miku, very long hair, fingerless gloves"
    assert caption(character=0.5).startswith("general, hatsune miku, kagamine rin, very long hair")
    assert caption(max_tags=3) == "general, hatsune miku, very long hair"
    assert caption(include_first=("smile", "Very Long Hair", "absent_tag")) == (
        "smile, very long hair, general, hatsune miku, fingerless gloves, ^_^, white background"
    )
    # exclusions: a name (either spelling), a pattern, the rating itself
    assert caption(exclude=("very long hair", "*_background", "general")) == (
        "hatsune miku, long hair, fingerless gloves, ^_^, smile"
    )


def test_extra_characters_come_first_once_and_bad_options_are_refused():
    chosen = CaptionOptions().with_characters(["hatsune_miku", "aoi"])  # named by the gallery (score 1)
    assert caption_text(select_tags(SCORES, chosen, IMPLIED), chosen) == (
        "general, aoi, hatsune miku, very long hair, fingerless gloves, ^_^, smile, white background"
    )
    for bad in ({"general": 1.5}, {"max_tags": 0}, {"underscores": "dashes"}):
        with pytest.raises(ValueError):
            CaptionOptions(**bad)  # type: ignore[arg-type]


def test_tag_lists_from_text_or_file_and_append_merging(tmp_path):
    listed = tmp_path / "exclude.txt"
    listed.write_text("# what we never want\nsimple background\nwatermark, signature\n\n", encoding="utf-8")
    assert read_tag_list(str(listed)) == ["simple_background", "watermark", "signature"]
    assert read_tag_list("Long Hair, ^_^ ,") == ["long_hair", "^_^"]
    assert (
        merge_captions("my_char, long hair", "long_hair, smile, my char, hat")
        == "my_char, long hair, smile, hat"
    )


def test_implications_are_transitive_derived_explicitly_and_shipped(tmp_path):
    chain = Implications([("a", "b"), ("b", "c")])
    assert chain.implied("a") == {"b", "c"}
    assert chain.implied_by({"a", "c", "d"}) == {"c"}
    vocabulary = ["gloves", "fingerless_gloves", "hat", "no_hat", "long_hair", "very_long_hair", "red_eyes"]
    assert derive_implications(vocabulary) == [
        ("fingerless_gloves", "gloves"),
        ("very_long_hair", "long_hair"),
    ]
    shipped = Implications.load()
    assert shipped.implied("fingerless_gloves") >= {"gloves"} and "long_hair" in shipped.implied(
        "very_long_hair"
    )
    assert "hat" not in shipped.implied("no_hat") and len(shipped) > 1000
    assert SHIPPED.read_text(encoding="utf-8").startswith("# specific,implied")
    broken = tmp_path / "bad.csv"
    broken.write_text("# ok\na,b\nc\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv:3"):
        Implications.load(broken)


# --- the folder: synthetic scenes, a broken file, a nested folder -----------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pictures"
    (root / "nested" / "deeper").mkdir(parents=True)
    for i, seed in enumerate((9_400_001, 9_400_002, 9_400_003)):
        render_scene(seed).image.save(root / f"scene-{i}.png")
    render_scene(9_400_004).image.convert("RGB").save(root / "nested" / "photo.jpg", quality=90)
    render_scene(9_400_005).image.save(root / "nested" / "deeper" / "scene-5.webp")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "notes.txt").write_text("not a picture", encoding="utf-8")
    (root / ".hidden").mkdir()
    render_scene(9_400_006).image.save(root / ".hidden" / "skip.png")
    return root


@pytest.fixture(scope="module")
def tagger(built_models: Path):  # type: ignore[no-untyped-def]
    from core.settings import Settings
    from core.vision.slots.registry import active_manifest, load_slot

    settings = Settings(models_dir=built_models / "models", data_dir=built_models)
    return load_slot(active_manifest(settings.models_dir, "tagger"), settings)


def run_folder(tagger, folder: Path, out: Path | None = None, **kwargs):  # type: ignore[no-untyped-def]
    root, pictures = collect([folder], recursive=kwargs.pop("recursive", True))
    source = kwargs.pop("source", None) or LocalSource(tagger, max_bytes=20_000_000, max_pixels=40_000_000)
    run = FolderRun(
        pictures,
        out_root=out or root,
        fmt=kwargs.pop("fmt", "txt"),
        mode=kwargs.pop("mode", "overwrite"),
        options=kwargs.pop("options", CaptionOptions()),
        source=source,
        implications=kwargs.pop("implications", Implications.load()),
        batch_size=kwargs.pop("batch_size", 2),
        **kwargs,
    )
    return run.run()


def expected_caption(tagger, path: Path, options: CaptionOptions) -> str:  # type: ignore[no-untyped-def]
    """The caption from the tagger's own single-picture scores (no batching, no prefetching)."""
    from core.tagging.runner import prepare_picture, scored_tags

    image = prepare_picture(path.read_bytes(), tagger.input_size, max_bytes=20_000_000, max_pixels=40_000_000)
    scores = scored_tags(tagger, tagger.scores(image), options.floor)
    return caption_text(select_tags(scores, options, Implications.load()), options)


def test_walker_finds_pictures_recursively_or_not(folder):
    root, flat = collect([folder], recursive=False)
    assert root == folder.resolve()
    assert [p.relative for p in flat] == ["broken.png", "scene-0.png", "scene-1.png", "scene-2.png"]
    _, deep = collect([folder], recursive=True)
    assert [p.relative for p in deep] == [
        "broken.png",
        "nested/deeper/scene-5.webp",
        "nested/photo.jpg",
        "scene-0.png",
        "scene-1.png",
        "scene-2.png",
    ]
    _, named = collect([folder / "notes.txt", folder / "nested"], recursive=False)
    assert [p.relative for p in named] == ["nested/photo.jpg", "notes.txt"]  # a file named is taken as it is
    with pytest.raises(FileNotFoundError, match="missing"):
        collect([folder / "missing"], recursive=False)


def test_a_folder_gets_one_caption_each_and_the_broken_file_its_reason(tagger, folder):
    summary = run_folder(tagger, folder)
    assert summary.count("tagged") == 5
    [failed] = summary.failures
    assert failed.picture.relative == "broken.png" and "damaged" in failed.reason
    for relative in ("scene-0.png", "nested/photo.jpg", "nested/deeper/scene-5.webp"):
        text = (folder / relative).with_suffix(".txt").read_text(encoding="utf-8")
        assert text == expected_caption(tagger, folder / relative, CaptionOptions()) + "\n"
        assert text.split(", ")[0] in {"general", "sensitive", "questionable", "explicit"}
    assert not (folder / ".hidden" / "skip.txt").exists()


def test_rerun_skips_unchanged_pictures_by_content_hash(tagger, folder):
    run_folder(tagger, folder)
    again = run_folder(tagger, folder)
    assert again.count("unchanged") == 5 and again.count("tagged") == 0
    render_scene(9_500_000).image.save(folder / "scene-1.png")  # new content under an old name
    changed = run_folder(tagger, folder, options=CaptionOptions(), redo=False)
    assert [o.picture.relative for o in changed.outcomes if o.status == "tagged"] == ["scene-1.png"]
    other_options = run_folder(tagger, folder, options=CaptionOptions(max_tags=3))
    assert other_options.count("tagged") == 5
    assert run_folder(tagger, folder, options=CaptionOptions(max_tags=3), redo=True).count("tagged") == 5
    ledger = json.loads((folder / LEDGER_NAME).read_text(encoding="utf-8"))["pictures"]
    assert set(ledger) == {
        "scene-0.png",
        "scene-1.png",
        "scene-2.png",
        "nested/photo.jpg",
        "nested/deeper/scene-5.webp",
    }


def test_append_and_skip_modes(tagger, folder):
    mine = folder / "scene-0.txt"
    mine.write_text("my_character, solo\n", encoding="utf-8")
    (folder / "scene-2.txt").write_text("hand written\n", encoding="utf-8")
    skipped = run_folder(tagger, folder, mode="skip", recursive=False)
    assert {o.picture.relative for o in skipped.outcomes if o.status == "exists"} == {
        "scene-0.png",
        "scene-2.png",
    }
    assert (folder / "scene-2.txt").read_text(encoding="utf-8") == "hand written\n"
    assert (folder / "scene-1.txt").exists()
    run_folder(tagger, folder, mode="append", recursive=False)
    model = expected_caption(tagger, folder / "scene-0.png", CaptionOptions()).split(", ")
    appended = mine.read_text(encoding="utf-8").strip().split(", ")
    assert appended[:2] == ["my_character", "solo"]
    assert appended[2:] == [t for t in model if t != "solo"]
    once_more = run_folder(
        tagger, folder, mode="append", recursive=False
    )  # unchanged: nothing appended twice
    assert (
        once_more.count("unchanged") == 3 and mine.read_text(encoding="utf-8").strip().split(", ") == appended
    )


def test_json_and_csv_formats_and_an_output_folder(tagger, folder, tmp_path):
    out = tmp_path / "captions"
    options = CaptionOptions(underscores="keep", max_tags=4, general=0.5)
    run_folder(tagger, folder, out=out, fmt="json", options=options)
    body = json.loads((out / "nested" / "photo.json").read_text(encoding="utf-8"))
    assert body["file"] == "nested/photo.jpg" and body["model"] == tagger.version
    assert body["caption"] == expected_caption(tagger, folder / "nested" / "photo.jpg", options)
    assert len(body["tags"]) <= 4 and all(
        t["score"] >= 0.5 or t["category"] == "rating" for t in body["tags"]
    )
    assert {t["category"] for t in body["scores"]} >= {"rating", "general"}
    assert not (folder / "scene-0.json").exists()
    run_folder(tagger, folder, out=out, fmt="csv", options=options)
    import csv

    rows = list(csv.DictReader((out / "tags.csv").open(encoding="utf-8")))
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows) and len(rows) == 5
    row = next(r for r in rows if r["file"] == "scene-0.png")
    assert row["caption"] == expected_caption(tagger, folder / "scene-0.png", options)
    assert row["rating"] == row["caption"].split(", ")[0]


# --- the command, as a user runs it ------------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "tag", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_with_its_options(tagger, folder, model_env, tmp_path):
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("solo\n1girl\n", encoding="utf-8")
    done = run_cli(
        [
            str(folder),
            "-r",
            "--no-rating",
            "--exclude",
            str(exclude),
            "--include-first",
            "long_hair",
            "--max-tags",
            "5",
            "--underscores",
            "keep",
            "--general",
            "0.4",
            "--keep-implied",
        ],
        model_env,
    )
    assert done.returncode == 1, done.stderr[-3000:]  # the broken file
    assert "5 tagged" in done.stderr and "broken.png" in done.stderr and "Traceback" not in done.stderr
    options = CaptionOptions(
        rating=False,
        exclude=("solo", "1girl"),
        include_first=("long_hair",),
        max_tags=5,
        underscores="keep",
        general=0.4,
        drop_implied=False,
    )
    for relative in ("scene-0.png", "nested/deeper/scene-5.webp"):
        text = (folder / relative).with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert text == expected_caption(tagger, folder / relative, options)
        assert "solo" not in text.split(", ") and len(text.split(", ")) <= 5
    again = run_cli([str(folder), "-r", "--mode", "skip"], model_env)
    assert "5 skipped" in again.stderr
    bad = run_cli([str(folder), "--format", "xml"], model_env)
    assert bad.returncode == 2 and "--format" in bad.stderr
    nobody = run_cli([str(folder), "--queue"], {**model_env, "ANIBOT_REDIS_URL": IDLE_REDIS_URL})
    assert nobody.returncode == 2 and "No worker consumes the gpu queue" in nobody.stderr


# --- identical through a real worker -----------------------------------------------------------------------------


@pytest.mark.queue
def test_the_queue_gives_the_captions_of_the_in_process_run(
    tagger, folder, model_env, model_settings, redis_kv, start_worker, tmp_path
):
    from core.storage.jobs import Requester
    from workers.client import QueueClient
    from workers.tag_client import QueueSource

    start_worker(model_env)
    options = CaptionOptions(general=0.3, max_tags=12)
    local = run_folder(tagger, folder, out=tmp_path / "local", fmt="json", options=options, batch_size=2)
    queued_source = QueueSource(QueueClient(model_settings), Requester("cli"), timeout_s=120)
    queued = run_folder(
        tagger,
        folder,
        out=tmp_path / "queued",
        fmt="json",
        options=options,
        batch_size=2,
        source=queued_source,
        window=4,
    )
    assert [(o.picture.relative, o.status, o.caption) for o in queued.outcomes] == [
        (o.picture.relative, o.status, o.caption) for o in local.outcomes
    ]
    assert queued_source.version == tagger.version
    for path in sorted((tmp_path / "local").rglob("*.json")):
        twin = tmp_path / "queued" / path.relative_to(tmp_path / "local")
        assert json.loads(twin.read_text()) == json.loads(path.read_text())
    [failed] = queued.failures
    assert failed.picture.relative == "broken.png" and "damaged" in failed.reason
    # the command itself, --queue: the caption files of an in-process run of the command, byte for byte
    args = ["--general", "0.3", "--max-tags", "12", "-r", "--batch-size", "2"]
    by_queue = run_cli([str(folder), "--out", str(tmp_path / "cli-queued"), "--queue", *args], model_env)
    in_process = run_cli([str(folder), "--out", str(tmp_path / "cli-local"), *args], model_env)
    assert by_queue.returncode == in_process.returncode == 1, by_queue.stderr[-2000:]
    assert "5 tagged" in by_queue.stderr and "broken.png" in by_queue.stderr
    written = sorted(p.relative_to(tmp_path / "cli-local") for p in (tmp_path / "cli-local").rglob("*.txt"))
    assert len(written) == 5
    for relative in written:
        assert (tmp_path / "cli-queued" / relative).read_bytes() == (
            tmp_path / "cli-local" / relative
        ).read_bytes()


def test_two_pictures_sharing_a_caption_file(tagger, tmp_path):
    folder = tmp_path / "pair"
    folder.mkdir()
    render_scene(9_400_010).image.save(folder / "a.png")
    render_scene(9_400_011).image.convert("RGB").save(folder / "a.jpg")
    summary = run_folder(tagger, folder)
    assert [(o.picture.relative, o.status) for o in summary.outcomes] == [
        ("a.jpg", "tagged"),
        ("a.png", "failed"),
    ]
    assert "a.txt is a.jpg's too" in summary.failures[0].reason


def test_names_adds_the_characters_the_gallery_identifies(tagger, model_settings, tmp_path):
    from cli.tag_cmd import _local_source

    folder = tmp_path / "cast"
    folder.mkdir()
    render_scene(9_300_001, characters=["aoi"]).image.save(folder / "aoi.png")
    source, name_of = _local_source(model_settings, True)
    summary = run_folder(tagger, folder, source=source, names=name_of)
    caption = (folder / "aoi.txt").read_text(encoding="utf-8").strip()
    assert summary.count("tagged") == 1
    assert caption.split(", ")[1] == "aoi sakuragi"  # after the rating, before the general tags
    assert (
        caption.split(", ")[2:]
        == expected_caption(tagger, folder / "aoi.png", CaptionOptions()).split(", ")[1:]
    )


def test_a_chunk_that_cannot_be_sent_or_fails_fails_only_its_pictures(tagger, folder):
    class Flaky(LocalSource):
        calls = 0

        def submit(self, chunk, floor):  # type: ignore[no-untyped-def]
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise ConnectionError("Redis went away")
            return super().submit(chunk, floor) if Flaky.calls != 3 else "lost"

        def collect(self, handle):  # type: ignore[no-untyped-def]
            if handle == "lost":
                raise TimeoutError("job still queued after waiting")
            return super().collect(handle)

    source = Flaky(tagger, max_bytes=20_000_000, max_pixels=40_000_000)
    # one picture a chunk, in order: broken.png (its own failure), scene-0 (not sent), scene-1 (lost), scene-2
    summary = run_folder(tagger, folder, source=source, batch_size=1, recursive=False)
    reasons = {o.picture.relative: o.reason for o in summary.failures}
    assert "damaged" in reasons.pop("broken.png")
    assert reasons == {"scene-0.png": "Redis went away", "scene-1.png": "job still queued after waiting"}
    assert [o.picture.relative for o in summary.outcomes if o.status == "tagged"] == ["scene-2.png"]
    again = run_folder(tagger, folder, recursive=False)  # the failed ones are tagged on the next run
    assert {o.picture.relative: o.status for o in again.outcomes} == {
        "broken.png": "failed",
        "scene-0.png": "tagged",
        "scene-1.png": "tagged",
        "scene-2.png": "unchanged",
    }
