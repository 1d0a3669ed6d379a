"""Real pictures with known boxes, read from a labelled folder into :class:`LabelledPicture` s.

Two layouts, told apart by what the folder holds (:data:`LAYOUTS`, first match wins):

- ``labels.json`` at the root: ``[{"file": "images/N.jpg", "width": W, "height": H,
  "boxes": [[x1, y1, x2, y2], ...], "kind": "face"}, ...]``, pixel corners, ``file`` relative to the root;
- Pascal VOC: one ``<name>.xml`` per picture in the folder or in its ``Annotations/`` (``annotation/filename``,
  ``size/width|height``, ``object/name`` and ``object/bndbox/xmin|ymin|xmax|ymax``, taken as pixel corners);
  the image is ``filename`` next to the xml, or in a ``JPEGImages/`` or ``images/`` folder beside or below it.

Bad entries are errors, never skipped: a missing or unreadable image, a size that differs from the labelled one
or a box outside the picture raises :class:`PictureFolderError` naming the file, so that a measurement never runs
on fewer pictures than the folder claims without anyone noticing. Boxes may overhang the picture by up to
:data:`EDGE_TOLERANCE` pixels (rounding in labelling tools); they are clipped to it.

``classes`` keeps only the boxes of those names (VOC ``object/name``, the ``kind`` of a labels.json entry);
a picture left without boxes stays in, as a picture where nothing should be found.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from core.datasets.splits import hash_part
from core.evaluation.detection import BoxT, LabelledPicture

LABELS_JSON = "labels.json"
EDGE_TOLERANCE = 2.0  # pixels a box may overhang the picture before it is an error
IMAGE_FOLDERS = ("JPEGImages", "images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class PictureFolderError(ValueError):
    """A labelled folder that cannot be measured: which file, and why."""


@dataclass(frozen=True)
class PictureLabels:
    """One picture's labels before its image is read."""

    image_path: Path
    source: Path  # the file the labels came from (labels.json or the xml), for errors
    width: int | None
    height: int | None
    boxes: list[BoxT]


@dataclass(frozen=True)
class Layout:
    name: str
    holds: Callable[[Path], bool]
    read: Callable[[Path, Collection[str] | None], list[PictureLabels]]


def _json_holds(folder: Path) -> bool:
    return (folder / LABELS_JSON).is_file()


def _as_box(raw: Any, source: Path, where: str) -> BoxT:
    try:
        x1, y1, x2, y2 = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise PictureFolderError(
            f"{source}: {where}: a box is four numbers x1, y1, x2, y2, not {raw!r}"
        ) from None
    return (x1, y1, x2, y2)


def _read_json(folder: Path, classes: Collection[str] | None) -> list[PictureLabels]:
    source = folder / LABELS_JSON
    try:
        entries = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PictureFolderError(f"{source}: not readable JSON ({error})") from None
    if not isinstance(entries, list):
        raise PictureFolderError(f"{source}: expected a list of pictures, got {type(entries).__name__}")
    out = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "file" not in entry or "boxes" not in entry:
            raise PictureFolderError(f"{source}: entry {index} needs at least 'file' and 'boxes'")
        where = f"entry {index} ({entry['file']})"
        keep = classes is None or entry.get("kind") in classes
        boxes = [_as_box(b, source, where) for b in entry["boxes"]] if keep else []
        out.append(
            PictureLabels(
                image_path=folder / str(entry["file"]),
                source=source,
                width=int(entry["width"]) if "width" in entry else None,
                height=int(entry["height"]) if "height" in entry else None,
                boxes=boxes,
            )
        )
    return out


def _voc_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.xml")) or sorted((folder / "Annotations").glob("*.xml"))


def _voc_holds(folder: Path) -> bool:
    return bool(_voc_files(folder))


def _voc_image(xml: Path, filename: str | None) -> Path:
    names = [filename] if filename else [xml.stem + suffix for suffix in IMAGE_SUFFIXES]
    places = [xml.parent] + [base / sub for base in (xml.parent.parent, xml.parent) for sub in IMAGE_FOLDERS]
    for place in places:
        for name in names:
            if (place / name).is_file():
                return place / name
    return xml.parent / names[0]  # missing: the error names where it was first looked for


def _voc_number(node: ET.Element, tag: str, xml: Path) -> float:
    text = node.findtext(tag)
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PictureFolderError(f"{xml}: <{tag}> is {text!r}, not a number") from None


def _read_voc_file(xml: Path, classes: Collection[str] | None) -> PictureLabels:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as error:
        raise PictureFolderError(f"{xml}: not readable Pascal VOC XML ({error})") from None
    size = root.find("size")
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if classes is not None and name not in classes:
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise PictureFolderError(f"{xml}: object {name!r} has no <bndbox>")
        boxes.append(tuple(_voc_number(bndbox, tag, xml) for tag in ("xmin", "ymin", "xmax", "ymax")))
    return PictureLabels(
        image_path=_voc_image(xml, (root.findtext("filename") or "").strip() or None),
        source=xml,
        width=int(_voc_number(size, "width", xml)) if size is not None else None,
        height=int(_voc_number(size, "height", xml)) if size is not None else None,
        boxes=boxes,  # type: ignore[arg-type]
    )


def _read_voc(folder: Path, classes: Collection[str] | None) -> list[PictureLabels]:
    return [_read_voc_file(xml, classes) for xml in _voc_files(folder)]


LAYOUTS: tuple[Layout, ...] = (
    Layout("labels.json", _json_holds, _read_json),
    Layout("Pascal VOC", _voc_holds, _read_voc),
)


def folder_layout(folder: Path) -> Layout:
    """The layout of ``folder``; a :class:`PictureFolderError` saying what was looked for when none fits."""
    if not folder.is_dir():
        raise PictureFolderError(f"{folder}: not a folder")
    for layout in LAYOUTS:
        if layout.holds(folder):
            return layout
    raise PictureFolderError(
        f"{folder}: no {LABELS_JSON} and no Pascal VOC .xml files (in the folder or its Annotations/): "
        "nothing to measure on"
    )


def _checked_boxes(labels: PictureLabels, width: int, height: int) -> list[BoxT]:
    out = []
    for x1, y1, x2, y2 in labels.boxes:
        inside = (
            -EDGE_TOLERANCE <= x1 < x2 <= width + EDGE_TOLERANCE
            and -EDGE_TOLERANCE <= y1 < y2 <= height + EDGE_TOLERANCE
        )
        if not inside:
            raise PictureFolderError(
                f"{labels.source}: box {[x1, y1, x2, y2]} of {labels.image_path.name} is empty or outside "
                f"its {width}x{height} picture"
            )
        out.append((max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))))
    return out


def _picture(labels: PictureLabels, root: Path) -> LabelledPicture:
    path = labels.image_path
    if not path.is_file():
        raise PictureFolderError(f"{labels.source}: image {path} is missing")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception as error:
        raise PictureFolderError(f"{path}: not a readable image ({error})") from None
    width, height = image.size
    if (labels.width, labels.height) not in ((None, None), (width, height)):
        raise PictureFolderError(
            f"{labels.source}: {path.name} is labelled {labels.width}x{labels.height} but is {width}x{height}"
        )
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = path.name
    return LabelledPicture(image, _checked_boxes(labels, width, height), name=name)


@dataclass(frozen=True)
class PictureFolder:
    folder: Path
    layout: str
    pictures: list[LabelledPicture]

    @property
    def n_boxes(self) -> int:
        return sum(len(p.boxes) for p in self.pictures)


def load_picture_folder(
    folder: Path, *, classes: Collection[str] | None = None, limit: int | None = None
) -> PictureFolder:
    """The labelled pictures of ``folder`` (the first ``limit`` in the labels' order), images decoded as RGB."""
    layout = folder_layout(folder)
    entries = layout.read(folder, frozenset(classes) if classes else None)
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise PictureFolderError(f"{folder}: its {layout.name} labels list no pictures")
    return PictureFolder(folder, layout.name, [_picture(labels, folder) for labels in entries])


# the detector build's split of a picture folder: train (65 %), val (10 %: the threshold), test (25 %: reports)
SPLIT_SHARES = {"train": 0.65, "val": 0.10, "test": 0.25}


def picture_split(name: str) -> str:
    """``train``, ``val`` or ``test`` for a picture, from a hash of its file name: stable in any folder (the first
    32 bits of the sha256 over ``2**32 - 1``, as this split always cut)."""
    return hash_part(Path(name).name, SPLIT_SHARES, bits=32, closed=True)
