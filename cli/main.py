"""The ``anibot`` command line: analyse pictures (in process or through the queue), run a worker, the demo."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.catalog_cmd import anime, catalog_app, fav, recommend, search
from cli.characters_cmd import characters_app
from cli.eval_cmd import eval_app
from cli.extras import ExtrasAwareGroup
from cli.front_cmd import api, bot
from cli.models_cmd import models_app
from cli.tag_cmd import tag
from core.logs import configure_logging
from core.settings import get_settings
from core.storage.jobs import Requester
from core.vision.intake import IntakeError, read_image_file
from core.vision.results import UNKNOWN, AnalysisResult, Box

app = typer.Typer(
    cls=ExtrasAwareGroup,  # a missing extra (``.[bot]``, ``.[worker]``) is said in one line, for every command
    help="anibot: find, identify, tag and caption anime characters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.add_typer(catalog_app, name="catalog")
app.add_typer(characters_app, name="characters")
for _catalog_command in (recommend, anime, search, fav):
    app.command()(_catalog_command)
app.command()(bot)
app.command()(api)
app.command()(tag)
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
    full = annotated is not None  # the full-size annotated PNG, drawn only when it is written
    analyse_one = (
        _queue_analyser(settings, top_n, full_size=full)
        if queue
        else _embedded_analyser(settings, top_n, full_size=full)
    )
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
                if annotated is not None and png is not None:
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


def _embedded_analyser(settings, top_n: int, *, full_size: bool = True):  # type: ignore[no-untyped-def]
    from core.analysis.service import AnalysisService
    from core.storage.kv import MemoryKV
    from core.storage.store import Store

    store = Store.from_settings(settings)
    store.create_all()
    service = AnalysisService(settings, MemoryKV(), store)

    def run(path: Path) -> tuple[AnalysisResult, bytes | None, bool]:
        outcome = service.analyze(
            read_image_file(path, max_bytes=settings.max_image_bytes),
            top_n=top_n,
            requester=Requester("cli"),
            full_size=full_size,
        )
        return outcome.result, outcome.annotated_png, outcome.cached

    return run


def _queue_analyser(settings, top_n: int, *, full_size: bool = True):  # type: ignore[no-untyped-def]
    from workers.client import JobFailed, QueueClient

    client = QueueClient(settings)
    try:
        client.kv.ping()
    except Exception as exc:
        console.print(f"[red]Cannot reach Redis at {settings.redis_url.split('@')[-1]}: {exc}[/red]")
        raise typer.Exit(2) from None

    def run(path: Path) -> tuple[AnalysisResult, bytes | None, bool]:
        try:
            done = client.analyze(
                read_image_file(path, max_bytes=settings.max_image_bytes),
                requester=Requester("cli"),
                top_n=top_n,
                full_size=full_size,
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


@dataclass(frozen=True)
class DemoCase:
    """A generated picture and its truth: head boxes and the name each head should get."""

    path: Path
    boxes: list[Box]
    names: list[str]


def _score_demo(cases: list[DemoCase], analyse_one, out: Path, title: str, iou: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    """Analyse every case, write annotated images and results.jsonl, print the table and the score (a head is found
    when a detection overlaps it by ``iou``; cases whose names are empty are scored on finding only)."""
    started = time.perf_counter()
    found = correct = drawn = extra = 0
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    with ResultWriter(out / "results.jsonl") as writer:
        for case in cases:
            result, png, cached = analyse_one(case.path)
            (out / f"{case.path.stem}.annotated.png").write_bytes(png)
            writer.write(_record(case.path, result, cached=cached))
            rows.append((case.path.name, result, ""))
            # detections on no drawn head, and more detections on drawn heads than there are heads
            on_a_head = sum(any(h.box.iou(b) >= iou for b in case.boxes) for h in result.heads)
            extra += len(result.heads) - on_a_head + max(0, on_a_head - len(case.boxes))
            for box, name in zip(case.boxes, case.names, strict=True):
                drawn += 1
                match = max(result.heads, key=lambda h, b=box: h.box.iou(b), default=None)
                if match is not None and match.box.iou(box) >= iou:
                    found += 1
                    correct += bool(name) and match.name == name
    elapsed = time.perf_counter() - started
    named = any(name for case in cases for name in case.names)
    console.print(summary_table(rows))
    console.print(
        f"{title}: heads found {found}/{drawn}"
        + (f"; correctly named {correct}/{drawn}" if named else "")
        + f"; extra detections {extra}; "
        f"{elapsed / max(1, len(cases)):.2f} s per image (the first includes model loading)."
    )
    console.print(f"Annotated images and results.jsonl are in {out}/")


def _synthetic_cases(folder: Path, scenes: int, seed: int) -> list[DemoCase]:
    from core.datasets.synth import CAST_BY_KEY, render_scene

    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(scenes):
        scene = render_scene(seed + i)
        path = folder / f"scene-{seed + i}.png"
        scene.image.save(path)
        cases.append(
            DemoCase(path, [h.box for h in scene.heads], [CAST_BY_KEY[h.character].name for h in scene.heads])
        )
    return cases


def _real_face_cases(folder: Path, faces_dir: Path, scenes: int, seed: int) -> list[DemoCase]:
    """Pictures with held-out (test-split) real faces pasted in; the gallery holds training-split references."""
    from core.datasets.real_faces import compose_scene, display_name, load_face_splits, load_images

    test = load_face_splits(faces_dir).test
    faces = load_images(test)
    labels = [i.label for i in test]
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(scenes):
        scene = compose_scene(seed + i, faces, drawn_share=0.0, face_labels=labels)
        path = folder / f"faces-{seed + i}.png"
        scene.image.save(path)
        cases.append(
            DemoCase(path, [Box(*b) for b in scene.boxes], [display_name(n)[0] for n in scene.labels])
        )
    return cases


def _real_picture_cases(folder: Path, pictures_dir: Path, count: int) -> list[DemoCase]:
    """Real pictures of the test part of a labelled folder (never trained on): faces to find, no names."""
    from core.evaluation.picture_folders import load_picture_folder, picture_split

    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for picture in load_picture_folder(pictures_dir).pictures:
        if picture_split(picture.name) != "test":
            continue
        path = folder / f"{Path(picture.name).stem}.png"
        picture.image.save(path)  # as decoded (EXIF orientation applied), the pixels its boxes describe
        cases.append(DemoCase(path, [Box(*b) for b in picture.boxes], [""] * len(picture.boxes)))
        if len(cases) == count:
            break
    return cases


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where scenes, annotated images and results go.")] = Path(
        "out/demo"
    ),
    scenes: Annotated[int, typer.Option(min=1, max=200, help="How many scenes to generate.")] = 8,
    seed: Annotated[int, typer.Option(help="First scene seed.")] = 9_000_000,
    pull: Annotated[
        bool,
        typer.Option(
            "--pull",
            help="Install the community models recommended for this machine (detector, embedder, tagger; see "
            "`anibot models recommend`) instead of training starters; offline, the starters are trained.",
        ),
    ] = False,
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            dir_okay=False,
            help="A model catalogue file of your own (for --pull and the prompt).",
        ),
    ] = None,
) -> None:
    """Build any missing starter model, generate sample scenes, analyse them, and score against the truth.

    With --pull (or when you say yes at the prompt on a terminal), the recommended community models are installed
    instead of training starters for the detector, embedder and tagger. With a real face set (ANIBOT_FACES_DIR),
    also pictures with its held-out faces pasted in; with real labelled pictures (ANIBOT_PICTURES_DIR), also the
    test part of them (real illustrations the detector never trained on)."""
    from cli.models_cmd import build_missing, offer_community_models, pull_for_demo

    settings = get_settings()
    if pull:
        pull_for_demo(settings, catalog=catalog)
    else:
        offer_community_models(settings, catalog=catalog)
    build_missing(settings)
    analyse_one = _embedded_analyser(settings, top_n=settings.top_n)
    _score_demo(_synthetic_cases(out / "scenes", scenes, seed), analyse_one, out, "Synthetic scenes")
    if settings.faces_dir is not None:
        cases = _real_face_cases(out / "faces" / "scenes", settings.faces_dir, scenes, seed)
        _score_demo(cases, analyse_one, out / "faces", f"Held-out real faces ({settings.faces_dir.name})")
    if settings.pictures_dir is not None:
        cases = _real_picture_cases(out / "pictures" / "input", settings.pictures_dir, 2 * scenes)
        title = f"Real pictures, test part ({settings.pictures_dir.name}; a face is found at IoU 0.3)"
        _score_demo(cases, analyse_one, out / "pictures", title, iou=0.3)


if __name__ == "__main__":
    app()
