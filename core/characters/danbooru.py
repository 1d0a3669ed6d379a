"""Danbooru character tags and the names people write, both ways.

Taggers name characters with Danbooru tags (``rem_(re:zero)``, ``hatsune_miku``); users and admins write "Rem"
with the series "Re:Zero". :func:`from_tag` gives the written form, :func:`to_tag` the tag, and
:func:`same_character` decides whether a taught character and a tag are the same one (so an admin's references and
the tagger agree): names equal ignoring case, accents of width (NFKC) and word order (Danbooru writes Japanese
names family name first: ``kinomoto_sakura`` is "Sakura Kinomoto"), series equal when both sides give one.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# a trailing "(qualifier)": Danbooru's series (or a disambiguation such as "cosplay")
_QUALIFIER = re.compile(r"^(?P<name>.+?)_\((?P<series>[^()]+)\)$")
# words that stay lower case inside a series or name, unless first
_SMALL_WORDS = {
    "a",
    "an",
    "and",
    "as",
    "at",
    "by",
    "for",
    "in",
    "no",
    "of",
    "on",
    "or",
    "the",
    "to",
    "wa",
    "wo",
}


@dataclass(frozen=True)
class CharacterName:
    """A character as people write it: ``name`` and ``series`` ('' when the tag has no qualifier)."""

    name: str
    series: str = ""

    @property
    def key(self) -> tuple[str, ...]:
        return name_key(self.name)

    @property
    def pair(self) -> tuple[str, str]:
        """(name, series), as the gallery keys characters."""
        return self.name, self.series


def _title_word(word: str, first: bool) -> str:
    if not word:
        return word
    if not first and word in _SMALL_WORDS:
        return word
    # capitalise after separators inside a word, as in "re:zero" -> "Re:Zero", "k-on!" -> "K-On!"
    parts = re.split(r"([:\-.'/])", word)
    return "".join(p[:1].upper() + p[1:] if i % 2 == 0 else p for i, p in enumerate(parts))


def _titled(text: str) -> str:
    words = text.replace("_", " ").split()
    return " ".join(_title_word(w, i == 0) for i, w in enumerate(words))


def from_tag(tag: str) -> CharacterName:
    """``rem_(re:zero)`` -> Rem / Re:Zero; ``hatsune_miku`` -> Hatsune Miku; names in other scripts are kept
    (``星野ひかり_(synthetic_skies)`` -> 星野ひかり / Synthetic Skies)."""
    text = unicodedata.normalize("NFKC", tag).strip()
    if not text:
        raise ValueError("an empty character tag")
    match = _QUALIFIER.match(text)
    if match:
        return CharacterName(_titled(match.group("name")), _titled(match.group("series")))
    return CharacterName(_titled(text))


def to_tag(name: str, series: str = "") -> str:
    """The Danbooru form: lower case, spaces as underscores, the series as a trailing qualifier."""

    def part(text: str) -> str:
        return "_".join(unicodedata.normalize("NFKC", text).lower().split())

    if not part(name):
        raise ValueError("an empty character name")
    return f"{part(name)}_({part(series)})" if part(series) else part(name)


def name_key(name: str) -> tuple[str, ...]:
    """The words of a name, case-folded and sorted: "Sakura Kinomoto" and "kinomoto sakura" are one key."""
    text = unicodedata.normalize("NFKC", name).casefold().replace("_", " ")
    text = "".join(" " if unicodedata.category(ch).startswith("P") and ch not in "'’" else ch for ch in text)
    return tuple(sorted(text.split()))


def _series_key(series: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", series).casefold().replace("_", " ").split())


def same_character(name_a: str, series_a: str, name_b: str, series_b: str) -> bool:
    """Whether two written characters are one: same name words, and the same series where both give one."""
    if not name_key(name_a) or name_key(name_a) != name_key(name_b):
        return False
    sa, sb = _series_key(series_a), _series_key(series_b)
    return not sa or not sb or sa == sb
