"""Every head of a picture goes to the embedder in one call, and the ONNX embedder runs them (with their mirrors)
in one model call on a dynamic-batch graph: counted on a small stand-in graph built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from core.analysis.pipeline import AnalysisPipeline, GalleryProvider, IdentifyParams, LoadedSlots
from core.characters.gallery import Calibration
from core.settings import Settings
from core.storage.store import Store
from core.vision.results import Box
from core.vision.slots.base import Detection
from core.vision.slots.embedder import OnnxEmbedder

SIZE = 8
DIM = 5


def embedder_graph(path: Path, batch: int | str = "batch") -> Path:
    """(batch, 3, 8, 8) -> (batch, 5): the mean of each channel and of its left half, times fixed weights (a
    mirror gives another answer, so flip averaging is visible)."""
    rng = np.random.default_rng(3)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [6, DIM], rng.normal(size=6 * DIM).tolist())
    hw = helper.make_tensor("hw", TensorProto.INT64, [2], [2, 3])
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [SIZE // 2])
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [3])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "hw"], ["all"], keepdims=0),
            helper.make_node("Slice", ["x", "starts", "ends", "axis"], ["left"]),
            helper.make_node("ReduceMean", ["left", "hw"], ["half"], keepdims=0),
            helper.make_node("Concat", ["all", "half"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "W"], ["y"]),
        ],
        "embedder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, DIM])],
        initializer=[weight, hw, starts, ends, axis],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


class CountingSession:
    """The real session, with the number of rows of each model call written down."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.rows: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        (batch,) = feeds.values()
        self.rows.append(len(batch))
        return self.session.run(names, feeds)


def crops(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)) for _ in range(n)]


def counted(path: Path, **kwargs: Any) -> tuple[OnnxEmbedder, CountingSession]:
    embedder = OnnxEmbedder(path, version="t@1", device="cpu", **kwargs)
    counter = CountingSession(embedder.session)
    embedder.session = counter
    return embedder, counter


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    return embedder_graph(tmp_path / "dynamic.onnx")


def test_three_heads_and_their_mirrors_are_one_model_call(dynamic: Path) -> None:
    embedder, counter = counted(dynamic)
    assert embedder.fixed_batch is None  # the graph's batch dimension is symbolic
    heads = crops(3)
    together = embedder.embed(heads)
    assert counter.rows == [6]
    alone = np.concatenate([embedder.embed([c]) for c in heads])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_without_flip_one_row_a_head(dynamic: Path) -> None:
    embedder, counter = counted(dynamic, flip=False)
    embedder.embed(crops(3))
    assert counter.rows == [3]


def test_many_heads_fill_whole_calls(dynamic: Path) -> None:
    embedder, counter = counted(dynamic, batch_size=8)
    out = embedder.embed(crops(9))
    assert counter.rows == [8, 8, 2]  # 4 heads + 4 mirrors a call, then the ninth and its mirror
    assert out.shape == (9, DIM)


def test_a_fixed_batch_graph_is_fed_its_batch_padded(dynamic: Path, tmp_path: Path) -> None:
    fixed, counter = counted(embedder_graph(tmp_path / "fixed.onnx", batch=4))
    assert fixed.fixed_batch == 4
    heads = crops(3)
    out = fixed.embed(heads)
    assert counter.rows == [4, 4]  # 6 rows: 4, then 2 padded to 4
    np.testing.assert_allclose(out, OnnxEmbedder(dynamic, version="t@1").embed(heads), atol=1e-6)


class ThreeHeads:
    version = "three@1"

    def detect(self, image: Image.Image) -> list[Detection]:
        return [Detection(Box(x, 2, x + 10, 14), 0.9) for x in (2, 20, 40)]


def test_the_pipeline_hands_every_head_of_a_picture_to_the_embedder_at_once(
    dynamic: Path, tmp_path: Path
) -> None:
    embedder, counter = counted(dynamic)
    calls: list[int] = []
    embed = embedder.embed

    def recording_embed(heads: list[Image.Image]) -> np.ndarray:
        calls.append(len(heads))
        return embed(heads)

    embedder.embed = recording_embed  # type: ignore[method-assign]
    store = Store.from_settings(Settings(data_dir=tmp_path, models_dir=tmp_path / "models"))
    store.create_all()
    slots = LoadedSlots(detector=ThreeHeads(), embedder=embedder)
    pipeline = AnalysisPipeline(
        slots,
        GalleryProvider(store, embedder.version, embedder.dim),
        IdentifyParams(0.5, Calibration(scale=10.0, shift=0.5)),
        "fp",
    )
    result = pipeline.analyze(Image.new("RGB", (64, 20), (200, 120, 90)), "0" * 64, top_n=3)
    assert len(result.heads) == 3
    assert calls == [3] and counter.rows == [6]
