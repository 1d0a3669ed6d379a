"""Seeded, deterministic anime-style scenes with ground truth.

Every stage (detector, identifier, tagger, captioner) can be trained and tested offline against known answers:
each scene carries the head boxes, the identity of each character, Danbooru-style tags and a caption.
The same seed always gives the same pixels and the same truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.vision.results import Box

HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 28, 36),
    "brown": (120, 72, 40),
    "blonde": (240, 214, 110),
    "red": (200, 40, 45),
    "blue": (60, 110, 220),
    "pink": (245, 150, 190),
    "silver": (200, 205, 215),
    "green": (70, 170, 90),
    "purple": (130, 80, 190),
    "orange": (245, 140, 40),
    "aqua": (70, 210, 205),
}
EYE_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 90, 230),
    "red": (210, 30, 40),
    "green": (40, 160, 70),
    "brown": (110, 70, 35),
    "purple": (140, 60, 200),
    "yellow": (235, 200, 30),
    "aqua": (40, 200, 200),
}
HAIR_STYLES = ("long", "short", "twintails", "ponytail", "bob")
ACCESSORIES = ("hair_ribbon", "glasses", "hat", "hairband", "cat_ears", "hair_flower")
EXPRESSIONS = ("smile", "open_mouth", "closed_mouth")
SKIN = (255, 226, 206)


@dataclass(frozen=True)
class CharacterSpec:
    key: str
    name: str
    series: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    accessories: tuple[str, ...] = ()

    @property
    def tags(self) -> tuple[str, ...]:
        """The character's canonical look as Danbooru tags."""
        length = {"long": "long_hair", "twintails": "long_hair", "ponytail": "long_hair"}.get(
            self.hair_style, "short_hair"
        )
        style = {"twintails": "twintails", "ponytail": "ponytail", "bob": "bob_cut"}.get(self.hair_style)
        tags = [f"{self.hair_colour}_hair", f"{self.eye_colour}_eyes", length, *self.accessories]
        if style:
            tags.append(style)
        return tuple(tags)


# The synthetic cast: distinct hair colour/style, eye colour and accessories; some names are not Latin.
CAST: tuple[CharacterSpec, ...] = (
    CharacterSpec("aoi", "Aoi Sakuragi", "Synthetic Skies", "blue", "long", "blue", ("hair_ribbon",)),
    CharacterSpec("hikari", "星野ひかり", "Synthetic Skies", "blonde", "twintails", "red", ()),
    CharacterSpec("rin", "Rin Kurosawa", "Synthetic Skies", "black", "ponytail", "purple", ("glasses",)),
    CharacterSpec("momo", "Momo Haruno", "Pastel Days", "pink", "bob", "green", ("hairband",)),
    CharacterSpec("yuki", "Юки Снегова", "Pastel Days", "silver", "long", "aqua", ("cat_ears",)),
    CharacterSpec("akane", "Akane Hino", "Pastel Days", "red", "short", "yellow", ("hat",)),
    CharacterSpec("midori", "Midori Mori", "Forest Song", "green", "twintails", "brown", ("hair_flower",)),
    CharacterSpec("sumire", "紫苑すみれ", "Forest Song", "purple", "long", "yellow", ("hat",)),
    CharacterSpec("natsu", "Natsu Tachibana", "Forest Song", "orange", "ponytail", "blue", ("hair_ribbon",)),
    CharacterSpec("mizu", "Mizuki Aoba", "Tidal Lines", "aqua", "bob", "purple", ("glasses",)),
    CharacterSpec("kuro", "Kurumi Yoru", "Tidal Lines", "black", "long", "red", ("cat_ears",)),
    CharacterSpec("chiyo", "Chiyo Kaede", "Tidal Lines", "brown", "short", "green", ("hair_flower",)),
)
CAST_BY_KEY = {c.key: c for c in CAST}
BACKGROUNDS = ("sky", "room", "stripes", "dots", "noise", "gradient")
COUNT_WORDS = {1: "One girl", 2: "Two girls", 3: "Three girls", 4: "Four girls"}


@dataclass(frozen=True)
class SceneHead:
    box: Box
    character: str  # CharacterSpec.key
    expression: str
    flipped: bool


@dataclass
class Scene:
    seed: int
    image: Image.Image
    heads: list[SceneHead]
    background: str
    tags: list[str] = field(default_factory=list)
    rating: str = "general"
    caption: str = ""


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _darker(colour: tuple[int, int, int], f: float = 0.7) -> tuple[int, int, int]:
    return (int(colour[0] * f), int(colour[1] * f), int(colour[2] * f))


def _background(size: tuple[int, int], kind: str, rng: random.Random) -> Image.Image:
    w, h = size
    base = (rng.randint(40, 250), rng.randint(40, 250), rng.randint(40, 250))
    img = Image.new("RGB", size, base)
    d = ImageDraw.Draw(img)
    if kind in ("sky", "gradient"):
        top = (rng.randint(60, 200), rng.randint(120, 230), 255) if kind == "sky" else base
        bottom = (240, 240, 255) if kind == "sky" else _jitter(base, rng, 90)
        for y in range(h):
            t = y / max(1, h - 1)
            d.line(
                [(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
            )
        if kind == "sky":
            for _ in range(rng.randint(1, 4)):
                cx, cy, r = rng.randint(0, w), rng.randint(0, h // 2), rng.randint(20, 60)
                d.ellipse([cx - 2 * r, cy - r, cx + 2 * r, cy + r], fill=(250, 250, 252))
    elif kind == "room":
        d.rectangle([0, int(h * 0.7), w, h], fill=_jitter((150, 110, 80), rng, 30))
        for _ in range(rng.randint(1, 3)):
            x, y = rng.randint(0, w - 40), rng.randint(10, int(h * 0.5))
            d.rectangle(
                [x, y, x + rng.randint(40, 140), y + rng.randint(30, 100)],
                fill=_jitter((200, 220, 240), rng, 40),
                outline=(90, 70, 50),
                width=4,
            )
    elif kind == "stripes":
        other = _jitter(base, rng, 60)
        step = rng.randint(12, 40)
        for x in range(-h, w, step * 2):
            d.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=other)
    elif kind == "dots":
        for _ in range(rng.randint(20, 60)):
            cx, cy, r = rng.randint(0, w), rng.randint(0, h), rng.randint(3, 18)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(base, rng, 80))
    else:  # noise
        # numpy seeded from the scene's rng (Image.effect_noise draws from libc rand(): not reproducible)
        sigma = rng.randint(20, 60)
        grey = np.random.default_rng(rng.getrandbits(64)).normal(128.0, sigma, (h, w))
        noise = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L").convert("RGB")
        img = Image.blend(img, noise, 0.35)
    return img


def _draw_character(
    img: Image.Image,
    spec: CharacterSpec,
    cx: int,
    cy: int,
    r: int,
    expression: str,
    flipped: bool,
    rng: random.Random,
) -> Box:
    """Draw one character whose face is centred at (cx, cy) with radius r; return the head box."""
    d = ImageDraw.Draw(img)
    hair = _jitter(HAIR_COLOURS[spec.hair_colour], rng, 12)
    eye = EYE_COLOURS[spec.eye_colour]
    side = -1 if flipped else 1
    outfit = _jitter((rng.choice([(40, 50, 110), (230, 230, 235), (180, 40, 60), (60, 60, 60)])), rng, 15)
    # body and clothes
    d.rounded_rectangle(
        [cx - 1.3 * r, cy + 0.9 * r, cx + 1.3 * r, cy + 3.2 * r], radius=int(r * 0.5), fill=outfit
    )
    d.polygon([(cx - 0.35 * r, cy + 0.9 * r), (cx + 0.35 * r, cy + 0.9 * r), (cx, cy + 1.4 * r)], fill=SKIN)
    # hair behind the head
    top = cy - 1.2 * r
    if spec.hair_style == "long":
        d.rounded_rectangle(
            [cx - 1.15 * r, cy - 0.9 * r, cx + 1.15 * r, cy + 2.4 * r], radius=int(r * 0.6), fill=hair
        )
    elif spec.hair_style == "twintails":
        for s in (-1, 1):
            d.ellipse(
                [cx + s * 1.05 * r - 0.35 * r, cy - 0.4 * r, cx + s * 1.05 * r + 0.35 * r, cy + 2.2 * r],
                fill=hair,
            )
    elif spec.hair_style == "ponytail":
        d.ellipse(
            [cx + side * 0.9 * r - 0.3 * r, cy - 1.0 * r, cx + side * 0.9 * r + 0.45 * r, cy + 1.6 * r],
            fill=hair,
        )
    elif spec.hair_style == "bob":
        d.rounded_rectangle(
            [cx - 1.12 * r, cy - 0.9 * r, cx + 1.12 * r, cy + 0.75 * r], radius=int(r * 0.4), fill=hair
        )
    # face and hair on top
    d.ellipse([cx - 0.95 * r, top + 0.15 * r, cx + 0.95 * r, cy + r], fill=SKIN)
    d.chord([cx - 1.05 * r, top, cx + 1.05 * r, cy + 0.5 * r], 180, 360, fill=hair)
    for i in range(5):  # bangs
        bx = cx - 0.9 * r + i * 0.45 * r
        d.polygon(
            [(bx - 0.25 * r, cy - 0.4 * r), (bx + 0.25 * r, cy - 0.4 * r), (bx, cy - 0.05 * r)], fill=hair
        )
    # eyes
    for s in (-1, 1):
        ex, ey = cx + s * 0.4 * r, cy + 0.15 * r
        d.ellipse(
            [ex - 0.2 * r, ey - 0.26 * r, ex + 0.2 * r, ey + 0.26 * r],
            fill=(255, 255, 255),
            outline=(20, 20, 20),
        )
        d.ellipse([ex - 0.15 * r, ey - 0.2 * r, ex + 0.15 * r, ey + 0.24 * r], fill=eye)
        d.ellipse([ex - 0.07 * r, ey - 0.05 * r, ex + 0.07 * r, ey + 0.12 * r], fill=_darker(eye, 0.35))
        d.ellipse([ex - 0.1 * r, ey - 0.16 * r, ex - 0.02 * r, ey - 0.07 * r], fill=(255, 255, 255))
    # mouth
    mx, my = cx, cy + 0.62 * r
    if expression == "smile":
        d.arc(
            [mx - 0.2 * r, my - 0.15 * r, mx + 0.2 * r, my + 0.1 * r],
            20,
            160,
            fill=(120, 30, 30),
            width=max(1, r // 14),
        )
    elif expression == "open_mouth":
        d.ellipse([mx - 0.12 * r, my - 0.08 * r, mx + 0.12 * r, my + 0.14 * r], fill=(150, 40, 50))
    else:
        d.line([(mx - 0.12 * r, my), (mx + 0.12 * r, my)], fill=(120, 30, 30), width=max(1, r // 14))
    # accessories
    head_top = top
    for acc in spec.accessories:
        if acc == "hair_ribbon":
            rx, ry = cx + side * 0.75 * r, cy - 0.95 * r
            d.polygon(
                [(rx, ry), (rx - 0.35 * r, ry - 0.25 * r), (rx - 0.35 * r, ry + 0.25 * r)], fill=(230, 30, 60)
            )
            d.polygon(
                [(rx, ry), (rx + 0.35 * r, ry - 0.25 * r), (rx + 0.35 * r, ry + 0.25 * r)], fill=(230, 30, 60)
            )
        elif acc == "glasses":
            for s in (-1, 1):
                ex = cx + s * 0.4 * r
                d.ellipse(
                    [ex - 0.27 * r, cy - 0.14 * r, ex + 0.27 * r, cy + 0.44 * r],
                    outline=(30, 30, 30),
                    width=max(2, r // 12),
                )
            d.line(
                [(cx - 0.13 * r, cy + 0.12 * r), (cx + 0.13 * r, cy + 0.12 * r)],
                fill=(30, 30, 30),
                width=max(2, r // 12),
            )
        elif acc == "hat":
            d.ellipse([cx - 1.35 * r, top + 0.1 * r, cx + 1.35 * r, top + 0.45 * r], fill=(60, 40, 120))
            d.rectangle([cx - 0.8 * r, top - 0.55 * r, cx + 0.8 * r, top + 0.3 * r], fill=(60, 40, 120))
            d.rectangle([cx - 0.8 * r, top + 0.05 * r, cx + 0.8 * r, top + 0.2 * r], fill=(240, 200, 60))
            head_top = min(head_top, top - 0.55 * r)
        elif acc == "hairband":
            d.arc(
                [cx - 1.0 * r, top + 0.05 * r, cx + 1.0 * r, cy + 0.9 * r],
                200,
                340,
                fill=(250, 250, 250),
                width=max(3, r // 7),
            )
        elif acc == "cat_ears":
            for s in (-1, 1):
                ex = cx + s * 0.6 * r
                d.polygon(
                    [
                        (ex - 0.3 * r, top + 0.3 * r),
                        (ex + 0.3 * r, top + 0.3 * r),
                        (ex + s * 0.15 * r, top - 0.45 * r),
                    ],
                    fill=hair,
                )
                d.polygon(
                    [
                        (ex - 0.14 * r, top + 0.2 * r),
                        (ex + 0.14 * r, top + 0.2 * r),
                        (ex + s * 0.1 * r, top - 0.2 * r),
                    ],
                    fill=(250, 180, 190),
                )
            head_top = min(head_top, top - 0.45 * r)
        elif acc == "hair_flower":
            fx, fy = cx - side * 0.7 * r, cy - 0.85 * r
            for i in range(5):
                ox, oy = [(0, -1), (0.95, -0.3), (0.6, 0.8), (-0.6, 0.8), (-0.95, -0.3)][i]
                px, py = fx + ox * 0.16 * r, fy + oy * 0.16 * r
                d.ellipse([px - 0.12 * r, py - 0.12 * r, px + 0.12 * r, py + 0.12 * r], fill=(255, 250, 120))
            d.ellipse([fx - 0.08 * r, fy - 0.08 * r, fx + 0.08 * r, fy + 0.08 * r], fill=(240, 120, 30))
    return Box(cx - 1.15 * r, head_top, cx + 1.15 * r, cy + 1.0 * r)


def _caption(heads: list[SceneHead], background: str) -> str:
    parts = []
    for head in heads:
        spec = CAST_BY_KEY[head.character]
        length = "long" if "long_hair" in spec.tags else "short"
        mood = {"smile": "smiling", "open_mouth": "with an open mouth", "closed_mouth": "calm"}[
            head.expression
        ]
        parts.append(f"{spec.name} with {length} {spec.hair_colour} hair and {spec.eye_colour} eyes, {mood}")
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{COUNT_WORDS[len(heads)]}: {joined}, in front of a {background} background."


def scene_tags(heads: list[SceneHead]) -> list[str]:
    """Danbooru-style general tags of a scene (sorted, unique)."""
    n = len(heads)
    tags: set[str] = {"1girl", "solo"} if n == 1 else {f"{n}girls", "multiple_girls"}
    for head in heads:
        tags.update(CAST_BY_KEY[head.character].tags)
        tags.add(head.expression)
    return sorted(tags)


def render_scene(
    seed: int,
    *,
    size: tuple[int, int] | None = None,
    characters: list[str] | None = None,
    max_characters: int = 3,
    cast: tuple[CharacterSpec, ...] = CAST,
) -> Scene:
    """Render the scene of ``seed``: 1..max_characters distinct characters (or exactly ``characters``)."""
    rng = random.Random(seed)
    if size is None:
        size = (rng.choice([384, 448, 512, 640]), rng.choice([320, 384, 448, 512]))
    w, h = size
    n = len(characters) if characters else rng.randint(1, max_characters)
    keys = list(characters) if characters else [c.key for c in rng.sample(list(cast), n)]
    background = rng.choice(BACKGROUNDS)
    img = _background(size, background, rng)
    heads: list[SceneHead] = []
    slot_w = w / n
    for i, key in enumerate(keys):
        r = int(min(slot_w / 2.6, h / 3.2) * rng.uniform(0.55, 1.0))
        r = max(r, 14)
        cx = int(slot_w * i + slot_w / 2 + rng.uniform(-0.15, 0.15) * slot_w)
        cy = int(rng.uniform(1.6 * r, max(1.6 * r + 1, h - 0.8 * r)))
        if rng.random() < 0.15:  # head touching a border
            cx = int(rng.choice([0.9 * r, w - 0.9 * r])) if n == 1 else cx
            cy = int(1.0 * r) if rng.random() < 0.5 else cy
        expression = rng.choice(EXPRESSIONS)
        flipped = rng.random() < 0.5
        box = _draw_character(img, CAST_BY_KEY[key], cx, cy, r, expression, flipped, rng)
        box = Box(max(0.0, box.x1), max(0.0, box.y1), min(float(w), box.x2), min(float(h), box.y2))
        heads.append(SceneHead(box, key, expression, flipped))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    scene = Scene(seed=seed, image=img, heads=heads, background=background)
    scene.tags = scene_tags(heads)
    scene.caption = _caption(heads, background)
    return scene


def render_portrait(character: str, seed: int, size: int = 160) -> Image.Image:
    """A single-character head crop (like a reference image an admin would upload)."""
    return render_portrait_with_box(character, seed, size)[0]


def render_portrait_with_box(character: str, seed: int, size: int = 160) -> tuple[Image.Image, Box]:
    """:func:`render_portrait` and the box of its head (clipped to the picture)."""
    rng = random.Random(seed)
    img = _background((size, size), rng.choice(BACKGROUNDS), rng)
    r = int(size * rng.uniform(0.28, 0.34))
    box = _draw_character(
        img,
        CAST_BY_KEY[character],
        size // 2 + rng.randint(-4, 4),
        int(size * 0.55),
        r,
        rng.choice(EXPRESSIONS),
        rng.random() < 0.5,
        rng,
    )
    return img, Box(max(0.0, box.x1), max(0.0, box.y1), min(float(size), box.x2), min(float(size), box.y2))
