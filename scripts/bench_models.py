"""Benchmark: per-call latency and images/s of each active model slot, ONNX Runtime against eager torch.

For each active slot, on synthetic scenes (``core.datasets.synth``) with 1 and 3 heads, on the CPU:

- detector: the active loader (``yolo-onnx``: ONNX Runtime) and the same weights through the other loader
  (``model.pt`` through ultralytics eager), per image;
- embedder: the ONNX embedder and its ``model.pt`` in eager torch (``core.learning.starter.embedder.load_eager``),
  fed the very same preprocessed batch with the same flip test-time augmentation, 1 and 8 head crops a call;
- tagger: the WD14 ONNX tagger and its ``model.pt`` in eager torch (``core.learning.starter.tagger.load_eager``);
- captioner: whatever is active, its ``caption(image, heads, tags)`` call (heads and tags: the scene's truth);
- the whole pipeline in process (``core.analysis.service``, as ``scripts/bench_pipeline.py`` runs it) on 1-head
  images, distinct so that each is a cache miss: p50/p95 seconds and the sum of the stages' own timings.

ONNX and eager outputs are compared on the same inputs (embeddings, tag probabilities, boxes): a speed
comparison of models giving different answers means nothing, so the script exits with status 1 when they
disagree. A model without its eager weights file is timed alone. The pipeline's gallery comes from the store
of the environment's settings (ANIBOT_DATA_DIR / ANIBOT_DATABASE_URL), to which the analyses are logged.

    .venv/bin/python scripts/bench_models.py --repeats 30 --threads 2 --json bench-models.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.analysis.service import AnalysisService  # noqa: E402
from core.datasets.synth import CAST_BY_KEY, Scene, render_scene  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage.kv import MemoryKV  # noqa: E402
from core.storage.store import Store  # noqa: E402
from core.vision.results import Box, Tag  # noqa: E402
from core.vision.slots.base import Detection, IdentifiedHead, Manifest  # noqa: E402
from core.vision.slots.embedder import flip_average, preprocess  # noqa: E402
from core.vision.slots.registry import SLOTS, ModelNotInstalled, active_manifest, load_slot  # noqa: E402
from core.vision.slots.tagger import wd14_preprocess  # noqa: E402
from scripts.benchmarking import (  # noqa: E402
    CallTimings,
    machine_line,
    scenes,
    stage_medians,
    time_calls,
    timed_analyses,
)

AIM_PIPELINE_P50_S = 0.3  # the aim: a whole 1-head image in <= 0.3 s p50 on 2 cores
ONE_HEAD = ["aoi"]
THREE_HEADS = ["aoi", "hikari", "rin"]
MIN_SCENES = 3  # of each kind: 3 three-head scenes give the 8 crops of the largest embedder batch
MAX_SCENES = 8
EMBEDDER_BATCHES = (1, 8)
EMBEDDING_TOLERANCE = 1e-3  # max abs difference of L2-normalised embeddings
PROBABILITY_TOLERANCE = 1e-3  # max abs difference of tag probabilities
BEST_BOX_MIN_IOU = 0.9
NO_WEIGHTS = "not available (no weights file)"

# model format -> (kind, engine name shown in the table); a slot's eager twin is the other kind
ENGINES: dict[str, tuple[str, str]] = {
    "yolo-onnx": ("onnx", "ONNX Runtime"),
    "yolo-pt": ("eager", "ultralytics eager"),
    "lite-torch": ("eager", "torch eager"),  # the Lite0 starter detector's torch weights
    "onnx-embedder": ("onnx", "ONNX Runtime"),
    "timm-embedder": ("eager", "timm eager"),
    "wd14-onnx": ("onnx", "ONNX Runtime"),
    "grounded-template": ("template", "grounded template (no model)"),
    "hf-vision-encoder-decoder": ("eager", "transformers eager"),
    "hf-blip": ("eager", "transformers eager"),
}
LITE_EAGER = "lite-torch"
DETECTOR_WEIGHTS = {"yolo-onnx": "onnx", "yolo-pt": "pt"}  # detector format -> manifest file role it runs
TORCH_ENGINE = "torch eager"
EAGER_LOADERS = {
    "embedder": "core.learning.starter.embedder",
    "tagger": "core.learning.starter.tagger",
}  # their load_eager


# --- what is measured --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing(CallTimings):
    """Seconds of repeated calls of one engine on one kind of input."""

    slot: str
    engine: str
    case: str  # what one call gets: "1 head", "8 crops", ...
    images_per_call: int
    seconds: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "images_per_s": round(self.images_per_s, 3),
        }


@dataclass(frozen=True)
class Agreement:
    """Whether an ONNX model and its eager twin give the same answers on the benchmark's inputs."""

    slot: str
    check: str
    result: str
    passed: bool


@dataclass(frozen=True)
class PipelineFigures:
    load_seconds: float  # models loaded by the service on its first use
    stages_p50_ms: dict[str, float]
    degraded: dict[str, str]  # stage -> reason, when a stage did not run fully


@dataclass
class Report:
    timings: list[Timing] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pipeline: PipelineFigures | None = None

    @property
    def agreed(self) -> bool:
        return all(a.passed for a in self.agreements)

    def timing(self, slot: str, engine: str) -> Timing | None:
        return next((t for t in self.timings if t.slot == slot and t.engine == engine), None)


@dataclass(frozen=True)
class BenchConfig:
    settings: Settings
    repeats: int
    warmup: int

    def time(self, call: Callable[[Any], object], inputs: Sequence[Any]) -> list[float]:
        return time_calls(call, inputs, repeats=self.repeats, warmup=self.warmup)


@dataclass(frozen=True)
class Inputs:
    """The synthetic scenes every engine of a slot is timed on."""

    one_head: list[Scene]
    three_heads: list[Scene]

    @classmethod
    def render(cls, count: int, seed: int) -> Inputs:
        return cls(
            [render_scene(seed + i, characters=ONE_HEAD) for i in range(count)],
            [render_scene(seed + 1000 + i, characters=THREE_HEADS) for i in range(count)],
        )

    def all_images(self) -> list[Image.Image]:
        return [s.image for s in self.one_head + self.three_heads]

    def crops(self) -> list[Image.Image]:
        """Head crops of the three-head scenes, cut as the pipeline cuts detected heads."""
        return [head_crop(s.image, h.box) for s in self.three_heads for h in s.heads]


def head_crop(image: Image.Image, box: Box) -> Image.Image:
    return image.crop((int(box.x1), int(box.y1), round(box.x2), round(box.y2)))


def engine_name(model_format: str) -> str:
    return ENGINES.get(model_format, ("", model_format))[1]


def weights_file(manifest: Manifest, role: str) -> Path | None:
    if role not in manifest.files:
        return None
    path = manifest.path(role)
    return path if path.is_file() else None


# --- eager twins of the ONNX models ------------------------------------------------------------------------------


class EagerEmbedder:
    """An ONNX embedder's weights in eager torch, fed exactly what :class:`OnnxEmbedder` feeds its session."""

    def __init__(self, model: Any, like: Any) -> None:
        self.model = model
        self.input_size: int = like.input_size
        self.mean: tuple[float, ...] = like.mean
        self.std: tuple[float, ...] = like.std
        self.resize: str = like.resize

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        import torch

        batch = preprocess(crops, self.input_size, self.mean, self.std, with_mirror=True, resize=self.resize)
        with torch.inference_mode():
            raw = self.model(torch.from_numpy(batch)).float().numpy()
        return flip_average(raw, len(crops))


class EagerTagger:
    """A WD14 ONNX tagger's weights in eager torch: same input, same thresholds as :class:`Wd14Tagger`."""

    def __init__(self, model: Any, like: Any) -> None:
        self.model = model
        self.like = like

    def scores(self, image: Image.Image) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return (
                self.model(torch.from_numpy(wd14_preprocess(image, self.like.input_size)))[0].float().numpy()
            )

    def tag(self, image: Image.Image) -> list[Tag]:
        return self.like.tags_from_scores(self.scores(image))


def max_abs_difference(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in pairs if a.size)


def tolerance_agreement(slot: str, what: str, difference: float, tolerance: float, calls: int) -> Agreement:
    return Agreement(
        slot,
        f"largest absolute difference of {what} <= {tolerance:.0e}",
        f"{difference:.2e} over {calls} inputs",
        difference <= tolerance,
    )


# --- one benchmark per slot --------------------------------------------------------------------------------------


def bench_detector(manifest: Manifest, config: BenchConfig, inputs: Inputs, report: Report) -> None:
    detectors = {manifest.format: load_slot(manifest, config.settings)}
    if manifest.format == "yolo-onnx" and manifest.extra.get("backbone") and weights_file(manifest, "torch"):
        from core.learning.starter.lite_detector import EagerLiteDetector

        served = detectors[manifest.format]
        detectors[LITE_EAGER] = EagerLiteDetector(manifest, confidence=served.confidence, iou=served.iou)
        return _time_detectors(detectors, config, inputs, report)
    for other in DETECTOR_WEIGHTS:
        if other == manifest.format:
            continue
        if weights_file(manifest, DETECTOR_WEIGHTS[other]) is None:
            report.notes.append(f"detector {ENGINES[other][0]}: {NO_WEIGHTS}")
        else:
            detectors[other] = load_slot(replace(manifest, format=other), config.settings)
    _time_detectors(detectors, config, inputs, report)


def _time_detectors(detectors: dict[str, Any], config: BenchConfig, inputs: Inputs, report: Report) -> None:
    for model_format, detector in detectors.items():
        for case, scenes_of_case in (("1 head", inputs.one_head), ("3 heads", inputs.three_heads)):
            images = [s.image for s in scenes_of_case]
            report.timings.append(
                Timing("detector", engine_name(model_format), case, 1, config.time(detector.detect, images))
            )
    if len(detectors) == 2:
        onnx, eager = (detectors[f] for f in sorted(detectors, key=lambda f: ENGINES[f][0] != "onnx"))
        report.agreements.append(detector_agreement(onnx, eager, inputs.all_images()))


def detector_agreement(onnx: Any, eager: Any, images: list[Image.Image]) -> Agreement:
    same_count = boxes_onnx = boxes_eager = 0
    ious: list[float] = []
    for image in images:
        found_onnx: list[Detection] = onnx.detect(image)
        found_eager: list[Detection] = eager.detect(image)
        same_count += len(found_onnx) == len(found_eager)
        boxes_onnx += len(found_onnx)
        boxes_eager += len(found_eager)
        if found_onnx:
            best = found_onnx[0].box
            ious.append(max((best.iou(d.box) for d in found_eager), default=0.0))
    lowest = f"{min(ious):.3f}" if ious else "n/a (no box)"
    return Agreement(
        "detector",
        f"same number of boxes; IoU of the ONNX best box with its eager match >= {BEST_BOX_MIN_IOU}",
        f"{same_count}/{len(images)} images with the same count "
        f"({boxes_onnx} ONNX, {boxes_eager} eager boxes), lowest IoU {lowest}",
        same_count == len(images) and min(ious, default=1.0) >= BEST_BOX_MIN_IOU,
    )


def bench_embedder(manifest: Manifest, config: BenchConfig, inputs: Inputs, report: Report) -> None:
    embedder = load_slot(manifest, config.settings)
    engines = {engine_name(manifest.format): embedder}
    eager = eager_twin(manifest, report, lambda model: EagerEmbedder(model, embedder))
    if eager is not None:
        engines[TORCH_ENGINE] = eager
    batches = {size: full_batches(inputs.crops(), size) for size in EMBEDDER_BATCHES}
    for engine, model in engines.items():
        for size, batch_list in batches.items():
            case = f"{size} crop" + ("s" if size > 1 else "")
            report.timings.append(
                Timing("embedder", engine, case, size, config.time(model.embed, batch_list))
            )
    if eager is not None:
        every_batch = [b for batch_list in batches.values() for b in batch_list]
        pairs = [(embedder.embed(b), eager.embed(b)) for b in every_batch]
        report.agreements.append(
            tolerance_agreement(
                "embedder", "embeddings", max_abs_difference(pairs), EMBEDDING_TOLERANCE, len(pairs)
            )
        )


def full_batches(crops: list[Image.Image], size: int) -> list[list[Image.Image]]:
    return [crops[i : i + size] for i in range(0, len(crops) - size + 1, size)]


def bench_tagger(manifest: Manifest, config: BenchConfig, inputs: Inputs, report: Report) -> None:
    tagger = load_slot(manifest, config.settings)
    engines = {engine_name(manifest.format): tagger}
    eager = eager_twin(manifest, report, lambda model: EagerTagger(model, tagger))
    if eager is not None:
        engines[TORCH_ENGINE] = eager
    images = [s.image for s in inputs.one_head]
    for engine, model in engines.items():
        report.timings.append(Timing("tagger", engine, "1 image (1 head)", 1, config.time(model.tag, images)))
    if eager is not None:
        pairs = [(tagger.scores(image), eager.scores(image)) for image in inputs.all_images()]
        report.agreements.append(
            tolerance_agreement(
                "tagger", "tag probabilities", max_abs_difference(pairs), PROBABILITY_TOLERANCE, len(pairs)
            )
        )


def eager_twin(manifest: Manifest, report: Report, wrap: Callable[[Any], Any]) -> Any | None:
    """The eager torch twin of an ONNX starter model (its ``model.pt``); None, with a note, without one."""
    if ENGINES.get(manifest.format, ("",))[0] != "onnx":
        report.notes.append(f"{manifest.slot}: the active format {manifest.format} has no ONNX/eager pair")
        return None
    if weights_file(manifest, "torch") is None:
        report.notes.append(f"{manifest.slot} eager: {NO_WEIGHTS}")
        return None
    load_eager = importlib.import_module(EAGER_LOADERS[manifest.slot]).load_eager
    return wrap(load_eager(manifest))


def bench_captioner(manifest: Manifest, config: BenchConfig, inputs: Inputs, report: Report) -> None:
    captioner = load_slot(manifest, config.settings)
    cases = [(s.image, true_heads(s), true_tags(s)) for s in inputs.one_head]
    seconds = config.time(lambda case: captioner.caption(*case), cases)
    report.timings.append(Timing("captioner", engine_name(manifest.format), "1 image (1 head)", 1, seconds))


def true_heads(scene: Scene) -> list[IdentifiedHead]:
    return [IdentifiedHead(CAST_BY_KEY[h.character].name, 1.0) for h in scene.heads]


def true_tags(scene: Scene) -> list[Tag]:
    return [Tag(name, 1.0, "general") for name in scene.tags] + [Tag(scene.rating, 1.0, "rating")]


SLOT_BENCHES: dict[str, Callable[[Manifest, BenchConfig, Inputs, Report], None]] = {
    "detector": bench_detector,
    "embedder": bench_embedder,
    "tagger": bench_tagger,
    "captioner": bench_captioner,
}


def bench_pipeline(config: BenchConfig, report: Report, seed: int) -> None:
    """The whole analysis of 1-head images in process, through the service as the CLI and workers run it."""
    settings = config.settings
    store = Store.from_settings(settings)
    store.create_all()
    service = AnalysisService(settings, MemoryKV(), store)
    started = time.perf_counter()
    _ = service.pipeline  # loads every model
    load_seconds = time.perf_counter() - started
    images = scenes(config.warmup + config.repeats, seed, characters=ONE_HEAD)
    timed = timed_analyses(service, images, settings.top_n)[config.warmup :]
    case = "1-head image"
    report.timings.append(Timing("pipeline", "service in process", case, 1, [t.seconds for t in timed]))
    stage_sums = [sum(t.stages_ms.values()) / 1000 for t in timed]
    report.timings.append(Timing("pipeline", "sum of stages", case, 1, stage_sums))
    degraded = {f.stage: f.reason for t in timed for f in t.outcome.result.degraded}
    report.pipeline = PipelineFigures(load_seconds, stage_medians(timed), degraded)


# --- output ------------------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], align: str, rows: Sequence[Sequence[object]]) -> str:
    """``align``: one character per column, ``l`` or ``r``."""
    lines = [table_row(header), table_row("---" if a == "l" else "---:" for a in align)]
    lines += [table_row(row) for row in rows]
    return "\n".join(lines)


def table_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def milliseconds(value: float) -> str:
    """One decimal, or three below 1 ms (a template caption takes microseconds)."""
    return f"{value:.3f}" if value < 1 else f"{value:.1f}"


def timings_table(timings: list[Timing]) -> str:
    header = ("slot", "engine", "input per call", "p50 ms", "p95 ms", "images/s", "calls")
    rows = [
        (
            t.slot,
            t.engine,
            t.case,
            milliseconds(t.p50_ms),
            milliseconds(t.p95_ms),
            f"{t.images_per_s:.1f}",
            len(t.seconds),
        )
        for t in timings
    ]
    return markdown_table(header, "lllrrrr", rows)


def agreement_table(agreements: list[Agreement]) -> str:
    header = ("slot", "ONNX vs eager check", "result", "agreed")
    rows = [(a.slot, a.check, a.result, "yes" if a.passed else "NO") for a in agreements]
    return markdown_table(header, "llll", rows)


def pipeline_summary(report: Report) -> list[str]:
    whole = report.timing("pipeline", "service in process")
    stage_sum = report.timing("pipeline", "sum of stages")
    if whole is None or stage_sum is None or report.pipeline is None:
        return []
    p50_s = whole.p50_ms / 1000
    met = "met" if p50_s <= AIM_PIPELINE_P50_S else "NOT met"
    lines = [
        f"whole pipeline, 1-head image: p50 {p50_s:.3f} s, p95 {whole.p95_ms / 1000:.3f} s; "
        f"sum of stages p50 {stage_sum.p50_ms / 1000:.3f} s; aim <= {AIM_PIPELINE_P50_S} s p50: {met}",
        "  per stage p50: "
        + ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in report.pipeline.stages_p50_ms.items())
        + f"; models loaded in {report.pipeline.load_seconds:.2f} s",
    ]
    lines += [f"  degraded: {stage}: {reason}" for stage, reason in report.pipeline.degraded.items()]
    return lines


def render(report: Report, header: str) -> str:
    parts = [header, "", timings_table(report.timings), ""]
    if report.agreements:
        parts += [agreement_table(report.agreements), ""]
    parts += [f"- {note}" for note in report.notes]
    parts += pipeline_summary(report)
    verdict = "all checks passed" if report.agreed else "ONNX and eager outputs DISAGREE"
    parts.append(f"agreement: {verdict}" if report.agreements else "agreement: nothing to compare")
    return "\n".join(parts)


def report_json(report: Report, header: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "machine": header,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timings": [t.to_dict() for t in report.timings],
        "agreements": [asdict(a) for a in report.agreements],
        "agreed": report.agreed,
        "notes": report.notes,
        "pipeline": asdict(report.pipeline) if report.pipeline else None,
        "aim_pipeline_p50_s": AIM_PIPELINE_P50_S,
    }


# --- command line ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="default: ANIBOT_MODELS_DIR / settings")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per engine and input")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch intra-op threads")
    parser.add_argument("--seed", type=int, default=8_500_000, help="first synthetic scene")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    return args


def bench_settings(models_dir: Path | None, threads: int) -> Settings:
    chosen = {"models_dir": models_dir} if models_dir is not None else {}
    return Settings(**chosen, onnx_threads=threads, device="cpu")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; 1 when ONNX and eager outputs disagree, else 0."""
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    settings = bench_settings(args.models_dir, args.threads)
    config = BenchConfig(settings, args.repeats, args.warmup)
    inputs = Inputs.render(min(MAX_SCENES, max(MIN_SCENES, args.repeats)), args.seed)
    report = Report()
    for slot in SLOTS:
        try:
            manifest = active_manifest(settings.models_dir, slot)
        except ModelNotInstalled as exc:
            manifest, reason = None, str(exc)
        else:
            reason = f"no {slot} model installed"
        if manifest is None:
            report.notes.append(f"{slot}: {reason}")
            continue
        SLOT_BENCHES[slot](manifest, config, inputs, report)
    bench_pipeline(config, report, args.seed + 100_000)
    header = f"{machine_line(settings.models_dir)}; {args.threads} threads (ONNX Runtime intra-op, torch)"
    print(render(report, header))
    if args.json is not None:
        args.json.write_text(
            json.dumps(report_json(report, header, args), indent=2, ensure_ascii=False) + "\n"
        )
    return 0 if report.agreed else 1


if __name__ == "__main__":
    raise SystemExit(main())
