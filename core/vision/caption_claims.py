"""What a caption claims: who is in the picture, their hair, eyes, expression and accessories, the setting.

A small left-to-right reader of caption English ("Two girls: Aoi Sakuragi with long blue hair and blue eyes, smiling
and Momo Haruno with ..., in front of a sky background.", "a girl with blue hair and red eyes in a room"). The
grounding step (:mod:`core.vision.grounding`) uses it to check a learned caption against the tags, and the caption
evaluation (:mod:`core.evaluation.captioning`) to score captions against a scene's ground truth.

Claims made right after a name belong to that person; claims made after a bare list of names ("A and B with blue
and pink hair"), after a plural count ("two girls with ...") or after "tagged" belong to the group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.vision.attributes import ACCESSORY_TAGS, EXPRESSION_TAGS, HAIR_LENGTH_TAGS

BASE_COLOURS = frozenset(
    {
        "black", "brown", "blonde", "red", "blue", "pink", "silver", "green", "purple", "orange", "aqua",
        "white", "grey", "yellow",
    }
)  # fmt: skip
COLOUR_SYNONYMS = {"blond": "blonde", "gray": "grey"}
COLOUR_MODIFIERS = frozenset({"light", "dark"})
# phrase (lower case, as tokens) -> hair length, as core.vision.attributes words it
LENGTH_PHRASES: dict[tuple[str, ...], str] = {
    **{tuple(v.split()): v for v in HAIR_LENGTH_TAGS.values()},
    ("medium",): "medium-length",
}
EXPRESSION_PHRASES: dict[tuple[str, ...], str] = {
    **{tuple(v.split()): v for v in EXPRESSION_TAGS.values()},
    ("open", "mouth"): "with an open mouth",
}
ACCESSORY_PHRASES: dict[tuple[str, ...], str] = {
    **{tuple(v.split()): v for v in ACCESSORY_TAGS.values()},
    **{tuple(v.split()[1:]): v for v in ACCESSORY_TAGS.values() if v.split()[0] in ("a", "an")},
}
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
PEOPLE_NOUNS = frozenset(
    {"girl", "girls", "boy", "boys", "character", "characters", "person", "persons", "people", "woman",
     "women", "man", "men"}
)  # fmt: skip
SETTING_STARTS: tuple[tuple[str, ...], ...] = (
    ("in", "front", "of"),
    ("against",),
    ("in",),
    ("on",),
    ("at",),
    ("under",),
    ("inside",),
    ("outside",),
    ("near",),
    ("behind",),
)
SETTING_STOPS = frozenset({",", ".", ";", ":", "!", "?", "with", "and"})
GROUP_MARKERS = frozenset({"tagged"})
# words that are never (part of) a name even when capitalised
COMMON_WORDS = frozenset(
    {"with", "and", "the", "this", "there", "hair", "eyes", "eye", "unknown", "anime", "picture", "image",
     "illustration", "drawing", "also", "tagged", "no", "face", "found", "very", "times"}
)  # fmt: skip
TOKEN = re.compile(r"\w+(?:-\w+)*|[^\w\s]")


@dataclass(frozen=True)
class Mention:
    """One person of the caption and what it says about them; ``name`` is None for "a girl"."""

    name: str | None = None
    unknown: bool = False  # stated as "an unknown character"
    hair_colours: tuple[str, ...] = ()
    eye_colours: tuple[str, ...] = ()
    hair_lengths: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()
    accessories: tuple[str, ...] = ()

    @property
    def has_claims(self) -> bool:
        return bool(
            self.hair_colours or self.eye_colours or self.hair_lengths or self.expressions or self.accessories
        )


@dataclass(frozen=True)
class CaptionClaims:
    count: int | None  # an explicit count ("Two girls"), else None
    mentions: tuple[Mention, ...]
    group: Mention  # claims bound to nobody in particular
    setting: str | None  # "in front of a sky background"

    @property
    def stated_count(self) -> int | None:
        """The explicit count, else the number of people mentioned, else None."""
        if self.count is not None:
            return self.count
        return len(self.mentions) or None


@dataclass
class _Draft:
    name: str | None = None
    unknown: bool = False
    hair_colours: list[str] = field(default_factory=list)
    eye_colours: list[str] = field(default_factory=list)
    hair_lengths: list[str] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)
    accessories: list[str] = field(default_factory=list)

    def has_claims(self) -> bool:
        return self.freeze().has_claims

    def freeze(self) -> Mention:
        def unique(values: list[str]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(values))

        return Mention(
            self.name,
            self.unknown,
            unique(self.hair_colours),
            unique(self.eye_colours),
            unique(self.hair_lengths),
            unique(self.expressions),
            unique(self.accessories),
        )


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def join_tokens(tokens: Sequence[str]) -> str:
    """Tokens back to text: no space before punctuation."""
    return re.sub(r"\s+([,.;:!?)])", r"\1", " ".join(tokens)).replace("( ", "(")


def _match(lower: Sequence[str], i: int, phrases: Iterable[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The longest phrase that starts at token ``i``."""
    best: tuple[str, ...] | None = None
    for phrase in phrases:
        if tuple(lower[i : i + len(phrase)]) == phrase and (best is None or len(phrase) > len(best)):
            best = phrase
    return best


def _is_name_token(token: str) -> bool:
    if not token[:1].isalpha() or token.lower() in _LEXICON:
        return False
    return token[0].isupper() or not token.isascii()


class _Reader:
    def __init__(self, text: str, known_names: Iterable[str], colours: frozenset[str]) -> None:
        self.tokens = tokenize(text)
        self.lower = [t.lower() for t in self.tokens]
        self.folded = [t.casefold() for t in self.tokens]
        self.names = {tuple(t.casefold() for t in tokenize(n)): n for n in known_names if tokenize(n)}
        self.colours = colours
        self.count: int | None = None
        self.mentions: list[_Draft] = []
        self.group = _Draft()
        self.current: _Draft | None = None
        self.listing = False  # names listed with no claims between them: the claims that follow are shared
        self.tail = False  # after "tagged": everything is about the group
        self.setting: str | None = None
        self.pending_colours: list[str] = []
        self.pending_lengths: list[str] = []

    @property
    def target(self) -> _Draft:
        if self.tail or self.listing or self.current is None:
            return self.group
        return self.current

    def start_mention(self, draft: _Draft) -> None:
        self.listing = self.current is not None and not self.current.has_claims()
        self.pending_colours, self.pending_lengths = [], []
        self.mentions.append(draft)
        self.current = draft

    def read(self) -> CaptionClaims:
        i = 0
        while i < len(self.tokens):
            i = self.step(i)
        return CaptionClaims(
            count=self.count,
            mentions=tuple(m.freeze() for m in self.mentions),
            group=self.group.freeze(),
            setting=self.setting,
        )

    def step(self, i: int) -> int:
        """Read the phrase at token ``i``; return the index after it."""
        low = self.lower
        token = low[i]
        if token in GROUP_MARKERS:
            self.tail, self.current = True, None
            return i + 1
        if (people := self._people(i)) is not None:
            return people
        if (name := _match(self.folded, i, self.names)) is not None:
            if not self.tail:
                self.start_mention(_Draft(name=self.names[name]))
            return i + len(name)
        if (phrase := _match(low, i, ACCESSORY_PHRASES)) is not None:
            self.target.accessories.append(ACCESSORY_PHRASES[phrase])
            return i + len(phrase)
        if (phrase := _match(low, i, EXPRESSION_PHRASES)) is not None:
            self.target.expressions.append(EXPRESSION_PHRASES[phrase])
            return i + len(phrase)
        if (phrase := _match(low, i, LENGTH_PHRASES)) is not None:
            self.pending_lengths.append(LENGTH_PHRASES[phrase])
            return i + len(phrase)
        if (colour := self._colour(i)) is not None:
            self.pending_colours.append(colour[0])
            return i + colour[1]
        if token == "hair":
            self.target.hair_colours.extend(self.pending_colours)
            self.target.hair_lengths.extend(self.pending_lengths)
            self.pending_colours, self.pending_lengths = [], []
            return i + 1
        if token in ("eyes", "eye"):
            self.target.eye_colours.extend(self.pending_colours)
            self.pending_colours, self.pending_lengths = [], []
            return i + 1
        if (start := _match(low, i, SETTING_STARTS)) is not None and i + len(start) < len(low):
            return self._setting(i, len(start))
        if _is_name_token(self.tokens[i]) and not self.tail:
            end = i + 1
            while end < len(self.tokens) and _is_name_token(self.tokens[end]):
                end += 1
            self.start_mention(_Draft(name=" ".join(self.tokens[i:end])))
            return end
        if token in (".", ";", ":"):
            self.pending_colours, self.pending_lengths = [], []
        return i + 1

    def _people(self, i: int) -> int | None:
        """Count phrases: "Two girls", "a girl", "an unknown character", "2 unknown characters"."""
        low = self.lower
        number = NUMBER_WORDS.get(low[i]) or (int(low[i]) if low[i].isdigit() else None)
        if number is None:
            return None
        j = i + 1
        unknown = j < len(low) and low[j] == "unknown"
        j += unknown
        if j >= len(low) or low[j] not in PEOPLE_NOUNS:
            return None
        j += 1
        if self.tail:
            return j
        if unknown:
            for _ in range(number):
                self.start_mention(_Draft(unknown=True))
            return j
        if j < len(low) and (low[j] == ":" or (low[j] == "," and number > 1)):  # a prefix: "Two girls: ..."
            self.count = number
            return j + 1
        if number == 1:
            self.start_mention(_Draft())
        else:
            self.count, self.current, self.listing = number, None, False
        return j

    def _colour(self, i: int) -> tuple[str, int] | None:
        low = self.lower
        word = COLOUR_SYNONYMS.get(low[i], low[i])
        if word in COLOUR_MODIFIERS and i + 1 < len(low):
            base = COLOUR_SYNONYMS.get(low[i + 1], low[i + 1])
            if base in self.colours:
                return f"{word} {base}", 2
        if word in self.colours:
            return word, 1
        return None

    def _setting(self, i: int, start_len: int) -> int:
        end = i + start_len
        while end < len(self.tokens) and self.lower[end] not in SETTING_STOPS:
            end += 1
        if self.setting is None and end > i + start_len:
            self.setting = join_tokens(self.tokens[i:end])
        return end


_LEXICON = frozenset(
    {
        *BASE_COLOURS, *COLOUR_SYNONYMS, *COLOUR_MODIFIERS, *NUMBER_WORDS, *PEOPLE_NOUNS, *COMMON_WORDS,
        *GROUP_MARKERS, *(w for p in LENGTH_PHRASES for w in p), *(w for p in EXPRESSION_PHRASES for w in p),
        *(w for p in ACCESSORY_PHRASES for w in p), *(w for p in SETTING_STARTS for w in p),
    }
)  # fmt: skip


def parse_caption(
    text: str, *, known_names: Iterable[str] = (), extra_colours: Iterable[str] = ()
) -> CaptionClaims:
    """Read the claims of ``text``. ``known_names`` are matched first (so non-Latin and multi-word names are
    recognised whole); any other capitalised or non-Latin word run is read as an (unrecognised) name."""
    colours = BASE_COLOURS | {c.lower() for c in extra_colours}
    return _Reader(text, known_names, frozenset(colours)).read()


def setting_words(setting: str) -> set[str]:
    return {t.lower() for t in tokenize(setting)}


def is_neutral_setting(setting: str) -> bool:
    """A setting that claims nothing about the people: no colour, person, count, expression or accessory words."""
    claim_words = _LEXICON - {w for p in SETTING_STARTS for w in p} - {"a", "an", "the", "no"}
    return not (setting_words(setting) & claim_words)
