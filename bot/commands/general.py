"""/help, /stats and /settings."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bot.invocation import Invocation, Progress
from bot.numbers import ascii_int_in
from bot.registry import COMMANDS, Permission
from bot.render import percent
from bot.replies import Reply, ReplyField, ReplyKind
from core.chat.store import TitleLanguage
from core.vision.results import DEFAULT_SURE_CONFIDENCE
from workers.celery_app import ANALYZE_TASK, TASK_QUEUES

if TYPE_CHECKING:
    from bot.layer import CommandLayer


@COMMANDS.command("help", summary="What I can do")
async def help_command(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    admin = layer.is_bot_admin(inv)
    lines = []
    rank = list(Permission)
    for spec in sorted(layer.commands.all(), key=lambda c: rank.index(c.permission)):
        if spec.permission is Permission.BOT_ADMIN and not admin:
            continue
        lines.append(f"{spec.usage}: {spec.summary}")
    text = (
        "Post a picture (or reply to one and mention me) and I mark each character's head with a name and a "
        "confidence, list other candidates, and add tags and a caption.\n\n" + "\n".join(lines)
    )
    return [Reply(title="anibot", text=text)]


@COMMANDS.command("stats", summary="How much I have seen and how busy I am")
async def stats(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    analyses = await layer.run_sync(layer.store.analysis_count)
    characters = await layer.run_sync(layer.store.list_characters)
    backlog = await layer.waiter.backlog(TASK_QUEUES[ANALYZE_TASK])
    return [
        Reply(
            title="Statistics",
            fields=(
                ReplyField("Pictures analysed", f"{analyses:,}", inline=True),
                ReplyField("Characters known", f"{len(characters):,}", inline=True),
                ReplyField("Pictures waiting", f"{backlog:,}", inline=True),
            ),
            data={"analyses": analyses, "characters": len(characters), "queued": backlog},
        )
    ]


def _switch(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("on", "yes", "true", "1"):
        return True
    if lowered in ("off", "no", "false", "0"):
        return False
    raise ValueError("use on or off")


def _top_n(value: str) -> int:
    n = ascii_int_in(value, 1, 10)
    if n is None:
        raise ValueError("use a number from 1 to 10")
    return n


_FRACTION = re.compile(r"(?:0|1)?(?:\.[0-9]{1,4})?")  # ASCII only: 0.6, .6, 1, 0
_PERCENT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,2})?)%")  # 60%, 62.5%


def _sure(value: str) -> float:
    """A confidence as a fraction from 0 to 1 (``0.6``) or a percentage (``60%``)."""
    bad = ValueError("use a confidence from 0 to 1 (e.g. 0.6) or a percentage (e.g. 60%)")
    if percentage := _PERCENT.fullmatch(value):
        number = float(percentage.group(1)) / 100
    elif value and value != "." and _FRACTION.fullmatch(value):
        number = float(value)
    else:
        raise bad
    if not 0.0 <= number <= 1.0:
        raise bad
    return number


# /settings NAME VALUE: the chat setting each name changes, and how its value is read
SETTINGS = {
    "auto": ("auto_analyze", _switch, "answer every picture posted here (on/off)"),
    "topn": ("top_n", _top_n, "candidates shown per head (1-10)"),
    "spoilers": ("nsfw_spoilers", _switch, "hide questionable/explicit pictures behind a spoiler (on/off)"),
    "language": ("title_language", TitleLanguage, "anime titles in romaji, english or japanese"),
    "sure": (
        "sure_threshold",
        _sure,
        'name a head only when at least this sure (0-100%, e.g. 60%); below it I say "not sure" and keep '
        "my guesses behind a button",
    ),
}


def _settings_reply(chat, inv: Invocation) -> Reply:  # type: ignore[no-untyped-def]
    auto = chat.auto_analyze_in(inv.chat_kind)
    values = {
        "auto": ("on" if auto else "off") + (" (default)" if chat.auto_analyze is None else ""),
        "topn": str(chat.top_n),
        "spoilers": "on" if chat.nsfw_spoilers else "off",
        "language": chat.title_language.value,
        "sure": percent(chat.sure_threshold)
        + (" (default)" if chat.sure_threshold == DEFAULT_SURE_CONFIDENCE else ""),
    }
    fields = tuple(
        ReplyField(f"{name}: {values[name]}", help_text) for name, (_, _, help_text) in SETTINGS.items()
    )
    return Reply(
        title="Settings of this chat",
        fields=fields,
        footer="Change one with /settings <name> <value>, e.g. /settings auto on",
    )


@COMMANDS.command(
    "settings",
    summary="Show or change this chat's settings (chat admins)",
    usage="/settings [auto|topn|spoilers|language|sure] [value]",
    permission=Permission.CHAT_ADMIN,
    argument="change",
)
async def settings_command(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    words = inv.args.split()
    if not words:
        return [_settings_reply(await layer.chat_settings(inv), inv)]
    name = words[0].lower()
    if name not in SETTINGS or len(words) != 2:
        return [Reply(kind=ReplyKind.REFUSAL, text=f"Usage: /settings <{'|'.join(SETTINGS)}> <value>")]
    field, parse, help_text = SETTINGS[name]
    try:
        value = parse(words[1].lower())
    except ValueError:
        return [Reply(kind=ReplyKind.REFUSAL, text=f"Bad value for {name}: {help_text}.")]
    chat = await layer.run_sync(layer.chats.update_settings, inv.platform, inv.chat_id, **{field: value})
    return [_settings_reply(chat, inv)]
