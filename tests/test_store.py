"""core.storage.store against SQLite (tmp file) and PostgreSQL (a throwaway database, skipped when unreachable)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sqlalchemy import text

from core.storage.store import AnalysisLogRecord, AnimeRecord, Base, CharacterInfo, Store

SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        st = Store(f"sqlite:///{tmp_path / 'nested' / 'anibot.db'}")
    else:
        st = Store(request.getfixturevalue("pg_database_url"))
        Base.metadata.drop_all(st.engine)
    st.create_all()
    st.create_all()  # idempotent
    yield st
    st.dispose()


def vec(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


def test_character_get_or_create(store: Store) -> None:
    a = store.add_character("Rin", "Fate")
    assert store.add_character("Rin", "Fate") == a
    assert store.add_character("Rin") != a
    assert store.add_character("Saber", "Fate") not in (a,)
    assert store.list_characters() == [
        CharacterInfo("Rin", "", 0),
        CharacterInfo("Rin", "Fate", 0),
        CharacterInfo("Saber", "Fate", 0),
    ]


def test_reference_dedupe_and_exact_round_trip(store: Store) -> None:
    cid = store.add_character("Rin", "Fate")
    emb = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    emb[:3] = [np.float32(1e-38), np.float32(-0.0), np.float32(3.4e38)]
    assert store.add_reference(cid, SHA_A, "clip-v1", emb) is True
    assert store.add_reference(cid, SHA_A, "clip-v1", emb) is False
    assert store.add_reference(cid, SHA_A, "clip-v2", emb[:8]) is True  # same image, other embedder
    (entry,) = store.gallery("clip-v1")
    assert (entry.character_id, entry.name, entry.series, entry.image_sha256) == (cid, "Rin", "Fate", SHA_A)
    assert entry.embedding.dtype == np.float32 and entry.embedding.ndim == 1
    assert np.array_equal(entry.embedding, emb) and entry.embedding.tobytes() == emb.tobytes()
    # one picture, embedded by two models: one reference, with when it was last updated
    assert store.list_characters() == [CharacterInfo("Rin", "Fate", 1)]
    assert store.list_characters("clip-v2") == [CharacterInfo("Rin", "Fate", 1)]
    assert store.list_characters("other") == [CharacterInfo("Rin", "Fate", 0)]
    assert store.list_characters()[0].updated_at is not None
    with pytest.raises(ValueError):
        store.add_reference(cid, SHA_B, "clip-v1", np.zeros((2, 2), np.float32))


def test_gallery_filtered_by_embedder(store: Store) -> None:
    rin, saber = store.add_character("Rin", "Fate"), store.add_character("Saber", "Fate")
    store.add_reference(rin, SHA_A, "v1", vec(1, 0))
    store.add_reference(saber, SHA_B, "v1", vec(0, 1))
    store.add_reference(saber, SHA_B, "v2", vec(0, 1, 0))
    assert [e.name for e in store.gallery("v1")] == ["Rin", "Saber"]
    assert [(e.name, e.embedding.shape) for e in store.gallery("v2")] == [("Saber", (3,))]
    assert store.gallery("nope") == []


def test_gallery_version_bumps(store: Store) -> None:
    assert store.gallery_version() == 0
    cid = store.add_character("Rin")
    assert store.gallery_version() == 0  # a character with no reference changes no analysis
    assert store.add_reference(cid, SHA_A, "v1", vec(1, 2))
    assert store.gallery_version() == 1
    assert not store.add_reference(cid, SHA_A, "v1", vec(1, 2))
    assert store.gallery_version() == 1  # duplicate: no bump
    assert store.delete_character("Rin")
    assert store.gallery_version() == 2
    assert not store.delete_character("Rin")
    assert store.gallery_version() == 2
    assert store.bump_gallery_version() == 3 == store.gallery_version()


def test_delete_cascades_references(store: Store) -> None:
    rin, saber = store.add_character("Rin", "Fate"), store.add_character("Saber", "Fate")
    store.add_reference(rin, SHA_A, "v1", vec(1))
    store.add_reference(rin, SHA_B, "v1", vec(2))
    store.add_reference(saber, SHA_A, "v1", vec(3))
    assert store.delete_character("Rin", "Fate")
    assert [e.name for e in store.gallery("v1")] == ["Saber"]
    assert store.list_characters() == [CharacterInfo("Saber", "Fate", 1)]
    with store.session() as s:  # rows really gone (foreign keys enforced on SQLite too)
        assert s.scalar(text("SELECT count(*) FROM anibot_reference")) == 1


def test_log_analysis_exactly_once(store: Store) -> None:
    rec = AnalysisLogRecord(
        job_id="job-1",
        image_sha256=SHA_A,
        platform="discord",
        chat_id=42,
        user_id=7,
        fingerprint="fp",
        n_heads=2,
        names=("Rin", "Saber"),
        duration_ms=12.5,
    )
    assert store.log_analysis(rec) is True
    assert store.log_analysis(rec) is False
    assert store.analysis_count(job_id="job-1") == 1
    assert store.log_analysis(AnalysisLogRecord("job-2", SHA_B, "telegram", "-100", names="unknown"))
    assert store.analysis_count() == 2 and store.analysis_count(job_id="nope") == 0
    with store.session() as s:
        row = s.execute(
            text("SELECT chat_id, user_id, names FROM anibot_analysis_log WHERE job_id='job-1'")
        ).one()
    assert tuple(row) == ("42", "7", "Rin,Saber")


def test_concurrent_version_bumps(store: Store) -> None:
    def worker() -> None:
        for _ in range(25):
            store.bump_gallery_version()

    with ThreadPoolExecutor(4) as pool:
        for fut in [pool.submit(worker) for _ in range(4)]:
            fut.result()  # re-raises a worker's error
    assert store.gallery_version() == 100


def test_anime_upsert_updates_by_mal_id(store: Store) -> None:
    assert (
        store.upsert_anime(
            [
                AnimeRecord(
                    mal_id=1, title="Cowboy Bebop", genres="Action,Sci-Fi", score=8.7, kind="TV", year=1998
                ),
                AnimeRecord(mal_id=None, title="Local Only"),
            ]
        )
        == 2
    )
    assert (
        store.upsert_anime(
            [
                AnimeRecord(
                    mal_id=1, title="Cowboy Bebop", english_title="Cowboy Bebop", score=8.8, kind="TV"
                ),
                AnimeRecord(mal_id=None, title="Local Only", year=2020),
            ]
        )
        == 2
    )
    with store.session() as s:
        rows = s.execute(
            text("SELECT mal_id, english_title, score, year FROM anibot_anime ORDER BY title")
        ).all()
    assert [tuple(r) for r in rows] == [(1, "Cowboy Bebop", 8.8, None), (None, "", None, 2020)]


def test_favourites_unique(store: Store) -> None:
    store.upsert_anime([AnimeRecord(mal_id=1, title="A"), AnimeRecord(mal_id=2, title="B")])
    with store.session() as s:
        ids = dict(s.execute(text("SELECT mal_id, id FROM anibot_anime")).all())
    assert store.add_favourite("discord", "u1", ids[2]) is True
    assert store.add_favourite("discord", "u1", ids[2]) is False
    assert store.add_favourite("discord", "u1", ids[1]) is True
    assert store.add_favourite("telegram", "u1", ids[1]) is True
    favs = store.favourites("discord", "u1")
    assert [(f.mal_id, f.title, f.id) for f in favs] == [(2, "B", ids[2]), (1, "A", ids[1])]
    assert store.favourites("discord", "nobody") == []


def test_session_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.session() as s:
        s.execute(text("UPDATE anibot_gallery_state SET version = 41"))
        raise RuntimeError("boom")
    assert store.gallery_version() == 0


def test_from_settings_sqlite_default(tmp_path) -> None:
    from core.settings import Settings

    st = Store.from_settings(Settings(data_dir=tmp_path / "var", database_url=""))
    st.create_all()
    assert (tmp_path / "var" / "anibot.db").exists() and st.gallery_version() == 0
    st.dispose()
