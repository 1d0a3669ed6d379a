from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.vision.annotate import PALETTE, UNKNOWN_COLOUR, _text_colour, annotate, encode_png, head_colours
from core.vision.fonts import FontChain
from core.vision.results import UNKNOWN, AnalysisResult, Box, Head

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
DROID = Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")
needs_fonts = pytest.mark.skipif(
    not (DEJAVU.is_file() and DROID.is_file()),
    reason=f"needs {DEJAVU} (fonts-dejavu-core) and {DROID} (fonts-droid-fallback)",
)


def make_result(*heads: Head, width: int = 320, height: int = 240) -> AnalysisResult:
    return AnalysisResult(
        image_sha256="0" * 64,
        width=width,
        height=height,
        heads=heads,
        tags=(),
        rating=None,
        caption=None,
        fingerprint="",
    )


@pytest.fixture
def chain() -> FontChain:
    return FontChain([p for p in (DEJAVU, DROID) if p.is_file()])


def test_annotate_draws_boxes_and_labels(chain: FontChain) -> None:
    image = Image.new("RGB", (320, 240), (128, 128, 128))
    before = image.tobytes()
    result = make_result(
        Head(box=Box(30, 60, 130, 200), detection_score=0.9, name="初音ミク", confidence=0.93),
        Head(box=Box(180, 80, 290, 220), detection_score=0.8, name=UNKNOWN, confidence=0.1),
    )
    out = annotate(image, result, fonts=chain)

    assert out is not image and out.size == image.size and out.mode == "RGB"
    assert image.tobytes() == before
    colours = head_colours(result)
    assert colours[1] == UNKNOWN_COLOUR and colours[0] != colours[1]
    for head, colour in zip(result.heads, colours, strict=True):
        b = head.box
        mid_x, mid_y = int((b.x1 + b.x2) / 2), int((b.y1 + b.y2) / 2)
        for xy in ((int(b.x1), mid_y), (int(b.x2), mid_y), (mid_x, int(b.y2))):
            assert out.getpixel(xy) == colour, (head.name, xy)
        # the label sits above the box, on a background of the box colour
        assert out.getpixel((int(b.x1) + 1, int(b.y1) - 2)) == colour

    decoded = Image.open(io.BytesIO(encode_png(out)))
    assert decoded.size == (320, 240)
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(out))


def test_box_at_top_border_keeps_label_inside(chain: FontChain) -> None:
    image = Image.new("RGB", (320, 240), (128, 128, 128))
    result = make_result(Head(box=Box(250, 0, 319, 100), detection_score=0.9, name="Émilie", confidence=0.5))
    out = np.asarray(annotate(image, result, fonts=chain))
    colour = np.array(head_colours(result)[0])
    # a filled label background exists inside the image, inside the box's top, not cut off at the right
    label_rows = np.where((out[:, 255:318] == colour).all(axis=2).sum(axis=1) > 40)[0]
    assert len(label_rows) >= 10 and label_rows.min() <= 5
    inner = out[3 : label_rows.max(), 200:319]
    assert (inner != colour).any(axis=2).sum() > 20  # text ink on the label
    assert (out[:, :200] == 128).all()  # clamped label did not spill far to the left


def test_annotate_without_any_font_file() -> None:
    image = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    result = make_result(
        Head(box=Box(10, 30, 60, 70), detection_score=0.9, name="Rei", confidence=0.7), width=100, height=80
    )
    out = annotate(image, result, fonts=FontChain([]))
    assert out.mode == "RGB" and out.size == (100, 80)


@needs_fonts
def test_chain_covers_names(chain: FontChain) -> None:
    for name in ("初音ミク", "Рей Аянами", "Émilie", "鳴潮 綾波レイ", "Zoë Ørsted"):
        assert chain.missing(name) == set(), name
    assert FontChain.discover().missing("初音ミク Рей Émilie") == set()
    assert FontChain([DEJAVU]).missing("Miku 初音") == {"初", "音"}
    assert FontChain.discover(DROID).paths[0] == str(DROID)  # a preferred font goes first


def test_a_head_below_the_sure_threshold_is_drawn_like_an_unknown_one(chain: FontChain) -> None:
    """No name on the picture for a head the answer calls "not sure": grey, labelled "?" like an unknown head."""
    image = Image.new("RGB", (320, 240), (128, 128, 128))
    box = Box(30, 60, 130, 200)
    unsure = make_result(Head(box=box, detection_score=0.9, name="Hatsune Miku", confidence=0.3))
    unknown = make_result(Head(box=box, detection_score=0.9, name=UNKNOWN, confidence=0.7))
    assert head_colours(unsure) == [UNKNOWN_COLOUR]
    drawn = annotate(image, unsure, fonts=chain)
    assert drawn.tobytes() == annotate(image, unknown, fonts=chain).tobytes()
    # a chat-independent default: a lower threshold names it, in a palette colour, with a longer label
    lenient = annotate(image, unsure, fonts=chain, sure=0.2)
    assert head_colours(unsure, sure=0.2) == [PALETTE[0]] and lenient.getpixel((30, 130)) == PALETTE[0]
    label_row = [lenient.getpixel((x, 58)) for x in range(320)]
    grey_row = [drawn.getpixel((x, 58)) for x in range(320)]
    assert label_row.count(PALETTE[0]) > 2 * grey_row.count(UNKNOWN_COLOUR) > 0


def test_label_text_contrasts_with_background() -> None:
    assert _text_colour((255, 200, 0)) == (0, 0, 0) and _text_colour(UNKNOWN_COLOUR) == (0, 0, 0)
    assert _text_colour((0, 0, 128)) == (255, 255, 255) and _text_colour(PALETTE[0]) == (255, 255, 255)


@needs_fonts
def test_runs_split_by_font(chain: FontChain) -> None:
    assert chain.runs("Miku 初音") == [(str(DEJAVU), "Miku "), (str(DROID), "初音")]
    assert chain.runs(" Рей Аянами ") == [(str(DEJAVU), " Рей Аянами ")]
    assert [p for p, _ in chain.runs("初音 Miku")] == [str(DROID), str(DEJAVU)]


@needs_fonts
def test_cjk_label_has_real_glyphs(chain: FontChain) -> None:
    def render(text: str) -> np.ndarray:
        canvas = Image.new("L", (120, 40), 255)
        chain.draw_text(ImageDraw.Draw(canvas), (4, 4), text, 24, 0)
        return np.asarray(canvas)

    first, second = render("初音"), render("ミク")
    assert (first < 128).sum() > 100 and (second < 128).sum() > 50
    assert not np.array_equal(first, second)  # tofu boxes would render identically
    w, h = chain.text_size("初音ミク", 24)
    assert 80 <= w <= 110 and 20 <= h <= 40


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise over gradients: compresses like a photo (a flat picture would flatter every encoder)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 255 // (width + height)], axis=-1)
    noisy = base + rng.integers(-60, 60, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def test_the_reply_picture_of_a_12_mp_photo_is_a_small_jpeg_with_its_boxes(chain: FontChain) -> None:
    from core.vision.annotate import reply_picture

    image = photo_like(4000, 3000)
    head = Head(box=Box(1000, 600, 2000, 1600), detection_score=0.9, name="Rem", confidence=0.9)
    result = make_result(head, width=4000, height=3000)
    data = reply_picture(image, result, max_side=2048, max_bytes=5_000_000, fonts=chain)
    assert data.startswith(b"\xff\xd8\xff") and len(data) <= 5_000_000
    full = encode_png(annotate(image, result, fonts=chain))
    assert len(full) > 4 * len(data)  # what used to be sent: a full-size PNG
    with Image.open(io.BytesIO(data)) as small:
        assert small.format == "JPEG" and small.size == (2048, 1536)
        # the box follows the picture's scale: its left edge at x = 1000 * 2048 / 4000 = 512
        edge = np.asarray(small.convert("RGB"))[600, 510:515].astype(int)
        assert (np.abs(edge - np.array(PALETTE[0])).sum(axis=1) < 90).any(), edge

    # a tight byte budget: lower quality first, then a smaller picture, never over the budget
    tight = reply_picture(image, result, max_side=2048, max_bytes=150_000, fonts=chain)
    assert len(tight) <= 150_000
    with Image.open(io.BytesIO(tight)) as smaller:
        assert max(smaller.size) < 2048

    # a small picture is never enlarged
    little = reply_picture(photo_like(320, 240), make_result(head), max_side=2048, fonts=chain)
    with Image.open(io.BytesIO(little)) as same:
        assert same.size == (320, 240)
