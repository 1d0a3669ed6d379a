"""The character gallery: reference embeddings in a faiss index, and identification by character.

A character may have many reference images; a query is matched against all of them (inner product of
L2-normalised vectors = cosine similarity), and the references are aggregated per character (its best
similarity), so the top-N candidates are N different characters. The answer is :data:`core.vision.results.UNKNOWN`
when even the best character is below the threshold; the candidates are listed anyway.

Confidence is a logistic calibration of similarity, ``sigmoid(scale * (similarity - shift))``, fitted on
validation data by :func:`fit_threshold_and_calibration` (the embedder's manifest stores both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.vision.results import UNKNOWN, Candidate

MAX_SEARCH_K = 256


@dataclass(frozen=True)
class GalleryItem:
    name: str
    series: str
    image_sha256: str


@dataclass(frozen=True)
class Calibration:
    """confidence = sigmoid(scale * (similarity - shift))."""

    scale: float = 20.0
    shift: float = 0.5

    def confidence(self, similarity: np.ndarray | float) -> np.ndarray | float:
        z = np.clip(self.scale * (np.asarray(similarity, dtype=np.float64) - self.shift), -60.0, 60.0)
        p = 1.0 / (1.0 + np.exp(-z))
        return float(p) if np.ndim(p) == 0 else p

    def to_dict(self) -> dict[str, float]:
        return {"scale": float(self.scale), "shift": float(self.shift)}

    @classmethod
    def from_dict(cls, data: dict[str, float] | None) -> Calibration:
        if not data:
            return cls()
        return cls(scale=float(data["scale"]), shift=float(data["shift"]))


@dataclass(frozen=True)
class Identification:
    """The answer for one head.

    ``name`` is a character name or UNKNOWN; ``confidence`` is the confidence in that answer: the top
    candidate's calibrated confidence, or for UNKNOWN one minus it (1.0 when there is no candidate at all).
    """

    name: str
    confidence: float
    candidates: tuple[Candidate, ...] = ()


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class Gallery:
    """An in-memory faiss ``IndexFlatIP`` over the references of every enrolled character."""

    def __init__(self, embeddings: np.ndarray, items: Sequence[GalleryItem], *, version: str) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (n, dim), got shape {embeddings.shape}")
        if len(items) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {len(items)} items")
        import faiss  # imported on first use: light processes (bots, the Celery parent) never load it

        index = faiss.IndexFlatIP(int(embeddings.shape[1]))
        if len(items):
            index.add(_normalise(embeddings))
        self._setup(index, items, version)

    @classmethod
    def from_index(cls, index: Any, items: Sequence[GalleryItem], *, version: str) -> Gallery:
        """A gallery over a ready faiss inner-product index of L2-normalised rows (e.g. read from a file)."""
        if index.ntotal != len(items):
            raise ValueError(f"index holds {index.ntotal} rows but {len(items)} items")
        gallery = cls.__new__(cls)
        gallery._setup(index, items, version)
        return gallery

    def _setup(self, index: Any, items: Sequence[GalleryItem], version: str) -> None:
        self.index = index
        self.dim = int(index.d)
        self.items = tuple(items)
        self.version = version
        # character key (name, series) of each row, and the most references any character has
        self._keys = [(item.name, item.series) for item in self.items]
        counts: dict[tuple[str, str], int] = {}
        for key in self._keys:
            counts[key] = counts.get(key, 0) + 1
        self.n_characters = len(counts)
        self._max_refs = max(counts.values(), default=0)
        # (name, series) of each taught character
        self.characters: tuple[tuple[str, str], ...] = tuple(counts)

    @classmethod
    def empty(cls, dim: int, version: str = "empty") -> Gallery:
        return cls(np.zeros((0, dim), np.float32), [], version=version)

    def __len__(self) -> int:
        return len(self.items)

    def _search(self, queries: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
        ntotal = self.index.ntotal
        k = min(ntotal, max(1, top_n * self._max_refs), MAX_SEARCH_K)
        while True:
            sims, idx = self.index.search(queries, k)
            if k >= ntotal:
                return sims, idx
            # every query must show top_n distinct characters (or the whole gallery); widen k when not
            wanted = min(top_n, self.n_characters)
            if all(len({self._keys[j] for j in row if j >= 0}) >= wanted for row in idx):
                return sims, idx
            k = min(ntotal, k * 2)

    def identify(
        self,
        queries: np.ndarray,
        *,
        top_n: int,
        threshold: float,
        calibration: Calibration,
    ) -> list[Identification]:
        queries = _normalise(queries)
        if queries.shape[0] == 0 or (queries.shape[0] == 1 and queries.size == 0):
            return []
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dim {queries.shape[1]} != gallery dim {self.dim}")
        top_n = max(1, int(top_n))
        if self.index.ntotal == 0:
            return [Identification(UNKNOWN, 1.0, ()) for _ in range(queries.shape[0])]
        sims, idx = self._search(queries, top_n)
        results = []
        for row_sims, row_idx in zip(sims, idx, strict=True):
            best: dict[tuple[str, str], float] = {}
            for s, j in zip(row_sims, row_idx, strict=True):
                if j < 0:
                    continue
                key = self._keys[j]
                if key not in best:  # faiss returns results best first
                    best[key] = float(s)
                    if len(best) >= top_n:
                        break
            ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top_n]
            candidates = tuple(
                Candidate(
                    name=name,
                    series=series,
                    similarity=float(np.clip(s, -1.0, 1.0)),
                    confidence=float(calibration.confidence(s)),
                )
                for (name, series), s in ranked
            )
            top = candidates[0]
            if top.similarity >= threshold:
                results.append(Identification(top.name, top.confidence, candidates))
            else:
                results.append(Identification(UNKNOWN, 1.0 - top.confidence, candidates))
        return results


def fit_threshold_and_calibration(
    known_sims: Sequence[float] | np.ndarray,
    known_correct: Sequence[bool] | np.ndarray,
    unknown_sims: Sequence[float] | np.ndarray,
    *,
    l2: float = 1e-6,
    iterations: int = 50,
    balanced: bool = True,
) -> tuple[float, Calibration]:
    """The identification threshold and the confidence calibration, from validation searches.

    ``known_sims``: best similarity of queries whose character is in the gallery, ``known_correct`` whether
    their top-1 was right; ``unknown_sims``: best similarity of queries whose character is not in the gallery.
    A query should be *accepted* when its top-1 is right and rejected (UNKNOWN) otherwise, so the threshold
    maximises the balanced accuracy of that decision (midpoint of the best plateau of thresholds), or with
    ``balanced=False`` its plain accuracy over the queries as given (their mix of known and unknown characters is
    then the prior: better when top-1 is often wrong, where balancing would reject nearly everything). The
    calibration is a logistic regression of "top-1 is right" on the best similarity (Newton steps, Platt's
    smoothed targets, a tiny L2).
    """
    ks = np.asarray(known_sims, dtype=np.float64).ravel()
    kc = np.asarray(known_correct, dtype=bool).ravel()
    us = np.asarray(unknown_sims, dtype=np.float64).ravel()
    if len(ks) != len(kc):
        raise ValueError("known_sims and known_correct differ in length")
    sims = np.concatenate([ks, us])
    accept = np.concatenate([kc, np.zeros(len(us), bool)])
    if len(sims) == 0:
        return 0.5, Calibration()
    pos, neg = sims[accept], sims[~accept]

    # --- threshold: maximise balanced accuracy of accept (sim >= t) vs reject -------------------------------
    # a threshold in (v[i-1], v[i]] decides like grid[i]; grid[0] is below all values, grid[-1] above all
    values = np.unique(sims)
    grid = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    tpr = (pos[None, :] >= grid[:, None]).mean(axis=1) if len(pos) else np.zeros(len(grid))
    tnr = (neg[None, :] < grid[:, None]).mean(axis=1) if len(neg) else np.zeros(len(grid))
    if balanced:
        score = (tpr + tnr) / 2 if len(pos) and len(neg) else tpr if len(pos) else tnr
    else:
        score = (tpr * len(pos) + tnr * len(neg)) / (len(pos) + len(neg))
    best = np.flatnonzero(score >= score.max() - 1e-12)
    # the widest margin: the middle of the widest run of equally good thresholds
    runs = np.split(best, np.flatnonzero(np.diff(best) != 1) + 1)

    def bounds(run: np.ndarray) -> tuple[float, float]:
        a, b = int(run[0]), int(run[-1])
        lo = values[a - 1] if a > 0 else grid[0]
        hi = values[b] if b < len(values) else grid[-1]
        return float(lo), float(hi)

    lo, hi = max((bounds(r) for r in runs), key=lambda lh: lh[1] - lh[0])
    threshold = (lo + hi) / 2

    # --- calibration: logistic regression p = sigmoid(w * s + b) --------------------------------------------
    # Platt's targets keep a separable validation set from pushing the scale to infinity
    n_pos, n_neg = int(accept.sum()), int((~accept).sum())
    y = np.where(accept, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    centre = float(sims.mean())
    x = sims - centre
    n = len(x)

    def loss(w: float, b: float) -> float:
        z = w * x + b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * n * w * w)

    w, b = 10.0, float(np.log(y.mean() / (1 - y.mean())))
    current = loss(w, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(w * x + b, -60, 60)))
        g = np.array([np.sum((p - y) * x) + l2 * n * w, np.sum(p - y)])
        r = np.maximum(p * (1 - p), 1e-12)
        h = np.array([[np.sum(r * x * x) + l2 * n, np.sum(r * x)], [np.sum(r * x), np.sum(r) + 1e-9]])
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            step = g
        t = 1.0  # backtracking: Newton steps on a (nearly) separable set overshoot
        while t > 1e-6 and loss(w - t * step[0], b - t * step[1]) > current:
            t /= 2
        if t <= 1e-6:
            break
        w, b = w - t * step[0], b - t * step[1]
        previous, current = current, loss(w, b)
        if previous - current < 1e-10 * max(1.0, abs(previous)):
            break
    if not (np.isfinite(w) and np.isfinite(b)) or w <= 0:
        return threshold, Calibration(scale=20.0, shift=threshold)
    scale = float(min(w, 200.0))
    shift = float(centre - b / w)
    return threshold, Calibration(scale=max(scale, 1.0), shift=shift)
