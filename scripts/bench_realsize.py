"""Benchmark: what the community models cost on this CPU, before anyone downloads them.

Builds stand-ins of the real sizes and input shapes with random weights, each installed as the catalogue entry it
stands for would be (same manifest, same file names, same format), and times them through the project's own slot
loaders, so preprocessing and post-processing are included:

- tagger: timm ``swinv2_base_window8_256`` at 448 px (window 14), as SmilingWolf's wd-swinv2-tagger-v3: NHWC BGR
  0-255 in, sigmoid scores out, with a ``selected_tags.csv`` of the real width (10,861 tags);
- embedder: timm ``caformer_s36`` at 384 px with a 768-wide projection, as deepghs' CCIP (NCHW, CLIP mean/std,
  stretched crops);
- detector: ultralytics ``yolo11n`` (one class, "head") exported to ONNX at 640 px, as deepghs' head detector.

Prints per-stage p50/p95 ms and images/s (detector, embedder with 1 and 3 heads of a picture in one call, tagger,
and a whole 3-head picture), the model-only run with and without IO binding, session load times (optimising,
and from the cached optimised graph), file sizes beside the real files' and the peak RSS of the timing process.
The stand-ins are built in a child process (torch, timm, ultralytics) and cached under ``.cache/bench-realsize``
(never committed); the timing process imports only ONNX Runtime and the project. Random weights: the figures are
speed, never accuracy (the detector finds no heads; the embedder is fed the scenes' true head boxes).

    .venv/bin/python scripts/bench_realsize.py --repeats 20   # alone on the machine: other work skews it
    .venv/bin/python scripts/bench_realsize.py --tiny      # small versions of the same architectures (smoke test)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.vision.slots.base import Manifest, file_sha256  # noqa: E402
from core.vision.slots.catalog import Catalogue  # noqa: E402
from scripts.benchmarking import CallTimings, machine_line, time_calls  # noqa: E402

CACHE = REPO / ".cache" / "bench-realsize"
SLOT_ORDER = ("detector", "embedder", "tagger")
ONE_HEAD = ["aoi"]
THREE_HEADS = ["aoi", "hikari", "rin"]
LOAD_TRIES = 2
BUILD_VERSION = 1  # bump when a builder changes: cached stand-ins are rebuilt


@dataclass(frozen=True)
class StandIn:
    """One stand-in model: the catalogue entry whose shape it copies, and how it is built."""

    slot: str
    entry: str  # catalogue name
    architecture: str
    input_size: int
    options: dict[str, Any] = field(default_factory=dict)  # builder arguments

    def key(self) -> str:
        payload = json.dumps([BUILD_VERSION, asdict(self)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# the real sizes; n_tags and the 768-wide CCIP projection are those of the real files
FULL = (
    StandIn(
        "detector", "deepghs-head-v1.6-n-yv11", "ultralytics yolo11n, 1 class", 640, {"yaml": "yolo11n.yaml"}
    ),
    StandIn(
        "embedder",
        "deepghs-ccip-caformer-24",
        "timm caformer_s36 + 768 projection",
        384,
        {"model": "caformer_s36", "dim": 768},
    ),
    StandIn(
        "tagger",
        "wd-swinv2-tagger-v3",
        "timm swinv2_base_window8_256 (window 14)",
        448,
        {"model": "swinv2_base_window8_256", "kwargs": {"window_size": 14}, "n_tags": 10861},
    ),
)
# small versions of the same architectures, for the smoke test
TINY = (
    StandIn(
        "detector", "deepghs-head-v1.6-n-yv11", "ultralytics yolo11n, 1 class", 160, {"yaml": "yolo11n.yaml"}
    ),
    StandIn(
        "embedder",
        "deepghs-ccip-caformer-24",
        "MetaFormer (caformer mixers), 4 x 1 blocks + 768 projection",
        64,
        {"model": "caformer_tiny", "dim": 768},
    ),
    StandIn(
        "tagger",
        "wd-swinv2-tagger-v3",
        "timm swinv2_base_window8_256, 4 x 1 blocks, width 16",
        64,
        {
            "model": "swinv2_base_window8_256",
            "kwargs": {"window_size": 4, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
            "n_tags": 10861,
        },
    ),
)


# --- building (child process: torch, timm, ultralytics) ----------------------------------------------------------


def _export(model: Any, example: Any, path: Path, output: str) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=[output],
            dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
            opset_version=17,
        )


def _synthetic_tags(n_tags: int) -> list[Any]:
    """A ``selected_tags.csv`` of ``n_tags`` rows: 4 ratings, then general tags, the last third characters
    (as the real v3 files: rating, general, character)."""
    from core.vision.slots.tagger import CATEGORY_CHARACTER, CATEGORY_GENERAL, CATEGORY_RATING, TagDef

    ratings = ["general", "sensitive", "questionable", "explicit"]
    n_characters = n_tags // 3
    tags = [TagDef(9_999_000 + i, name, CATEGORY_RATING, 0) for i, name in enumerate(ratings)]
    for i in range(n_tags - len(ratings)):
        character = i >= n_tags - len(ratings) - n_characters
        category = CATEGORY_CHARACTER if character else CATEGORY_GENERAL
        tags.append(TagDef(i, f"{'character' if character else 'tag'}_{i}", category, 1000))
    return tags


def build_tagger(spec: StandIn, folder: Path) -> dict[str, Any]:
    import timm
    import torch
    from torch import nn

    from core.vision.slots.tagger import write_selected_tags

    n_tags = int(spec.options["n_tags"])
    backbone = timm.create_model(
        spec.options["model"],
        pretrained=False,
        img_size=spec.input_size,
        num_classes=n_tags,
        **spec.options.get("kwargs", {}),
    )
    head = backbone.get_classifier()
    with torch.no_grad():  # a few tags over their threshold, most far below, as a real tagger answers
        nn.init.normal_(head.weight, std=0.01)
        head.bias.fill_(-5.0)
        head.bias[torch.randperm(n_tags)[:40]] = 0.5

    class Wd14Format(nn.Module):
        """NHWC float BGR 0-255 in, per-tag probabilities out, as SmilingWolf's exports."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1.0
            return torch.sigmoid(self.backbone(x))

    model = Wd14Format()
    onnx_path = folder / "model.onnx"
    _export(model, torch.full((1, spec.input_size, spec.input_size, 3), 255.0), onnx_path, "output")
    write_selected_tags(folder / "selected_tags.csv", _synthetic_tags(n_tags))
    return {"params": sum(p.numel() for p in model.parameters())}


def _caformer(spec: StandIn) -> Any:
    import timm

    if spec.options["model"] != "caformer_tiny":
        return timm.create_model(spec.options["model"], pretrained=False, num_classes=0)
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

    return MetaFormer(
        depths=(1, 1, 1, 1),
        dims=(16, 32, 64, 64),
        token_mixers=[SepConv, SepConv, Attention, Attention],
        norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2,
        num_classes=0,
    )


def build_embedder(spec: StandIn, folder: Path, filename: str) -> dict[str, Any]:
    import torch
    from torch import nn

    backbone = _caformer(spec)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, int(spec.options["dim"])))
    _export(model, torch.zeros(1, 3, spec.input_size, spec.input_size), folder / filename, "embedding")
    return {"params": sum(p.numel() for p in model.parameters())}


def build_detector(spec: StandIn, folder: Path) -> dict[str, Any]:
    from core.vision.slots.ultralytics_env import ultralytics_offline

    ultralytics_offline(folder.parent / "ultralytics")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO(spec.options["yaml"])
    yolo.model = DetectionModel(spec.options["yaml"], nc=1, verbose=False)
    yolo.model.names = {0: "head"}
    pt = folder / "stand_in.pt"
    yolo.save(pt)
    exported = Path(
        YOLO(str(pt)).export(
            format="onnx", imgsz=spec.input_size, simplify=False, dynamic=False, device="cpu"
        )
    )
    exported.replace(folder / "model.onnx")
    params = sum(p.numel() for p in yolo.model.parameters())
    pt.unlink()
    return {"params": params}


def build(spec: StandIn, folder: Path, catalogue: Catalogue) -> None:
    """Build ``spec`` into ``folder`` with the manifest its catalogue entry would install (random weights)."""
    import torch

    torch.manual_seed(0)
    entry = catalogue.get(spec.entry)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if spec.slot == "tagger":
        info = build_tagger(spec, folder)
    elif spec.slot == "embedder":
        info = build_embedder(spec, folder, next(f.filename for f in entry.files if f.role == "onnx"))
    else:
        info = build_detector(spec, folder)
    seconds = time.perf_counter() - started
    digests = {f.filename: file_sha256(folder / f.filename) for f in entry.files}
    stamp = {"key": spec.key(), "build_s": round(seconds, 1), "sha256": digests, **info}
    (folder / "stand_in.json").write_text(json.dumps(stamp) + "\n", encoding="utf-8")


def install_manifest(spec: StandIn, folder: Path, catalogue: Catalogue) -> Manifest:
    """The manifest ``anibot models pull`` would write for the entry ``spec`` stands for, over the stand-in's
    files; written at each run, so that a change of the catalogue entry (a model's switches) is timed too."""
    entry = catalogue.get(spec.entry)
    stamp_path = folder / "stand_in.json"
    stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    if set(stamp.get("sha256", {})) != {f.filename for f in entry.files}:  # built before digests were kept
        stamp["sha256"] = {f.filename: file_sha256(folder / f.filename) for f in entry.files}
        stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    manifest = entry.manifest(folder, stamp["sha256"])
    manifest = Manifest(
        **{
            **asdict(manifest),
            "folder": folder,
            "input_size": spec.input_size,
            "name": f"{entry.name}-stand-in",
        }
    )
    manifest.save()
    return manifest


def build_all(specs: Sequence[StandIn], root: Path) -> None:
    catalogue = Catalogue.load()
    torch_threads = os.environ.get("ANIBOT_TRAIN_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    for spec in specs:
        folder = root / spec.slot
        if not is_built(spec, folder):
            print(
                f"building the {spec.slot} stand-in ({spec.architecture}, {spec.input_size} px)...",
                flush=True,
            )
            build(spec, folder, catalogue)


def is_built(spec: StandIn, folder: Path) -> bool:
    stamp = folder / "stand_in.json"
    if not stamp.is_file():
        return False
    return json.loads(stamp.read_text(encoding="utf-8")).get("key") == spec.key()


# --- timing (this process: ONNX Runtime and the project only) ----------------------------------------------------


@dataclass(frozen=True)
class Row(CallTimings):
    stage: str
    case: str
    images_per_call: int
    seconds: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "case": self.case,
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "images_per_s": round(self.images_per_s, 3),
            "calls": len(self.seconds),
        }


@dataclass(frozen=True)
class ModelFigures:
    slot: str
    stands_for: str
    architecture: str
    input_size: int
    params: int
    file_mb: float
    real_file_mb: float | None
    build_s: float
    slot_load_s: float  # the slot's own loader (as a worker loads it: no graph cache)
    session_optimise_s: float  # a session optimising the graph and saving it (the first load)
    session_cached_s: float  # a session on the cached optimised graph (best of LOAD_TRIES)
    session_plain_s: float  # a session optimising the graph, no cache (best of LOAD_TRIES)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _seconds(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = call(*args, **kwargs)
    return out, time.perf_counter() - started


def load_models(
    root: Path, specs: Sequence[StandIn], settings: Any
) -> tuple[dict[str, Any], list[ModelFigures]]:
    """Each stand-in's session made with an empty graph cache (optimise and save), from the cache, and with no
    cache; then the slot loaded by its own loader; and its figures."""
    from core.vision.slots.onnx_runtime import onnx_session
    from core.vision.slots.registry import load_slot

    catalogue = Catalogue.load()
    slots: dict[str, Any] = {}
    figures = []
    cache_dir = Path(settings.data_dir) / "onnx-optimised"
    for spec in specs:
        folder = root / spec.slot
        manifest = install_manifest(spec, folder, catalogue)
        onnx_file = folder / manifest.files["onnx"]
        session_options = {"device": settings.device, "threads": settings.onnx_threads}
        _, optimise_s = _seconds(onnx_session, onnx_file, cache_dir=cache_dir, **session_options)
        plain, cached = [], []
        for _ in range(LOAD_TRIES):  # alternated, the best of each: loads are noisy on a shared machine
            plain.append(_seconds(onnx_session, onnx_file, **session_options)[1])
            cached.append(_seconds(onnx_session, onnx_file, cache_dir=cache_dir, **session_options)[1])
        plain_s, cached_s = min(plain), min(cached)
        slots[spec.slot], slot_s = _seconds(load_slot, manifest, settings)
        stamp = json.loads((folder / "stand_in.json").read_text(encoding="utf-8"))
        entry = catalogue.get(spec.entry)
        real = next((f.size for f in entry.files if f.role == "onnx"), None)
        figures.append(
            ModelFigures(
                slot=spec.slot,
                stands_for=spec.entry,
                architecture=spec.architecture,
                input_size=spec.input_size,
                params=int(stamp["params"]),
                file_mb=onnx_file.stat().st_size / 1e6,
                real_file_mb=real / 1e6 if real else None,
                build_s=float(stamp["build_s"]),
                slot_load_s=slot_s,
                session_optimise_s=optimise_s,
                session_cached_s=cached_s,
                session_plain_s=plain_s,
            )
        )
    return slots, figures


def time_stages(slots: dict[str, Any], repeats: int, warmup: int, pictures: int) -> list[Row]:
    from core.datasets.synth import render_scene
    from core.vision.slots.onnx_runtime import run_model
    from scripts.bench_models import head_crop

    one = [render_scene(10 + i, characters=ONE_HEAD) for i in range(pictures)]
    three = [render_scene(1010 + i, characters=THREE_HEADS) for i in range(pictures)]
    images = [s.image for s in one + three]
    crops_1 = [[head_crop(s.image, h.box) for h in s.heads] for s in one]
    crops_3 = [[head_crop(s.image, h.box) for h in s.heads] for s in three]
    detector, embedder, tagger = slots["detector"], slots["embedder"], slots["tagger"]

    def timed(
        stage: str, case: str, per_call: int, call: Callable[[Any], object], inputs: Sequence[Any]
    ) -> Row:
        return Row(stage, case, per_call, time_calls(call, inputs, repeats=repeats, warmup=warmup))

    def whole_picture(scene_index: int) -> None:
        scene = three[scene_index]
        detector.detect(scene.image)
        embedder.embed(crops_3[scene_index])  # the pipeline: every head of the picture in one call
        tagger.tag(scene.image)

    size = tagger.input_size
    tagger_batch = np.full((1, size, size, 3), 255.0, np.float32)
    side = embedder.input_size
    embedder_rows = 3 * (2 if embedder.flip else 1)  # 3 heads (and their mirrors, with flip averaging)
    embedder_batch = np.zeros((embedder_rows, 3, side, side), np.float32)
    tagger_feed = {tagger.input_name: tagger_batch}
    embedder_feed = {embedder.input_name: embedder_batch}
    rows = [
        timed("detector", "1 picture", 1, detector.detect, images),
        timed("embedder", "1 head", 1, embedder.embed, crops_1),
        timed("embedder", "3 heads, one call", 3, embedder.embed, crops_3),
        timed("tagger", "1 picture", 1, tagger.tag, images),
        timed("picture", "3 heads: detect + embed + tag", 1, whole_picture, list(range(len(three)))),
        timed(
            "tagger model", "run", 1, lambda _: run_model(tagger.session, tagger_feed, io_binding=False), [0]
        ),
        timed(
            "tagger model",
            "IO binding",
            1,
            lambda _: run_model(tagger.session, tagger_feed, io_binding=True),
            [0],
        ),
        timed(
            "embedder model",
            f"run, {embedder_rows} rows",
            3,
            lambda _: run_model(embedder.session, embedder_feed, io_binding=False),
            [0],
        ),
        timed(
            "embedder model",
            f"IO binding, {embedder_rows} rows",
            3,
            lambda _: run_model(embedder.session, embedder_feed, io_binding=True),
            [0],
        ),
    ]
    return rows


# --- report ------------------------------------------------------------------------------------------------------


def render(rows: Sequence[Row], models: Sequence[ModelFigures], notes: Sequence[str]) -> str:
    lines = [
        "| model | stands for | architecture | input | params (M) | file MB | real file MB | build s "
        "| slot load s | session s: optimise + save | session s: cached graph | session s: no cache |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        real = f"{m.real_file_mb:.1f}" if m.real_file_mb else "-"
        lines.append(
            f"| {m.slot} | {m.stands_for} | {m.architecture} | {m.input_size} px | {m.params / 1e6:.1f} "
            f"| {m.file_mb:.1f} | {real} | {m.build_s:.1f} | {m.slot_load_s:.2f} | {m.session_optimise_s:.2f} "
            f"| {m.session_cached_s:.2f} | {m.session_plain_s:.2f} |"
        )
    lines += ["", "| stage | case | p50 ms | p95 ms | images/s | calls |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.stage} | {r.case} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.images_per_s:.2f} | {len(r.seconds)} |"
        )
    lines += ["", *notes]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small versions of the same architectures")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each row")
    parser.add_argument("--pictures", type=int, default=4, help="distinct synthetic pictures of each kind")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"where stand-ins are kept (default {CACHE})"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.pictures < 1:
        parser.error("--repeats and --pictures must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    specs = TINY if args.tiny else FULL
    root = (args.cache or CACHE) / ("tiny" if args.tiny else "full")
    if args.build_only:
        build_all(specs, root)
        return 0
    if not all(is_built(spec, root / spec.slot) for spec in specs):
        child = [sys.executable, str(Path(__file__).resolve()), "--build-only", "--cache", str(root.parent)]
        subprocess.run(child + (["--tiny"] if args.tiny else []), check=True, cwd=REPO)

    from core.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-realsize-") as tmp:
        settings = Settings(models_dir=root, data_dir=Path(tmp), device="cpu", onnx_threads=args.threads)
        slots, models = load_models(root, specs, settings)
        rss_loaded = peak_rss_mb()
        rows = time_stages(slots, args.repeats, args.warmup, args.pictures)
    notes = [
        machine_line(root),
        f"ONNX Runtime threads: {args.threads or 'its default'}; {args.repeats} timed calls a row after "
        f"{args.warmup} untimed; stand-ins with random weights ({'tiny' if args.tiny else 'real sizes'})",
        f"peak RSS: {rss_loaded:.0f} MB with the three models loaded, {peak_rss_mb():.0f} MB after timing",
    ]
    print(render(rows, models, notes))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [r.to_dict() for r in rows],
                    "models": [asdict(m) for m in models],
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    "tiny": args.tiny,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
