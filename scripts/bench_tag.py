"""Benchmark: `anibot tag` on a folder, in pictures/s, for the starter tagger and a real-size stand-in, in process
and through 1 and 2 worker processes (Redis + Celery, as `anibot tag --queue` runs).

The stand-in is a random-weight ONNX tagger of WD14 SwinV2's size, built here in seconds with onnx.helper: a
4-pixel patch stem and four stages of windowed-attention blocks (depths 2, 2, 18, 2; widths 128 to 1024; 7x7
windows) at 448 px, about 96 M weights and 60 G multiply-adds a picture (SwinV2-Base at 448: about 88 M and
64 G), with one output per tag of the vocabulary (ANIBOT_TAG_VOCABULARY or --vocabulary, a WD14
selected_tags.csv). Its scores mean nothing; its speed is what a real tagger of that size costs here.

Prints figures; asserts nothing. Uses the Redis of ANIBOT_BENCH_REDIS_URL (default redis://127.0.0.1:6379/12,
which it empties).

    .venv/bin/python scripts/bench_tag.py --models-dir models --pictures 24 --standin-pictures 6
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.settings import Settings  # noqa: E402
from core.storage.jobs import Requester  # noqa: E402
from core.tagging.captions import CaptionOptions  # noqa: E402
from core.tagging.folders import collect  # noqa: E402
from core.tagging.implications import Implications  # noqa: E402
from core.tagging.runner import FolderRun, LocalSource  # noqa: E402
from core.vision.slots.base import Manifest, file_sha256  # noqa: E402
from core.vision.slots.registry import active_manifest, load_slot, set_active  # noqa: E402
from core.vision.slots.tagger import read_selected_tags, write_selected_tags  # noqa: E402
from scripts.benchmarking import machine_line  # noqa: E402

STANDIN_DEPTHS = (2, 2, 18, 2)
STANDIN_WIDTH = 128
STANDIN_WINDOW = 7
STANDIN_SIZE = 448


def build_standin(folder: Path, vocabulary: Path, seed: int = 0) -> Manifest:
    """The random-weight WD14-format tagger described in the module's docstring, installed in ``folder``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    tags = read_selected_tags(vocabulary)
    nodes: list = []
    weights: list = []
    count = [0]

    def name(prefix: str) -> str:
        count[0] += 1
        return f"{prefix}{count[0]}"

    def const(array: np.ndarray, prefix: str = "w") -> str:
        key = name(prefix)
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array), key))
        return key

    def op(kind: str, inputs: list[str], **attrs) -> str:  # type: ignore[no-untyped-def]
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def shape(*dims: int) -> str:
        return const(np.array(dims, np.int64), "shape")

    def dense(x: str, d_in: int, d_out: int) -> str:
        w = (rng.standard_normal((d_in, d_out), dtype=np.float32) * (1.0 / np.sqrt(d_in))).astype(np.float32)
        return op("Add", [op("MatMul", [x, const(w)]), const(np.zeros(d_out, np.float32))])

    def norm(x: str, d: int) -> str:
        return op(
            "LayerNormalization", [x, const(np.ones(d, np.float32)), const(np.zeros(d, np.float32))], axis=-1
        )

    def gelu(x: str) -> str:  # x * sigmoid(1.702 x)
        return op("Mul", [x, op("Sigmoid", [op("Mul", [x, const(np.array(1.702, np.float32))])])])

    def block(x: str, c: int) -> str:
        h = norm(x, c)
        q, k, v = (dense(h, c, c) for _ in range(3))
        scores = op(
            "Mul",
            [op("MatMul", [q, op("Transpose", [k], perm=[0, 2, 1])]), const(np.array(c**-0.5, np.float32))],
        )
        attended = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        x = op("Add", [x, dense(attended, c, c)])
        return op("Add", [x, dense(gelu(dense(norm(x, c), c, 4 * c)), 4 * c, c)])

    win = STANDIN_WINDOW
    x = op("Div", [op("Transpose", ["input"], perm=[0, 3, 1, 2]), const(np.array(255.0, np.float32))])
    stem = (rng.standard_normal((STANDIN_WIDTH, 3, 4, 4), dtype=np.float32) * 0.2).astype(np.float32)
    x = op("Conv", [x, const(stem)], strides=[4, 4], kernel_shape=[4, 4])
    x = op("Transpose", [x], perm=[0, 2, 3, 1])  # (B, 112, 112, C)
    side, c = STANDIN_SIZE // 4, STANDIN_WIDTH
    x = norm(x, c)
    for stage, depth in enumerate(STANDIN_DEPTHS):
        n = side // win
        x = op("Reshape", [x, shape(-1, n, win, n, win, c)])
        x = op("Reshape", [op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5]), shape(-1, win * win, c)])
        for _ in range(depth):
            x = block(x, c)
        x = op("Reshape", [x, shape(-1, n, n, win, win, c)])
        x = op("Reshape", [op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5]), shape(-1, side, side, c)])
        if stage < len(STANDIN_DEPTHS) - 1:  # patch merging: 2x2 tokens into one, twice as wide
            x = op("Reshape", [x, shape(-1, side // 2, 2, side // 2, 2, c)])
            x = op(
                "Reshape",
                [op("Transpose", [x], perm=[0, 1, 3, 2, 4, 5]), shape(-1, side // 2, side // 2, 4 * c)],
            )
            x = dense(norm(x, 4 * c), 4 * c, 2 * c)
            side, c = side // 2, c * 2
    pooled = op("ReduceMean", [norm(x, c)], axes=[1, 2], keepdims=0)
    head = (rng.standard_normal((c, len(tags)), dtype=np.float32) * (1.3 / np.sqrt(c))).astype(np.float32)
    logits = op("Add", [op("MatMul", [pooled, const(head)]), const(np.full(len(tags), -4.0, np.float32))])
    nodes.append(helper.make_node("Sigmoid", [logits], ["output"]))
    graph = helper.make_graph(
        nodes,
        "standin-swinv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", STANDIN_SIZE, STANDIN_SIZE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(tags)])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_selected_tags(folder / "selected_tags.csv", tags)
    n_weights = sum(int(np.prod(w.dims)) for w in weights)
    manifest = Manifest(
        slot="tagger",
        name=folder.name,
        format="wd14-onnx",
        files={"onnx": "model.onnx", "tags": "selected_tags.csv"},
        sha256={f: file_sha256(folder / f) for f in ("model.onnx", "selected_tags.csv")},
        thresholds={"general": 0.35, "character": 0.85},
        input_size=STANDIN_SIZE,
        provenance=f"random-weight stand-in of WD14 SwinV2's size ({n_weights / 1e6:.0f} M weights), bench_tag.py",
        folder=folder,
    )
    manifest.save()
    return manifest


def tagger_only_models(models_dir: Path, manifest: Manifest) -> Path:
    """A models folder holding only ``manifest``'s tagger (the workers load nothing else)."""
    target = models_dir / "tagger" / manifest.name
    if target.resolve() != manifest.folder.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(manifest.folder.resolve(), target_is_directory=True)
    set_active(models_dir, "tagger", manifest.name)
    return models_dir


def write_pictures(folder: Path, n: int, seed: int) -> None:
    from core.datasets.synth import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        render_scene(seed + i).image.save(folder / f"scene-{i:03d}.png")


def tag_folder(folder: Path, out: Path, source, batch: int, window: int) -> float:  # type: ignore[no-untyped-def]
    """Pictures/s of one `anibot tag` run over ``folder`` (every picture tagged: a fresh output folder)."""
    shutil.rmtree(out, ignore_errors=True)
    _, pictures = collect([folder], recursive=False)
    run = FolderRun(
        pictures,
        out_root=out,
        fmt="txt",
        mode="overwrite",
        options=CaptionOptions(),
        source=source,
        implications=Implications.load(),
        batch_size=batch,
        window=window,
    )
    summary = run.run()
    assert summary.count("tagged") == len(pictures), [o.reason for o in summary.failures]
    return summary.pictures_per_s


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    from workers.celery_app import worker_argv, worker_threads

    env = {**env, "ANIBOT_ONNX_THREADS": str(worker_threads(concurrency))}  # as `anibot worker -c N` sets it
    argv = worker_argv(
        ["gpu"], concurrency=concurrency, name=f"bench-tag-{concurrency}@%h", loglevel="WARNING"
    )
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def measure(label: str, manifest: Manifest, pictures: int, args, work: Path) -> None:  # type: ignore[no-untyped-def]
    from workers.client import QueueClient
    from workers.tag_client import QueueSource

    models = tagger_only_models(work / f"models-{manifest.name}", manifest)
    settings = Settings(models_dir=models, data_dir=work, redis_url=args.redis_url)
    folder = work / f"pictures-{pictures}"
    if not folder.exists():
        write_pictures(folder, pictures, args.seed)
    started = time.perf_counter()
    tagger = load_slot(active_manifest(models, "tagger"), settings)
    print(f"{label}: {tagger!r}, loaded in {time.perf_counter() - started:.1f} s")
    source = LocalSource(tagger, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    from PIL import Image

    with Image.open(folder / "scene-000.png") as first:  # the first model call pays for its set-up: untimed
        tagger.scores_batch([first.convert("RGB")] * min(args.batch, pictures), batch_size=args.batch)
    rate = tag_folder(folder, work / "out-local", source, args.batch, 2)
    print(f"  in process, batches of {args.batch}:{'':<14} {rate:7.2f} pictures/s  ({pictures} pictures)")
    source.close()
    del tagger, source
    env = {
        **os.environ,
        "ANIBOT_REDIS_URL": args.redis_url,
        "ANIBOT_LOG_LEVEL": "WARNING",
        "ANIBOT_MODELS_DIR": str(models),
        "ANIBOT_DATA_DIR": str(work),
        "ANIBOT_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
    }
    client = QueueClient(settings)
    for processes in (1, 2):
        client.kv.client.flushdb()
        worker = start_worker(env, processes, work / "worker.log")
        try:
            queue = QueueSource(client, Requester("bench"), timeout_s=900)
            # warm every pool process (each loads its model on its first job)
            warm = [
                queue.submit_blobs([(folder / "scene-000.png").read_bytes()], 0.35) for _ in range(processes)
            ]
            for job in warm:
                queue.collect(job)
            rate = tag_folder(folder, work / "out-queue", queue, args.batch, 2 * processes + 2)
            print(f"  through {processes} worker process(es), jobs of {args.batch}: {rate:7.2f} pictures/s")
        finally:
            stop(worker)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="where the starter tagger is installed")
    parser.add_argument(
        "--vocabulary", type=Path, default=None, help="a WD14 selected_tags.csv for the stand-in"
    )
    parser.add_argument("--pictures", type=int, default=24, help="pictures for the starter tagger")
    parser.add_argument("--standin-pictures", type=int, default=6, help="pictures for the stand-in")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=8_800_000)
    parser.add_argument("--skip-standin", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    args.redis_url = os.environ.get("ANIBOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    models_dir = args.models_dir or settings.models_dir
    vocabulary = args.vocabulary or settings.tag_vocabulary
    print(machine_line(models_dir))
    with tempfile.TemporaryDirectory(prefix="anibot-bench-tag-") as tmp:
        work = Path(tmp)
        starter = active_manifest(models_dir, "tagger")
        if starter is None:
            print(f"no tagger installed in {models_dir}: `anibot models build tagger` first")
        else:
            measure("starter tagger", starter, args.pictures, args, work)
        if args.skip_standin:
            return
        if vocabulary is None or not Path(vocabulary).is_file():
            print("stand-in skipped: give the vocabulary (--vocabulary or ANIBOT_TAG_VOCABULARY)")
            return
        started = time.perf_counter()
        standin = build_standin(work / "standin" / "standin-swinv2-448", Path(vocabulary))
        size = (standin.folder / "model.onnx").stat().st_size / 1e6
        print(
            f"stand-in built in {time.perf_counter() - started:.1f} s ({size:.0f} MB, {standin.provenance})"
        )
        measure("real-size stand-in", standin, args.standin_pictures, args, work)


if __name__ == "__main__":
    main()
