"""nagadomi's animeface-2009 face detector (PyPI ``animeface``) as an offline head detector, on any Pillow.

The package's C extension ``animeface._nvxs.detect(obj)`` reads ``obj`` as Pillow's internal ``ImagingObject``
(``PyObject_HEAD`` then an ``Imaging`` pointer) and reads the pointed ``ImagingMemoryInstance`` with the layout of
Pillow < 12. Pillow 12 changed that struct, so ``animeface.detect`` silently finds nothing there. The extension
reads only ``mode`` (offset 0), ``xsize`` (20), ``ysize`` (24), ``image8`` (40, rows of an ``L`` image) and
``image`` (56, rows of 4-byte ``RGBX`` pixels), as its disassembly shows. So we never hand it a Pillow object: we
hand it a ctypes Structure laid out like Pillow 10's struct, filled from a numpy RGBX buffer. A ctypes instance is
itself ``PyObject_HEAD`` followed by ``b_ptr``, the address of its own buffer, which is exactly where the
extension looks for the ``Imaging`` pointer. The original wrapper on Pillow 10.4 and this adapter on Pillow 13
return the same faces (see tests/test_animeface_detector.py and the parity numbers in the README).

Manifest format ``animeface`` (no files): ``thresholds["confidence"]`` is the minimum likelihood kept,
``extra["max_side"]`` the longest side a picture is shrunk to before detection (boxes are scaled back).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from core.settings import Settings
from core.vision.results import Box
from core.vision.slots.base import Detection, Manifest

REQUIREMENT = "animeface==2.0.3"
FORMAT = "animeface"
MODEL_NAME = "animeface"
DEFAULT_MAX_SIDE = 1024  # longer pictures are shrunk to this first (speed); boxes are scaled back
MIN_SIDE = 16  # smaller pictures are answered with no face without calling the extension
DEFAULT_CONFIDENCE = 0.5


class AnimeFaceMissing(RuntimeError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"the animeface detector needs its package: pip install {REQUIREMENT} ({reason})")


@dataclass(frozen=True)
class AnimeFace:
    """One face as animeface describes it (colours are RGB as sampled by the detector)."""

    box: Box
    likelihood: float
    hair_rgb: tuple[int, int, int]
    skin_rgb: tuple[int, int, int]


# --- the unsafe part: the struct the extension reads -----------------------------------------------------------

_Row = ctypes.POINTER(ctypes.c_uint8)


class _PillowTenImagingMemory(ctypes.Structure):
    """Pillow 10.x ``struct ImagingMemoryInstance`` (libImaging/Imaging.h), up to ``destroy``."""

    _fields_ = [
        ("mode", ctypes.c_char * 7),  # IMAGING_MODE_LENGTH
        ("type", ctypes.c_int),
        ("depth", ctypes.c_int),
        ("bands", ctypes.c_int),
        ("xsize", ctypes.c_int),
        ("ysize", ctypes.c_int),
        ("palette", ctypes.c_void_p),
        ("image8", ctypes.POINTER(_Row)),
        ("image32", ctypes.c_void_p),
        ("image", ctypes.POINTER(_Row)),
        ("block", ctypes.c_void_p),
        ("blocks", ctypes.c_void_p),
        ("pixelsize", ctypes.c_int),
        ("linesize", ctypes.c_int),
        ("destroy", ctypes.c_void_p),
    ]


IMAGING_TYPE_UINT8 = 0


def _call_nvxs(nvxs: ModuleType, rgb: np.ndarray) -> list[dict[str, Any]]:
    """``_nvxs.detect`` over an ``(h, w, 3)`` uint8 array; ``rows`` and ``pixels`` outlive the call."""
    height, width = rgb.shape[:2]
    pixels = np.zeros((height, width, 4), np.uint8)  # RGBX: the 4-byte pixels Pillow 10 keeps for "RGB"
    pixels[..., :3] = rgb
    base = pixels.ctypes.data
    stride = pixels.strides[0]
    rows = (_Row * height)(*(ctypes.cast(base + y * stride, _Row) for y in range(height)))
    memory = _PillowTenImagingMemory(
        mode=b"RGB",
        type=IMAGING_TYPE_UINT8,
        depth=8,
        bands=3,
        xsize=width,
        ysize=height,
        image=ctypes.cast(rows, ctypes.POINTER(_Row)),
        image32=ctypes.cast(rows, ctypes.c_void_p),
        pixelsize=4,
        linesize=width * 4,
    )
    # the ctypes object itself: its b_ptr (right after PyObject_HEAD) is where ImagingObject keeps `image`
    results = nvxs.detect(memory)
    del memory, rows, pixels
    return list(results)


# --- the package ---------------------------------------------------------------------------------------------


def _import_nvxs() -> ModuleType:
    try:
        import animeface
        from animeface import _nvxs
    except ImportError as error:
        raise AnimeFaceMissing(str(error)) from error
    if not str(getattr(_nvxs, "__file__", "")).endswith(".so"):  # the package's pure-Python stand-in raises
        raise AnimeFaceMissing(f"{animeface.__file__}: its C extension _nvxs is missing")
    return _nvxs


@functools.cache
def animeface_available() -> bool:
    """The package is importable and the adapter runs on a picture (checked once). That it finds faces is what
    tests/test_animeface_detector.py checks on drawn and real pictures (a drawn scene is not at hand here: the
    vision layer does not import the datasets)."""
    try:
        nvxs = _import_nvxs()
    except AnimeFaceMissing:
        return False
    try:
        return isinstance(_call_nvxs(nvxs, np.full((64, 64, 3), 200, np.uint8)), list)
    except Exception:
        return False


def _rgb(triple: Any) -> tuple[int, int, int]:
    r, g, b = triple
    return int(r), int(g), int(b)


class AnimeFaceDetector:
    """animeface-2009 faces as head detections, best first; ``detect`` is thread-safe (one call at a time)."""

    def __init__(
        self,
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        max_side: int = DEFAULT_MAX_SIDE,
        version: str | None = None,
    ) -> None:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be within [0, 1], got {confidence}")
        if max_side < MIN_SIDE:
            raise ValueError(f"max_side must be at least {MIN_SIDE}, got {max_side}")
        self._nvxs = _import_nvxs()
        self.confidence = confidence
        self.max_side = max_side
        self.version = version or f"{MODEL_NAME}@2.0.3-c{confidence:g}-s{max_side}"
        self._lock = threading.Lock()

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings) -> AnimeFaceDetector:
        from core.vision.slots.detector import effective_thresholds

        confidence, _ = effective_thresholds(manifest, settings)
        max_side = int(manifest.extra.get("max_side", DEFAULT_MAX_SIDE))
        version = manifest.version if confidence == manifest.thresholds.get("confidence") else None
        return cls(confidence=confidence, max_side=max_side, version=version)

    def faces(self, image: Image.Image) -> list[AnimeFace]:
        """Faces with their likelihood and hair/skin colours, best first, boxes in ``image``'s pixels."""
        rgb = image.convert("RGB")
        width, height = rgb.size
        if min(width, height) < MIN_SIDE:
            return []
        scale = min(1.0, self.max_side / max(width, height))
        if scale < 1.0:
            rgb = rgb.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
            )
            if min(rgb.size) < MIN_SIDE:
                return []
        sx, sy = width / rgb.size[0], height / rgb.size[1]
        with self._lock:
            found = _call_nvxs(self._nvxs, np.asarray(rgb))
        faces = []
        for result in found:
            likelihood = float(result["likelihood"])
            if likelihood < self.confidence:
                continue
            x, y, w, h = result["face_box"]
            box = Box(
                max(0.0, x * sx),
                max(0.0, y * sy),
                min(float(width), (x + w) * sx),
                min(float(height), (y + h) * sy),
            )
            faces.append(AnimeFace(box, likelihood, _rgb(result["hair_color"]), _rgb(result["skin_color"])))
        return sorted(faces, key=lambda f: f.likelihood, reverse=True)

    def detect(self, image: Image.Image) -> list[Detection]:
        return [Detection(face.box, face.likelihood, "face") for face in self.faces(image)]


def animeface_manifest(models_dir: Path) -> Manifest:
    """The manifest ``anibot models use-animeface`` installs (no files: the package is the model)."""
    return Manifest(
        slot="detector",
        name=MODEL_NAME,
        format=FORMAT,
        thresholds={"confidence": DEFAULT_CONFIDENCE},
        extra={"max_side": DEFAULT_MAX_SIDE},
        provenance=(
            f"nagadomi's AnimeFace 2009 (NYSL) in PyPI {REQUIREMENT} (Apache-2.0), "
            "installed by `anibot models use-animeface`"
        ),
        folder=models_dir / "detector" / MODEL_NAME,
    )


def install_animeface(models_dir: Path, *, activate: bool = False) -> Manifest:
    """Install the ``animeface`` detector manifest; the detector in use stays active unless ``activate``.

    A slot without an ``active.json`` entry uses its single installed model or the first by name, so adding this
    one could silently change the detector: the one in use before is written into ``active.json`` first.
    """
    from core.vision.slots.registry import ModelNotInstalled, active_manifest, read_active, set_active

    try:
        before = active_manifest(models_dir, "detector")
    except ModelNotInstalled:
        before = None
    manifest = animeface_manifest(models_dir)
    manifest.save()
    if activate:
        set_active(models_dir, "detector", manifest.name)
    elif before is not None and "detector" not in read_active(models_dir):
        set_active(models_dir, "detector", before.name)
    return Manifest.load(manifest.folder)
