"""Character attributes (hair, eyes, style, accessories, expression) derived from Danbooru-style tags."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HAIR_LENGTH_TAGS = {
    "long_hair": "long",
    "very_long_hair": "very long",
    "short_hair": "short",
    "medium_hair": "medium-length",
}
HAIR_STYLE_TAGS = {
    "twintails": "twintails",
    "ponytail": "a ponytail",
    "bob_cut": "a bob cut",
    "braid": "a braid",
    "side_ponytail": "a side ponytail",
    "twin_braids": "twin braids",
}
ACCESSORY_TAGS = {
    "hair_ribbon": "a hair ribbon",
    "glasses": "glasses",
    "hat": "a hat",
    "hairband": "a hairband",
    "cat_ears": "cat ears",
    "animal_ears": "animal ears",
    "hair_flower": "a flower in the hair",
    "hair_ornament": "a hair ornament",
    "bow": "a bow",
    "hairclip": "a hairclip",
}
EXPRESSION_TAGS = {
    "smile": "smiling",
    "open_mouth": "with an open mouth",
    "closed_mouth": "calm",
    "blush": "blushing",
    "crying": "crying",
    "angry": "angry",
    "surprised": "surprised",
}
NOT_A_COLOUR = {
    "long",
    "short",
    "very_long",
    "medium",
    "multicolored",
    "two-tone",
    "streaked",
    "gradient",
    "colored_inner",
    "hair_between",
    "closed",
    "heterochromia",
    "empty",
    "glowing",
    "no",
}


@dataclass(frozen=True)
class Attributes:
    hair_colours: tuple[str, ...] = ()
    eye_colours: tuple[str, ...] = ()
    hair_length: str | None = None
    hair_styles: tuple[str, ...] = ()
    accessories: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()


def _colour(tag: str, suffix: str) -> str | None:
    if not tag.endswith(suffix):
        return None
    colour = tag[: -len(suffix)]
    return colour.replace("_", " ") if colour and colour not in NOT_A_COLOUR else None


def attributes_from_tags(tags: Iterable[str]) -> Attributes:
    """Read the look of the picture's characters from its tags (order kept: best-scored tags first)."""
    names = list(dict.fromkeys(tags))
    return Attributes(
        hair_colours=tuple(c for t in names if (c := _colour(t, "_hair"))),
        eye_colours=tuple(c for t in names if (c := _colour(t, "_eyes"))),
        hair_length=next((HAIR_LENGTH_TAGS[t] for t in names if t in HAIR_LENGTH_TAGS), None),
        hair_styles=tuple(HAIR_STYLE_TAGS[t] for t in names if t in HAIR_STYLE_TAGS),
        accessories=tuple(ACCESSORY_TAGS[t] for t in names if t in ACCESSORY_TAGS),
        expressions=tuple(EXPRESSION_TAGS[t] for t in names if t in EXPRESSION_TAGS),
    )
