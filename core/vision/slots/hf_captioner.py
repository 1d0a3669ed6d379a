"""The learned captioner slot: a Hugging Face ``from_pretrained`` folder (VisionEncoderDecoder or BLIP), grounded.

The folder is what ``save_pretrained`` writes: ``config.json`` (its ``model_type`` or ``architectures`` picks the
model class in :data:`ARCHITECTURES`), the weights, the tokenizer, and ``preprocessor_config.json`` for the image
preprocessing (else the architecture's default). It loads with no network (``local_files_only``, with
``HF_HUB_OFFLINE`` set), and generates greedily (or with a small beam) for at most :data:`MAX_NEW_TOKENS` tokens.

The model's raw caption never reaches the user as is: :func:`core.vision.grounding.ground_caption` rebuilds it from the
identified heads and the tags, and the template sentence (:func:`template_caption`) replaces it when nothing usable
is left.

Manifest: ``format`` "hf-vision-encoder-decoder" (or "hf-blip"), ``files`` {"pretrained": <folder>},
``extra`` {"names": [names the model may say], "max_new_tokens": n, "num_beams": n, "claim_wrong_share":
{claim kind: share}} and ``thresholds`` {"max_claim_wrong": s}, all optional: a kind of claim measured wrong in
more than ``s`` of the validation's grounded captions is not taken from the model (see core.vision.grounding).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from core.settings import Settings
from core.vision.grounding import CLAIM_KINDS, ground_caption, trusted_kinds
from core.vision.results import Tag
from core.vision.slots.base import IdentifiedHead, Manifest
from core.vision.slots.captioner import template_caption

MAX_NEW_TOKENS = 96  # hard cap, whatever the folder's generation config says
MAX_BEAMS = 4
DEFAULT_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class Architecture:
    """How to build one kind of captioning model from its folder."""

    model_class: str  # a transformers class name
    image_size: Callable[[Any], int]  # config -> input side, when the folder has no preprocessor config
    default_processor: str  # image processor class used then


ARCHITECTURES: dict[str, Architecture] = {
    "vision-encoder-decoder": Architecture(
        "VisionEncoderDecoderModel", lambda config: int(config.encoder.image_size), "ViTImageProcessor"
    ),
    "blip": Architecture(
        "BlipForConditionalGeneration",
        lambda config: int(config.vision_config.image_size),
        "BlipImageProcessor",
    ),
}
ARCHITECTURE_OF_CLASS = {arch.model_class: key for key, arch in ARCHITECTURES.items()}


def detect_architecture(folder: Path) -> str:
    """The :data:`ARCHITECTURES` key of a ``from_pretrained`` folder, from its ``config.json``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a from_pretrained folder)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") in ARCHITECTURES:
        return str(config["model_type"])
    for class_name in config.get("architectures") or []:
        if class_name in ARCHITECTURE_OF_CLASS:
            return ARCHITECTURE_OF_CLASS[class_name]
    known = ", ".join(sorted(ARCHITECTURES))
    raise ValueError(
        f"{folder}: model_type {config.get('model_type')!r} / architectures {config.get('architectures')} "
        f"is not a supported captioner (supported model types: {known})"
    )


def load_image_processor(folder: Path, architecture: str, config: Any) -> Any:
    """The folder's own image preprocessing when it has one, else the architecture's default at its input size."""
    import transformers

    if (folder / "preprocessor_config.json").is_file():
        return transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    arch = ARCHITECTURES[architecture]
    side = arch.image_size(config)
    return getattr(transformers, arch.default_processor)(size={"height": side, "width": side})


def tidy(text: str) -> str:
    """Decoded word tokens back to prose: no space before punctuation, single spaces."""
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))


@contextmanager
def _quiet_batched_padding_warning() -> Iterator[None]:
    """Hide transformers' advice to pass an ``attention_mask`` when several images are captioned at once: the
    inputs are pixels (nothing is padded) and a finished caption's padding follows its EOS, which decoding drops."""
    from transformers.utils import logging as transformers_logging

    logger = transformers_logging.get_logger("transformers.generation.utils")
    level = logger.level
    logger.setLevel(transformers_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class HfCaptioner:
    """A ``from_pretrained`` captioning model whose captions are grounded in the heads and tags."""

    def __init__(
        self,
        folder: Path,
        *,
        version: str,
        known_names: Sequence[str] = (),
        trusted: Collection[str] = CLAIM_KINDS,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        device: str = "cpu",
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no tqdm bars in worker logs or the CLI's output
        self._torch = torch
        self.version = version
        self.folder = Path(folder)
        self.architecture = detect_architecture(self.folder)
        model_class = getattr(transformers, ARCHITECTURES[self.architecture].model_class)
        self.model = model_class.from_pretrained(self.folder, local_files_only=True).eval().to(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.image_processor = load_image_processor(self.folder, self.architecture, self.model.config)
        self.device = device
        self.known_names = tuple(known_names)
        self.trusted = tuple(trusted)
        configured = getattr(self.model.generation_config, "max_new_tokens", None)
        self.max_new_tokens = max(
            1, min(MAX_NEW_TOKENS, max_new_tokens or configured or DEFAULT_MAX_NEW_TOKENS)
        )
        self.num_beams = max(1, min(MAX_BEAMS, num_beams or self.model.generation_config.num_beams or 1))

    def raw_captions(self, images: Sequence[Image.Image]) -> list[str]:
        """The model's own captions (not grounded), one per RGB image."""
        if not images:
            return []
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with self._torch.inference_mode(), _quiet_batched_padding_warning():
            ids = self.model.generate(
                pixel_values=pixels["pixel_values"].to(self.device),
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
        return [tidy(t) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def raw_caption(self, image: Image.Image) -> str:
        return self.raw_captions([image])[0]

    def ground(
        self, raw: str, heads: list[IdentifiedHead], tags: list[Tag], trusted: Collection[str] | None = None
    ) -> str:
        """The caption the user sees for the raw caption ``raw`` (``trusted``: see core.vision.grounding)."""
        trusted = self.trusted if trusted is None else trusted
        grounded = ground_caption(raw, heads, tags, known_names=self.known_names, trusted=trusted)
        return grounded if grounded is not None else template_caption(heads, tags)

    def caption(self, image: Image.Image, heads: list[IdentifiedHead], tags: list[Tag]) -> str:
        return self.ground(self.raw_caption(image), heads, tags)

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings | None = None) -> HfCaptioner:
        import torch

        if settings is not None and settings.onnx_threads > 0:
            torch.set_num_threads(settings.onnx_threads)
        wants_cuda = settings is not None and settings.device in ("auto", "cuda")
        return cls(
            manifest.path("pretrained"),
            version=manifest.version,
            known_names=tuple(manifest.extra.get("names", ())),
            trusted=trusted_kinds(
                manifest.extra.get("claim_wrong_share", {}), manifest.thresholds.get("max_claim_wrong", 1.0)
            ),
            max_new_tokens=manifest.extra.get("max_new_tokens"),
            num_beams=manifest.extra.get("num_beams"),
            device="cuda" if wants_cuda and torch.cuda.is_available() else "cpu",
        )
