"""The starter trainers with a real-face set (a stand-in made here), and `anibot eval detector|tagger`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.datasets.real_faces import load_face_splits
from core.vision.slots.base import Manifest, file_sha256
from tests.tiny_training import TINY_EMBEDDER


def test_embedder_trains_on_faces_but_never_on_unseen_characters(tmp_path: Path, face_set: Path) -> None:
    from core.learning.starter.embedder import load_eager, train_starter_embedder

    manifest = train_starter_embedder(
        tmp_path / "model",
        **TINY_EMBEDDER,
        n_scenes=12,
        val_scenes=10,
        thumbnail=2,
        faces_dir=face_set,
        unseen_real=("hatsune_miku",),
    )
    extra = manifest.extra
    assert extra["real_unseen"] == ["hatsune_miku"]
    assert sorted(extra["real_characters_trained"]) == [
        "fate_testarossa",
        "kinomoto_sakura",
        "lelouch_lamperouge",
    ]
    for key in ("real_closed_top1", "real_closed_top1_unseen", "real_fewshot_k5_top1_unseen"):
        assert 0.0 <= extra[key] <= 1.0
    assert extra["real_val_queries"] == len(load_face_splits(face_set).val)
    assert "hatsune_miku" in manifest.provenance and str(face_set) in manifest.provenance
    # the eager weights are the exported ones
    import torch

    from core.datasets.synth import render_portrait
    from core.vision.slots.embedder import OnnxEmbedder, to_tensor

    assert manifest.sha256["model.pt"] == file_sha256(manifest.path("torch"))
    crop = render_portrait("aoi", 5).resize((32, 32))
    onnx = OnnxEmbedder.from_manifest(manifest, None)
    x = torch.from_numpy(to_tensor(crop, 32, tuple(extra["mean"]), tuple(extra["std"]))[None])
    with torch.no_grad():
        eager = load_eager(manifest)(x).numpy()
    np.testing.assert_allclose(onnx._run(x.numpy()), eager, atol=1e-4)


def test_tagger_learns_canonical_looks_weakly(tmp_path: Path, face_set: Path) -> None:
    from core.learning.starter.tagger import train_starter_tagger

    manifest = train_starter_tagger(
        tmp_path / "tagger", n_train=8, epochs=1, input_size=64, faces_dir=face_set
    )
    splits = load_face_splits(face_set)
    assert manifest.extra["n_real_train"] == len(splits.train)
    assert manifest.extra["n_train"] == 8
    for key in ("real_val_hair_colour_f1", "real_val_eye_colour_f1"):
        assert 0.0 <= manifest.extra[key] <= 1.0
    tags = (tmp_path / "tagger" / "selected_tags.csv").read_text()
    assert "grey_eyes" in tags and "aqua_hair" in tags  # the canonical looks are in the vocabulary
    assert Manifest.load(tmp_path / "tagger").files["torch"] == "model.pt"


def test_detector_dataset_pastes_test_faces_only_into_validation(tmp_path: Path, face_set: Path) -> None:
    from core.learning.starter.detector import write_yolo_dataset

    splits = load_face_splits(face_set)
    data_yaml = write_yolo_dataset(tmp_path, n_train=4, n_val=3, seed=5, faces=splits, real_share=1.0)
    assert data_yaml.is_file()
    for split, n in (("train", 4), ("val", 3)):
        labels = sorted((tmp_path / "labels" / split).glob("*.txt"))
        assert len(labels) == n
        for label in labels:
            rows = [list(map(float, r.split()[1:])) for r in label.read_text().splitlines() if r.strip()]
            assert rows and all(0.0 <= v <= 1.0 for r in rows for v in r)


@pytest.mark.slow
def test_eval_detector_and_tagger_write_reports(built_models: Path, face_set: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    env = {"ANIBOT_MODELS_DIR": str(built_models / "models"), "ANIBOT_DATA_DIR": str(tmp_path)}
    from core.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    try:
        result = runner.invoke(
            app,
            ["eval", "detector", "--faces", str(face_set), "--scenes", "12", "--out", str(tmp_path / "eval")],
            env=env,
        )
        assert result.exit_code == 0, result.output
        report = (tmp_path / "eval" / "detector.md").read_text()
        assert "| drawn scenes | 12 |" in report and "| pasted real heads | 12 |" in report
        drawn = float(report.split("| drawn scenes |")[1].split("|")[2])
        assert drawn >= 0.8  # mAP50 of the starter detector on its own kind of scenes
        assert (tmp_path / "eval" / "detector-pr.png").stat().st_size > 5000

        result = runner.invoke(
            app,
            ["eval", "tagger", "--faces", str(face_set), "--scenes", "20", "--out", str(tmp_path / "eval")],
            env=env,
        )
        assert result.exit_code == 0, result.output
        report = (tmp_path / "eval" / "tagger.md").read_text()
        synthetic = float(report.split("| synthetic scenes | 20 |")[1].split("|")[0])
        assert synthetic >= 0.6
        hair = float(report.split("| real faces: hair colour | 16 |")[1].split("|")[0])
        assert hair >= 0.5  # the stand-in "real" faces are drawn characters whose looks the tagger knows
        assert list((tmp_path / "eval").glob("tagger-real-faces-hair-colour-confusion.png"))
    finally:
        get_settings.cache_clear()
