"""`anibot eval identify` protocols on a small folder-per-character set, with a simple real embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.characters.gallery import Calibration
from core.datasets.folders import load_folder_dataset
from core.datasets.synth import CAST, render_portrait
from core.evaluation.identification import evaluate_identification, split_protocol, write_plots


class HairColourEmbedder:
    """Mean colour of the upper half of a crop (hair), normalised: enough to tell the synthetic cast apart."""

    version = "hair-colour@test"
    dim = 3

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        rows = []
        for crop in crops:
            arr = np.asarray(crop.convert("RGB").resize((32, 32)), dtype=np.float32)[4:12, 8:24]
            rows.append(arr.reshape(-1, 3).mean(axis=0) - 128.0)
        out = np.array(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    keys = ["aoi", "akane", "midori", "hikari"]
    for split, seeds in (("train", range(0, 6)), ("test", range(100, 104))):
        for index, key in enumerate(keys):
            folder = tmp_path / split / f"{index:03d}_{key}"
            folder.mkdir(parents=True)
            for seed in seeds:
                render_portrait(key, seed * 31 + index).save(folder / f"{seed}.png")
    return tmp_path


def test_folder_dataset_labels_and_splits(faces):
    data = load_folder_dataset(faces)
    assert set(data) == {"train", "test"}
    assert {i.label for i in data["test"]} == {"aoi", "akane", "midori", "hikari"}
    protocol, gallery, queries, held_out = split_protocol(data, 2, unknown_fraction=0.25, seed=1)
    assert protocol == "few-shot K=2" and len(held_out) == 1
    assert len(gallery) == 3 * 2 and held_out[0] not in {i.label for i in gallery}
    assert len(queries) == 16


def test_closed_set_and_unknown_rejection(faces, tmp_path):
    data = load_folder_dataset(faces)
    report = evaluate_identification(
        HairColourEmbedder(),
        data,
        refs=None,
        threshold=0.9,
        calibration=Calibration(),
        unknown_fraction=0.25,
        seed=3,
    )
    assert report.top1 >= 0.9 and report.top5 == 1.0
    assert report.unknown_recall is not None and report.unknown_recall >= 0.75
    assert report.unknown_precision is not None and report.unknown_precision >= 0.75
    plots = write_plots(report, tmp_path / "plots", "closed")
    assert all(p.stat().st_size > 1000 for p in plots)
    assert len(CAST) >= 4


def test_few_shot_scored_on_chosen_characters_keeps_them_in_the_gallery(faces):
    data = load_folder_dataset(faces)
    for seed in range(5):
        report = evaluate_identification(
            HairColourEmbedder(),
            data,
            refs=2,
            threshold=0.9,
            calibration=Calibration(),
            unknown_fraction=0.25,
            seed=seed,
            score_only={"midori"},
        )
        assert "midori" not in report.held_out and len(report.held_out) == 1
        assert report.protocol == "few-shot K=2 (midori only)"
        scored = [k for k in report.known if k]
        assert len(scored) == 4  # midori's four test queries; the held-out character's count as unknown
        assert report.n_queries == 8 and report.top1 >= 0.75
