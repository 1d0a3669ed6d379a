"""Front-ends answering a chosen analysis, with no worker and no models: the result is put in the result cache
(as a worker leaves a finished one), so a posted picture of those bytes is answered from it at once, the way a
duplicate picture is. What the answer says then depends on the front-end and the chat settings alone."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.settings import Settings
from core.storage.result_cache import CachedAnalysis
from core.vision.intake import image_sha256
from core.vision.results import (
    SOURCE_BOTH,
    SOURCE_GALLERY,
    SOURCE_TAGGER,
    UNKNOWN,
    AnalysisResult,
    Box,
    Candidate,
    Head,
)
from tests.conftest import BOT_ADMINS, TEST_REDIS_URL

FINGERPRINT = "seeded-answers"


def picture(seed: int) -> bytes:
    """A small PNG of noise, different for every seed."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (48, 40), bytes(rng.randrange(256) for _ in range(48 * 40 * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def reply_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 120, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


# one head of each kind: named surely (91%, gallery and tagger agree), named with a low confidence (38%), unknown
SURE = Head(
    box=Box(0, 0, 20, 20),
    detection_score=0.9,
    candidates=(
        Candidate("Hatsune Miku", "Vocaloid", 0.91, 0.83, SOURCE_BOTH),
        Candidate("Kagamine Rin", "Vocaloid", 0.04, 0.31, SOURCE_GALLERY),
    ),
    name="Hatsune Miku",
    confidence=0.91,
    series="Vocaloid",
    source=SOURCE_BOTH,
)
LOW = Head(
    box=Box(24, 0, 44, 20),
    detection_score=0.8,
    candidates=(
        Candidate("Hoshino Ai", "Oshi no Ko", 0.38, 0.52, SOURCE_GALLERY),
        Candidate("Hoshino Ruby", "Oshi no Ko", 0.21, 0.47, SOURCE_TAGGER),
        Candidate("Arima Kana", "Oshi no Ko", 0.08, 0.40, SOURCE_GALLERY),
    ),
    name="Hoshino Ai",
    confidence=0.38,
    series="Oshi no Ko",
    source=SOURCE_GALLERY,
)
UNSEEN = Head(
    box=Box(0, 22, 20, 40),
    detection_score=0.7,
    candidates=(Candidate("Megurine Luka", "Vocaloid", 0.12, 0.20, SOURCE_GALLERY),),
    name=UNKNOWN,
    confidence=0.88,
)
GUESSED_NAMES = (
    "Hoshino Ai",
    "Hoshino Ruby",
    "Megurine Luka",
)  # never in the first answer at the default 50%


def result_of(data: bytes, *heads: Head) -> AnalysisResult:
    return AnalysisResult(
        image_sha256=image_sha256(data),
        width=48,
        height=40,
        heads=heads or (SURE, LOW, UNSEEN),
        tags=(),
        rating="general",
        caption="Three singers.",
        fingerprint=FINGERPRINT,
    )


@dataclass
class SeededStack:
    """Settings for a command layer over the test Redis (emptied by ``redis_kv``) and a fresh SQLite store."""

    root: Path

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "models_dir": self.root / "models",
            "data_dir": self.root,
            "database_url": f"sqlite:///{self.root / 'anibot.db'}",
            "redis_url": TEST_REDIS_URL,
            "admin_ids": BOT_ADMINS,
            "unavailable_after_s": 2.0,
            "job_wait_timeout_s": 10.0,
        }
        return Settings(**{**values, **overrides})  # type: ignore[arg-type]

    def layer(self, **overrides: object):  # type: ignore[no-untyped-def]
        from bot.layer import CommandLayer

        return CommandLayer.from_settings(self.settings(**overrides))

    def seed(self, data: bytes, result: AnalysisResult | None = None) -> AnalysisResult:
        """Make ``result`` (three heads by default) the finished analysis of the picture ``data``."""
        from workers.client import QueueClient

        result = result or result_of(data)
        settings = self.settings()
        client = QueueClient(settings)
        entry = CachedAnalysis(
            client.blobs.put(json.dumps(result.to_dict()).encode()), client.blobs.put(reply_jpeg())
        )
        client.cache.publish_fingerprint(FINGERPRINT)
        # the layer asks for the larger of the deployment's and the chat's top_n (chat default: 3)
        client.cache.put(result.image_sha256, FINGERPRINT, max(settings.top_n, 3), entry)
        return result
