"""Embedder slot: a head crop -> an L2-normalised identity vector (cosine similarity = identity match).

Formats:

* ``onnx-embedder`` (:class:`OnnxEmbedder`): ``files = {"onnx": "model.onnx"}``; the graph takes NCHW float
  input, already normalised with ``extra["mean"]``/``extra["std"]`` (ImageNet by default), and returns
  (n, dim) embeddings. The input size is read from the graph when static, else from ``manifest.input_size``.
* ``timm-embedder`` (:class:`TimmEmbedder`): ``files = {"weights": "model.safetensors" | "*.pth"}`` and
  ``extra["timm_model"]``: a timm model built with ``num_classes=0`` whose pooled features are the embedding
  (eager torch; torch and timm are imported only when such a model is loaded).

Both embed a crop and its mirror image and average the two before normalising (test-time flip), so a character
and its mirror image get the same vector, unless ``extra["flip_tta"]`` is false (deepghs' CCIP: its threshold was
fitted on single passes); then a crop's embedding is its single pass, normalised. Crops are padded to a square
(with their mean edge colour) or stretched (``extra["resize"]``), resized, normalised and run in batches. How much
picture around a head an embedder is given is its ``crop_rule`` (``extra["crop"]``, :mod:`core.vision.crops`),
which every caller that cuts heads for it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from core.vision.crops import HEAD_ONLY, CropRule
from core.vision.slots.base import Manifest
from core.vision.slots.onnx_runtime import onnx_session, run_model

if TYPE_CHECKING:
    from core.settings import Settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH_SIZE = 32


def edge_colour(image: Image.Image) -> tuple[int, int, int]:
    """Mean colour of the one-pixel border of an RGB image."""
    a = np.asarray(image.convert("RGB"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0)
    return tuple(round(float(v)) for v in border.mean(axis=0))  # type: ignore[return-value]


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """Centre ``image`` on a square canvas of its longer side, filled with ``fill`` (default: edge colour)."""
    image = image.convert("RGB")
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill if fill is not None else edge_colour(image))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def to_tensor(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A square RGB image -> normalised CHW float32 of ``size`` x ``size``."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(image, dtype=np.float32) / 255.0
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


# how a crop becomes square before resizing (a manifest's ``extra["resize"]``): padded, as anibot's own models
# train, or stretched, as e.g. deepghs' CCIP expects
SQUARING: dict[str, Callable[[Image.Image], Image.Image]] = {
    "pad": pad_to_square,
    "stretch": lambda image: image.convert("RGB"),  # to_tensor then resizes to size x size
}


def squaring(manifest: Manifest) -> str:
    mode = str(manifest.extra.get("resize", "pad"))
    if mode not in SQUARING:
        raise ValueError(f"{manifest.name}: extra.resize must be one of {sorted(SQUARING)}, not {mode!r}")
    return mode


def preprocess(
    crops: Sequence[Image.Image],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    with_mirror: bool = True,
    resize: str = "pad",
) -> np.ndarray:
    """(n or 2n, 3, size, size) float32: the crops made square (``resize``: padded or stretched), then
    (``with_mirror``) their mirrors."""
    squares = [SQUARING[resize](c) for c in crops]
    arrays = [to_tensor(s, size, mean, std) for s in squares]
    if with_mirror:
        arrays += [a[:, :, ::-1] for a in arrays]
    return np.ascontiguousarray(np.stack(arrays)) if arrays else np.zeros((0, 3, size, size), np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def flip_average(raw: np.ndarray, n: int) -> np.ndarray:
    """Rows 0..n-1 are the crops and n..2n-1 their mirrors: normalise each, average the pairs, normalise."""
    raw = l2_normalise(raw)
    return l2_normalise(raw[:n] + raw[n:])


def flip_tta(manifest: Manifest) -> bool:
    """Whether the embedder averages each crop with its mirror image (``extra["flip_tta"]``, default true)."""
    value = manifest.extra.get("flip_tta", True)
    if not isinstance(value, bool):
        raise ValueError(f"{manifest.name}: extra.flip_tta must be true or false, not {value!r}")
    return value


def finish(raw: np.ndarray, n: int, *, flip: bool) -> np.ndarray:
    """The embeddings of ``n`` crops from the model's raw rows: flip-averaged when ``flip`` (rows n..2n-1 are the
    mirrors), else each single pass normalised."""
    return flip_average(raw, n) if flip else l2_normalise(raw[:n])


def _mean_std(manifest: Manifest) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(float(v) for v in manifest.extra.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in manifest.extra.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{manifest.name}: mean/std must have 3 values, got {mean} / {std}")
    return mean, std


def _wants_cuda(settings: Settings | None) -> bool:
    return settings is not None and settings.device in ("auto", "cuda")


class OnnxEmbedder:
    """An ONNX feature extractor run by ONNX Runtime, with flip test-time augmentation."""

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        version: str,
        input_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        batch_size: int = BATCH_SIZE,
        resize: str = "pad",
        flip: bool = True,
        crop_rule: CropRule = HEAD_ONLY,
        device: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.resize = resize
        self.flip = flip
        self.crop_rule = crop_rule
        self.session = onnx_session(
            onnx_path, providers=providers, threads=threads, device=device, cache_dir=cache_dir
        )
        self.version = version
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ValueError(f"{onnx_path}: expected an NCHW input, got shape {shape}")
        static = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if static[2] is not None and static[3] is not None:
            if static[2] != static[3]:
                raise ValueError(f"{onnx_path}: square input expected, got {shape}")
            self.input_size = int(static[2])
        elif input_size:
            self.input_size = int(input_size)
        else:
            raise ValueError(f"{onnx_path}: dynamic spatial input and no input_size given")
        # a graph exported with a fixed batch is fed that many rows at a time (padded with zeros)
        self.fixed_batch = static[0]
        self.batch_size = self.fixed_batch or max(1, int(batch_size))
        out_shape = self.session.get_outputs()[0].shape
        last = out_shape[-1] if out_shape else None
        if isinstance(last, int) and last > 0:
            self.dim = int(last)
        else:
            self.dim = int(self._run(np.zeros((1, 3, self.input_size, self.input_size), np.float32)).shape[1])

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings | None = None) -> OnnxEmbedder:
        mean, std = _mean_std(manifest)
        return cls(
            manifest.path("onnx"),
            version=manifest.version,
            input_size=manifest.input_size,
            mean=mean,
            std=std,
            device=settings.device if settings is not None else "cpu",
            threads=settings.onnx_threads if settings is not None else 0,
            resize=squaring(manifest),
            flip=flip_tta(manifest),
            crop_rule=CropRule.of_manifest(manifest),
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        outputs = []
        step = self.batch_size
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            rows = len(chunk)
            if self.fixed_batch and rows < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - rows, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            out = np.asarray(run_model(self.session, {self.input_name: chunk})[0], dtype=np.float32)
            outputs.append(out.reshape(out.shape[0], -1)[:rows])
        return np.concatenate(outputs)

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        """One model call for all the crops (the pipeline passes every head of a picture at once) and their
        mirrors, while they fit ``batch_size`` rows; more crops take more calls of ``batch_size`` rows."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        result = []
        per_call = max(1, self.batch_size // (2 if self.flip else 1))  # crops whose rows fill one call
        for start in range(0, len(crops), per_call):
            part = crops[start : start + per_call]
            batch = preprocess(
                part, self.input_size, self.mean, self.std, with_mirror=self.flip, resize=self.resize
            )
            result.append(finish(self._run(batch), len(part), flip=self.flip))
        return np.concatenate(result)


class TimmEmbedder:
    """A timm backbone (``num_classes=0``) in eager torch; its pooled features are the embedding."""

    def __init__(
        self,
        model_name: str,
        weights: str | Path,
        *,
        version: str,
        input_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str = "cpu",
        batch_size: int = BATCH_SIZE,
        resize: str = "pad",
        flip: bool = True,
        crop_rule: CropRule = HEAD_ONLY,
    ) -> None:
        import timm
        import torch

        self._torch = torch
        model = timm.create_model(model_name, num_classes=0, pretrained=False)
        weights = Path(weights)
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        model.load_state_dict(state, strict=False)
        self.device = device
        self.model = model.eval().to(device)
        self.version = version
        self.input_size = int(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.batch_size = max(1, int(batch_size))
        self.resize = resize
        self.flip = flip
        self.crop_rule = crop_rule
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=device)
            self.dim = int(self.model(probe).shape[1])

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings | None = None) -> TimmEmbedder:
        mean, std = _mean_std(manifest)
        device = "cpu"
        if _wants_cuda(settings):
            import torch

            if torch.cuda.is_available():
                device = "cuda"
        name = manifest.extra.get("timm_model")
        if not name:
            raise ValueError(f"{manifest.name}: timm-embedder needs extra['timm_model']")
        return cls(
            name,
            manifest.path("weights"),
            version=manifest.version,
            input_size=manifest.input_size or 224,
            mean=mean,
            std=std,
            device=device,
            resize=squaring(manifest),
            flip=flip_tta(manifest),
            crop_rule=CropRule.of_manifest(manifest),
        )

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        torch = self._torch
        result = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                part = crops[start : start + self.batch_size]
                batch = preprocess(
                    part, self.input_size, self.mean, self.std, with_mirror=self.flip, resize=self.resize
                )
                raw = self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
                result.append(finish(raw, len(part), flip=self.flip))
        return np.concatenate(result)


def mirror(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)


EMBEDDER_LOADERS: dict[str, Callable[[Manifest, Any], Any]] = {
    "onnx-embedder": OnnxEmbedder.from_manifest,
    "timm-embedder": TimmEmbedder.from_manifest,
}
