"""What the front-ends keep per chat and per user: chat settings and users' corrections of wrong names.

Tables live beside the store's own (same database, same ``Base``); bots and the API read and write them
directly, so a setting changed in one bot process holds for every process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from core.store import Base, Store, _now


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
    """Per-chat choices; ``auto_analyze`` None means the default for the kind of chat."""

    auto_analyze: bool | None = None
    top_n: int = 3
    nsfw_spoilers: bool = True
    title_language: TitleLanguage = TitleLanguage.ROMAJI

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
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


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
    status: Mapped[str] = mapped_column(String(16), default="pending")  # reviewed by the teaching issue
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


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
    status: str = "pending"


class ChatStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        Base.metadata.create_all(
            store.engine,
            tables=[ChatSettingsRow.__table__, CorrectionRow.__table__],  # type: ignore[list-item]
        )

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

    def add_correction(self, correction: Correction) -> int:
        with self.store.session() as s:
            row = CorrectionRow(**{f.name: getattr(correction, f.name) for f in fields(Correction)})
            s.add(row)
            s.flush()
            return int(row.id)

    def corrections(self, *, job_id: str | None = None, status: str | None = None) -> list[Correction]:
        stmt = select(CorrectionRow).order_by(CorrectionRow.id)
        if job_id is not None:
            stmt = stmt.where(CorrectionRow.job_id == job_id)
        if status is not None:
            stmt = stmt.where(CorrectionRow.status == status)
        with self.store.session() as s:
            return [
                Correction(**{f.name: getattr(row, f.name) for f in fields(Correction)})
                for row in s.scalars(stmt)
            ]
