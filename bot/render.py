"""Analysis results as neutral replies: per head the top-N with confidences, tags, rating and caption."""

from __future__ import annotations

from bot.replies import Button, Reply, ReplyField, ReplyImage, ReplyKind
from core.chat.store import ChatSettings
from core.vision.results import UNKNOWN, AnalysisResult, Head

NSFW_RATINGS = frozenset({"questionable", "explicit"})
SHOWN_TAGS = 15
SHOWN_HEADS = 15  # heads listed per picture (the largest); the rest are counted


def percent(confidence: float) -> str:
    return f"{round(confidence * 100)}%"


def head_title(index: int, head: Head) -> str:
    if head.name == UNKNOWN:
        return f"#{index} unknown"
    return f"#{index} {head.name} ({percent(head.confidence)})"


def candidate_lines(head: Head, limit: int) -> str:
    if not head.candidates:
        return "no candidates (identification unavailable)"
    lines = []
    for rank, candidate in enumerate(head.candidates[:limit], start=1):
        series = f" ({candidate.series})" if candidate.series else ""
        lines.append(f"{rank}. {candidate.name}{series}: {percent(candidate.confidence)}")
    if head.name == UNKNOWN:
        lines.insert(0, "not in my gallery; closest:")
    return "\n".join(lines)


def listed_heads(result: AnalysisResult, limit: int = SHOWN_HEADS) -> tuple[list[tuple[int, Head]], int]:
    """The ``limit`` largest heads with their numbers (1-based, in the result's order, as drawn and as "Wrong?"
    answers name them), in that order, and how many were left out."""
    numbered = list(enumerate(result.heads, start=1))
    if len(numbered) <= limit:
        return numbered, 0
    largest = sorted(numbered, key=lambda item: (-item[1].box.width * item[1].box.height, item[0]))[:limit]
    return sorted(largest, key=lambda item: item[0]), len(numbered) - limit


def left_out_field(left_out: int, limit: int) -> ReplyField:
    return ReplyField(
        "", f"…and {left_out} smaller head{'s' * (left_out != 1)} not listed (the {limit} largest are)."
    )


def is_nsfw(result: AnalysisResult) -> bool:
    return (result.rating or "") in NSFW_RATINGS


def analysis_reply(
    result: AnalysisResult,
    reply_image: bytes,
    *,
    job_id: str,
    chat: ChatSettings,
    channel_nsfw: bool,
    cached: bool = False,
    max_heads: int = SHOWN_HEADS,
) -> Reply:
    """The answer to a picture: the annotated picture (a reply-sized JPEG), the largest ``max_heads`` heads with
    their candidates, tags, rating and caption, and the result buttons."""
    heads = result.heads
    if heads:
        named = sum(h.name != UNKNOWN for h in heads)
        title = f"{len(heads)} head{'s' * (len(heads) != 1)} found, {named} named"
    else:
        title = "No character heads found"
    listed, left_out = listed_heads(result, max_heads)
    fields = [ReplyField(head_title(i, h), candidate_lines(h, chat.top_n)) for i, h in listed]
    if left_out:
        fields.append(left_out_field(left_out, max_heads))
    general = [t.name.replace("_", " ") for t in result.tags if t.category == "general"][:SHOWN_TAGS]
    if general:
        fields.append(ReplyField("Tags", ", ".join(general)))
    if result.rating:
        fields.append(ReplyField("Rating", result.rating, inline=True))
    if result.degraded:
        stages = ", ".join(sorted({f.stage for f in result.degraded}))
        fields.append(ReplyField("Note", f"partial answer: {stages} unavailable", inline=True))
    spoiler = is_nsfw(result) and chat.nsfw_spoilers and not channel_nsfw
    buttons: tuple[Button, ...] = ()
    if heads:
        buttons = (Button("More candidates", "more", job_id), Button("Wrong? Tell me who", "wrong", job_id))
    return Reply(
        kind=ReplyKind.RESULT,
        title=title,
        text=result.caption or "",
        fields=tuple(fields),
        image=ReplyImage(reply_image, f"anibot-{result.image_sha256[:12]}.jpg", spoiler=spoiler),
        buttons=buttons,
        footer=f"job {job_id[:8]}" + (" · cached" if cached else ""),
        data={"job_id": job_id, "result": result.to_dict(), "cached": cached},
    )


def candidates_reply(result: AnalysisResult, job_id: str, max_heads: int = SHOWN_HEADS) -> Reply:
    """Every candidate kept for each listed head (the "More candidates" button)."""
    listed, left_out = listed_heads(result, max_heads)
    fields = tuple(ReplyField(head_title(i, h), candidate_lines(h, len(h.candidates))) for i, h in listed)
    if left_out:
        fields += (left_out_field(left_out, max_heads),)
    return Reply(
        kind=ReplyKind.RESULT,
        title="All candidates" if fields else "No heads in that picture",
        fields=fields,
        footer=f"job {job_id[:8]}",
        data={"job_id": job_id, "result": result.to_dict()},
    )
