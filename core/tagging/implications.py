"""Implied tags: a tag made redundant by a more specific one present (``fingerless_gloves`` implies ``gloves``,
``very_long_hair`` implies ``long_hair``).

The list is data the project keeps (``core/tagging/data/implications.csv``, ``specific,implied`` a line) and the
user may edit or replace (``ANIBOT_TAG_IMPLICATIONS``, ``anibot tag --implications``). It was derived from the
tag vocabulary by :func:`derive_implications` (``python -m scripts.derive_implications``): a name ``X_Y`` implies
``Y`` only when both are tags of the vocabulary, and never for prefixes that deny or only announce the thing
(``no_hat`` does not imply ``hat``, ``imminent_kiss`` does not imply ``kiss``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

SHIPPED = Path(__file__).with_name("data") / "implications.csv"
# prefixes after which the rest of the name is absent, hidden or only about to happen
NOT_IMPLYING_PREFIXES = (
    "no_",
    "not_",
    "without_",
    "missing_",
    "imminent_",
    "implied_",
    "almost_",
    "after_",
    "before_",
    "covered_",
    "covering_",
    "hidden_",
    "invisible_",
    "removed_",
    "censored_",
    "off_",
    "anti-",
)


def derive_implications(vocabulary: Iterable[str]) -> list[tuple[str, str]]:
    """``(specific, implied)`` pairs: each name ``a_b_c`` implies its longest suffix (``b_c``, else ``c``) that
    is itself a name of ``vocabulary``, unless it starts with one of :data:`NOT_IMPLYING_PREFIXES`."""
    names = set(vocabulary)
    pairs = []
    for name in sorted(names):
        if name.startswith(NOT_IMPLYING_PREFIXES):
            continue
        parts = name.split("_")
        for i in range(1, len(parts)):
            suffix = "_".join(parts[i:])
            if suffix in names:
                pairs.append((name, suffix))
                break
    return pairs


def write_implications(path: Path, pairs: Iterable[tuple[str, str]], source: str) -> Path:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        handle.write(
            f"# specific,implied: derived by core.tagging.implications.derive_implications from {source}\n"
        )
        handle.write("# edit freely: one pair a line; a line starting with # is a comment\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerows(pairs)
    return Path(path)


class Implications:
    """Which tags each tag implies, transitively (``a`` -> ``b`` -> ``c``: ``a`` implies both)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.direct: dict[str, set[str]] = {}
        for specific, implied in pairs:
            if specific != implied:
                self.direct.setdefault(specific, set()).add(implied)

    @classmethod
    def load(cls, path: Path | None = None) -> Implications:
        """The pairs of a ``specific,implied`` file (the shipped one by default); a malformed line fails with its
        number."""
        path = Path(path) if path is not None else SHIPPED
        pairs = []
        text = path.read_text(encoding="utf-8-sig")
        for line_no, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{line_no}: expected 'specific,implied', got {','.join(row)!r}")
            pairs.append((row[0].strip(), row[1].strip()))
        return cls(pairs)

    def __len__(self) -> int:
        return sum(len(v) for v in self.direct.values())

    def implied(self, tag: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.direct.get(tag, ()))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.direct.get(name, ()))
        seen.discard(tag)
        return seen

    def implied_by(self, present: Iterable[str]) -> set[str]:
        """The tags of ``present`` implied by another tag present."""
        present = set(present)
        out: set[str] = set()
        for tag in present:
            out |= self.implied(tag) & present
        return out
