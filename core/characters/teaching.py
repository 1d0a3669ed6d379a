"""Teaching the bot characters: reference pictures to head crops, crops to gallery references, a new gallery version.

Each reference picture goes through the same head detection as a query. A reference must show one head: with
several, the largest is used and the admin is told; with none (a picture that is already a face crop), the
whole picture is used and the admin is told. An admin may choose the region instead (a box in the picture's
pixels): then that region is the crop, and the reference's identity is the picture and the region. Head crops are
kept in the shared folder (a retrained embedder embeds them again, the detector's retraining pastes them in as
heads), embeddings go to the store, and an index build publishes a new gallery version that every worker loads on
its next job. The embedder is given what its crop rule asks for (:mod:`core.vision.crops`: the head box, or the
head with the picture around it), cut from the picture exactly as the pipeline cuts a query's head.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from core.characters.gallery_versions import GalleryVersions, Published
from core.characters.reference_crops import ReferenceCrops
from core.storage.store import CharacterInfo, Store
from core.vision.crops import HEAD_ONLY, CropRule, crop_rule_of, embedder_crop
from core.vision.results import Box
from core.vision.slots.base import Detection, Embedder, HeadDetector

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]


def _no_progress(stage: str, fraction: float) -> None:
    return None


@dataclass(frozen=True)
class PreparedReference:
    sha256: str  # of the posted picture: the reference's identity (posting it again adds nothing)
    crop: Image.Image  # the head (kept in the shared folder), or the whole picture when it showed no head
    note: str = ""  # what was decided about this picture, for the admin ("3 heads: used the largest")
    # the picture the head was cut from and where: an embedder whose crop rule wants context is given the head
    # with the picture around it (None: ``crop`` is all there is)
    picture: Image.Image | None = None
    box: Box | None = None

    def embedder_view(self, rule: CropRule = HEAD_ONLY) -> Image.Image:
        """What an embedder with ``rule`` is given for this reference: cut from its picture as a query is."""
        if rule.head_only or self.picture is None or self.box is None:
            return self.crop
        return embedder_crop(self.picture, self.box, rule)


RegionBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in the picture's pixels
MIN_REGION_SIDE = 4  # a chosen region narrower or lower than this (pixels) cannot be a head


def reference_sha256(image_sha256: str, box: RegionBox) -> str:
    """The identity of a reference cut from a chosen region: its picture and where the head is in it (one picture
    can teach several heads; the same region given twice adds one reference)."""
    text = f"{image_sha256}:" + ",".join(f"{v:.1f}" for v in box)
    return hashlib.sha256(text.encode()).hexdigest()


def largest_head(found: Sequence[Detection]) -> int | None:
    """The index of the head a reference picture is cut around when nobody chose one (the largest), or None when
    there is no head (the whole picture is used)."""
    if not found:
        return None
    return max(range(len(found)), key=lambda i: found[i].box.width * found[i].box.height)


def region_problem(box: Sequence[float], width: int, height: int) -> str | None:
    """Why ``box`` cannot be a chosen region of a ``width`` x ``height`` picture, or None when it can."""
    if len(box) != 4:
        return "a region is four numbers: [x1, y1, x2, y2]"
    x1, y1, x2, y2 = box
    if not 0 <= x1 < x2 <= width or not 0 <= y1 < y2 <= height:
        return f"the region {list(box)} is not inside the picture ({width}x{height})"
    if x2 - x1 < MIN_REGION_SIDE or y2 - y1 < MIN_REGION_SIDE:
        return f"the region {list(box)} is smaller than {MIN_REGION_SIDE}x{MIN_REGION_SIDE} pixels"
    return None


def prepare_reference(
    image: Image.Image,
    sha256: str,
    detector: HeadDetector | None,
    *,
    label: str = "picture",
    box: RegionBox | None = None,
) -> PreparedReference:
    """The head crop of one reference picture: the region ``box`` when the admin chose one, else the largest head
    (the whole picture when none is found). A chosen region outside the picture raises ``ValueError``."""
    if box is not None:
        problem = region_problem(box, image.width, image.height)
        if problem:
            raise ValueError(f"{label}: {problem}")
        region = Box(*box)
        crop = embedder_crop(image, region)
        return PreparedReference(
            reference_sha256(sha256, box), crop, f"{label}: used the chosen region", image, region
        )
    found = detector.detect(image) if detector is not None else []
    chosen = largest_head(found)
    if chosen is None:
        note = f"{label}: no head found, used the whole picture" if detector is not None else ""
        return PreparedReference(sha256, image.convert("RGB"), note)
    head = found[chosen].box
    note = f"{label}: {len(found)} heads, used the largest" if len(found) > 1 else ""
    return PreparedReference(sha256, embedder_crop(image, head), note, image, head)


def store_references(
    store: Store,
    embedder: Embedder,
    name: str,
    series: str,
    references: Sequence[PreparedReference],
    crops: ReferenceCrops | None = None,
) -> int:
    """Embed the references (each cut as the embedder's crop rule asks, like the pipeline's queries) and store
    them as references of ``name`` (created when new); with ``crops``, the head crops are kept in the shared folder
    too. Returns how many references were new (a picture given before is skipped). Publishing a gallery version is
    the caller's (several characters may be stored first)."""
    if not references:
        raise ValueError(f"no reference pictures for {name!r}")
    if crops is not None:
        for ref in references:
            crops.put(ref.sha256, ref.crop)
    rule = crop_rule_of(embedder)
    vectors = embedder.embed([ref.embedder_view(rule) for ref in references])
    character_id = store.add_character(name, series)
    return sum(
        store.add_reference(character_id, ref.sha256, embedder.version, vector)
        for ref, vector in zip(references, vectors, strict=True)
    )


def carry_references(store: Store, old_version: str, new_version: str) -> int:
    """Store every reference embedding of embedder ``old_version`` under ``new_version`` too: for an embedder
    whose version changed while its vectors did not (a new threshold). Returns how many references were new;
    publishing a gallery version is the caller's."""
    if old_version == new_version:
        return 0
    return sum(
        store.add_reference(e.character_id, e.image_sha256, new_version, e.embedding)
        for e in store.gallery(old_version)
    )


@dataclass(frozen=True)
class TeachOutcome:
    name: str
    series: str
    added: int  # new references (a picture given before is not added twice)
    total: int  # references the character now has
    notes: tuple[str, ...] = ()
    gallery_version: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.series})" if self.series else self.name

    @property
    def message(self) -> str:
        text = f"Added {self.label}: {self.total} reference{'s' * (self.total != 1)}"
        if self.added != self.total:
            text += f" ({self.added} new)"
        text += "."
        if self.notes:
            text += " " + "; ".join(self.notes) + "."
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "message": self.message,
            "name": self.name,
            "series": self.series,
            "added": self.added,
            "references": self.total,
            "notes": list(self.notes),
            "gallery_version": self.gallery_version,
        }


class UnknownCharacter(LookupError):
    """No such character (the message is safe to show)."""


class Teacher:
    """Adds and removes characters for the active embedder, and publishes the gallery versions."""

    def __init__(
        self,
        store: Store,
        versions: GalleryVersions,
        embedder: Embedder,
        detector: HeadDetector | None = None,
    ) -> None:
        self.store = store
        self.versions = versions
        self.crops = ReferenceCrops(versions.shared)
        self.embedder = embedder
        self.detector = detector

    def resolve(self, name: str, series: str) -> tuple[str, str]:
        """An existing character this name means (case-insensitively; a name without a series matches the one
        character of that name), else the name as given."""
        known = self.store.list_characters()
        folded = name.casefold()
        same = [c for c in known if c.name.casefold() == folded]
        if series:
            exact = [c for c in same if c.series.casefold() == series.casefold()]
            return (exact[0].name, exact[0].series) if exact else (name, series)
        if len(same) == 1:
            return same[0].name, same[0].series
        plain = [c for c in same if not c.series]
        return (plain[0].name, "") if plain else (name, "")

    def add(
        self,
        name: str,
        series: str,
        references: Sequence[PreparedReference],
        progress: ProgressFn = _no_progress,
    ) -> TeachOutcome:
        """Store the references of a character (merging into an existing one) and publish a new gallery."""
        name, series = self.resolve(name, series)
        if self.store.forget_removal(name, series):  # taught again: proposals may name it from now on
            log.info("%s (%s) was removed before and is taught again", name, series or "-")
        progress("embedding", 0.4)
        added = store_references(self.store, self.embedder, name, series, references, self.crops)
        progress("indexing", 0.7)
        published = self.publish()
        total = self._count(name, series)
        log.info("taught %s (%s): %d new of %d references", name, series or "-", added, len(references))
        notes = tuple(ref.note for ref in references if ref.note)
        return TeachOutcome(name, series, added, total, notes, published.manifest.version)

    def remove(self, name: str, series: str) -> Published:
        name, series = self.resolve(name, series)
        if not self.store.delete_character(name, series):
            label = f"{name} ({series})" if series else name
            raise UnknownCharacter(f"I don't know {label}; /characters lists who I know.")
        return self.publish()

    def publish(self) -> Published:
        return self.versions.publish(self.store, self.embedder.version)

    def characters(self) -> list[CharacterInfo]:
        return self.store.list_characters(self.embedder.version)

    def _count(self, name: str, series: str) -> int:
        return next((c.n_references for c in self.characters() if c.name == name and c.series == series), 0)
