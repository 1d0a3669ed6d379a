"""scripts/bench_realsize.py --tiny: the stand-ins of the community models built (small versions of the same
architectures) and timed through the slot loaders; every figure printed and sane."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from core.vision.slots.catalog import Catalogue
from core.vision.slots.tagger import read_selected_tags
from scripts.bench_realsize import FULL, TINY, main

STAGES = {
    ("detector", "1 picture"),
    ("embedder", "1 head"),
    ("embedder", "3 heads, one call"),
    ("tagger", "1 picture"),
    ("picture", "3 heads: detect + embed + tag"),
    ("tagger model", "run"),
    ("tagger model", "IO binding"),
}


def table(output: str, header: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_full_size_stand_ins_copy_the_real_shapes() -> None:
    catalogue = Catalogue.load()
    for spec in FULL:
        entry = catalogue.get(spec.entry)
        assert entry.slot == spec.slot and entry.input_size == spec.input_size, spec
    assert [s.slot for s in FULL] == [s.slot for s in TINY]
    tagger = next(s for s in FULL if s.slot == "tagger")
    assert tagger.options["n_tags"] == 10861 and tagger.input_size == 448


def test_tiny_benchmark_builds_times_and_prints_sane_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "bench.json"
    cache = tmp_path / "cache"
    status = main(
        [
            "--tiny",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--pictures",
            "2",
            "--cache",
            str(cache),
            "--json",
            str(out_json),
        ]
    )
    output = capsys.readouterr().out
    assert status == 0, output

    rows = table(output, "| stage | case |")
    assert {(r[0], r[1]) for r in rows} >= STAGES, output
    assert {r[0] for r in rows} >= {"embedder model"}
    for stage, case, p50, p95, per_s, calls in rows:
        assert 0 < float(p50) <= float(p95), (stage, case)
        assert float(per_s) > 0 and int(calls) == 3, (stage, case)

    models = table(output, "| model | stands for |")
    assert [m[0] for m in models] == ["detector", "embedder", "tagger"]
    for m in models:
        params, file_mb, build_s = float(m[4]), float(m[5]), float(m[7])
        assert params > 0 and file_mb > 0 and build_s > 0, m
        assert float(m[6]) > 100 or m[0] == "detector", m  # the real files' sizes, from the catalogue
        assert all(float(v) > 0 for v in m[8:12]), m
    assert "peak RSS:" in output and "machine:" in output

    figures = json.loads(out_json.read_text())
    assert figures["tiny"] and figures["peak_rss_mb"] > 0
    assert {(r["stage"], r["case"]) for r in figures["rows"]} >= STAGES

    # the stand-ins are what the loaders of the real models expect: WD14 NHWC with the real tag width, NCHW
    # embedder, ultralytics' metadata on the detector
    tiny = cache / "tiny"
    assert len(read_selected_tags(tiny / "tagger" / "selected_tags.csv")) == 10861
    tagger_in = ort.InferenceSession(str(tiny / "tagger" / "model.onnx")).get_inputs()[0].shape
    assert tagger_in[1:] == [64, 64, 3]
    embedder_in = ort.InferenceSession(str(tiny / "embedder" / "model_feat.onnx")).get_inputs()[0].shape
    assert embedder_in[1:] == [3, 64, 64]
    detector = ort.InferenceSession(str(tiny / "detector" / "model.onnx"))
    assert detector.get_inputs()[0].shape == [1, 3, 160, 160]
    assert "head" in detector.get_modelmeta().custom_metadata_map["names"]

    # a second run reuses the cached stand-ins (nothing rebuilt)
    stamps = {p: p.stat().st_mtime_ns for p in tiny.glob("*/stand_in.json")}
    assert main(["--tiny", "--repeats", "1", "--warmup", "0", "--pictures", "1", "--cache", str(cache)]) == 0
    assert {p: p.stat().st_mtime_ns for p in tiny.glob("*/stand_in.json")} == stamps
