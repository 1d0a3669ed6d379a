"""The known looks (hair and eye colours) of characters, by Danbooru character tag: the synthetic cast's and those of
the real face sets' characters (core.datasets.real_faces.CANONICAL_LOOKS). A character without a known look (most of
a WD tagger's 2,751) brings no colour evidence."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from core.characters.danbooru import to_tag
from core.datasets.real_faces import CANONICAL_LOOKS
from core.datasets.synth import CAST
from core.vision.attributes import attributes_from_tags


@dataclass(frozen=True)
class Colours:
    """Hair and eye colours ("blue", "light brown"); empty when unknown."""

    hair: frozenset[str] = frozenset()
    eyes: frozenset[str] = frozenset()

    @classmethod
    def from_tags(cls, tags: Iterable[str]) -> Colours:
        look = attributes_from_tags(tags)
        return cls(frozenset(look.hair_colours), frozenset(look.eye_colours))

    def agreement(self, other: Colours) -> float:
        """-1 (every colour both sides know differs) .. +1 (every one matches); 0 when nothing is known on both."""
        votes = [
            1.0 if mine & theirs else -1.0
            for mine, theirs in ((self.hair, other.hair), (self.eyes, other.eyes))
            if mine and theirs
        ]
        return sum(votes) / len(votes) if votes else 0.0


@cache
def _known_looks() -> dict[str, Colours]:
    looks = {label: Colours.from_tags(look) for label, look in CANONICAL_LOOKS.items()}
    looks.update({to_tag(spec.name, spec.series): Colours.from_tags(spec.tags) for spec in CAST})
    return looks


def known_colours(character_tag: str) -> Colours:
    """The colours of the character of ``character_tag``; empty when its look is not known here."""
    return _known_looks().get(character_tag, Colours())
