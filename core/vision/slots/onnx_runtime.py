"""ONNX Runtime sessions for every slot: one place that picks the execution provider, the thread count and the
graph optimisation, and says in one log line per session which provider runs and why.

The commonest complaint about WD taggers is a GPU install silently running on the CPU: the CPU-only
``onnxruntime`` package installed instead of (or beside, shadowing) ``onnxruntime-gpu``, or the CUDA provider
failing to load its libraries, after which ONNX Runtime quietly falls back to the CPU. :func:`onnx_session` checks
the providers the session really got and logs the reason (a warning whenever CUDA was asked for and is not used).

Graph optimisation is ``ORT_ENABLE_ALL``. With a ``cache_dir`` the optimised graph is saved there (keyed by the
source file, the ONNX Runtime version, the providers and this CPU, see :func:`cached_optimised_path`) and later
sessions load it instead. The slots do not pass one: measured on 2 CPU cores with stand-ins of the real sizes
(``scripts/bench_realsize.py``), a session on the cached graph took 1.9 s instead of 2.7 s for the 411 MB SwinV2
tagger and 0.4 s instead of 0.6 s for the 147 MB CaFormer embedder: about 1 s once per worker process, for a second
copy of every model on disk (560 MB for these two) that nothing would clean up when models change.
IO binding (:func:`run_model`) is used on CUDA only: on the CPU it did not pay (tagger p50 1233 ms bound against
1266 ms plain, within the noise; embedder, 3 rows, 1674 ms against 1409 ms).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
MAX_CACHED_BYTES = 1_900_000_000  # protobuf's 2 GB limit: bigger models are optimised at each load, not saved
OPTIMISED_SUFFIX = ".optimised.onnx"


@dataclass(frozen=True)
class ProviderChoice:
    """The providers asked of ONNX Runtime, and why (``warn``: CUDA was wanted and cannot be had)."""

    providers: list[str]
    reason: str
    warn: bool = False


def onnxruntime_packages() -> list[str]:
    """The installed distributions that provide ``import onnxruntime`` (``onnxruntime``, ``onnxruntime-gpu``...)."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "onnxruntime" or name.startswith("onnxruntime-") or name.startswith("onnxruntime_"):
            names.add(name.replace("_", "-"))
    return sorted(names)


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU (its driver's device file or ``nvidia-smi``)."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def _no_cuda_reason(packages: Sequence[str], available: Sequence[str]) -> str:
    have = ", ".join(p.removesuffix("ExecutionProvider") for p in available) or "none"
    if "onnxruntime-gpu" in packages and "onnxruntime" in packages:
        return (
            "onnxruntime-gpu and the CPU-only onnxruntime are both installed and the CPU one shadows it "
            f"(providers: {have}); uninstall both, then install onnxruntime-gpu alone"
        )
    if "onnxruntime-gpu" in packages:
        return f"onnxruntime-gpu is installed but offers no CUDA provider (providers: {have})"
    installed = ", ".join(packages) or "onnxruntime"
    return (
        f"onnxruntime-gpu is not installed ({installed} offers providers: {have}); "
        "install onnxruntime-gpu in place of onnxruntime"
    )


def choose_providers(
    device: str,
    available: Sequence[str],
    *,
    packages: Sequence[str] = (),
    has_gpu: bool = False,
) -> ProviderChoice:
    """What to ask for ``device`` (``cpu``, ``cuda`` or ``auto``) given the providers this ONNX Runtime has."""
    if device == "cpu":
        return ProviderChoice([CPU], "device=cpu")
    if CUDA in available:
        return ProviderChoice([CUDA, CPU], f"device={device}")
    reason = _no_cuda_reason(packages, available)
    if device == "cuda":
        return ProviderChoice([CPU], f"device=cuda asked but {reason}", warn=True)
    if has_gpu:  # auto on a machine with a GPU: surely meant to run on it
        return ProviderChoice(
            [CPU], f"device=auto and this machine has an NVIDIA GPU, but {reason}", warn=True
        )
    return ProviderChoice([CPU], "device=auto and no CUDA provider (no GPU here)")


def onnx_providers(device: str) -> list[str]:
    """CUDA first when asked for (``cuda``/``auto``) and available, the CPU always. (The reason is logged by
    :func:`onnx_session`: pass it ``device`` rather than this list to get it.)"""
    import onnxruntime as ort

    return choose_providers(device, ort.get_available_providers()).providers


def _cpu_signature() -> str:
    """What makes an ``ORT_ENABLE_ALL`` graph specific to this CPU (its layout transforms follow the SIMD width)."""
    text = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("model name", "flags", "Features")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{text}"


def cached_optimised_path(source: Path, cache_dir: Path, providers: Sequence[str], ort_version: str) -> Path:
    """Where the optimised graph of ``source`` lives in ``cache_dir``: a new name whenever the source file
    (path, size, modification time), ONNX Runtime, the providers or the CPU change, so a stale graph is never
    loaded."""
    stat = source.stat()
    key = "|".join(
        [str(source.resolve()), str(stat.st_size), str(stat.st_mtime_ns), ort_version, ",".join(providers)]
    )
    digest = hashlib.sha256(f"{key}|{_cpu_signature()}".encode()).hexdigest()[:16]
    return cache_dir / f"{source.stem}-{digest}{OPTIMISED_SUFFIX}"


def _providers_label(providers: Sequence[str]) -> str:
    return ", ".join(p.removesuffix("ExecutionProvider") for p in providers)


def onnx_session(
    path: Path | str,
    *,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> Any:
    """An ``InferenceSession`` with full graph optimisation; ``threads`` > 0 sizes its thread pool.

    The providers: ``providers`` when given (those that exist here), else those :func:`choose_providers` picks
    for ``device``, else the CPU. ``cache_dir``: save the optimised graph there and load it next time. Logs one
    line saying which provider runs and why.
    """
    import onnxruntime as ort

    path = Path(path)
    available = ort.get_available_providers()
    if providers is not None:
        wanted = list(providers)
        choice = ProviderChoice(
            [p for p in wanted if p in available] or [CPU], f"providers asked: {_providers_label(wanted)}"
        )
        if CUDA in wanted and CUDA not in available:
            choice = ProviderChoice(
                choice.providers,
                f"{CUDA} asked but {_no_cuda_reason(onnxruntime_packages(), available)}",
                warn=True,
            )
    elif device is not None:
        choice = choose_providers(
            device, available, packages=onnxruntime_packages(), has_gpu=device == "auto" and gpu_present()
        )
    else:
        choice = ProviderChoice([CPU], "no device given")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    load_from, cache_note, save_to = path, "", None
    if cache_dir is not None:
        if path.stat().st_size > MAX_CACHED_BYTES:
            cache_note = "; optimised graph not cached (over 1.9 GB)"
        else:
            cached = cached_optimised_path(path, Path(cache_dir), choice.providers, ort.__version__)
            if cached.is_file():
                load_from, cache_note = cached, f"; optimised graph loaded from {cached}"
            else:
                try:
                    Path(cache_dir).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    cache_note = f"; optimised graph not cached ({exc})"
                else:
                    save_to = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
                    options.optimized_model_filepath = str(save_to)
                    # ONNX Runtime warns that such a graph suits this CPU only: the cache key holds the CPU's flags
                    options.log_severity_level = 3
                    cache_note = f"; optimised graph saved to {cached}"

    session = ort.InferenceSession(str(load_from), sess_options=options, providers=choice.providers)
    running = list(session.get_providers())
    if save_to is not None:
        try:
            if running[:1] != choice.providers[:1]:  # fell back: that graph is not the one the key names
                save_to.unlink(missing_ok=True)
                cache_note = "; optimised graph not cached (the asked provider did not load)"
            else:
                os.replace(save_to, cached)  # atomic: a concurrent worker never loads a half-written graph
        except OSError as exc:
            cache_note = f"; optimised graph not cached ({exc})"

    reason = choice.reason
    warn = choice.warn
    if CUDA in choice.providers and CUDA not in running:
        packages = ", ".join(onnxruntime_packages()) or "onnxruntime"
        reason = (
            f"{reason}, but the CUDA provider failed to load (CUDA or cuDNN libraries missing or not the versions "
            f"{packages} {ort.__version__} needs: see ONNX Runtime's error above)"
        )
        warn = True
    elif CUDA in running:
        reason = f"{reason}; ops CUDA lacks run on the CPU"
    threads_note = f"{threads} threads" if threads > 0 else "default threads"
    runs_on = "CPU" if running[:1] == [CPU] else _providers_label(running)
    log.log(
        logging.WARNING if warn else logging.INFO,
        "ONNX Runtime %s: running on %s (%s); graph optimisation all, %s%s",
        path.name,
        runs_on,
        reason,
        threads_note,
        cache_note,
    )
    return session


def uses_cuda(session: Any) -> bool:
    """Whether ``session`` runs on CUDA (a stand-in without ``get_providers``, as tests craft, does not)."""
    providers = getattr(session, "get_providers", None)
    return providers is not None and CUDA in list(providers())


def run_model(
    session: Any, feeds: Mapping[str, np.ndarray], *, io_binding: bool | None = None
) -> list[np.ndarray]:
    """All outputs of ``session`` for ``feeds``, as numpy arrays.

    ``io_binding`` None: IO binding on CUDA (inputs copied to the GPU once, outputs allocated there and copied
    back once), a plain ``run`` on the CPU, where binding was measured not to pay."""
    if io_binding is None:
        io_binding = uses_cuda(session)
    if not io_binding:
        return list(session.run(None, dict(feeds)))
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    device = "cuda" if uses_cuda(session) else "cpu"
    for output in session.get_outputs():
        binding.bind_output(output.name, device)
    session.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())
