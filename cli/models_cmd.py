"""``anibot models ...``: build the starter models, pull pinned community models, list what is installed."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from core.settings import Settings, get_settings
from core.vision.slots.catalog import (
    DEFAULT_CATALOG,
    CatalogEntry,
    CatalogError,
    Catalogue,
    RemoteFile,
    UnknownModel,
)
from core.vision.slots.model_advice import (
    CPU_SCORE_MARGIN,
    DEMO_SLOTS,
    MEMORY_FACTOR,
    Machine,
    detect_machine,
    recommend,
    recommended,
)
from core.vision.slots.pull import (
    HubSource,
    LocalSource,
    ProgressFn,
    PullError,
    PullResult,
    installed_folder,
    probe_hub,
    pull,
)
from core.vision.slots.registry import SLOTS, ModelNotInstalled, active_manifest, installed, read_active

models_app = typer.Typer(help="Build, pull, list and choose models.", no_args_is_help=True)
console = Console(stderr=True)

# what a user should know after a model of this slot changes
SLOT_NOTES: dict[str, str] = {
    "embedder": "Galleries are kept per embedder: enrol the reference pictures again for this embedder.",
}

CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        dir_okay=False,
        help="A catalogue file of your own, in the format of core/vision/slots/catalog.json.",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """One red line on stderr (no markup, no traceback) and the exit code."""
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def say(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def load_catalogue(path: Path | None) -> Catalogue:
    try:
        return Catalogue.load(path or DEFAULT_CATALOG)
    except CatalogError as exc:
        fail(str(exc), code=2)


def megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:,.1f} MB"


def published(entry: CatalogEntry) -> str:
    """The entry's published scores, on one line ("-" when it records none)."""
    return ", ".join(f"{metric} {value:g}" for metric, value in entry.scores.items()) or "-"


def build_slots(settings: Settings, slots: list[str], *, smoke: bool = False, seed: int = 0) -> None:
    from core.learning.starter.build import SMOKE_BUDGETS, build_slot

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
    from core.learning.starter.build import missing_slots

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
    faces: Annotated[
        list[Path] | None,
        typer.Option(
            "--faces",
            file_okay=False,
            help="Also train on a real face set (repeatable): <dir>/{train,test}/<character>/* or "
            "<dir>/<character>/*; default: ANIBOT_FACES_DIR and ANIBOT_MORE_FACES_DIRS.",
        ),
    ] = None,
    pictures: Annotated[
        Path | None,
        typer.Option(
            "--pictures",
            file_okay=False,
            help="Also train the detector on real pictures with boxes (labels.json or Pascal VOC; its train part); "
            "default: ANIBOT_PICTURES_DIR.",
        ),
    ] = None,
) -> None:
    """Train the starter models offline and install them."""
    from core.learning.starter.build import BUILDERS, missing_slots

    settings = get_settings()
    if faces:
        for folder in faces:
            if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
                fail(
                    f"{folder}: no character folders (<dir>/<character>/* or <dir>/train/<character>/*)",
                    code=2,
                )
        settings = settings.model_copy(update={"faces_dir": faces[0], "more_faces_dirs": list(faces[1:])})
    if pictures is not None:
        from core.evaluation.picture_folders import PictureFolderError, folder_layout

        try:
            folder_layout(pictures)
        except PictureFolderError as exc:
            fail(str(exc), code=2)
        settings = settings.model_copy(update={"pictures_dir": pictures})
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
    """Show installed models per slot and which one is active, then the catalogue models not installed."""
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
    out = Console()
    out.print(table)
    try:
        catalogue = Catalogue.load()
    except CatalogError as exc:
        say(f"(catalogue unreadable: {exc})")
        return
    missing = [e for e in catalogue.entries if not installed_folder(settings.models_dir, e).is_dir()]
    if missing:
        available = Table(title="available to pull (`anibot models pull NAME`)")
        for column in ("name", "slot", "size", "licence", "summary"):
            available.add_column(column, overflow="fold")
        for entry in missing:
            available.add_row(
                entry.name, entry.slot, megabytes(entry.total_size), entry.licence, entry.summary
            )
        out.print(available)


@contextmanager
def download_progress() -> Iterator[ProgressFn]:
    """A rich progress bar per file, fed by the pull's progress callback (shown once bytes arrive)."""
    progress = Progress(
        TextColumn("{task.fields[file]}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    tasks: dict[str, TaskID] = {}

    def report(file: RemoteFile, done: int, total: int | None) -> None:
        if not tasks:
            progress.start()
        if file.filename not in tasks:
            tasks[file.filename] = progress.add_task("", total=total, file=file.filename)
        progress.update(tasks[file.filename], completed=done, total=total)

    try:
        yield report
    finally:
        if tasks:
            progress.stop()


def report_pull(entry: CatalogEntry, result: PullResult, folder: Path) -> None:
    if result.already_installed:
        say(f"{entry.name} is already installed in {folder} (--force downloads it again).")
    else:
        checked = "its pinned size" if entry.unverified else "its pinned sha256 and size"
        say(
            f"Installed {entry.name} ({entry.slot}, {entry.format}) in {folder}: every file matches {checked}."
        )
    for filename, digest in result.unverified_digests.items():
        say(
            f"UNVERIFIED {filename}: sha256 {digest} (no published digest; pin it in the catalogue once trusted)"
        )
    if result.activated:
        say(f"Active {entry.slot}: {entry.name}.")
        if entry.slot in SLOT_NOTES and not result.already_installed:
            say(SLOT_NOTES[entry.slot])
    else:
        say(
            f"Not activated: `anibot models pull {entry.name}` without --no-activate makes it the active "
            f"{entry.slot}."
        )


@models_app.command("pull")
def pull_model(
    name: Annotated[str, typer.Argument(help="A catalogue model (`anibot models catalog` lists them).")],
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="Make it the active model of its slot.")
    ] = True,
    force: Annotated[bool, typer.Option(help="Download and reinstall even when installed.")] = False,
    allow_unverified: Annotated[
        bool, typer.Option(help="Install files the catalogue has no sha256 for (prints their digest).")
    ] = False,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from",
            exists=True,
            file_okay=False,
            help="Install from files copied by hand into this folder (checked like a download).",
        ),
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Download a pinned community model (every byte hash-checked) and install it; offline, use --from."""
    settings = get_settings()
    catalogue = load_catalogue(catalog)
    try:
        entry = catalogue.get(name)
    except UnknownModel as exc:
        fail(str(exc.args[0]), code=2)
    source = LocalSource(from_dir) if from_dir is not None else HubSource.from_settings(settings, entry.name)
    if not entry.unverified or allow_unverified:
        say(
            f"Pulling {entry.name} ({megabytes(entry.total_size)}, {entry.licence}) for the {entry.slot} slot"
        )
    try:
        with download_progress() as progress:
            result = pull(
                entry,
                settings.models_dir,
                source,
                activate=activate,
                force=force,
                allow_unverified=allow_unverified,
                progress=progress,
            )
    except PullError as exc:
        fail(str(exc))
    except OSError as exc:  # the models folder: permissions, a full disk
        fail(f"could not install {entry.name} into {settings.models_dir}: {exc}")
    report_pull(entry, result, installed_folder(settings.models_dir, entry))


@models_app.command("use-animeface")
def use_animeface(
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="Make it the active detector.")
    ] = False,
) -> None:
    """Install nagadomi's animeface-2009 face detector (the PyPI package, nothing to download) as a detector."""
    from core.vision.slots import animeface_detector

    settings = get_settings()
    if not animeface_detector.animeface_available():
        fail(
            f"animeface is not usable here: pip install {animeface_detector.REQUIREMENT} (x86_64, Python 3.11)"
        )
    try:
        manifest = animeface_detector.install_animeface(settings.models_dir, activate=activate)
    except OSError as exc:  # the models folder: permissions, a full disk
        fail(f"could not install animeface into {settings.models_dir}: {exc}")
    say(f"Installed {manifest.name} ({manifest.slot}, {manifest.format}) in {manifest.folder}.")
    if activate:
        say(f"Active detector: {manifest.name}.")
    else:
        say("Not activated: `anibot models use-animeface --activate` makes it the active detector.")


@models_app.command("catalog")
def show_catalog(
    name: Annotated[str | None, typer.Argument(help="Show this model's files, URLs and digests.")] = None,
    catalog: CatalogOption = None,
) -> None:
    """List the community models `anibot models pull` installs, with their pinned revisions and digests."""
    settings = get_settings()
    catalogue = load_catalogue(catalog)
    out = Console()
    if name is None:
        table = Table(title="model catalogue (`anibot models pull NAME`)")
        for column in (
            "name",
            "slot",
            "format",
            "size",
            "licence",
            "installed",
            "published scores",
            "summary",
        ):
            table.add_column(column, overflow="fold")
        for entry in catalogue.entries:
            there = installed_folder(settings.models_dir, entry).is_dir()
            row = (entry.name, entry.slot, entry.format, megabytes(entry.total_size), entry.licence)
            table.add_row(*row, "yes" if there else "", published(entry), entry.summary)
        out.print(table)
        return
    try:
        entry = catalogue.get(name)
    except UnknownModel as exc:
        fail(str(exc.args[0]), code=2)
    out.print(f"[bold]{entry.name}[/bold] ({entry.slot}, {entry.format}, {entry.licence}): {entry.homepage}")
    if entry.summary:
        out.print(entry.summary, markup=False)
    files = Table()
    for column in ("role", "file", "size", "sha256", "url"):
        files.add_column(column, overflow="fold")
    for file in entry.files:
        digest = file.sha256 or "[red]not published (--allow-unverified)[/red]"
        files.add_row(file.role, file.filename, megabytes(file.size), digest, file.pinned_url)
    out.print(files)
    out.print(f"thresholds: {entry.thresholds or '-'}; input size: {entry.input_size or '-'}", markup=False)
    out.print(f"published scores: {published(entry)}", markup=False)
    for what, where in entry.sources.items():
        out.print(f"{what} from: {where}", markup=False)


@models_app.command("recommend")
def recommend_models(catalog: CatalogOption = None) -> None:
    """Which catalogue models suit this machine (CPU or GPU, memory), with their sizes and published scores."""
    catalogue = load_catalogue(catalog)
    machine = detect_machine()
    out = Console()
    out.print(f"This machine: {machine.describe()}.", markup=False, soft_wrap=True)
    for slot, advice in recommend(catalogue, machine).items():
        table = Table(title=f"{slot} models, best suited first")
        for column in ("rank", "name", "size", "published scores", "why"):
            table.add_column(column, overflow="fold")
        for item in advice:
            name = item.entry.name if item.fits else f"{item.entry.name} (too big)"
            table.add_row(
                str(item.rank), name, megabytes(item.entry.total_size), published(item.entry), item.why
            )
        out.print(table)
    chosen = recommended(catalogue, machine)
    if chosen:
        listed = ", ".join(f"{entry.name} ({slot})" for slot, entry in chosen.items())
        out.print(f"`anibot demo --pull` installs: {listed}.", markup=False, soft_wrap=True)
    out.print(
        f"On a GPU the best published score wins; on a CPU the smallest model within {CPU_SCORE_MARGIN} of the best; "
        f"a model needs about {MEMORY_FACTOR}x its file in memory (an assumption). Scores are the publishers' own "
        "validation figures: `anibot models catalog NAME` says where each was read.",
        markup=False,
        soft_wrap=True,
    )


def pull_for_demo(
    settings: Settings,
    slots: tuple[str, ...] | list[str] = DEMO_SLOTS,
    *,
    catalog: Path | None = None,
    machine: Machine | None = None,
    probe: bool = True,
) -> list[str]:
    """Install and activate the community model recommended for this machine in each of ``slots`` (a new
    embedder enrols the gallery, as its build does); the slots installed. Offline (the hub does not answer within
    ``hub_probe_timeout_s``) it says so in one line and installs nothing; a model that fails to download is said
    in one line and its slot left to the starter build."""
    if probe:
        reason = probe_hub(settings.hf_endpoint, settings.hub_probe_timeout_s)
        if reason is not None:
            say(f"Offline ({reason}): training the starter models instead of pulling community models.")
            return []
    catalogue = load_catalogue(catalog)
    machine = machine or detect_machine()
    chosen = recommended(catalogue, machine, slots)
    if not chosen:
        return []
    total = sum(entry.total_size or 0 for entry in chosen.values())
    listed = ", ".join(f"{entry.name} ({slot})" for slot, entry in chosen.items())
    say(f"Pulling the community models recommended for this machine ({megabytes(total)}): {listed}")
    done: list[str] = []
    for slot, entry in chosen.items():
        source = HubSource.from_settings(settings, entry.name)
        try:
            with download_progress() as progress:
                result = pull(entry, settings.models_dir, source, activate=True, progress=progress)
        except PullError as exc:
            say(f"{entry.name} was not installed ({exc}); the starter {slot} is trained instead.")
            continue
        except OSError as exc:  # the models folder: permissions, a full disk
            say(
                f"{entry.name} was not installed into {settings.models_dir} ({exc}); the starter {slot} is trained."
            )
            continue
        report_pull(entry, result, installed_folder(settings.models_dir, entry))
        if slot == "embedder":
            from core.learning.starter.build import enrol_cast

            added = enrol_cast(settings, result.manifest)
            say(f"Gallery for {entry.name}: {added} new reference pictures enrolled.")
        done.append(slot)
    return done


def stdin_is_terminal() -> bool:
    """Whether a person can answer a question here (never in CI, scripts or pipes)."""
    return sys.stdin is not None and sys.stdin.isatty()


def offer_community_models(settings: Settings, *, catalog: Path | None = None) -> list[str]:
    """On an interactive terminal, when the demo would train starter models the hub could replace, ask whether to
    pull the recommended community models instead; the slots installed. Never asks without a terminal, nor
    when nothing is missing, nor offline (then one line says so)."""
    from core.learning.starter.build import missing_slots

    if not stdin_is_terminal():
        return []
    missing = [slot for slot in missing_slots(settings) if slot in DEMO_SLOTS]
    if not missing:
        return []
    reason = probe_hub(settings.hf_endpoint, settings.hub_probe_timeout_s)
    if reason is not None:
        say(f"Offline ({reason}): training the starter models.")
        return []
    catalogue = load_catalogue(catalog)
    machine = detect_machine()
    chosen = recommended(catalogue, machine, missing)
    if not chosen:
        return []
    total = sum(entry.total_size or 0 for entry in chosen.values())
    names = ", ".join(entry.name for entry in chosen.values())
    question = (
        f"No {', '.join(missing)} model yet. Download the community models recommended for this machine "
        f"({names}; {megabytes(total)}) instead of training starters?"
    )
    if not typer.confirm(question, default=True, err=True):
        return []
    return pull_for_demo(settings, list(chosen), catalog=catalog, machine=machine, probe=False)
