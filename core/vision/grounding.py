"""Grounding a learned caption: keep what the tags and the identified heads support, drop or replace the rest.

The learned model describes the scene (who has which hair and eyes, each one's expression, the setting); the
other stages know who is there (the identified heads) and what the picture shows (the tags). The grounded
caption is rebuilt from the learned caption's claims (:mod:`core.vision.caption_claims`):

- the people are the identified heads, in the order the caption mentions them: a mentioned name that was
  identified keeps its description; a name that was not (or "a girl") is replaced by a head nobody mentioned
  (another identified character, else "an unknown character"); a name said again counts one more person but
  lends them nothing; people beyond the heads are dropped;
- a hair or eye colour, hair length, expression or accessory is kept only when its tag is present;
- what the tags say that nobody was given is added: all of it for a single character; with several, a value
  the only character still lacking that attribute must have, else a closing "also tagged ..." clause;
- the count is the number of heads ("girls" only when the tags count the same girls);
- the setting is kept when it claims nothing about the people and no setting tag contradicts it;
- a kind of claim the model is not trusted with (see ``trusted``) is not taken from it at all.

When nothing usable is left the caption is :class:`~core.vision.slots.captioner.GroundedTemplateCaptioner`'s sentence.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from core.vision.attributes import ACCESSORY_TAGS, EXPRESSION_TAGS, HAIR_LENGTH_TAGS, attributes_from_tags
from core.vision.caption_claims import (
    CaptionClaims,
    Mention,
    is_neutral_setting,
    parse_caption,
    setting_words,
)
from core.vision.results import UNKNOWN, Tag
from core.vision.slots.base import IdentifiedHead

COUNT_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five", 6: "Six"}
# a setting tag -> setting words it rules out
SETTING_CONFLICTS: dict[str, frozenset[str]] = {
    "indoors": frozenset({"sky", "outdoors", "outside", "field", "beach", "street", "forest", "garden"}),
    "outdoors": frozenset({"room", "indoors", "inside", "bedroom", "classroom", "kitchen"}),
    "simple_background": frozenset(
        {"sky", "room", "field", "beach", "street", "forest", "garden", "stripes"}
    ),
}
GIRL_COUNT_TAG = re.compile(r"^(\d+)\+?girls?$")
ATTRIBUTES = ("hair_colours", "eye_colours", "hair_lengths", "expressions", "accessories")
CLAIM_KINDS = (*ATTRIBUTES, "setting")  # what a learned caption may be trusted with
SHARED_WHEN_ALONE = ("hair_lengths", "expressions")


def trusted_kinds(wrong_shares: Mapping[str, float], max_wrong: float) -> tuple[str, ...]:
    """The kinds of claims to take from a learned captioner: those whose measured share of wrong grounded
    captions is at most ``max_wrong`` (a kind never measured is trusted)."""
    return tuple(kind for kind in CLAIM_KINDS if wrong_shares.get(kind, 0.0) <= max_wrong)


@dataclass(frozen=True)
class TagEvidence:
    """What the general tags say about the people and the setting."""

    hair_colours: tuple[str, ...] = ()
    eye_colours: tuple[str, ...] = ()
    hair_lengths: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()
    accessories: tuple[str, ...] = ()
    girls: int | None = None  # from 1girl / 2girls / 6+girls
    general: frozenset[str] = frozenset()  # the general tag names

    @classmethod
    def from_tags(cls, tags: Iterable[Tag]) -> TagEvidence:
        general = [t.name for t in tags if t.category == "general"]
        attrs = attributes_from_tags(general)
        girls = next((int(m.group(1)) for t in general if (m := GIRL_COUNT_TAG.match(t))), None)
        return cls(
            hair_colours=attrs.hair_colours,
            eye_colours=attrs.eye_colours,
            hair_lengths=tuple(HAIR_LENGTH_TAGS[t] for t in dict.fromkeys(general) if t in HAIR_LENGTH_TAGS),
            expressions=tuple(EXPRESSION_TAGS[t] for t in dict.fromkeys(general) if t in EXPRESSION_TAGS),
            accessories=tuple(ACCESSORY_TAGS[t] for t in dict.fromkeys(general) if t in ACCESSORY_TAGS),
            girls=girls,
            general=frozenset(general),
        )

    def allows_setting(self, setting: str) -> bool:
        words = setting_words(setting)
        return is_neutral_setting(setting) and not any(
            words & banned for tag, banned in SETTING_CONFLICTS.items() if tag in self.general
        )


@dataclass
class Person:
    """One identified head and what the caption will say about them."""

    name: str  # a character name or UNKNOWN
    hair_colours: list[str] = field(default_factory=list)
    eye_colours: list[str] = field(default_factory=list)
    hair_lengths: list[str] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)
    accessories: list[str] = field(default_factory=list)

    def described(self) -> bool:
        return any(getattr(self, a) for a in ATTRIBUTES)


def _supported(mention: Mention, evidence: TagEvidence, person: Person, trusted: Collection[str]) -> None:
    """Give ``person`` the claims of ``mention`` that the tags support, of the kinds the model is trusted with."""
    for attr in ATTRIBUTES:
        if attr not in trusted:
            continue
        allowed = getattr(evidence, attr)
        kept = [v for v in getattr(mention, attr) if v in allowed]
        if attr == "hair_lengths":
            kept = kept[:1]
        getattr(person, attr).extend(kept)


def assign_people(
    claims: CaptionClaims,
    heads: Sequence[IdentifiedHead],
    evidence: TagEvidence,
    trusted: Collection[str] = CLAIM_KINDS,
) -> list[Person]:
    """The heads as people, in the caption's order, with the supported claims of the mention each one takes."""
    free = [h.name for h in heads]
    taken: list[tuple[int, Mention | None, str]] = []  # (order, mention, head name)
    leftovers: list[tuple[int, Mention | None]] = []
    said: set[str] = set()
    for order, mention in enumerate(claims.mentions):
        repeated = mention.name is not None and mention.name in said
        if mention.name is not None:
            said.add(mention.name)
        if repeated:  # a name said again (a generation loop): one more person, whose look is not known
            leftovers.append((order, None))
        elif mention.name is not None and mention.name in free:
            free.remove(mention.name)
            taken.append((order, mention, mention.name))
        else:
            leftovers.append((order, mention))
    # a name nobody identified, "a girl" or "an unknown character": the next head nobody mentioned
    free.sort(key=lambda name: name == UNKNOWN)  # identified characters first
    for order, mention in leftovers:
        if free:
            pick = free.index(UNKNOWN) if mention and mention.unknown and UNKNOWN in free else 0
            taken.append((order, mention, free.pop(pick)))
    last = len(claims.mentions)
    taken += [(last + i, None, name) for i, name in enumerate(free)]
    people = []
    for _, mention, name in sorted(taken, key=lambda item: item[0]):
        person = Person(name)
        if mention is not None:
            _supported(mention, evidence, person, trusted)
        people.append(person)
    return people


def complete(people: list[Person], evidence: TagEvidence) -> dict[str, list[str]]:
    """Add what the tags say and nobody was given; return what is still unplaced, by attribute."""
    unplaced: dict[str, list[str]] = {}
    for attr in ATTRIBUTES:
        said = {v for p in people for v in getattr(p, attr)}
        missing = [v for v in getattr(evidence, attr) if v not in said]
        lacking = [p for p in people if not getattr(p, attr)]
        if len(people) == 1:  # every tag is about the one character (who has one hair length)
            if attr != "hair_lengths" or lacking:
                getattr(people[0], attr).extend(missing[:1] if attr == "hair_lengths" else missing)
        elif attr == "accessories":  # said of somebody only when the caption bound them
            continue
        elif attr in SHARED_WHEN_ALONE and len(getattr(evidence, attr)) == 1:
            for person in lacking:  # one length (or expression) tagged: whoever lacks one has that one
                getattr(person, attr).extend(getattr(evidence, attr))
        elif len(missing) == 1 and len(lacking) == 1:  # the only value left for the only one without
            getattr(lacking[0], attr).extend(missing)
        elif missing:
            unplaced[attr] = missing
    return unplaced


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _look(
    colours: Sequence[str], lengths: Sequence[str], eyes: Sequence[str], extras: Sequence[str]
) -> list[str]:
    parts = []
    if colours or lengths:
        parts.append(" ".join([*lengths[:1], _join(colours), "hair"]).replace("  ", " ").strip())
    if eyes:
        parts.append(f"{_join(eyes)} eyes")
    return parts + list(extras)


def describe(person: Person) -> str:
    who = "an unknown character" if person.name == UNKNOWN else person.name
    look = _look(person.hair_colours, person.hair_lengths, person.eye_colours, person.accessories)
    text = f"{who} with {_join(look)}" if look else who
    return f"{text}, {_join(person.expressions)}" if person.expressions else text


def render(
    people: Sequence[Person], evidence: TagEvidence, setting: str | None, unplaced: dict[str, list[str]]
) -> str:
    body = _join([describe(p) for p in people])
    if len(people) > 1:
        noun = "girls" if evidence.girls == len(people) else "characters"
        body = f"{COUNT_WORDS.get(len(people), str(len(people)))} {noun}: {body}"
    if setting:
        body += f", {setting}"
    tail = [
        *([f"{_join(unplaced['hair_lengths'])} hair"] if "hair_lengths" in unplaced else []),
        *_look(unplaced.get("hair_colours", []), [], unplaced.get("eye_colours", []), []),
        *unplaced.get("expressions", []),
    ]
    if tail:
        body += f"; also tagged {_join(tail)}"
    return body[:1].upper() + body[1:] + "."


def ground_caption(
    raw: str,
    heads: Sequence[IdentifiedHead],
    tags: Sequence[Tag],
    *,
    known_names: Iterable[str] = (),
    trusted: Collection[str] = CLAIM_KINDS,
) -> str | None:
    """The grounded caption built from the learned caption ``raw``, or None when ``raw`` has nothing usable
    (the caller then says the template sentence). ``known_names`` are names the learned model may say;
    ``trusted`` the kinds of claims (:data:`CLAIM_KINDS`) taken from it at all (validation may show a model
    is no better than chance at, say, expressions: its per-person expressions are then left out)."""
    if not heads:
        return None
    evidence = TagEvidence.from_tags(tags)
    names = {*known_names, *(h.name for h in heads if h.name != UNKNOWN)}
    claims = parse_caption(
        raw, known_names=names, extra_colours=(*evidence.hair_colours, *evidence.eye_colours)
    )
    people = assign_people(claims, heads, evidence, trusted)
    setting = claims.setting if claims.setting and "setting" in trusted else None
    setting = setting if setting and evidence.allows_setting(setting) else None
    if setting is None and not any(p.described() for p in people):
        return None
    unplaced = complete(people, evidence)
    return render(people, evidence, setting, unplaced)
