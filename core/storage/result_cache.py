"""Finished analyses, reused: the same image posted twice is answered without touching a model.

The key holds the image's sha256, the pipeline fingerprint (versions of every model and of the character gallery)
and the request's options, so teaching the bot a character or changing a model never serves a stale answer.
Workers publish the fingerprint they run with, so a front-end can answer a duplicate before enqueuing anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from core.storage.jobs import BlobStore
from core.storage.kv import KeyValue

CACHE_PREFIX = "anibot:analysis:"
FINGERPRINT_KEY = "anibot:fingerprint"
PIPELINE_RUNS_KEY = "anibot:metrics:pipeline_runs"


@dataclass(frozen=True)
class CachedAnalysis:
    result_blob: str  # sha256 of the result JSON blob
    annotated_blob: str  # sha256 of the reply picture blob (the annotated picture, reply-sized JPEG)


def cache_key(image_sha256: str, fingerprint: str, top_n: int) -> str:
    # "reply=jpeg": entries made before reply pictures were reply-sized JPEGs (full-size PNGs) are not reused;
    # "unsure=?": nor those drawn before a head below DEFAULT_SURE_CONFIDENCE was labelled "?" (core.vision.annotate)
    options = hashlib.sha256(f"{fingerprint}|top_n={top_n}|reply=jpeg|unsure=?".encode()).hexdigest()[:24]
    return f"{CACHE_PREFIX}{image_sha256}:{options}"


class ResultCache:
    def __init__(self, kv: KeyValue, blobs: BlobStore, ttl_s: int) -> None:
        self.kv = kv
        self.blobs = blobs
        self.ttl_s = ttl_s

    def get(self, image_sha256: str, fingerprint: str, top_n: int) -> CachedAnalysis | None:
        raw = self.kv.get(cache_key(image_sha256, fingerprint, top_n))
        if raw is None:
            return None
        entry = CachedAnalysis(**json.loads(raw))
        # blobs live shorter than cache entries: an entry whose bytes expired is a miss
        if not (self.blobs.exists(entry.result_blob) and self.blobs.exists(entry.annotated_blob)):
            return None
        return entry

    def put(self, image_sha256: str, fingerprint: str, top_n: int, entry: CachedAnalysis) -> None:
        payload = json.dumps({"result_blob": entry.result_blob, "annotated_blob": entry.annotated_blob})
        self.kv.set(cache_key(image_sha256, fingerprint, top_n), payload.encode(), self.ttl_s)

    # --- the fingerprint the workers currently run with ------------------------------------------
    def publish_fingerprint(self, fingerprint: str) -> None:
        self.kv.set(FINGERPRINT_KEY, fingerprint.encode(), self.ttl_s)

    def published_fingerprint(self) -> str | None:
        raw = self.kv.get(FINGERPRINT_KEY)
        return raw.decode() if raw is not None else None

    def invalidate_fingerprint(self) -> None:
        """Call when the gallery or a model changes: front-ends stop answering from the cache until a worker
        publishes the new fingerprint."""
        self.kv.delete(FINGERPRINT_KEY)

    # --- how many times the models really ran (tests and metrics) ---------------------------------
    def count_pipeline_run(self) -> int:
        return self.kv.incr(PIPELINE_RUNS_KEY)

    def pipeline_runs(self) -> int:
        raw = self.kv.get(PIPELINE_RUNS_KEY)
        return int(raw) if raw is not None else 0
