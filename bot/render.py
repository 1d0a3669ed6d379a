"""Analysis results as neutral replies: per head the top-N with confidences, tags, rating and caption."""

from __future__ import annotations

from bot.replies import Button, Reply, ReplyField, ReplyImage, ReplyKind
from core.chat.store import ChatSettings
from core.vision.results import (
    DEFAULT_SURE_CONFIDENCE,
    SOURCE_BOTH,
    SOURCE_GALLERY,
    SOURCE_TAGGER,
    UNKNOWN,
    AnalysisResult,
    Candidate,
    Head,
)

NSFW_RATINGS = frozenset({"questionable", "explicit"})
SHOWN_TAGS = 15
SHOWN_HEADS = 15  # heads listed per picture (the largest); the rest are counted


def percent(confidence: float) -> str:
    return f"{round(confidence * 100)}%"


NOT_SURE = "not sure"
# where a named head's name came from, as its title says it (older results have no source: nothing is said)
SOURCE_LABELS = {
    SOURCE_GALLERY: "from the gallery",
    SOURCE_TAGGER: "from the tagger",
    SOURCE_BOTH: "both agree",
}
GUESSES_BUTTON = "Show guesses"


def head_title(index: int, head: Head, sure_threshold: float = DEFAULT_SURE_CONFIDENCE) -> str:
    """``#1 Name (91%, from the gallery)`` for a head named surely enough, else ``#1 not sure``: below the chat's
    threshold no name is shown at all (a confident wrong name is worse than none)."""
    if not head.is_sure(sure_threshold):
        return f"#{index} {NOT_SURE}"
    source = SOURCE_LABELS.get(head.source)
    return f"#{index} {head.name} ({percent(head.confidence)}{f', {source}' if source else ''})"


def candidate_line(rank: int, candidate: Candidate) -> str:
    series = f" ({candidate.series})" if candidate.series else ""
    # the gallery is where most names come from: only the others are said
    source = SOURCE_LABELS.get(candidate.source) if candidate.source != SOURCE_GALLERY else None
    return f"{rank}. {candidate.name}{series}: {percent(candidate.confidence)}" + (
        f", {source}" if source else ""
    )


def candidate_lines(head: Head, limit: int) -> str:
    if not head.candidates:
        return "no candidates (identification unavailable)"
    lines = [candidate_line(rank, c) for rank, c in enumerate(head.candidates[:limit], start=1)]
    if head.name == UNKNOWN:
        lines.insert(0, "not in my gallery; closest:")
    return "\n".join(lines)


def unsure_line(head: Head) -> str:
    """What the answer says of a head it is not sure of: no names, only where its guesses are."""
    if not head.candidates:
        return "no candidates (identification unavailable)"
    return f"I can't tell who this is; my best guesses are behind “{GUESSES_BUTTON}”."


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
    their candidates, tags, rating and caption, and the result buttons. A head below the chat's
    ``sure_threshold`` is "not sure": no name, its guesses behind the "Show guesses" button."""
    heads = result.heads
    threshold = chat.sure_threshold
    if heads:
        named = sum(h.is_sure(threshold) for h in heads)
        title = f"{len(heads)} head{'s' * (len(heads) != 1)} found, {named} named"
        if named < len(heads):
            title += f", {len(heads) - named} {NOT_SURE}"
    else:
        title = "No character heads found"
    listed, left_out = listed_heads(result, max_heads)
    fields = [
        ReplyField(
            head_title(i, h, threshold),
            candidate_lines(h, chat.top_n) if h.is_sure(threshold) else unsure_line(h),
        )
        for i, h in listed
    ]
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
    if any(not h.is_sure(threshold) and h.candidates for _, h in listed):
        buttons = (Button(GUESSES_BUTTON, "guesses", job_id), *buttons)
    return Reply(
        kind=ReplyKind.RESULT,
        title=title,
        text=result.caption or "",
        fields=tuple(fields),
        image=ReplyImage(reply_image, f"anibot-{result.image_sha256[:12]}.jpg", spoiler=spoiler),
        buttons=buttons,
        footer=f"job {job_id[:8]}" + (" · cached" if cached else ""),
        data={
            "job_id": job_id,
            "result": result.to_dict(),
            "cached": cached,
            "sure_threshold": threshold,
        },
    )


def candidates_reply(
    result: AnalysisResult,
    job_id: str,
    max_heads: int = SHOWN_HEADS,
    sure_threshold: float = DEFAULT_SURE_CONFIDENCE,
) -> Reply:
    """Every candidate kept for each listed head (the "More candidates" button)."""
    listed, left_out = listed_heads(result, max_heads)
    fields = tuple(
        ReplyField(head_title(i, h, sure_threshold), candidate_lines(h, len(h.candidates))) for i, h in listed
    )
    if left_out:
        fields += (left_out_field(left_out, max_heads),)
    return Reply(
        kind=ReplyKind.RESULT,
        title="All candidates" if fields else "No heads in that picture",
        fields=fields,
        footer=f"job {job_id[:8]}",
        data={"job_id": job_id, "result": result.to_dict()},
    )


def guesses_reply(
    result: AnalysisResult, job_id: str, chat: ChatSettings, max_heads: int = SHOWN_HEADS
) -> Reply:
    """The best guesses (the chat's ``top_n``, with confidences) for each listed head the answer was not sure of
    (the "Show guesses" button), by the chat's threshold now."""
    listed, _ = listed_heads(result, max_heads)
    unsure = [(i, h) for i, h in listed if not h.is_sure(chat.sure_threshold) and h.candidates]
    fields = tuple(
        ReplyField(head_title(i, h, chat.sure_threshold), candidate_lines(h, chat.top_n)) for i, h in unsure
    )
    return Reply(
        kind=ReplyKind.RESULT,
        title="Best guesses (not sure)" if fields else "No guesses to show",
        text="" if fields else "I'm sure enough of every head in that picture (see /settings sure).",
        fields=fields,
        footer=f"job {job_id[:8]}",
        data={"job_id": job_id, "result": result.to_dict(), "sure_threshold": chat.sure_threshold},
    )
