"""``POST /v1/tag``: a batch of pictures tagged as one ``anibot.tag`` job, captions made here with the options of
``anibot tag`` (core.tagging.captions), so the API and the command line caption a picture alike.

Form fields: one ``image`` part per picture (at most ANIBOT_TAG_MAX_IMAGES, each at most ANIBOT_MAX_IMAGE_BYTES)
and the options, every one optional: ``general``, ``character`` (0-1), ``rating``, ``keep_kaomoji``,
``drop_implied`` (true/false), ``exclude``, ``include_first`` (comma lists), ``max_tags``, ``underscores``
(keep/spaces).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.api.openapi import MAX_TAGS
from bot.api.parts import NOT_MULTIPART, FormRefused, PictureForm, read_picture_form
from core.settings import Settings
from core.tagging.captions import CaptionOptions, caption_text, parse_tag_list, select_tags
from core.tagging.implications import Implications
from core.vision.intake import IntakeError, image_sha256, inspect_image

MAX_OPTION_FIELDS = 16
MAX_OPTION_BYTES = 8 * 1024  # an exclude list may be long
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class BadForm(ValueError):
    """A form the route refuses: ``code`` and a message for the caller."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


async def read_form(request: web.Request, settings: Settings) -> PictureForm:
    """The pictures and the option fields, every read bounded (bytes, parts, time)."""
    try:
        form = await read_picture_form(
            request,
            max_pictures=settings.tag_max_images,
            max_image_bytes=settings.max_image_bytes,
            max_fields=MAX_OPTION_FIELDS,
            max_field_bytes=MAX_OPTION_BYTES,
            timeout_s=settings.api_read_timeout_s,
            unnamed=lambda index: f"image-{index}",
            too_many=f"At most {settings.tag_max_images} pictures a request.",
        )
    except FormRefused as exc:
        raise BadForm(exc.code, str(exc)) from None
    if not form.pictures:
        raise BadForm("no_image", NOT_MULTIPART)
    return form


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    text = fields.get(name, "").strip().lower()
    if not text:
        return default
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise BadForm("bad_request", f"{name} must be true or false.")


def _number(fields: dict[str, str], name: str, default: float) -> float:
    text = fields.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise BadForm("bad_request", f"{name} must be a number from 0 to 1.")
    return value


def parse_options(fields: dict[str, str]) -> CaptionOptions:
    """The caption options of the form (the defaults of ``anibot tag`` for those not given)."""
    known = {
        "general",
        "character",
        "rating",
        "exclude",
        "include_first",
        "max_tags",
        "underscores",
        "keep_kaomoji",
        "drop_implied",
    }
    unknown = sorted(set(fields) - known)
    if unknown:
        raise BadForm(
            "bad_request", f"Unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    max_text = fields.get("max_tags", "").strip()
    if max_text and not (max_text.isascii() and max_text.isdigit() and 1 <= int(max_text) <= MAX_TAGS):
        raise BadForm("bad_request", f"max_tags must be a number from 1 to {MAX_TAGS}.")
    underscores = fields.get("underscores", "spaces").strip() or "spaces"
    if underscores not in ("keep", "spaces"):
        raise BadForm("bad_request", "underscores must be keep or spaces.")
    return CaptionOptions(
        general=_number(fields, "general", 0.35),
        character=_number(fields, "character", 0.85),
        rating=_flag(fields, "rating", True),
        exclude=tuple(parse_tag_list(fields.get("exclude", ""))),
        include_first=tuple(parse_tag_list(fields.get("include_first", ""))),
        max_tags=int(max_text) if max_text else None,
        underscores=underscores,  # type: ignore[arg-type]
        keep_kaomoji=_flag(fields, "keep_kaomoji", True),
        drop_implied=_flag(fields, "drop_implied", True),
    )


@lru_cache(maxsize=4)
def implications(path: Path | None) -> Implications:
    return Implications.load(path)


def checked(pictures: list[tuple[str, bytes]], settings: Settings) -> list[IntakeError | None]:
    """Each picture's header checked (format, size) before anything is stored: the refusal, or None."""
    out: list[IntakeError | None] = []
    for _, data in pictures:
        try:
            inspect_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
            out.append(None)
        except IntakeError as exc:
            out.append(exc)
    return out


def answer_body(
    job_id: str,
    pictures: list[tuple[str, bytes]],
    refusals: list[IntakeError | None],
    body: dict[str, Any] | None,
    options: CaptionOptions,
    implied: Implications | None,
) -> dict[str, Any]:
    """The route's answer: per picture its caption and tags, or its error, in the order sent."""
    from core.tagging.runner import PictureFailure
    from workers.tag_client import decode_results

    scored = iter(decode_results(body) if body is not None else [])
    out = []
    for (filename, data), refusal in zip(pictures, refusals, strict=True):
        entry: dict[str, Any] = {"filename": filename, "sha256": image_sha256(data)}
        result = PictureFailure(refusal.code, refusal.user_message) if refusal is not None else next(scored)
        if isinstance(result, PictureFailure):
            entry["error"] = {"code": result.code, "message": result.message}
        else:
            tags = select_tags(result, options, implied)
            entry["caption"] = caption_text(tags, options)
            entry["rating"] = next((t.name for t in tags if t.category == "rating"), None)
            entry["tags"] = [t.to_dict() for t in tags]
        out.append(entry)
    return {"job_id": job_id, "model": (body or {}).get("model"), "pictures": out}
