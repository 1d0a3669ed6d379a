"""``anibot eval ...``: measure the installed models; writes a markdown table and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from core.settings import get_settings

eval_app = typer.Typer(help="Measure the installed models on labelled data.", no_args_is_help=True)
console = Console(stderr=True)


@eval_app.command("identify")
def identify(
    data: Annotated[Path, typer.Option(help="Folder per character, optionally under train/ and test/.")],
    refs: Annotated[
        list[int] | None,
        typer.Option(
            help="Few-shot: K references per character (repeatable). "
            "Without it: closed set (train = gallery, test = queries)."
        ),
    ] = None,
    unknown_fraction: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.9, help="Share of characters left out of the gallery to measure unknown rejection."
        ),
    ] = 0.2,
    out: Annotated[Path, typer.Option(help="Where the report and plots go.")] = Path("out/eval"),
    seed: Annotated[int, typer.Option(help="Seed of the reference and hold-out draws.")] = 0,
) -> None:
    """Identification: top-1/top-5 (closed set and few-shot) and unknown-rejection precision/recall."""
    from core.evaluation import MARKDOWN_HEADER, evaluate_identification, load_folder_dataset, write_plots
    from core.gallery import Calibration
    from core.slots.registry import active_manifest, load_slot

    settings = get_settings()
    if not data.is_dir():
        console.print(f"[red]{data} is not a folder[/red]")
        raise typer.Exit(2)
    manifest = active_manifest(settings.models_dir, "embedder")
    if manifest is None:
        console.print("[red]No embedder installed: run `anibot models build`.[/red]")
        raise typer.Exit(2)
    embedder = load_slot(manifest, settings)
    threshold = settings.identify_threshold or manifest.thresholds.get("identify", 0.5)
    calibration = Calibration.from_dict(manifest.extra.get("calibration"))
    dataset = load_folder_dataset(data)
    protocols: list[int | None] = list(refs) if refs else [None]
    lines = [
        f"# Identification on `{data}`",
        "",
        f"Embedder `{manifest.version}`, threshold {threshold:.3f}, "
        f"{unknown_fraction:.0%} of characters held out of the gallery for unknown rejection.",
        "",
        MARKDOWN_HEADER,
    ]
    for k in protocols:
        report = evaluate_identification(
            embedder,
            dataset,
            refs=k,
            threshold=threshold,
            calibration=calibration,
            unknown_fraction=unknown_fraction,
            seed=seed,
        )
        lines.append(report.markdown_row())
        stem = "closed-set" if k is None else f"fewshot-k{k}"
        for plot in write_plots(report, out, stem):
            console.print(f"wrote {plot}")
        console.print(report.markdown_row())
    out.mkdir(parents=True, exist_ok=True)
    (out / "identify.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    console.print(f"wrote {out / 'identify.md'}")
