"""The anime catalogue on the command line: ``anibot catalog import FILE``, ``anibot recommend TITLE``,
``anibot anime TITLE``, ``anibot search ...``, ``anibot fav add|remove|list`` and ``anibot eval recommend``.

Every command goes through ``core.catalog.service.CatalogService``, as the bots' workers do."""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.eval_cmd import eval_app
from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from core.catalog.service import CatalogService

catalog_app = typer.Typer(
    help="The anime catalogue behind /recommend, /anime and /search.", no_args_is_help=True
)
console = Console(stderr=True)
CLI_PLATFORM = "cli"

JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]


def _service(settings: Settings | None = None, url: str | None = None) -> CatalogService:
    from core.catalog.service import CatalogService
    from core.storage.store import Store

    settings = settings or get_settings()
    store = Store(url or settings.sqlalchemy_url)
    store.create_all()
    return CatalogService(settings, store)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _load(service: CatalogService, what: str = "embedding synopses") -> None:
    """Load (and embed what is new) with a progress bar; a refused embedder ends the command clearly."""
    from core.catalog.embedders import EmbedderRefused

    try:
        with _progress() as progress:
            task = progress.add_task(what, total=None)
            service.catalogue(lambda done, total: progress.update(task, completed=done, total=total))
    except EmbedderRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _emit(answer, as_json: bool) -> bool:  # type: ignore[no-untyped-def]
    """Print JSON when asked; True when done."""
    if as_json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
    return as_json


def _unmatched(answer, query: str) -> None:  # type: ignore[no-untyped-def]
    if answer.did_you_mean:
        console.print(f"Several anime are close to “{query}”; did you mean:")
        for title in answer.did_you_mean:
            console.print(f"  • {title}")
    else:
        console.print(answer.message or f"I found no anime called “{query}”.")
    raise typer.Exit(1)


@catalog_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A catalogue CSV file.")],
    layout: Annotated[
        str, typer.Option(help="auto, 2023 (Anime Dataset 2023), 2020 (anime.csv), 2020-synopsis.")
    ] = "auto",
    embed: Annotated[bool, typer.Option(help="Embed the new synopses now (else on first use).")] = True,
) -> None:
    """Import (or update) titles from a MyAnimeList-derived CSV; re-importing is idempotent."""
    from core.catalog.importer import CatalogueError, import_catalogue

    service = _service()
    started = time.perf_counter()
    try:
        with _progress() as progress:
            task = progress.add_task("importing titles", total=None)
            report = import_catalogue(
                service.store,
                file,
                layout=layout,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except CatalogueError as exc:
        console.print(f"[red]{file}: {exc}[/red]")
        raise typer.Exit(2) from None
    imported_s = time.perf_counter() - started
    for line in report.skipped[:10]:
        console.print(f"[yellow]skipped {line}[/yellow]")
    console.print(f"{report.summary()} in {imported_s:.1f} s")
    if embed:
        _load(service)
        console.print(
            f"embeddings ({service.catalogue().embedder}) ready; {time.perf_counter() - started:.1f} s in all"
        )


def recommend(
    title: Annotated[list[str] | None, typer.Argument(help="A title; none: from your favourites.")] = None,
    n: Annotated[int, typer.Option("-n", "--count", min=1, max=50, help="How many.")] = 5,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (the next page).")] = 0,
    kind: Annotated[str | None, typer.Option("--type", help="Only this type: TV, Movie, OVA, ONA...")] = None,
    min_score: Annotated[float | None, typer.Option(help="Only titles scored at least this on MAL.")] = None,
    same_franchise: Annotated[bool, typer.Option(help="Also list entries of the same franchise.")] = False,
    user: Annotated[str | None, typer.Option(help="Whose favourites (platform 'cli'); default: you.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Anime like TITLE (synopsis and metadata), each with a one-line reason."""
    service = _service()
    _load(service)
    query = " ".join(title or []).strip() or None
    answer = service.recommend(
        query,
        platform=CLI_PLATFORM,
        user_id=user or getpass.getuser(),
        n=n,
        offset=offset,
        exclude_franchise=not same_franchise,
        kind=kind,
        min_score=min_score,
    )
    if _emit(answer, as_json):
        return
    if answer.lookup.value != "matched":
        if query is None:
            console.print(answer.message)
            raise typer.Exit(1)
        _unmatched(answer, query)
    basis = answer.matched.title if answer.matched else ", ".join(b.title for b in answer.basis)
    table = Table(title=f"If you liked {basis}")
    for column in ("#", "title", "type", "year", "score", "similarity", "why"):
        table.add_column(column)
    for rank, item in enumerate(answer.items, start=offset + 1):
        table.add_row(str(rank), item.title + (f"\n{item.english_title}" if item.english_title else ""), item.kind,
                      str(item.year or ""), f"{item.score:.2f}" if item.score else "", f"{item.similarity:.2f}",
                      item.reason)  # fmt: skip
    Console().print(table)
    if not answer.items:
        console.print(answer.message)


def anime(
    title: Annotated[list[str], typer.Argument(help="A title, in any language or spelling.")],
    as_json: JsonOption = False,
) -> None:
    """Details of an anime: score, type, episodes, aired, studios, genres, synopsis, MyAnimeList link."""
    query = " ".join(title)
    answer = _service().details(query)
    if _emit(answer, as_json):
        return
    if answer.anime is None:
        _unmatched(answer, query)
    a = answer.anime
    assert a is not None
    out = Console()
    names = " / ".join(x for x in (a.english_title, a.japanese_title) if x)
    out.print(f"[bold]{a.title}[/bold]" + (f"  ({names})" if names else ""))
    facts = [
        ("Score", f"{a.score:.2f}" if a.score else ""), ("Type", a.kind), ("Episodes", str(a.episodes or "")),
        ("Aired", a.aired or str(a.year or "")), ("Studios", ", ".join(a.studios)),
        ("Genres", ", ".join((*a.genres, *a.themes, *([a.demographic] if a.demographic else [])))),
        ("Source", a.source),
    ]  # fmt: skip
    for name, value in facts:
        if value:
            out.print(f"{name + ':':10} {value}")
    if a.synopsis:
        synopsis = a.synopsis if len(a.synopsis) <= 500 else a.synopsis[:500].rsplit(" ", 1)[0] + "…"
        out.print(f"\n{synopsis}")
    if a.mal_url:
        out.print(f"\n{a.mal_url}")


def search(
    query: Annotated[
        list[str], typer.Argument(help='Name words and filters: genre:Action type:TV genre:"Slice of Life".')
    ],
    limit: Annotated[int, typer.Option(min=1, max=50)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Search by name (fuzzy), genre (genre:Action, repeatable) and type (type:TV)."""
    answer = _service().search(" ".join(_quoted(q) for q in query), limit=limit)
    if _emit(answer, as_json):
        return
    if not answer.items:
        console.print(answer.message)
        raise typer.Exit(1)
    table = Table(
        title=f"{answer.total} found"
        + (f", first {len(answer.items)}" if answer.total > len(answer.items) else "")
    )
    for column in ("title", "english", "type", "year", "score"):
        table.add_column(column)
    for item in answer.items:
        table.add_row(item.title, item.english_title, item.kind, str(item.year or ""),
                      f"{item.score:.2f}" if item.score else "")  # fmt: skip
    Console().print(table)


def _quoted(arg: str) -> str:
    """One shell argument back into the query syntax: ``genre:Slice of Life`` -> ``genre:"Slice of Life"``."""
    if " " not in arg:
        return arg
    key, sep, value = arg.partition(":")
    return f'{key}:"{value}"' if sep and " " not in key else f'"{arg}"'


def fav(
    op: Annotated[str, typer.Argument(help="add, remove or list")],
    title: Annotated[list[str] | None, typer.Argument()] = None,
    user: Annotated[str | None, typer.Option(help="Whose favourites (platform 'cli'); default: you.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Your favourite anime (`anibot recommend` with no title recommends from them)."""
    if op not in ("add", "remove", "list"):
        console.print("[red]add, remove or list[/red]")
        raise typer.Exit(2)
    query = " ".join(title or []) or None
    answer = _service().favourites(op, query, platform=CLI_PLATFORM, user_id=user or getpass.getuser())  # type: ignore[arg-type]
    if _emit(answer, as_json):
        return
    if op != "list" and answer.anime is None:
        _unmatched(answer, query or "")
    if answer.message:
        console.print(answer.message)
    for item in answer.items:
        print(f"• {item.title}" + (f" ({item.english_title})" if item.english_title else ""))


@eval_app.command("recommend")
def eval_recommend(
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalogue CSV to measure on (a throwaway store); default: ANIBOT_CATALOG_FILE, "
            "else the store's catalogue."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("out/eval"),
) -> None:
    """Recommendations: franchise recall@10 and genre precision@10 (hybrid, synopsis only, metadata only, random)."""
    from core.catalog.evaluation import evaluate, markdown
    from core.catalog.importer import CatalogueError, import_catalogue

    settings = get_settings()
    source = catalog or settings.catalog_file
    if source is not None:
        if not source.is_file():
            console.print(f"[red]{source}: no such file[/red]")
            raise typer.Exit(2)
        service = _service(settings.model_copy(update={"catalog_shipped": False}), "sqlite://")
        try:
            report = import_catalogue(service.store, source)
        except CatalogueError as exc:
            console.print(f"[red]{source}: {exc}[/red]")
            raise typer.Exit(2) from None
        console.print(report.summary())
        title = f"Recommendations on `{source.name}`"
    else:
        service = _service()
        title = "Recommendations on the store's catalogue"
    _load(service)
    cat = service.catalogue()
    text = markdown(evaluate(cat.recommender, cat.embedder), title)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recommend.md").write_text(text, encoding="utf-8")
    console.print(f"wrote {out / 'recommend.md'}")
    sys.stdout.write(text)
