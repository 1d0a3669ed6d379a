"""Which catalogue models suit this machine: ``anibot models recommend`` and the models ``anibot demo --pull`` installs.

The machine is read once (:func:`detect_machine`: CPU cores, memory, a GPU when torch is importable and sees one,
and whether ONNX Runtime, which runs every catalogue model, can use it). The models of each slot are then ranked
by the scores their publishers report (the catalogue's ``scores``, with ``sources["scores"]``), one metric per
slot (:data:`RANK_METRICS`):

- on a GPU: the best published score first (a tie goes to the next metric, then to the smaller file);
- on a CPU: the smallest model within :data:`CPU_SCORE_MARGIN` of the slot's best score first, since a CPU pays
  for every extra weight on every picture and a few hundredths of a point are not worth several times the time;
- a model whose file times :data:`MEMORY_FACTOR` does not fit in the memory it would run from (the GPU's, else
  the RAM) goes last, marked as too big; a model without a published score of the slot's metric goes after the
  scored ones, smallest first.

Nothing here imports torch or ONNX Runtime at import time; :func:`detect_machine` imports them when called.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from core.vision.slots.catalog import CatalogEntry, Catalogue

RANK_METRICS: dict[str, tuple[str, ...]] = {
    "detector": ("f1", "map50_95"),  # F1 at the model's F1-best threshold, then mAP50-95
    "embedder": ("f1",),  # same-character F1 of pairs
    "tagger": ("macro_f1",),  # WD v3 macro-F1 (the v2 series published another F1)
}
DEMO_SLOTS = ("detector", "embedder", "tagger")  # what `anibot demo --pull` installs instead of training
CPU_SCORE_MARGIN = 0.05  # on a CPU, the smallest model this close to the best published score wins
MEMORY_FACTOR = (
    3  # assumed peak memory of an ONNX Runtime session, in multiples of the model file (not measured)
)


@dataclass(frozen=True)
class Machine:
    """What this machine offers the models."""

    cpus: int
    ram_bytes: int | None
    gpu_name: str | None = None  # None: no GPU seen (torch missing, or it sees none)
    gpu_memory_bytes: int | None = None
    onnx_gpu: bool | None = None  # ONNX Runtime has its CUDA provider; None: ONNX Runtime not importable

    @property
    def runs_on_gpu(self) -> bool:
        """The catalogue's models would run on the GPU: one is there and ONNX Runtime is not known to lack CUDA."""
        return self.gpu_name is not None and self.onnx_gpu is not False

    @property
    def memory_bytes(self) -> int | None:
        """The memory a model runs from: the GPU's when it runs there, else the RAM."""
        return self.gpu_memory_bytes if self.runs_on_gpu else self.ram_bytes

    def describe(self) -> str:
        ram = f"{gigabytes(self.ram_bytes)} RAM" if self.ram_bytes else "RAM unknown"
        head = f"{self.cpus} CPU core{'s' if self.cpus != 1 else ''}, {ram}"
        if self.gpu_name is None:
            return f"{head}, no GPU (torch is missing or sees none): ranked for a CPU"
        gpu = f"GPU {self.gpu_name}" + (
            f" ({gigabytes(self.gpu_memory_bytes)})" if self.gpu_memory_bytes else ""
        )
        if self.onnx_gpu is False:
            fix = "pip install onnxruntime-gpu"
            return f"{head}, {gpu}, but ONNX Runtime has no CUDA provider ({fix}): ranked for a CPU"
        return f"{head}, {gpu}: ranked for a GPU"


def gigabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e9:,.1f} GB"


def detect_machine() -> Machine:
    """This machine: cores, RAM (``sysconf``), the first CUDA GPU torch sees, ONNX Runtime's providers."""
    cpus = os.cpu_count() or 1
    try:
        ram: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = None
    gpu_name, gpu_memory = None, None
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            props = torch.cuda.get_device_properties(0)
            gpu_name, gpu_memory = str(props.name), int(props.total_memory)
    except Exception:  # torch missing, or a broken CUDA install: the CPU is what is left
        gpu_name, gpu_memory = None, None
    try:
        import onnxruntime

        onnx_gpu: bool | None = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        onnx_gpu = None
    return Machine(cpus, ram, gpu_name, gpu_memory, onnx_gpu)


@dataclass(frozen=True)
class Advice:
    """One catalogue model as seen for this machine; ``rank`` 1 is the one recommended for its slot."""

    entry: CatalogEntry
    rank: int
    metric: str | None  # the slot's ranking metric when the entry publishes it
    score: float | None
    fits: bool
    why: str


def _fits(entry: CatalogEntry, machine: Machine) -> bool:
    memory = machine.memory_bytes
    return memory is None or entry.total_size is None or entry.total_size * MEMORY_FACTOR <= memory


def _size(entry: CatalogEntry) -> int:
    return entry.total_size if entry.total_size is not None else 1 << 62


def rank_slot(entries: Iterable[CatalogEntry], slot: str, machine: Machine) -> list[Advice]:
    """The catalogue models of ``slot``, best suited first (see the module docstring)."""
    mine = [e for e in entries if e.slot == slot]
    metrics = RANK_METRICS.get(slot, ())
    primary = next((m for m in metrics if any(m in e.scores for e in mine)), None)
    fitting = [e for e in mine if _fits(e, machine)]
    scored = [e for e in fitting if primary is not None and primary in e.scores]
    unscored = sorted((e for e in fitting if e not in scored), key=_size)
    too_big = sorted((e for e in mine if e not in fitting), key=_size)

    def by_scores(entry: CatalogEntry) -> tuple[float, ...]:
        return (*(-entry.scores.get(m, -1.0) for m in metrics), _size(entry))

    where = "GPU" if machine.runs_on_gpu else "CPU"
    if machine.runs_on_gpu or not scored:
        order = sorted(scored, key=by_scores)
        used = [m for m in metrics if any(m in e.scores for e in scored)]
        lead_why = f"the best published {', then '.join(used)}" if used else ""
    else:
        best = max(e.scores[primary] for e in scored)  # type: ignore[index]
        near = sorted((e for e in scored if e.scores[primary] >= best - CPU_SCORE_MARGIN), key=_size)  # type: ignore[index]
        order = near + sorted((e for e in scored if e not in near), key=by_scores)
        lead_why = f"the smallest within {CPU_SCORE_MARGIN} of the best published {primary} ({best:g})"

    advice: list[Advice] = []
    for entry in [*order, *unscored, *too_big]:
        rank = len(advice) + 1
        fits = entry in fitting
        score = entry.scores.get(primary) if primary else None
        if not fits:
            need = (entry.total_size or 0) * MEMORY_FACTOR
            pool = "GPU memory" if machine.runs_on_gpu else "RAM"
            why = f"too big: needs about {gigabytes(need)}, {gigabytes(machine.memory_bytes)} of {pool} here"
        elif score is None:
            other = ", ".join(f"{k} {v:g}" for k, v in entry.scores.items())
            why = "no published " + (primary or "score") + (f" (it publishes {other})" if other else "")
        elif rank == 1:
            why = f"recommended for a {where}: {lead_why}"
        else:
            why = f"{primary} {score:g}"
        advice.append(Advice(entry, rank, primary if score is not None else None, score, fits, why))
    return advice


def recommend(
    catalogue: Catalogue, machine: Machine, slots: Iterable[str] | None = None
) -> dict[str, list[Advice]]:
    """Each slot (those of the catalogue, in its order, or ``slots``) and its models ranked for ``machine``."""
    wanted = list(slots) if slots is not None else list(dict.fromkeys(e.slot for e in catalogue.entries))
    return {slot: rank_slot(catalogue.entries, slot, machine) for slot in wanted}


def recommended(
    catalogue: Catalogue, machine: Machine, slots: Iterable[str] = DEMO_SLOTS
) -> dict[str, CatalogEntry]:
    """The model recommended for each of ``slots`` that has a fitting one."""
    out: dict[str, CatalogEntry] = {}
    for slot, advice in recommend(catalogue, machine, slots).items():
        if advice and advice[0].fits:
            out[slot] = advice[0].entry
    return out
