"""Measuring captions on synthetic scenes: the share whose stated attributes match the ground truth.

Each scene's truth is its characters (name, hair colour, eye colour, hair length, expression) and their count.
A caption's claims (:func:`core.vision.caption_claims.parse_caption`) are judged per attribute:

- ``wrong``: it states something false (an attribute said of a named character that is not hers, or said of
  nobody in particular that no character has; a name or count that is not the truth);
- ``right``: nothing false, and together the claims state every value the scene has;
- ``missing``: nothing false, but not everything stated.

A caption *matches* when no attribute is wrong (the issue's measure), and is *complete* when every attribute of
the people (names, count, hair colour, eye colour, hair length, expression) is right. The background ("in front
of a sky background") is judged too, and counts against *match* when wrong; no tag can confirm it, so a grounded
caption states it only when the model is trusted with settings.

The captioner runs with the truth as its heads (names, in shuffled order) and tags (``scene.tags``), so the
grounded figure measures the captioner, not the detector, identifier or tagger. A learned captioner is also
measured on its raw caption (before grounding).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

from core.datasets.synth import BACKGROUNDS, CAST, CAST_BY_KEY, Scene, render_scene
from core.vision.attributes import EXPRESSION_TAGS
from core.vision.caption_claims import CaptionClaims, Mention, parse_caption, setting_words
from core.vision.grounding import CLAIM_KINDS
from core.vision.results import UNKNOWN, Tag
from core.vision.slots.base import Captioner, IdentifiedHead

Verdict = Literal["right", "wrong", "missing"]
VERDICTS: tuple[Verdict, ...] = ("right", "wrong", "missing")
PEOPLE_ATTRIBUTES = ("names", "count", "hair colour", "eye colour", "hair length", "expression")
ATTRIBUTES = (*PEOPLE_ATTRIBUTES, "background")
EVAL_SEED_BASE = 700_000_000  # away from every training and validation range
# attribute -> (Mention field, PersonTruth field)
VALUE_ATTRIBUTES = {
    "hair colour": ("hair_colours", "hair_colour"),
    "eye colour": ("eye_colours", "eye_colour"),
    "hair length": ("hair_lengths", "hair_length"),
    "expression": ("expressions", "expression"),
}
# the attribute that measures each kind of claim a learned caption may be trusted with (core.vision.grounding)
ATTRIBUTE_OF_CLAIM = {
    **{said: attribute for attribute, (said, _) in VALUE_ATTRIBUTES.items()},
    "setting": "background",
}


@runtime_checkable
class LearnedCaptioner(Captioner, Protocol):
    """A captioner whose model caption can be had before grounding
    (:class:`core.vision.slots.hf_captioner.HfCaptioner`)."""

    def raw_captions(self, images: Sequence[Image.Image]) -> list[str]: ...

    def ground(
        self, raw: str, heads: list[IdentifiedHead], tags: list[Tag], trusted: Collection[str] | None = None
    ) -> str: ...


@dataclass(frozen=True)
class PersonTruth:
    name: str
    hair_colour: str
    eye_colour: str
    hair_length: str  # "long" | "short", as core.datasets.synth's captions say it
    expression: str  # "smiling" | "with an open mouth" | "calm"


@dataclass(frozen=True)
class SceneTruth:
    people: tuple[PersonTruth, ...]
    background: str

    @classmethod
    def of(cls, scene: Scene) -> SceneTruth:
        people = []
        for head in scene.heads:
            spec = CAST_BY_KEY[head.character]
            length = "long" if "long_hair" in spec.tags else "short"
            people.append(
                PersonTruth(
                    spec.name, spec.hair_colour, spec.eye_colour, length, EXPRESSION_TAGS[head.expression]
                )
            )
        return cls(tuple(people), scene.background)


def _judge_names(claims: CaptionClaims, truth: SceneTruth) -> Verdict:
    stated = Counter(UNKNOWN if m.unknown else m.name for m in claims.mentions if m.unknown or m.name)
    real = Counter(p.name for p in truth.people)
    if stated - real:
        return "wrong"
    return "right" if stated == real else "missing"


def _judge_count(claims: CaptionClaims, truth: SceneTruth) -> Verdict:
    count = claims.stated_count
    if count is None:
        return "missing"
    return "right" if count == len(truth.people) else "wrong"


def _judge_values(claims: CaptionClaims, truth: SceneTruth, said: str, real: str) -> Verdict:
    own = {p.name: getattr(p, real) for p in truth.people}
    everyone = set(own.values())
    stated: set[str] = set()
    wrong = False
    mentions: list[Mention] = [*claims.mentions, claims.group]
    for mention in mentions:
        values = set(getattr(mention, said))
        allowed = {own[mention.name]} if mention.name in own else everyone
        wrong |= bool(values - allowed)
        stated |= values
    if wrong:
        return "wrong"
    return "right" if stated == everyone else "missing"


def _judge_background(claims: CaptionClaims, truth: SceneTruth) -> Verdict:
    said = setting_words(claims.setting or "") & set(BACKGROUNDS)
    if not said:
        return "missing"
    return "right" if said == {truth.background} else "wrong"


def judge(text: str, truth: SceneTruth) -> dict[str, Verdict]:
    """Each attribute's verdict for the caption ``text`` of a scene whose truth is ``truth``."""
    claims = parse_caption(text, known_names=[c.name for c in CAST])
    verdicts: dict[str, Verdict] = {
        "names": _judge_names(claims, truth),
        "count": _judge_count(claims, truth),
    }
    for attribute, (said, real) in VALUE_ATTRIBUTES.items():
        verdicts[attribute] = _judge_values(claims, truth, said, real)
    verdicts["background"] = _judge_background(claims, truth)
    return verdicts


@dataclass
class CaptionScores:
    """Verdict counts per attribute over a set of captions."""

    n: int = 0
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {a: Counter() for a in ATTRIBUTES})
    matching: int = 0  # no attribute wrong
    complete: int = 0  # every attribute of the people right (the background is not required: no tag says it)

    def add(self, verdicts: dict[str, Verdict]) -> None:
        self.n += 1
        for attribute, verdict in verdicts.items():
            self.counts[attribute][verdict] += 1
        self.matching += all(v != "wrong" for v in verdicts.values())
        self.complete += all(verdicts[a] == "right" for a in PEOPLE_ATTRIBUTES)

    def share(self, attribute: str, verdict: Verdict) -> float:
        return self.counts[attribute][verdict] / self.n if self.n else 0.0

    @property
    def match_share(self) -> float:
        return self.matching / self.n if self.n else 0.0

    @property
    def complete_share(self) -> float:
        return self.complete / self.n if self.n else 0.0

    def summary(self) -> dict[str, float]:
        """Flat figures for a manifest: match/complete shares and each attribute's right and wrong shares."""
        out = {"match": round(self.match_share, 4), "complete": round(self.complete_share, 4)}
        for attribute in ATTRIBUTES:
            key = attribute.replace(" ", "_")
            out[f"{key}_right"] = round(self.share(attribute, "right"), 4)
            out[f"{key}_wrong"] = round(self.share(attribute, "wrong"), 4)
        return out


@dataclass(frozen=True)
class CaptionExample:
    seed: int
    truth: str
    raw: str | None
    grounded: str


@dataclass
class CaptionReport:
    captioner_version: str
    seeds: range
    grounded: CaptionScores
    raw: CaptionScores | None  # None: the captioner has no raw caption (the built-in template)
    examples: list[CaptionExample]

    def rows(self) -> list[tuple[str, CaptionScores]]:
        rows = [("raw (learned model)", self.raw)] if self.raw else []
        return [*rows, ("grounded (what users see)", self.grounded)]

    def markdown(self) -> str:
        header = "| caption | scenes | match | complete | " + " | ".join(ATTRIBUTES) + " |"
        lines = [
            f"# Captioner on synthetic scenes (seeds {self.seeds.start}..{self.seeds.stop - 1})",
            "",
            f"Captioner `{self.captioner_version}`, given the true names (as heads) and tags. *match*: no stated "
            "attribute contradicts the truth; *complete*: every attribute of the people stated and right. "
            "Attribute cells: share right / share wrong (the rest: not fully stated).",
            "",
            header,
            "|" + "---|" * (4 + len(ATTRIBUTES)),
        ]
        for label, scores in self.rows():
            cells = [f"{scores.share(a, 'right'):.3f} / {scores.share(a, 'wrong'):.3f}" for a in ATTRIBUTES]
            lines.append(
                f"| {label} | {scores.n} | {scores.match_share:.3f} | {scores.complete_share:.3f} | "
                + " | ".join(cells)
                + " |"
            )
        lines += ["", "## Examples", ""]
        for ex in self.examples:
            lines.append(f"- seed {ex.seed}: truth: {ex.truth}")
            if ex.raw is not None:
                lines.append(f"  - raw: {ex.raw}")
            lines.append(f"  - grounded: {ex.grounded}")
        return "\n".join(lines) + "\n"


def truth_inputs(scene: Scene, rng: random.Random) -> tuple[list[IdentifiedHead], list[Tag]]:
    """The heads (true names, shuffled: the pipeline's order is by detection score) and tags of a scene."""
    heads = [IdentifiedHead(CAST_BY_KEY[h.character].name, 1.0) for h in scene.heads]
    rng.shuffle(heads)
    return heads, [Tag(t, 1.0, "general") for t in scene.tags]


@dataclass(frozen=True)
class CaptionedScene:
    """A scene's truth, what the captioner was given, and its caption (raw for a learned captioner)."""

    seed: int
    truth: SceneTruth
    truth_caption: str
    heads: list[IdentifiedHead]
    tags: list[Tag]
    raw: str | None  # the learned model's caption; None for a captioner without one
    caption: str | None  # the captioner's own caption when it has no raw one


def caption_scenes(
    captioner: Captioner, *, n_scenes: int, seed_base: int = EVAL_SEED_BASE, batch_size: int = 16
) -> list[CaptionedScene]:
    """Render ``n_scenes`` synthetic scenes (seeds ``seed_base``...) and caption them (raw when learned)."""
    learned = captioner if isinstance(captioner, LearnedCaptioner) else None
    rng = random.Random(seed_base)
    out = []
    for start in range(seed_base, seed_base + n_scenes, batch_size):
        scenes = [render_scene(s) for s in range(start, min(start + batch_size, seed_base + n_scenes))]
        raws: list[str | None] = [None] * len(scenes)
        if learned is not None:
            raws = list(learned.raw_captions([s.image for s in scenes]))
        for scene, raw in zip(scenes, raws, strict=True):
            heads, tags = truth_inputs(scene, rng)
            caption = captioner.caption(scene.image, heads, tags) if raw is None else None
            out.append(
                CaptionedScene(scene.seed, SceneTruth.of(scene), scene.caption, heads, tags, raw, caption)
            )
    return out


Grounder = Callable[[str, list[IdentifiedHead], list[Tag]], str]


def build_report(
    version: str, captioned: Sequence[CaptionedScene], ground: Grounder | None, n_examples: int = 3
) -> CaptionReport:
    """Judge the captions; a learned captioner's raw captions are grounded by ``ground``."""
    seeds = range(captioned[0].seed, captioned[-1].seed + 1) if captioned else range(0)
    report = CaptionReport(version, seeds, CaptionScores(), CaptionScores() if ground else None, [])
    for item in captioned:
        if ground is not None and item.raw is not None and report.raw is not None:
            grounded = ground(item.raw, item.heads, item.tags)
            report.raw.add(judge(item.raw, item.truth))
        else:
            grounded = item.caption or ""
        report.grounded.add(judge(grounded, item.truth))
        if len(report.examples) < n_examples:
            report.examples.append(CaptionExample(item.seed, item.truth_caption, item.raw, grounded))
    return report


def evaluate_captioner(
    captioner: Captioner,
    *,
    n_scenes: int = 200,
    seed_base: int = EVAL_SEED_BASE,
    batch_size: int = 16,
    n_examples: int = 3,
) -> CaptionReport:
    """Caption ``n_scenes`` synthetic scenes (seeds ``seed_base``...) and judge every caption."""
    captioned = caption_scenes(captioner, n_scenes=n_scenes, seed_base=seed_base, batch_size=batch_size)
    ground = captioner.ground if isinstance(captioner, LearnedCaptioner) else None
    return build_report(captioner.version, captioned, ground, n_examples)


def claim_wrong_shares(
    captioned: Sequence[CaptionedScene],
    ground: Callable[[str, list[IdentifiedHead], list[Tag], Collection[str]], str],
) -> dict[str, float]:
    """For each kind of claim (core.vision.grounding.CLAIM_KINDS) this evaluation measures: the share of grounded
    captions where it is wrong when every kind is taken from the learned captions."""
    report = build_report("trust", captioned, lambda raw, heads, tags: ground(raw, heads, tags, CLAIM_KINDS))
    return {
        kind: round(report.grounded.share(ATTRIBUTE_OF_CLAIM[kind], "wrong"), 4)
        for kind in CLAIM_KINDS
        if kind in ATTRIBUTE_OF_CLAIM
    }


def write_plot(report: CaptionReport, path: Path) -> Path:
    """Bars of the share right and the share wrong of each attribute, raw and grounded."""
    import numpy as np

    from core.evaluation.plots import pyplot, save

    rows = report.rows()
    panels = {
        "share right": (
            ["match", "complete", *ATTRIBUTES],
            lambda s: [s.match_share, s.complete_share, *(s.share(a, "right") for a in ATTRIBUTES)],
        ),
        "share wrong": (
            ["any attribute", *ATTRIBUTES],
            lambda s: [1 - s.match_share, *(s.share(a, "wrong") for a in ATTRIBUTES)],
        ),
    }
    width = 0.8 / len(rows)
    fig, axes = pyplot().subplots(2, 1, figsize=(9, 6))
    for ax, (ylabel, (labels, values)) in zip(axes, panels.items(), strict=True):
        x = np.arange(len(labels))
        for k, (label, scores) in enumerate(rows):
            ax.bar(x + k * width, values(scores), width, label=label)
        ax.set_xticks(x + width * (len(rows) - 1) / 2, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    axes[0].set_title(
        f"captions of {report.grounded.n} synthetic scenes ({report.captioner_version})", fontsize=9
    )
    return save(fig, path)
