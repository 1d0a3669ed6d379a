"""ONNX Runtime sessions for every slot: one place that picks the execution provider and the thread count."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def onnx_providers(device: str) -> list[str]:
    """CUDA first when asked for (``cuda``/``auto``) and available, the CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        log.warning(
            "device=cuda but ONNX Runtime has no CUDAExecutionProvider (%s): using the CPU", available
        )
    return ["CPUExecutionProvider"]


def onnx_session(path: Path, *, providers: Sequence[str] | None = None, threads: int = 0) -> Any:
    """An ``InferenceSession`` on the wanted providers that exist here; ``threads`` > 0 sizes its thread pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    chosen = [p for p in (providers or []) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
