"""The neutral reply every command returns; the Discord, Telegram and HTTP adapters only translate it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

CAPTION_LIMIT = 1024  # a Telegram photo caption, and what we keep a Discord embed's first part within
CALLBACK_DATA_LIMIT = 64  # bytes of Telegram callback_data (Discord custom_id allows 100)
MAX_MESSAGES = 4  # messages one reply may take on a chat platform: the first and at most 3 follow-ups
CUT_NOTE = "(The rest of this answer was left out: it is too long.)"


class ReplyKind(StrEnum):
    INFO = "info"  # help, settings, lists
    ACK = "ack"  # "working on it", queue position
    RESULT = "result"  # an analysis, a recommendation
    REFUSAL = "refusal"  # the user asked for something we will not do (bad input, limits, permissions)
    ERROR = "error"  # our fault: an apology with an error id


@dataclass(frozen=True)
class ReplyField:
    name: str
    value: str
    inline: bool = False


@dataclass(frozen=True)
class ReplyImage:
    data: bytes
    filename: str
    spoiler: bool = False  # sent hidden (Telegram has_spoiler, Discord SPOILER_ file name)


@dataclass(frozen=True)
class Button:
    """A button whose press comes back to the command layer as ``action`` with ``payload``."""

    label: str
    action: str
    payload: str = ""

    @property
    def callback_data(self) -> str:
        data = f"{self.action}:{self.payload}"
        if len(data.encode()) > CALLBACK_DATA_LIMIT:
            raise ValueError(f"callback data too long for Telegram: {data!r}")
        return data

    @staticmethod
    def parse(data: str) -> tuple[str, str]:
        action, _, payload = data.partition(":")
        return action, payload


@dataclass(frozen=True)
class Reply:
    kind: ReplyKind = ReplyKind.INFO
    title: str = ""
    text: str = ""
    fields: tuple[ReplyField, ...] = ()
    image: ReplyImage | None = None
    buttons: tuple[Button, ...] = ()
    footer: str = ""
    error_id: str | None = None
    code: str = (
        ""  # machine-readable reason of a refusal (e.g. "too_large", "rate_limited"), for the REST API
    )
    expects_answer: bool = False  # the next message of this user here answers it (Telegram: ForceReply)
    data: dict | None = field(default=None, compare=False)  # the structured answer, for the REST API

    def plain_text(self) -> str:
        """Everything as plain text, in reading order: title, text, fields, footer."""
        parts = [self.title] if self.title else []
        if self.text:
            parts.append(self.text)
        parts.extend(f"{f.name}\n{f.value}" if f.name else f.value for f in self.fields)
        if self.footer:
            parts.append(self.footer)
        return "\n\n".join(parts)


def refusal(text: str, code: str = "refused") -> Reply:
    """A short human answer to something we will not do; ``code`` tells programs why."""
    return Reply(kind=ReplyKind.REFUSAL, text=text, code=code)


def rate_limited(text: str, retry_after_s: float) -> Reply:
    """A refusal for a spent rate limit or budget; the REST API turns ``retry_after_s`` into Retry-After."""
    return Reply(
        kind=ReplyKind.REFUSAL,
        text=text,
        code="rate_limited",
        data={"retry_after_s": max(1, math.ceil(retry_after_s))},
    )


def split_text(text: str, limit: int = CAPTION_LIMIT) -> list[str]:
    """Cut ``text`` into chunks of at most ``limit`` characters, at paragraph, then line, then word breaks."""
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n\n"), -1)
        if cut < limit // 3:
            cut = window.rfind("\n")
        if cut < limit // 3:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].strip()
    if rest:
        chunks.append(rest)
    return chunks


def cap_messages(chunks: list[str], limit: int = MAX_MESSAGES, note: str = CUT_NOTE) -> list[str]:
    """At most ``limit`` messages: when there are more, the last one kept says the rest was left out."""
    if len(chunks) <= limit:
        return chunks
    return [*chunks[: limit - 1], note]
