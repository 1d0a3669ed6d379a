"""The starter tagger: a pretrained EfficientNet-Lite0 fine-tuned here on synthetic scenes (and real faces when
given), exported in the WD14 format.

The network is a backbone (default: ``efficientnet_lite0`` with the ImageNet weights of core.learning.pretrained,
stem and first 5 blocks frozen; a timm name such as ``mobilenetv3_small_050`` trains from scratch, the recipe before)
with two heads: a per-cell head on its stride-16 features that predicts the tags of the girl whose head covers the
cell (a picture's score for such a tag is its best cell's), and a pooled head for whole-picture tags
(1girl/solo/2girls/..., rating) that ends with one "real picture" logit. The exported ONNX takes the WD14 input and
gives WD14 probabilities: Wd14Tagger loads it like the real ones.

Real faces (``faces_dirs`` / ``faces_dir``: moeimouto-style train/test or flat ``<character>/*``,
core.datasets.face_sets; their train splits) join the scenes as single-face pictures labelled with each character's
canonical look (core.datasets.real_faces.CANONICAL_LOOKS). Supervised on a real face: the families its look names
(hair colour, eye colour, length) and the accessories and styles some look names (hat, bow, hairband, twintails:
a look lists its character's notable ones, so a look without a hat is a "no"; UNSURE_LOOKS excepted). No
hallucination on real pictures: a tag no real training face has (cat ears, glasses, silver hair, smile, 1girl...)
is multiplied by ``1 - P(real picture)`` inside the export (the domain gate), and every tag gets its own threshold
(fit_tag_thresholds: F1 over real and synthetic validation pictures for tags with real support; above every real
validation face's score for the others), applied through per-tag scales in the ONNX since the WD14 loader has one
threshold per category.

What was tried and measured (2 shared CPU cores, each run under the CPU lock; "real test": the moeimouto10 test
split, 185 faces; hair / eye colour F1 against the canonical looks; "hallucinated": faces where an appearance
tag outside the character's look fires, core.evaluation.tagging):

From scratch, timm ``mobilenetv3_small_050`` (the previous default, 160 px, 2000 scenes, 7 epochs):
- plain classifier (global pool, image-level BCE only) 0.67-0.75 synthetic macro-F1; per-cell head with positives
  over the middle 80 % of the head box: 0.963 at lr 2.4e-2; 192 px, wider backbones, 4000 scenes: no gain;
- synthetic only: synthetic macro-F1 0.965, hair/eye colours 0.98, 80-95 s;
- with moeimouto10 (x3 per epoch): real test hair 0.733, eyes 0.739, synthetic 0.893, 142 s.
Pretrained EfficientNet-Lite0 (this recipe; 128 px, 1500 scenes, 4 epochs, lr 4e-3 heads / 1e-3 backbone):
- (A) synthetic only: 79 s (render 12 s, train 64 s); synthetic macro-F1 0.962, hair / eye colours 0.981 /
  0.989 (``evaluate_synthetic``, 200 scenes); real test hair 0.299, eyes 0.304, hallucinated on 100 % of the
  faces, 6.0 wrong tags per face (cat ears, glasses, red eyes, ponytail) over the three sets. The from-scratch
  MobileNet of the previous recipe, same measure: synthetic 0.967 (0.990 / 0.993), real hair 0.336, eyes 0.196,
  99 %, 8.1 per face (hat, yellow eyes, cat ears). Pretrained features alone do not carry drawn looks to real
  faces, and without a real picture nothing can calibrate the tags on them: a machine without a face set gets a
  tagger that is right on drawn scenes only (set ``ANIBOT_FACES_DIR``, or pull a real WD14 model).
- (B) with moeimouto10 + onepiece5 + keima3 (x2 per epoch, 1,077 real training faces): 181 s (render 16 s,
  train 158 s); synthetic 0.961 (0.983 / 0.985); real test, moeimouto10: hair 0.954, eyes 0.918, wrong
  appearance tags on 10.3 % of the faces (0.21 per face: red / grey eyes, bow, long hair); onepiece5: 0.988 /
  0.986, 4.8 %; keima3: 1.000 / 0.889, 20 %; all 288 test faces: 0.975 / 0.908, 9.4 %. No tag without real
  support fired on a real validation face (the gate alone: P(real) 0.9999 on them), so no tag was left out.
- (B) with moeimouto10 alone (``ANIBOT_FACES_DIR``, the default build; 671 faces x2): 182 s (render 13 s, train
  164 s; the machine was busier than for the run above); synthetic 0.958 (0.979 / 0.978); moeimouto10 test: hair
  0.955, eyes 0.919, wrong tags on 13.5 % of the faces. On characters it never trained on it does not carry
  over: onepiece5 hair 0.26, eyes 0.00, keima3 0.25 / 0.06, wrong tags on 93-100 % of those faces, nearly all
  wrong colours (brown hair, red eyes) rather than unseen tags (the gate holds): the colours are learnt per
  character from ~10 characters, not as colours.
- (B) before accessories and styles were labelled on every look (positives only, from Chopper's hat, Reimu's
  bow, Haruhi's hairband, Miku / Fate / Nanoha's twintails): the same colours (0.945 / 0.949) but hat, bow,
  hairband and twintails fired on 93 % of the moeimouto10 faces: a tag seen only as a positive on real faces
  learns "real face" rather than the accessory.
What limits it: labels that are a character's usual look rather than this picture's (Shana is often drawn with
black hair, Reimu's hair varies between artists); the domain gate knows "a real face crop", so a real picture far
from the training faces (a whole illustration) is the open question; and the hallucination figure counts a tag
only where the look says yes or no to it.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.characters.danbooru import to_tag
from core.datasets.real_faces import CANONICAL_LOOKS, UNSURE_LOOKS, canonical_tags, load_images
from core.datasets.synth import (
    ACCESSORIES,
    CAST,
    CAST_BY_KEY,
    EXPRESSIONS,
    EYE_COLOURS,
    HAIR_COLOURS,
    HAIR_STYLES,
    CharacterSpec,
    SceneHead,
    render_scene,
    scene_tags,
)
from core.evaluation.tagging import (  # noqa: F401 - look_extras, weakly_known: re-exported
    LENGTH_TAGS,
    is_eye_colour,
    is_hair_colour,
    look_extras,
    weakly_known,
)
from core.learning.starter.common import (
    choose_device,
    export_onnx,
    save_starter_manifest,
    seed_everything,
    torch_threads,
    training_threads,
)
from core.vision.results import Box
from core.vision.slots.base import Manifest
from core.vision.slots.tagger import (
    CATEGORY_CHARACTER,
    CATEGORY_GENERAL,
    CATEGORY_RATING,
    TagDef,
    Wd14Tagger,
    wd14_preprocess,
    write_selected_tags,
)

Progress = Callable[[str, float], None]
RATINGS = ("general", "sensitive", "questionable", "explicit")
MODEL_NAME = "anibot-starter-tagger"
BACKBONE = "efficientnet_lite0"  # pretrained (core.learning.pretrained); a timm name trains from scratch
# scene seeds: training (one range per training seed), the fixed held-out validation scenes and the small
# seeds tests and demos use never overlap
TRAIN_SEED_BASE = 1_000_000_000
VAL_SEED_BASE = 900_000_000
MAX_CHARACTERS = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- vocabulary -----------------------------------------------------------------------------------


def character_tags() -> set[str]:
    """Tags that belong to one girl in the picture: her look (core.datasets.synth's hair, eyes, accessories, and the
    canonical looks of the real face set's characters) and her expression."""
    tags = set(EXPRESSIONS) | {t for look in CANONICAL_LOOKS.values() for t in look}
    for style in HAIR_STYLES:
        for hair in HAIR_COLOURS:
            for eye in EYE_COLOURS:
                tags.update(CharacterSpec("_", "_", "_", hair, style, eye, ACCESSORIES).tags)
    return tags


def cast_character_tag(spec: CharacterSpec) -> str:
    """The Danbooru character tag of a synthetic cast member: ``aoi_sakuragi_(synthetic_skies)``."""
    return to_tag(spec.name, spec.series)


def tagger_characters(face_labels: Sequence[str] = ()) -> list[str]:
    """The character tags (WD14 category 4) the starter tagger learns: the synthetic cast's, then the real face sets'
    characters (their labels are Danbooru names already: ``hatsune_miku``), without repeats."""
    tags = [cast_character_tag(c) for c in CAST]
    tags += sorted({label for label in face_labels if label and label not in tags})
    return tags


def synth_vocabulary(max_characters: int = MAX_CHARACTERS) -> list[str]:
    """Every general tag core.datasets.synth can produce, derived from its constants (sorted)."""
    tags = character_tags()
    box = Box(0, 0, 1, 1)
    for n in range(1, max_characters + 1):
        tags.update(
            scene_tags([SceneHead(box, CAST[i % len(CAST)].key, EXPRESSIONS[0], False) for i in range(n)])
        )
    return sorted(tags)


# --- data -----------------------------------------------------------------------------------------


@dataclass
class SceneSet:
    images: np.ndarray  # (N, S, S, 3) uint8 BGR: wd14_preprocess output, stored losslessly
    tags: np.ndarray  # (N, V) float32 image-level general tags
    ratings: np.ndarray  # (N,) index into RATINGS
    boxes: np.ndarray  # (N, K, 4) float32 head boxes in input pixels
    head_tags: np.ndarray  # (N, K, V) float32 the tags of each girl
    valid: np.ndarray  # (N, K) bool
    known: np.ndarray  # (N, V) bool: whether each tag's label is known (weak real labels cover some tags)
    real: np.ndarray  # (N,) bool: a real picture (a face crop), not a drawn scene

    @classmethod
    def empty(cls, n: int, size: int, n_tags: int, *, known: bool) -> SceneSet:
        """``n`` blank pictures with no tags, heads or ratings; every label known or none."""
        k = MAX_CHARACTERS
        return cls(
            images=np.empty((n, size, size, 3), np.uint8),
            tags=np.zeros((n, n_tags), np.float32),
            ratings=np.zeros(n, np.int64),
            boxes=np.zeros((n, k, 4), np.float32),
            head_tags=np.zeros((n, k, n_tags), np.float32),
            valid=np.zeros((n, k), bool),
            known=np.full((n, n_tags), known),
            real=np.full(n, not known),
        )


def render_set(seeds: range, size: int, vocab: list[str]) -> SceneSet:
    """Scenes preprocessed exactly like inference, with their image-level and per-girl tags."""
    index = {t: i for i, t in enumerate(vocab)}
    n = len(seeds)
    out = SceneSet.empty(n, size, len(vocab), known=True)
    for row, seed in enumerate(seeds):
        scene = render_scene(seed, max_characters=MAX_CHARACTERS)
        out.images[row] = wd14_preprocess(scene.image, size)[0]
        out.tags[row, [index[t] for t in scene.tags]] = 1.0
        out.ratings[row] = RATINGS.index(scene.rating)
        w, h = scene.image.size
        side = max(w, h)
        dx, dy, f = (side - w) // 2, (side - h) // 2, size / side
        for j, head in enumerate(scene.heads):
            b = head.box
            out.boxes[row, j] = ((b.x1 + dx) * f, (b.y1 + dy) * f, (b.x2 + dx) * f, (b.y2 + dy) * f)
            spec = CAST_BY_KEY[head.character]
            girl = [index[t] for t in (*spec.tags, head.expression)]
            character = index.get(cast_character_tag(spec))
            if character is not None:  # a vocabulary with character tags: she is named too
                girl.append(character)
                out.tags[row, character] = 1.0
            out.head_tags[row, j, girl] = 1.0
            out.valid[row, j] = True
    return out


def render_real_faces(
    images: list[Image.Image],
    labels: list[str],
    size: int,
    vocab: list[str],
    characters: Collection[str] = (),
) -> SceneSet:
    """Real face crops as single-head pictures labelled with their character's canonical look (weak labels:
    only the tag families the look names are known) and, where ``characters`` (the vocabulary's character tags)
    holds the face's label, with that character tag (every character tag is known on a face crop: one
    character)."""
    index = {t: i for i, t in enumerate(vocab)}
    character_cols = [index[t] for t in characters if t in index]
    n = len(images)
    out = SceneSet.empty(n, size, len(vocab), known=False)
    for row, (image, label) in enumerate(zip(images, labels, strict=True)):
        look = canonical_tags(label)
        out.images[row] = wd14_preprocess(image, size)[0]
        positives = [index[t] for t in look if t in index]
        if character_cols and label in index and label in characters:
            positives.append(index[label])
        out.tags[row, positives] = 1.0
        w, h = image.size
        side = max(w, h)
        f = size / side
        dx, dy = (side - w) / 2 * f, (side - h) / 2 * f
        out.boxes[row, 0] = (dx, dy, dx + w * f, dy + h * f)
        out.head_tags[row, 0, positives] = 1.0
        out.valid[row, 0] = True
        out.known[row] = weakly_known(vocab, look, UNSURE_LOOKS.get(label, ()))
        out.known[row, character_cols] = True
    return out


def concat_sets(a: SceneSet, b: SceneSet) -> SceneSet:
    return SceneSet(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in SceneSet.__dataclass_fields__))


def _jpeg(batch: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip uint8 NCHW images through JPEG."""
    out = []
    for img in batch.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def augment(
    batch: torch.Tensor, gen: torch.Generator, boxes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 RGB NCHW -> augmented float 0-1: flip, zoom/shift on white, small light/contrast/saturation
    changes (hair colour names survive them), blur and JPEG. ``boxes`` ``(N, K, 4)`` in input pixels follow
    the geometry."""
    n, size = batch.shape[0], batch.shape[-1]

    def uniform(lo: float, hi: float, shape: tuple[int, ...] = (n,)) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    jpeg = torch.rand(n, generator=gen) < 0.25
    if jpeg.any():
        batch = batch.clone()
        batch[jpeg] = _jpeg(batch[jpeg], int(uniform(40, 90, (1,)).item()))
    x = batch.float() / 255.0
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    # zoom out (smaller heads, like bigger pictures) or slightly in, and shift; white fill like the padding
    zoom = torch.rand(n, generator=gen) < 0.6
    scale = torch.where(zoom, uniform(0.75, 1.08), torch.ones(n))
    shift = uniform(-0.08, 0.08, (n, 2)) * (zoom & (scale < 1)).float()[:, None]
    if zoom.any():
        theta = torch.zeros(int(zoom.sum()), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale[zoom]
        theta[:, :, 2] = shift[zoom]
        grid = F.affine_grid(theta, [len(theta), *x.shape[1:]], align_corners=False)
        x[zoom] = F.grid_sample(x[zoom] - 1.0, grid, mode="bilinear", align_corners=False) + 1.0
    if boxes is not None:
        boxes = boxes.clone()
        fb = boxes[flip]
        boxes[flip] = torch.stack([size - fb[..., 2], fb[..., 1], size - fb[..., 0], fb[..., 3]], dim=-1)
        u = boxes * (2.0 / size) - 1.0  # normalised coordinates, as affine_grid's
        boxes = ((u - shift.repeat(1, 2)[:, None, :]) * scale[:, None, None] + 1.0) * (size / 2.0)
    # photometric: saturation, contrast, brightness within +-8 %
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * uniform(0.92, 1.08)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.92, 1.08)[:, None, None, None] + mean
    x = x * uniform(0.92, 1.08)[:, None, None, None]
    blur = torch.rand(n, generator=gen) < 0.2
    if blur.any():
        sigma = float(uniform(0.4, 1.1, (1,)).item())
        k = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / (2 * sigma**2))
        k = (k / k.sum()).view(1, 1, 1, 5).repeat(3, 1, 1, 1)
        xb = F.conv2d(F.pad(x[blur], (2, 2, 0, 0), mode="replicate"), k, groups=3)
        x[blur] = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3), groups=3)
    return x.clamp_(0.0, 1.0), boxes


def cell_targets(
    boxes: torch.Tensor,
    head_tags: torch.Tensor,
    valid: torch.Tensor,
    grid: int,
    stride: float,
    core: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell targets ``(B, T, G, G)`` and weights ``(B, 1, G, G)``: the cells at the middle of a girl's
    head (her box shrunk to ``core``, and the cell holding its centre) carry her tags, the rest of her head
    box is ignored, every other cell carries no tag."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * stride

    def cells_in(b: torch.Tensor) -> torch.Tensor:  # (B, K, 4) -> (B, K, G, G)
        in_x = (centres >= b[..., 0, None]) & (centres <= b[..., 2, None])
        in_y = (centres >= b[..., 1, None]) & (centres <= b[..., 3, None])
        return in_y[..., :, None] & in_x[..., None, :] & valid[..., None, None]

    mid = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) / 2 * core
    cx, cy = (mid / stride).floor().long().clamp(0, grid - 1).unbind(-1)  # (B, K)
    cells = torch.arange(grid)
    at = (
        (cy[..., None, None] == cells[:, None])
        & (cx[..., None, None] == cells[None, :])
        & valid[..., None, None]
    )
    positive = at | cells_in(torch.cat([mid - half, mid + half], dim=-1))  # (B, K, G, G)
    target = (positive[:, :, None].float() * head_tags[..., None, None]).amax(1)  # (B, T, G, G)
    weight = (~cells_in(boxes).any(1) | positive.any(1)).float()[:, None]
    return target, weight


# --- model ----------------------------------------------------------------------------------------


class TimmPyramid(nn.Module):
    """A timm backbone trained from scratch: its stride-16 and stride-32 feature maps."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(3, 4))
        if list(self.body.feature_info.reduction()) != [16, 32]:
            raise ValueError(f"{backbone}: expected features at strides 16 and 32")
        self.channels: tuple[int, int] = tuple(self.body.feature_info.channels())  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f16, f32 = self.body(x)
        return f16, f32


class LitePyramid(nn.Module):
    """A pretrained EfficientNet-Lite (core.learning.pretrained): its stride-16 and stride-32 block outputs. The
    stem and the first ``frozen`` blocks stay fixed (no gradient, batch norm in eval mode)."""

    def __init__(self, backbone: str, *, pretrained: bool, frozen: int) -> None:
        super().__init__()
        from core.learning.pretrained import build_efficientnet_lite

        net = build_efficientnet_lite(backbone, pretrained=pretrained)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        last = net.stride_ends[32]
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.end16 = net.stride_ends[16]
        self.frozen = max(0, min(frozen, self.end16))
        self.channels = (net.stride_channels[16], net.stride_channels[32])
        for module in (self.stem, *self.blocks[: self.frozen]):
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> LitePyramid:
        super().train(mode)
        for module in (self.stem, *self.blocks[: self.frozen]):
            module.eval()  # the fixed layers keep their ImageNet batch statistics
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen == 0):
            x = self.stem(x)
            for block in self.blocks[: self.frozen]:
                x = block(x)
        f16 = x
        for i in range(self.frozen, len(self.blocks)):
            x = self.blocks[i](x)
            if i == self.end16:
                f16 = x
        return f16, x


def is_pretrained_backbone(backbone: str) -> bool:
    from core.learning.pretrained import BACKBONES

    return backbone in BACKBONES


def input_scaling(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone's input on 0-1 RGB: (x - 0.5) / 0.5 for EfficientNet-Lite, ImageNet's else."""
    if is_pretrained_backbone(backbone):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


class DenseTagNet(nn.Module):
    """A backbone's stride-16 and stride-32 features with two heads: per-cell logits for the tags of one
    girl (a picture's score is its best cell's) and pooled logits for the whole picture (ratings first, then
    counts such as ``1girl``/``multiple_girls``)."""

    def __init__(
        self,
        backbone: str,
        n_cell: int,
        n_pooled: int,
        width: int = 96,
        *,
        pretrained: bool = False,
        frozen_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.body: TimmPyramid | LitePyramid = (
            LitePyramid(backbone, pretrained=pretrained, frozen=frozen_blocks)
            if is_pretrained_backbone(backbone)
            else TimmPyramid(backbone)
        )
        c16, c32 = self.body.channels
        self.lat16 = nn.Conv2d(c16, width, 1)
        self.lat32 = nn.Conv2d(c32, width, 1)
        self.mix = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Hardswish(),
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
            nn.BatchNorm2d(width),
            nn.Hardswish(),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.Hardswish(),
        )
        self.cell = nn.Conv2d(width, n_cell, 1)
        self.pooled = nn.Linear(c32 + width, n_pooled)
        nn.init.constant_(self.cell.bias, -4.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f16, f32 = self.body(x)
        h = self.mix(self.lat16(f16) + F.interpolate(self.lat32(f32), scale_factor=2.0, mode="nearest"))
        return self.cell(h), self.pooled(torch.cat([f32.mean((2, 3)), h.mean((2, 3))], dim=1))


class Wd14Export(nn.Module):
    """NHWC BGR 0-255 float in, WD14 probabilities out in ``selected_tags.csv`` order.

    ``gate``: the tags (output order) whose probability is multiplied by ``1 - P(real picture)`` from the
    network's domain logit (the last pooled column): tags never seen on a real training picture stay quiet on
    real pictures. ``scale``: per-tag factors (``general threshold / the tag's own threshold``, capped at 1 after
    scaling) that let one general threshold apply each tag's fitted threshold, as the WD14 loader has one
    threshold per category.
    """

    def __init__(
        self,
        net: DenseTagNet,
        n_ratings: int,
        order: list[int],
        *,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        domain: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.n_ratings = n_ratings
        self.domain = (
            domain  # whether the pooled head ends with the real-picture logit (taggers before it: no)
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))
        self.register_buffer("gate", torch.zeros(len(order)))
        self.register_buffer("scale", torch.ones(len(order)))

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ungated, unscaled probabilities (output order) and P(real picture)."""
        x = x.permute(0, 3, 1, 2)[:, [2, 1, 0]]  # NHWC BGR -> NCHW RGB
        cells, pooled = self.net((x - self.mean) / self.std)
        end = pooled.shape[1] - 1 if self.domain else pooled.shape[1]
        scores = torch.cat(
            [
                torch.softmax(pooled[:, : self.n_ratings], dim=1),
                torch.sigmoid(pooled[:, self.n_ratings : end]),
                torch.sigmoid(cells.flatten(2).amax(2)),
            ],
            dim=1,
        )
        real = torch.sigmoid(pooled[:, -1]) if self.domain else torch.zeros_like(pooled[:, 0])
        return scores[:, self.order], real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, real = self.parts(x)
        return (scores * (1.0 - self.gate * real[:, None]) * self.scale).clamp(max=1.0)


def load_eager(manifest: Manifest) -> Wd14Export:
    """The starter tagger of ``manifest`` in eager torch (eval mode): WD14 input in, probabilities out."""
    spec = manifest.extra["net"]
    backbone = manifest.extra["backbone"]
    net = DenseTagNet(backbone, spec["n_cell"], spec["n_pooled"], frozen_blocks=spec.get("frozen_blocks", 0))
    mean, std = input_scaling(backbone)
    model = Wd14Export(
        net, spec["n_ratings"], spec["order"], mean=mean, std=std, domain=spec.get("domain", False)
    )
    state = torch.load(manifest.path("torch"), map_location="cpu", weights_only=True)
    for name in ("gate", "scale"):  # taggers exported before the gate and per-tag scales had neither
        state.setdefault(name, getattr(model, name))
    model.load_state_dict(state)
    return model.eval()


# --- evaluation -----------------------------------------------------------------------------------


def f1_scores(probs: np.ndarray, targets: np.ndarray, threshold: float) -> np.ndarray:
    """Per-column F1 (NaN where a tag is neither present nor predicted)."""
    pred = probs >= threshold
    truth = targets > 0.5
    tp = (pred & truth).sum(0)
    denom = pred.sum(0) + truth.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def best_threshold(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The threshold maximising macro-F1 (the middle of the best plateau), and that macro-F1."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    macro = np.array([np.nanmean(f1_scores(probs, targets, t)) for t in grid])
    plateau = grid[macro >= macro.max() - 1e-9]
    return float(plateau[len(plateau) // 2]), float(macro.max())


def colour_f1(probs: np.ndarray, targets: np.ndarray, vocab: list[str], threshold: float) -> dict[str, float]:
    """Macro-F1 of the hair-colour and of the eye-colour tags that occur in ``targets``."""
    per_tag = f1_scores(probs, targets, threshold)
    present = targets.sum(0) > 0
    out = {}
    for family, is_colour in (("hair_colour_f1", is_hair_colour), ("eye_colour_f1", is_eye_colour)):
        cols = [i for i, t in enumerate(vocab) if is_colour(t) and present[i]]
        out[family] = float(np.nanmean(per_tag[cols])) if cols else float("nan")
    return out


def fit_tag_thresholds(
    threshold: float,
    synth_probs: np.ndarray,
    synth_tags: np.ndarray,
    real_probs: np.ndarray,
    real_tags: np.ndarray,
    real_known: np.ndarray,
    supported: np.ndarray,
    *,
    margin: float = 0.02,
    ceiling: float = 0.999,
) -> np.ndarray:
    """Per-tag thresholds ``(V,)`` from the synthetic (``synth_*``) and real (``real_*``, labels known where
    ``real_known``) validation pictures.

    - a tag with real support (``supported``: a real training picture has it): the threshold maximising its F1
      over both validation sets (its known real labels and every synthetic one), ``threshold`` on a tie;
    - a tag without: never below ``threshold``, and above every real validation picture's score for it plus
      ``margin`` (at most ``ceiling``: such a tag is then left out of real and drawn pictures alike).
    """
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    out = np.full(synth_probs.shape[1], float(threshold))
    for j in range(synth_probs.shape[1]):
        if supported[j]:
            rows = real_known[:, j]
            probs = np.concatenate([synth_probs[:, j], real_probs[rows, j]])
            truth = np.concatenate([synth_tags[:, j], real_tags[rows, j]]) > 0.5
            if not truth.any():
                continue
            pred = probs[:, None] >= grid[None, :]
            tp = (pred & truth[:, None]).sum(0)
            f1 = 2 * tp / np.maximum(pred.sum(0) + truth.sum(), 1)
            best = grid[f1 >= f1.max() - 1e-9]
            out[j] = float(threshold) if np.isclose(best, threshold).any() else float(best[len(best) // 2])
        elif len(real_probs):
            out[j] = min(ceiling, max(float(threshold), float(real_probs[:, j].max()) + margin))
    return out


def eager_scores(model: Wd14Export, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Ungated, unscaled probabilities (output order) and P(real) of WD14-preprocessed BGR ``images``."""
    model.eval()
    scores, real = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            s, r = model.parts(torch.from_numpy(images[i : i + batch].astype(np.float32)))
            scores.append(s.numpy())
            real.append(r.numpy())
    return np.concatenate(scores), np.concatenate(real)


# --- training -------------------------------------------------------------------------------------


def _face_roots(faces_dir: Path | None, faces_dirs: Sequence[Path] | None) -> list[Path]:
    """``faces_dirs`` and the single ``faces_dir`` (``Settings.faces_dir``), without repeats."""
    roots = [Path(r) for r in faces_dirs or ()]
    if faces_dir is not None and Path(faces_dir) not in roots:
        roots.insert(0, Path(faces_dir))
    return roots


def train_starter_tagger(
    out_dir: Path,
    *,
    n_train: int = 1500,
    epochs: int = 4,
    input_size: int = 128,
    seed: int = 0,
    progress: Progress | None = None,
    n_val: int | None = None,
    backbone: str = BACKBONE,
    pretrained: bool = True,
    frozen_blocks: int = 5,
    backbone_lr_scale: float = 0.25,
    batch_size: int = 32,
    lr: float = 4e-3,
    faces_dir: Path | None = None,
    faces_dirs: Sequence[Path] | None = None,
    real_repeats: int = 2,
) -> Manifest:
    """Train the starter tagger on ``n_train`` synthetic scenes (plus the train splits of the real face sets
    ``faces_dirs`` / ``faces_dir``, moeimouto-style or flat, labelled with each character's canonical look);
    write a WD14 model folder at ``out_dir``."""
    if input_size % 32:
        raise ValueError(f"input_size must be a multiple of 32, not {input_size}")
    if n_train > 1_000_000:
        raise ValueError("n_train is limited to 1,000,000 scenes per seed")
    with torch_threads(training_threads()):
        return _train(
            Path(out_dir),
            n_train=n_train,
            epochs=epochs,
            input_size=input_size,
            seed=seed,
            report=progress or (lambda _stage, _fraction: None),
            n_val=n_val if n_val is not None else min(200, max(8, n_train // 4)),
            backbone=backbone,
            pretrained=pretrained,
            frozen_blocks=frozen_blocks if is_pretrained_backbone(backbone) else 0,
            backbone_lr_scale=backbone_lr_scale,
            batch_size=batch_size,
            lr=lr,
            face_roots=_face_roots(faces_dir, faces_dirs),
            real_repeats=real_repeats,
        )


def _train(
    out_dir: Path,
    *,
    n_train: int,
    epochs: int,
    input_size: int,
    seed: int,
    report: Progress,
    n_val: int,
    backbone: str,
    pretrained: bool,
    frozen_blocks: int,
    backbone_lr_scale: float,
    batch_size: int,
    lr: float,
    face_roots: list[Path],
    real_repeats: int,
) -> Manifest:
    from core.datasets.face_sets import load_face_sets

    started = time.monotonic()
    seed_everything(seed)
    device = choose_device("auto")
    splits = load_face_sets(face_roots, seed=seed).splits if face_roots else None
    characters = tagger_characters(splits.labels if splits is not None else ())
    general = synth_vocabulary()
    vocab = general + characters  # the general tags, then the character tags (WD14 category 4)
    per_girl = character_tags() | set(characters)
    cell_idx = [i for i, t in enumerate(vocab) if t in per_girl]
    pooled_idx = [i for i, t in enumerate(vocab) if t not in per_girl]  # counts: 1girl, solo, 2girls, ...
    n_r = len(RATINGS)
    domain_col = n_r + len(pooled_idx)  # the pooled head's last column: is this a real picture?

    report("render", 0.0)
    first = TRAIN_SEED_BASE + seed * 1_000_000
    train_seeds = range(first, first + n_train)
    train = render_set(train_seeds, input_size, vocab)
    val = render_set(range(VAL_SEED_BASE, VAL_SEED_BASE + n_val), input_size, vocab)
    n_synthetic = n_train
    real_val: SceneSet | None = None
    n_real_train = 0
    if splits is not None:
        real = render_real_faces(
            load_images(splits.train), [i.label for i in splits.train], input_size, vocab, characters
        )
        n_real_train = len(real.images)
        for _ in range(
            max(1, real_repeats)
        ):  # each real face once per repeat and epoch (fresh augmentations)
            train = concat_sets(train, real)
        real_val = render_real_faces(
            load_images(splits.val), [i.label for i in splits.val], input_size, vocab, characters
        )
        n_train = len(train.images)
    has_real = bool(train.real.any())
    images = torch.from_numpy(np.ascontiguousarray(train.images[..., ::-1].transpose(0, 3, 1, 2)))  # RGB NCHW
    tags = torch.from_numpy(train.tags)
    ratings = torch.from_numpy(train.ratings)
    boxes = torch.from_numpy(train.boxes)
    head_tags = torch.from_numpy(train.head_tags[..., cell_idx])
    valid = torch.from_numpy(train.valid)
    known = torch.from_numpy(train.known).float()
    is_real = torch.from_numpy(train.real).float()
    render_s = time.monotonic() - started
    report("render", 1.0)

    net = DenseTagNet(
        backbone, len(cell_idx), domain_col + 1, pretrained=pretrained, frozen_blocks=frozen_blocks
    ).to(device, memory_format=torch.channels_last)
    body = [p for p in net.body.parameters() if p.requires_grad]
    heads = [p for name, p in net.named_parameters() if not name.startswith("body.")]
    body_lr = lr * (backbone_lr_scale if pretrained and is_pretrained_backbone(backbone) else 1.0)
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": body_lr}, {"params": heads, "lr": lr}], weight_decay=0.02
    )
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    mean_rgb, std_rgb = input_scaling(backbone)
    mean = torch.tensor(mean_rgb, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std_rgb, device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    stride = 16
    grid = input_size // stride
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n_train, generator=gen)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs two pictures
                idx = torch.cat([idx, order[:1]]) if n_train > 1 else idx.repeat(2)
            x, b = augment(images[idx], gen, boxes[idx])
            target, weight = cell_targets(b, head_tags[idx], valid[idx], grid, stride)
            x = ((x.to(device) - mean) / std).contiguous(memory_format=torch.channels_last)
            cells, pooled = net(x)
            known_cell = known[idx][:, cell_idx].to(device)
            dense = F.binary_cross_entropy_with_logits(
                cells, target.to(device), weight.to(device) * known_cell[..., None, None], reduction="sum"
            ) / (len(idx) * len(cell_idx))
            mil = F.binary_cross_entropy_with_logits(
                cells.flatten(2).amax(2), tags[idx][:, cell_idx].to(device), known_cell
            )
            whole = F.binary_cross_entropy_with_logits(
                pooled[:, n_r:domain_col],
                tags[idx][:, pooled_idx].to(device),
                known[idx][:, pooled_idx].to(device),
            )
            synthetic = (1.0 - is_real[idx]).to(device)  # real faces carry no rating
            rating = (
                F.cross_entropy(pooled[:, :n_r], ratings[idx].to(device), reduction="none") * synthetic
            ).sum() / synthetic.sum().clamp(min=1.0)
            loss = dense + mil + whole + 0.1 * rating
            if has_real:
                loss = loss + 0.2 * F.binary_cross_entropy_with_logits(
                    pooled[:, domain_col], is_real[idx].to(device)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        report(f"epoch {epoch + 1}/{epochs} loss {running / max(1, seen):.4f}", (epoch + 1) / epochs)
    train_s = time.monotonic() - started - render_s

    # thresholds: the general one for macro-F1 on held-out scenes; with real faces, per-tag ones (see
    # fit_tag_thresholds) and the domain gate on tags no real training face has
    net = net.cpu().to(memory_format=torch.contiguous_format).eval()
    n_p = (
        domain_col  # export columns: ratings, pooled general tags (the domain logit left out), per-cell tags
    )
    order = list(range(n_r)) + [
        n_r + pooled_idx.index(v) if v in pooled_idx else n_p + cell_idx.index(v) for v in range(len(vocab))
    ]
    export = Wd14Export(net, n_r, order, mean=mean_rgb, std=std_rgb)
    supported = (train.tags[train.real] > 0.5).any(0) if has_real else np.zeros(len(vocab), bool)
    if has_real:
        export.gate[n_r:] = torch.from_numpy((~supported).astype(np.float32))
    val_raw, val_real = eager_scores(export, val.images)
    gate = export.gate.numpy()
    val_probs = val_raw * (1.0 - gate * val_real[:, None])
    threshold, _ = best_threshold(val_probs[:, n_r:], val.tags)
    tag_thresholds = np.full(len(vocab), threshold)
    real_p_real = float("nan")
    if real_val is not None and len(real_val.images):
        real_raw, real_dom = eager_scores(export, real_val.images)
        real_p_real = float(real_dom.mean())
        real_probs = real_raw * (1.0 - gate * real_dom[:, None])
        tag_thresholds = fit_tag_thresholds(
            threshold,
            val_probs[:, n_r:],
            val.tags,
            real_probs[:, n_r:],
            real_val.tags,
            real_val.known,
            supported,
        )
        export.scale[n_r:] = torch.from_numpy((threshold / tag_thresholds).astype(np.float32))

    # export in the WD14 format (CSV order: ratings, then the general tags), then measure the exported file
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    tags_path = out_dir / "selected_tags.csv"
    export_onnx(
        export,
        torch.full((1, input_size, input_size, 3), 255.0),
        onnx_path,
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    torch_path = out_dir / "model.pt"  # the same weights for eager torch (load_eager)
    torch.save(export.state_dict(), torch_path)
    counts = tags.sum(0).long().tolist()
    rating_counts = torch.bincount(ratings[~train.real], minlength=n_r).tolist()
    tag_defs = [TagDef(i, name, CATEGORY_RATING, rating_counts[i]) for i, name in enumerate(RATINGS)]
    tag_defs += [
        TagDef(n_r + i, name, CATEGORY_CHARACTER if name in characters else CATEGORY_GENERAL, counts[i])
        for i, name in enumerate(vocab)
    ]
    write_selected_tags(tags_path, tag_defs)

    tagger = Wd14Tagger(onnx_path, tags_path, version="validation")
    val_x = val.images.astype(np.float32)
    probs = np.concatenate([tagger._run(val_x[i : i + 50]) for i in range(0, len(val_x), 50)])
    macro = float(np.nanmean(f1_scores(probs[:, n_r:], val.tags, threshold)))
    per_tag = f1_scores(probs[:, n_r:], val.tags, threshold)
    rating_acc = float((probs[:, :n_r].argmax(1) == val.ratings).mean())
    real_f1: dict[str, float] = {}
    if real_val is not None and len(real_val.images):
        real_probs = tagger._run(real_val.images.astype(np.float32))[:, n_r:]
        real_f1 = colour_f1(real_probs, real_val.tags, vocab, threshold)
        real_f1["unsupported_firing"] = float((real_probs[:, ~supported] >= threshold).any(1).mean())
    left_out = [t for t, th in zip(vocab, tag_thresholds, strict=True) if th >= 0.999]

    roots_text = ", ".join(str(r) for r in face_roots)
    manifest = save_starter_manifest(
        out_dir,
        slot="tagger",
        name=MODEL_NAME,
        format="wd14-onnx",
        files={"onnx": onnx_path.name, "tags": tags_path.name, "torch": torch_path.name},
        # one threshold for both categories: the per-tag scales in the ONNX carry each tag's own threshold
        thresholds={"general": threshold, "character": threshold},
        input_size=input_size,
        provenance=(
            f"trained here by core.learning.starter.tagger ({_backbone_text(backbone, pretrained, frozen_blocks)},"
            f" with a per-cell tag head) on {n_synthetic} synthetic scenes (core.datasets.synth seeds "
            f"{train_seeds.start}..{train_seeds.stop - 1})"
            + (
                f" and {n_real_train} real faces of {roots_text} (train splits, weakly labelled with each "
                "character's canonical look)"
                if face_roots
                else ""
            )
            + f", {epochs} epochs, seed {seed}; general threshold chosen for macro-F1 on {n_val} held-out scenes"
            + (
                "; per-tag thresholds fitted on the real validation faces too, tags without a real training "
                "face gated by a real-picture logit"
                if has_real
                else ""
            )
        ),
        extra={
            "backbone": backbone,
            "pretrained": bool(pretrained and is_pretrained_backbone(backbone)),
            "net": {
                "n_cell": len(cell_idx),
                "n_pooled": domain_col + 1,
                "n_ratings": n_r,
                "order": order,
                "frozen_blocks": frozen_blocks,
                "domain": True,
            },
            "macro_f1": round(macro, 4),
            "per_tag_f1": {
                t: None if np.isnan(f) else round(float(f), 4) for t, f in zip(vocab, per_tag, strict=True)
            },
            "tag_thresholds": {t: round(float(th), 3) for t, th in zip(vocab, tag_thresholds, strict=True)},
            "characters": characters,
            # its character tags may only confirm the gallery (core.characters.fusion): they are a closed set of a few
            # characters with no "someone else", so on real art they name lookalikes. Measured with names alone: the
            # fresh-machine tagger named 12 % of web5's pictures wrongly (the drawn cast on real faces); trained with
            # moeimouto10 + onepiece5 it named 95 % of its characters' test faces right but every keima3 face (never
            # trained on) wrongly, and 17 % of web5's pictures of unknown characters (scripts/bench_names_real.py)
            "character_names": "confirm",
            "real_supported_tags": [t for t, ok in zip(vocab, supported, strict=True) if ok],
            "left_out_tags": left_out,
            "rating_accuracy": round(rating_acc, 4),
            **{f"real_val_{k}": round(v, 4) for k, v in real_f1.items()},
            "real_val_p_real": round(real_p_real, 4) if real_val is not None else None,
            "real_faces": [str(r) for r in face_roots] or None,
            "n_real_train": n_real_train,
            "real_repeats": real_repeats,
            "val_scenes": n_val,
            "n_train": n_synthetic,
            "epochs": epochs,
            "torch_threads": torch.get_num_threads(),
            "render_s": round(render_s, 1),
            "train_s": round(train_s, 1),
            "total_s": round(time.monotonic() - started, 1),
        },
    )
    report("done", 1.0)
    return manifest


def _backbone_text(backbone: str, pretrained: bool, frozen_blocks: int) -> str:
    if is_pretrained_backbone(backbone):
        return (
            f"EfficientNet-Lite {backbone}, ImageNet weights of core.learning.pretrained, stem and first "
            f"{frozen_blocks} blocks frozen"
            if pretrained
            else f"EfficientNet-Lite {backbone} from scratch"
        )
    return f"timm {backbone}, pretrained=False"
