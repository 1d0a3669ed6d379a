"""Safe decoding of a user-posted image file into an RGB picture.

Every refusal is an :class:`IntakeError` with a short ``code`` and a ``user_message`` that can be shown to a
chat user as is; ``str(error)`` carries the technical detail for logs. The limits are checked before any
pixel is decoded: the byte size first, then width x height from the (lazily read) header. Pillow's
global settings (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``, warning filters) are never changed.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEGs from phones and cameras: the first picture is a JPEG
_ACCEPTED_LIST = "JPEG, PNG, WebP, GIF or BMP"
# Signatures of accepted formats: bytes that start like one but that Pillow cannot open are damaged files.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")
_WHITE = (255, 255, 255, 255)
# What a malformed EXIF block can raise from ImageOps.exif_transpose.
_EXIF_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, SyntaxError, struct.error)


class IntakeError(Exception):
    """Base of every refusal: ``code`` is a short stable id, ``user_message`` a sentence safe to show."""

    code = "intake_error"
    default_message = "This file could not be read as an image."

    def __init__(self, user_message: str | None = None, detail: str | None = None) -> None:
        self.user_message = user_message or self.default_message
        super().__init__(detail or self.user_message)


class NotAnImage(IntakeError):
    code = "not_an_image"
    default_message = f"This file is not an image. Please send a {_ACCEPTED_LIST} picture."


class CorruptImage(IntakeError):
    code = "corrupt_image"
    default_message = "This image is damaged or incomplete and could not be opened."


class ImageTooLarge(IntakeError):
    code = "too_large"
    default_message = "This image is too large."


class UnsupportedFormat(IntakeError):
    code = "unsupported_format"
    default_message = f"This image format is not supported. Please send a {_ACCEPTED_LIST} picture."


@dataclass(frozen=True)
class DecodedImage:
    """A decoded picture: ``image`` is RGB with EXIF orientation applied; ``sha256`` is its identity."""

    image: Image.Image
    sha256: str  # hex SHA-256 of the original bytes
    format: str  # one of ACCEPTED_FORMATS
    width: int
    height: int
    n_bytes: int


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the original file bytes (the image's identity)."""
    return hashlib.sha256(data).hexdigest()


def _human_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f}".removesuffix(".0") + " MB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f}".removesuffix(".0") + " KB"
    return f"{n} bytes"


def _human_pixels(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}".removesuffix(".0") + " MP"
    return f"{n:,} pixels"


def too_many_bytes(n: int, max_bytes: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"This file is too large ({_human_bytes(n)}); the limit is {_human_bytes(max_bytes)}.",
        f"{n} bytes > max_bytes={max_bytes}",
    )


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    n = width * height
    return ImageTooLarge(
        f"This image is too large ({width}x{height}, {_human_pixels(n)}); "
        f"the limit is {_human_pixels(max_pixels)}.",
        f"{width}x{height}={n} pixels > max_pixels={max_pixels}",
    )


def _to_l(im: Image.Image, scale: float, offset: float = 0.0) -> Image.Image:
    """Linearly map an "I"/"F" image to 8-bit "L" (values outside 0..255 are clipped)."""
    out = im.point(lambda v: v * scale + offset).convert("L")
    out.info.pop("transparency", None)  # a 16-bit colour key means nothing after scaling
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: high bit depths scaled (not clipped), alpha composited on white."""
    if im.mode.startswith("I;16"):
        im = _to_l(im.convert("I"), 1 / 257)
    elif im.mode in ("I", "F"):
        lo, hi = im.getextrema()
        if im.mode == "F" and lo >= 0 and hi <= 1:
            im = _to_l(im, 255.0)
        elif lo >= 0 and hi <= 255:
            im = _to_l(im, 1.0)
        elif lo >= 0 and hi <= 65535:
            im = _to_l(im, 1 / 257)
        else:  # an unusual range: stretch it to 0..255
            im = _to_l(im, 255 / (hi - lo), -lo * 255 / (hi - lo))
    if im.has_transparency_data:
        canvas = Image.new("RGBA", im.size, _WHITE)
        canvas.alpha_composite(im.convert("RGBA"))
        return canvas.convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding a pixel (what front-ends check: workers decode)."""

    sha256: str  # hex SHA-256 of the original bytes
    format: str  # one of ACCEPTED_FORMATS
    width: int
    height: int
    frames: int  # 1 for still pictures; an animation's frame count (only the first is ever analysed)
    n_bytes: int


def _open(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[Image.Image, str]:
    """``data`` opened lazily (the header only) and checked: size in bytes, format, width x height."""
    n_bytes = len(data)
    if n_bytes > max_bytes:
        raise too_many_bytes(n_bytes, max_bytes)
    if n_bytes == 0:
        raise NotAnImage(detail="empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"This image is too large; the limit is {_human_pixels(max_pixels)}.", str(exc)
        ) from exc
    except (UnidentifiedImageError, ImportError) as exc:  # ImportError: a plugin some library hooked in
        if data.startswith(_SIGNATURES):
            raise CorruptImage(detail=f"unreadable header: {exc}") from exc
        raise NotAnImage(detail="unidentified file") from exc
    except Exception as exc:  # Pillow recognised the format but the header is broken
        raise CorruptImage(detail=f"{type(exc).__name__}: {exc}") from exc
    try:
        fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "")
        if fmt not in ACCEPTED_FORMATS:
            raise UnsupportedFormat(detail=f"format {im.format}")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise CorruptImage(detail=f"size {width}x{height}")
        if width * height > max_pixels:
            raise _too_many_pixels(width, height, max_pixels)
    except IntakeError:
        im.close()
        raise
    return im, fmt


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageHeader:
    """Check ``data`` as front-ends do, from its header alone: byte size, format, width x height, frame count.

    Nothing is decoded, so a 40 MP picture costs what its header costs; a file whose pixel data is damaged passes
    here and is refused by the worker that decodes it (:func:`decode_image`). Raises an :class:`IntakeError`."""
    im, fmt = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with im:
        try:
            frames = int(
                getattr(im, "n_frames", 1) or 1
            )  # GIF and APNG: counted by skipping frames, not decoding
        except Exception as exc:  # a frame table that breaks off
            raise CorruptImage(detail=f"{fmt} frames unreadable: {type(exc).__name__}: {exc}") from exc
        width, height = im.size
    return ImageHeader(image_sha256(data), fmt, width, height, frames, len(data))


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode ``data`` (the bytes of an uploaded file) into an RGB :class:`DecodedImage`.

    Only the first frame of an animation is decoded. Raises an :class:`IntakeError` subclass, never a
    Pillow exception.
    """
    n_bytes = len(data)
    im, fmt = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with im:
        width, height = im.size
        try:
            im.load()  # the first frame only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
            raise _too_many_pixels(width, height, max_pixels) from exc
        except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, EOFError, ...
            raise CorruptImage(detail=f"{fmt} decode failed: {type(exc).__name__}: {exc}") from exc
        try:
            oriented = ImageOps.exif_transpose(im)
        except _EXIF_ERRORS:  # a damaged EXIF block is metadata only: keep the pixels as stored
            oriented = im
        try:
            rgb = _to_rgb(oriented)
        except Exception as exc:
            raise UnsupportedFormat(detail=f"cannot convert mode {oriented.mode}: {exc}") from exc
    return DecodedImage(rgb, image_sha256(data), fmt, rgb.width, rgb.height, n_bytes)


def read_image_file(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of an image file; the size is checked with ``stat`` before reading.

    A missing file raises ``FileNotFoundError``; a directory or any non-regular file is :class:`NotAnImage`.
    """
    st = Path(path).stat()
    if not stat.S_ISREG(st.st_mode):
        raise NotAnImage(detail=f"not a regular file: {path}")
    if st.st_size > max_bytes:
        raise too_many_bytes(st.st_size, max_bytes)
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)  # bounded even if the file grows after the stat


def decode_image_file(path: Path, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Like :func:`decode_image` for a file (see :func:`read_image_file`)."""
    return decode_image(
        read_image_file(path, max_bytes=max_bytes), max_bytes=max_bytes, max_pixels=max_pixels
    )
