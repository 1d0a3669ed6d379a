"""Small helpers shared by the starter-model trainers: seeding, device choice, ONNX export, the saved manifest."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.vision.slots.base import Manifest, file_sha256


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def choose_device(preference: str = "auto") -> torch.device:
    """``cuda`` when asked for (or ``auto``) and available, else ``cpu``."""
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def training_threads() -> int:
    """Torch threads for training: ``Settings.train_threads`` when set, else every core.

    Fixed, not read from the machine's load: the thread count changes the order of floating-point sums, so a
    load-dependent choice made the same seed train different models on different runs.
    """
    from core.settings import get_settings

    return get_settings().train_threads or os.cpu_count() or 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``module`` (put in eval mode, on CPU) to a single self-contained ONNX file."""
    module = module.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
        torch.onnx.export(
            module,
            (example.cpu(),),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()},
            opset_version=opset,
            dynamo=False,
        )
    return path


def save_starter_manifest(
    out_dir: Path,
    *,
    slot: str,
    name: str,
    format: str,
    files: dict[str, str],
    thresholds: dict[str, float],
    input_size: int | None,
    provenance: str,
    extra: dict[str, Any],
) -> Manifest:
    """The built model's manifest, saved in ``out_dir``: ``files`` (role -> name in ``out_dir``) with their sha256,
    in the order of ``files``; a role naming a folder has each file in it hashed as ``folder/file``, sorted."""
    sha256: dict[str, str] = {}
    for file_name in files.values():
        path = out_dir / file_name
        if path.is_dir():
            for inner in sorted(path.iterdir()):
                if inner.is_file():
                    sha256[f"{file_name}/{inner.name}"] = file_sha256(inner)
        else:
            sha256[file_name] = file_sha256(path)
    manifest = Manifest(
        slot=slot,
        name=name,
        format=format,
        files=files,
        sha256=sha256,
        thresholds=thresholds,
        input_size=input_size,
        provenance=provenance,
        extra=extra,
        folder=out_dir,
    )
    manifest.save()
    return manifest
