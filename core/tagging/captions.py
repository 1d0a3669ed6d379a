"""Caption text from a tagger's scores: thresholds per category, the rating as a tag, exclusions, tags put first,
underscores or spaces (kaomoji kept), implied tags dropped, a maximum count.

The order of a caption: the ``include_first`` tags present (in the order given), the rating (with ``rating``),
character tags, then general tags, each category best score first. ``max_tags`` keeps the first that many, so the
weakest general tags go first.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from core.tagging.implications import Implications

CATEGORIES = ("general", "character", "rating")
Underscores = Literal["keep", "spaces"]
# the kaomoji of the WD14 vocabulary whose underscore is part of the face (as SmilingWolf's tagger demo keeps them)
KAOMOJI = frozenset(
    {
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    }
)


@dataclass(frozen=True)
class ScoredTag:
    name: str
    score: float
    category: str  # general, character or rating

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "score": round(self.score, 4), "category": self.category}


def normalise(name: str) -> str:
    """The form names are compared in: lower case, underscores for spaces (``Long Hair`` -> ``long_hair``)."""
    return "_".join(name.strip().lower().split())


def parse_tag_list(text: str) -> list[str]:
    """Tags separated by commas or new lines; a line starting with ``#`` is a comment; blanks dropped; normalised."""
    tags = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        tags.extend(normalise(part) for part in line.split(",") if part.strip())
    return tags


def read_tag_list(value: str) -> list[str]:
    """``value`` is a file of tags (one a line, or comma-separated) when such a file exists, else the list itself."""
    path = Path(value).expanduser()
    if value and path.is_file():
        return parse_tag_list(path.read_text(encoding="utf-8-sig"))
    return parse_tag_list(value)


@dataclass(frozen=True)
class CaptionOptions:
    general: float = 0.35
    character: float = 0.85
    rating: bool = True
    exclude: tuple[str, ...] = ()  # names (normalised) or shell patterns (``*_background``)
    include_first: tuple[str, ...] = ()
    max_tags: int | None = None
    underscores: Underscores = "spaces"
    keep_kaomoji: bool = True
    drop_implied: bool = True
    extra_characters: tuple[str, ...] = field(
        default=(), compare=False
    )  # names identified outside the tagger

    def __post_init__(self) -> None:
        for key in ("general", "character"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the {key} threshold must be from 0 to 1, got {value}")
        if self.max_tags is not None and self.max_tags < 1:
            raise ValueError(f"max_tags must be at least 1, got {self.max_tags}")
        if self.underscores not in ("keep", "spaces"):
            raise ValueError(f"underscores must be 'keep' or 'spaces', got {self.underscores!r}")
        object.__setattr__(self, "exclude", tuple(normalise(t) for t in self.exclude if t.strip()))
        object.__setattr__(
            self, "include_first", tuple(normalise(t) for t in self.include_first if t.strip())
        )

    @property
    def floor(self) -> float:
        """The lowest score any tag of a caption may have (rating tags aside)."""
        return min(self.general, self.character)

    def key(self) -> dict[str, object]:
        """What a caption depends on, for the ledger: a picture tagged with other options is tagged again."""
        return {
            "general": self.general,
            "character": self.character,
            "rating": self.rating,
            "exclude": list(self.exclude),
            "include_first": list(self.include_first),
            "max_tags": self.max_tags,
            "underscores": self.underscores,
            "keep_kaomoji": self.keep_kaomoji,
            "drop_implied": self.drop_implied,
        }

    def with_characters(self, names: Sequence[str]) -> CaptionOptions:
        return replace(self, extra_characters=tuple(names))


def excluded(name: str, patterns: Iterable[str]) -> bool:
    key = normalise(name)
    return any(key == p or (any(c in p for c in "*?[") and fnmatch.fnmatchcase(key, p)) for p in patterns)


def display_name(name: str, options: CaptionOptions) -> str:
    """The tag as written in the caption: underscores kept, or spaces (a kaomoji keeps its underscore)."""
    if options.underscores == "keep" or (options.keep_kaomoji and name in KAOMOJI):
        return name
    return name.replace("_", " ")


def select_tags(
    scores: Iterable[ScoredTag], options: CaptionOptions, implications: Implications | None = None
) -> list[ScoredTag]:
    """The tags of a caption, in caption order (see the module's docstring)."""
    scores = list(scores)
    ratings = [t for t in scores if t.category == "rating"]
    characters = [t for t in scores if t.category == "character" and t.score >= options.character]
    known = {t.name for t in characters}
    characters += [ScoredTag(n, 1.0, "character") for n in options.extra_characters if n not in known]
    general = [t for t in scores if t.category == "general" and t.score >= options.general]
    chosen = [t for t in characters + general if not excluded(t.name, options.exclude)]
    if options.drop_implied and implications is not None:
        implied = implications.implied_by({t.name for t in chosen})
        chosen = [t for t in chosen if t.name not in implied]
    by_score = sorted(chosen, key=lambda t: (t.category != "character", -t.score, t.name))
    first = []
    for wanted in options.include_first:
        first += [t for t in by_score if normalise(t.name) == wanted and t not in first]
    rest = [t for t in by_score if t not in first]
    rating = []
    if options.rating and ratings:
        best = max(ratings, key=lambda t: t.score)
        if not excluded(best.name, options.exclude):
            rating = [best]
            rest = [t for t in rest if t.name != best.name]
    ordered = first + rating + rest
    return ordered[: options.max_tags] if options.max_tags else ordered


def caption_text(tags: Iterable[ScoredTag], options: CaptionOptions) -> str:
    """``tag, tag, tag``: the selected tags as a caption line."""
    return ", ".join(display_name(t.name, options) for t in tags)


def merge_captions(existing: str, new: str) -> str:
    """``existing`` with the tags of ``new`` it lacks appended (append mode), comparing names normalised."""
    old = [t.strip() for t in existing.replace("\n", ",").split(",") if t.strip()]
    seen = {normalise(t) for t in old}
    added = []
    for tag in (t.strip() for t in new.split(",")):
        if tag and normalise(tag) not in seen:
            seen.add(normalise(tag))
            added.append(tag)
    return ", ".join(old + added)
