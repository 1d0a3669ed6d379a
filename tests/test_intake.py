"""Tests of core.vision.intake with real image files crafted in memory with Pillow (no mocks)."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from PIL import Image

from core.settings import Settings
from core.vision.intake import (
    ACCEPTED_FORMATS,
    CorruptImage,
    DecodedImage,
    ImageTooLarge,
    IntakeError,
    NotAnImage,
    UnsupportedFormat,
    _to_rgb,
    decode_image,
    decode_image_file,
    image_sha256,
)

MAX_BYTES: int = Settings.model_fields["max_image_bytes"].default
MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
LIMITS = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes, **limits: int) -> DecodedImage:
    return decode_image(data, **{**LIMITS, **limits})


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def handmade_png(width: int, height: int) -> bytes:
    """An RGB PNG whose header claims width x height, with a tiny IDAT (a stream of zeros)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def noise_rgb(size: tuple[int, int] = (120, 90)) -> Image.Image:
    return Image.effect_noise(size, 64).convert("RGB")


# --- accepted formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(ACCEPTED_FORMATS))
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (64, 48), RED), fmt)
    out = decode(data)
    assert isinstance(out, DecodedImage)
    assert out.image.mode == "RGB"
    assert (out.width, out.height) == out.image.size == (64, 48)
    assert out.format == fmt
    assert out.n_bytes == len(data)
    assert out.sha256 == image_sha256(data) == hashlib.sha256(data).hexdigest()
    assert close(out.image.getpixel((32, 24)), RED)


def test_mpo_counts_as_jpeg() -> None:
    first, second = Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)
    out = decode(encode(first, "MPO", save_all=True, append_images=[second]))
    assert out.format == "JPEG"
    assert close(out.image.getpixel((16, 16)), RED)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (30, 20), RED), Image.new("RGB", (30, 20), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode(data)
    assert out.image.size == (30, 20)
    assert close(out.image.getpixel((15, 10)), RED)


def test_exif_orientation_applied() -> None:
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    out = decode(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.image.size == (20, 40) and (out.width, out.height) == (20, 40)
    assert close(out.image.getpixel((10, 5)), RED, 40)  # the left edge is now at the top
    assert close(out.image.getpixel((10, 35)), BLUE, 40)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_keeps_the_pixels() -> None:
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12"  # cut inside the first IFD entry
    out = decode(encode(Image.new("RGB", (40, 20), RED), "JPEG", exif=exif))
    assert out.image.size == (40, 20)
    assert close(out.image.getpixel((20, 10)), RED)


def test_fully_transparent_png_is_white() -> None:
    out = decode(encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG"))
    assert out.image.getextrema() == ((255, 255),) * 3


def test_half_alpha_red_is_pink() -> None:
    out = decode(encode(Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "PNG"))
    assert close(out.image.getpixel((8, 8)), (255, 127, 127), 3)


@pytest.mark.parametrize("fmt", ["WEBP", "GIF"])
def test_transparency_in_other_formats_is_white(fmt: str) -> None:
    im = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 8, 16))
    out = decode(encode(im, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert close(out.image.getpixel((4, 8)), RED)
    assert close(out.image.getpixel((12, 8)), WHITE)


def test_la_png_composited_on_white() -> None:
    out = decode(encode(Image.new("LA", (8, 8), (0, 0)), "PNG"))
    assert out.image.getpixel((4, 4)) == WHITE


def test_palette_png_with_transparency() -> None:
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (10, 0, 20, 10))  # right half red (index 1), left half index 0 = transparent
    data = encode(im, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode(data)
    assert out.image.getpixel((5, 5)) == WHITE
    assert out.image.getpixel((15, 5)) == RED


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode(data)
    assert out.image.mode == "RGB"
    assert close(out.image.getpixel((12, 12)), RED, 20)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    im = Image.new("I;16", (256, 4))
    im.putdata([x * 257 for x in range(256)] * 4)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode(data)
    assert out.image.mode == "RGB"
    assert out.image.getpixel((0, 0)) == (0, 0, 0)
    assert out.image.getpixel((255, 0)) == WHITE
    r, g, b = out.image.getpixel((128, 0))
    assert abs(r - 128) <= 2 and r == g == b


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_to_rgb(mode: str) -> None:
    out = decode(encode(Image.new(mode, (10, 10), 255 if mode == "L" else 1), "PNG"))
    assert out.image.mode == "RGB" and out.image.getpixel((5, 5)) == WHITE


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", [0, 32896, 65535], [0, 128, 255]),  # 16-bit range
        ("I", [0, 100, 255], [0, 100, 255]),  # already 8-bit
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # unit floats
        ("I", [-1000, 0, 1000], [0, 128, 255]),  # unusual range: stretched
    ],
)
def test_wide_modes_scaled(mode: str, values: list[float], expected: list[int]) -> None:
    im = Image.new(mode, (3, 1))
    im.putdata(values)
    rgb = _to_rgb(im)
    assert rgb.mode == "RGB"
    assert [abs(rgb.getpixel((x, 0))[0] - e) <= 1 for x, e in enumerate(expected)] == [True] * 3


# --- refusals ------------------------------------------------------------------------------------------


def truncated(fmt: str) -> bytes:
    data = encode(noise_rgb(), fmt)
    return data[: len(data) // 2]


def bad_ihdr_crc() -> bytes:
    data = bytearray(encode(noise_rgb(), "PNG"))
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


def garbage_idat() -> bytes:
    data = bytearray(encode(noise_rgb(), "PNG"))
    at = data.index(b"IDAT") + 10
    data[at : at + 40] = b"\0" * 40
    return bytes(data)


REFUSALS: dict[str, tuple[bytes, type[IntakeError], dict[str, int]]] = {
    "empty": (b"", NotAnImage, {}),
    "random": (random.Random(0).randbytes(4096), NotAnImage, {}),
    "text": (b"hello, this is a text file\n" * 20, NotAnImage, {}),
    "html": (b"<!doctype html><html><body>not an image</body></html>", NotAnImage, {}),
    "truncated_jpeg": (truncated("JPEG"), CorruptImage, {}),
    "truncated_png": (truncated("PNG"), CorruptImage, {}),
    "truncated_gif": (truncated("GIF"), CorruptImage, {}),
    "truncated_webp": (truncated("WEBP"), CorruptImage, {}),
    "truncated_bmp": (truncated("BMP"), CorruptImage, {}),
    "png_header_only": (encode(noise_rgb(), "PNG")[:20], CorruptImage, {}),
    "png_bad_ihdr_crc": (bad_ihdr_crc(), CorruptImage, {}),
    "png_garbage_idat": (garbage_idat(), CorruptImage, {}),
    "tiff": (encode(noise_rgb(), "TIFF"), UnsupportedFormat, {}),
    "ico": (encode(noise_rgb((32, 32)), "ICO"), UnsupportedFormat, {}),
    "ppm": (encode(noise_rgb(), "PPM"), UnsupportedFormat, {}),
    "too_many_bytes": (encode(noise_rgb(), "PNG"), ImageTooLarge, {"max_bytes": 1024}),
    "too_many_pixels": (encode(noise_rgb((300, 200)), "PNG"), ImageTooLarge, {"max_pixels": 50_000}),
    "bomb": (handmade_png(60_000, 60_000), ImageTooLarge, {}),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case: str) -> None:
    data, expected, limits = REFUSALS[case]
    with pytest.raises(expected) as info:
        decode(data, **limits)
    err = info.value
    assert type(err) is expected
    assert (
        err.code
        == {
            NotAnImage: "not_an_image",
            CorruptImage: "corrupt_image",
            ImageTooLarge: "too_large",
            UnsupportedFormat: "unsupported_format",
        }[expected]
    )
    msg = err.user_message
    assert msg and msg.strip() == msg and "\n" not in msg and len(msg) < 200
    for leak in ("Traceback", "PIL", "Error", "<_io", 'File "'):
        assert leak not in msg
    assert str(err)  # a detail for logs


def test_byte_limit_message_in_human_units() -> None:
    with pytest.raises(ImageTooLarge) as info:
        decode(b"\0" * (MAX_BYTES + 1))
    assert "20 MB" in info.value.user_message


def test_pixel_limit_checked_before_decoding() -> None:
    # 8000x6000 = 48 MP: under Pillow's own bomb threshold, over ours; its IDAT is far too short to decode,
    # so refusing it as too large (not corrupt) shows that the header is checked before load().
    with pytest.raises(ImageTooLarge) as info:
        decode(handmade_png(8000, 6000))
    assert "40 MP" in info.value.user_message
    with pytest.raises(CorruptImage):  # the same file within the limit is decoded, and found truncated
        decode(handmade_png(8000, 6000), max_pixels=50_000_000)


def test_decompression_bomb_refused_without_allocating() -> None:
    data = handmade_png(60_000, 60_000)
    assert len(data) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge):
            decode(data, max_pixels=10**12)  # even with a huge limit of ours, Pillow's guard is mapped
        with pytest.raises(ImageTooLarge):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024


# --- files -------------------------------------------------------------------------------------------


def test_decode_image_file(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (33, 22), BLUE), "WEBP")
    path = tmp_path / "pic.webp"
    path.write_bytes(data)
    out = decode_image_file(path, **LIMITS)
    assert (out.format, out.image.size, out.sha256) == ("WEBP", (33, 22), hashlib.sha256(data).hexdigest())


def test_decode_image_file_refuses_oversize_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    big = 200 * 1024 * 1024
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(big + 1)  # sparse: costs no disk, but reading it would allocate 200 MB
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge) as info:
            decode_image_file(path, max_bytes=big, max_pixels=MAX_PIXELS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024
    assert "200 MB" in info.value.user_message


def test_decode_image_file_directory_and_missing(tmp_path: Path) -> None:
    with pytest.raises(NotAnImage):
        decode_image_file(tmp_path, **LIMITS)
    with pytest.raises(FileNotFoundError):
        decode_image_file(tmp_path / "missing.png", **LIMITS)


# --- the header check front-ends do (no pixel decoded) ---------------------------------------------------------


def test_inspect_image_reads_the_header_only():
    from core.vision.intake import inspect_image

    # a 40 MP picture whose pixel data is a few KB of zeros: the header says 8000 x 5000, nothing is decoded
    huge = handmade_png(8000, 5000)
    tracemalloc.start()
    header = inspect_image(huge, **LIMITS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (header.format, header.width, header.height, header.frames) == ("PNG", 8000, 5000, 1)
    assert header.sha256 == image_sha256(huge) and header.n_bytes == len(huge)
    assert peak < 2 << 20, peak
    # its pixel data breaks off: the header check lets it through, decoding (in a worker) refuses it
    with pytest.raises(CorruptImage):
        decode(huge)

    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, BLUE, WHITE)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert inspect_image(gif, **LIMITS).frames == 3
    assert inspect_image(encode(frames[0], "JPEG"), **LIMITS).format == "JPEG"

    # what the header alone refuses, it refuses as decoding does
    for bad, error in (
        (b"plain text", NotAnImage),
        (b"", NotAnImage),
        (handmade_png(9000, 9000), ImageTooLarge),
        (encode(frames[0], "TIFF"), UnsupportedFormat),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, CorruptImage),
    ):
        with pytest.raises(error):
            inspect_image(bad, **LIMITS)
        with pytest.raises(error):
            decode(bad)
    with pytest.raises(ImageTooLarge):
        inspect_image(huge, max_bytes=len(huge) - 1, max_pixels=MAX_PIXELS)
