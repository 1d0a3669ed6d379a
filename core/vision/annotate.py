"""Draw an AnalysisResult onto its image: a box per head and a "Name 93%" label ("?" on grey when not sure)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from core.vision.fonts import FontChain, default_chain
from core.vision.results import DEFAULT_SURE_CONFIDENCE, AnalysisResult, Head

# Saturated colours that stay apart from each other and from the UNKNOWN grey (Kelly / Tableau mix).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 20, 60),
    (31, 119, 180),
    (60, 180, 75),
    (255, 200, 0),
    (145, 30, 180),
    (245, 130, 48),
    (0, 190, 190),
    (240, 50, 230),
    (128, 0, 0),
    (0, 0, 128),
)
UNKNOWN_COLOUR = (150, 150, 150)
NOT_SURE_LABEL = "?"  # the answer's "not sure": no name drawn below the threshold


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against ``bg``."""
    lin = [c / 3294.6 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in bg]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return (0, 0, 0) if luminance > 0.179 else (255, 255, 255)


def _label(head: Head, sure: float = DEFAULT_SURE_CONFIDENCE) -> str:
    if not head.is_sure(sure):
        return NOT_SURE_LABEL
    return f"{head.name} {round(head.confidence * 100)}%"


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy; transparency is flattened onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def head_colours(result: AnalysisResult, sure: float = DEFAULT_SURE_CONFIDENCE) -> list[tuple[int, int, int]]:
    """Box colour of each head: palette colours in order for named heads, grey for UNKNOWN and for a name below
    ``sure`` (see ``Head.is_sure``)."""
    colours, i = [], 0
    for head in result.heads:
        if not head.is_sure(sure):
            colours.append(UNKNOWN_COLOUR)
        else:
            colours.append(PALETTE[i % len(PALETTE)])
            i += 1
    return colours


def annotate(
    image: Image.Image,
    result: AnalysisResult,
    *,
    fonts: FontChain | None = None,
    sure: float = DEFAULT_SURE_CONFIDENCE,
) -> Image.Image:
    """Return a new RGB image with each head boxed and labelled; ``image`` is not modified. A head not named at
    ``sure`` or above is grey and labelled "?": the picture, drawn once for every chat, never shows a name the
    answer would call "not sure" by default."""
    fonts = fonts or default_chain()
    out = _to_rgb(image)
    w, h = out.size
    # boxes are in the analysed image's pixels; follow a resize of the image handed in
    sx, sy = w / max(1, result.width or w), h / max(1, result.height or h)
    line = max(2, round(min(w, h) / 200))
    size = max(12, round(min(w, h) / 28))
    pad = max(2, size // 5)
    draw = ImageDraw.Draw(out)

    placed = []
    for head, colour in zip(result.heads, head_colours(result, sure), strict=True):
        b = head.box
        x1 = min(max(0, round(b.x1 * sx)), w - 1)
        y1 = min(max(0, round(b.y1 * sy)), h - 1)
        x2 = min(max(x1, round(b.x2 * sx)), w - 1)
        y2 = min(max(y1, round(b.y2 * sy)), h - 1)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        placed.append((x1, y1, colour, _label(head, sure)))

    # labels after all boxes, so no box line crosses a label
    for x1, y1, colour, text in placed:
        tw, th = fonts.text_size(text, size)
        lw, lh = tw + 2 * pad, th + 2 * pad
        lx = min(max(0, x1), max(0, w - lw))
        ly = y1 - lh if y1 - lh >= 0 else y1 + line  # above the box, else inside its top edge
        ly = min(max(0, ly), max(0, h - lh))
        draw.rectangle((lx, ly, lx + lw - 1, ly + lh - 1), fill=colour)
        fonts.draw_text(draw, (lx + pad, ly + pad), text, size, _text_colour(colour))
    return out


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


REPLY_QUALITIES = (85, 75, 60, 45)  # JPEG qualities tried, best first, before the picture is made smaller


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` scaled down (never up) so that its long side is at most ``max_side`` pixels."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def reply_picture(
    image: Image.Image,
    result: AnalysisResult,
    *,
    max_side: int = 2048,
    max_bytes: int = 5_000_000,
    fonts: FontChain | None = None,
) -> bytes:
    """The annotated picture as chat platforms take it: a JPEG whose long side is at most ``max_side`` and whose
    size is under ``max_bytes`` (lower qualities first, then a smaller picture). Labels are drawn at the reply's
    size, so they stay legible."""
    side = max_side
    while True:
        drawn = annotate(fit_within(_to_rgb(image), side), result, fonts=fonts)
        for quality in REPLY_QUALITIES:
            data = _encode_jpeg(drawn, quality)
            if len(data) <= max_bytes:
                return data
        if side <= 64:
            return data  # a 64-px JPEG is a few KB: only an absurd max_bytes gets here
        side = round(side * 0.7)
