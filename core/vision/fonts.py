"""A chain of font files with per-glyph fallback, so labels render Latin, Cyrillic, kana and CJK alike.

Each character is drawn with the first font of the chain whose cmap covers it; characters no font covers
are drawn with the first font anyway (tofu) and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont

log = logging.getLogger(__name__)

KNOWN_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",  # Hangul, absent from Droid Sans Fallback
)

_warned: set[str] = set()


def _matplotlib_fonts() -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        return []
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [ttf / "DejaVuSans-Bold.ttf", ttf / "DejaVuSans.ttf"]


@cache
def _coverage(path: str) -> frozenset[int]:
    """Code points of the font's best cmap (read once per file)."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except (OSError, ValueError, KeyError, TTLibError) as exc:  # a broken font must not break annotation
        log.warning("cannot read cmap of %s: %s", path, exc)
        return frozenset()


@lru_cache(maxsize=64)
def load_font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)


def _metrics(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    if hasattr(font, "getmetrics"):
        return font.getmetrics()
    return font.getbbox("Ag")[3], 0  # bitmap default font (Pillow without FreeType)


class FontChain:
    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths: tuple[str, ...] = tuple(str(p) for p in paths)

    def __repr__(self) -> str:
        return f"FontChain({list(self.paths)!r})"

    @classmethod
    def discover(cls, preferred: Path | None = None) -> FontChain:
        """Preferred font first, then every known font that exists here (deduplicated)."""
        candidates = [preferred] if preferred else []
        candidates += [Path(p) for p in KNOWN_FONTS] + _matplotlib_fonts()
        found = list({p.resolve(): p for p in candidates if p.is_file()}.values())  # keeps first order
        if preferred and preferred not in found:
            log.warning("font %s not found; using %s", preferred, found or "Pillow's default font")
        return cls(found)

    def font_for(self, ch: str) -> str | None:
        """First font covering ``ch``; the first font (tofu) when none does; None for an empty chain."""
        return next((p for p in self.paths if ord(ch) in _coverage(p)), self.paths[0] if self.paths else None)

    def missing(self, text: str) -> set[str]:
        if not self.paths:
            return set()
        lost = {
            ch for ch in text if not ch.isspace() and not any(ord(ch) in _coverage(p) for p in self.paths)
        }
        if lost - _warned:
            log.warning("no font covers %r; drawn as tofu (fonts: %s)", "".join(sorted(lost)), self.paths)
            _warned.update(lost)
        return lost

    def runs(self, text: str) -> list[tuple[str | None, str]]:
        """Split text into (font path, substring) runs; whitespace stays with the current run."""
        self.missing(text)
        out: list[tuple[str | None, str]] = []
        pending = ""  # leading whitespace, before any font is chosen
        for ch in text:
            if ch.isspace():
                if out:
                    out[-1] = (out[-1][0], out[-1][1] + ch)
                else:
                    pending += ch
                continue
            path = self.font_for(ch)
            if out and out[-1][0] == path:
                out[-1] = (path, out[-1][1] + ch)
            else:
                out.append((path, pending + ch))
                pending = ""
        if pending:
            out.append((self.paths[0] if self.paths else None, pending))
        return out

    def _layout(self, text: str, size: int) -> tuple[list[tuple[object, str, int, int]], int, int, int]:
        """Runs as (font, substring, x offset, ascent), total width, max ascent, max descent."""
        items, x, asc, desc = [], 0, 0, 0
        for path, sub in self.runs(text):
            font = load_font(path, size)
            a, d = _metrics(font)
            items.append((font, sub, x, a))
            x += round(font.getlength(sub))
            asc, desc = max(asc, a), max(desc, d)
        return items, x, asc, desc

    def text_size(self, text: str, size: int) -> tuple[int, int]:
        _, width, asc, desc = self._layout(text, size)
        return width, asc + desc

    def draw_text(
        self, draw: ImageDraw.ImageDraw, xy: Sequence[float], text: str, size: int, fill: object
    ) -> None:
        """Draw ``text`` with its top-left at ``xy``; all runs share one baseline."""
        items, _, asc, _ = self._layout(text, size)
        for font, sub, dx, a in items:
            draw.text((xy[0] + dx, xy[1] + asc - a), sub, font=font, fill=fill)


@lru_cache(maxsize=1)
def default_chain() -> FontChain:
    """The process-wide chain, honouring ``ANIBOT_FONT_PATH``."""
    try:
        from core.settings import get_settings

        preferred = get_settings().font_path
    except (ImportError, ValueError) as exc:  # settings unavailable or invalid: still annotate
        log.warning("font settings unavailable (%s); discovering fonts", exc)
        preferred = None
    return FontChain.discover(preferred)
