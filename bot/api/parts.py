"""Reading multipart uploads with bounds: one part (``read_part``), and a form of pictures and small fields
(``read_picture_form``). Every upload route of the API reads through them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web

from core.vision.intake import too_many_bytes

NOT_MULTIPART = "Send the pictures as multipart form parts named 'image'."


async def read_part(part: BodyPartReader, limit: int) -> bytes:
    """A part's bytes, refused as soon as more than ``limit`` arrived (nothing more is read)."""
    chunks = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        chunks.extend(chunk)
        if len(chunks) > limit:
            raise too_many_bytes(len(chunks), limit)
    return bytes(chunks)


class FormRefused(ValueError):
    """A form refused while it was read: ``code`` and a message for the caller (answered 400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PictureForm:
    pictures: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, bytes), in form order
    fields: dict[str, str] = field(default_factory=dict)


async def read_picture_form(
    request: web.Request,
    *,
    max_pictures: int,
    max_image_bytes: int,
    max_fields: int,
    max_field_bytes: int,
    timeout_s: float,
    unnamed: Callable[[int], str],
    too_many: str,
    keep_fields: int | None = None,
) -> PictureForm:
    """The ``image`` parts (at most ``max_pictures``, each at most ``max_image_bytes``) and the other fields (the
    first value of each name; at most ``keep_fields`` names when given), with at most ``max_pictures +
    max_fields`` parts, all read within ``timeout_s`` (else ``TimeoutError``). A picture without a file name is
    named ``unnamed(its index)``. Raises :class:`FormRefused`, and ``IntakeError`` for a part over its size."""
    if not request.content_type.startswith("multipart/"):
        raise FormRefused("no_image", NOT_MULTIPART)
    form = PictureForm()
    async with asyncio.timeout(timeout_s):
        reader = await request.multipart()
        parts = 0
        async for part in reader:
            parts += 1
            if parts > max_pictures + max_fields:
                raise FormRefused("bad_request", f"At most {max_pictures + max_fields} form parts.")
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "image":
                if len(form.pictures) >= max_pictures:
                    raise FormRefused("too_many_images", too_many)
                data = await read_part(part, max_image_bytes)
                form.pictures.append(((part.filename or unnamed(len(form.pictures)))[:100], data))
            else:
                value = (await read_part(part, max_field_bytes)).decode(errors="replace")
                if part.name and (keep_fields is None or len(form.fields) < keep_fields):
                    form.fields.setdefault(part.name, value)
    return form
