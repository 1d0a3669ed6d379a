"""scripts/bench_models.py on the built starter models: a row of figures per slot, and ONNX agreeing with eager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.vision.slots.registry import SLOTS
from scripts.bench_models import main

pytestmark = pytest.mark.slow  # needs the built starter models


def table_rows(output: str) -> list[list[str]]:
    """Cells of the markdown rows of the timings table (the one with a ``p50 ms`` column)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| slot | engine |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_a_row_per_slot_with_positive_figures_and_onnx_agrees_with_eager(
    model_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in model_env.items():
        monkeypatch.setenv(name, value)
    out_json = tmp_path / "bench.json"

    status = main(
        [
            "--models-dir",
            model_env["ANIBOT_MODELS_DIR"],
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out_json),
        ]
    )

    output = capsys.readouterr().out
    rows = table_rows(output)
    assert {row[0] for row in rows} == {*SLOTS, "pipeline"}, output
    for slot, engine, _case, p50_ms, p95_ms, per_s, calls in rows:
        assert float(p50_ms) > 0 and float(p95_ms) >= float(p50_ms) and float(per_s) > 0, (slot, engine)
        assert int(calls) == 2
    engines = {(row[0], row[1]) for row in rows}
    assert {
        ("detector", "torch eager"),  # the Lite0 starter's torch weights (a YOLO starter's: "ultralytics eager")
        ("embedder", "torch eager"),
        ("tagger", "torch eager"),
    } <= engines

    figures = json.loads(out_json.read_text())
    assert {a["slot"] for a in figures["agreements"]} == {"detector", "embedder", "tagger"}
    assert status == 0 and figures["agreed"], output
    assert "agreement: all checks passed" in output
    assert not figures["pipeline"]["degraded"], figures["pipeline"]
