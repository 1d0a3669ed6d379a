"""Neutral replies as Discord messages: an embed within Discord's limits, the image as an attachment, buttons.

What does not fit in one embed (6,000 characters, 25 fields, 4,096 in the description, 1,024 per field value)
follows in plain messages of at most 2,000 characters, in reading order. An image marked ``spoiler`` is sent as a
``SPOILER_`` attachment beside the embed, not inside it: Discord does not blur images shown in embeds.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from typing import Any

import discord
from discord.utils import escape_markdown, escape_mentions

from bot.replies import MAX_MESSAGES, Reply, ReplyField, ReplyKind, cap_messages, split_text

MESSAGE_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FIELD_COUNT_LIMIT = 25
FOOTER_LIMIT = 2048
EMBED_LIMIT = 6000  # title, description, field names and values, footer, all together
BUTTON_LABEL_LIMIT = 80
BUTTON_COUNT_LIMIT = 25  # five rows of five
BLANK = "\u200b"  # Discord refuses empty field names and values
SPOILER_PREFIX = "SPOILER_"
FILE_LIMIT = 10 * 1024 * 1024  # attachments a server without boosts takes (bigger ones: the text alone)

COLOURS = {
    ReplyKind.INFO: discord.Colour.dark_teal(),
    ReplyKind.ACK: discord.Colour.light_grey(),
    ReplyKind.RESULT: discord.Colour.blurple(),
    ReplyKind.REFUSAL: discord.Colour.orange(),
    ReplyKind.ERROR: discord.Colour.red(),
}


@dataclass
class Outgoing:
    """One Discord message to send: ``channel.send(**outgoing.kwargs())`` or ``followup.send(...)``."""

    content: str | None = None
    embed: discord.Embed | None = None
    file: discord.File | None = None
    view: discord.ui.View | None = None

    def kwargs(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in (
                ("content", self.content),
                ("embed", self.embed),
                ("file", self.file),
                ("view", self.view),
            )
            if value is not None
        }


INLINE_CODE = re.compile(
    r"(`[^`\n]+`)"
)  # the layer's `examples`: kept as code, where nothing renders or pings


NOT_A_HEADING = re.compile(r"^\\(#{1,3})(?![# ])")  # "#1 Aoi": a heading needs a space after its hashes


def escape_line(line: str) -> str:
    return NOT_A_HEADING.sub(r"\1", escape_mentions(escape_markdown(line)))


def escape(text: str) -> str:
    """User (and model) text as Discord shows it literally: markdown (masked links, headings, bold, spoilers)
    and mentions (``<@id>``, ``@everyone``) escaped, line by line; `inline code` kept as code."""
    parts = INLINE_CODE.split(text)
    return "".join(
        part if i % 2 else "\n".join(escape_line(line) for line in part.split("\n"))
        for i, part in enumerate(parts)
    )


def escaped(reply: Reply) -> Reply:
    """``reply`` with every text a user may have put in it escaped (titles, text, fields, footer)."""
    return replace(
        reply,
        title=escape(reply.title),
        text=escape(reply.text),
        fields=tuple(ReplyField(escape(f.name), escape(f.value), f.inline) for f in reply.fields),
        footer=escape(reply.footer),
    )


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def image_filename(reply: Reply, *, channel_nsfw: bool) -> str | None:
    """The attachment's name: ``SPOILER_`` first when the image is hidden (never in an NSFW channel)."""
    if reply.image is None:
        return None
    name = reply.image.filename
    if reply.image.spoiler and not channel_nsfw and not name.startswith(SPOILER_PREFIX):
        name = SPOILER_PREFIX + name
    return name


def button_view(reply: Reply) -> discord.ui.View | None:
    """The reply's buttons; their presses come back through ``on_interaction`` (the custom id says it all).

    The view is stopped at once so discord.py keeps no state for it: presses are answered the same way before
    and after a restart."""
    if not reply.buttons:
        return None
    view = discord.ui.View(timeout=None)
    for button in reply.buttons[:BUTTON_COUNT_LIMIT]:
        view.add_item(
            discord.ui.Button(
                label=shorten(button.label, BUTTON_LABEL_LIMIT),
                custom_id=button.callback_data,
                style=discord.ButtonStyle.secondary,
            )
        )
    view.stop()
    return view


def _field_parts(field: ReplyField) -> list[tuple[str, str, bool]]:
    """A field as one or more embed fields: long values continue in fields named '… (continued)'."""
    name = shorten(field.name, FIELD_NAME_LIMIT) or BLANK
    values = split_text(field.value, FIELD_VALUE_LIMIT) or [BLANK]
    parts = [(name, values[0], field.inline)]
    continued = shorten(f"{field.name} (continued)", FIELD_NAME_LIMIT) if field.name else BLANK
    parts.extend((continued, value, field.inline) for value in values[1:])
    return parts


def _plain(reply: Reply) -> bool:
    """A short sentence (most refusals and errors, questions): sent as text rather than an embed."""
    if reply.expects_answer or reply.kind is ReplyKind.ACK:
        return True
    return not (reply.title or reply.fields or reply.image or reply.footer)


def _text_messages(text: str, limit: int) -> list[Outgoing]:
    """``text`` in messages of at most 2,000 characters, at most ``limit`` of them (see ``cap_messages``)."""
    return [Outgoing(content=chunk) for chunk in cap_messages(split_text(text, MESSAGE_LIMIT), limit)]


def render(reply: Reply, *, channel_nsfw: bool = False) -> list[Outgoing]:
    """``reply`` as the Discord messages to send, in order (the first one carries the image and the buttons)."""
    reply = escaped(reply)
    if reply.image is not None and len(reply.image.data) > FILE_LIMIT:
        reply = replace(reply, image=None)
    view = button_view(reply)
    filename = image_filename(reply, channel_nsfw=channel_nsfw)
    file = discord.File(io.BytesIO(reply.image.data), filename=filename) if reply.image and filename else None

    if _plain(reply):
        messages = _text_messages(reply.plain_text(), MAX_MESSAGES) or [Outgoing(content=BLANK)]
        messages[0].file = file
        messages[-1].view = view
        return messages

    title = shorten(reply.title, TITLE_LIMIT)
    footer = shorten(reply.footer, FOOTER_LIMIT)
    embed = discord.Embed(title=title or None, colour=COLOURS[reply.kind])
    if footer:
        embed.set_footer(text=footer)
    room = EMBED_LIMIT - len(title) - len(footer)
    overflow: list[str] = []  # everything after the first part that did not fit, in reading order

    if reply.text:
        chunks = split_text(reply.text, min(DESCRIPTION_LIMIT, room))
        embed.description = chunks[0]
        room -= len(chunks[0])
        overflow.extend(chunks[1:])

    for field in reply.fields:
        for name, value, inline in _field_parts(field):
            fits = len(embed.fields) < FIELD_COUNT_LIMIT and len(name) + len(value) <= room
            if overflow or not fits:
                overflow.append(value if name == BLANK else f"**{name}**\n{value}")
                continue
            embed.add_field(name=name, value=value, inline=inline)
            room -= len(name) + len(value)

    if file is not None and not file.filename.startswith(SPOILER_PREFIX):
        embed.set_image(url=f"attachment://{file.filename}")
    first = Outgoing(embed=embed, file=file, view=view)
    return [first, *_text_messages("\n\n".join(overflow), MAX_MESSAGES - 1)]
