"""Reply-picture and Redis-footprint benchmark: what one analysis of a large photo sends and keeps.

    python scripts/bench_reply.py [--width 4000 --height 3000] [--redis-url redis://127.0.0.1:6379/12]

Prints the sizes of a photo-like picture (smooth shapes, texture and sensor noise, saved as a quality-92 JPEG), of
its annotated picture as a full-size PNG (what every reply used to carry) and as the reply-sized JPEG chats get now,
with the time each takes. With ``--redis-url`` (a scratch database: it is emptied) and installed models
(``ANIBOT_MODELS_DIR``), it also runs one analysis through the service on Redis and prints the bytes Redis holds
for it (``MEMORY USAGE`` of every key the analysis wrote), during the job and after it.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image, ImageFilter

from core.vision.annotate import annotate, encode_png, reply_picture
from core.vision.results import AnalysisResult, Box, Head


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(height // 64 + 1, width // 64 + 1, 3)).astype(np.uint8)
    base = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    texture = Image.fromarray(rng.integers(0, 255, size=(height // 4, width // 4, 3)).astype(np.uint8))
    texture = texture.resize((width, height), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    mixed = np.asarray(base, dtype=np.int16) * 3 // 4 + np.asarray(texture, dtype=np.int16) // 4
    noisy = mixed + rng.normal(0, 4, size=mixed.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - started) * 1000


def pictures(width: int, height: int) -> bytes:
    image = photo_like(width, height)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    posted = buffer.getvalue()
    heads = tuple(
        Head(
            Box(x, height * 0.2, x + width * 0.15, height * 0.45), 0.9, name=f"Character {i}", confidence=0.9
        )
        for i, x in enumerate(np.linspace(width * 0.05, width * 0.8, 4))
    )
    result = AnalysisResult("0" * 64, width, height, heads, (), None, None, "")
    png, png_ms = timed(lambda: encode_png(annotate(image, result)))
    reply, reply_ms = timed(lambda: reply_picture(image, result))
    with Image.open(io.BytesIO(reply)) as shown:
        size = shown.size
    mp = width * height / 1e6
    print(f"picture: {width}x{height} ({mp:.1f} MP), posted as JPEG q92: {len(posted) / 1e6:.2f} MB")
    print(f"before: full-size annotated PNG   {len(png) / 1e6:6.2f} MB  ({png_ms:.0f} ms to draw and encode)")
    print(
        f"after:  reply JPEG {size[0]}x{size[1]}  {len(reply) / 1e6:6.2f} MB  ({reply_ms:.0f} ms to draw and encode)"
    )
    return posted


def redis_footprint(posted: bytes, url: str) -> None:
    """One analysis through the service on Redis: the bytes each kind of blob takes (``MEMORY USAGE``)."""
    import json

    from core.analysis.service import AnalysisService
    from core.settings import get_settings
    from core.storage.jobs import BLOB_PREFIX
    from core.storage.kv import RedisKV
    from core.storage.store import Store

    settings = get_settings().model_copy(update={"redis_url": url, "blob_redis_url": ""})
    kv = RedisKV(url)
    kv.client.flushdb()
    store = Store.from_settings(settings)
    store.create_all()
    service = AnalysisService(settings, kv, store)
    image = service.blobs.put(posted)  # what a front-end stores before it enqueues
    outcome, ms = timed(lambda: service.analyze(posted, top_n=settings.top_n, store_full_size=True))

    def usage(digest: str | None) -> int:
        return int(kv.client.memory_usage(BLOB_PREFIX + digest, samples=0) or 0) if digest else 0

    posted_b, result_b = usage(image), usage(outcome.refs.result_blob)
    reply_b, png_b = usage(outcome.refs.annotated_blob), usage(outcome.annotated_png_blob)
    heads = len(json.loads(service.blobs.get(outcome.refs.result_blob))["heads"])
    print(f"analysis on Redis: {heads} heads, {ms / 1000:.1f} s; Redis bytes (MEMORY USAGE):")
    print(f"  posted picture {posted_b / 1e6:.2f} MB, result JSON {result_b / 1e3:.1f} KB, ")
    print(f"  full-size PNG {png_b / 1e6:.2f} MB, reply JPEG {reply_b / 1e6:.2f} MB")
    before = posted_b + result_b + png_b
    after = result_b + reply_b
    print(
        f"before: {before / 1e6:.2f} MB per analysis for {settings.blob_ttl_s // 3600} h (picture, PNG, JSON)"
    )
    print(
        f"after:  {after / 1e6:.2f} MB per analysis for {settings.blob_ttl_s // 3600} h (JSON, reply JPEG), plus "
        f"the picture's {posted_b / 1e6:.2f} MB for {settings.input_keep_s} s after the job"
    )
    kv.client.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument(
        "--redis-url", default="", help="a scratch Redis database (emptied) for the footprint"
    )
    args = parser.parse_args()
    posted = pictures(args.width, args.height)
    if args.redis_url:
        redis_footprint(posted, args.redis_url)


if __name__ == "__main__":
    main()
