"""Hash-based splits (core.datasets.splits): the picture folders' 65/10/25 and the flat face sets' 70/15/15 split
through one function, with exactly the assignments the two formulas of their own gave before."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.datasets.face_sets import FLAT_SHARES, flat_split_of
from core.datasets.folders import LabelledImage
from core.datasets.splits import hash_part, hash_position
from core.evaluation.picture_folders import SPLIT_SHARES, picture_split


def old_picture_split(name: str) -> str:
    """core.evaluation.picture_folders.picture_split as it was before core.datasets.splits."""
    value = int(hashlib.sha256(Path(name).name.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for split, share in {"train": 0.65, "val": 0.10, "test": 0.25}.items():
        edge += share
        if value < edge:
            return split
    return "test"


def old_flat_split_of(item: LabelledImage) -> str:
    """core.datasets.face_sets.flat_split_of as it was before core.datasets.splits."""
    digest = hashlib.sha256(f"{item.label}/{item.path.name}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for split, share in {"train": 0.70, "val": 0.15, "test": 0.15}.items():
        edge += share
        if position < edge:
            return split
    return "test"


def names(n: int) -> list[str]:
    """File names of the kinds the folders hold: numbered, hashed, with folders, non-ASCII, odd."""
    out = []
    for i in range(n):
        out += [f"{i}.jpg", f"{i:06d}.png", f"images/{i}.webp", f"キャラ_{i}.jpeg"]
        out.append(hashlib.md5(str(i).encode()).hexdigest() + ".jpg")
    return [*out, "", ".hidden", "no-suffix", "a b c.JPG"]


def test_picture_split_assigns_every_name_as_before() -> None:
    every = names(3000)
    got = [picture_split(n) for n in every]
    assert got == [old_picture_split(n) for n in every]
    shares = {part: got.count(part) / len(got) for part in SPLIT_SHARES}
    for part, share in SPLIT_SHARES.items():  # every part is used, near its share
        assert abs(shares[part] - share) < 0.02, shares


def test_flat_split_assigns_every_image_as_before() -> None:
    items = [
        LabelledImage(Path("/sets") / character / name, character)
        for character in ("luffy", "nami", "ゾロ", "chopper 2")
        for name in names(800)
        if name
    ]
    got = [flat_split_of(i) for i in items]
    assert got == [old_flat_split_of(i) for i in items]
    shares = {part: got.count(part) / len(got) for part in FLAT_SHARES}
    for part, share in FLAT_SHARES.items():
        assert abs(shares[part] - share) < 0.02, shares


def test_hash_position_is_the_digest_prefix_over_its_scale() -> None:
    digest = hashlib.sha256(b"key").digest()
    assert hash_position("key") == int.from_bytes(digest[:8], "big") / 2**64
    assert hash_position("key", bits=32, closed=True) == int.from_bytes(digest[:4], "big") / (2**32 - 1)
    assert 0.0 <= hash_position("key", bits=16) < 1.0


def test_hash_part_walks_the_fractions_in_order_and_the_last_takes_the_rest() -> None:
    keys = [f"k{i}" for i in range(2000)]
    for key in keys:
        position = hash_position(key)
        expected = "a" if position < 0.2 else "b" if position < 0.2 + 0.5 else "c"
        assert hash_part(key, {"a": 0.2, "b": 0.5, "c": 0.3}) == expected
    assert {hash_part(k, {"only": 1.0}) for k in keys} == {"only"}
    assert {hash_part(k, {"never": 0.0, "all": 1.0}) for k in keys} == {"all"}


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({}, "no parts"),
        ({"a": 0.5, "b": 0.4}, "add up to 0.9"),
        ({"a": 1.2, "b": -0.2}, "negative"),
    ],
)
def test_bad_fractions_are_refused(fractions: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hash_part("key", fractions)


def test_bad_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="bits"):
        hash_position("key", bits=12)
