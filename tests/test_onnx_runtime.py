"""ONNX Runtime sessions: which provider runs and the one log line saying why, the optimised-graph cache, IO
binding (CUDA only), and the slot loaders passing the device through. No GPU here: CUDA is asked for and found
missing, or a faked provider list makes ONNX Runtime try it and fall back, never run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from core.settings import Settings
from core.vision.slots import onnx_runtime
from core.vision.slots.onnx_runtime import (
    CPU,
    CUDA,
    cached_optimised_path,
    choose_providers,
    onnx_session,
    run_model,
)
from core.vision.slots.tagger import TagDef, Wd14Tagger, write_selected_tags

LOGGER = "core.vision.slots.onnx_runtime"


def matmul_model(path: Path, n_in: int = 4, n_out: int = 3) -> Path:
    """(batch, n_in) -> (batch, n_out): x @ W + b, then a ReLU (fixed weights, dynamic batch)."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [n_in, n_out], rng.normal(size=n_in * n_out).tolist())
    bias = helper.make_tensor("B", TensorProto.FLOAT, [n_out], rng.normal(size=n_out).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def wd14_model(path: Path, n_tags: int, size: int = 16) -> Path:
    """WD14 signature: (batch, size, size, 3) -> (batch, n_tags) sigmoid of the mean pixel times fixed weights."""
    rng = np.random.default_rng(1)
    weight = helper.make_tensor(
        "W", TensorProto.FLOAT, [3, n_tags], (rng.normal(size=3 * n_tags) / 255).tolist()
    )
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["y"]),
        ],
        "wd14",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_tags])],
        initializer=[weight, axes],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return matmul_model(tmp_path / "model.onnx")


def session_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


# --- which provider, and why (pure) -------------------------------------------------------------------------------


def test_cpu_asked_runs_on_the_cpu_quietly() -> None:
    choice = choose_providers("cpu", [CUDA, CPU])
    assert choice.providers == [CPU] and not choice.warn and choice.reason == "device=cpu"


def test_cuda_asked_and_available_comes_first() -> None:
    for device in ("cuda", "auto"):
        choice = choose_providers(device, [CUDA, CPU])
        assert choice.providers == [CUDA, CPU] and not choice.warn


def test_cuda_asked_with_the_cpu_package_says_install_onnxruntime_gpu() -> None:
    choice = choose_providers("cuda", ["AzureExecutionProvider", CPU], packages=["onnxruntime"])
    assert choice.providers == [CPU] and choice.warn
    assert "device=cuda asked but onnxruntime-gpu is not installed" in choice.reason
    assert "install onnxruntime-gpu in place of onnxruntime" in choice.reason


def test_both_packages_installed_names_the_shadowing() -> None:
    choice = choose_providers("cuda", [CPU], packages=["onnxruntime", "onnxruntime-gpu"])
    assert choice.warn and "shadows" in choice.reason and "install onnxruntime-gpu alone" in choice.reason


def test_auto_warns_only_when_a_gpu_is_there() -> None:
    quiet = choose_providers("auto", [CPU], packages=["onnxruntime"], has_gpu=False)
    assert quiet.providers == [CPU] and not quiet.warn and "no GPU here" in quiet.reason
    loud = choose_providers("auto", [CPU], packages=["onnxruntime"], has_gpu=True)
    assert loud.providers == [CPU] and loud.warn and "has an NVIDIA GPU" in loud.reason


# --- sessions: one log line ---------------------------------------------------------------------------------------


def test_cuda_asked_without_onnxruntime_gpu_logs_one_warning(
    model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_runtime, "onnxruntime_packages", lambda: ["onnxruntime"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    caplog.set_level(logging.INFO, logger=LOGGER)
    session = onnx_session(model, device="cuda", threads=1)
    assert session.get_providers() == [CPU]
    [record] = session_lines(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith(
        "ONNX Runtime model.onnx: running on CPU (device=cuda asked but onnxruntime-gpu"
    )
    assert "graph optimisation all, 1 threads" in message


def test_cuda_provider_listed_but_failing_to_load_is_said(
    model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A faked provider list (as onnxruntime-gpu reports it): ONNX Runtime is asked for CUDA, cannot have it here
    and falls back to the CPU; the line says so instead of staying silent."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnx_runtime, "onnxruntime_packages", lambda: ["onnxruntime-gpu"])
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.warns(UserWarning, match=CUDA):  # ONNX Runtime's own, easy to miss among a worker's output
        session = onnx_session(model, device="auto")
    assert CUDA not in session.get_providers()
    [record] = session_lines(caplog)
    assert record.levelno == logging.WARNING
    assert "running on CPU (device=auto, but the CUDA provider failed to load" in record.getMessage()
    assert "onnxruntime-gpu" in record.getMessage()


def test_cpu_session_logs_one_info_line_and_computes(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    session = onnx_session(model, device="cpu")
    [record] = session_lines(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "ONNX Runtime model.onnx: running on CPU (device=cpu); graph optimisation all, default threads"
    )
    out = run_model(session, {"x": np.ones((2, 4), np.float32)})[0]
    assert out.shape == (2, 3) and (out >= 0).all()


def test_explicit_providers_still_work_for_old_callers(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    session = onnx_session(model, providers=[CUDA, CPU], threads=1)
    assert session.get_providers() == [CPU]
    [record] = session_lines(caplog)
    assert record.levelno == logging.WARNING and f"{CUDA} asked but" in record.getMessage()


def test_graph_optimisation_is_all(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = ort.InferenceSession

    def recording(path: str, sess_options: Any, providers: list[str]) -> Any:
        seen.append((sess_options.graph_optimization_level, sess_options.intra_op_num_threads))
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    onnx_session(model, device="cpu", threads=2)
    assert seen == [(ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 2)]


# --- the optimised-graph cache ------------------------------------------------------------------------------------


def test_optimised_graph_is_saved_then_loaded_and_gives_the_same_outputs(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger=LOGGER)
    x = {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    plain = run_model(onnx_session(model, device="cpu"), x)[0]
    first = onnx_session(model, device="cpu", cache_dir=cache)
    [saved] = list(cache.iterdir())
    assert saved.name.endswith(".optimised.onnx") and not list(cache.glob("*.tmp"))
    second = onnx_session(model, device="cpu", cache_dir=cache)
    messages = [r.getMessage() for r in session_lines(caplog)]
    assert f"optimised graph saved to {saved}" in messages[1]
    assert f"optimised graph loaded from {saved}" in messages[2]
    np.testing.assert_allclose(run_model(first, x)[0], plain, rtol=1e-6)
    np.testing.assert_allclose(run_model(second, x)[0], plain, rtol=1e-6)


def test_a_changed_model_never_loads_a_stale_graph(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = cached_optimised_path(model, cache, [CPU], ort.__version__)
    assert before == cached_optimised_path(model, cache, [CPU], ort.__version__)
    assert before != cached_optimised_path(model, cache, [CUDA, CPU], ort.__version__)
    assert before != cached_optimised_path(model, cache, [CPU], "0.0.0")
    matmul_model(model, n_out=5)  # rewritten: new size
    os.utime(model, ns=(1, 1))
    after = cached_optimised_path(model, cache, [CPU], ort.__version__)
    assert after != before
    session = onnx_session(model, device="cpu", cache_dir=cache)
    assert run_model(session, {"x": np.ones((1, 4), np.float32)})[0].shape == (1, 5)


# --- IO binding: CUDA only ----------------------------------------------------------------------------------------


def test_io_binding_on_the_cpu_gives_what_run_gives(model: Path) -> None:
    session = onnx_session(model, device="cpu")
    x = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) / 8}
    np.testing.assert_array_equal(run_model(session, x, io_binding=True)[0], run_model(session, x)[0])


class FakeBinding:
    def __init__(self, log: list[tuple[str, ...]]) -> None:
        self.log = log

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.log.append(("input", name, str(array.shape)))

    def bind_output(self, name: str, device: str) -> None:
        self.log.append(("output", name, device))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [np.zeros((1, 3), np.float32)]


class FakeSession:
    """What run_model needs of a session; ``providers`` as a CUDA session reports them."""

    def __init__(self, providers: list[str]) -> None:
        self.providers = providers
        self.log: list[tuple[str, ...]] = []

    def get_providers(self) -> list[str]:
        return self.providers

    def get_outputs(self) -> list[Any]:
        return [type("Output", (), {"name": "y"})()]

    def io_binding(self) -> FakeBinding:
        return FakeBinding(self.log)

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.log.append(("run_with_iobinding",))

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.log.append(("run",))
        return [np.ones((1, 3), np.float32)]


def test_io_binding_is_used_on_cuda_and_not_on_the_cpu() -> None:
    cuda = FakeSession([CUDA, CPU])
    run_model(cuda, {"x": np.ones((1, 4), np.float32)})
    assert cuda.log == [("input", "x", "(1, 4)"), ("output", "y", "cuda"), ("run_with_iobinding",)]
    cpu = FakeSession([CPU])
    run_model(cpu, {"x": np.ones((1, 4), np.float32)})
    assert cpu.log == [("run",)]


# --- the slots pass the device through ----------------------------------------------------------------------------


def test_tagger_loader_says_why_it_runs_on_the_cpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.vision.slots.base import Manifest

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    monkeypatch.setattr(onnx_runtime, "onnxruntime_packages", lambda: ["onnxruntime"])
    tags = [TagDef(i, f"tag_{i}", 0, 1) for i in range(6)] + [TagDef(99, "general", 9, 1)]
    wd14_model(tmp_path / "model.onnx", len(tags))
    write_selected_tags(tmp_path / "selected_tags.csv", tags)
    manifest = Manifest(
        slot="tagger",
        name="tiny-wd14",
        format="wd14-onnx",
        files={"onnx": "model.onnx", "tags": "selected_tags.csv"},
        folder=tmp_path,
    )
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = Settings(device="cuda", onnx_threads=1, data_dir=tmp_path / "var")
    tagger = Wd14Tagger.from_manifest(manifest, settings)
    [record] = session_lines(caplog)
    assert record.levelno == logging.WARNING
    assert (
        "model.onnx: running on CPU (device=cuda asked but onnxruntime-gpu is not installed"
        in record.getMessage()
    )
    assert tagger.input_size == 16
    assert [t.name for t in tagger.tag(Image.new("RGB", (20, 10)))][-1:] == ["general"]


def test_an_unusable_cache_folder_only_costs_the_cache(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    caplog.set_level(logging.INFO, logger=LOGGER)
    session = onnx_session(model, device="cpu", cache_dir=blocker / "cache")
    assert run_model(session, {"x": np.ones((1, 4), np.float32)})[0].shape == (1, 3)
    [record] = session_lines(caplog)
    assert "optimised graph not cached" in record.getMessage()


def test_a_fallen_back_session_saves_no_graph_under_the_cuda_key(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match=CUDA):
        onnx_session(model, device="cuda", cache_dir=cache)
    assert list(cache.iterdir()) == []
