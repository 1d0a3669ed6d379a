"""Splits by a hash of each item's key: the same part for the same key on every machine, for every seed, whatever
else the folder holds. The picture folders' train / val / test split
(:func:`core.evaluation.picture_folders.picture_split`) and the flat face sets' one
(:func:`core.datasets.face_sets.flat_split_of`) both cut here."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping


def hash_position(key: str, *, bits: int = 64, closed: bool = False) -> float:
    """The key's place from 0 to 1: the first ``bits`` bits of the sha256 of its UTF-8 bytes over ``2**bits``
    (below 1), or over ``2**bits - 1`` with ``closed`` (1 itself reachable)."""
    if bits % 8 or not 8 <= bits <= 256:
        raise ValueError(f"bits must be a multiple of 8 from 8 to 256, not {bits}")
    prefix = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[: bits // 8], "big")
    return prefix / (2**bits - 1 if closed else 2**bits)


def hash_part(key: str, fractions: Mapping[str, float], *, bits: int = 64, closed: bool = False) -> str:
    """The part of ``fractions`` (name -> share, adding up to 1, walked in order) that the key's
    :func:`hash_position` falls in; the last part takes whatever the rounding of the shares leaves."""
    if not fractions:
        raise ValueError("fractions has no parts")
    if any(share < 0 for share in fractions.values()):
        raise ValueError(f"fractions must not be negative: {dict(fractions)}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ValueError(f"fractions add up to {total:g}, not 1: {dict(fractions)}")
    position = hash_position(key, bits=bits, closed=closed)
    edge = 0.0
    for part, share in fractions.items():
        edge += share
        if position < edge:
            return part
    return part
