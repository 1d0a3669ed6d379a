"""Measuring a tagger through its public ``tag()`` (so the starter and a real WD14 model are measured alike).

- synthetic scenes: per-tag F1 and macro-F1 of the general tags against the scenes' ground truth;
- real faces: hair-colour and eye-colour F1 on the test splits of face sets, each face labelled with its
  character's canonical look (core.datasets.real_faces.CANONICAL_LOOKS; characters without one are skipped), and
  the hallucination rate: faces where an appearance tag outside the look fires (cat ears on Miku, silver hair).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.vision.slots.base import Tagger

EVAL_SEED_BASE = 800_000_000  # apart from the tagger's training (1e9..) and validation (9e8..) scenes
LENGTH_TAGS = {"long_hair", "short_hair", "very_long_hair", "medium_hair"}


def is_hair_colour(tag: str) -> bool:
    """``aqua_hair``, ``blonde_hair``...: one word before ``_hair`` that is not a length."""
    return tag.endswith("_hair") and tag.count("_") == 1 and tag not in LENGTH_TAGS


def is_eye_colour(tag: str) -> bool:
    return tag.endswith("_eyes") and tag.count("_") == 1 and tag not in {"closed_eyes", "covered_eyes"}


@dataclass
class TagReport:
    name: str
    n_pictures: int
    per_tag_f1: dict[str, float]
    support: dict[str, int]
    macro_f1: float
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)  # (truth, best predicted) counts


def f1_per_tag(
    truth: Sequence[set[str]], predicted: Sequence[set[str]], vocabulary: Iterable[str]
) -> tuple[dict[str, float], dict[str, int]]:
    """F1 of each tag that is in the truth or the predictions at least once."""
    f1, support = {}, {}
    for tag in sorted(set(vocabulary)):
        t = np.array([tag in s for s in truth])
        p = np.array([tag in s for s in predicted])
        denom = int(t.sum() + p.sum())
        if denom == 0:
            continue
        f1[tag] = 2 * int((t & p).sum()) / denom
        support[tag] = int(t.sum())
    return f1, support


def _general(tags: Iterable) -> set[str]:
    return {t.name for t in tags if t.category == "general"}


def evaluate_synthetic(tagger: Tagger, n_scenes: int, *, seed: int = EVAL_SEED_BASE) -> TagReport:
    """Per-tag F1 over the tags core.datasets.synth can produce (macro over tags present in the truth)."""
    from core.datasets.synth import render_scene

    truth, predicted = [], []
    for s in range(seed, seed + n_scenes):
        scene = render_scene(s)
        truth.append(set(scene.tags))
        predicted.append(_general(tagger.tag(scene.image)))
    vocabulary = set().union(*truth) if truth else set()
    f1, support = f1_per_tag(truth, [p & vocabulary for p in predicted], vocabulary)
    present = [f1[t] for t in f1 if support[t] > 0]
    return TagReport("synthetic scenes", n_scenes, f1, support, float(np.mean(present)) if present else 0.0)


@dataclass
class ColourReport:
    hair: TagReport
    eyes: TagReport
    hallucination: HallucinationReport | None = None


def count_rows(counts: dict[str, int]) -> list[str]:
    """Markdown table rows ``| key | count |``, most first (ties by key)."""
    return [f"| {k} | {n} |" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


@dataclass
class HallucinationReport:
    """Appearance tags (hair and eye colours, lengths, styles, accessories) that fire on a real face and are wrong
    by its character's canonical look: another tag of a family the look names (a wrong hair colour), an
    accessory or style the looks say no to (:func:`weakly_known`), or a tag no
    look names at all (cat ears, glasses, silver hair: only the synthetic cast has them). Not counted: a family
    the look is silent on (Maki's hair length, Zoro's eye colour, Luffy's sometimes-worn hat). ``rate_any``
    counts every appearance tag outside the look."""

    n_pictures: int
    rate: float  # share of the faces with at least one wrong tag
    per_face: float  # wrong tags per face
    counts: dict[str, int]  # tag -> faces it fired on wrongly
    rate_any: float = 0.0  # share of the faces with an appearance tag outside the look, judgeable or not

    def markdown(self) -> str:
        lines = [
            "## real faces: hallucinated appearance tags",
            "",
            f"{self.n_pictures} faces; with at least one wrong appearance tag: {self.rate:.3f}; wrong tags per "
            f"face: {self.per_face:.3f}; with any appearance tag outside the canonical look: {self.rate_any:.3f}",
            "",
            "| tag | faces it fired on wrongly |",
            "|---|---|",
        ]
        lines += count_rows(self.counts)
        return "\n".join(lines) + "\n"


def is_appearance(tag: str) -> bool:
    """A tag about a character's look: hair or eye colour, hair length or style, or an accessory."""
    from core.datasets.synth import ACCESSORIES

    styles = {"twintails", "ponytail", "bob_cut"}
    return (
        is_hair_colour(tag)
        or is_eye_colour(tag)
        or tag in LENGTH_TAGS
        or tag in styles
        or tag in ACCESSORIES
        or tag == "bow"
    )


def wrong_appearance(label: str, fired: Sequence[str]) -> tuple[set[str], set[str]]:
    """Of the tags ``fired`` on a real face of ``label``: the wrong appearance tags (see
    :class:`HallucinationReport`), and every appearance tag outside the character's look."""
    from core.datasets.real_faces import CANONICAL_LOOKS, UNSURE_LOOKS, canonical_tags

    look = canonical_tags(label)
    outside = {t for t in fired if is_appearance(t)} - set(look)
    named = {t for other in CANONICAL_LOOKS.values() for t in other}
    vocab = sorted(outside | set(look))  # the look's own tags too: they tell which families it names
    judged = dict(zip(vocab, weakly_known(vocab, look, UNSURE_LOOKS.get(label, ())), strict=True))
    wrong = {t for t in outside if judged[t] or t not in named}
    return wrong, outside


def real_test_faces(faces_dirs: Path | Sequence[Path]) -> list:
    """The test split of every set in ``faces_dirs`` (moeimouto-style or flat, core.datasets.face_sets), for
    the characters that have a canonical look."""
    from core.datasets.face_sets import load_face_sets
    from core.datasets.real_faces import canonical_tags

    roots = [Path(faces_dirs)] if isinstance(faces_dirs, str | Path) else [Path(r) for r in faces_dirs]
    return [i for i in load_face_sets(roots).splits.test if canonical_tags(i.label)]


def evaluate_real_colours(tagger: Tagger, faces_dirs: Path | Sequence[Path]) -> ColourReport:
    """Hair and eye colour F1 on the test splits of ``faces_dirs`` against each character's canonical look
    (a face counts for a family only when its look names one, so Chopper's fur is not scored as hair), and the
    hallucinated appearance tags."""
    from core.datasets.real_faces import canonical_tags, load_images

    items = real_test_faces(faces_dirs)
    images = load_images(items)
    fired = [[t for t in tagger.tag(image) if t.category == "general"] for image in images]
    reports = {}
    for family, is_family in (("hair", is_hair_colour), ("eyes", is_eye_colour)):
        truth, predicted, confusion = [], [], {}
        for item, tags_of in zip(items, fired, strict=True):
            want = {t for t in canonical_tags(item.label) if is_family(t)}
            if not want:
                continue
            tags = [t for t in tags_of if is_family(t.name)]
            got = {t.name for t in tags}
            truth.append(want)
            predicted.append(got)
            best = max(tags, key=lambda t: t.score).name if tags else "(none)"
            for w in want:
                confusion[(w, best)] = confusion.get((w, best), 0) + 1
        f1, support = f1_per_tag(truth, predicted, set().union(*truth, *predicted))
        present = [f1[t] for t in f1 if support[t] > 0]
        reports[family] = TagReport(
            f"real faces: {family} colour",
            len(truth),
            f1,
            support,
            float(np.mean(present)) if present else 0.0,
            confusion,
        )
    counts: dict[str, int] = {}
    wrong_faces, wrong_tags, outside_faces = 0, 0, 0
    for item, tags_of in zip(items, fired, strict=True):
        wrong, outside = wrong_appearance(item.label, [t.name for t in tags_of])
        wrong_faces += bool(wrong)
        outside_faces += bool(outside)
        wrong_tags += len(wrong)
        for t in wrong:
            counts[t] = counts.get(t, 0) + 1
    n = max(1, len(items))
    hallucination = HallucinationReport(
        len(items), wrong_faces / n, wrong_tags / n, counts, outside_faces / n
    )
    return ColourReport(reports["hair"], reports["eyes"], hallucination)


def tag_markdown(reports: Sequence[TagReport], title: str) -> str:
    lines = [f"# {title}", "", "| set | pictures | macro-F1 |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.n_pictures} | {r.macro_f1:.3f} |" for r in reports]
    for r in reports:
        lines += ["", f"## {r.name}: per tag", "", "| tag | support | F1 |", "|---|---|---|"]
        lines += [f"| {t} | {r.support[t]} | {f:.3f} |" for t, f in sorted(r.per_tag_f1.items())]
    return "\n".join(lines) + "\n"


def write_tag_plots(reports: Sequence[TagReport], out_dir: Path) -> list[Path]:
    """A per-tag F1 bar chart of each report, and a confusion matrix where the report has one."""
    from core.evaluation.plots import confusion_png, pyplot, save

    plt = pyplot()
    written = []
    for r in reports:
        stem = r.name.replace(":", "").replace(" ", "-")
        tags = sorted(r.per_tag_f1)
        fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(tags) + 2), 4))
        ax.bar(range(len(tags)), [r.per_tag_f1[t] for t in tags])
        ax.set_xticks(range(len(tags)), tags, rotation=70, ha="right", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("F1")
        ax.set_title(f"{r.name}: per-tag F1 (macro {r.macro_f1:.3f})", fontsize=9)
        written.append(save(fig, out_dir / f"tagger-{stem}-f1.png"))
        if r.confusion:
            written.append(
                confusion_png(
                    r.confusion,
                    out_dir / f"tagger-{stem}-confusion.png",
                    title=f"{r.name}: confusion",
                    xlabel="best predicted",
                    ylabel="canonical",
                )
            )
    return written


def look_extras() -> set[str]:
    """The accessories and hair styles some canonical look names (hat, bow, hairband, twintails...): a look lists
    its character's notable ones, so every look says yes or no to each (see :func:`weakly_known`)."""
    from core.datasets.real_faces import CANONICAL_LOOKS

    named = {t for look in CANONICAL_LOOKS.values() for t in look}
    return {t for t in named if not (is_hair_colour(t) or is_eye_colour(t) or t in LENGTH_TAGS)}


def weakly_known(vocab: list[str], look: tuple[str, ...], unsure: tuple[str, ...] = ()) -> np.ndarray:
    """Which tags a canonical look labels: every tag of each family it names (all hair colours when it names a
    hair colour, both lengths when it names one...), the tags it names, and (for any look) the accessories and
    styles that some look names (:func:`look_extras`: a look without a hat says its character wears none) but
    ``unsure`` (the character's, such as Luffy's hat, sometimes worn); unknown: the rest."""
    families = [{t for t in vocab if is_colour(t)} for is_colour in (is_hair_colour, is_eye_colour)]
    families.append({t for t in vocab if t in LENGTH_TAGS})
    known = set(look)
    for family in families:
        if family & set(look):
            known |= family
    if look:
        known |= look_extras() - set(unsure)
    return np.array([t in known for t in vocab])


@dataclass
class CharacterReport:
    """How the tagger's character tags name real test faces. ``known``: faces of characters the tagger has a tag
    for (right: its best character tag is the face's character; wrong: another; silent: none); ``unknown``: faces of
    characters it has no tag for, where any character tag is a wrong name."""

    n_known: int
    right: int
    wrong: int
    n_unknown: int
    named_unknown: int
    confusion: dict[str, int]  # "label -> said" -> faces

    def markdown(self) -> str:
        k, u = max(1, self.n_known), max(1, self.n_unknown)
        lines = [
            "## real faces: character tags",
            "",
            f"{self.n_known} faces of characters the tagger has a tag for: named right {self.right / k:.3f}, "
            f"wrong {self.wrong / k:.3f}, silent {(self.n_known - self.right - self.wrong) / k:.3f}; "
            f"{self.n_unknown} faces of other characters: named (wrongly) {self.named_unknown / u:.3f}",
            "",
            "| face -> best character tag | faces |",
            "|---|---|",
        ]
        lines += count_rows(self.confusion)
        return "\n".join(lines) + "\n"


def evaluate_real_characters(tagger: Tagger, faces_dirs: Path | Sequence[Path]) -> CharacterReport:
    """The character tags the tagger gives the test faces of ``faces_dirs`` (every character, looks or not)."""
    from core.characters.danbooru import from_tag, same_character
    from core.datasets.face_sets import load_face_sets
    from core.datasets.real_faces import load_images

    roots = [Path(faces_dirs)] if isinstance(faces_dirs, str | Path) else [Path(r) for r in faces_dirs]
    items = load_face_sets(roots).splits.test
    vocabulary = [t.name for t in getattr(tagger, "tags", []) if getattr(t, "category", None) == 4]

    def same(tag: str, label: str) -> bool:
        a, b = from_tag(tag), from_tag(label)
        return same_character(a.name, a.series, b.name, b.series)

    right = wrong = n_known = n_unknown = named_unknown = 0
    confusion: dict[str, int] = {}
    for item, image in zip(items, load_images(items), strict=True):
        said = [t for t in tagger.tag(image) if t.category == "character"]
        best = max(said, key=lambda t: t.score).name if said else None
        if any(same(v, item.label) for v in vocabulary):
            n_known += 1
            right += best is not None and same(best, item.label)
            wrong += best is not None and not same(best, item.label)
        else:
            n_unknown += 1
            named_unknown += best is not None
        if best is not None:
            key = f"{item.label} -> {best}"
            confusion[key] = confusion.get(key, 0) + 1
    return CharacterReport(n_known, right, wrong, n_unknown, named_unknown, confusion)
