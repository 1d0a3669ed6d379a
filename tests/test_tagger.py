"""The WD14 tagger slot (loader, preprocessing, thresholds) and the starter tagger's training entry point.

A stand-in WD14 model (SmilingWolf's signature: 1x448x448x3 NHWC in, 1 x n_tags sigmoid out) is exported
to ONNX here and paired with the real ``wd14-selected_tags.csv`` from the shared data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings
from core.vision.slots.base import Manifest, file_sha256
from core.vision.slots.tagger import (
    CATEGORY_CHARACTER,
    CATEGORY_RATING,
    TAGGER_LOADERS,
    TagDef,
    Wd14Tagger,
    read_selected_tags,
    wd14_preprocess,
    write_selected_tags,
)

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
SETTINGS = Settings(device="cpu", onnx_threads=1)


def shared_data_dir() -> Path:
    return Path(os.environ.get("ANIBOT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def wd14_csv() -> Path:
    path = shared_data_dir() / "tags" / "wd14-selected_tags.csv"
    if not path.is_file():
        pytest.skip(f"real WD14 vocabulary not found at {path}")
    return path


class BiasModel(torch.nn.Module):
    """WD14 signature; every output is sigmoid(bias) plus a vanishing dependence on the pixels."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.bias[None] + x.mean(dim=(1, 2, 3))[:, None] * 1e-6)


def export_stand_in(path: Path, logits: np.ndarray, size: int = 448) -> Path:
    from core.learning.starter.common import export_onnx

    return export_onnx(
        BiasModel(logits),
        torch.zeros(1, size, size, 3),
        path,
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# --- selected_tags.csv ----------------------------------------------------------------------------


def test_real_vocabulary_reads_with_crlf(wd14_csv: Path) -> None:
    assert b"\r\n" in wd14_csv.read_bytes()[:200]
    tags = read_selected_tags(wd14_csv)
    categories = [t.category for t in tags]
    assert categories.count(0) == 6909 and categories.count(9) == 4 and categories.count(4) == 0
    assert [t.name for t in tags if t.category == 9] == ["general", "sensitive", "questionable", "explicit"]
    assert all("\r" not in t.name for t in tags)


def test_malformed_tags_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "selected_tags.csv"
    bad.write_text("tag_id,name\n1,smile\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        read_selected_tags(bad)
    bad.write_text("tag_id,name,category,count\nx,smile,0,5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="malformed row"):
        read_selected_tags(bad)


def test_crlf_and_lf_tag_files_read_the_same(tmp_path: Path) -> None:
    tags = [TagDef(1, "smile", 0, 10), TagDef(2, "hand_on_another's_head", 0, 5), TagDef(3, "general", 9, 3)]
    lf = write_selected_tags(tmp_path / "lf.csv", tags)
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(lf.read_bytes().replace(b"\n", b"\r\n"))
    assert read_selected_tags(lf) == read_selected_tags(crlf) == tags
    blanks = tmp_path / "blanks.csv"  # blank rows (",,," and empty lines) are not tags
    blanks.write_bytes(
        b"\xef\xbb\xbftag_id,name,category,count\r\n1,smile,0,10\r\n,,,\r\n\r\n3,general,9,3\r\n"
    )
    assert [t.name for t in read_selected_tags(blanks)] == ["smile", "general"]


# --- preprocessing --------------------------------------------------------------------------------


def test_preprocess_pads_white_and_is_bgr() -> None:
    out = wd14_preprocess(Image.new("RGB", (200, 100), (255, 0, 0)), 64)
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.float32
    centre = out[0, 32, 32]
    assert centre.tolist() == [0.0, 0.0, 255.0]  # pure red -> B=0, G=0, R=255 (channel 2)
    assert out[0, 2, 32].tolist() == [255.0, 255.0, 255.0]  # top band: white padding
    assert out[0, 61, 32].tolist() == [255.0, 255.0, 255.0]  # bottom band


def test_preprocess_flattens_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (50, 80), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (0, 40, 50, 80))
    out = wd14_preprocess(rgba, 80)
    assert out.shape == (1, 80, 80, 3)
    assert out[0, 10, 40].tolist() == [255.0, 255.0, 255.0]  # transparent part -> white
    assert out[0, 70, 40].tolist() == [255.0, 0.0, 0.0]  # opaque blue -> BGR (255, 0, 0)
    assert out[0, 70, 5].tolist() == [255.0, 255.0, 255.0]  # side padding


# --- the loader against a stand-in WD14 model ---------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory, wd14_csv: Path) -> tuple[Path, list[TagDef]]:
    tags = read_selected_tags(wd14_csv)
    names = [t.name for t in tags]
    logits = np.full(len(tags), -8.0, np.float32)
    for name, p in {
        "smile": 0.9,
        "1girl": 0.6,
        "long_hair": 0.36,
        "solo": 0.34,
        "sensitive": 0.7,
        "general": 0.2,
    }.items():
        logits[names.index(name)] = logit(p)
    return export_stand_in(tmp_path_factory.mktemp("wd14") / "model.onnx", logits), tags


def test_stand_in_wd14_model_tags_with_thresholds(
    stand_in: tuple[Path, list[TagDef]], wd14_csv: Path
) -> None:
    onnx_path, tags = stand_in
    tagger = Wd14Tagger(
        onnx_path, wd14_csv, version="stand-in", thresholds={"general": 0.35, "character": 0.85}
    )
    assert tagger.input_size == 448  # read from the ONNX input shape
    out = tagger.tag(Image.new("RGB", (640, 360), (10, 200, 30)))
    assert [(t.name, t.category) for t in out] == [
        ("smile", "general"),
        ("sensitive", "rating"),
        ("1girl", "general"),
        ("long_hair", "general"),
    ]
    assert out[0].score == pytest.approx(0.9, abs=1e-3)
    assert sum(t.category == "rating" for t in out) == 1

    stricter = Wd14Tagger(onnx_path, wd14_csv, version="stand-in", thresholds={"general": 0.7})
    assert [t.name for t in stricter.tag(Image.new("RGB", (32, 32)))] == ["smile", "sensitive"]

    probs = tagger.probabilities(Image.new("L", (100, 300)))
    assert len(probs) == len(tags) and probs["solo"] == pytest.approx(0.34, abs=1e-3)


def test_from_manifest_with_crlf_vocabulary(
    stand_in: tuple[Path, list[TagDef]], wd14_csv: Path, tmp_path: Path
) -> None:
    onnx_path, _ = stand_in
    (tmp_path / "model.onnx").write_bytes(onnx_path.read_bytes())
    (tmp_path / "selected_tags.csv").write_bytes(wd14_csv.read_bytes())
    manifest = Manifest(
        slot="tagger",
        name="wd14-stand-in",
        format="wd14-onnx",
        files={"onnx": "model.onnx", "tags": "selected_tags.csv"},
        thresholds={"general": 0.5},
        folder=tmp_path,
    )
    tagger = TAGGER_LOADERS["wd14-onnx"](manifest, SETTINGS)
    assert tagger.version == manifest.version
    assert tagger.thresholds == {"general": 0.5, "character": 0.85}
    assert [t.name for t in tagger.tag(Image.new("RGB", (448, 448)))] == ["smile", "sensitive", "1girl"]


def test_tag_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    onnx_path = export_stand_in(tmp_path / "model.onnx", np.zeros(5, np.float32), size=32)
    tags_csv = write_selected_tags(
        tmp_path / "selected_tags.csv",
        [TagDef(i, f"tag{i}", 0, 1) for i in range(4)] + [TagDef(9, "general", 9, 1)],
    )
    assert len(Wd14Tagger(onnx_path, tags_csv, version="ok").tag(Image.new("RGB", (10, 10)))) == 5
    short = write_selected_tags(tmp_path / "short.csv", [TagDef(i, f"tag{i}", 0, 1) for i in range(3)])
    with pytest.raises(ValueError, match=r"outputs 5 scores but .* lists 3 tags"):
        Wd14Tagger(onnx_path, short, version="bad")


def test_no_rating_vocabulary_gives_no_rating(tmp_path: Path) -> None:
    onnx_path = export_stand_in(tmp_path / "model.onnx", np.array([3.0, -3.0, 3.0], np.float32), size=16)
    tags_csv = write_selected_tags(
        tmp_path / "selected_tags.csv",
        [TagDef(1, "smile", 0, 1), TagDef(2, "hat", 0, 1), TagDef(3, "aoi", 4, 1)],
    )
    out = Wd14Tagger(onnx_path, tags_csv, version="x").tag(Image.new("RGB", (16, 16)))
    assert [(t.name, t.category) for t in out] == [("smile", "general"), ("aoi", "character")]


# --- the starter tagger's training entry point ----------------------------------------------------


def test_train_starter_tagger_tiny(tmp_path: Path) -> None:
    from core.datasets.synth import CAST, render_scene
    from core.learning.starter.tagger import cast_character_tag, synth_vocabulary, train_starter_tagger

    stages: list[tuple[str, float]] = []
    manifest = train_starter_tagger(
        tmp_path / "tagger",
        n_train=8,
        epochs=1,
        input_size=64,
        n_val=8,
        progress=lambda s, f: stages.append((s, f)),
    )
    assert any(s.startswith("epoch 1/1") for s, _ in stages) and stages[-1][1] == 1.0
    loaded = Manifest.load(tmp_path / "tagger")
    assert loaded == manifest
    assert loaded.slot == "tagger" and loaded.format == "wd14-onnx" and loaded.input_size == 64
    for role in ("onnx", "tags"):
        path = loaded.path(role)
        assert path.is_file() and loaded.sha256[path.name] == file_sha256(path)
    assert 0.0 < loaded.thresholds["general"] < 1.0
    # the general tags, then the synthetic cast's character tags (WD14 category 4), named as Danbooru writes them
    cast = [cast_character_tag(c) for c in CAST]
    assert loaded.extra["characters"] == cast and "natsu_tachibana_(forest_song)" in cast
    assert set(loaded.extra["per_tag_f1"]) == set(synth_vocabulary()) | set(cast)

    tags = read_selected_tags(loaded.path("tags"))
    assert [t.name for t in tags if t.category == CATEGORY_CHARACTER] == cast
    assert [t.name for t in tags if t.category == CATEGORY_RATING] == [
        "general",
        "sensitive",
        "questionable",
        "explicit",
    ]
    assert {t.name for t in tags if t.category == 0} == set(synth_vocabulary())

    tagger = Wd14Tagger.from_manifest(loaded, SETTINGS)
    assert tagger.input_size == 64
    out = tagger.tag(render_scene(5).image)
    assert sum(t.category == "rating" for t in out) == 1
    assert all(0.0 <= t.score <= 1.0 for t in out)
    assert [t.score for t in out] == sorted((t.score for t in out), reverse=True)


def test_vocabulary_covers_every_synthetic_tag() -> None:
    from core.datasets.synth import render_scene
    from core.learning.starter.tagger import synth_vocabulary

    vocab = set(synth_vocabulary())
    seen = {tag for seed in range(40) for tag in render_scene(seed).tags}
    assert seen <= vocab
    assert {
        "1girl",
        "solo",
        "3girls",
        "multiple_girls",
        "bob_cut",
        "silver_hair",
        "aqua_eyes",
        "smile",
    } <= vocab
