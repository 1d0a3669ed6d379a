"""Real anime face crops (a folder-per-character set such as moeimouto10) for training and measuring.

The set is read from a folder the user points at (``Settings.faces_dir`` or a ``--faces`` flag), never shipped:
``<root>/{train,test}/<NNN_>character/*.png``. This module splits it for training without touching the test split,
gives each known character's canonical look as Danbooru tags (weak tag labels), and pastes faces into pictures
(with a soft elliptical edge, so a detector learns faces rather than pasted rectangles).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.datasets.folders import LabelledImage, load_folder_dataset
from core.vision.intake import decode_image_file
from core.vision.results import Box

# Canonical looks of the moeimouto10, onepiece5 and keima3 characters as Danbooru tags (their usual depiction, as
# Danbooru's wiki and tag statistics describe them): weak labels, since fan art varies (Shana also appears with
# black hair).
CANONICAL_LOOKS: dict[str, tuple[str, ...]] = {
    "hatsune_miku": ("aqua_hair", "aqua_eyes", "long_hair", "twintails"),
    "kinomoto_sakura": ("brown_hair", "green_eyes", "short_hair"),
    "suzumiya_haruhi": ("brown_hair", "brown_eyes", "short_hair", "hairband"),
    "fate_testarossa": ("blonde_hair", "red_eyes", "long_hair", "twintails"),
    "takamachi_nanoha": ("brown_hair", "blue_eyes", "long_hair", "twintails"),
    "lelouch_lamperouge": ("black_hair", "purple_eyes", "short_hair"),
    "akiyama_mio": ("black_hair", "grey_eyes", "long_hair"),
    "shana": ("red_hair", "red_eyes", "long_hair"),
    "hakurei_reimu": ("brown_hair", "red_eyes", "long_hair", "bow"),
    "izumi_konata": ("blue_hair", "green_eyes", "long_hair"),
    # onepiece5 (TV screenshots): only what every era of the anime shares. Nami's hair length changes over the
    # series (short before the time skip), Zoro's eye colour is drawn inconsistently, Luffy's straw hat is often
    # off or on his back, and Chopper is a reindeer (his fur is not hair): only his hat is certain.
    "monkey_d_luffy": ("black_hair", "black_eyes", "short_hair"),
    "nico_robin": ("black_hair", "blue_eyes", "long_hair"),
    "nami": ("orange_hair", "brown_eyes"),
    "tony_tony_chopper": ("hat",),
    "roronoa_zoro": ("green_hair", "short_hair"),
    # keima3: Maki's length (short to medium) is left out
    "nishikino_maki": ("red_hair", "purple_eyes"),
    "sakurauchi_riko": ("red_hair", "yellow_eyes", "long_hair"),
    "takimoto_hifumi": ("purple_hair", "blue_eyes", "long_hair"),
}
# tags of the looks' accessories and styles that a character wears only sometimes: neither yes nor no for them
UNSURE_LOOKS: dict[str, tuple[str, ...]] = {"monkey_d_luffy": ("hat",)}
# display names and series of the moeimouto10 characters (for enrolling them in a gallery)
DISPLAY: dict[str, tuple[str, str]] = {
    "hatsune_miku": ("Hatsune Miku", "Vocaloid"),
    "kinomoto_sakura": ("Sakura Kinomoto", "Cardcaptor Sakura"),
    "suzumiya_haruhi": ("Haruhi Suzumiya", "The Melancholy of Haruhi Suzumiya"),
    "fate_testarossa": ("Fate Testarossa", "Magical Girl Lyrical Nanoha"),
    "takamachi_nanoha": ("Nanoha Takamachi", "Magical Girl Lyrical Nanoha"),
    "lelouch_lamperouge": ("Lelouch Lamperouge", "Code Geass"),
    "akiyama_mio": ("Mio Akiyama", "K-On!"),
    "shana": ("Shana", "Shakugan no Shana"),
    "hakurei_reimu": ("Reimu Hakurei", "Touhou Project"),
    "izumi_konata": ("Konata Izumi", "Lucky Star"),
    # onepiece5 and keima3
    "monkey_d_luffy": ("Monkey D. Luffy", "One Piece"),
    "nico_robin": ("Nico Robin", "One Piece"),
    "nami": ("Nami", "One Piece"),
    "tony_tony_chopper": ("Tony Tony Chopper", "One Piece"),
    "roronoa_zoro": ("Roronoa Zoro", "One Piece"),
    "nishikino_maki": ("Maki Nishikino", "Love Live!"),
    "sakurauchi_riko": ("Riko Sakurauchi", "Love Live! Sunshine!!"),
    "takimoto_hifumi": ("Hifumi Takimoto", "New Game!"),
}
# characters the starter embedder never trains on: their few-shot score measures unseen characters
DEFAULT_UNSEEN = ("akiyama_mio", "izumi_konata")


@dataclass(frozen=True)
class FaceSplits:
    """``train`` minus ``val`` for training, ``val`` for choosing thresholds, ``test`` untouched for reports."""

    train: list[LabelledImage]
    val: list[LabelledImage]
    test: list[LabelledImage]

    @property
    def labels(self) -> list[str]:
        return sorted({i.label for i in (*self.train, *self.val, *self.test)})


def load_face_splits(root: Path, *, val_fraction: float = 0.15, seed: int = 0) -> FaceSplits:
    """The set's train split divided into train and validation (``val_fraction`` of each character, at least
    one image), and its test split as it is. A flat set (``<root>/<character>/*``) is split by a hash of each file
    name instead (:func:`core.datasets.face_sets.split_flat`)."""
    data = load_folder_dataset(root)
    if "all" in data:
        from core.datasets.face_sets import split_flat

        return split_flat(data["all"])
    rng = random.Random(seed)
    train: list[LabelledImage] = []
    val: list[LabelledImage] = []
    for label in sorted({i.label for i in data["train"]}):
        own = [i for i in data["train"] if i.label == label]
        rng.shuffle(own)
        n_val = max(1, round(len(own) * val_fraction)) if len(own) > 1 else 0
        val += own[:n_val]
        train += own[n_val:]
    return FaceSplits(train, val, list(data["test"]))


def load_images(items: Sequence[LabelledImage], *, longest: int | None = None) -> list[Image.Image]:
    """RGB images of ``items`` (through the safe decoder), shrunk to ``longest`` px on the longer side."""
    out = []
    for item in items:
        img = decode_image_file(item.path, max_bytes=20 << 20, max_pixels=40_000_000).image
        if longest and max(img.size) > longest:
            scale = longest / max(img.size)
            img = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                Image.Resampling.BILINEAR,
            )
        out.append(img)
    return out


def display_name(label: str) -> tuple[str, str]:
    """(name, series) of a face-set label; unknown labels become title-cased names without a series."""
    return DISPLAY.get(label, (label.replace("_", " ").title(), ""))


def canonical_tags(label: str) -> tuple[str, ...]:
    """The character's canonical look as tags; empty for characters without one."""
    return CANONICAL_LOOKS.get(label, ())


def soft_ellipse_mask(size: tuple[int, int], feather: float = 0.08) -> Image.Image:
    """An ``L`` mask: an ellipse filling ``size`` with edges blurred over ``feather`` of the shorter side."""
    w, h = size
    pad = max(1, round(min(w, h) * feather))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse((pad // 2, pad // 2, w - 1 - pad // 2, h - 1 - pad // 2), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(pad / 2))


def paste_face(
    canvas: Image.Image, face: Image.Image, box: tuple[int, int, int, int], rng: random.Random
) -> tuple[float, float, float, float]:
    """Paste ``face`` resized into ``box`` (may stick out of the canvas) with a soft elliptical edge and a
    shoulder-coloured body below it; return the visible head box. ``canvas`` is modified."""
    x1, y1, x2, y2 = box
    w, h = max(2, x2 - x1), max(2, y2 - y1)
    body_colour = tuple(int(v) for v in np.asarray(face.resize((1, 1), Image.Resampling.BOX)).reshape(3))
    shade = tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in body_colour)
    draw = ImageDraw.Draw(canvas)
    draw.rounded_rectangle(
        (x1 - w * 0.15, y2 - h * 0.12, x2 + w * 0.15, y2 + h * 1.2), radius=max(1, w // 4), fill=shade
    )
    resized = face.resize((w, h), Image.Resampling.BILINEAR)
    canvas.paste(resized, (x1, y1), soft_ellipse_mask((w, h)))
    cw, ch = canvas.size
    # the ellipse's visible extent: the feathered edge is transparent for about half the feather width
    inset = min(w, h) * 0.03
    return (
        max(0.0, x1 + inset),
        max(0.0, y1 + inset),
        min(float(cw), x2 - inset),
        min(float(ch), y2 - inset),
    )


@dataclass
class CompositeScene:
    """A picture with drawn characters and pasted real faces, and every head box in it."""

    image: Image.Image
    boxes: list[tuple[float, float, float, float]]
    n_real: int
    labels: list[str] = field(
        default_factory=list
    )  # per box: a CAST key (drawn) or the face's label (pasted)


def compose_scene(
    seed: int,
    faces: Sequence[Image.Image],
    *,
    max_faces: int = 3,
    drawn_share: float = 0.7,
    face_labels: Sequence[str] | None = None,
) -> CompositeScene:
    """A synthetic scene (drawn characters in ``drawn_share`` of seeds, else a bare background) with 1..max_faces
    real faces pasted where they cover no drawn head, at 12-55% of the shorter side, sometimes cut by the border;
    sometimes blurred. The same seed and faces give the same pixels."""
    from core.datasets.synth import BACKGROUNDS, _background, render_scene

    rng = random.Random(seed * 7_368_787 + 11)
    if rng.random() < drawn_share:
        scene = render_scene(seed, max_characters=2)
        image = scene.image.copy()
        boxes = [(h.box.x1, h.box.y1, h.box.x2, h.box.y2) for h in scene.heads]
        labels = [h.character for h in scene.heads]
    else:
        image = _background(
            (rng.choice([384, 448, 512, 640]), rng.choice([320, 384, 448, 512])), rng.choice(BACKGROUNDS), rng
        )
        boxes, labels = [], []
    w, h = image.size
    n_real = 0
    for _ in range(rng.randint(1, max_faces) if faces else 0):
        pick = rng.randrange(len(faces))
        face = faces[pick]
        if rng.random() < 0.5:
            face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        side = rng.uniform(0.12, 0.55) * min(w, h)
        fw, fh = round(side), round(side * face.height / face.width)
        for _attempt in range(20):
            if rng.random() < 0.2:  # cut by a border
                x1 = rng.choice([-fw // 3, w - 2 * fw // 3])
                y1 = rng.randint(-fh // 3, max(-fh // 3, h - 2 * fh // 3))
            else:
                x1, y1 = rng.randint(0, max(0, w - fw)), rng.randint(0, max(0, h - fh))
            candidate = (float(x1), float(y1), float(x1 + fw), float(y1 + fh))
            if not any(_covers(candidate, b) for b in boxes):
                visible = paste_face(image, face, (x1, y1, x1 + fw, y1 + fh), rng)
                boxes.append(visible)
                labels.append(face_labels[pick] if face_labels is not None else "")
                n_real += 1
                break
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return CompositeScene(image, boxes, n_real, labels)


def _covers(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether ``a`` or the body pasted below it (down to 1.2 heights under it) overlaps head box ``b``."""
    height = a[3] - a[1]
    body = (
        a[0] - 0.15 * (a[2] - a[0]),
        a[3] - 0.12 * height,
        a[2] + 0.15 * (a[2] - a[0]),
        a[3] + 1.2 * height,
    )
    head = Box(*b)
    return Box(*body).iou(head) > 0 or Box(*a).iou(head) > 0
