"""The grounded caption: one sentence built from the identified characters and the tags.

It names the identified characters and states only attributes the tagger reported, so it can never contradict
the tags. A learned captioner (a Hugging Face ``from_pretrained`` directory) plugs into the same slot.
"""

from __future__ import annotations

from collections import Counter

from PIL import Image

from core.settings import Settings
from core.vision.attributes import attributes_from_tags
from core.vision.results import UNKNOWN, Tag
from core.vision.slots.base import IdentifiedHead, Manifest

NUMBER_WORDS = {2: "Two", 3: "Three", 4: "Four", 5: "Five", 6: "Six"}


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _look(tags: list[Tag], single: bool) -> str:
    attrs = attributes_from_tags(t.name for t in tags if t.category == "general")
    parts: list[str] = []
    if attrs.hair_colours:
        length = f"{attrs.hair_length} " if attrs.hair_length and single else ""
        parts.append(f"{length}{_join(list(attrs.hair_colours))} hair")
    if attrs.eye_colours:
        parts.append(f"{_join(list(attrs.eye_colours))} eyes")
    if attrs.accessories and single:
        parts.append(_join(list(attrs.accessories)))
    look = f" with {_join(parts)}" if parts else ""
    mood = f", {attrs.expressions[0]}" if attrs.expressions and single else ""
    return look + mood


def template_caption(heads: list[IdentifiedHead], tags: list[Tag]) -> str:
    """The caption composed from the identified heads and the tags alone."""
    named = Counter(h.name for h in heads if h.name != UNKNOWN)
    n_unknown = sum(1 for h in heads if h.name == UNKNOWN)
    if not heads:
        general = [t.name.replace("_", " ") for t in tags if t.category == "general"][:3]
        about = f", tagged {_join(general)}" if general else ""
        return f"An anime picture with no character face found{about}."
    who = [name if n == 1 else f"{name} ({n} times)" for name, n in named.items()]
    if n_unknown:
        who.append("an unknown character" if n_unknown == 1 else f"{n_unknown} unknown characters")
    single = len(heads) == 1
    if single:
        return f"{who[0][0].upper()}{who[0][1:]}{_look(tags, single=True)}."
    count = NUMBER_WORDS.get(len(heads), str(len(heads)))
    return f"{count} characters, {_join(who)}{_look(tags, single=False)}."


class GroundedTemplateCaptioner:
    """Composes the caption from what the other stages found; needs no weights."""

    version = "grounded-template@1"

    def caption(self, image: Image.Image, heads: list[IdentifiedHead], tags: list[Tag]) -> str:
        return template_caption(heads, tags)

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings) -> GroundedTemplateCaptioner:
        return cls()
