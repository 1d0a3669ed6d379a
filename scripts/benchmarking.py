"""What the benchmark scripts share: their inputs (synthetic scenes), percentiles, timing of repeated calls,
in-process analyses through the service, and the line saying which machine the figures come from."""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image

from core.analysis.service import AnalysisOutcome, AnalysisService
from core.datasets.synth import render_scene
from core.storage.jobs import Requester

T = TypeVar("T")
PIPELINE_STAGES = ("detector", "identify", "tagger", "captioner")  # in the order they run


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class CallTimings:
    """p50 / p95 milliseconds and images per second of a benchmark row: a dataclass mixing it in has
    ``images_per_call`` and ``seconds`` (one entry per timed call)."""

    images_per_call: int
    seconds: list[float]

    @property
    def p50_ms(self) -> float:
        return pct(self.seconds, 50) * 1000

    @property
    def p95_ms(self) -> float:
        return pct(self.seconds, 95) * 1000

    @property
    def images_per_s(self) -> float:
        """Images (or crops) per second over all the timed calls."""
        return self.images_per_call * len(self.seconds) / sum(self.seconds)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scenes(n: int, seed: int, characters: list[str] | None = None) -> list[bytes]:
    """PNG bytes of the synthetic scenes ``seed`` .. ``seed + n - 1`` (exactly ``characters`` when given)."""
    return [png_bytes(render_scene(seed + i, characters=characters).image) for i in range(n)]


def machine_line(models_dir: Path) -> str:
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; models in {models_dir}"
    )


def time_calls(call: Callable[[T], object], inputs: Sequence[T], *, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``call`` after ``warmup`` untimed ones, cycling ``inputs``."""
    for i in range(warmup):
        call(inputs[i % len(inputs)])
    seconds = []
    for i in range(repeats):
        item = inputs[(warmup + i) % len(inputs)]
        started = time.perf_counter()
        call(item)
        seconds.append(time.perf_counter() - started)
    return seconds


@dataclass(frozen=True)
class TimedAnalysis:
    seconds: float  # the whole ``AnalysisService.analyze`` call
    stages_ms: dict[str, float]  # the pipeline's own timing of each stage
    outcome: AnalysisOutcome


def timed_analyses(service: AnalysisService, images: Sequence[bytes], top_n: int) -> list[TimedAnalysis]:
    """Analyse each image in process, one after the other; distinct images, so each is a cache miss."""
    timed = []
    for data in images:
        started = time.perf_counter()
        outcome = service.analyze(data, top_n=top_n, requester=Requester("bench"))
        timed.append(TimedAnalysis(time.perf_counter() - started, outcome.result.timings_ms, outcome))
    return timed


def stage_medians(timed: Sequence[TimedAnalysis]) -> dict[str, float]:
    """Median milliseconds of each pipeline stage over the analyses in which it ran, in pipeline order."""
    stages: dict[str, list[float]] = {}
    for analysis in timed:
        for stage, ms in analysis.stages_ms.items():
            stages.setdefault(stage, []).append(ms)
    order = [s for s in PIPELINE_STAGES if s in stages] + [s for s in stages if s not in PIPELINE_STAGES]
    return {stage: statistics.median(stages[stage]) for stage in order}
