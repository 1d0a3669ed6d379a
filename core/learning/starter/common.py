"""Small torch helpers shared by the starter-model trainers: seeding, device choice, ONNX export."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


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
