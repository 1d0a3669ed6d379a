"""Identification: the faiss gallery (by character, UNKNOWN, calibration), ONNX embedder, starter training."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from core.characters.gallery import (
    Calibration,
    Gallery,
    GalleryItem,
    Identification,
    fit_threshold_and_calibration,
)
from core.vision.results import UNKNOWN
from core.vision.slots.base import Manifest, file_sha256
from core.vision.slots.embedder import EMBEDDER_LOADERS, OnnxEmbedder
from tests.tiny_training import TINY_EMBEDDER

CAL = Calibration(scale=20.0, shift=0.5)
A = GalleryItem("Aoi", "Skies", "a" * 64)
B = GalleryItem("Momo", "Pastel", "b" * 64)
C = GalleryItem("Rin", "Skies", "c" * 64)


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture()
def gallery() -> Gallery:
    # three references of A around the x axis, one of B on y, one of C on z
    refs = [unit(1, 0.05, 0), unit(1, 0, 0.05), unit(1, -0.05, 0), unit(0, 1, 0), unit(0, 0, 1)]
    embeddings = np.stack(refs)
    return Gallery(embeddings, [A, A, A, B, C], version="test")


def test_top_n_is_by_character_without_duplicates(gallery: Gallery) -> None:
    [result] = gallery.identify(unit(1, 0.3, 0)[None], top_n=2, threshold=0.5, calibration=CAL)
    assert [c.name for c in result.candidates] == ["Aoi", "Momo"]
    assert result.name == "Aoi"
    assert result.confidence == pytest.approx(result.candidates[0].confidence)
    [everyone] = gallery.identify(unit(1, 0.3, 0.1)[None], top_n=5, threshold=0.5, calibration=CAL)
    names = [c.name for c in everyone.candidates]
    assert names == ["Aoi", "Momo", "Rin"]  # only three characters exist, each once
    sims = [c.similarity for c in everyone.candidates]
    assert sims == sorted(sims, reverse=True)


def test_same_name_in_another_series_is_another_character() -> None:
    other = GalleryItem("Aoi", "Other Series", "d" * 64)
    g = Gallery(np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0)]), [A, other], version="t")
    [result] = g.identify(unit(1, 0, 0)[None], top_n=5, threshold=0.5, calibration=CAL)
    assert [(c.name, c.series) for c in result.candidates] == [("Aoi", "Skies"), ("Aoi", "Other Series")]


def test_unknown_below_threshold_lists_candidates(gallery: Gallery) -> None:
    query = unit(1, 1, 1)  # about 0.58 to everyone
    [result] = gallery.identify(query[None], top_n=3, threshold=0.9, calibration=CAL)
    assert result.name == UNKNOWN
    assert len(result.candidates) == 3
    assert 0.0 <= result.confidence <= 1.0
    assert result.confidence == pytest.approx(1 - result.candidates[0].confidence)


def test_many_queries_and_many_references() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)).astype(np.float32)
    refs = np.concatenate([c + 0.05 * rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    items = [GalleryItem(f"c{i}", "s", f"{i:064x}") for i in range(20) for _ in range(30)]
    g = Gallery(refs, items, version="t")
    results = g.identify(centres, top_n=5, threshold=0.0, calibration=CAL)
    assert [r.name for r in results] == [f"c{i}" for i in range(20)]
    for r in results:
        assert len({c.name for c in r.candidates}) == len(r.candidates) == 5


def test_empty_gallery_is_unknown_without_candidates() -> None:
    g = Gallery.empty(8)
    assert len(g) == 0
    results = g.identify(np.ones((2, 8), np.float32), top_n=5, threshold=0.3, calibration=CAL)
    assert results == [Identification(UNKNOWN, 1.0, ()), Identification(UNKNOWN, 1.0, ())]
    assert g.identify(np.zeros((0, 8), np.float32), top_n=5, threshold=0.3, calibration=CAL) == []


def test_dimension_mismatch_is_an_error(gallery: Gallery) -> None:
    with pytest.raises(ValueError):
        gallery.identify(np.ones((1, 4), np.float32), top_n=1, threshold=0.5, calibration=CAL)


def test_confidence_is_monotone_in_similarity_and_bounded(gallery: Gallery) -> None:
    sims = np.linspace(-1, 1, 41)
    conf = np.asarray(CAL.confidence(sims))
    assert np.all(np.diff(conf) >= 0) and conf.min() >= 0 and conf.max() <= 1
    queries = np.stack([unit(1, t, 0) for t in (0.0, 0.5, 1.0, 2.0, 4.0)])
    results = gallery.identify(queries, top_n=1, threshold=-1.0, calibration=CAL)
    top = sorted((r.candidates[0].similarity, r.candidates[0].confidence) for r in results)
    assert len({s for s, _ in top}) >= 3
    assert all(c1 <= c2 for (_, c1), (_, c2) in itertools.pairwise(top))


def test_fit_threshold_and_calibration_separates_distributions() -> None:
    rng = np.random.default_rng(1)
    known = rng.normal(0.8, 0.05, 300)
    unknown = rng.normal(0.5, 0.05, 150)
    correct = np.ones(300, bool)
    correct[:15] = False  # a few wrong top-1s among the known
    threshold, cal = fit_threshold_and_calibration(known, correct, unknown)
    assert 0.6 < threshold < 0.72
    assert (known[correct] >= threshold).mean() > 0.97
    assert (unknown < threshold).mean() > 0.97
    assert cal.scale > 5
    assert cal.confidence(0.85) > 0.9 and cal.confidence(0.45) < 0.1
    assert 0.55 < cal.shift < 0.75
    # degenerate inputs do not explode
    degenerate = (
        ([0.9], [True], []),
        ([], [], [0.2]),
        ([0.9, 0.8], [True, True], [0.3]),
        ([0.7], [False], [0.7]),
    )
    for args in degenerate:
        t, c = fit_threshold_and_calibration(*args)
        assert np.isfinite(t) and np.isfinite(c.scale) and np.isfinite(c.shift) and c.scale > 0


def test_unbalanced_threshold_keeps_answers_when_top1_is_often_wrong() -> None:
    """Two validation domains, as when synthetic and real faces are pooled: a clean one (high similarities, all
    right) and a muddy one (top-1 wrong one time in five, unknown characters nearly as similar). Balancing the
    two errors rejects half of the muddy domain's right answers; plain accuracy over the queries does not."""
    rng = np.random.default_rng(2)
    clean_known, clean_unknown = rng.normal(0.95, 0.02, 130), rng.normal(0.45, 0.08, 30)
    right = rng.random(100) < 0.8
    muddy_known = np.where(right, rng.normal(0.82, 0.05, 100), rng.normal(0.79, 0.05, 100))
    muddy_unknown = rng.normal(0.78, 0.05, 25)
    known = np.concatenate([clean_known, muddy_known])
    correct = np.concatenate([np.ones(130, bool), right])
    unknown = np.concatenate([clean_unknown, muddy_unknown])
    balanced, _ = fit_threshold_and_calibration(known, correct, unknown)
    plain, _ = fit_threshold_and_calibration(known, correct, unknown, balanced=False)
    assert plain < balanced
    assert (muddy_known[right] >= plain).mean() > 0.85 > 0.6 > (muddy_known[right] >= balanced).mean()
    assert (clean_known >= plain).all() and (clean_unknown < plain).all()


def test_calibration_round_trip() -> None:
    cal = Calibration(scale=12.5, shift=0.61)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


# --- the ONNX embedder --------------------------------------------------------------------------------------


def _tiny_onnx(path: Path, size: int | None = 32) -> None:
    """A stand-in feature extractor: conv, ReLU, average pool, linear -> 24 numbers (not normalised)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 24),
    )
    model.eval()
    dynamic = {"input": {0: "batch"}, "embedding": {0: "batch"}}
    if size is None:
        dynamic["input"].update({2: "h", 3: "w"})
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size or 32, size or 32),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes=dynamic,
            opset_version=17,
        )


def _picture(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 10), rng.integers(0, size[1] - 10)
        d.ellipse([x, y, x + 12, y + 8], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


@pytest.fixture(scope="module")
def onnx_manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    folder = tmp_path_factory.mktemp("embedder")
    _tiny_onnx(folder / "model.onnx")
    manifest = Manifest(
        slot="embedder",
        name="tiny",
        format="onnx-embedder",
        files={"onnx": "model.onnx"},
        sha256={"model.onnx": file_sha256(folder / "model.onnx")},
        thresholds={"identify": 0.5},
        input_size=None,
        folder=folder,
    )
    manifest.save()
    return Manifest.load(folder)


def test_onnx_embedder_loads_and_normalises(onnx_manifest: Manifest) -> None:
    embedder = EMBEDDER_LOADERS["onnx-embedder"](onnx_manifest, None)
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.input_size == 32  # from the graph's static input shape
    assert embedder.dim == 24
    assert embedder.version == onnx_manifest.version
    crops = [_picture(i) for i in range(37)] + [_picture(99, (20, 60)).convert("L").convert("RGB")]
    out = embedder.embed(crops)
    assert out.shape == (38, 24) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # batching does not change the answer
    np.testing.assert_allclose(embedder.embed(crops[:3]), out[:3], atol=1e-5)
    assert embedder.embed([]).shape == (0, 24)


def test_onnx_embedder_flip_invariant(onnx_manifest: Manifest) -> None:
    embedder = OnnxEmbedder.from_manifest(onnx_manifest, None)
    crops = [_picture(i, (40, 40)) for i in range(5)]
    a = embedder.embed(crops)
    b = embedder.embed([ImageOps.mirror(c) for c in crops])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1])  # still tells pictures apart


def test_onnx_embedder_dynamic_input_uses_manifest_size(tmp_path: Path) -> None:
    _tiny_onnx(tmp_path / "model.onnx", size=None)
    manifest = Manifest(
        slot="embedder",
        name="tiny-dyn",
        format="onnx-embedder",
        files={"onnx": "model.onnx"},
        input_size=40,
        extra={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        folder=tmp_path,
    )
    embedder = OnnxEmbedder.from_manifest(manifest, None)
    assert embedder.input_size == 40 and embedder.mean == (0.5, 0.5, 0.5)
    assert embedder.embed([_picture(1)]).shape == (1, 24)


def test_timm_embedder_loads_a_checkpoint(tmp_path: Path) -> None:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("lcnet_050", pretrained=False, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    manifest = Manifest(
        slot="embedder",
        name="timm-tiny",
        format="timm-embedder",
        files={"weights": "model.pth"},
        input_size=32,
        extra={"timm_model": "lcnet_050"},
        folder=tmp_path,
    )
    embedder = EMBEDDER_LOADERS["timm-embedder"](manifest, None)
    crops = [_picture(i, (40, 40)) for i in range(3)]
    out = embedder.embed(crops)
    assert out.shape == (3, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed([ImageOps.mirror(c) for c in crops]), out, atol=1e-4)


# --- the starter training -----------------------------------------------------------------------------------


def test_train_starter_embedder_writes_a_loadable_manifest(tmp_path: Path) -> None:
    from core.learning.starter.embedder import train_starter_embedder

    seen: list[float] = []
    manifest = train_starter_embedder(
        tmp_path / "model",
        **TINY_EMBEDDER,
        n_scenes=12,
        val_scenes=10,
        progress=lambda _m, f: seen.append(f),
    )
    assert seen and seen[-1] == 1.0
    loaded = Manifest.load(tmp_path / "model")
    assert loaded.format == "onnx-embedder" and loaded.slot == "embedder"
    for role, name in loaded.files.items():
        assert loaded.path(role).exists()
        assert loaded.sha256[name] == file_sha256(loaded.path(role))
    assert np.isfinite(loaded.thresholds["identify"])
    assert set(loaded.extra["calibration"]) == {"scale", "shift"}
    for key in ("top1", "fewshot_top1_holdout", "unknown_precision", "unknown_recall", "holdout", "mean"):
        assert key in loaded.extra
    assert loaded.version == manifest.version
    embedder = EMBEDDER_LOADERS[loaded.format](loaded, None)
    from core.datasets.synth import render_portrait

    out = embedder.embed([render_portrait("aoi", 1), render_portrait("momo", 2)])
    assert out.shape == (2, loaded.extra["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_resize_mode_pads_or_stretches_crops() -> None:
    from core.vision.slots.embedder import SQUARING, preprocess, squaring

    wide = Image.new("RGB", (40, 10), (255, 0, 0))
    ImageDraw.Draw(wide).rectangle((20, 0, 39, 9), fill=(0, 0, 255))  # left half red, right half blue
    padded = preprocess([wide], 8, (0, 0, 0), (1, 1, 1), with_mirror=False, resize="pad")
    stretched = preprocess([wide], 8, (0, 0, 0), (1, 1, 1), with_mirror=False, resize="stretch")
    assert (
        stretched[0, 0, 0, 0] > 0.99 and stretched[0, 0, -1, 0] > 0.99
    )  # red from the top row to the bottom
    assert padded[0, 0, 0, 0] < 0.6 < 0.9 < padded[0, 0, 4, 0]  # edge-coloured padding above the red band
    assert set(SQUARING) == {"pad", "stretch"}
    ok = Manifest(slot="embedder", name="m", format="onnx-embedder", extra={"resize": "stretch"})
    assert (
        squaring(ok) == "stretch"
        and squaring(Manifest(slot="embedder", name="m", format="onnx-embedder")) == "pad"
    )
    with pytest.raises(ValueError, match="resize"):
        squaring(Manifest(slot="embedder", name="m", format="onnx-embedder", extra={"resize": "crop"}))
