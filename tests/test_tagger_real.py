"""The starter tagger with real faces: pretrained weights, flat face sets, fitted per-tag thresholds, the domain
gate that keeps tags without a real training face quiet on real pictures, and the hallucination figure.

Everything here runs on stand-ins made in ``tmp_path`` (drawn portraits in a flat folder-per-character set); no
built models are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.vision.results import Tag
from core.vision.slots.tagger import TagDef

torch = pytest.importorskip("torch")

# flat set: folder = a character with a canonical look, pictures = a drawn cast member's portraits, so the drawn
# look (cat ears, a hat, glasses) is one no real label names
FLAT_STAND_INS = {"nico_robin": "kuro", "nami": "akane", "roronoa_zoro": "rin"}


def flat_face_set(root: Path, per_character: int = 14) -> Path:
    from core.datasets.synth import render_portrait

    for index, (label, key) in enumerate(FLAT_STAND_INS.items()):
        folder = root / label
        folder.mkdir(parents=True)
        for n in range(per_character):
            render_portrait(key, n * 41 + index, size=96).convert("RGB").save(folder / f"{n}.jpg")
    return root


def test_fit_tag_thresholds_quiets_unsupported_tags_and_fits_supported_ones() -> None:
    from core.learning.starter.tagger import fit_tag_thresholds

    # tag 0: supported (real positives); tag 1: no real training face, scores high on real validation faces
    synth_probs = np.array([[0.9, 0.9], [0.1, 0.8], [0.2, 0.1], [0.8, 0.2]])
    synth_tags = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], np.float32)
    real_probs = np.array([[0.6, 0.7], [0.3, 0.5], [0.65, 0.2]])
    real_tags = np.array([[1, 0], [0, 0], [1, 0]], np.float32)
    real_known = np.array([[True, False]] * 3)
    supported = np.array([True, False])
    out = fit_tag_thresholds(0.5, synth_probs, synth_tags, real_probs, real_tags, real_known, supported)
    assert out[1] == pytest.approx(0.72)  # above every real validation score (0.7) plus the margin
    assert (real_probs[:, 1] < out[1]).all()
    # the supported tag's threshold separates its real and synthetic positives from the negatives
    assert 0.3 < out[0] <= 0.6
    f1 = fit_tag_thresholds(
        0.5, synth_probs, synth_tags, np.zeros((0, 2)), real_tags[:0], real_known[:0], supported
    )
    assert f1[1] == 0.5  # no real validation pictures: the general threshold
    capped = fit_tag_thresholds(
        0.5, synth_probs, synth_tags, np.array([[0.5, 0.995]]), real_tags[:1], real_known[:1], supported
    )
    assert capped[1] == pytest.approx(0.999)  # left out: it cannot be kept quiet on real pictures otherwise


def test_tagger_trains_with_pretrained_weights_on_a_flat_set_and_stays_quiet_on_unseen_tags(
    tmp_path: Path,
) -> None:
    from core.datasets.face_sets import load_any_face_set
    from core.datasets.real_faces import canonical_tags, load_images
    from core.learning.starter.tagger import load_eager, synth_vocabulary, train_starter_tagger
    from core.settings import Settings
    from core.vision.slots.base import Manifest
    from core.vision.slots.tagger import TAGGER_LOADERS, wd14_preprocess

    faces = flat_face_set(tmp_path / "faces")
    manifest = train_starter_tagger(
        tmp_path / "tagger", n_train=8, epochs=1, input_size=64, n_val=8, faces_dirs=[faces]
    )
    splits = load_any_face_set(faces)
    assert splits.val and splits.train
    extra = manifest.extra
    assert extra["pretrained"] is True and extra["backbone"] == "efficientnet_lite0"
    assert extra["n_real_train"] == len(splits.train)
    supported = set(extra["real_supported_tags"])
    looks = {t for label in FLAT_STAND_INS for t in canonical_tags(label)}
    # only what a canonical look names, and the face's own character tag, is a real positive
    assert supported and supported <= looks | set(FLAT_STAND_INS)
    assert "cat_ears" in synth_vocabulary() and "cat_ears" not in supported
    # the face set's characters are character tags too, after the synthetic cast's; only theirs have real support
    characters = extra["characters"]
    assert characters[-len(FLAT_STAND_INS) :] == sorted(FLAT_STAND_INS)
    assert {c for c in characters if c in supported} <= set(FLAT_STAND_INS)

    loaded = Manifest.load(tmp_path / "tagger")
    tagger = TAGGER_LOADERS[loaded.format](loaded, Settings(_env_file=None))
    val_images = load_images(splits.val)
    for image in val_images:
        fired = {t.name for t in tagger.tag(image) if t.category == "general"}
        assert fired <= supported, fired - supported
    # the exported file is the eager model (gate and per-tag scale included)
    x = np.concatenate([wd14_preprocess(image, 64) for image in val_images[:3]])
    with torch.no_grad():
        eager = load_eager(loaded)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(tagger._run(x), eager, atol=1e-4)


class FixedTagger:
    """Says the same tags of every picture."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def tag(self, image: object) -> list[Tag]:
        return [Tag(n, 0.9, "general") for n in self.names] + [Tag("general", 0.9, "rating")]


def test_hallucination_counts_appearance_tags_outside_the_look(tmp_path: Path) -> None:
    from core.datasets.face_sets import load_any_face_set
    from core.evaluation.tagging import evaluate_real_colours

    faces = flat_face_set(tmp_path / "faces", per_character=8)
    n_test = len(load_any_face_set(faces).test)
    assert n_test > 0
    # black hair is right for Robin and wrong for Nami and Zoro; cat ears are wrong for everyone; smile and solo
    # are no appearance tags
    report = evaluate_real_colours(FixedTagger(["black_hair", "cat_ears", "smile", "solo"]), [faces])
    h = report.hallucination
    assert h is not None and h.n_pictures == n_test
    assert h.rate == 1.0
    assert h.counts["cat_ears"] == n_test and "smile" not in h.counts and "solo" not in h.counts
    robin = sum(i.label == "nico_robin" for i in load_any_face_set(faces).test)
    assert h.counts.get("black_hair", 0) == n_test - robin
    assert h.per_face == pytest.approx((2 * n_test - robin) / n_test)
    quiet = evaluate_real_colours(FixedTagger(["smile"]), [faces]).hallucination
    assert quiet is not None and quiet.rate == 0.0 and quiet.counts == {}


def test_every_look_says_yes_or_no_to_the_named_accessories_but_the_unsure_ones() -> None:
    from core.datasets.real_faces import CANONICAL_LOOKS, UNSURE_LOOKS
    from core.learning.starter.tagger import look_extras, synth_vocabulary, weakly_known

    vocab = synth_vocabulary()
    assert {"hat", "bow", "hairband", "twintails"} <= look_extras()
    robin = dict(zip(vocab, weakly_known(vocab, CANONICAL_LOOKS["nico_robin"]), strict=True))
    assert robin["hat"] and robin["twintails"]  # known: Robin's look names neither, so both are no
    assert (
        not robin["cat_ears"] and not robin["glasses"] and not robin["smile"]
    )  # no look names them: unknown
    luffy = weakly_known(vocab, CANONICAL_LOOKS["monkey_d_luffy"], UNSURE_LOOKS["monkey_d_luffy"])
    assert not dict(zip(vocab, luffy, strict=True))["hat"]
    assert not weakly_known(vocab, ()).any()  # a character without a look labels nothing


class NamingTagger:
    """Names every face Nami (a character tag it has), as a WD tagger with a character vocabulary would."""

    tags: tuple[TagDef, ...] = (TagDef(0, "nami", 4, 1), TagDef(1, "nico_robin", 4, 1), TagDef(2, "black_hair", 0, 1))

    def tag(self, image: object) -> list[Tag]:
        return [Tag("nami", 0.95, "character"), Tag("black_hair", 0.9, "general")]


def test_character_report_counts_right_wrong_and_names_given_to_unknown_characters(tmp_path: Path) -> None:
    from core.datasets.face_sets import load_any_face_set
    from core.evaluation.tagging import evaluate_real_characters

    faces = flat_face_set(tmp_path / "faces", per_character=8)
    test = load_any_face_set(faces).test
    by_label = {label: sum(i.label == label for i in test) for label in FLAT_STAND_INS}
    report = evaluate_real_characters(NamingTagger(), [faces])
    # Nami and Robin have tags: Nami's faces are right, Robin's wrong; Zoro has none, so any name there is wrong
    assert report.n_known == by_label["nami"] + by_label["nico_robin"]
    assert report.right == by_label["nami"] and report.wrong == by_label["nico_robin"]
    assert report.n_unknown == by_label["roronoa_zoro"] and report.named_unknown == by_label["roronoa_zoro"]
    assert report.confusion.get("nico_robin -> nami") == by_label["nico_robin"] or by_label["nico_robin"] == 0
    assert "named right" in report.markdown()
