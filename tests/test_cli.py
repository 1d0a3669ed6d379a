"""`anibot analyze` on generated scenes, in process and through the queue, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.datasets.synth import render_scene
from tests.conftest import REPO


def expected_names(settings, paths: list[Path]) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """What the pipeline itself answers for these files, with the same models and gallery."""
    from core.analysis.service import AnalysisService
    from core.storage.kv import MemoryKV
    from core.storage.store import Store

    service = AnalysisService(settings, MemoryKV(), Store.from_settings(settings))
    return [[h.name for h in service.analyze(p.read_bytes(), top_n=5).result.heads] for p in paths]


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def scene_files(tmp_path: Path) -> list[Path]:
    paths = []
    for seed, who in ((9_300_001, ["aoi"]), (9_300_002, ["rin", "yuki"])):
        path = tmp_path / "in" / f"scene-{seed}.png"
        path.parent.mkdir(exist_ok=True)
        render_scene(seed, characters=who).image.save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_analyze_in_process_writes_json_lines_and_annotated(scene_files, model_env, model_settings, tmp_path):
    out = tmp_path / "results.jsonl"
    done = run_cli(
        [
            "analyze",
            str(scene_files[0].parent),
            "--json",
            str(out),
            "--annotated",
            str(tmp_path / "ann"),
            "--top-n",
            "3",
        ],
        model_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == [p.name for p in scene_files]
    assert [len(r["heads"]) for r in records] == [1, 2]
    expected = expected_names(model_settings, scene_files)
    assert [[h["name"] for h in r["heads"]] for r in records] == expected
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == [
        f"{p.stem}.annotated.png" for p in scene_files
    ]


@pytest.mark.slow
@pytest.mark.queue
def test_analyze_through_the_queue_as_csv(
    scene_files, model_env, model_settings, redis_kv, start_worker, tmp_path
):
    start_worker(model_env)
    out = tmp_path / "results.csv"
    done = run_cli(["analyze", *map(str, scene_files), "--queue", "--json", str(out)], model_env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["names"].split("|") for r in rows] == expected_names(model_settings, scene_files)
    assert rows[1]["n_heads"] == "2"


def test_refused_input_prints_its_message_and_exits_nonzero(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is a text file, not a picture")
    done = run_cli(
        ["analyze", str(bad), "--json", "-"],
        {"ANIBOT_MODELS_DIR": str(tmp_path / "none"), "ANIBOT_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["status"] == "refused" and "image" in record["error"].lower()


@pytest.mark.slow
def test_demo_scores_synthetic_scenes_and_pasted_real_faces(model_env, face_set, tmp_path):
    out = tmp_path / "demo"
    done = run_cli(
        ["demo", "--scenes", "2", "--out", str(out)], {**model_env, "ANIBOT_FACES_DIR": str(face_set)}
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    synthetic = text.split("Synthetic scenes: heads found ")[1].split(";")[0]
    found, drawn = map(int, synthetic.split("/"))
    assert drawn >= 2 and found >= drawn - 1
    assert "Held-out real faces (" in text
    for folder in (out, out / "faces"):
        lines = (folder / "results.jsonl").read_text().splitlines()
        assert len(lines) == 2 and all(json.loads(line)["heads"] is not None for line in lines)
        assert len(list(folder.glob("*.annotated.png"))) == 2
