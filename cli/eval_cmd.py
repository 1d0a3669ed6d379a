"""``anibot eval ...``: measure the installed models; writes a markdown table and PNG plots."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from core.settings import get_settings

eval_app = typer.Typer(help="Measure the installed models on labelled data.", no_args_is_help=True)
console = Console(stderr=True)


FacesOption = Annotated[
    Path | None,
    typer.Option(
        "--faces",
        help="Real face set (<dir>/{train,test}/<character>/*); default: ANIBOT_FACES_DIR. Its test split is used.",
    ),
]


def _installed(slot: str):
    """The active model of ``slot``, loaded, and its manifest; a clear exit when none is installed."""
    from core.vision.slots.registry import active_manifest, load_slot

    settings = get_settings()
    manifest = active_manifest(settings.models_dir, slot)
    if manifest is None:
        console.print(f"[red]No {slot} installed: run `anibot models build`.[/red]")
        raise typer.Exit(2)
    return load_slot(manifest, settings), manifest


def _faces(faces: Path | None) -> Path | None:
    chosen = faces or get_settings().faces_dir
    if chosen is not None and not (chosen / "test").is_dir():
        console.print(f"[red]{chosen}: no test/ folder of character folders[/red]")
        raise typer.Exit(2)
    return chosen


@eval_app.command("detector")
def detector(
    faces: FacesOption = None,
    scenes: Annotated[int, typer.Option(min=1, help="Held-out pictures per set.")] = 200,
    out: Annotated[Path, typer.Option(help="Where the report and plots go.")] = Path("out/eval"),
    pictures: Annotated[
        Path | None,
        typer.Option(
            "--pictures",
            help="Real labelled pictures instead of drawn scenes: a folder with labels.json "
            "or Pascal VOC .xml files.",
        ),
    ] = None,
    peer: Annotated[
        str,
        typer.Option(help="With --pictures: the detector to compare with, when its package is installed."),
    ] = "animeface",
    no_peer: Annotated[bool, typer.Option("--no-peer", help="With --pictures: measure ours alone.")] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="With --pictures: only the first N pictures.")
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class",
            help="With --pictures: only boxes of this name (VOC object name, labels.json kind); repeatable.",
        ),
    ] = None,
    part: Annotated[
        str,
        typer.Option(
            help="With --pictures: all, train, val or test (the detector build's split by file-name hash); "
            "auto = test when the installed detector trained on this folder, else all.",
        ),
    ] = "auto",
) -> None:
    """Head detection: mAP50 and mAP50-95 on held-out drawn scenes and scenes with pasted real (test) heads;
    with --pictures, precision/recall/F1 and mAP on real labelled pictures, beside a peer detector."""
    if pictures is not None:
        _detector_on_pictures(
            pictures, out=out, peer=None if no_peer else peer, limit=limit, classes=classes, part=part
        )
        return
    from core.evaluation.detection import (
        detection_markdown,
        evaluate_detector,
        heldout_pictures,
        write_detection_plots,
    )

    model, manifest = _installed("detector")
    faces_dir = _faces(faces)
    operating = float(getattr(model, "confidence", manifest.thresholds.get("confidence", 0.35)))
    sets = {"drawn scenes": heldout_pictures(scenes)}
    if faces_dir is not None:
        sets["pasted real heads"] = heldout_pictures(scenes, faces_dir=faces_dir, real_share=1.0)
    reports = {
        name: evaluate_detector(model, pictures, operating_confidence=operating)
        for name, pictures in sets.items()
    }
    text = detection_markdown(reports, f"Head detection: `{manifest.version}`")
    out.mkdir(parents=True, exist_ok=True)
    (out / "detector.md").write_text(text, encoding="utf-8")
    for plot in write_detection_plots(reports, out):
        console.print(f"wrote {plot}")
    print(text)


PARTS = ("auto", "all", "train", "val", "test")


def _trained_on(manifest, folder: Path) -> bool:
    used = (manifest.extra or {}).get("pictures")
    return bool(used) and Path(used).resolve() == folder.resolve()


def _detector_on_pictures(
    folder: Path,
    *,
    out: Path,
    peer: str | None,
    limit: int | None,
    classes: list[str] | None,
    part: str = "all",
) -> None:
    """``anibot eval detector --pictures``: ours (and the peer) on a labelled folder; writes
    ``detector-pictures.md`` and its PNGs under ``out``."""
    from core.evaluation.peer_detectors import PEERS, load_peer
    from core.evaluation.picture_folders import PictureFolderError, load_picture_folder
    from core.evaluation.picture_plots import write_picture_plots
    from core.evaluation.real_pictures import evaluate_on_pictures, pictures_markdown

    if peer is not None and peer not in PEERS:
        console.print(
            f"[red]unknown peer detector {peer!r} (known: {', '.join(sorted(PEERS))}); or --no-peer[/red]"
        )
        raise typer.Exit(2)
    if part not in PARTS:
        console.print(f"[red]--part must be one of {', '.join(PARTS)}[/red]")
        raise typer.Exit(2)
    try:
        labelled = load_picture_folder(folder, classes=classes)
    except PictureFolderError as error:
        console.print(str(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    model, manifest = _installed("detector")
    if part == "auto":
        part = "test" if _trained_on(manifest, folder) else "all"
        if part == "test":
            console.print(
                f"{manifest.name} trained on {folder}: measuring its test part only (--part to choose)"
            )
    if part != "all":
        from core.evaluation.picture_folders import picture_split

        labelled = replace(labelled, pictures=[p for p in labelled.pictures if picture_split(p.name) == part])
    if limit is not None:
        labelled = replace(labelled, pictures=labelled.pictures[:limit])
    if not labelled.pictures:
        console.print(f"[red]{folder}: no pictures in its {part} part[/red]")
        raise typer.Exit(2)
    operating = float(getattr(model, "confidence", manifest.thresholds.get("confidence", 0.35)))
    detectors = {"ours": (model, operating)}
    if peer is not None:
        loaded = load_peer(peer)
        if loaded.detector is None:
            console.print(f"peer {peer} skipped: {loaded.reason}", markup=False, soft_wrap=True)
        else:
            detectors["peer"] = (loaded.detector, loaded.operating_confidence)
    console.print(
        f"{len(labelled.pictures)} pictures, {labelled.n_boxes} boxes ({labelled.layout}) in {folder}"
    )
    reports = {
        name: evaluate_on_pictures(found, labelled.pictures, operating_confidence)
        for name, (found, operating_confidence) in detectors.items()
    }
    note = (
        f"Folder `{folder}` ({labelled.layout}"
        + (f", its {part} part" if part != "all" else "")
        + ")"
        + (f", classes {', '.join(classes)}" if classes else "")
        + "."
    )
    text = pictures_markdown(reports, "Head detection on real pictures", note)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detector-pictures.md").write_text(text, encoding="utf-8")
    console.print(f"wrote {out / 'detector-pictures.md'}")
    for plot in write_picture_plots(reports, labelled.pictures, out):
        console.print(f"wrote {plot}")
    print(text)


@eval_app.command("tagger")
def tagger(
    faces: Annotated[
        list[Path] | None,
        typer.Option(
            "--faces",
            help="Real face set, repeatable: moeimouto-style <dir>/{train,test}/<character>/* (its test split) or "
            "flat <dir>/<character>/* (its hashed test share); default: ANIBOT_FACES_DIR.",
        ),
    ] = None,
    scenes: Annotated[int, typer.Option(min=1, help="Held-out synthetic scenes.")] = 200,
    out: Annotated[Path, typer.Option(help="Where the report and plots go.")] = Path("out/eval"),
) -> None:
    """Tagging: per-tag F1 and macro-F1 on synthetic scenes; hair and eye colour F1 and hallucinated appearance
    tags on real faces."""
    from core.evaluation.tagging import (
        evaluate_real_characters,
        evaluate_real_colours,
        evaluate_synthetic,
        tag_markdown,
        write_tag_plots,
    )

    model, manifest = _installed("tagger")
    chosen = list(faces or ([get_settings().faces_dir] if get_settings().faces_dir is not None else []))
    missing = [str(f) for f in chosen if not f.is_dir()]
    if missing:
        console.print(f"[red]not a folder of face images: {', '.join(missing)}[/red]")
        raise typer.Exit(2)
    reports = [evaluate_synthetic(model, scenes)]
    if chosen:
        colours = evaluate_real_colours(model, chosen)
        reports += [colours.hair, colours.eyes]
    text = tag_markdown(reports, f"Tagging: `{manifest.version}`")
    if chosen and colours.hallucination is not None:
        text += "\n" + colours.hallucination.markdown()
    characters = evaluate_real_characters(model, chosen) if chosen else None
    if characters is not None:
        text += "\n" + characters.markdown()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tagger.md").write_text(text, encoding="utf-8")
    for plot in write_tag_plots(reports, out):
        console.print(f"wrote {plot}")
    print(text.split("\n## ")[0])
    if chosen and colours.hallucination is not None:
        h = colours.hallucination
        print(
            f"hallucinated appearance tags: {h.rate:.3f} of {h.n_pictures} real faces, {h.per_face:.3f} per face"
        )
    if characters is not None:
        print(characters.markdown().split("\n\n")[1])


@eval_app.command("identify")
def identify(
    data: Annotated[
        Path | None, typer.Option(help="Folder per character, optionally under train/ and test/.")
    ] = None,
    fit_threshold: Annotated[
        Path | None,
        typer.Option(
            "--fit-threshold",
            help="Fit the active embedder's unknown threshold and calibration on this folder-per-character set "
            "(cut as the pipeline cuts heads) and write them into its manifest.",
        ),
    ] = None,
    images: Annotated[
        str,
        typer.Option(
            help="With --fit-threshold: pictures (the detector's largest head, cut by the embedder's crop rule), "
            "crops (face crops given as they are) or auto (pictures when a detector is installed)."
        ),
    ] = "auto",
    folds: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --fit-threshold: rounds of characters left out (default: each one left out once).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --fit-threshold: print the fit, write nothing.")
    ] = False,
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
    """Identification: top-1/top-5 (closed set and few-shot) and unknown-rejection precision/recall; with
    --fit-threshold, fits the threshold and calibration of the active embedder and writes them into its manifest."""
    from core.characters.gallery import Calibration
    from core.datasets.folders import load_folder_dataset
    from core.evaluation.identification import MARKDOWN_HEADER, evaluate_identification, write_plots
    from core.vision.slots.registry import active_manifest, load_slot

    settings = get_settings()
    if fit_threshold is not None:
        if data is not None:
            console.print("[red]--fit-threshold and --data are two commands: give one[/red]")
            raise typer.Exit(2)
        _fit_threshold(
            fit_threshold,
            images=images,
            refs=refs[0] if refs else 5,
            folds=folds,
            unknown_fraction=unknown_fraction,
            seed=seed,
            dry_run=dry_run,
        )
        return
    if data is None:
        console.print("[red]give --data DIR (measure) or --fit-threshold DIR (fit and write)[/red]")
        raise typer.Exit(2)
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
    labels = {i.label for items in dataset.values() for i in items}
    unseen = sorted(set(manifest.extra.get("real_unseen") or ()) & labels)
    runs: list[tuple[int | None, list[str] | None]] = [(k, None) for k in protocols]
    # few-shot on the characters this embedder never trained on (its manifest names them)
    runs += [(k, unseen) for k in (list(refs) if refs else [1, 5]) if unseen and k is not None]
    if unseen:
        lines.insert(4, f"Never seen in training: {', '.join(unseen)}.\n")
    for k, only in runs:
        report = evaluate_identification(
            embedder,
            dataset,
            refs=k,
            threshold=threshold,
            calibration=calibration,
            unknown_fraction=unknown_fraction,
            seed=seed,
            score_only=only,
        )
        lines.append(report.markdown_row())
        stem = ("closed-set" if k is None else f"fewshot-k{k}") + ("-unseen" if only else "")
        for plot in write_plots(report, out, stem):
            console.print(f"wrote {plot}")
        console.print(report.markdown_row())
    out.mkdir(parents=True, exist_ok=True)
    (out / "identify.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    console.print(f"wrote {out / 'identify.md'}")


def _fit_threshold(
    folder: Path,
    *,
    images: str,
    refs: int,
    folds: int | None,
    unknown_fraction: float,
    seed: int,
    dry_run: bool,
) -> None:
    """``anibot eval identify --fit-threshold DIR``: fit, print, write the manifest, and carry the gallery's
    references over to the embedder's new version (same vectors; its version moves with the threshold)."""
    from core.evaluation.threshold_fit import FitError, fit_on_folder, write_fit
    from core.vision.slots.embedder import flip_tta
    from core.vision.slots.registry import ModelNotInstalled, active_manifest, load_slot

    settings = get_settings()
    manifest = active_manifest(settings.models_dir, "embedder")
    if manifest is None:
        console.print("[red]No embedder installed: run `anibot models build` or `anibot models pull`.[/red]")
        raise typer.Exit(2)
    embedder = load_slot(manifest, settings)
    detector = None
    if images != "crops":
        try:
            found = active_manifest(settings.models_dir, "detector")
        except ModelNotInstalled:
            found = None
        detector = load_slot(found, settings) if found is not None else None
    try:
        report = fit_on_folder(
            embedder,
            folder,
            detector=detector,
            images=images,
            refs=refs,
            folds=folds,
            unknown_fraction=unknown_fraction,
            seed=seed,
            flip_tta=flip_tta(manifest),
        )
    except FitError as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    report.previous_threshold = manifest.thresholds.get("identify")
    for line in report.lines():
        print(line)
    if dry_run:
        console.print("--dry-run: the manifest was not changed")
        return
    fitted = write_fit(manifest, report)
    console.print(f"wrote {fitted.folder / 'manifest.json'}: {manifest.version} -> {fitted.version}")
    if settings.identify_threshold is not None:
        console.print(
            f"[yellow]ANIBOT_IDENTIFY_THRESHOLD={settings.identify_threshold} still overrides the manifest's "
            "threshold[/yellow]"
        )
    _carry_gallery(settings, manifest.version, fitted.version)


def _carry_gallery(settings, old_version: str, new_version: str) -> None:  # type: ignore[no-untyped-def]
    """The taught references, stored under the embedder's old version, stored under its new one too, a gallery
    published for it, and the workers told to load the models again."""
    from cli.characters_cmd import _announcer
    from core.characters.gallery_versions import GalleryVersions
    from core.characters.teaching import carry_references
    from core.storage.shared_store import SharedStore
    from core.storage.store import Store
    from core.vision.slots.registry import announce_models

    store = Store.from_settings(settings)
    store.create_all()
    carried = carry_references(store, old_version, new_version)
    kv = _announcer(settings)
    if carried:
        versions = GalleryVersions(SharedStore(settings.shared_path), kv, keep=settings.gallery_keep_versions)
        published = versions.publish(store, new_version)
        console.print(
            f"{carried} taught references carried over to {new_version}; gallery version "
            f"{published.manifest.version} published"
        )
    if kv is not None:
        announce_models(kv)
        console.print("workers told to load the models again")


@eval_app.command("captioner")
def captioner(
    scenes: Annotated[int, typer.Option(min=1, help="Synthetic scenes to caption.")] = 200,
    seed_base: Annotated[
        int | None, typer.Option(help="First scene seed; default: a range no training uses.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the report and plot go.")] = Path("out/eval"),
) -> None:
    """Captions: the share whose stated attributes match the truth of synthetic scenes (raw and grounded)."""
    from core.evaluation.captioning import EVAL_SEED_BASE, evaluate_captioner, write_plot

    model, _ = _installed("captioner")
    first = EVAL_SEED_BASE if seed_base is None else seed_base
    report = evaluate_captioner(model, n_scenes=scenes, seed_base=first)
    text = report.markdown()
    out.mkdir(parents=True, exist_ok=True)
    (out / "captioner.md").write_text(text, encoding="utf-8")
    console.print(f"wrote {out / 'captioner.md'}")
    console.print(f"wrote {write_plot(report, out / 'captioner.png')}")
    print(text)
