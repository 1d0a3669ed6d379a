"""Versioned galleries in the shared folder: built by an index job, switched atomically, announced through Redis.

Layout, one folder per embedder (a gallery only makes sense with the model that embedded it)::

    <shared>/gallery/<embedder>/v00000012/index.faiss   the faiss inner-product index
                                          items.json    character and reference of each row
                                          manifest.json version, embedder, counts, sha256 of both files
    <shared>/gallery/<embedder>/CURRENT                 {"version": 12, "folder": "v00000012"}

A build writes a staging folder, renames it to its version folder, and only then replaces ``CURRENT`` (an
atomic rename), so a process killed at any point leaves the previous version serving. Workers read the announced
version from Redis on every job (one GET) and load a new version when it changes; ``CURRENT`` is the truth when
Redis has forgotten. Version numbers come from the store's counter, so builds on several machines never collide
and the pointer only moves forward.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.characters.gallery import Gallery, GalleryItem
from core.storage.kv import KeyValue
from core.storage.result_cache import FINGERPRINT_KEY
from core.storage.shared_store import SharedStore, file_sha256, write_atomic
from core.storage.store import Store

log = logging.getLogger(__name__)

GALLERY_DIR = "gallery"
POINTER_NAME = "CURRENT"
ANNOUNCE_PREFIX = "anibot:gallery:current:"
ANNOUNCE_TTL_S = 365 * 24 * 3600
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
MANIFEST_FILE = "manifest.json"


class GalleryCorrupt(RuntimeError):
    """A version folder whose files do not match its manifest (never served)."""


def embedder_slug(embedder: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", embedder)


def version_folder(version: int) -> str:
    return f"v{version:08d}"


def fault_point(name: str) -> None:
    """Testing only: the process kills itself here when ``ANIBOT_TEST_CRASH_AT`` names this point."""
    from core.settings import get_settings

    if get_settings().test_crash_at == name:
        log.warning("fault point %s reached: killing this process (testing)", name)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class GalleryManifest:
    version: int
    embedder: str
    dim: int
    n_references: int
    n_characters: int
    index_sha256: str
    items_sha256: str
    created_at: float


@dataclass(frozen=True)
class Published:
    """The version a build produced, and whether it became the current one."""

    manifest: GalleryManifest
    switched: bool


class GalleryVersions:
    def __init__(self, shared: SharedStore, kv: KeyValue | None = None, *, keep: int = 5) -> None:
        self.shared = shared
        self.kv = kv
        self.keep = keep

    # --- reading -----------------------------------------------------------------------------------------

    def folder(self, embedder: str) -> Path:
        return self.shared.path(GALLERY_DIR, embedder_slug(embedder))

    def current(self, embedder: str) -> int | None:
        """The version ``CURRENT`` points at (None when nothing was published for this embedder)."""
        pointer = self.folder(embedder) / POINTER_NAME
        try:
            return int(json.loads(pointer.read_text(encoding="utf-8"))["version"])
        except FileNotFoundError:
            return None

    def announced(self, embedder: str) -> int | None:
        """The current version as announced in Redis (one GET), else as ``CURRENT`` says."""
        if self.kv is not None:
            raw = self.kv.get(ANNOUNCE_PREFIX + embedder_slug(embedder))
            if raw is not None:
                return int(raw)
        return self.current(embedder)

    def manifest(self, embedder: str, version: int) -> GalleryManifest:
        folder = self.folder(embedder) / version_folder(version)
        return GalleryManifest(**json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")))

    def load(self, embedder: str, version: int) -> Gallery:
        """The gallery of one version, its files checked against its manifest."""
        import faiss

        folder = self.folder(embedder) / version_folder(version)
        manifest = self.manifest(embedder, version)
        if manifest.embedder != embedder:
            raise GalleryCorrupt(f"{folder} was built for {manifest.embedder}, not {embedder}")
        for name, expected in ((INDEX_FILE, manifest.index_sha256), (ITEMS_FILE, manifest.items_sha256)):
            if file_sha256(folder / name) != expected:
                raise GalleryCorrupt(f"{folder / name} does not match its manifest")
        items = [
            GalleryItem(**item) for item in json.loads((folder / ITEMS_FILE).read_text(encoding="utf-8"))
        ]
        index = faiss.read_index(str(folder / INDEX_FILE))
        return Gallery.from_index(index, items, version=f"g{version}")

    def versions(self, embedder: str) -> list[int]:
        folder = self.folder(embedder)
        if not folder.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in folder.iterdir() if re.fullmatch(r"v\d{8}", p.name))

    # --- building ----------------------------------------------------------------------------------------

    def publish(self, store: Store, embedder: str) -> Published:
        """Build the gallery of ``embedder`` from the store's references as a new version and make it current
        (unless a newer version was published meanwhile). Safe to run on several machines at once."""
        import faiss

        version, entries = store.gallery_snapshot(embedder)
        parent = f"{GALLERY_DIR}/{embedder_slug(embedder)}"
        self.shared.remove_stale_staging(parent)
        with self.shared.staging(parent) as staged:
            items = [GalleryItem(e.name, e.series, e.image_sha256) for e in entries]
            dim = int(entries[0].embedding.size) if entries else 0
            index = faiss.IndexFlatIP(dim if dim else 1)
            if entries:
                matrix = np.stack([e.embedding for e in entries]).astype(np.float32)
                matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
                index.add(np.ascontiguousarray(matrix))
            faiss.write_index(index, str(staged / INDEX_FILE))
            (staged / ITEMS_FILE).write_text(
                json.dumps([asdict(item) for item in items], ensure_ascii=False), encoding="utf-8"
            )
            manifest = GalleryManifest(
                version=version,
                embedder=embedder,
                dim=dim,
                n_references=len(items),
                n_characters=len({(i.name, i.series) for i in items}),
                index_sha256=file_sha256(staged / INDEX_FILE),
                items_sha256=file_sha256(staged / ITEMS_FILE),
                created_at=time.time(),
            )
            (staged / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2), encoding="utf-8")
            target = self.folder(embedder) / version_folder(version)
            self.shared.commit_folder(staged, target)
        switched = self._switch(embedder, version)
        log.info(
            "gallery %s version %d built: %d references of %d characters%s",
            embedder,
            version,
            manifest.n_references,
            manifest.n_characters,
            "" if switched else " (a newer version is current: not switched)",
        )
        self._prune(embedder)
        return Published(manifest, switched)

    def _switch(self, embedder: str, version: int) -> bool:
        fault_point("gallery.switch")
        current = self.current(embedder)
        if current is not None and current >= version:
            return False
        pointer = self.folder(embedder) / POINTER_NAME
        payload = {"version": version, "folder": version_folder(version), "switched_at": time.time()}
        write_atomic(pointer, json.dumps(payload).encode())
        self.announce(embedder, version)
        return True

    def announce(self, embedder: str, version: int) -> None:
        """Tell every worker; front-ends stop answering duplicates from the cache until a worker has published
        the fingerprint with the new version."""
        if self.kv is not None:
            self.kv.set(ANNOUNCE_PREFIX + embedder_slug(embedder), str(version).encode(), ANNOUNCE_TTL_S)
            self.kv.delete(FINGERPRINT_KEY)

    def _prune(self, embedder: str) -> None:
        """Keep the newest ``keep`` versions (and always the current one)."""
        current = self.current(embedder)
        old = [v for v in self.versions(embedder) if v != current][: -max(1, self.keep - 1)]
        for version in old:
            shutil.rmtree(self.folder(embedder) / version_folder(version), ignore_errors=True)
