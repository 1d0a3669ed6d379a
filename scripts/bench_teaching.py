"""Teaching benchmark: how long a new gallery version takes to build, switch and load as the gallery grows.

    python scripts/bench_teaching.py [--sizes 1000 10000 50000] [--dim 256] [--database-url URL]

For each size, a store holding that many references (random unit vectors, 5 per character) is built once; then
the figures printed are: the index build and publish (SQL snapshot, faiss index, manifest, atomic switch), the
load a worker does on its next job after the announcement (files checked against their sha256, faiss index read),
and one identification against the loaded gallery. Default store: a temporary SQLite file; pass a PostgreSQL URL
to measure that backend.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from core.characters.gallery import Calibration
from core.characters.gallery_versions import GalleryVersions
from core.storage.kv import MemoryKV
from core.storage.shared_store import SharedStore
from core.storage.store import Store

EMBEDDER = "bench-embedder@1"


def fill(store: Store, n: int, dim: int, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    for start in range(0, n, 5):
        cid = store.add_character(f"character {start // 5:06d}", "bench")
        for j in range(start, min(n, start + 5)):
            store.add_reference(cid, f"{j:064x}", EMBEDDER, vectors[j])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"gallery versions, dim {args.dim}; times in ms")
    print(f"{'references':>10} {'fill s':>8} {'publish':>9} {'load':>8} {'identify':>9} {'index MB':>9}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
            store = Store(url)
            store.create_all()
            started = time.perf_counter()
            fill(store, size, args.dim, rng)
            filled = time.perf_counter() - started
            versions = GalleryVersions(SharedStore(Path(tmp) / "shared"), MemoryKV())
            started = time.perf_counter()
            published = versions.publish(store, EMBEDDER)
            publish_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            gallery = versions.load(EMBEDDER, published.manifest.version)
            load_ms = (time.perf_counter() - started) * 1000
            query = rng.standard_normal((1, args.dim)).astype(np.float32)
            gallery.identify(query, top_n=5, threshold=0.5, calibration=Calibration())
            started = time.perf_counter()
            for _ in range(20):
                gallery.identify(query, top_n=5, threshold=0.5, calibration=Calibration())
            identify_ms = (time.perf_counter() - started) * 1000 / 20
            folder = versions.folder(EMBEDDER)
            size_mb = sum(p.stat().st_size for p in folder.rglob("index.faiss")) / 2**20
            print(
                f"{size:>10} {filled:>8.1f} {publish_ms:>9.0f} {load_ms:>8.0f} {identify_ms:>9.2f} {size_mb:>9.1f}"
            )
            if args.database_url:  # leave the caller's database as it was
                for start in range(0, size, 5):
                    store.delete_character(f"character {start // 5:06d}", "bench")
            store.dispose()


if __name__ == "__main__":
    main()
