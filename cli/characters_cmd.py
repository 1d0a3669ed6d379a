"""Teaching characters on the command line: ``anibot characters add|remove|list|reindex``.

In process, through the same ``core.characters.teaching.Teacher`` the workers' admin tasks use: a new gallery version is
published in the shared folder and announced through Redis (when reachable), so running workers pick it up on
their next job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from core.characters.teaching import Teacher

characters_app = typer.Typer(
    help="Teach, forget and list the characters the bot knows.", no_args_is_help=True
)
console = Console(stderr=True)
MAX_REFERENCES = 20


def _announcer(settings: Settings):  # type: ignore[no-untyped-def]
    """Redis, when reachable (running workers then switch at once); else None (they read CURRENT)."""
    from core.storage.kv import RedisKV

    kv = RedisKV(settings.redis_url)
    try:
        kv.ping()
    except Exception as exc:
        console.print(f"[yellow]Redis unreachable ({type(exc).__name__}): workers read the new version from "
                      "the shared folder.[/]")  # fmt: skip
        return None
    return kv


def _teacher(settings: Settings, *, detector: bool = True) -> Teacher:
    from core.analysis.pipeline import LoadedSlots
    from core.characters.gallery_versions import GalleryVersions
    from core.characters.teaching import Teacher
    from core.storage.shared_store import SharedStore
    from core.storage.store import Store

    store = Store.from_settings(settings)
    store.create_all()
    slots = LoadedSlots.load(settings)
    if slots.embedder is None:
        console.print(
            f"[red]No identification model: {slots.load_errors.get('embedder', 'not installed')}[/]"
        )
        raise typer.Exit(2)
    versions = GalleryVersions(
        SharedStore(settings.shared_path), _announcer(settings), keep=settings.gallery_keep_versions
    )
    return Teacher(store, versions, slots.embedder, slots.detector if detector else None)


@characters_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The character's name.")],
    images: Annotated[list[Path], typer.Argument(help=f"1-{MAX_REFERENCES} reference pictures.")],
    series: Annotated[str, typer.Option("--series", "-s", help="The series the character is from.")] = "",
) -> None:
    """Teach a character from reference pictures (one head each; the largest when several)."""
    from core.characters.names import BadName, normalise_name
    from core.characters.teaching import prepare_reference
    from core.vision.intake import IntakeError, decode_image_file

    settings = get_settings()
    try:
        name = normalise_name(name)
        series = normalise_name(series, what="series") if series.strip() else ""
    except BadName as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    if not 1 <= len(images) <= MAX_REFERENCES:
        console.print(f"[red]Give 1-{MAX_REFERENCES} reference pictures.[/]")
        raise typer.Exit(2)
    decoded = []
    for path in images:
        try:
            decoded.append(
                decode_image_file(
                    path, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
                )
            )
        except (IntakeError, FileNotFoundError) as exc:
            message = getattr(exc, "user_message", None) or f"no such file: {path}"
            console.print(f"[red]{path}: {message} Nothing was added.[/]")
            raise typer.Exit(2) from None
    teacher = _teacher(settings)
    prepared = [
        prepare_reference(d.image, d.sha256, teacher.detector, label=path.name)
        for d, path in zip(decoded, images, strict=True)
    ]
    outcome = teacher.add(name, series, prepared)
    typer.echo(outcome.message)


@characters_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="The character's name.")],
    series: Annotated[
        str, typer.Option("--series", "-s", help="Its series, when several share the name.")
    ] = "",
) -> None:
    """Forget a character (a new gallery version without it is published)."""
    from core.characters.teaching import UnknownCharacter

    teacher = _teacher(get_settings(), detector=False)
    try:
        published = teacher.remove(name, series)
    except UnknownCharacter as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    label = f"{name} ({series})" if series else name
    typer.echo(f"Removed {label} (gallery version {published.manifest.version}).")


@characters_app.command("list")
def list_characters(
    series: Annotated[str, typer.Option("--series", "-s", help="Only characters of this series.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The characters known, with their reference counts and last update."""
    from core.storage.store import Store

    store = Store.from_settings(get_settings())
    store.create_all()
    known = [c for c in store.list_characters() if series.casefold() in c.series.casefold()]
    if as_json:
        rows = [
            {"name": c.name, "series": c.series, "references": c.n_references,
             "updated_at": c.updated_at.isoformat() if c.updated_at else None}
            for c in known
        ]  # fmt: skip
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table("name", "series", "references", "updated")
    for c in known:
        table.add_row(
            c.name, c.series, str(c.n_references), f"{c.updated_at:%Y-%m-%d %H:%M}" if c.updated_at else ""
        )
    Console().print(table)


@characters_app.command("reindex")
def reindex() -> None:
    """Build a new gallery version from every stored reference and make it current."""
    published = _teacher(get_settings(), detector=False).publish()
    m = published.manifest
    typer.echo(f"Gallery version {m.version}: {m.n_references} references of {m.n_characters} characters.")


@characters_app.command("review")
def review(
    approve: Annotated[list[int] | None, typer.Option("--approve", help="Approve this waiting id.")] = None,
    reject: Annotated[list[int] | None, typer.Option("--reject", help="Reject this waiting id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Users' corrections and proposed references (confident tagger answers) waiting for review, oldest first, as
    /review lists them; --approve / --reject decide some, and approved ones are applied by a queued apply job (a
    worker's train queue) when Redis is reachable."""
    from core.characters.corrections import Corrections
    from core.chat.store import ChatStore, CorrectionStatus
    from core.storage.store import Store

    store = Store.from_settings(get_settings())
    store.create_all()
    corrections = Corrections(ChatStore(store), removed=store.removed_characters)
    approved = 0
    for ids, decide, verb in (
        (approve, corrections.approve, "approved"),
        (reject, corrections.reject, "rejected"),
    ):
        for correction_id in ids or ():
            done = decide(correction_id, "cli")
            approved += bool(done) and verb == "approved"
            typer.echo(
                f"#{correction_id} {verb}" if done else f"#{correction_id} is not waiting: left as it is"
            )
    if approved:
        _queue_apply()
    waiting = corrections.chats.corrections(status=CorrectionStatus.PENDING)
    if as_json:
        rows = [
            {"id": c.id, "kind": c.kind, "name": c.name, "series": c.series, "predicted": c.predicted or None,
             "agreeing": corrections.agreeing(c), "reason": c.reason, "image_sha256": c.image_sha256,
             "head": c.head}
            for c in waiting
        ]  # fmt: skip
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not waiting:
        typer.echo("Nothing waiting for review.")
        return
    table = Table("id", "kind", "name", "series", "said / why", "picture")
    for c in waiting:
        why = (
            c.reason or ""
            if c.is_proposal
            else f"I said {c.predicted or 'unknown'}, {corrections.agreeing(c)} agree"
        )
        table.add_row(str(c.id), c.kind, c.name, c.series, why, f"{c.image_sha256[:12]} #{c.head}")
    Console().print(table)


def _queue_apply() -> None:
    """Queue the workers' apply job for the approved corrections (when Redis is unreachable they stay approved
    and the next apply job adds them)."""
    from core.storage.jobs import Requester
    from workers.celery_app import APPLY_CORRECTIONS_TASK, APPLY_KIND
    from workers.client import QueueClient

    settings = get_settings()
    if _announcer(settings) is None:
        return
    job = QueueClient(settings).submit_task(
        APPLY_CORRECTIONS_TASK, APPLY_KIND, requester=Requester("cli"), params={}
    )
    typer.echo(f"Apply job {job.id} queued: a worker adds the approved ones to the gallery.")
