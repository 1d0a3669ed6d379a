"""Measurement: how much picture around a head an embedder should be given (``extra["crop"]["context"]``).

    python scripts/measure_crop_context.py --models DIR --pictures DIR [--contexts 0,0.25,0.5,1,1.5,2] [--draws 5]
        [--embedders starter,imagenet,colour] [--confidence C]

Whole pictures in a folder per character (e.g. ``../shared/data/pictures/web5``): the installed detector's largest
head of each picture, cut by :func:`core.vision.crops.embedder_crop_region` with each context, embedded by

- ``starter``: the models folder's active embedder (anibot's starter: trained on head crops), its own flip switch;
- ``imagenet``: EfficientNet-Lite0's pooled ImageNet features (224 px, padded, flip-averaged): an embedder that was
  never trained on heads, a stand-in for one trained on whole pictures such as CCIP (whose weights are not here);
- ``colour``: a colour histogram (the floor).

Figures per context: few-shot top-1 with K = 1 and 5 references per character (the characters' other pictures
as queries, ``--draws`` draws), and the share of queries decided right (balanced over right top-1 answers and
unknown characters' queries) at the threshold fitted by :func:`core.evaluation.threshold_fit.fold_searches` +
:func:`core.characters.gallery.fit_threshold_and_calibration` (each character left out once; an in-sample fit,
so read it as a comparison between contexts). A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.characters.gallery import fit_threshold_and_calibration
from core.characters.teaching import largest_head
from core.evaluation.threshold_fit import fold_searches, load_set
from core.settings import Settings
from core.vision.crops import CropRule, embedder_crop
from core.vision.intake import decode_image_file
from core.vision.slots.embedder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    flip_average,
    l2_normalise,
    preprocess,
)
from core.vision.slots.registry import active_manifest, load_slot


class ImagenetLite0:
    """EfficientNet-Lite0's pooled ImageNet features as an embedder (never trained on heads)."""

    version = "imagenet-lite0"
    dim = 1280

    def __init__(self, size: int = 224) -> None:
        import torch

        from core.learning.pretrained import build_efficientnet_lite

        self.torch = torch
        self.model = build_efficientnet_lite("efficientnet_lite0").eval()
        self.size = size

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(crops), 32):
                part = crops[start : start + 32]
                batch = preprocess(part, self.size, IMAGENET_MEAN, IMAGENET_STD, with_mirror=True)
                raw = self.model.features(self.torch.from_numpy(batch)).numpy()
                out.append(flip_average(raw, len(part)))
        return np.concatenate(out)


class ColourHistogram:
    version = "colour"
    dim = 256

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        rows = []
        for crop in crops:
            hsv = np.asarray(crop.convert("RGB").resize((64, 64)).convert("HSV")).reshape(-1, 3)
            hist, _ = np.histogramdd(hsv, bins=(16, 4, 4), range=((0, 256), (0, 256), (0, 256)))
            rows.append(np.sqrt(hist.ravel() / len(hsv)))
        return l2_normalise(np.array(rows, np.float32))


def measure(labels: list[str], vectors: np.ndarray, draws: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for k in (1, 5):
        top1, decided = [], []
        for seed in range(draws):
            ks, kr, us = fold_searches(labels, vectors, refs=k, folds=len(set(labels)), n_out=1, seed=seed)
            threshold, _ = fit_threshold_and_calibration(ks, kr, us)
            ks_, kr_, us_ = np.asarray(ks), np.asarray(kr, bool), np.asarray(us)
            top1.append(kr_.mean())
            accept = (ks_[kr_] >= threshold).mean() if kr_.any() else 0.0
            decided.append((accept + (us_ < threshold).mean()) / 2)
        figures[f"top1_k{k}"] = float(np.mean(top1))
        figures[f"decided_k{k}"] = float(np.mean(decided))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--pictures", type=Path, required=True)
    parser.add_argument("--contexts", default="0,0.25,0.5,1,1.5,2")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--embedders", default="starter,imagenet,colour")
    parser.add_argument(
        "--confidence", type=float, help="The detector's confidence threshold instead of its own."
    )
    args = parser.parse_args()

    settings = Settings(models_dir=args.models, device="cpu")
    detector = load_slot(active_manifest(args.models, "detector"), settings)
    if args.confidence is not None:
        detector.confidence = args.confidence
    items = load_set(args.pictures)
    started = time.perf_counter()
    heads = []
    for item in items:
        image = decode_image_file(item.path, max_bytes=40 << 20, max_pixels=60_000_000).image
        found = detector.detect(image)
        chosen = largest_head(found)
        if chosen is not None:
            heads.append((item.label, image, found[chosen].box))
    print(
        f"{len(items)} pictures of {len({i.label for i in items})} characters; a head in {len(heads)} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    labels = [label for label, _, _ in heads]
    embedders = {}
    for name in args.embedders.split(","):
        if name == "starter":
            manifest = active_manifest(args.models, "embedder")
            embedders[f"starter ({manifest.name})"] = load_slot(manifest, settings)
        elif name == "imagenet":
            embedders["imagenet lite0"] = ImagenetLite0()
        elif name == "colour":
            embedders["colour histogram"] = ColourHistogram()
    print("| embedder | context | top-1 K=1 | top-1 K=5 | decided right K=1 | decided right K=5 |")
    print("|---|---|---|---|---|---|")
    for name, embedder in embedders.items():
        for context in (float(c) for c in args.contexts.split(",")):
            rule = CropRule(context)
            crops = [embedder_crop(image, box, rule) for _, image, box in heads]
            vectors = embedder.embed(crops)
            f = measure(labels, vectors, args.draws)
            print(
                f"| {name} | {context:g} | {f['top1_k1']:.3f} | {f['top1_k5']:.3f} | {f['decided_k1']:.3f} "
                f"| {f['decided_k5']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
