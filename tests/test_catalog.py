"""Catalogue import (both MyAnimeList CSV layouts) into SQLite and PostgreSQL, and the shipped catalogue."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.catalog.importer import (
    CatalogueError,
    detect_layout,
    import_catalogue,
    parse_duration,
    read_catalogue,
    split_genres,
)
from core.catalog.shipped import SHIPPED_CATALOGUE, ensure_catalogue, load_shipped
from core.catalog.titles import franchise_keys
from core.settings import Settings
from core.storage.store import AnimeRecord, Base, Store
from tests.conftest import REPO, shared_data_dir

HEADER_2023 = (
    "anime_id,Name,English name,Other name,Score,Genres,Synopsis,Type,Episodes,Aired,Premiered,Status,Producers,"
    "Licensors,Studios,Source,Duration,Rating,Rank,Popularity,Favorites,Scored By,Members,Image URL\n"
)
CSV_2023 = HEADER_2023 + (
    '1,Cowboy Bebop,Cowboy Bebop,カウボーイビバップ,8.75,"Action, Award Winning, Sci-Fi","Bounty hunters, in space.\n\n'
    'Second paragraph, with commas.",TV,26.0,"Apr 3, 1998 to Apr 24, 1999",spring 1998,Finished Airing,'
    'Bandai Visual,"Funimation, Bandai Entertainment",Sunrise,Original,24 min per ep,R - 17+,41.0,43,78525,914193.0,'
    "1771505,https://cdn.myanimelist.net/images/anime/4/19644.jpg\n"
    "15,Eyeshield 21,UNKNOWN,アイシールド21,UNKNOWN,Sports,UNKNOWN,TV,UNKNOWN,UNKNOWN,UNKNOWN,Finished Airing,"
    "UNKNOWN,UNKNOWN,UNKNOWN,Manga,UNKNOWN,UNKNOWN,UNKNOWN,UNKNOWN,UNKNOWN,UNKNOWN,UNKNOWN,UNKNOWN\n"
    '5,"Cowboy Bebop: Tengoku no Tobira",Cowboy Bebop: The Movie,Bebop Movie,8.38,"Action, Sci-Fi",A movie.,Movie,1.0,'
    '"Sep 1, 2001",UNKNOWN,Finished Airing,"Sunrise, Bandai Visual",UNKNOWN,Bones,Original,1 hr 55 min,R,189.0,'
    "602,1448,206248.0,360978,UNKNOWN\n"
    "1,Cowboy Bebop,Cowboy Bebop,カウボーイビバップ,8.80,Action,Updated synopsis.,TV,26.0,1998,spring 1998,"
    "Finished Airing,,,Sunrise,Original,24 min per ep,R,,,,,1800000,\n"  # duplicate id: this row wins
    ",No Id,,,,,,,,,,,,,,,,,,,,,,\n"
)
CSV_2020_ANIME = (
    "MAL_ID,Name,Score,Genres,English name,Japanese name,Type,Episodes,Aired,Premiered,Producers,Licensors,"
    "Studios,Source,Duration,Rating,Ranked,Popularity,Members,Favorites,Watching,Completed,On-Hold,Dropped,"
    "Plan to Watch\n"
    '6,Trigun,8.24,"Action, Sci-Fi, Adventure, Comedy, Drama, Shounen",Trigun,トライガン,TV,26,'
    '"Apr 1, 1998 to Sep 30, 1998",Spring 1998,Victor Entertainment,"Funimation, Geneon Entertainment USA",'
    "Madhouse,Manga,24 min. per ep.,PG-13 - Teens 13 or older,328.0,255,558913,13224,1,2,3,4,5\n"
    '7,Witch Hunter Robin,7.27,"Action, Mystery, Police, Supernatural, Drama, Magic",Unknown,'
    "Witch Hunter ROBIN (ウイッチハンターロビン),TV,Unknown,Unknown,Unknown,Unknown,Unknown,Sunrise,Original,"
    "Unknown,Unknown,Unknown,Unknown,Unknown,Unknown,1,2,3,4,5\n"
)
CSV_2020_SYNOPSIS = (
    "MAL_ID,Name,Score,Genres,sypnopsis\n"
    '1,Cowboy Bebop,8.78,"Action, Adventure, Comedy, Drama, Sci-Fi, Space","In the year 2071, ""Cowboys"" hunt '
    'bounties, aboard the Bebop."\n'
    '8,Bouken Ou Beet,6.93,"Adventure, Fantasy, Shounen, Supernatural",Unknown\n'
)


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        st = Store(f"sqlite:///{tmp_path / 'anibot.db'}")
    else:
        st = Store(request.getfixturevalue("pg_database_url"))
        Base.metadata.drop_all(st.engine)
    st.create_all()
    yield st
    st.dispose()


# --- parsing -------------------------------------------------------------------------------------------------


def test_layouts_are_recognised_from_the_header():
    assert detect_layout(HEADER_2023.strip().split(",")) == "2023"
    assert detect_layout(CSV_2020_ANIME.splitlines()[0].split(",")) == "2020"
    assert detect_layout(["MAL_ID", "Name", "Score", "Genres", "synopsis"]) == "2020-synopsis"
    with pytest.raises(CatalogueError, match="Anime Dataset 2023"):
        detect_layout(["id", "title"])


def test_2023_layout_missing_values_quoted_commas_and_duplicates(tmp_path):
    layout, rows = read_catalogue(write(tmp_path, "a.csv", CSV_2023))
    assert layout == "2023"
    records = [r for _, r in rows if isinstance(r, AnimeRecord)]
    assert [r for _, r in rows if isinstance(r, str)] == ["no MyAnimeList id (anime_id='')"]
    bebop = records[0]
    assert bebop.synopsis.startswith("Bounty hunters, in space.\n\nSecond paragraph, with commas.")
    assert bebop.genres == "Action,Award Winning,Sci-Fi"
    assert bebop.japanese_title == "カウボーイビバップ" and bebop.english_title == ""  # same as the title
    assert (bebop.episodes, bebop.year, bebop.duration_min, bebop.members) == (26, 1998, 24.0, 1771505)
    assert bebop.producers == "Bandai Visual" and bebop.studios == "Sunrise"
    eyeshield = records[1]
    assert (eyeshield.score, eyeshield.episodes, eyeshield.synopsis, eyeshield.english_title) == (
        None,
        None,
        "",
        "",
    )
    assert (eyeshield.year, eyeshield.duration_min, eyeshield.studios, eyeshield.image_url) == (
        None,
        None,
        "",
        "",
    )
    movie = records[2]
    assert movie.other_names == "Bebop Movie" and movie.japanese_title == ""  # not Japanese: another name
    assert (movie.duration_min, movie.year, movie.studios) == (115.0, 2001, "Bones")


def test_2020_layouts_split_genres_into_genres_themes_and_demographic(tmp_path):
    layout, rows = read_catalogue(write(tmp_path, "anime.csv", CSV_2020_ANIME))
    trigun, robin = (r for _, r in rows)
    assert layout == "2020"
    assert isinstance(trigun, AnimeRecord) and isinstance(robin, AnimeRecord)
    assert trigun.genres == "Action,Sci-Fi,Adventure,Comedy,Drama" and trigun.demographic == "Shounen"
    assert (trigun.year, trigun.duration_min, trigun.members) == (1998, 24.0, 558913)
    assert trigun.japanese_title == "トライガン"
    assert robin.themes == "Police,Magic" and robin.genres == "Action,Mystery,Supernatural,Drama"
    assert (robin.episodes, robin.english_title, robin.duration_min) == (None, "", None)
    layout, rows = read_catalogue(write(tmp_path, "syn.csv", CSV_2020_SYNOPSIS))
    bebop, beet = (r for _, r in rows)
    assert layout == "2020-synopsis"
    assert isinstance(bebop, AnimeRecord) and isinstance(beet, AnimeRecord)
    assert bebop.synopsis == 'In the year 2071, "Cowboys" hunt bounties, aboard the Bebop.'
    assert bebop.themes == "Space" and beet.synopsis == "" and beet.demographic == "Shounen"


def test_small_parsers():
    assert parse_duration("1 hr 55 min") == 115.0
    assert parse_duration("24 min. per ep.") == 24.0
    assert parse_duration("30 sec per ep") == 0.5
    assert parse_duration("Unknown") is None
    genres = split_genres(["Thriller", "Shoujo Ai", "Seinen", "Military"])
    assert genres == (["Suspense", "Girls Love"], ["Military"], "Seinen")


# --- into the store ------------------------------------------------------------------------------------------


def test_import_is_idempotent_and_updates_rows(store: Store, tmp_path):
    path = write(tmp_path, "a.csv", CSV_2023)
    progress: list[tuple[int, int]] = []
    report = import_catalogue(store, path, progress=lambda done, total: progress.append((done, total)))
    assert (report.rows, report.imported, report.duplicates, len(report.skipped)) == (5, 3, 1, 1)
    assert progress[-1] == (3, 3)
    version = store.catalog_version()
    by_id = {r.mal_id: r for r in store.all_anime()}
    assert set(by_id) == {1, 15, 5}
    assert by_id[1].synopsis == "Updated synopsis." and by_id[1].score == 8.8  # the last duplicate row won
    assert by_id[5].title == "Cowboy Bebop: Tengoku no Tobira" and by_id[5].studios == "Bones"
    again = import_catalogue(store, path)
    assert again.imported == 3 and store.anime_count() == 3 and store.catalog_version() > version
    changed = CSV_2023.replace("A movie.", "A longer movie synopsis.")
    import_catalogue(store, write(tmp_path, "b.csv", changed))
    assert {r.mal_id: r.synopsis for r in store.all_anime()}[5] == "A longer movie synopsis."
    import_catalogue(store, write(tmp_path, "c.csv", CSV_2020_SYNOPSIS))  # another layout adds and updates
    assert store.anime_count() == 4
    assert {r.mal_id: r.themes for r in store.all_anime()}[1] == "Space"


def test_create_all_adds_columns_to_an_older_anime_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as c:  # the table as the first version of the store made it
        c.execute(text("CREATE TABLE anibot_anime (id INTEGER PRIMARY KEY, mal_id INTEGER UNIQUE, title VARCHAR(500), "
                       "english_title VARCHAR(500), genres VARCHAR(1000), synopsis TEXT, score FLOAT, "
                       "kind VARCHAR(32), year INTEGER)"))  # fmt: skip
        c.execute(text("INSERT INTO anibot_anime (mal_id, title, english_title, genres, synopsis, kind) "
                       "VALUES (1, 'Cowboy Bebop', '', 'Action', '', 'TV')"))  # fmt: skip
    engine.dispose()
    st = Store(url)
    st.create_all()
    (bebop,) = st.all_anime()
    assert bebop.title == "Cowboy Bebop" and bebop.studios == "" and bebop.episodes is None
    st.upsert_anime([AnimeRecord(mal_id=1, title="Cowboy Bebop", studios="Sunrise", episodes=26)])
    assert st.all_anime()[0].studios == "Sunrise"
    st.dispose()


def test_shipped_catalogue_loads_into_an_empty_store_only(store: Store):
    settings = Settings(catalog_shipped=True)
    report = ensure_catalogue(settings, store)
    assert report is not None and report.imported >= 60 and not report.skipped and not report.duplicates
    assert ensure_catalogue(settings, store) is None  # not empty any more
    records = store.all_anime()
    assert all(r.synopsis and r.genres and r.studios and r.kind and r.year for r in records)
    stems: dict[frozenset[str], int] = {}
    for r in records:
        keys = franchise_keys([r.title, r.english_title])
        for other in stems:
            if keys & other:
                stems[other] += 1
                break
        else:
            stems[keys] = 1
    assert sum(n > 1 for n in stems.values()) >= 10  # several franchises with sequels


def test_shipped_catalogue_is_off_when_disabled(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'x.db'}")
    st.create_all()
    assert ensure_catalogue(Settings(catalog_shipped=False), st) is None and st.anime_count() == 0
    assert load_shipped(st).imported == st.anime_count()
    st.dispose()


def test_shipped_catalogue_is_packaged_and_in_the_2023_layout():
    assert SHIPPED_CATALOGUE.is_file()
    assert 'core.catalog" = ["data/catalogue.csv"]' in (REPO / "pyproject.toml").read_text()
    header = next(csv.reader(io.StringIO(SHIPPED_CATALOGUE.read_text(encoding="utf-8"))))
    assert detect_layout(header) == "2023"


@pytest.mark.parametrize(
    ("name", "layout", "rows"),
    [("anime-2023-subset.csv", "2023", 1738), ("anime_with_synopsis-2020-subset.csv", "2020-synopsis", 269)],
)
def test_shared_catalogue_samples(name, layout, rows):
    path = shared_data_dir() / "catalog" / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    found, parsed = read_catalogue(path)
    records = [r for _, r in parsed if isinstance(r, AnimeRecord)]
    assert found == layout and len(records) == rows
    assert sum(bool(r.synopsis) for r in records) >= rows * 0.95


def test_cli_catalog_import(tmp_path):
    path = write(tmp_path, "a.csv", CSV_2023)
    env = {**os.environ, "ANIBOT_DATA_DIR": str(tmp_path / "var"), "ANIBOT_DATABASE_URL": "",
           "ANIBOT_TEXT_EMBEDDER": "tfidf"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "cli.main", "catalog", "import", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 titles imported" in done.stderr and "1 duplicate ids" in done.stderr
    bad = write(tmp_path, "bad.csv", "id,title\n1,x\n")
    refused = subprocess.run([sys.executable, "-m", "cli.main", "catalog", "import", str(bad)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "not a catalogue" in refused.stderr
