"""The hybrid recommender over a catalogue held in memory.

``similarity = alpha * story + (1 - alpha) * metadata``, where ``story`` is the cosine of synopsis embeddings
and ``metadata`` the weighted metadata similarity (``core.catalog.metadata``), each normalised the same way:
``(x - median) / (p99.5 - median)`` over random pairs of the catalogue, clipped to 0-1, so that 1 means "as
alike as the closest 0.5 % of pairs" whichever embedder made the vectors. A vector index (faiss inner product,
numpy when faiss is not installed) gives the ``candidates`` nearest synopses; the metadata re-ranks them.
Recommending from several titles (a user's favourites) averages both similarities over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.catalog.metadata import MetadataFeatures
from core.catalog.titles import franchise_keys
from core.storage.store import AnimeRecord

CALIBRATION_PAIRS = 4000
HNSW_FROM = 5000  # catalogues this large get an HNSW index (approximate), smaller ones an exact flat one
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
STORY_REASON = 0.45  # normalised story similarity from which "similar story" is said
STORY_FALLBACK = 0.2  # ... when nothing else is in common


@dataclass(frozen=True)
class Scored:
    position: int  # in the catalogue
    similarity: float
    story: float
    metadata: float
    reason: str


@dataclass(frozen=True)
class Calibration:
    low: float  # median over random pairs
    high: float  # 99.5th percentile over random pairs

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.clip((values - self.low) / max(self.high - self.low, 1e-6), 0.0, 1.0)


class VectorIndex:
    """Inner-product search over L2-normalised rows: faiss when installed (exact, or HNSW from ``HNSW_FROM``
    rows), numpy otherwise."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._faiss = None
        try:
            import faiss
        except ImportError:
            return
        dim = self.vectors.shape[1]
        if len(self.vectors) >= HNSW_FROM:  # a graph index: well under a millisecond a query at any size
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:  # exact
            index = faiss.IndexFlatIP(dim)
        index.add(self.vectors)
        self._faiss = index

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the ``k`` rows with the largest inner product with ``query``, best first."""
        k = min(k, len(self.vectors))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._faiss is not None:
            if hasattr(self._faiss, "hnsw"):
                self._faiss.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
            scores, positions = self._faiss.search(q, k)
            keep = positions[0] >= 0
            return scores[0][keep], positions[0][keep]
        scores = self.vectors @ q[0]
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], top


class Recommender:
    def __init__(
        self,
        records: Sequence[AnimeRecord],
        vectors: np.ndarray,
        features: MetadataFeatures,
        *,
        alpha: float,
        candidates: int,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.features = features
        self.alpha = alpha
        self.candidates = candidates
        self.index = VectorIndex(vectors)
        self.franchises = [franchise_keys([r.title, r.english_title]) for r in self.records]
        self.story_calibration, self.metadata_calibration = self._calibrate(seed)

    def __len__(self) -> int:
        return len(self.records)

    def _calibrate(self, seed: int) -> tuple[Calibration, Calibration]:
        n = len(self.records)
        if n < 3:
            return Calibration(0.0, 1.0), Calibration(0.0, 1.0)
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, CALIBRATION_PAIRS)
        b = rng.integers(0, n, CALIBRATION_PAIRS)
        keep = a != b
        a, b = a[keep], b[keep]
        vectors = self.index.vectors
        story = np.einsum("ij,ij->i", vectors[a], vectors[b])
        meta = np.array(
            [
                self.features.similarity(int(x), np.array([y]))[0]
                for x, y in zip(a[:1000], b[:1000], strict=True)
            ]
        )
        return (
            Calibration(float(np.median(story)), float(np.percentile(story, 99.5))),
            Calibration(float(np.median(meta)), float(np.percentile(meta, 99.5))),
        )

    def related(self, a: int, b: int) -> bool:
        """Same franchise: the titles share a franchise stem."""
        return bool(self.franchises[a] & self.franchises[b])

    def recommend(
        self,
        seeds: Sequence[int],
        *,
        n: int = 5,
        offset: int = 0,
        exclude_franchise: bool = True,
        kind: str | None = None,
        min_score: float | None = None,
        alpha: float | None = None,
    ) -> tuple[list[Scored], bool]:
        """The titles most like ``seeds`` (catalogue positions), ranks ``offset`` .. ``offset + n - 1``, and
        whether more follow."""
        if not seeds or not len(self.records):
            return [], False
        alpha = self.alpha if alpha is None else alpha
        seeds = list(dict.fromkeys(seeds))
        query = self.index.vectors[seeds].mean(axis=0)  # inner product with the mean = mean cosine
        seed_set = set(seeds)
        seed_franchises = (
            frozenset().union(*(self.franchises[s] for s in seeds)) if exclude_franchise else None
        )
        wanted_kind = kind.casefold() if kind else None
        need = offset + n + 1
        k = max(self.candidates, need * 3)
        while True:
            cosines, positions = self.index.search(query, k + len(seeds))
            keep = [
                i for i, p in enumerate(positions.tolist())
                if p not in seed_set
                and not (seed_franchises and self.franchises[p] & seed_franchises)
                and (wanted_kind is None or self.records[p].kind.casefold() == wanted_kind)
                and (min_score is None or (self.records[p].score or 0.0) >= min_score)
            ]  # fmt: skip
            if len(keep) >= need or k >= len(self.records):
                break
            k = min(len(self.records), k * 4)
        if not keep:
            return [], False
        positions = positions[keep]
        story = self.story_calibration.apply(cosines[keep].astype(np.float64))
        meta_raw = np.mean([self.features.similarity(s, positions) for s in seeds], axis=0)
        meta = self.metadata_calibration.apply(meta_raw)
        total = alpha * story + (1 - alpha) * meta
        order = np.argsort(-total, kind="stable")
        page = order[offset : offset + n]
        out = [
            Scored(
                int(positions[j]),
                round(float(total[j]), 4),
                round(float(story[j]), 4),
                round(float(meta[j]), 4),
                self.reason(seeds, int(positions[j]), float(story[j])),
            )
            for j in page
        ]
        return out, len(order) > offset + n

    def reason(self, seeds: Sequence[int], position: int, story: float) -> str:
        """One line: "Sci-Fi, Space in common; same studio (Sunrise); similar story" (several seeds: the
        closest one is named)."""
        seed = seeds[0]
        if len(seeds) > 1:
            sims = [float(self.features.similarity(s, np.array([position]))[0]) for s in seeds]
            seed = seeds[int(np.argmax(sims))]
        shared = self.features.shared(seed, position)
        parts = []
        if shared.labels:
            parts.append(", ".join(shared.labels[:3]) + " in common")
        if shared.studios:
            parts.append(f"same studio ({', '.join(shared.studios[:2])})")
        if shared.demographic:
            parts.append(f"both {shared.demographic}")
        if story >= STORY_REASON:
            parts.append("similar story")
        if self.related(seed, position):
            parts.insert(0, "same franchise")
        if not parts:
            parts.append("similar story" if story >= STORY_FALLBACK else "close in type, era and score")
        line = "; ".join(parts)
        if len(seeds) > 1:
            line = f"like {self.records[seed].title}: {line}"
        return line[:1].upper() + line[1:]
