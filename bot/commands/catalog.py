"""Anime commands: /recommend, /anime, /search, /fav (answered by a worker on the cpu queue)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from bot.invocation import Invocation, Progress
from bot.numbers import ascii_int
from bot.registry import BUTTONS, COMMANDS
from bot.replies import Button, Reply, ReplyField, ReplyKind, refusal
from bot.waiting import WaitOutcome
from core.chat.store import ChatSettings, TitleLanguage
from core.storage.jobs import JobStatus
from workers.celery_app import CATALOG_TASK, TASK_QUEUES

if TYPE_CHECKING:
    from bot.layer import CommandLayer

PAGE = 5
QUERY_PREFIX = "anibot:query:"  # a long title behind a short button payload
QUERY_TTL_S = 24 * 3600
SYNOPSIS_CHARS = 400
CATALOG_WAIT_S = 30.0


async def ask_catalog(layer: CommandLayer, inv: Invocation, operation: str, **kwargs: Any) -> dict | Reply:
    """Run one catalogue operation on a cpu worker; the answer's dict, or a reply saying why there is none."""
    from bot.commands.analysis import BUSY, UNAVAILABLE
    from bot.layer import error_reply, new_error_id

    job = await layer.run_sync(
        layer.client.submit_task,
        CATALOG_TASK,
        "catalog",
        requester=inv.requester,
        params={"op": operation, "kwargs": kwargs},
    )
    waited = await layer.waiter.wait(job, TASK_QUEUES[CATALOG_TASK], timeout_s=CATALOG_WAIT_S)
    if waited.outcome is WaitOutcome.UNAVAILABLE:
        return refusal(UNAVAILABLE, "unavailable")
    if waited.outcome is WaitOutcome.BUSY:
        return refusal(BUSY, "busy")
    if waited.job.status is JobStatus.FAILED:
        error = waited.job.error
        if error is not None and error.code != "internal":
            return refusal(error.message, error.code)
        return error_reply(new_error_id())
    return await layer.run_sync(layer.client.result_json, waited.job)


def display_title(item: dict, language: TitleLanguage) -> str:
    if language is TitleLanguage.ENGLISH and item.get("english_title"):
        return item["english_title"]
    if language is TitleLanguage.JAPANESE and item.get("japanese_title"):
        return item["japanese_title"]
    return item.get("title", "?")


def _not_matched(answer: dict, query: str) -> Reply | None:
    """'Did you mean' or 'not found' when the title did not resolve to one anime."""
    suggestions = answer.get("did_you_mean") or []
    if answer.get("matched") or answer.get("anime") or (answer.get("items") and not suggestions):
        return None
    if suggestions:
        return Reply(
            kind=ReplyKind.REFUSAL,
            code="ambiguous",
            text=f"Which one did you mean by “{query}”?\n" + "\n".join(f"• {s}" for s in suggestions[:8]),
            data=answer,
        )
    return refusal(answer.get("message") or f"I found no anime called “{query}”.", "not_found")


async def _remember_query(layer: CommandLayer, query: str) -> str:
    key = hashlib.sha256(query.encode()).hexdigest()[:12]
    await layer.run_sync(layer.kv.set, QUERY_PREFIX + key, query.encode(), QUERY_TTL_S)
    return key


async def _recommend_page(
    layer: CommandLayer, inv: Invocation, query: str | None, offset: int
) -> list[Reply]:
    chat: ChatSettings = await layer.chat_settings(inv)
    answer = await ask_catalog(
        layer,
        inv,
        "recommend",
        title=query,
        platform=inv.platform,
        user_id=inv.user_id,
        n=PAGE,
        offset=offset,
    )
    if isinstance(answer, Reply):
        return [answer]
    items = answer.get("items") or []
    if not items:
        if query:
            missing = _not_matched(answer, query)
            if missing is not None:
                return [missing]
        return [Reply(text=answer.get("message") or "Nothing to recommend yet: /fav add <title> first.")]
    source = answer.get("matched") or {}
    basis = display_title(source, chat.title_language) if source else "your favourites"
    fields = tuple(
        ReplyField(
            f"{offset + rank}. {display_title(item, chat.title_language)}"
            + (f" ({item['year']})" if item.get("year") else ""),
            " · ".join(
                part
                for part in (
                    item.get("reason", ""),
                    f"score {item['score']:.2f}" if item.get("score") else "",
                    item.get("mal_url", ""),
                )
                if part
            ),
        )
        for rank, item in enumerate(items, start=1)
    )
    key = await _remember_query(layer, query or "")
    return [
        Reply(
            kind=ReplyKind.RESULT,
            title=f"If you liked {basis}",
            fields=fields,
            buttons=(Button("More", "recmore", f"{offset + PAGE}:{key}"),),
            data=answer,
        )
    ]


@COMMANDS.command(
    "recommend",
    summary="Anime like a title (or like your favourites)",
    usage="/recommend [title]",
    argument="title",
)
async def recommend(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    return await _recommend_page(layer, inv, inv.args.strip() or None, 0)


@BUTTONS.action("recmore")
async def recommend_more(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    offset_text, _, key = inv.args.partition(":")
    offset = ascii_int(offset_text)
    raw = await layer.run_sync(layer.kv.get, QUERY_PREFIX + key) if offset is not None else None
    if raw is None or offset is None:
        return [refusal("That list has expired; ask /recommend again.")]
    return await _recommend_page(layer, inv, raw.decode() or None, offset)


@COMMANDS.command("anime", summary="Details of an anime", usage="/anime <title>", argument="title")
async def anime(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    query = inv.args.strip()
    if not query:
        return [refusal("Usage: /anime <title>")]
    answer = await ask_catalog(layer, inv, "details", title=query)
    if isinstance(answer, Reply):
        return [answer]
    item = answer.get("anime")
    if not item:
        return [_not_matched(answer, query) or refusal(f"I found no anime called “{query}”.")]
    chat: ChatSettings = await layer.chat_settings(inv)
    facts = [
        ("Score", f"{item['score']:.2f}" if item.get("score") else ""),
        ("Type", item.get("kind", "")),
        ("Episodes", str(item.get("episodes") or "")),
        ("Aired", item.get("aired", "") or str(item.get("year") or "")),
        (
            "Studios",
            ", ".join(item.get("studios") or [])
            if isinstance(item.get("studios"), list)
            else item.get("studios", ""),
        ),
        (
            "Genres",
            ", ".join(item.get("genres") or [])
            if isinstance(item.get("genres"), list)
            else item.get("genres", ""),
        ),
    ]
    synopsis = (item.get("synopsis") or "").strip()
    if len(synopsis) > SYNOPSIS_CHARS:
        synopsis = synopsis[:SYNOPSIS_CHARS].rsplit(" ", 1)[0] + "…"
    others = [item.get(k) for k in ("title", "english_title", "japanese_title") if item.get(k)]
    subtitle = " / ".join(t for t in dict.fromkeys(others) if t != display_title(item, chat.title_language))
    return [
        Reply(
            kind=ReplyKind.RESULT,
            title=display_title(item, chat.title_language),
            text="\n".join(p for p in (subtitle, synopsis) if p),
            fields=tuple(ReplyField(name, value, inline=True) for name, value in facts if value),
            footer=item.get("mal_url", ""),
            data=answer,
        )
    ]


@COMMANDS.command(
    "search",
    summary="Search anime by name, genre and type",
    usage="/search [name] [genre:Action] [type:TV]",
    argument="query",
)
async def search(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    query = inv.args.strip()
    if not query:
        return [refusal("Usage: /search [name] [genre:Action] [type:TV]")]
    answer = await ask_catalog(layer, inv, "search", query=query)
    if isinstance(answer, Reply):
        return [answer]
    items = answer.get("items") or []
    if not items:
        return [Reply(text=answer.get("message") or f"Nothing found for “{query}”.", data=answer)]
    chat: ChatSettings = await layer.chat_settings(inv)
    lines = [
        f"• {display_title(item, chat.title_language)}"
        + "".join(f", {v}" for v in (item.get("kind"), item.get("year")) if v)
        for item in items
    ]
    return [Reply(kind=ReplyKind.RESULT, title=f"Search: {query}", text="\n".join(lines), data=answer)]


FAV_OPS = ("add", "remove", "list")


@COMMANDS.command(
    "fav",
    summary="Your favourite anime (used by /recommend)",
    usage="/fav add|remove|list [title]",
    argument="args",
)
async def favourites(layer: CommandLayer, inv: Invocation, progress: Progress) -> list[Reply]:
    op, _, title = inv.args.strip().partition(" ")
    op = op.lower() or "list"
    if op not in FAV_OPS or (op != "list" and not title.strip()):
        return [refusal("Usage: /fav add <title>, /fav remove <title> or /fav list")]
    answer = await ask_catalog(
        layer,
        inv,
        "favourites",
        op=op,
        title=title.strip() or None,
        platform=inv.platform,
        user_id=inv.user_id,
    )
    if isinstance(answer, Reply):
        return [answer]
    if op != "list" and not answer.get("anime") and answer.get("did_you_mean"):
        return [_not_matched(answer, title.strip())]  # type: ignore[list-item]
    chat: ChatSettings = await layer.chat_settings(inv)
    items = answer.get("items") or []
    listing = "\n".join(f"• {display_title(item, chat.title_language)}" for item in items) or "(none yet)"
    message = answer.get("message", "")
    return [Reply(title="Your favourites", text="\n\n".join(p for p in (message, listing) if p), data=answer)]
