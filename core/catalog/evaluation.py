"""How good the recommendations are, on a whole catalogue (``anibot eval recommend``).

- franchise recall@10: for every title with related entries (titles sharing a franchise stem), the share of
  them found in its top 10 with franchise exclusion off (``min(10, related)`` in the denominator);
- genre precision@10: with franchise exclusion on (what users get), the share of the top 10 sharing at least
  one genre with the query; and genre overlap@10, the stricter share of a recommendation's genres that the
  query has.

Each is measured for the hybrid (the configured alpha), the synopsis alone (alpha 1), the metadata alone
(alpha 0) and a random draw, so that the numbers can be read against each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.catalog.metadata import split_list
from core.catalog.recommender import Recommender

K = 10


@dataclass(frozen=True)
class EvalRow:
    name: str
    alpha: float | None  # None: random
    franchise_recall: float
    genre_precision: float
    genre_overlap: float
    ms_per_query: float


@dataclass(frozen=True)
class EvalReport:
    titles: int
    with_relatives: int
    with_genres: int
    embedder: str
    rows: tuple[EvalRow, ...]


def evaluate(recommender: Recommender, embedder: str, *, alphas: dict[str, float] | None = None,
             seed: int = 0) -> EvalReport:  # fmt: skip
    n = len(recommender)
    genres = [frozenset(split_list(r.genres)) for r in recommender.records]
    relatives = [
        {j for j in range(n) if j != i and recommender.related(i, j)} if recommender.franchises[i] else set()
        for i in range(n)
    ]
    with_relatives = [i for i in range(n) if relatives[i]]
    with_genres = [i for i in range(n) if genres[i]]
    configs = alphas or {
        f"hybrid (alpha {recommender.alpha:g})": recommender.alpha,
        "synopsis only (alpha 1)": 1.0,
        "metadata only (alpha 0)": 0.0,
    }
    rows = []
    for name, alpha in configs.items():
        started = time.perf_counter()
        recall = [
            len({s.position for s in recommender.recommend([i], n=K, exclude_franchise=False, alpha=alpha)[0]}
                & relatives[i]) / min(K, len(relatives[i]))
            for i in with_relatives
        ]  # fmt: skip
        lists = {
            i: [s.position for s in recommender.recommend([i], n=K, alpha=alpha)[0]] for i in with_genres
        }
        elapsed = time.perf_counter() - started
        precision, overlap = _genre_scores(lists, genres)
        queries = len(with_relatives) + len(with_genres)
        rows.append(EvalRow(name, alpha, _mean(recall), precision, overlap, 1000 * elapsed / max(1, queries)))
    rng = np.random.default_rng(seed)
    recall = [
        len(set(rng.choice(np.delete(np.arange(n), i), min(K, n - 1), replace=False).tolist()) & relatives[i])
        / min(K, len(relatives[i]))
        for i in with_relatives
    ]
    lists = {}
    for i in with_genres:
        others = [j for j in range(n) if j != i and not recommender.related(i, j)]
        lists[i] = rng.choice(others, min(K, len(others)), replace=False).tolist() if others else []
    precision, overlap = _genre_scores(lists, genres)
    rows.append(EvalRow("random", None, _mean(recall), precision, overlap, 0.0))
    return EvalReport(n, len(with_relatives), len(with_genres), embedder, tuple(rows))


def _genre_scores(lists: dict[int, list[int]], genres: list[frozenset[str]]) -> tuple[float, float]:
    hit, overlap = [], []
    for query, recommended in lists.items():
        labelled = [r for r in recommended if genres[r]]
        if not labelled:
            continue
        hit.append(sum(bool(genres[r] & genres[query]) for r in labelled) / len(labelled))
        overlap.append(float(np.mean([len(genres[r] & genres[query]) / len(genres[r]) for r in labelled])))
    return _mean(hit), _mean(overlap)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def markdown(report: EvalReport, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"{report.titles} titles; synopsis embedder `{report.embedder}`. Franchise recall@10 over the "
        f"{report.with_relatives} titles with related entries (same franchise stem), franchise exclusion off; "
        f"genre precision@10 and overlap@10 over the {report.with_genres} titles with genres, franchise "
        "exclusion on.",
        "",
        "| ranking | franchise recall@10 | genre precision@10 | genre overlap@10 | ms / query |",
        "|---|---|---|---|---|",
    ]
    for row in report.rows:
        ms = f"{row.ms_per_query:.2f}" if row.alpha is not None else ""
        lines.append(
            f"| {row.name} | {row.franchise_recall:.3f} | {row.genre_precision:.3f} | {row.genre_overlap:.3f} | {ms} |"
        )
    lines += [
        "",
        "genre precision@10: share of the top 10 sharing at least one genre with the query; genre overlap@10: "
        "share of a recommendation's genres that the query has.",
        "",
    ]
    return "\n".join(lines)
