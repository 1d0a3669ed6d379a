"""Reading one multipart form part with a byte bound: every upload route of the API reads through it."""

from __future__ import annotations

from aiohttp import BodyPartReader

from core.vision.intake import too_many_bytes


async def read_part(part: BodyPartReader, limit: int) -> bytes:
    """A part's bytes, refused as soon as more than ``limit`` arrived (nothing more is read)."""
    chunks = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        chunks.extend(chunk)
        if len(chunks) > limit:
            raise too_many_bytes(len(chunks), limit)
    return bytes(chunks)
