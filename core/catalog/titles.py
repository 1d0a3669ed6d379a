"""Anime names: normal forms, romaji spelling variants, franchise stems, and the name index used to find a
title from what a user typed (exact, then fuzzy with a "did you mean" list when it is ambiguous)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from rapidfuzz import fuzz, process

# romaji spelling variants folded together: long vowels (ou/oo/uu/oh, macrons), "wo" particle, "x" in titles
_ROMAJI_FOLDS = (
    (re.compile(r"ou|oo|oh(?=[^aeiou]|$)"), "o"),
    (re.compile(r"uu"), "u"),
    (re.compile(r"ei(?=[^aeiou]|$)"), "e"),
    (re.compile(r"(?<=\s)wo(?=\s)"), "o"),
    (re.compile(r"(?<=[aeiou])h(?=\s|$)"), ""),
)
_NON_WORD = re.compile(r"[^\w]+")
_SPACES = re.compile(r"\s+")

# words ending a title that say "another entry of the same franchise"
_SEQUEL_WORDS = re.compile(
    r"\b(?:(?:\d+(?:st|nd|rd|th))|first|second|third|fourth|fifth|sixth|final)\s+(?:season|stage|part|act)\b.*$"
    r"|\b(?:season|part|cour|series|movie|film|ova|ona|tv|specials?|the\s+movie|gekijouban|zoku|kan|shin)\b"
    r"(?:\s+[\divx]+)?\s*$"
    r"|\s+(?:\d+|[ivx]+|r\d|[a-z])\s*$"
)
_STEM_SPLIT = re.compile(r"\s*(?::|\s-\s|\s–\s|\(|\[|!!|\?)\s*")
MIN_STEM_CHARS = 3
SUGGEST_WITHIN = 12.0  # "did you mean" lists the titles scoring this close to the best one


def fold(text: str) -> str:
    """Lowercase, accents and width folded, punctuation as spaces: ``"Kōkaku Kidōtai!"`` -> ``kokaku kidotai``."""
    text = unicodedata.normalize("NFKC", text).replace("×", "x")
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = _NON_WORD.sub(" ", text.casefold()).replace("_", " ")
    return _SPACES.sub(" ", text).strip()


def romaji_key(text: str) -> str:
    """``fold`` plus romaji long-vowel variants merged: "Shingeki no Kyoujin" and "Shingeki no Kyojin" agree."""
    key = fold(text)
    for pattern, repl in _ROMAJI_FOLDS:
        key = pattern.sub(repl, key)
    return key


def franchise_stem(title: str) -> str:
    """The franchise part of a title: before a subtitle (``:``, `` - ``, brackets) and without a trailing
    season, part, number or "Movie"; "" when too short to mean anything."""
    head = _STEM_SPLIT.split(unicodedata.normalize("NFKC", title), maxsplit=1)[0]
    key = fold(head)
    previous = None
    while key != previous:
        previous = key
        key = _SEQUEL_WORDS.sub("", key).strip()
    key = romaji_key(key)
    compact = key.replace(" ", "")
    return key if len(compact) >= MIN_STEM_CHARS and not key.isdigit() else ""


def franchise_keys(names: Sequence[str]) -> frozenset[str]:
    """Franchise stems of a title's names (romaji and English): two titles sharing one are related."""
    return frozenset(stem for stem in (franchise_stem(n) for n in names if n) if stem)


class MatchKind(StrEnum):
    EXACT = "exact"
    FUZZY = "fuzzy"
    AMBIGUOUS = "ambiguous"
    NONE = "none"


@dataclass(frozen=True)
class NameMatch:
    kind: MatchKind
    index: int | None = None  # the catalogue position of the match (EXACT, FUZZY)
    candidates: tuple[int, ...] = ()  # catalogue positions, best first (AMBIGUOUS; also FUZZY's runners-up)
    score: float = 0.0


class NameIndex:
    """Every name of every title (romaji, English, Japanese, other names), by exact key and fuzzily.

    ``popularity`` (e.g. MAL members) breaks ties between titles sharing a name."""

    def __init__(self, names: Sequence[Sequence[str]], popularity: Sequence[float] | None = None) -> None:
        self._exact: dict[str, list[int]] = {}
        self._primary: dict[str, set[int]] = {}
        self.keys: list[str] = []
        self.owners: list[int] = []
        self.popularity = list(popularity) if popularity is not None else [0.0] * len(names)
        self._names = [list(n) or [""] for n in names]
        self._raw = [{x.strip().casefold() for x in n} for n in names]
        for index, title_names in enumerate(names):
            seen: set[str] = set()
            for rank, name in enumerate(title_names):
                for key in {fold(name), romaji_key(name)}:
                    if not key:
                        continue
                    if rank == 0:
                        self._primary.setdefault(key, set()).add(index)
                    if key in seen:
                        continue
                    seen.add(key)
                    self._exact.setdefault(key, []).append(index)
                    self.keys.append(key)
                    self.owners.append(index)

    def exact(self, query: str) -> list[int]:
        """Titles with a name equal to ``query`` once folded, primary titles then most popular first."""
        found: list[int] = []
        for key in dict.fromkeys((fold(query), romaji_key(query))):
            found += [i for i in self._exact.get(key, ()) if i not in found]
        primary = self._primary.get(fold(query), set()) | self._primary.get(romaji_key(query), set())
        raw = query.strip().casefold()
        # a primary title first, then one spelled exactly so, then the shortest (the first entry of a
        # franchise: "K-On!" before "K-On!!"), then the most popular
        return sorted(found, key=lambda i: (i not in primary, raw not in self._raw[i], len(self._names[i][0]),
                                            -self.popularity[i]))  # fmt: skip

    def fuzzy(self, query: str, *, limit: int = 10, cutoff: float = 60.0) -> list[tuple[int, float]]:
        """Titles whose best name scores at least ``cutoff`` (0-100), best first, one entry per title."""
        key = romaji_key(query)
        if not key:
            return []
        # a fast first pass (WRatio, in C++) over every name, then the finer score on the few kept
        hits = process.extract(
            key, self.keys, scorer=fuzz.WRatio, processor=None, limit=limit * 6, score_cutoff=cutoff * 0.9
        )
        best: dict[int, float] = {}
        for name, _rough, position in hits:
            score = _name_score(key, name)
            if score >= cutoff:
                owner = self.owners[position]
                best[owner] = max(best.get(owner, 0.0), score)
        ranked = sorted(best.items(), key=lambda kv: (-round(kv[1], 1), -self.popularity[kv[0]]))
        return ranked[:limit]

    def match(
        self, query: str, *, accept: float = 88.0, margin: float = 4.0, suggest: float = 60.0
    ) -> NameMatch:
        """One title for ``query``: an exact name, else a fuzzy one clearly ahead of the others (``accept`` or
        more, ``margin`` ahead of the next title); else AMBIGUOUS with the best few; else NONE."""
        exact = self.exact(query)
        if exact:
            return NameMatch(MatchKind.EXACT, exact[0], tuple(exact[1:]), 100.0)
        ranked = self.fuzzy(query, limit=8, cutoff=suggest)
        if not ranked:
            return NameMatch(MatchKind.NONE)
        (top, top_score), runners = ranked[0], ranked[1:]
        if top_score >= accept and (not runners or top_score - runners[0][1] >= margin):
            return NameMatch(MatchKind.FUZZY, top, tuple(i for i, _ in runners), top_score)
        close = tuple(i for i, score in ranked if score >= top_score - SUGGEST_WITHIN)
        return NameMatch(MatchKind.AMBIGUOUS, None, close, top_score)


def _name_score(query: str, name: str) -> float:
    """Typos (ratio), partial titles (a query that is the start or a part of a longer name) and word order."""
    full = fuzz.ratio(query, name)
    order = fuzz.token_sort_ratio(query, name)
    partial = 0.0
    if len(query) >= 4 and len(name) > len(query):
        # a partial title scores below a whole one, more so the less of the name it covers
        partial = fuzz.partial_ratio(query, name) * (0.85 + 0.1 * len(query) / len(name))
    return max(full, order, partial)
