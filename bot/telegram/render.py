"""Neutral replies as Telegram HTML: a photo caption of at most 1,024 characters, the rest in messages."""

from __future__ import annotations

import html
import re

from telegram import ForceReply, InlineKeyboardButton, InlineKeyboardMarkup

from bot.replies import CAPTION_LIMIT, Button, Reply, cap_messages, split_text

MESSAGE_LIMIT = 4096
PHOTO_BYTES_LIMIT = 10_000_000  # sendPhoto: at most 10 MB (and width + height <= 10000, ratio <= 20)
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def escape(text: str) -> str:
    """User or model text as Telegram HTML: escaped, with `inline code` (the layer's markdown-ish examples) kept."""
    return INLINE_CODE.sub(r"<code>\1</code>", html.escape(text))


def blocks(reply: Reply) -> list[str]:
    """The reply as HTML blocks, each with balanced tags, in reading order."""
    out = []
    if reply.title:
        out.append(f"<b>{html.escape(reply.title)}</b>")
    if reply.text:
        out.append(escape(reply.text))
    for field in reply.fields:
        name = f"<b>{html.escape(field.name)}</b>\n" if field.name else ""
        out.append(name + escape(field.value))
    if reply.footer:
        out.append(f"<i>{html.escape(reply.footer)}</i>")
    return out


def pack(parts: list[str], first_limit: int, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Join blocks into chunks: the first at most ``first_limit`` long, the others at most ``limit``.

    A block too long for any chunk is cut as plain text (its markup dropped), so a chunk never splits a tag."""
    chunks: list[str] = []
    current = ""
    for part in parts:
        cap = first_limit if not chunks else limit
        candidate = f"{current}\n\n{part}" if current else part
        if len(candidate) <= cap:
            current = candidate
            continue
        if current:
            chunks.append(current)
            current = ""
        cap = first_limit if not chunks else limit
        if len(part) <= cap:
            current = part
            continue
        plain = html.unescape(re.sub(r"</?(?:b|i|code)>", "", part))
        # escaping lengthens text: cut at half the room, then again if still too long
        pieces = [
            cut for piece in split_text(plain, cap // 2) for cut in cut_escaped(html.escape(piece), cap)
        ]
        chunks.extend(pieces[:-1])
        current = pieces[-1]
    if current:
        chunks.append(current)
    return chunks or [""]


def cut_escaped(text: str, cap: int) -> list[str]:
    """Cut escaped text into pieces of at most ``cap`` characters, never inside an entity (``&amp;`` ...)."""
    pieces = []
    while len(text) > cap:
        end = cap
        amp = text.rfind("&", cap - 5, cap)  # html.escape's entities are at most 6 characters long
        if amp != -1 and ";" not in text[amp:cap]:
            end = amp
        pieces.append(text[:end])
        text = text[end:]
    return [*pieces, text]


def caption_and_rest(reply: Reply) -> list[str]:
    """Chunks for a photo reply: the caption (<= 1,024 characters) and the follow-up messages (capped)."""
    return cap_messages(pack(blocks(reply), CAPTION_LIMIT))


def message_chunks(reply: Reply) -> list[str]:
    """The reply as messages of at most 4,096 characters, at most ``MAX_MESSAGES`` of them."""
    return cap_messages(pack(blocks(reply), MESSAGE_LIMIT))


ROW_CHARACTERS = 36  # labels per keyboard row, all together: a phone shows about this many uncut


def keyboard_rows(buttons: tuple[Button, ...]) -> list[list[Button]]:
    """The buttons in order, in rows whose labels together stay within ``ROW_CHARACTERS`` (one button at least)."""
    rows: list[list[Button]] = []
    for button in buttons:
        if rows and sum(len(b.label) for b in rows[-1]) + len(button.label) <= ROW_CHARACTERS:
            rows[-1].append(button)
        else:
            rows.append([button])
    return rows


def keyboard(reply: Reply) -> InlineKeyboardMarkup | ForceReply | None:
    if reply.buttons:
        return InlineKeyboardMarkup(
            [
                [InlineKeyboardButton(b.label, callback_data=b.callback_data) for b in row]
                for row in keyboard_rows(reply.buttons)
            ]
        )
    if reply.expects_answer:
        return ForceReply(selective=True)
    return None


def photo_fits(data: bytes) -> bool:
    """Whether Telegram's sendPhoto takes a file this large (bigger ones are answered with the text only)."""
    return len(data) <= PHOTO_BYTES_LIMIT
