"""What the front-ends keep per chat and per user: chat settings and users' corrections of wrong names.

Tables live beside the store's own (same database, same ``Base``); bots and the API read and write them
directly, so a setting changed in one bot process holds for every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, UniqueConstraint, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from core.storage.store import Base, Store, _now
from core.vision.results import DEFAULT_SURE_CONFIDENCE


class ChatKind(StrEnum):
    PRIVATE = "private"  # a one-to-one chat with the bot
    GROUP = "group"  # a Telegram group or a Discord guild channel
    API = "api"  # the REST API: no chat


class TitleLanguage(StrEnum):
    ROMAJI = "romaji"
    ENGLISH = "english"
    JAPANESE = "japanese"


@dataclass(frozen=True)
class ChatSettings:
    """Per-chat choices; ``auto_analyze`` None means the default for the kind of chat. ``sure_threshold``: a head
    named with a lower confidence is shown as "not sure", its guesses behind a button (``Head.is_sure``)."""

    auto_analyze: bool | None = None
    top_n: int = 3
    nsfw_spoilers: bool = True
    title_language: TitleLanguage = TitleLanguage.ROMAJI
    sure_threshold: float = DEFAULT_SURE_CONFIDENCE

    def __post_init__(self) -> None:
        if not 0.0 <= self.sure_threshold <= 1.0:
            raise ValueError(f"sure_threshold must be from 0 to 1, not {self.sure_threshold!r}")

    def auto_analyze_in(self, kind: ChatKind) -> bool:
        if self.auto_analyze is not None:
            return self.auto_analyze
        return kind is ChatKind.PRIVATE  # on in private chats, off in groups and guilds


class ChatSettingsRow(Base):
    __tablename__ = "anibot_chat_settings"
    __table_args__ = (UniqueConstraint("platform", "chat_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    auto_analyze: Mapped[int | None] = mapped_column(Integer)  # NULL = default for the chat kind
    top_n: Mapped[int] = mapped_column(Integer, default=3)
    nsfw_spoilers: Mapped[int] = mapped_column(Integer, default=1)
    title_language: Mapped[str] = mapped_column(String(16), default=TitleLanguage.ROMAJI.value)
    # added with "not sure" answers: nullable, so create_all adds it; NULL = DEFAULT_SURE_CONFIDENCE
    sure_threshold: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class CorrectionStatus(StrEnum):
    PENDING = "pending"  # waiting for an admin's /review (or for enough users to agree)
    APPROVED = "approved"  # accepted; the apply job has not added it to the gallery yet
    REJECTED = "rejected"  # an admin said no
    APPLIED = "applied"  # its head crop is a reference of the named character
    EXPIRED = "expired"  # approved, but its picture was gone before it could be applied (see ``reason``)


class CorrectionKind(StrEnum):
    USER = "user"  # a user's "Wrong? Tell me who"
    PROPOSAL = "proposal"  # a confident tagger answer proposed as a reference (core.characters.proposals)


class CorrectionRow(Base):
    __tablename__ = "anibot_correction"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), default="")
    head: Mapped[int] = mapped_column(Integer)  # 1-based, as shown to the user
    predicted: Mapped[str] = mapped_column(String(200), default="")
    name: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=CorrectionStatus.PENDING.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # added with the review of corrections: nullable or with a server default, so create_all adds them
    series: Mapped[str] = mapped_column(String(200), default="", server_default="")
    box: Mapped[str | None] = mapped_column(String(100))  # "x1,y1,x2,y2" in pixels of the picture
    reviewer: Mapped[str | None] = mapped_column(String(100))  # "platform:user_id", or "auto"
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(String(300))  # why it ended as it did (e.g. picture expired)
    # added with proposals: '' (rows from before) reads as a user's correction
    kind: Mapped[str] = mapped_column(String(16), default=CorrectionKind.USER.value, server_default="")


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Correction:
    job_id: str
    head: int
    name: str
    platform: str
    chat_id: str
    user_id: str
    predicted: str = ""
    image_sha256: str = ""
    status: str = CorrectionStatus.PENDING.value
    series: str = ""
    box: Box | None = None
    id: int | None = None  # set once stored
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    reason: str | None = None
    created_at: datetime | None = None
    kind: str = CorrectionKind.USER.value

    @property
    def is_proposal(self) -> bool:
        return self.kind == CorrectionKind.PROPOSAL

    @property
    def user_key(self) -> str:
        """Who gave it, across platforms (the same id on two platforms is two people)."""
        return f"{self.platform}:{self.user_id}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.series})" if self.series else self.name


def _box_text(box: Box | None) -> str | None:
    return None if box is None else ",".join(f"{v:.1f}" for v in box)


def _box_value(text: str | None) -> Box | None:
    if not text:
        return None
    x1, y1, x2, y2 = (float(v) for v in text.split(","))
    return (x1, y1, x2, y2)


def _correction(row: CorrectionRow) -> Correction:
    values = {f.name: getattr(row, f.name) for f in fields(Correction) if f.name not in ("box", "kind")}
    return Correction(**values, box=_box_value(row.box), kind=row.kind or CorrectionKind.USER.value)


class ChatStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        Base.metadata.create_all(
            store.engine,
            tables=[ChatSettingsRow.__table__, CorrectionRow.__table__],  # type: ignore[list-item]
        )
        store._add_missing_columns()  # columns added since the tables were created

    def settings(self, platform: str, chat_id: str) -> ChatSettings:
        with self.store.session() as s:
            row = s.scalars(
                select(ChatSettingsRow).where(
                    ChatSettingsRow.platform == platform, ChatSettingsRow.chat_id == str(chat_id)
                )
            ).first()
            if row is None:
                return ChatSettings()
            return ChatSettings(
                auto_analyze=None if row.auto_analyze is None else bool(row.auto_analyze),
                top_n=row.top_n,
                nsfw_spoilers=bool(row.nsfw_spoilers),
                title_language=TitleLanguage(row.title_language),
                sure_threshold=(
                    DEFAULT_SURE_CONFIDENCE if row.sure_threshold is None else float(row.sure_threshold)
                ),
            )

    def update_settings(self, platform: str, chat_id: str, **changes: Any) -> ChatSettings:
        """Change some settings of a chat (unknown names raise ``TypeError``); returns the new settings."""
        known = {f.name for f in fields(ChatSettings)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown chat settings: {sorted(unknown)}")
        new = replace(self.settings(platform, chat_id), **changes)
        values = {
            "auto_analyze": None if new.auto_analyze is None else int(new.auto_analyze),
            "top_n": new.top_n,
            "nsfw_spoilers": int(new.nsfw_spoilers),
            "title_language": new.title_language.value,
            "sure_threshold": new.sure_threshold,
        }
        with self.store.session() as s:
            stmt = self.store._insert(ChatSettingsRow).values(
                platform=platform, chat_id=str(chat_id), **values
            )
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["platform", "chat_id"], set_={**values, "updated_at": _now()}
                )
            )
        return new

    # --- users' corrections --------------------------------------------------------------------------------

    def add_correction(self, correction: Correction) -> int:
        values = {f.name: getattr(correction, f.name) for f in fields(Correction)}
        values.pop("id")
        if values["created_at"] is None:
            values.pop("created_at")
        values["box"] = _box_text(correction.box)
        with self.store.session() as s:
            row = CorrectionRow(**values)
            s.add(row)
            s.flush()
            return int(row.id)

    def correction(self, correction_id: int) -> Correction | None:
        with self.store.session() as s:
            row = s.get(CorrectionRow, correction_id)
            return None if row is None else _correction(row)

    def corrections(
        self,
        *,
        job_id: str | None = None,
        status: str | None = None,
        image_sha256: str | None = None,
        head: int | None = None,
        platform: str | None = None,
        user_id: str | None = None,
        reviewer: str | None = None,
        reviewed_since: datetime | None = None,
        after_id: int = 0,
        limit: int | None = None,
        kind: str | None = None,
        name: str | None = None,
    ) -> list[Correction]:
        """Corrections matching every filter given, oldest first (``name``: case-insensitively)."""
        stmt = select(CorrectionRow).where(CorrectionRow.id > after_id).order_by(CorrectionRow.id)
        if kind == CorrectionKind.USER:
            stmt = stmt.where(CorrectionRow.kind.in_([CorrectionKind.USER.value, ""]))
        elif kind is not None:
            stmt = stmt.where(CorrectionRow.kind == kind)
        if name is not None:
            stmt = stmt.where(func.lower(CorrectionRow.name) == name.lower())
        if platform is not None:
            stmt = stmt.where(CorrectionRow.platform == platform)
        if user_id is not None:
            stmt = stmt.where(CorrectionRow.user_id == user_id)
        if reviewer is not None:
            stmt = stmt.where(CorrectionRow.reviewer == reviewer)
        if reviewed_since is not None:
            stmt = stmt.where(CorrectionRow.reviewed_at >= reviewed_since)
        if job_id is not None:
            stmt = stmt.where(CorrectionRow.job_id == job_id)
        if status is not None:
            stmt = stmt.where(CorrectionRow.status == status)
        if image_sha256 is not None:
            stmt = stmt.where(CorrectionRow.image_sha256 == image_sha256)
        if head is not None:
            stmt = stmt.where(CorrectionRow.head == head)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.store.session() as s:
            return [_correction(row) for row in s.scalars(stmt)]

    def set_correction_status(
        self,
        ids: Sequence[int],
        status: str,
        *,
        expected: str | None = None,
        reviewer: str | None = None,
        reason: str | None = None,
    ) -> list[int]:
        """Move corrections to ``status`` (only those now in ``expected``, when given: two admins pressing
        Approve at once change it once); returns the ids changed. ``reviewer`` also stamps ``reviewed_at``."""
        if not ids:
            return []
        values: dict[str, Any] = {"status": status}
        if reviewer is not None:
            values.update(reviewer=reviewer, reviewed_at=_now())
        if reason is not None:
            values["reason"] = reason
        stmt = update(CorrectionRow).where(CorrectionRow.id.in_(list(ids)))
        if expected is not None:
            stmt = stmt.where(CorrectionRow.status == expected)
        with self.store.session() as s:
            return [int(i) for i in s.scalars(stmt.values(**values).returning(CorrectionRow.id))]
