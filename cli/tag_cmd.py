"""``anibot tag``: caption files for a folder of pictures, as dataset makers want them (see core.tagging)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from core.settings import Settings, get_settings
from core.storage.jobs import Requester
from core.tagging.captions import CaptionOptions, normalise, read_tag_list
from core.tagging.folders import FORMATS, MODES, collect
from core.tagging.implications import Implications
from core.tagging.runner import FolderRun, Loaded, RunSummary, TagOutcome

console = Console(stderr=True)


def _choice(value: str, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"must be one of {', '.join(allowed)}, not {value!r}", param_hint=flag)
    return value


def tag(
    inputs: Annotated[list[Path], typer.Argument(help="Folders of pictures, or picture files.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write captions here (same layout); default: beside each picture."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="txt (one caption a picture), json, or one tags.csv.")
    ] = "txt",
    general: Annotated[
        float, typer.Option("--general", min=0.0, max=1.0, help="General tag threshold.")
    ] = 0.35,
    character: Annotated[
        float, typer.Option("--character", min=0.0, max=1.0, help="Character tag threshold.")
    ] = 0.85,
    rating: Annotated[bool, typer.Option("--rating/--no-rating", help="Put the rating in as a tag.")] = True,
    exclude: Annotated[
        str,
        typer.Option(
            "--exclude", help="Tags left out: a file (one a line) or a comma list; * patterns work."
        ),
    ] = "",
    include_first: Annotated[
        str, typer.Option("--include-first", help="Tags put first when present (comma list or file).")
    ] = "",
    max_tags: Annotated[int | None, typer.Option("--max-tags", min=1, help="At most this many tags.")] = None,
    underscores: Annotated[
        str, typer.Option("--underscores", help="keep, or spaces (long_hair -> long hair).")
    ] = "spaces",
    keep_kaomoji: Annotated[
        bool, typer.Option("--keep-kaomoji/--no-keep-kaomoji", help="Kaomoji (^_^) keep their underscore.")
    ] = True,
    drop_implied: Annotated[
        bool,
        typer.Option("--drop-implied/--keep-implied", help="Leave out tags implied by a more specific one."),
    ] = True,
    implications: Annotated[
        Path | None,
        typer.Option(
            "--implications", help="Implied-tag list (specific,implied); default ANIBOT_TAG_IMPLICATIONS."
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="overwrite, append (add new tags), or skip pictures with a caption.")
    ] = "overwrite",
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also the pictures of sub-folders.")
    ] = False,
    redo: Annotated[
        bool,
        typer.Option("--redo", help="Tag again pictures unchanged since the last run (same bytes, options)."),
    ] = False,
    names: Annotated[
        bool, typer.Option("--names", help="Also the characters the gallery identifies, as character tags.")
    ] = False,
    queue: Annotated[
        bool, typer.Option("--queue", help="Spread the pictures over the workers instead of this process.")
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, max=256, help="Pictures per model call (or per job).")
    ] = None,
) -> None:
    """Tag folders of pictures: one caption file per picture, the way training datasets want them."""
    settings = get_settings()
    fmt = _choice(fmt, FORMATS, "--format")
    mode = _choice(mode, MODES, "--mode")
    underscores = _choice(underscores, ("keep", "spaces"), "--underscores")
    try:
        options = CaptionOptions(
            general=general,
            character=character,
            rating=rating,
            exclude=tuple(read_tag_list(exclude)),
            include_first=tuple(read_tag_list(include_first)),
            max_tags=max_tags,
            underscores=underscores,  # type: ignore[arg-type]
            keep_kaomoji=keep_kaomoji,
            drop_implied=drop_implied,
        )
        root, pictures = collect(inputs, recursive=recursive)
        implied = Implications.load(implications or settings.tag_implications) if drop_implied else None
    except (ValueError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if not pictures:
        console.print("[red]No pictures found[/red] (add --recursive for sub-folders).")
        raise typer.Exit(2)
    out_root = (out or root).resolve()
    source, name_of = _queue_source(settings, names) if queue else _local_source(settings, names)
    batch = batch_size or settings.tag_batch_size
    with _progress() as progress:
        task = progress.add_task("tagging", total=len(pictures), rate="")

        started = time.perf_counter()
        tagged = 0

        def advance(outcome: TagOutcome) -> None:
            nonlocal tagged
            tagged += outcome.status == "tagged"
            rate = tagged / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:.1f} pictures/s")

        run = FolderRun(
            pictures,
            out_root=out_root,
            fmt=fmt,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            options=options,
            source=source,
            implications=implied,
            batch_size=batch,
            window=8 if queue else 2,
            redo=redo,
            max_bytes=settings.max_image_bytes,
            names=name_of,
            on_outcome=advance,
        )
        summary = run.run()
    _print_summary(summary, out_root)
    if summary.failures:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.data.speed]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _print_summary(summary: RunSummary, out_root: Path) -> None:
    console.print(
        f"{summary.count('tagged')} tagged, {summary.count('unchanged')} unchanged since the last run, "
        f"{summary.count('exists')} skipped (caption exists), {len(summary.failures)} failed; "
        f"{summary.pictures_per_s:.1f} pictures/s; captions in {out_root}"
    )
    for outcome in summary.failures:
        console.print(f"  [red]failed[/red] {outcome.picture.relative}: {outcome.reason}")


def _local_source(settings: Settings, names: bool):  # type: ignore[no-untyped-def]
    from core.tagging.runner import LocalSource
    from core.vision.slots.registry import active_manifest, load_slot

    manifest = active_manifest(settings.models_dir, "tagger")
    if manifest is None:
        console.print(
            f"[red]No tagger installed in {settings.models_dir}[/red]: run `anibot models build tagger`."
        )
        raise typer.Exit(2)
    source = LocalSource(
        load_slot(manifest, settings),
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    if not names:
        return source, None
    from core.analysis.service import AnalysisService
    from core.storage.kv import MemoryKV
    from core.storage.store import Store

    store = Store.from_settings(settings)
    store.create_all()
    service = AnalysisService(settings, MemoryKV(), store)

    def name_of(loaded: Loaded) -> list[str]:
        result = service.analyze(loaded.data, top_n=1, requester=Requester("cli"), full_size=False).result
        return identified(result.heads)

    return source, name_of


def _queue_source(settings: Settings, names: bool):  # type: ignore[no-untyped-def]
    from workers.celery_app import TAG_TASK, TASK_QUEUES
    from workers.client import JobFailed, QueueClient
    from workers.tag_client import QueueSource

    client = QueueClient(settings)
    try:
        client.kv.ping()
    except Exception as exc:
        console.print(f"[red]Cannot reach Redis at {settings.redis_url.split('@')[-1]}: {exc}[/red]")
        raise typer.Exit(2) from None
    if client.workers_for(TASK_QUEUES[TAG_TASK], timeout_s=2.0) == 0:
        console.print(
            f"[red]No worker consumes the {TASK_QUEUES[TAG_TASK]} queue[/red]: start `anibot worker`."
        )
        raise typer.Exit(2)
    source = QueueSource(client, Requester("cli"))
    if not names:
        return source, None

    def name_of(loaded: Loaded) -> list[str]:
        try:
            return identified(client.analyze(loaded.data, requester=Requester("cli"), top_n=1).result.heads)
        except JobFailed as exc:
            raise OSError(f"identification failed: {exc.error.message}") from None

    return source, name_of


def identified(heads) -> list[str]:  # type: ignore[no-untyped-def]
    """The names of identified heads, as tags (``Hatsune Miku`` -> ``hatsune_miku``), each once."""
    from core.vision.results import UNKNOWN

    out: list[str] = []
    for head in heads:
        if head.name != UNKNOWN and normalise(head.name) not in out:
            out.append(normalise(head.name))
    return out
