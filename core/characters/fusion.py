"""Naming heads from the tagger's character tags and the gallery together.

A WD tagger names thousands of characters but says it of the whole picture; the gallery names each head but only
knows what admins taught. :func:`fuse` puts the two together per head:

- a head the gallery named (above the naming threshold) keeps its name: the gallery wins where it is confident; a
  character tag of the same character makes its source ``both``;
- one head and a character tag left: the head takes the best such tag (source ``tagger``, or ``both`` when the
  gallery's best guess for the head is that character, below its threshold);
- several heads: the tags left are assigned to the heads the gallery did not name by an assignment (never one tag to
  two heads, never two tags to one head) maximising, per pair, the tagger's score of the tag on that head's crop,
  the gallery's confidence in that character for that head, and the agreement of the head's hair and eye colours
  (from its crop's tags) with the character's known look. A pair scoring below ``min_assign`` is left out: such a tag
  matches no head and stays a picture tag only.

A tagger whose manifest says ``extra.character_names: confirm`` (the starter taggers: a closed set of a dozen or so
characters with no "someone else", so on real art they name lookalikes) only confirms heads the gallery named; its
tags are guesses elsewhere. WD taggers (2,751 characters, trained on millions of pictures) name heads alone.

Names are written as people write them (core.characters.danbooru); when the gallery knows the same character (an
admin taught "Rem | Re:Zero" and the tagger says ``rem_(re:zero)``), the gallery's spelling is used, so both name one
character.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from core.characters.danbooru import from_tag, same_character
from core.characters.looks import Colours, known_colours
from core.vision.results import (
    SOURCE_BOTH,
    SOURCE_GALLERY,
    SOURCE_TAGGER,
    UNKNOWN,
    Candidate,
    Head,
    Tag,
)

CHARACTER = "character"


@dataclass(frozen=True)
class FusionParams:
    # weights of the evidence that a character tag belongs to a head, in a picture of several heads
    crop_weight: float = 0.55
    gallery_weight: float = 0.25
    colour_weight: float = 0.2
    # the least weighted evidence that assigns a tag to a head (a crop score of 0.55 alone reaches it)
    min_assign: float = 0.3
    top_n: int = 5
    # whether a character tag may name a head the gallery did not name; False: it only confirms heads the gallery
    # named (source "both") and is a guess elsewhere. For the starter taggers: on real art they name lookalikes, and
    # even agreeing with the gallery's guess below its threshold was a coincidence of colours (7 % of web5's
    # pictures named wrongly that way by the fresh-machine starter)
    tagger_alone: bool = True


@dataclass(frozen=True)
class CropEvidence:
    """What the tagger says of one head's crop: its scores by tag name (character tags and colour tags), and the
    general threshold that makes a colour tag count."""

    scores: Mapping[str, float]
    general_threshold: float

    def score(self, tag: str) -> float:
        return float(self.scores.get(tag, 0.0))

    @property
    def colours(self) -> Colours:
        return Colours.from_tags(
            t for t, s in sorted(self.scores.items(), key=lambda kv: -kv[1]) if s >= self.general_threshold
        )


def _written(tag: str, known: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(name, series) of a character tag, in the gallery's spelling when the gallery knows that character."""
    name = from_tag(tag)
    for known_name, known_series in known:
        if same_character(known_name, known_series, name.name, name.series):
            return known_name, known_series
    return name.name, name.series


def _candidate_of(head: Head, name: str, series: str, *, gallery_only: bool = False) -> Candidate | None:
    """``head``'s candidate for (name, series), the gallery's only with ``gallery_only``; None when not among them."""
    for c in head.candidates:
        if (not gallery_only or c.source in (SOURCE_GALLERY, SOURCE_BOTH)) and same_character(
            c.name, c.series, name, series
        ):
            return c
    return None


def _gallery_confidence(head: Head, name: str, series: str) -> float:
    """The gallery's confidence that ``head`` is (name, series), from its candidates (0 when not among them)."""
    found = _candidate_of(head, name, series, gallery_only=True)
    return found.confidence if found is not None else 0.0


def _with_candidate(head: Head, candidate: Candidate, top_n: int) -> tuple[Candidate, ...]:
    """``head``'s candidates with ``candidate`` merged in (the same character once, ``both`` when the gallery had
    it), best first."""
    merged: list[Candidate] = []
    placed = False
    for c in head.candidates:
        if not placed and same_character(c.name, c.series, candidate.name, candidate.series):
            merged.append(
                replace(
                    c,
                    confidence=max(c.confidence, candidate.confidence),
                    source=SOURCE_BOTH if c.source != candidate.source else c.source,
                )
            )
            placed = True
        else:
            merged.append(c)
    if not placed:
        merged.append(candidate)
    merged.sort(key=lambda c: -c.confidence)
    return tuple(merged[: max(top_n, 1)])


def _agrees(head: Head, tag: Tag, known: Sequence[tuple[str, str]]) -> bool:
    """Whether the gallery's best guess for ``head`` is the character of ``tag``."""
    name, series = _written(tag.name, known)
    top = head.candidates[0] if head.candidates else None
    return (
        top is not None and top.source != SOURCE_TAGGER and same_character(top.name, top.series, name, series)
    )


def _named(head: Head, tag: Tag, confidence: float, known: Sequence[tuple[str, str]], top_n: int) -> Head:
    name, series = _written(tag.name, known)
    gallery = _gallery_confidence(head, name, series)
    agrees = _agrees(head, tag, known)
    candidates = _with_candidate(
        head, Candidate(name, series, confidence, _similarity(head, name, series), SOURCE_TAGGER), top_n
    )
    if agrees:  # the gallery's best guess, below its threshold, and the tagger: one character
        return replace(
            head,
            name=name,
            series=series,
            confidence=1.0 - (1.0 - confidence) * (1.0 - gallery),
            source=SOURCE_BOTH,
            candidates=candidates,
        )
    return replace(
        head, name=name, series=series, confidence=confidence, source=SOURCE_TAGGER, candidates=candidates
    )


def _similarity(head: Head, name: str, series: str) -> float:
    found = _candidate_of(head, name, series)
    return found.similarity if found is not None else 0.0


def _confirmed(head: Head, tag: Tag, top_n: int) -> Head:
    """A gallery-named head whose character the tagger names too."""
    candidate = Candidate(
        head.name, head.series, tag.score, _similarity(head, head.name, head.series), SOURCE_TAGGER
    )
    return replace(
        head,
        confidence=1.0 - (1.0 - head.confidence) * (1.0 - tag.score),
        source=SOURCE_BOTH,
        candidates=_with_candidate(head, candidate, top_n),
    )


def _as_candidate(head: Head, tag: Tag, known: Sequence[tuple[str, str]], top_n: int) -> Head:
    name, series = _written(tag.name, known)
    candidate = Candidate(name, series, tag.score, _similarity(head, name, series), SOURCE_TAGGER)
    return replace(head, candidates=_with_candidate(head, candidate, top_n))


def _names_first(heads: list[Head]) -> list[Head]:
    """Each named head with its own name as its first candidate (a tagger's guess may score higher than the name the
    confident gallery gave: the answer stays first, the guess after it)."""
    out = []
    for head in heads:
        own = [
            c
            for c in head.candidates
            if head.name != UNKNOWN and same_character(c.name, c.series, head.name, head.series)
        ]
        rest = [c for c in head.candidates if c not in own]
        out.append(replace(head, candidates=(*own[:1], *own[1:], *rest)) if own else head)
    return out


def fuse(
    heads: Sequence[Head],
    tags: Sequence[Tag],
    *,
    crops: Sequence[CropEvidence] | None = None,
    known: Sequence[tuple[str, str]] = (),
    params: FusionParams | None = None,
) -> list[Head]:
    """The heads with the tagger's character tags (``tags`` of category ``character``, above the tagger's
    threshold) fused in, as the module describes. ``crops``: the tagger's evidence for each head's crop (needed to
    tell heads apart in a picture of several; without it only the gallery and colours can); ``known``: the
    gallery's characters as (name, series), whose spelling wins."""
    params = params or FusionParams()
    out = list(heads)
    characters = sorted(
        {t.name: t for t in tags if t.category == CHARACTER}.values(), key=lambda t: (-t.score, t.name)
    )
    if not out or not characters:
        return _names_first(out)

    def gallery_named(h: Head) -> bool:
        return h.name != UNKNOWN and h.source in (SOURCE_GALLERY, SOURCE_BOTH)

    # the gallery wins where it is confident: its named heads keep their names, and a tag naming one of them is used
    left: list[Tag] = []
    for tag in characters:
        name = from_tag(tag.name)
        match = next(
            (
                i
                for i, h in enumerate(out)
                if gallery_named(h)
                and h.source != SOURCE_BOTH
                and same_character(h.name, h.series, name.name, name.series)
            ),
            None,
        )
        if match is None:
            left.append(tag)
        else:
            out[match] = _confirmed(out[match], tag, params.top_n)
    open_heads = [i for i, h in enumerate(out) if not gallery_named(h)]

    if len(out) == 1:
        if (
            open_heads and left and params.tagger_alone
        ):  # one head, a character tag left: that head, the best tag
            out[0] = _named(out[0], left[0], left[0].score, known, params.top_n)
            left = left[1:]
        for tag in left:  # the other tags are guesses for the only head
            out[0] = _as_candidate(out[0], tag, known, params.top_n)
        return _names_first(out)
    if not open_heads or not left or not params.tagger_alone:
        return _names_first(out)

    # several heads: assign the tags left to the heads the gallery did not name
    evidence = np.zeros((len(open_heads), len(left)))
    for a, i in enumerate(open_heads):
        head = out[i]
        crop = crops[i] if crops is not None else None
        for b, tag in enumerate(left):
            name, series = _written(tag.name, known)
            colour = crop.colours.agreement(known_colours(tag.name)) if crop is not None else 0.0
            evidence[a, b] = (
                params.crop_weight * (crop.score(tag.name) if crop is not None else 0.0)
                + params.gallery_weight * _gallery_confidence(head, name, series)
                + params.colour_weight * colour
            )
    rows, cols = linear_sum_assignment(evidence, maximize=True)
    for a, b in zip(rows, cols, strict=True):
        i, tag = open_heads[a], left[b]
        if evidence[a, b] < params.min_assign:
            continue  # this tag matches no head well enough
        out[i] = _named(
            out[i], tag, min(tag.score, float(evidence[a, b]) / params.crop_weight), known, params.top_n
        )
    return _names_first(out)
