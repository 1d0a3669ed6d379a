"""PNG plots shared by the ``anibot eval`` reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: the CLI stays light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def confusion_png(
    confusion: dict[tuple[str, str], int], path: Path, *, title: str, xlabel: str, ylabel: str = "truth"
) -> Path:
    """A row-normalised confusion matrix of ``(truth, answer) -> count``; answers that are no truth label
    (``unknown``, ``(none)``) get columns after the truth labels."""
    truths = sorted({t for t, _ in confusion})
    said = truths + sorted({s for _, s in confusion} - set(truths))
    matrix = np.zeros((len(truths), len(said)))
    for (t, s), n in confusion.items():
        matrix[truths.index(t), said.index(s)] = n
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = pyplot().subplots(figsize=(1.5 + 0.55 * len(said), 1.2 + 0.45 * len(truths)))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(said)), said, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(truths)), truths, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return save(fig, path)
