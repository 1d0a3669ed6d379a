"""Budgets of the tests that train a starter model for real, kept in one place: the smallest runs that still go
through every stage of the trainer."""

from __future__ import annotations

from typing import Any

# train_starter_embedder's: one epoch of two steps on 32 px crops of a few renders per character
TINY_EMBEDDER: dict[str, Any] = {
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 12,
    "input_size": 32,
    "portraits_per_character": 2,
    "extra_identities": 4,
    "extra_renders": 2,
}
