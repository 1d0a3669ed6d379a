"""Durable state shared by every anibot process: gallery, gallery version, analysis logs, catalogue.

SQLAlchemy 2.0 typed ORM over SQLite (single host) or PostgreSQL (several machines). One ``Store`` per
process; each call opens its own short session, so a ``Store`` may be shared by threads. Callers only
ever see frozen dataclasses, never ORM objects. Conflict handling (get-or-create, dedupe, exactly-once
logs) uses ``INSERT ... ON CONFLICT`` so it is race-free on both backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from core.settings import Settings

_STATE_ID = 1


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Character(Base):
    __tablename__ = "anibot_character"
    __table_args__ = (UniqueConstraint("name", "series"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    series: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    references: Mapped[list[Reference]] = relationship(
        back_populates="character", cascade="all, delete-orphan", passive_deletes=True
    )


class RemovedCharacter(Base):
    """A character an admin removed: proposals from confident answers never bring it back (an admin teaching it
    again does, and clears this)."""

    __tablename__ = "anibot_removed_character"
    __table_args__ = (UniqueConstraint("name", "series"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    series: Mapped[str] = mapped_column(String(200), default="", server_default="")
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Reference(Base):
    __tablename__ = "anibot_reference"
    __table_args__ = (UniqueConstraint("character_id", "image_sha256", "embedder"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey(Character.id, ondelete="CASCADE"), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    embedder: Mapped[str] = mapped_column(String(200), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    character: Mapped[Character] = relationship(back_populates="references")


class GalleryState(Base):
    __tablename__ = "anibot_gallery_state"
    id: Mapped[int] = mapped_column(primary_key=True)  # always _STATE_ID
    version: Mapped[int] = mapped_column(Integer, default=0)


class Anime(Base):
    """One catalogue title (MyAnimeList facts). List fields are comma lists; ``other_names`` is one per line."""

    __tablename__ = "anibot_anime"
    id: Mapped[int] = mapped_column(primary_key=True)
    mal_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    title: Mapped[str] = mapped_column(String(500))
    english_title: Mapped[str] = mapped_column(String(500), default="")
    genres: Mapped[str] = mapped_column(String(1000), default="")  # comma list
    synopsis: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float | None] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32), default="")
    year: Mapped[int | None] = mapped_column(Integer)
    # added with the recommender (core.catalog); create_all adds them to an older table
    japanese_title: Mapped[str] = mapped_column(String(500), default="", server_default="")
    other_names: Mapped[str] = mapped_column(Text, default="", server_default="")  # one per line
    themes: Mapped[str] = mapped_column(String(1000), default="", server_default="")  # comma list
    demographic: Mapped[str] = mapped_column(String(64), default="", server_default="")
    studios: Mapped[str] = mapped_column(String(1000), default="", server_default="")  # comma list
    producers: Mapped[str] = mapped_column(Text, default="", server_default="")  # comma list
    source: Mapped[str] = mapped_column(String(64), default="", server_default="")
    episodes: Mapped[int | None] = mapped_column(Integer)
    duration_min: Mapped[float | None] = mapped_column(Float)  # minutes per episode
    aired: Mapped[str] = mapped_column(String(200), default="", server_default="")
    season: Mapped[str] = mapped_column(String(32), default="", server_default="")  # "spring 1998"
    status: Mapped[str] = mapped_column(String(64), default="", server_default="")
    rating: Mapped[str] = mapped_column(String(100), default="", server_default="")
    members: Mapped[int | None] = mapped_column(Integer)
    image_url: Mapped[str] = mapped_column(String(500), default="", server_default="")


class AnimeEmbedding(Base):
    """A synopsis embedding of one title by one text embedder (keyed by its name and weights digest)."""

    __tablename__ = "anibot_anime_embedding"
    __table_args__ = (UniqueConstraint("anime_id", "embedder"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    anime_id: Mapped[int] = mapped_column(ForeignKey(Anime.id, ondelete="CASCADE"), index=True)
    embedder: Mapped[str] = mapped_column(String(200), index=True)
    text_sha256: Mapped[str] = mapped_column(String(64))  # of the embedded text: a changed synopsis re-embeds
    dim: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian


class CatalogState(Base):
    __tablename__ = "anibot_catalog_state"
    id: Mapped[int] = mapped_column(primary_key=True)  # always _STATE_ID
    version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every catalogue write


class Favourite(Base):
    __tablename__ = "anibot_favourite"
    __table_args__ = (UniqueConstraint("platform", "user_id", "anime_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    anime_id: Mapped[int] = mapped_column(ForeignKey(Anime.id, ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AnalysisLog(Base):
    __tablename__ = "anibot_analysis_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)  # the exactly-once marker
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(128), default="")
    n_heads: Mapped[int] = mapped_column(Integer, default=0)
    names: Mapped[str] = mapped_column(Text, default="")  # comma list
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


class AnalysisHead(Base):
    """One head of one logged analysis: where it was, what the models said, what the user was told."""

    __tablename__ = "anibot_analysis_head"
    __table_args__ = (UniqueConstraint("job_id", "head"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    head: Mapped[int] = mapped_column(Integer)  # 1-based, as shown to users
    box: Mapped[str] = mapped_column(String(100))  # "x1,y1,x2,y2" in pixels
    detection_score: Mapped[float] = mapped_column(Float)
    answer: Mapped[str] = mapped_column(String(200))  # the name given, or the unknown marker
    confidence: Mapped[float] = mapped_column(Float)
    candidates: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[name, series, confidence], ...]
    embedder: Mapped[str] = mapped_column(String(200), default="")
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 little-endian; NULL when cached


# --- records handed to callers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryEntry:
    character_id: int
    name: str
    series: str
    image_sha256: str
    embedding: np.ndarray = field(compare=False, repr=False)  # float32, 1-D


@dataclass(frozen=True)
class CharacterInfo:
    name: str
    series: str
    n_references: int
    updated_at: datetime | None = field(default=None, compare=False)  # of its newest reference


@dataclass(frozen=True)
class ReferenceInfo:
    name: str
    series: str
    image_sha256: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class AnalysisLogRecord:
    job_id: str
    image_sha256: str
    platform: str
    chat_id: str | int
    user_id: str | int | None = None
    fingerprint: str = ""
    n_heads: int = 0
    names: Sequence[str] | str = ()  # stored as a comma list
    duration_ms: float = 0.0


@dataclass(frozen=True)
class HeadLogRecord:
    head: int  # 1-based
    box: tuple[float, float, float, float]
    detection_score: float
    answer: str
    confidence: float
    candidates: tuple[tuple[str, str, float], ...] = ()
    embedder: str = ""
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AnimeRecord:
    mal_id: int | None
    title: str
    english_title: str = ""
    genres: str = ""  # comma list
    synopsis: str = ""
    score: float | None = None
    kind: str = ""
    year: int | None = None
    japanese_title: str = ""
    other_names: str = ""  # one per line
    themes: str = ""  # comma list
    demographic: str = ""
    studios: str = ""  # comma list
    producers: str = ""  # comma list
    source: str = ""
    episodes: int | None = None
    duration_min: float | None = None
    aired: str = ""
    season: str = ""
    status: str = ""
    rating: str = ""
    members: int | None = None
    image_url: str = ""
    id: int | None = None  # set when read back from the store

    @classmethod
    def from_row(cls, row: Anime) -> AnimeRecord:
        return cls(**{k: getattr(row, k) for k in _ANIME_FIELDS}, id=row.id)


_ANIME_FIELDS = tuple(f.name for f in fields(AnimeRecord) if f.name != "id")
UPSERT_CHUNK = 500


# --- the store -------------------------------------------------------------------------------------------


class Store:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        u = make_url(url)
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername="postgresql+psycopg")
        kwargs: dict[str, Any] = {"echo": echo}
        if u.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if u.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool
            else:
                Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(u, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.dialect != "postgresql":
            raise ValueError(f"unsupported database backend: {self.dialect}")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(settings.sqlalchemy_url)

    def create_all(self) -> None:
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        with self.session() as s:
            self._insert_new(s, GalleryState, ["id"], id=_STATE_ID, version=0)
            self._insert_new(s, CatalogState, ["id"], id=_STATE_ID, version=0)

    def _add_missing_columns(self) -> None:
        """Columns a newer version added to an existing table (nullable or with a server default): no
        migrations framework, so ``create_all`` adds them with ``ALTER TABLE ... ADD COLUMN``."""
        existing = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            present = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not (column.nullable or column.server_default is not None):
                    continue
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                ddl += column.type.compile(dialect=self.engine.dialect)
                if column.server_default is not None:
                    ddl += " DEFAULT ''"
                with self.engine.begin() as conn:
                    conn.execute(text(ddl))

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def _insert(self, model: type[Base]) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(model)

    def _insert_new(self, s: Session, model: type[Base], unique: list[str], **values: Any) -> bool:
        """INSERT ... ON CONFLICT (unique) DO NOTHING; True when a row was inserted."""
        stmt = self._insert(model).values(**values).on_conflict_do_nothing(index_elements=unique)
        return s.execute(stmt.returning(model.id)).first() is not None  # type: ignore[attr-defined]

    # --- gallery ---------------------------------------------------------------------------------------

    def add_character(self, name: str, series: str = "") -> int:
        with self.session() as s:
            self._insert_new(s, Character, ["name", "series"], name=name, series=series)
            where = (Character.name == name, Character.series == series)
            return s.scalars(select(Character.id).where(*where)).one()

    def add_reference(
        self, character_id: int, image_sha256: str, embedder: str, embedding: np.ndarray
    ) -> bool:
        vec = np.ascontiguousarray(embedding, dtype="<f4")
        if vec.ndim != 1 or vec.size == 0:
            raise ValueError(f"embedding must be a non-empty 1-D vector, got shape {vec.shape}")
        with self.session() as s:
            added = self._insert_new(
                s, Reference, ["character_id", "image_sha256", "embedder"], character_id=character_id,
                image_sha256=image_sha256, embedder=embedder, embedding=vec.tobytes(), dim=int(vec.size),
            )  # fmt: skip
            if added:
                self._bump(s)
            return added

    @staticmethod
    def _gallery_query(embedder: str) -> Any:
        return (
            select(
                Character.id, Character.name, Character.series, Reference.image_sha256, Reference.embedding
            )
            .join(Reference.character)
            .where(Reference.embedder == embedder)
            .order_by(Character.id, Reference.id)
        )

    @staticmethod
    def _gallery_entries(rows: Iterable[Any]) -> list[GalleryEntry]:
        return [
            GalleryEntry(cid, name, series, sha, np.frombuffer(blob, dtype="<f4").astype(np.float32))
            for cid, name, series, sha, blob in rows
        ]

    def gallery(self, embedder: str) -> list[GalleryEntry]:
        with self.session() as s:
            return self._gallery_entries(s.execute(self._gallery_query(embedder)))

    def gallery_snapshot(self, embedder: str) -> tuple[int, list[GalleryEntry]]:
        """A new gallery version number and the references it holds, in one transaction: the version row stays
        locked until commit, so concurrent builds read their snapshots in version order."""
        with self.session() as s:
            version = self._bump(s)
            entries = self._gallery_entries(s.execute(self._gallery_query(embedder)))
        return version, entries

    def references(self, embedder: str | None = None) -> list[ReferenceInfo]:
        """Every reference (of one embedder, or distinct images over all of them), by character."""
        stmt = (
            select(Character.name, Character.series, Reference.image_sha256, func.min(Reference.created_at))
            .join(Reference.character)
            .group_by(Character.name, Character.series, Reference.image_sha256)
            .order_by(Character.name, Character.series, Reference.image_sha256)
        )
        if embedder is not None:
            stmt = stmt.where(Reference.embedder == embedder)
        with self.session() as s:
            return [
                ReferenceInfo(name, series, sha, created) for name, series, sha, created in s.execute(stmt)
            ]

    def gallery_version(self) -> int:
        with self.session() as s:
            return s.scalar(select(GalleryState.version).where(GalleryState.id == _STATE_ID)) or 0

    def bump_gallery_version(self) -> int:
        with self.session() as s:
            return self._bump(s)

    def _bump(self, s: Session) -> int:
        """Atomic increment in the caller's transaction (UPDATE ... SET version = version + 1)."""
        stmt = (
            update(GalleryState)
            .where(GalleryState.id == _STATE_ID)
            .values(version=GalleryState.version + 1)
            .returning(GalleryState.version)
        )
        version = s.scalar(stmt)
        if version is None:  # state row missing (create_all not run by this version): create it, retry
            self._insert_new(s, GalleryState, ["id"], id=_STATE_ID, version=0)
            version = s.scalar(stmt)
        return int(version)

    def list_characters(self, embedder: str | None = None) -> list[CharacterInfo]:
        """Characters with their reference counts (of ``embedder``, or distinct images) and last update."""
        join = Reference.character_id == Character.id
        if embedder is not None:
            join = join & (Reference.embedder == embedder)
        stmt = (
            select(
                Character.name,
                Character.series,
                func.count(func.distinct(Reference.image_sha256)),
                func.max(Reference.created_at),
                Character.created_at,
            )
            .outerjoin(Reference, join)
            .group_by(Character.id)
            .order_by(Character.name, Character.series)
        )
        with self.session() as s:
            return [
                CharacterInfo(name, series, int(n), _aware(last or created))
                for name, series, n, last, created in s.execute(stmt)
            ]

    def delete_character(self, name: str, series: str = "") -> bool:
        """Remove a character and its references; it is remembered as removed (:meth:`removed_characters`)."""
        with self.session() as s:
            stmt = delete(Character).where(Character.name == name, Character.series == series)
            deleted = s.execute(stmt.returning(Character.id)).first() is not None  # refs: ON DELETE CASCADE
            if deleted:
                self._bump(s)
                self._insert_new(s, RemovedCharacter, ["name", "series"], name=name, series=series)
            return deleted

    def removed_characters(self) -> list[tuple[str, str]]:
        """(name, series) of the characters admins removed and did not teach again."""
        with self.session() as s:
            rows = s.execute(
                select(RemovedCharacter.name, RemovedCharacter.series).order_by(RemovedCharacter.id)
            )
            return [(name, series) for name, series in rows]

    def forget_removal(self, name: str, series: str = "") -> bool:
        """An admin taught a removed character again: it is no longer removed."""
        with self.session() as s:
            stmt = delete(RemovedCharacter).where(
                RemovedCharacter.name == name, RemovedCharacter.series == series
            )
            return s.execute(stmt.returning(RemovedCharacter.id)).first() is not None

    def delete_reference(self, name: str, series: str, image_sha256: str) -> bool:
        """Forget one reference of a character (its embeddings of every embedder); the character stays, even
        with no reference left. True when something was deleted (the gallery version then moved on)."""
        with self.session() as s:
            owner = select(Character.id).where(Character.name == name, Character.series == series)
            stmt = delete(Reference).where(
                Reference.character_id.in_(owner.scalar_subquery()), Reference.image_sha256 == image_sha256
            )
            deleted = bool(s.execute(stmt.returning(Reference.id)).all())
            if deleted:
                self._bump(s)
            return deleted

    # --- analysis logs ---------------------------------------------------------------------------------

    def log_analysis(self, record: AnalysisLogRecord, heads: Sequence[HeadLogRecord] = ()) -> bool:
        """Record one finished analysis and its heads in one transaction (a crash leaves both or neither);
        False (not an error, nothing written) when ``job_id`` was already logged."""
        import json

        values = asdict(record)
        if not isinstance(record.names, str):
            values["names"] = ",".join(record.names)
        values["chat_id"] = str(record.chat_id)
        values["user_id"] = None if record.user_id is None else str(record.user_id)
        with self.session() as s:
            if not self._insert_new(s, AnalysisLog, ["job_id"], **values):
                return False
            for h in heads:
                vector = None if h.embedding is None else np.ascontiguousarray(h.embedding, "<f4").tobytes()
                s.add(AnalysisHead(
                    job_id=record.job_id, image_sha256=record.image_sha256, head=h.head,
                    box=",".join(f"{v:.1f}" for v in h.box), detection_score=float(h.detection_score),
                    answer=h.answer, confidence=float(h.confidence),
                    candidates=json.dumps([list(c) for c in h.candidates], ensure_ascii=False),
                    embedder=h.embedder, embedding=vector,
                ))  # fmt: skip
            return True

    def logged_heads(self, job_id: str) -> list[HeadLogRecord]:
        import json

        stmt = select(AnalysisHead).where(AnalysisHead.job_id == job_id).order_by(AnalysisHead.head)
        with self.session() as s:
            return [
                HeadLogRecord(
                    head=row.head,
                    box=tuple(float(v) for v in row.box.split(",")),  # type: ignore[arg-type]
                    detection_score=row.detection_score,
                    answer=row.answer,
                    confidence=row.confidence,
                    candidates=tuple((n, se, float(c)) for n, se, c in json.loads(row.candidates)),
                    embedder=row.embedder,
                    embedding=None
                    if row.embedding is None
                    else np.frombuffer(row.embedding, dtype="<f4").astype(np.float32),
                )
                for row in s.scalars(stmt)
            ]

    def analysis_count(self, *, job_id: str | None = None) -> int:
        stmt = select(func.count(AnalysisLog.id))
        if job_id is not None:
            stmt = stmt.where(AnalysisLog.job_id == job_id)
        with self.session() as s:
            return int(s.scalar(stmt) or 0)

    # --- catalogue + favourites ------------------------------------------------------------------------

    def upsert_anime(self, rows: Iterable[AnimeRecord]) -> int:
        """Insert or update by ``mal_id`` (rows without one are matched by title); returns rows written.

        Every field is replaced (a re-import is the source of truth). A ``mal_id`` given twice keeps the last
        row. Bumps the catalogue version so that loaded recommenders reload."""
        by_id: dict[int, dict[str, Any]] = {}
        local: list[AnimeRecord] = []
        n = 0
        for r in rows:
            n += 1
            if r.mal_id is None:
                local.append(r)
            else:
                by_id[r.mal_id] = {k: getattr(r, k) for k in _ANIME_FIELDS}
        if not n:
            return 0
        with self.session() as s:
            values = list(by_id.values())
            for start in range(0, len(values), UPSERT_CHUNK):
                stmt = self._insert(Anime).values(values[start : start + UPSERT_CHUNK])
                s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["mal_id"], set_={k: stmt.excluded[k] for k in _ANIME_FIELDS[1:]}
                    )
                )
            for r in local:
                row = s.scalars(select(Anime).where(Anime.mal_id.is_(None), Anime.title == r.title)).first()
                if row is None:
                    s.add(Anime(**{k: getattr(r, k) for k in _ANIME_FIELDS}))
                else:
                    for k in _ANIME_FIELDS:
                        setattr(row, k, getattr(r, k))
                s.flush()
            self._bump_catalog(s)
        return n

    def _bump_catalog(self, s: Session) -> None:
        stmt = (
            update(CatalogState).where(CatalogState.id == _STATE_ID).values(version=CatalogState.version + 1)
        )
        if s.execute(stmt.returning(CatalogState.id)).first() is None:
            self._insert_new(s, CatalogState, ["id"], id=_STATE_ID, version=1)

    def catalog_version(self) -> int:
        """Bumped by every catalogue write: a process holding an index reloads when it changes."""
        with self.session() as s:
            return s.scalar(select(CatalogState.version).where(CatalogState.id == _STATE_ID)) or 0

    def anime_count(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(Anime.id))) or 0)

    def all_anime(self) -> list[AnimeRecord]:
        """The whole catalogue, in store order."""
        with self.session() as s:
            return [AnimeRecord.from_row(a) for a in s.scalars(select(Anime).order_by(Anime.id))]

    def anime_embeddings(self, embedder: str) -> dict[int, tuple[str, np.ndarray]]:
        """``anime id -> (text sha256, float32 vector)`` stored for ``embedder``."""
        stmt = select(AnimeEmbedding.anime_id, AnimeEmbedding.text_sha256, AnimeEmbedding.embedding).where(
            AnimeEmbedding.embedder == embedder
        )
        with self.session() as s:
            return {
                aid: (sha, np.frombuffer(blob, dtype="<f4").astype(np.float32))
                for aid, sha, blob in s.execute(stmt)
            }

    def put_anime_embeddings(self, embedder: str, items: Sequence[tuple[int, str, np.ndarray]]) -> int:
        """Store ``(anime id, text sha256, vector)`` for ``embedder``, replacing older ones."""
        values = []
        for anime_id, sha, vector in items:
            vec = np.ascontiguousarray(vector, dtype="<f4").ravel()
            values.append(
                {"anime_id": anime_id, "embedder": embedder, "text_sha256": sha, "dim": int(vec.size),
                 "embedding": vec.tobytes()}
            )  # fmt: skip
        with self.session() as s:
            for start in range(0, len(values), UPSERT_CHUNK):
                stmt = self._insert(AnimeEmbedding).values(values[start : start + UPSERT_CHUNK])
                s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["anime_id", "embedder"],
                        set_={k: stmt.excluded[k] for k in ("text_sha256", "dim", "embedding")},
                    )
                )
        return len(values)

    def add_favourite(self, platform: str, user_id: str, anime_id: int) -> bool:
        with self.session() as s:
            unique = ["platform", "user_id", "anime_id"]
            return self._insert_new(
                s, Favourite, unique, platform=platform, user_id=str(user_id), anime_id=anime_id
            )

    def favourites(self, platform: str, user_id: str) -> list[AnimeRecord]:
        stmt = (
            select(Anime)
            .join(Favourite, Favourite.anime_id == Anime.id)
            .where(Favourite.platform == platform, Favourite.user_id == str(user_id))
            .order_by(Favourite.created_at, Favourite.id)
        )
        with self.session() as s:
            return [AnimeRecord.from_row(a) for a in s.scalars(stmt)]

    def remove_favourite(self, platform: str, user_id: str, anime_id: int) -> bool:
        with self.session() as s:
            stmt = delete(Favourite).where(
                Favourite.platform == platform,
                Favourite.user_id == str(user_id),
                Favourite.anime_id == anime_id,
            )
            return s.execute(stmt.returning(Favourite.id)).first() is not None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
