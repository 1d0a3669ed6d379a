"""Tagging a folder: pictures read ahead by a small pool, batched per model call, captions written in order.

A :class:`TagSource` turns a chunk of pictures (their bytes) into scored tags: :class:`LocalSource` runs the
tagger in this process (decoding the next chunk while the model runs on this one); the queue's source
(``workers.tag_client``) sends each chunk to a worker as one job. Both decode and score a chunk with
:func:`tag_blobs`, so a folder gets the same captions either way.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from core.tagging.captions import CaptionOptions, ScoredTag, caption_text, merge_captions, select_tags
from core.tagging.folders import Format, Ledger, Mode, Picture, caption_path
from core.tagging.implications import Implications
from core.vision.intake import IntakeError, decode_image, image_sha256, read_image_file
from core.vision.slots.tagger import CATEGORY_NAMES, wd14_preprocess

if TYPE_CHECKING:
    from core.vision.slots.tagger import Wd14Tagger

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")
DEFAULT_BATCH = 8


@dataclass(frozen=True)
class PictureFailure:
    code: str
    message: str


Scored = list[ScoredTag] | PictureFailure


def prepare_picture(data: bytes, input_size: int, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """The picture as the tagger sees it: decoded, on a white square, resized to ``input_size`` (raises
    :class:`IntakeError` for what is no usable picture)."""
    decoded = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    square = wd14_preprocess(decoded.image, input_size)[0][:, :, ::-1]  # back to RGB; already uint8 values
    return Image.fromarray(np.ascontiguousarray(square).astype(np.uint8), "RGB")


def scored_tags(tagger: Wd14Tagger, row: np.ndarray, floor: float) -> list[ScoredTag]:
    """Every tag scoring at least ``floor``, and every rating tag, with its category's name."""
    out = []
    for tag, score in zip(tagger.tags, row.tolist(), strict=True):
        category = CATEGORY_NAMES.get(tag.category)
        if category is not None and (category == "rating" or score >= floor):
            out.append(ScoredTag(tag.name, float(score), category))
    return out


def score_prepared(
    tagger: Wd14Tagger, prepared: Sequence[Image.Image | PictureFailure], floor: float
) -> list[Scored]:
    """The pictures prepared without failure, scored as one batch (a chunk is one model call)."""
    good = [p for p in prepared if not isinstance(p, PictureFailure)]
    rows = iter(tagger.scores_batch(good, batch_size=max(1, len(good))) if good else [])
    return [p if isinstance(p, PictureFailure) else scored_tags(tagger, next(rows), floor) for p in prepared]


def prepare_or_fail(
    data: bytes, input_size: int, *, max_bytes: int, max_pixels: int
) -> Image.Image | PictureFailure:
    try:
        return prepare_picture(data, input_size, max_bytes=max_bytes, max_pixels=max_pixels)
    except IntakeError as exc:
        return PictureFailure(exc.code, exc.user_message)


def tag_blobs(
    tagger: Wd14Tagger, blobs: Sequence[bytes], floor: float, *, max_bytes: int, max_pixels: int
) -> list[Scored]:
    """What a chunk of pictures scores, each picture's failure in its place (what a worker runs per job)."""
    prepared = [
        prepare_or_fail(b, tagger.input_size, max_bytes=max_bytes, max_pixels=max_pixels) for b in blobs
    ]
    return score_prepared(tagger, prepared, floor)


@dataclass(frozen=True)
class Loaded:
    picture: Picture
    data: bytes
    sha256: str


class TagSource(Protocol):
    version: str | None  # the tagger's version; None while unknown (the queue learns it from the first job)

    def submit(self, chunk: list[Loaded], floor: float) -> Any:
        """Start tagging ``chunk`` (returns at once); :meth:`collect` gives its results in order."""
        ...

    def collect(self, handle: Any) -> list[Scored]: ...


class LocalSource:
    """The tagger in this process; a chunk is decoded by a small pool while the model runs on the one before."""

    def __init__(
        self, tagger: Wd14Tagger, *, max_bytes: int, max_pixels: int, decode_workers: int = 2
    ) -> None:
        self.tagger = tagger
        self.version = tagger.version
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="anibot-decode")

    def submit(self, chunk: list[Loaded], floor: float) -> tuple[list[Future], float]:
        size = self.tagger.input_size
        futures = [
            self.pool.submit(
                prepare_or_fail, item.data, size, max_bytes=self.max_bytes, max_pixels=self.max_pixels
            )
            for item in chunk
        ]
        return futures, floor

    def collect(self, handle: tuple[list[Future], float]) -> list[Scored]:
        futures, floor = handle
        return score_prepared(self.tagger, [f.result() for f in futures], floor)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def read_ahead(
    fn: Callable[[T], U], items: Iterable[T], pool: ThreadPoolExecutor, ahead: int
) -> Iterator[Future]:
    """``fn(item)`` for each item, at most ``ahead`` running or done before the caller takes them, in order."""
    queue: deque[Future] = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) > ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


@dataclass
class TagOutcome:
    picture: Picture
    status: str  # tagged, unchanged (same content and options as last time), exists (skip mode), failed
    reason: str = ""
    caption: str = ""
    tags: list[ScoredTag] = field(default_factory=list)


@dataclass
class RunSummary:
    outcomes: list[TagOutcome]
    elapsed_s: float

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[TagOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def pictures_per_s(self) -> float:
        return self.count("tagged") / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _read(picture: Picture, max_bytes: int) -> Loaded | TagOutcome:
    try:
        data = read_image_file(picture.path, max_bytes=max_bytes)
    except IntakeError as exc:
        return TagOutcome(picture, "failed", exc.user_message)
    except OSError as exc:
        return TagOutcome(picture, "failed", f"cannot read it: {exc.strerror or exc}")
    return Loaded(picture, data, image_sha256(data))


class FolderRun:
    """One ``anibot tag`` run over ``pictures`` (see :func:`core.tagging.folders.collect`)."""

    def __init__(
        self,
        pictures: Sequence[Picture],
        *,
        out_root: Path,
        fmt: Format,
        mode: Mode,
        options: CaptionOptions,
        source: TagSource,
        implications: Implications | None = None,
        batch_size: int = DEFAULT_BATCH,
        window: int = 2,
        redo: bool = False,
        max_bytes: int = 20 * 1024 * 1024,
        names: Callable[[Loaded], list[str]] | None = None,
        on_outcome: Callable[[TagOutcome], None] | None = None,
    ) -> None:
        self.pictures = list(pictures)
        self.out_root = out_root
        self.fmt = fmt
        self.mode = mode
        self.options = options
        self.source = source
        self.implications = implications
        self.batch_size = max(1, batch_size)
        self.window = max(1, window)
        self.redo = redo
        self.max_bytes = max_bytes
        self.names = names
        self.on_outcome = on_outcome
        self.ledger = Ledger(out_root)
        self.key = {**options.key(), "format": fmt}

    # --- what is done with each picture ------------------------------------------------------------------

    def _caption_exists(self, picture: Picture) -> bool:
        if self.fmt == "csv":
            return picture.relative in self.ledger.entries
        return caption_path(picture, self.out_root, self.fmt).exists()

    def run(self) -> RunSummary:
        started = time.perf_counter()
        outcomes: list[TagOutcome] = []

        def done(outcome: TagOutcome) -> None:
            outcomes.append(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)

        todo = []
        owners: dict[
            Path, Picture
        ] = {}  # caption file -> the picture writing it (a.png and a.jpg share a.txt)
        for picture in self.pictures:
            target = caption_path(picture, self.out_root, self.fmt)
            owner = owners.setdefault(target, picture) if self.fmt != "csv" else picture
            if owner is not picture:
                done(
                    TagOutcome(picture, "failed", f"its caption file {target.name} is {owner.relative}'s too")
                )
            elif self.mode == "skip" and not self.redo and self._caption_exists(picture):
                done(TagOutcome(picture, "exists", "a caption exists (skip mode)"))
            else:
                todo.append(picture)
        pending: deque[tuple[list[Loaded], Any]] = deque()
        chunk: list[Loaded] = []
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="anibot-read") as pool:
            for future in read_ahead(
                lambda p: _read(p, self.max_bytes), todo, pool, ahead=2 * self.batch_size
            ):
                loaded = future.result()
                if isinstance(loaded, TagOutcome):
                    done(loaded)
                    continue
                if (
                    not self.redo
                    and self.ledger.unchanged(loaded.picture, loaded.sha256, self.key, self.source.version)
                    and self._caption_exists(loaded.picture)
                ):
                    done(TagOutcome(loaded.picture, "unchanged", "same picture and options as last time"))
                    continue
                chunk.append(loaded)
                if len(chunk) == self.batch_size:
                    pending.append((chunk, self._submit(chunk)))
                    chunk = []
                    while len(pending) > self.window:
                        self._finish(*pending.popleft(), done)
            if chunk:
                pending.append((chunk, self._submit(chunk)))
            while pending:
                self._finish(*pending.popleft(), done)
        self._write_csv()
        self.ledger.save()
        order = {p.relative: i for i, p in enumerate(self.pictures)}
        outcomes.sort(key=lambda o: order[o.picture.relative])
        return RunSummary(outcomes, time.perf_counter() - started)

    def _submit(self, chunk: list[Loaded]) -> Any:
        """The source's handle for ``chunk``, or the exception that kept it from starting (reported by _finish)."""
        try:
            return self.source.submit(chunk, self.options.floor)
        except Exception as exc:  # Redis down, a full queue: these pictures fail, the run goes on
            return exc

    def _finish(self, chunk: list[Loaded], handle: Any, done: Callable[[TagOutcome], None]) -> None:
        try:
            if isinstance(handle, Exception):
                raise handle
            results = self.source.collect(handle)
        except Exception as exc:  # the whole chunk failed (a worker error, a timeout): each picture says so
            log.error("tagging %d pictures from %s failed: %s", len(chunk), chunk[0].picture.relative, exc)
            results = [PictureFailure("failed", str(exc))] * len(chunk)
        for loaded, result in zip(chunk, results, strict=True):
            if isinstance(result, PictureFailure):
                done(TagOutcome(loaded.picture, "failed", result.message))
                continue
            try:
                done(self._write(loaded, result))
            except (
                OSError,
                IntakeError,
                RuntimeError,
            ) as exc:  # its caption file, or --names' identification
                reason = exc.user_message if isinstance(exc, IntakeError) else str(exc)
                log.warning("%s: not captioned: %s", loaded.picture.relative, reason)
                done(TagOutcome(loaded.picture, "failed", f"not captioned: {reason}"))

    def _write(self, loaded: Loaded, scores: list[ScoredTag]) -> TagOutcome:
        options = self.options
        if self.names is not None:
            options = options.with_characters(self.names(loaded))
        tags = select_tags(scores, options, self.implications)
        caption = caption_text(tags, options)
        picture = loaded.picture
        target = caption_path(picture, self.out_root, self.fmt)
        previous = self.ledger.entries.get(picture.relative, {}).get("caption")
        if self.fmt == "txt":
            if self.mode == "append" and target.exists():
                caption = merge_captions(target.read_text(encoding="utf-8").strip(), caption)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(caption + "\n", encoding="utf-8")
        elif self.fmt == "json":
            if self.mode == "append" and target.exists():
                try:
                    caption = merge_captions(
                        str(json.loads(target.read_text(encoding="utf-8"))["caption"]), caption
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise OSError(f"{target} holds no caption to append to ({exc})") from None
            target.parent.mkdir(parents=True, exist_ok=True)
            body = {
                "file": picture.relative,
                "sha256": loaded.sha256,
                "model": self.source.version,
                "caption": caption,
                "tags": [t.to_dict() for t in tags],
                "scores": [t.to_dict() for t in scores],
            }
            target.write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        elif self.mode == "append" and previous:
            caption = merge_captions(previous, caption)
        rating = next((t.name for t in tags if t.category == "rating"), "")
        self.ledger.record(
            picture,
            {
                "sha256": loaded.sha256,
                "key": self.key,
                "model": self.source.version,
                "caption": caption,
                "rating": rating,
            },
        )
        return TagOutcome(picture, "tagged", caption=caption, tags=tags)

    def _write_csv(self) -> None:
        if self.fmt != "csv":
            return
        target = self.out_root / "tags.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file", "sha256", "rating", "caption"])
            for relative in sorted(self.ledger.entries):
                entry = self.ledger.entries[relative]
                writer.writerow(
                    [relative, entry.get("sha256", ""), entry.get("rating", ""), entry.get("caption", "")]
                )
