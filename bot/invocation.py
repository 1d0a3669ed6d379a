"""What a front-end hands the command layer: who asked, where, with which images and words."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.replies import Reply
from core.chat.store import ChatKind
from core.storage.jobs import Requester

Progress = Callable[[Reply], Awaitable[None]]


async def no_progress(_: Reply) -> None:
    return None


@dataclass(frozen=True)
class IncomingImage:
    """An image a user posted; the bytes are fetched only after the size (when the platform says it) passed."""

    fetch: Callable[[], Awaitable[bytes]]
    size: int | None = None  # bytes, as announced by the platform
    filename: str = "image"
    mime_type: str = ""


@dataclass(frozen=True)
class Invocation:
    platform: str  # "discord", "telegram", "api", "test"
    chat_id: str
    user_id: str
    chat_kind: ChatKind = ChatKind.PRIVATE
    user_name: str = ""
    args: str = ""  # the words after the command name
    images: tuple[IncomingImage, ...] = ()
    is_chat_admin: bool = False  # may change this chat's settings (private chats: always)
    # an admin grant of the front-end: Discord, a role of ANIBOT_DISCORD_ADMIN_ROLES in a listed server; the REST
    # API, the admin token (ANIBOT_API_ADMIN_TOKEN)
    has_admin_role: bool = False
    channel_nsfw: bool = False  # NSFW pictures need no spoiler here
    message_id: str = ""
    full_size: bool = False  # also draw the full-size annotated PNG (the REST API, on request)

    @property
    def requester(self) -> Requester:
        return Requester(self.platform, self.chat_id, self.user_id)

    @property
    def may_change_chat_settings(self) -> bool:
        return self.is_chat_admin or self.chat_kind is ChatKind.PRIVATE

    def where(self) -> str:
        """Context for logs: platform, chat and user ids (never names or message text)."""
        return f"{self.platform} chat={self.chat_id} user={self.user_id}"
