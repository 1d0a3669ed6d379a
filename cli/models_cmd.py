"""``anibot models ...``: build the starter models and list what is installed and active."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.settings import Settings, get_settings
from core.slots.registry import SLOTS, ModelNotInstalled, active_manifest, installed, read_active

models_app = typer.Typer(help="Build, list and choose models.", no_args_is_help=True)
console = Console(stderr=True)


def build_slots(settings: Settings, slots: list[str], *, smoke: bool = False, seed: int = 0) -> None:
    from core.training.build import SMOKE_BUDGETS, build_slot

    with Progress(
        TextColumn("[bold]{task.fields[slot]:<9}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for slot in slots:
            task = progress.add_task("starting", total=1.0, slot=slot)

            def report(message: str, fraction: float, task: int = task) -> None:
                progress.update(task, description=message, completed=max(0.0, min(1.0, fraction)))

            started = time.perf_counter()
            manifest = build_slot(
                settings, slot, seed=seed, progress=report, budget=SMOKE_BUDGETS[slot] if smoke else None
            )
            progress.update(
                task, completed=1.0, description=f"{manifest.name} in {time.perf_counter() - started:.0f} s"
            )


def build_missing(settings: Settings) -> None:
    from core.training.build import missing_slots

    missing = missing_slots(settings)
    if missing:
        console.print(f"Building starter models: {', '.join(missing)} (one time, a few minutes on a CPU)")
        build_slots(settings, missing)


@models_app.command("build")
def build(
    slot: Annotated[list[str] | None, typer.Option("--slot", help="Only these slots (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild slots that already have a model.")] = False,
    smoke: Annotated[bool, typer.Option(help="A few training steps only (checks the build path).")] = False,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
) -> None:
    """Train the starter models offline and install them."""
    from core.training.build import BUILDERS, missing_slots

    settings = get_settings()
    wanted = slot or list(BUILDERS)
    unknown = sorted(set(wanted) - set(BUILDERS))
    if unknown:
        console.print(
            f"[red]No starter builder for: {', '.join(unknown)} (buildable: {', '.join(BUILDERS)})[/red]"
        )
        raise typer.Exit(2)
    todo = wanted if force else [s for s in wanted if s in missing_slots(settings)]
    if not todo:
        console.print("Every starter model is installed (use --force to rebuild).")
        return
    build_slots(settings, todo, smoke=smoke, seed=seed)


@models_app.command("list")
def list_models() -> None:
    """Show installed models per slot and which one is active."""
    settings = get_settings()
    chosen = read_active(settings.models_dir)
    table = Table(title=f"models in {settings.models_dir}")
    for column in ("slot", "name", "format", "version", "active", "provenance"):
        table.add_column(column, overflow="fold")
    for slot in SLOTS:
        try:
            active = active_manifest(settings.models_dir, slot)
        except ModelNotInstalled:
            active = None
        manifests = installed(settings.models_dir, slot) or ([active] if active else [])
        if not manifests:
            table.add_row(slot, "[red]none[/red]", "-", "-", "-", "run `anibot models build`")
        for manifest in manifests:
            is_active = active is not None and manifest.name == active.name
            table.add_row(
                slot,
                manifest.name,
                manifest.format,
                manifest.version,
                "yes" if is_active else "",
                manifest.provenance,
            )
    if chosen:
        console.print(f"active.json: {chosen}")
    Console().print(table)
