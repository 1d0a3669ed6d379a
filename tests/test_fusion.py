"""Character tags fused with the gallery per head (core.characters.fusion) and Danbooru names both ways."""

from __future__ import annotations

import pytest

from core.characters.danbooru import from_tag, name_key, same_character, to_tag
from core.characters.fusion import CropEvidence, FusionParams, fuse
from core.characters.looks import Colours, known_colours
from core.vision.results import UNKNOWN, Box, Candidate, Head, Tag

# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "name", "series"),
    [
        ("rem_(re:zero)", "Rem", "Re:Zero"),
        ("hatsune_miku", "Hatsune Miku", ""),
        ("saber_(fate/stay_night)", "Saber", "Fate/Stay Night"),
        ("natsu_tachibana_(forest_song)", "Natsu Tachibana", "Forest Song"),
        ("星野ひかり_(synthetic_skies)", "星野ひかり", "Synthetic Skies"),
        ("k-on!", "K-On!", ""),
        ("suzumiya_haruhi_no_yuuutsu", "Suzumiya Haruhi no Yuuutsu", ""),
    ],
)
def test_tags_are_written_as_people_write_them_and_back(tag: str, name: str, series: str) -> None:
    written = from_tag(tag)
    assert (written.name, written.series) == (name, series)
    assert to_tag(written.name, written.series) == tag


def test_same_character_ignores_case_word_order_and_a_missing_series() -> None:
    assert same_character("Rem", "Re:Zero", *(from_tag("rem_(re:zero)").pair))
    assert same_character("Sakura Kinomoto", "Cardcaptor Sakura", *(from_tag("kinomoto_sakura").pair))
    assert same_character("ＲＥＭ", "", "rem", "Re:Zero")  # full width, no series on one side
    assert not same_character("Rem", "Re:Zero", "Rem", "Another Series")
    assert not same_character("Rem", "", "Ram", "")
    assert not same_character("", "", "", "")
    assert name_key("Hatsune  Miku") == name_key("miku_hatsune")
    with pytest.raises(ValueError):
        from_tag("  ")
    with pytest.raises(ValueError):
        to_tag("", "x")


# --- fusion -----------------------------------------------------------------------------------------------------

BOX_A, BOX_B = Box(0, 0, 100, 100), Box(200, 0, 300, 100)
PARAMS = FusionParams(top_n=3)


def unknown_head(box: Box, *candidates: Candidate) -> Head:
    return Head(box=box, detection_score=0.9, candidates=candidates, name=UNKNOWN, confidence=0.6)


def gallery_head(box: Box, name: str, series: str, confidence: float = 0.9) -> Head:
    return Head(
        box=box,
        detection_score=0.9,
        candidates=(Candidate(name, series, confidence, 0.8),),
        name=name,
        confidence=confidence,
        series=series,
        source="gallery",
    )


def char(tag: str, score: float = 0.9) -> Tag:
    return Tag(tag, score, "character")


def test_one_head_and_one_confident_tag_names_that_head() -> None:
    [head] = fuse(
        [unknown_head(BOX_A)], [char("rem_(re:zero)", 0.93), Tag("blue_hair", 0.9, "general")], params=PARAMS
    )
    assert (head.name, head.series, head.source) == ("Rem", "Re:Zero", "tagger")
    assert head.confidence == pytest.approx(0.93)
    assert head.candidates[0].name == "Rem" and head.candidates[0].source == "tagger"


def test_no_character_tags_or_no_heads_change_nothing() -> None:
    heads = [unknown_head(BOX_A)]
    assert fuse(heads, [Tag("blue_hair", 0.9, "general")], params=PARAMS) == heads
    assert fuse([], [char("rem_(re:zero)")], params=PARAMS) == []


def test_the_gallery_and_the_tagger_agreeing_say_both() -> None:
    [head] = fuse([gallery_head(BOX_A, "Rem", "Re:Zero", 0.8)], [char("rem_(re:zero)", 0.9)], params=PARAMS)
    assert (head.name, head.source) == ("Rem", "both")
    assert head.confidence == pytest.approx(1 - 0.2 * 0.1)
    assert [(c.name, c.source) for c in head.candidates] == [("Rem", "both")]


def test_the_confident_gallery_wins_over_a_disagreeing_tagger() -> None:
    [head] = fuse(
        [gallery_head(BOX_A, "Natsu Tachibana", "Forest Song")], [char("rem_(re:zero)", 0.95)], params=PARAMS
    )
    assert (head.name, head.source, head.confidence) == ("Natsu Tachibana", "gallery", 0.9)
    assert ("Rem", "tagger") in [(c.name, c.source) for c in head.candidates]  # the tagger's view is a guess


def test_a_weak_gallery_guess_the_tagger_confirms_names_the_head_from_both() -> None:
    guess = Candidate("Rem", "Re:Zero", 0.4, 0.3)
    [head] = fuse([unknown_head(BOX_A, guess)], [char("rem_(re:zero)", 0.9)], params=PARAMS)
    assert (head.name, head.source) == ("Rem", "both")
    assert head.confidence == pytest.approx(1 - 0.1 * 0.6)
    assert head.candidates[0].similarity == pytest.approx(0.3)


def test_the_gallerys_spelling_wins_for_the_same_character() -> None:
    [head] = fuse(
        [unknown_head(BOX_A)],
        [char("kinomoto_sakura", 0.9)],
        known=[("Sakura Kinomoto", "Cardcaptor Sakura")],
        params=PARAMS,
    )
    assert (head.name, head.series) == ("Sakura Kinomoto", "Cardcaptor Sakura")


def test_two_heads_two_tags_go_by_each_heads_crop_never_one_tag_to_both() -> None:
    tags = [char("rem_(re:zero)", 0.95), char("ram_(re:zero)", 0.9)]
    # the left head's crop looks like Ram, the right one's like Rem (the picture's order says nothing)
    crops = [
        CropEvidence({"ram_(re:zero)": 0.8, "rem_(re:zero)": 0.3}, 0.35),
        CropEvidence({"rem_(re:zero)": 0.7}, 0.35),
    ]
    left, right = fuse([unknown_head(BOX_A), unknown_head(BOX_B)], tags, crops=crops, params=PARAMS)
    assert (left.name, right.name) == ("Ram", "Rem")
    assert left.source == right.source == "tagger"
    assert left.confidence == pytest.approx(0.8) and right.confidence == pytest.approx(0.7)


def test_one_strong_tag_is_given_to_one_head_only() -> None:
    tags = [char("rem_(re:zero)", 0.95)]
    crops = [CropEvidence({"rem_(re:zero)": 0.9}, 0.35), CropEvidence({"rem_(re:zero)": 0.85}, 0.35)]
    heads = fuse([unknown_head(BOX_A), unknown_head(BOX_B)], tags, crops=crops, params=PARAMS)
    assert [h.name for h in heads] == ["Rem", UNKNOWN]


def test_a_tag_that_matches_no_head_names_nobody() -> None:
    tags = [char("rem_(re:zero)", 0.95), char("emilia_(re:zero)", 0.9)]
    crops = [CropEvidence({"rem_(re:zero)": 0.8}, 0.35), CropEvidence({"emilia_(re:zero)": 0.1}, 0.35)]
    left, right = fuse([unknown_head(BOX_A), unknown_head(BOX_B)], tags, crops=crops, params=PARAMS)
    assert left.name == "Rem" and right.name == UNKNOWN and right.source == ""


def test_with_several_heads_the_gallery_keeps_its_head_and_the_tag_goes_to_another() -> None:
    tags = [char("rem_(re:zero)", 0.95)]
    # the tagger's crop evidence for Rem is highest on the gallery's head, but the gallery is confident there
    crops = [CropEvidence({"rem_(re:zero)": 0.9}, 0.35), CropEvidence({"rem_(re:zero)": 0.6}, 0.35)]
    heads = [gallery_head(BOX_A, "Natsu Tachibana", "Forest Song"), unknown_head(BOX_B)]
    natsu, other = fuse(heads, tags, crops=crops, params=PARAMS)
    assert (natsu.name, natsu.source) == ("Natsu Tachibana", "gallery")
    assert (other.name, other.source) == ("Rem", "tagger")


def test_a_tag_naming_the_gallerys_head_is_used_there_and_nowhere_else() -> None:
    tags = [char("natsu_tachibana_(forest_song)", 0.9)]
    crops = [CropEvidence({}, 0.35), CropEvidence({"natsu_tachibana_(forest_song)": 0.9}, 0.35)]
    heads = [gallery_head(BOX_A, "Natsu Tachibana", "Forest Song"), unknown_head(BOX_B)]
    natsu, other = fuse(heads, tags, crops=crops, params=PARAMS)
    assert natsu.source == "both" and other.name == UNKNOWN


def test_hair_and_eye_colours_tell_heads_apart_when_crops_name_nobody() -> None:
    # synthetic cast: Aoi has blue hair and eyes, Akane red hair and yellow eyes (core.datasets.synth.CAST)
    assert known_colours("aoi_sakuragi_(synthetic_skies)") == Colours(
        frozenset({"blue"}), frozenset({"blue"})
    )
    tags = [char("aoi_sakuragi_(synthetic_skies)"), char("akane_hino_(pastel_days)")]
    red = {"red_hair": 0.9, "yellow_eyes": 0.8}
    blue = {"blue_hair": 0.9, "blue_eyes": 0.8}
    # only colours: 0.2 * 1.0 is below min_assign, so lower it to let colours alone decide
    params = FusionParams(min_assign=0.15, top_n=3)
    crops = [CropEvidence(red, 0.35), CropEvidence(blue, 0.35)]
    akane, aoi = fuse([unknown_head(BOX_A), unknown_head(BOX_B)], tags, crops=crops, params=params)
    assert (akane.name, aoi.name) == ("Akane Hino", "Aoi Sakuragi")
    # with the default, colour agreement alone names nobody
    assert [
        h.name for h in fuse([unknown_head(BOX_A), unknown_head(BOX_B)], tags, crops=crops, params=PARAMS)
    ] == [
        UNKNOWN,
        UNKNOWN,
    ]


def test_a_gallery_candidate_helps_assign_a_tag_to_its_head() -> None:
    tags = [char("rem_(re:zero)", 0.9)]
    crops = [CropEvidence({"rem_(re:zero)": 0.5}, 0.35), CropEvidence({"rem_(re:zero)": 0.5}, 0.35)]
    heads = [unknown_head(BOX_A), unknown_head(BOX_B, Candidate("Rem", "Re:Zero", 0.45, 0.4))]
    first, second = fuse(heads, tags, crops=crops, params=PARAMS)
    assert first.name == UNKNOWN and (second.name, second.source) == ("Rem", "both")


def test_candidates_merge_the_same_character_and_stay_within_top_n() -> None:
    guesses = tuple(Candidate(f"Girl {i}", "", 0.5 - i * 0.1, 0.3) for i in range(3))
    [head] = fuse(
        [unknown_head(BOX_A, *guesses)], [char("rem_(re:zero)", 0.9), char("girl_1", 0.7)], params=PARAMS
    )
    names = [(c.name, c.source) for c in head.candidates]
    assert len(names) == 3 and names[0] == ("Rem", "tagger")
    assert ("Girl 1", "both") in names


def test_a_tagger_that_may_only_confirm_never_names_a_head_the_gallery_did_not() -> None:
    confirm = FusionParams(top_n=3, tagger_alone=False)
    tags = [char("rem_(re:zero)", 0.95), char("emilia_(re:zero)", 0.9)]
    # no gallery guess: the tags are guesses only
    [alone] = fuse([unknown_head(BOX_A)], tags, params=confirm)
    assert alone.name == UNKNOWN and {c.name for c in alone.candidates} == {"Rem", "Emilia"}
    # the gallery's guess below its threshold agreeing is not enough: still unknown, the guess marked "both"
    guess = Candidate("Emilia", "Re:Zero", 0.4, 0.3)
    [guessed] = fuse([unknown_head(BOX_A, guess)], tags, params=confirm)
    assert guessed.name == UNKNOWN and ("Emilia", "both") in [(c.name, c.source) for c in guessed.candidates]
    # a head the gallery named is confirmed
    [named] = fuse([gallery_head(BOX_A, "Emilia", "Re:Zero", 0.8)], tags, params=confirm)
    assert (named.name, named.source) == ("Emilia", "both")
    # several heads: nobody named from the tags
    crops = [CropEvidence({"rem_(re:zero)": 0.9}, 0.35), CropEvidence({"emilia_(re:zero)": 0.9}, 0.35)]
    heads = fuse([unknown_head(BOX_A), unknown_head(BOX_B, guess)], tags, crops=crops, params=confirm)
    assert [h.name for h in heads] == [UNKNOWN, UNKNOWN]


def test_the_answer_stays_the_first_candidate_before_a_higher_scoring_guess() -> None:
    # an admin taught this look as "Hoshino Natsu"; the tagger, at 0.99, knows the drawn cast's Natsu Tachibana
    [head] = fuse(
        [gallery_head(BOX_A, "Hoshino Natsu", "", 0.8)],
        [char("natsu_tachibana_(forest_song)", 0.99)],
        params=PARAMS,
    )
    assert head.name == "Hoshino Natsu"
    assert [(c.name, c.source) for c in head.candidates] == [
        ("Hoshino Natsu", "gallery"),
        ("Natsu Tachibana", "tagger"),
    ]
