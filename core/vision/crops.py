"""The crop an embedder is given for a head: the one rule queries and references are cut by.

An embedder's manifest says how much of the picture around a head box it wants (``extra["crop"]``); every path
that cuts a head for an embedder (the pipeline's queries, admins' references, approved corrections, the starter
cast, ``anibot eval identify --fit-threshold``) goes through :func:`embedder_crop_region`, so a query and a
reference are always cut alike.

``extra["crop"] = {"context": c}``: the head box of width ``w`` and height ``h`` grows by ``c * w`` to the left
and to the right, by ``c * h / 2`` above (hair, ears, hats) and by ``2 * c * h`` below (towards the upper body),
then is clipped to the picture. ``c = 0`` (the default, and every manifest without ``extra["crop"]``) is the head
box itself, cut exactly as before (:meth:`core.vision.results.Box.crop_region`); ``c = 1`` is about three head
widths by three and a half head heights: head, shoulders and chest. Trained embedders that learnt on head crops
(anibot's starter) want ``0``; deepghs' CCIP learnt on whole pictures of one character and gets context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from core.vision.results import Box
from core.vision.slots.base import Manifest

MAX_CONTEXT = 4.0  # beyond this the crop is mostly the picture, whatever the head


@dataclass(frozen=True)
class CropRule:
    """How much picture around a head box an embedder is given (see the module's docstring)."""

    context: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.context <= MAX_CONTEXT:
            raise ValueError(f"crop context must be between 0 and {MAX_CONTEXT}, not {self.context}")

    @property
    def head_only(self) -> bool:
        return self.context == 0.0

    def to_dict(self) -> dict[str, float]:
        return {"context": self.context}

    @classmethod
    def from_extra(cls, value: Any, *, owner: str = "manifest") -> CropRule:
        """The rule of a manifest's ``extra["crop"]`` (None: the head box); a clear error for anything else."""
        if value is None:
            return HEAD_ONLY
        if not isinstance(value, dict):
            raise ValueError(f"{owner}: extra.crop must be an object like {{'context': 1.0}}, not {value!r}")
        unknown = sorted(set(value) - {"context"})
        if unknown:
            raise ValueError(f"{owner}: extra.crop has unknown keys {unknown} (known: ['context'])")
        context = value.get("context", 0.0)
        if isinstance(context, bool) or not isinstance(context, int | float):
            raise ValueError(f"{owner}: extra.crop.context must be a number, not {context!r}")
        try:
            return cls(float(context))
        except ValueError as exc:
            raise ValueError(f"{owner}: {exc}") from None

    @classmethod
    def of_manifest(cls, manifest: Manifest) -> CropRule:
        return cls.from_extra(manifest.extra.get("crop"), owner=manifest.name)


HEAD_ONLY = CropRule()


def embedder_crop_region(
    box: Box, image_size: tuple[int, int], rule: CropRule = HEAD_ONLY
) -> tuple[int, int, int, int]:
    """The pixel rectangle (left, top, right, bottom) an embedder with ``rule`` is given for the head ``box`` of a
    picture of ``image_size`` (width, height)."""
    if rule.head_only:
        return box.crop_region()
    c, w, h = rule.context, box.width, box.height
    width, height = image_size
    grown = Box(
        max(0.0, box.x1 - c * w),
        max(0.0, box.y1 - c * h / 2),
        min(float(width), box.x2 + c * w),
        min(float(height), box.y2 + 2 * c * h),
    )
    return grown.crop_region()


def embedder_crop(image: Image.Image, box: Box, rule: CropRule = HEAD_ONLY) -> Image.Image:
    """The RGB crop of ``image`` an embedder with ``rule`` is given for the head ``box``."""
    return image.convert("RGB").crop(embedder_crop_region(box, image.size, rule))


def crop_rule_of(embedder: object) -> CropRule:
    """The crop rule of a loaded embedder (its manifest's, read when it was loaded); the head box for an embedder
    that carries none (stand-ins, older loaders)."""
    rule = getattr(embedder, "crop_rule", HEAD_ONLY)
    if not isinstance(rule, CropRule):
        raise TypeError(f"{type(embedder).__name__}.crop_rule is not a CropRule: {rule!r}")
    return rule
