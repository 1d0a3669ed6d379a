"""The ``anibot`` command line: analyse pictures (in process or through the queue), run a worker, the demo."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.eval_cmd import eval_app
from cli.models_cmd import models_app
from core.intake import IntakeError, read_image_file
from core.jobs import Requester
from core.logs import configure_logging
from core.results import UNKNOWN, AnalysisResult
from core.settings import get_settings

app = typer.Typer(
    help="anibot: find, identify, tag and caption anime characters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
console = Console(stderr=True)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
CSV_COLUMNS = [
    "path",
    "image_sha256",
    "status",
    "error",
    "n_heads",
    "names",
    "confidences",
    "rating",
    "tags",
    "caption",
    "cached",
    "degraded",
]


@app.callback()
def _main() -> None:
    configure_logging(get_settings())


def iter_images(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        else:
            yield path


def _record(
    path: Path, result: AnalysisResult | None, *, cached: bool = False, error: str | None = None
) -> dict[str, object]:
    if result is None:
        return {"path": str(path), "status": "refused", "error": error}
    return {"path": str(path), "status": "ok", "cached": cached, **result.to_dict()}


def _csv_row(record: dict[str, object]) -> dict[str, object]:
    heads = record.get("heads") or []
    tags = record.get("tags") or []
    return {
        "path": record["path"],
        "image_sha256": record.get("image_sha256", ""),
        "status": record["status"],
        "error": record.get("error") or "",
        "n_heads": len(heads),
        "names": "|".join(h["name"] for h in heads),
        "confidences": "|".join(f"{h['confidence']:.3f}" for h in heads),
        "rating": record.get("rating") or "",
        "tags": " ".join(t["name"] for t in tags if t["category"] == "general"),
        "caption": record.get("caption") or "",
        "cached": record.get("cached", ""),
        "degraded": "|".join(d["stage"] for d in record.get("degraded") or []),
    }


class ResultWriter:
    """JSON lines or CSV (by the output's suffix), to a file or to stdout ('-')."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self.as_csv = target is not None and target.suffix.lower() == ".csv"
        self.handle: io.TextIOBase | None = None
        self.csv_writer: csv.DictWriter | None = None

    def __enter__(self) -> ResultWriter:
        if self.target is not None:
            if str(self.target) == "-":
                self.handle = sys.stdout  # type: ignore[assignment]
            else:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                self.handle = self.target.open("w", encoding="utf-8", newline="")  # type: ignore[assignment]
            if self.as_csv:
                self.csv_writer = csv.DictWriter(self.handle, fieldnames=CSV_COLUMNS)  # type: ignore[arg-type]
                self.csv_writer.writeheader()
        return self

    def write(self, record: dict[str, object]) -> None:
        if self.handle is None:
            return
        if self.csv_writer is not None:
            self.csv_writer.writerow(_csv_row(record))
        else:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None and self.handle is not sys.stdout:
            self.handle.close()


def summary_table(rows: list[tuple[str, AnalysisResult | None, str]]) -> Table:
    table = Table(title="anibot analysis", show_lines=False)
    for column in ("image", "heads", "characters", "rating", "caption / error"):
        table.add_column(column, overflow="fold")
    for name, result, message in rows:
        if result is None:
            table.add_row(name, "-", "-", "-", f"[red]{message}[/red]")
            continue
        who = ", ".join(
            f"{h.name} {h.confidence:.0%}" if h.name != UNKNOWN else UNKNOWN for h in result.heads
        )
        degraded = (
            f" [yellow](degraded: {', '.join(d.stage for d in result.degraded)})[/yellow]"
            if result.degraded
            else ""
        )
        table.add_row(
            name, str(len(result.heads)), who or "-", result.rating or "-", (result.caption or "") + degraded
        )
    return table


@app.command()
def analyze(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    top_n: Annotated[int, typer.Option("--top-n", min=1, max=50, help="Candidates per head.")] = 5,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Write results here: JSON lines, or CSV when the name ends in .csv; '-' for stdout.",
        ),
    ] = None,
    annotated: Annotated[Path | None, typer.Option("--annotated", help="Folder for annotated PNGs.")] = None,
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            help="Enqueue through Redis and wait for a worker, instead of analysing in this process.",
        ),
    ] = False,
) -> None:
    """Analyse pictures: heads, characters (top-N each), tags, rating and a caption."""
    settings = get_settings()
    paths = list(iter_images(images))
    if not paths:
        console.print("[red]No images found.[/red]")
        raise typer.Exit(2)
    if annotated is not None:
        annotated.mkdir(parents=True, exist_ok=True)
    analyse_one = _queue_analyser(settings, top_n) if queue else _embedded_analyser(settings, top_n)
    rows: list[tuple[str, AnalysisResult | None, str]] = []
    refused = 0
    with ResultWriter(json_out) as writer, _progress() as progress:
        task = progress.add_task("analysing", total=len(paths))
        for path in paths:
            try:
                result, png, cached = analyse_one(path)
            except (IntakeError, OSError, RuntimeError) as exc:
                message = exc.user_message if isinstance(exc, IntakeError) else str(exc)
                console.print(f"[red]{path}: {message}[/red]")
                rows.append((path.name, None, message))
                writer.write(_record(path, None, error=message))
                refused += 1
            else:
                rows.append((path.name, result, ""))
                writer.write(_record(path, result, cached=cached))
                if annotated is not None:
                    (annotated / f"{path.stem}.annotated.png").write_bytes(png)
            progress.advance(task)
    console.print(summary_table(rows))
    if refused:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _embedded_analyser(settings, top_n: int):  # type: ignore[no-untyped-def]
    from core.kv import MemoryKV
    from core.service import AnalysisService
    from core.store import Store

    store = Store.from_settings(settings)
    store.create_all()
    service = AnalysisService(settings, MemoryKV(), store)

    def run(path: Path) -> tuple[AnalysisResult, bytes, bool]:
        outcome = service.analyze(
            read_image_file(path, max_bytes=settings.max_image_bytes), top_n=top_n, requester=Requester("cli")
        )
        return outcome.result, outcome.annotated_png, outcome.cached

    return run


def _queue_analyser(settings, top_n: int):  # type: ignore[no-untyped-def]
    from workers.client import JobFailed, QueueClient

    client = QueueClient(settings)
    try:
        client.kv.ping()
    except Exception as exc:
        console.print(f"[red]Cannot reach Redis at {settings.redis_url.split('@')[-1]}: {exc}[/red]")
        raise typer.Exit(2) from None

    def run(path: Path) -> tuple[AnalysisResult, bytes, bool]:
        try:
            done = client.analyze(
                read_image_file(path, max_bytes=settings.max_image_bytes),
                requester=Requester("cli"),
                top_n=top_n,
            )
        except JobFailed as exc:
            raise RuntimeError(exc.error.message) from None
        return done.result, done.annotated_png, done.job.cached

    return run


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume: gpu, cpu, train.")
    ] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start a Celery worker (models load lazily in each worker process)."""
    from workers.celery_app import QUEUES, worker_argv, worker_threads

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if unknown:
        console.print(f"[red]Unknown queue(s): {', '.join(unknown)}; queues are {', '.join(QUEUES)}.[/red]")
        raise typer.Exit(2)
    argv = worker_argv(
        wanted, concurrency=concurrency, name=f"anibot-{'-'.join(wanted)}@%h", loglevel=loglevel
    )
    settings = get_settings()
    if settings.onnx_threads == 0 and concurrency > 1:
        # one ONNX Runtime thread pool per process, sized so the processes share the cores instead of fighting
        os.environ["ANIBOT_ONNX_THREADS"] = str(worker_threads(concurrency))
    os.execvp(argv[0], argv)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where scenes, annotated images and results go.")] = Path(
        "out/demo"
    ),
    scenes: Annotated[int, typer.Option(min=1, max=200, help="How many scenes to generate.")] = 8,
    seed: Annotated[int, typer.Option(help="First scene seed.")] = 9_000_000,
) -> None:
    """Build any missing starter model, generate sample scenes, analyse them, and score against the truth."""
    from cli.models_cmd import build_missing
    from core.synth import CAST_BY_KEY, render_scene

    settings = get_settings()
    build_missing(settings)
    scene_dir = out / "scenes"
    scene_dir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(scenes):
        scene = render_scene(seed + i)
        path = scene_dir / f"scene-{seed + i}.png"
        scene.image.save(path)
        truth[path.name] = scene
    started = time.perf_counter()
    analyse_one = _embedded_analyser(settings, top_n=settings.top_n)
    found = correct = drawn = extra = 0
    rows = []
    with ResultWriter(out / "results.jsonl") as writer:
        for name, scene in truth.items():
            result, png, cached = analyse_one(scene_dir / name)
            (out / f"{Path(name).stem}.annotated.png").write_bytes(png)
            writer.write(_record(scene_dir / name, result, cached=cached))
            rows.append((name, result, ""))
            extra += sum(all(h.box.iou(t.box) < 0.5 for t in scene.heads) for h in result.heads)
            extra += max(
                0,
                sum(any(h.box.iou(t.box) >= 0.5 for t in scene.heads) for h in result.heads)
                - len(scene.heads),
            )
            for head in scene.heads:
                drawn += 1
                match = max(result.heads, key=lambda h: h.box.iou(head.box), default=None)
                if match is not None and match.box.iou(head.box) >= 0.5:
                    found += 1
                    correct += match.name == CAST_BY_KEY[head.character].name
    elapsed = time.perf_counter() - started
    console.print(summary_table(rows))
    console.print(
        f"Heads found: {found}/{drawn}; correctly named: {correct}/{drawn}; extra detections: {extra}; "
        f"{elapsed / len(truth):.2f} s per image (first includes model loading)."
    )
    console.print(f"Annotated images and results.jsonl are in {out}/")


if __name__ == "__main__":
    app()
