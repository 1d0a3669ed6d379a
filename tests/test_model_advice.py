"""`anibot models recommend`: the machine read (torch's GPU, ONNX Runtime's providers, RAM) and the catalogue's
models ranked for it, on a faked CPU-only machine and a faked GPU machine. No model is downloaded or loaded."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.settings import get_settings
from core.vision.slots.catalog import CatalogError, Catalogue
from core.vision.slots.model_advice import (
    CPU_SCORE_MARGIN,
    Machine,
    detect_machine,
    rank_slot,
    recommend,
    recommended,
)

GB = 10**9
CPU_ONLY = Machine(cpus=2, ram_bytes=8 * GB)
GPU = Machine(
    cpus=16, ram_bytes=128 * GB, gpu_name="NVIDIA Fake 24G", gpu_memory_bytes=24 * GB, onnx_gpu=True
)


def entry(name: str, slot: str, size: int, scores: dict[str, float] | None = None) -> dict[str, Any]:
    url = f"https://huggingface.co/test/{name}/resolve/{'0' * 40}/model.onnx"
    files = {"onnx": {"url": url, "sha256": "a" * 64, "size": size}}
    if slot == "tagger":
        files["tags"] = {"url": url.replace("model.onnx", "tags.csv"), "sha256": "b" * 64, "size": 10}
    data: dict[str, Any] = {
        "name": name,
        "slot": slot,
        "format": {"detector": "yolo-onnx", "embedder": "onnx-embedder", "tagger": "wd14-onnx"}[slot],
        "licence": "MIT",
        "homepage": f"https://huggingface.co/test/{name}",
        "files": files,
        "sources": {"files": "made up by the test"},
    }
    if scores:
        data["scores"] = scores
        data["sources"]["scores"] = "made up by the test"
    return data


# --- ranking ------------------------------------------------------------------------------------------------------


def test_the_shipped_catalogue_on_a_cpu_and_on_a_gpu() -> None:
    catalogue = Catalogue.load()
    on_cpu = {slot: e.name for slot, e in recommended(catalogue, CPU_ONLY).items()}
    on_gpu = {slot: e.name for slot, e in recommended(catalogue, GPU).items()}
    # both head detectors publish F1 0.92: a CPU takes the 10 MB nano, a GPU the small one (mAP50-95 0.778 > 0.768)
    assert (
        on_cpu
        == {
            "detector": "deepghs-head-v1.6-n-yv11",
            "embedder": "deepghs-ccip-caformer-24",
            "tagger": "wd-swinv2-tagger-v3",  # 0.4541 is within the margin of EVA02-Large's 0.4772, at a third the size
        }
    )
    assert on_gpu == {
        "detector": "deepghs-head-v2.0-s",
        "embedder": "deepghs-ccip-caformer-24",
        "tagger": "wd-eva02-large-tagger-v3",
    }
    taggers = recommend(catalogue, GPU)["tagger"]
    assert [a.rank for a in taggers] == list(range(1, len(taggers) + 1))
    unscored = [a for a in taggers if a.score is None]
    assert unscored and all(a.rank > 2 for a in unscored)  # after the two scored v3 taggers
    moat = next(a for a in taggers if a.entry.name == "wd-v1-4-moat-tagger-v2")
    assert "no published macro_f1 (it publishes f1 0.6911)" in moat.why  # another metric is not compared


def test_cpu_takes_the_smallest_near_the_best_and_not_a_clearly_worse_one() -> None:
    catalogue = Catalogue.from_dict(
        {
            "models": [
                entry("big", "detector", 400_000_000, {"f1": 0.95}),
                entry("near", "detector", 40_000_000, {"f1": 0.95 - CPU_SCORE_MARGIN + 0.01}),
                entry("tiny-but-worse", "detector", 4_000_000, {"f1": 0.95 - CPU_SCORE_MARGIN - 0.01}),
                entry("unscored", "detector", 1_000_000),
            ]
        }
    )
    cpu = [a.entry.name for a in rank_slot(catalogue.entries, "detector", CPU_ONLY)]
    gpu = [a.entry.name for a in rank_slot(catalogue.entries, "detector", GPU)]
    assert cpu == ["near", "big", "tiny-but-worse", "unscored"]
    assert gpu == ["big", "near", "tiny-but-worse", "unscored"]


def test_a_model_too_big_for_the_memory_goes_last_and_is_never_recommended() -> None:
    small_ram = Machine(cpus=2, ram_bytes=2 * GB)
    taggers = recommend(Catalogue.load(), small_ram)["tagger"]
    last = taggers[-1]
    assert last.entry.name == "wd-eva02-large-tagger-v3" and not last.fits
    assert "too big: needs about 3.8 GB, 2.0 GB of RAM here" in last.why
    assert recommended(Catalogue.load(), small_ram)["tagger"].name == "wd-swinv2-tagger-v3"
    only_big = Catalogue.from_dict({"models": [entry("huge", "tagger", 3 * GB, {"macro_f1": 0.5})]})
    assert recommended(only_big, small_ram) == {}


def test_a_gpu_onnx_runtime_cannot_use_is_ranked_as_a_cpu() -> None:
    no_cuda = Machine(
        cpus=8, ram_bytes=32 * GB, gpu_name="NVIDIA Fake", gpu_memory_bytes=8 * GB, onnx_gpu=False
    )
    assert not no_cuda.runs_on_gpu and no_cuda.memory_bytes == 32 * GB
    assert "no CUDA provider (pip install onnxruntime-gpu): ranked for a CPU" in no_cuda.describe()
    assert recommended(Catalogue.load(), no_cuda)["detector"].name == "deepghs-head-v1.6-n-yv11"


def test_scores_need_a_source_and_must_be_fractions() -> None:
    data = entry("x", "detector", 10, {"f1": 0.9})
    del data["sources"]["scores"]
    with pytest.raises(CatalogError, match=r"sources\.scores must say where"):
        Catalogue.from_dict({"models": [data]})
    with pytest.raises(CatalogError, match="scores must map a metric name to a number from 0 to 1"):
        Catalogue.from_dict({"models": [entry("x", "detector", 10, {"f1": 92})]})
    for item in Catalogue.load().entries:
        assert not item.scores or item.sources["scores"], item.name


# --- reading the machine ------------------------------------------------------------------------------------------


def fake_torch(name: str | None, memory: int = 0) -> types.ModuleType:
    torch = types.ModuleType("torch")
    props = types.SimpleNamespace(name=name, total_memory=memory)
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: name is not None,
        device_count=lambda: 1 if name else 0,
        get_device_properties=lambda index: props,
    )
    return torch


def fake_onnxruntime(*providers: str) -> types.ModuleType:
    module = types.ModuleType("onnxruntime")
    module.get_available_providers = lambda: list(providers)  # type: ignore[attr-defined]
    return module


def test_detect_machine_reads_torch_and_onnx_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch("NVIDIA Fake 24G", 24 * GB))
    monkeypatch.setitem(
        sys.modules, "onnxruntime", fake_onnxruntime("CUDAExecutionProvider", "CPUExecutionProvider")
    )
    machine = detect_machine()
    assert machine.gpu_name == "NVIDIA Fake 24G" and machine.gpu_memory_bytes == 24 * GB
    assert machine.onnx_gpu is True and machine.runs_on_gpu
    assert machine.cpus >= 1 and machine.ram_bytes and machine.ram_bytes > 100_000_000

    monkeypatch.setitem(sys.modules, "torch", fake_torch(None))
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime("CPUExecutionProvider"))
    assert detect_machine().gpu_name is None and not detect_machine().runs_on_gpu

    monkeypatch.setitem(sys.modules, "torch", None)  # not importable: the CPU is what is left
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    machine = detect_machine()
    assert machine.gpu_name is None and machine.onnx_gpu is None
    assert "no GPU (torch is missing or sees none): ranked for a CPU" in machine.describe()


# --- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANIBOT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ANIBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables one row per line
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run_recommend(monkeypatch: pytest.MonkeyPatch, machine: Machine) -> str:
    import cli.models_cmd
    from cli.main import app

    monkeypatch.setattr(cli.models_cmd, "detect_machine", lambda: machine)
    result = CliRunner().invoke(app, ["models", "recommend"])
    assert result.exit_code == 0, result.output
    return result.stdout


def row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f" {name} " in line)


def test_cli_recommend_on_a_cpu_only_machine(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run_recommend(monkeypatch, CPU_ONLY)
    assert "This machine: 2 CPU cores, 8.0 GB RAM, no GPU" in out and "ranked for a CPU" in out
    nano = row(out, "deepghs-head-v1.6-n-yv11")
    assert nano.split("│")[1].strip() == "1" and "10.5 MB" in nano and "f1 0.92" in nano
    assert "recommended for a CPU: the smallest within 0.05 of the best published f1" in nano
    assert row(out, "deepghs-head-v2.0-s").split("│")[1].strip() == "2"
    assert "macro_f1 0.4772" in row(out, "wd-eva02-large-tagger-v3")
    assert (
        "`anibot demo --pull` installs: deepghs-head-v1.6-n-yv11 (detector), deepghs-ccip-caformer-24 (embedder), "
        "wd-swinv2-tagger-v3 (tagger)." in out
    )


def test_cli_recommend_on_a_gpu_machine(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run_recommend(monkeypatch, GPU)
    assert "GPU NVIDIA Fake 24G (24.0 GB): ranked for a GPU" in out
    small = row(out, "deepghs-head-v2.0-s")
    assert small.split("│")[1].strip() == "1" and "44.6 MB" in small and "map50_95 0.77833" in small
    assert "recommended for a GPU: the best published f1, then map50_95" in small
    eva = row(out, "wd-eva02-large-tagger-v3")
    assert eva.split("│")[1].strip() == "1" and "1,260.7 MB" in eva
    assert (
        "`anibot demo --pull` installs: deepghs-head-v2.0-s (detector), deepghs-ccip-caformer-24 (embedder), "
        "wd-eva02-large-tagger-v3 (tagger)." in out
    )


def test_cli_catalog_shows_published_scores(cli_env: None) -> None:
    from cli.main import app

    listed = CliRunner().invoke(app, ["models", "catalog"])
    assert listed.exit_code == 0, listed.output
    assert "published scores" in listed.stdout and "macro_f1 0.4541" in row(
        listed.stdout, "wd-swinv2-tagger-v3"
    )
    shown = CliRunner().invoke(app, ["models", "catalog", "deepghs-head-v1.6-n-yv11"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "published scores: f1 0.92, precision 0.95561" in text
    assert "491d9e58eb2b64f2762cfafa58ad617cbe3829a1" in text  # the threshold's second source, cited
    assert "0952bf49e2db9853ec4f6fd1b30ac7f989217d49/head_detect_v1.6_n_yv11/model.onnx" in text
