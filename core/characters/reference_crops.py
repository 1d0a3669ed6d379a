"""Reference head crops in the shared folder: what the gallery was built from, kept so that a retrained
embedder can embed them again and a retraining job can learn from them.

``<shared>/references/<sha[:2]>/<sha>.png``, keyed by the sha256 of the picture the admin (or a user's approved
correction) gave; written atomically, never changed.
"""

from __future__ import annotations

import io

from PIL import Image

from core.storage.shared_store import SharedStore

REFERENCES_DIR = "references"


class ReferenceCrops:
    def __init__(self, shared: SharedStore) -> None:
        self.shared = shared

    def _relative(self, image_sha256: str) -> str:
        if len(image_sha256) != 64 or not all(c in "0123456789abcdef" for c in image_sha256):
            raise ValueError(f"not a sha256 hex digest: {image_sha256!r}")
        return f"{REFERENCES_DIR}/{image_sha256[:2]}/{image_sha256}.png"

    def put(self, image_sha256: str, crop: Image.Image) -> None:
        if self.exists(image_sha256):
            return
        buffer = io.BytesIO()
        crop.convert("RGB").save(buffer, format="PNG")
        self.shared.write(self._relative(image_sha256), buffer.getvalue())

    def exists(self, image_sha256: str) -> bool:
        return self.shared.path(self._relative(image_sha256)).is_file()

    def get(self, image_sha256: str) -> Image.Image:
        """The crop (RGB); ``FileNotFoundError`` when it was never stored (references enrolled before crops were
        kept)."""
        with Image.open(self.shared.path(self._relative(image_sha256))) as image:
            return image.convert("RGB")
