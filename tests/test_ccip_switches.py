"""CCIP as its authors use it: the flip-TTA switch, the embedder's crop rule (queries and references cut alike),
and ``anibot eval identify --fit-threshold`` writing a fitted threshold and calibration into the manifest.

The stand-in has CCIP's ONNX signature (imgutils' ``ccip_extract_feature``: input ``input`` of (n, 3, 384, 384),
output ``output`` of (n, 768)), built here; the manifest is the catalog entry's own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from typer.testing import CliRunner

from core.characters.gallery import Gallery
from core.characters.teaching import PreparedReference, carry_references, prepare_reference, store_references
from core.settings import get_settings
from core.vision.crops import HEAD_ONLY, CropRule, crop_rule_of, embedder_crop, embedder_crop_region
from core.vision.results import Box
from core.vision.slots.base import Detection, Manifest, file_sha256
from core.vision.slots.catalog import Catalogue
from core.vision.slots.embedder import OnnxEmbedder, flip_average, l2_normalise, preprocess

CCIP = "deepghs-ccip-caformer-24"


def ccip_standin(path: Path) -> None:
    """CCIP's signature: ``input`` (batch, 3, 384, 384) -> ``output`` (batch, 768); a 4x4 grid of mean colours
    through a fixed linear map, so a mirror image gives another vector."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(96), nn.Flatten(), nn.Linear(48, 768)).eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 384, 384),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
        )


def catalog_manifest(folder: Path, **extra: Any) -> Manifest:
    """The CCIP catalog entry installed in ``folder`` over the stand-in weights (``extra`` overrides)."""
    entry = next(e for e in Catalogue.load().entries if e.name == CCIP)
    [file] = entry.files
    folder.mkdir(parents=True, exist_ok=True)
    ccip_standin(folder / file.filename)
    manifest = entry.manifest(folder, {file.filename: file_sha256(folder / file.filename)})
    if extra:
        manifest = replace(manifest, extra={**manifest.extra, **extra})
    manifest.save()
    return Manifest.load(folder)


def _crops(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (60, 44), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, 18, 43], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))  # one-sided
        out.append(img)
    return out


@pytest.fixture(scope="module")
def ccip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ccip")
    catalog_manifest(folder)
    return folder


def test_the_catalog_entry_turns_flip_off_and_asks_for_context(ccip_folder: Path) -> None:
    manifest = Manifest.load(ccip_folder)
    assert manifest.extra["flip_tta"] is False
    assert CropRule.of_manifest(manifest).context > 0
    embedder = OnnxEmbedder.from_manifest(manifest)
    # the stand-in has CCIP's signature, as the loader reads it
    assert embedder.input_name == "input" and embedder.input_size == 384 and embedder.dim == 768
    assert embedder.session.get_outputs()[0].name == "output"
    assert embedder.flip is False and crop_rule_of(embedder) == CropRule.of_manifest(manifest)


def test_flip_off_is_exactly_the_single_pass_and_flip_on_the_average(
    ccip_folder: Path, tmp_path: Path
) -> None:
    off = OnnxEmbedder.from_manifest(Manifest.load(ccip_folder))
    crops = _crops(5)
    single = preprocess(crops, 384, off.mean, off.std, with_mirror=False, resize="stretch")
    raw = np.asarray(off.session.run(None, {"input": single})[0])
    np.testing.assert_array_equal(off.embed(crops), l2_normalise(raw))

    on_folder = tmp_path / "on"
    on = OnnxEmbedder.from_manifest(catalog_manifest(on_folder, flip_tta=True))
    assert on.flip is True
    both = preprocess(crops, 384, on.mean, on.std, with_mirror=True, resize="stretch")
    raw2 = np.asarray(on.session.run(None, {"input": both})[0])
    np.testing.assert_allclose(on.embed(crops), flip_average(raw2, len(crops)), atol=1e-6)
    # the switch matters: a one-sided picture and its mirror differ without the flip, agree with it
    mirrored = [ImageOps.mirror(c) for c in crops]
    assert not np.allclose(off.embed(crops), off.embed(mirrored), atol=1e-3)
    np.testing.assert_allclose(on.embed(crops), on.embed(mirrored), atol=1e-5)
    assert not np.allclose(off.embed(crops), on.embed(crops), atol=1e-3)
    # a flip switch or crop rule in a manifest is part of its version (its vectors change with it)
    assert Manifest.load(ccip_folder).version != Manifest.load(on_folder).version


def test_bad_switches_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flip_tta must be true or false"):
        OnnxEmbedder.from_manifest(catalog_manifest(tmp_path / "a", flip_tta="no"))
    with pytest.raises(ValueError, match="unknown keys"):
        OnnxEmbedder.from_manifest(catalog_manifest(tmp_path / "b", crop={"contxt": 1}))
    with pytest.raises(ValueError, match="between 0 and"):
        CropRule.from_extra({"context": -1})
    with pytest.raises(ValueError, match="must be a number"):
        CropRule.from_extra({"context": "1"})


def test_the_crop_rule_geometry() -> None:
    box = Box(40.3, 30.0, 60.6, 50.4)
    assert embedder_crop_region(box, (200, 200), HEAD_ONLY) == box.crop_region()  # as always
    w, h = box.width, box.height
    grown = embedder_crop_region(box, (200, 200), CropRule(1.0))
    assert grown == (int(40.3 - w), int(30.0 - h / 2), round(60.6 + w), round(50.4 + 2 * h))
    # clipped to the picture
    assert embedder_crop_region(Box(5, 5, 25, 25), (40, 40), CropRule(2.0)) == (0, 0, 40, 40)
    assert CropRule.from_extra(None) is HEAD_ONLY


class OneHead:
    """A detector that finds the same head in every picture."""

    version = "one-head"

    def __init__(self, box: Box) -> None:
        self.box = box

    def detect(self, image: Image.Image) -> list[Detection]:
        return [Detection(self.box, 0.9)]


class Recording:
    """An embedder that keeps what it was given (its crops' pixels) and has a crop rule."""

    version = "recording@1"
    dim = 3

    def __init__(self, rule: CropRule) -> None:
        self.crop_rule = rule
        self.seen: list[Image.Image] = []

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        self.seen += [c.copy() for c in crops]
        return l2_normalise(np.asarray([np.asarray(c, np.float32).mean(axis=(0, 1)) + 1 for c in crops]))


class FakeStore:
    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str]] = []

    def add_character(self, name: str, series: str) -> int:
        return 1

    def add_reference(self, character_id: int, sha: str, embedder: str, vector: np.ndarray) -> bool:
        self.rows.append((character_id, sha, embedder))
        return True


def _scene() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (120, 100, 3), dtype=np.uint8))


@pytest.mark.parametrize("context", [0.0, 1.0])
def test_queries_and_references_are_cut_alike(context: float) -> None:
    from core.analysis.pipeline import AnalysisPipeline, IdentifyParams, LoadedSlots
    from core.characters.gallery import Calibration

    picture, box = _scene(), Box(30.0, 20.0, 60.0, 48.0)
    rule = CropRule(context)
    embedder, detector = Recording(rule), OneHead(box)

    class Provider:
        def current(self) -> tuple[Gallery, int]:
            return Gallery.empty(3), 0

    slots = LoadedSlots(detector=detector, embedder=embedder)
    pipeline = AnalysisPipeline(slots, Provider(), IdentifyParams(0.5, Calibration()), "fp")  # type: ignore[arg-type]
    pipeline.analyze(picture, "d" * 64, top_n=1)  # no tagger or captioner: those stages are left out
    query = embedder.seen.pop()

    # an admin's reference (detected head), a chosen region, an approved correction (picture and box)
    detected = prepare_reference(picture, "a" * 64, detector)
    chosen = prepare_reference(picture, "b" * 64, None, box=(30.0, 20.0, 60.0, 48.0))
    correction = PreparedReference("c" * 64, embedder_crop(picture, box), picture=picture, box=box)
    store = FakeStore()
    store_references(store, embedder, "Aoi", "", [detected, chosen, correction])  # type: ignore[arg-type]
    assert len(embedder.seen) == 3 and len(store.rows) == 3
    for reference in embedder.seen:
        assert reference.size == query.size
        assert np.array_equal(np.asarray(reference), np.asarray(query))
    expected = picture.crop(embedder_crop_region(box, picture.size, rule))
    assert np.array_equal(np.asarray(query), np.asarray(expected))
    if context:
        assert query.width > box.width + 1 and query.height > box.height + 1  # the head with context
    # the kept crop is the head itself either way (the detector's retraining pastes it in as a head)
    assert detected.crop.size == (30, 28)


# --- anibot eval identify --fit-threshold ---------------------------------------------------------------------


PALETTES = {
    "aoi": ((30, 60, 200), (250, 230, 200)),
    "momo": ((240, 120, 170), (250, 240, 220)),
    "rin": ((40, 170, 80), (120, 60, 30)),
    "kuro": ((20, 20, 20), (200, 200, 210)),
    "yuki": ((230, 230, 240), (60, 60, 140)),
}


def face_folder(root: Path, per_character: int = 7) -> Path:
    """Folder-per-character face crops: each character its colours, drawn with noise and jitter."""
    rng = np.random.default_rng(1)
    for name, (hair, skin) in PALETTES.items():
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(per_character):
            img = Image.new("RGB", (64, 64), tuple(int(c) for c in skin))
            d = ImageDraw.Draw(img)
            top = int(rng.integers(14, 26))
            d.rectangle([0, 0, 63, top], fill=hair)
            d.rectangle([0, 0, int(rng.integers(6, 14)), 63], fill=hair)
            noise = rng.normal(0, 12, (64, 64, 3))
            arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{k}.png")
    return root


@pytest.fixture
def fit_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    models = tmp_path / "models"
    catalog_manifest(models / "embedder" / CCIP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANIBOT_MODELS_DIR", str(models))
    monkeypatch.setenv("ANIBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv(
        "ANIBOT_REDIS_URL", os.environ.get("ANIBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    monkeypatch.delenv("ANIBOT_IDENTIFY_THRESHOLD", raising=False)
    get_settings.cache_clear()
    yield models / "embedder" / CCIP
    get_settings.cache_clear()


def run_cli(*args: str) -> Any:
    from cli.main import app

    return CliRunner().invoke(app, list(args))


def test_fit_threshold_writes_the_manifest_and_keeps_the_gallery(fit_env: Path, tmp_path: Path) -> None:
    from core.storage.store import Store

    faces = face_folder(tmp_path / "faces")
    before = Manifest.load(fit_env)
    # a character taught before the fit, under the embedder's current version
    store = Store.from_settings(get_settings())
    store.create_all()
    taught = store.add_character("Aoi", "Skies")
    store.add_reference(taught, "d" * 64, before.version, l2_normalise(np.ones((1, 768)))[0])

    result = run_cli("eval", "identify", "--fit-threshold", str(faces), "--refs", "2")
    assert result.exit_code == 0, result.output
    after = Manifest.load(fit_env)
    note = after.extra["threshold_fit"]
    assert (
        note["folder"] == str(faces) and note["images"] == "crops"
    )  # no detector installed: crops as they are
    assert note["characters"] == 5 and note["references_per_character"] == 2 and note["folds"] == 5
    assert note["known_queries"] == 5 * 4 * 5 and note["unknown_queries"] == 5 * 7
    assert note["crop"] == CropRule.of_manifest(before).to_dict() and note["flip_tta"] is False
    assert note["previous_threshold"] == before.thresholds["identify"]
    threshold = after.thresholds["identify"]
    assert threshold != before.thresholds["identify"] and -1.0 <= threshold <= 1.0
    assert set(after.extra["calibration"]) == {"scale", "shift"}
    assert after.extra["calibration"]["scale"] > 0
    # the figures are printed, the catalog's other extras stay
    assert f"threshold {threshold:.4f}" in result.stdout and "top-1" in result.stdout
    assert after.extra["resize"] == "stretch" and after.extra["flip_tta"] is False
    # its version moved with the threshold; the taught reference moved with it
    assert after.version != before.version
    assert [e.name for e in store.gallery(after.version)] == ["Aoi"]
    assert carry_references(store, before.version, after.version) == 0  # once only
    # the pipeline reads what was written
    from core.analysis.pipeline import AnalysisPipeline

    pipeline = AnalysisPipeline.from_settings(get_settings(), store)
    assert pipeline.identify.threshold == pytest.approx(threshold)
    assert pipeline.identify.calibration.scale == pytest.approx(after.extra["calibration"]["scale"])


def test_fit_threshold_dry_run_writes_nothing(fit_env: Path, tmp_path: Path) -> None:
    faces = face_folder(tmp_path / "faces", per_character=3)
    before = (fit_env / "manifest.json").read_text()
    result = run_cli("eval", "identify", "--fit-threshold", str(faces), "--refs", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "threshold" in result.stdout
    assert (fit_env / "manifest.json").read_text() == before


def test_fit_threshold_bad_folders_are_clear_errors(fit_env: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("eval", "identify", "--fit-threshold", str(empty))
    assert result.exit_code == 2 and "no <character>/<image> folders" in result.stderr
    result = run_cli("eval", "identify", "--fit-threshold", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    one = tmp_path / "one"
    face_folder(tmp_path / "all", per_character=3)
    (one / "aoi").mkdir(parents=True)
    for p in (tmp_path / "all" / "aoi").iterdir():
        p.rename(one / "aoi" / p.name)
    result = run_cli("eval", "identify", "--fit-threshold", str(one))
    assert result.exit_code == 2 and "at least 2 characters" in result.stderr
    broken = tmp_path / "all"
    (broken / "aoi").mkdir(exist_ok=True)
    (broken / "aoi" / "bad.png").write_bytes(b"not a picture")
    result = run_cli("eval", "identify", "--fit-threshold", str(broken))
    assert result.exit_code == 2 and "bad.png" in result.stderr
    result = run_cli("eval", "identify", "--fit-threshold", str(broken), "--images", "pictures")
    assert result.exit_code == 2 and "needs a head detector" in result.stderr
    assert json.loads((fit_env / "manifest.json").read_text())["extra"].get("threshold_fit") is None


class HeadOnTheLeft:
    """A detector that finds a head in the left half of a picture, none in a picture narrower than 50 px."""

    version = "left"

    def detect(self, image: Image.Image) -> list[Detection]:
        if image.width < 50:
            return []
        return [Detection(Box(4.0, 4.0, 24.0, 24.0), 0.9), Detection(Box(30.0, 30.0, 34.0, 34.0), 0.5)]


def test_fit_on_whole_pictures_cuts_them_as_the_pipeline_does(tmp_path: Path) -> None:
    from core.evaluation.threshold_fit import fit_on_folder

    faces = face_folder(tmp_path / "pictures", per_character=4)
    Image.new("RGB", (40, 40), "white").save(faces / "aoi" / "small.png")  # no head: skipped
    rule = CropRule(0.5)
    embedder = Recording(rule)
    report = fit_on_folder(embedder, faces, detector=HeadOnTheLeft(), images="auto", refs=1)  # type: ignore[arg-type]
    assert report.images == "pictures" and report.skipped_no_head == 1 and report.n_images == 21
    assert report.crop == {"context": 0.5}
    # the embedder saw the largest head of every picture, grown by its rule
    expected = embedder_crop_region(Box(4.0, 4.0, 24.0, 24.0), (64, 64), rule)
    assert len(embedder.seen) == 20
    assert {c.size for c in embedder.seen} == {(expected[2] - expected[0], expected[3] - expected[1])}
    first = sorted((faces / "aoi").glob("0.png"))[0]
    with Image.open(first) as picture:
        np.testing.assert_array_equal(
            np.asarray(embedder.seen[0]), np.asarray(picture.convert("RGB").crop(expected))
        )
    assert report.known_queries > 0 and report.unknown_queries == 20
