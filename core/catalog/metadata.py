"""Metadata similarity between catalogue titles: a weighted mean of per-field similarities, each in 0-1.

- genres, themes, studios: weighted Jaccard, each value weighted by its rarity (idf): sharing "Space" says more
  than sharing "Comedy";
- demographic, source, type: equal or not;
- episodes and duration per episode: closeness of their logarithms (12 against 24 episodes: 0.5);
- year: ``exp(-|difference| / 10)``; score: ``1 - |difference| / 2.5``.

A field missing on either side counts 0.5 (neither alike nor unlike). The weights come from settings
(``ANIBOT_RECOMMEND_WEIGHTS``, merged over ``core.settings.RECOMMEND_WEIGHT_DEFAULTS``, where settings check the names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.settings import RECOMMEND_WEIGHT_DEFAULTS, check_recommend_weights
from core.storage.store import AnimeRecord

SET_FIELDS = ("genres", "themes", "studios")
CATEGORY_FIELDS = ("demographic", "source", "kind")
NEUTRAL = 0.5


def merged_weights(overrides: Mapping[str, float] | None) -> dict[str, float]:
    return {**RECOMMEND_WEIGHT_DEFAULTS, **check_recommend_weights(overrides or {})}


def split_list(text: str) -> list[str]:
    return [p for p in (x.strip() for x in text.split(",")) if p]


@dataclass(frozen=True)
class Shared:
    """What two titles have in common, for the reason line."""

    labels: tuple[str, ...]  # shared genres and themes, rarest first
    studios: tuple[str, ...]
    demographic: str
    source: str


class MetadataFeatures:
    """The metadata of a whole catalogue, encoded once for fast comparisons of one title with many."""

    def __init__(self, records: Sequence[AnimeRecord], weights: Mapping[str, float] | None = None) -> None:
        self.weights = merged_weights(weights)
        total = sum(self.weights.values())
        self._w = (
            {k: v / total for k, v in self.weights.items()} if total > 0 else dict.fromkeys(self.weights, 0.0)
        )
        n = len(records)
        self.vocab: dict[str, list[str]] = {}
        self.sets: dict[str, list[frozenset[int]]] = {}
        self.idf: dict[str, np.ndarray] = {}
        for name in SET_FIELDS:
            index: dict[str, int] = {}
            rows = [
                frozenset(index.setdefault(v, len(index)) for v in split_list(getattr(r, name)))
                for r in records
            ]
            counts = np.zeros(len(index))
            for row in rows:
                for v in row:
                    counts[v] += 1
            self.vocab[name] = list(index)
            self.sets[name] = rows
            self.idf[name] = np.log((n + 1) / (counts + 1)) + 1.0
        # plain Python lists: the per-candidate loop of _jaccard is faster without numpy calls on tiny arrays
        self._idf_list = {name: self.idf[name].tolist() for name in SET_FIELDS}
        self._totals = {
            name: [sum(self._idf_list[name][v] for v in row) for row in self.sets[name]]
            for name in SET_FIELDS
        }
        self.codes: dict[str, np.ndarray] = {}
        self.labels: dict[str, list[str]] = {}
        for name in CATEGORY_FIELDS:
            index = {}
            codes = [index.setdefault(getattr(r, name).casefold(), len(index)) if getattr(r, name) else -1
                     for r in records]  # fmt: skip
            self.codes[name] = np.array(codes, dtype=np.int32)
            self.labels[name] = [getattr(r, name) for r in records]

        def numbers(values: Sequence[float | None]) -> np.ndarray:
            return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

        self.log_episodes = np.log1p(
            numbers([r.episodes if r.episodes and r.episodes > 0 else None for r in records])
        )
        self.log_duration = np.log1p(numbers([r.duration_min or None for r in records]))
        self.year = numbers([r.year for r in records])
        self.score = numbers([r.score or None for r in records])

    def __len__(self) -> int:
        return len(self.year)

    def similarity(self, query: int, candidates: np.ndarray) -> np.ndarray:
        """Metadata similarity (0-1) of title ``query`` with each of ``candidates`` (catalogue positions)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        total = np.zeros(len(candidates))
        w = self._w
        for name in SET_FIELDS:
            if w[name]:
                total += w[name] * self._jaccard(name, query, candidates)
        for name in CATEGORY_FIELDS:
            if w[name]:
                codes = self.codes[name]
                q = codes[query]
                c = codes[candidates]
                part = np.where((c < 0) | (q < 0), NEUTRAL, (c == q).astype(float))
                total += w[name] * part
        for name, values, scale in (
            ("episodes", self.log_episodes, 1.0),
            ("duration", self.log_duration, 1.0),
            ("year", self.year, 10.0),
        ):
            if w[name]:
                diff = np.abs(values[candidates] - values[query])
                total += w[name] * np.where(np.isnan(diff), NEUTRAL, np.exp(-diff / scale))
        if w["score"]:
            diff = np.abs(self.score[candidates] - self.score[query])
            total += w["score"] * np.where(np.isnan(diff), NEUTRAL, np.clip(1.0 - diff / 2.5, 0.0, 1.0))
        return total

    def _jaccard(self, name: str, query: int, candidates: np.ndarray) -> np.ndarray:
        sets, idf, totals = self.sets[name], self._idf_list[name], self._totals[name]
        q = sets[query]
        out = np.full(len(candidates), NEUTRAL)
        if not q:
            return out
        q_weight = totals[query]
        for i, c in enumerate(candidates.tolist()):
            other = sets[c]
            if not other:
                continue
            common = q & other
            if not common:
                out[i] = 0.0
                continue
            inter = sum(idf[v] for v in common)
            out[i] = inter / (q_weight + totals[c] - inter)
        return out

    def shared(self, a: int, b: int) -> Shared:
        labels: list[tuple[float, str]] = []
        for name in ("themes", "genres"):
            common = self.sets[name][a] & self.sets[name][b]
            labels += [(float(self.idf[name][v]), self.vocab[name][v]) for v in common]
        labels.sort(key=lambda t: (-t[0], t[1]))
        studios = tuple(
            sorted(self.vocab["studios"][v] for v in self.sets["studios"][a] & self.sets["studios"][b])
        )

        def same(name: str) -> str:
            code = self.codes[name][a]
            return self.labels[name][a] if code >= 0 and code == self.codes[name][b] else ""

        return Shared(tuple(label for _, label in labels), studios, same("demographic"), same("source"))
