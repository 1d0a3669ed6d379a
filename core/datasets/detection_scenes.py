"""Detection scenes: a picture and its head boxes, drawn (core.datasets.synth) or with real faces pasted in.

The starter detector trains on them, its retraining too, and the detector evaluation measures on them.
"""

from __future__ import annotations

import random

from PIL import Image

from core.datasets.real_faces import compose_scene
from core.datasets.synth import render_scene


def uses_real_faces(scene_seed: int, real_share: float) -> bool:
    """Whether the detection scene of ``scene_seed`` pastes real faces (when a face set is given)."""
    return random.Random(scene_seed * 31 + 7).random() < real_share


def render_detection_scene(
    scene_seed: int, faces: list[Image.Image] | None, real_share: float
) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    """One training or validation picture and its head boxes: a drawn scene, or (in ``real_share`` of the seeds,
    when ``faces`` are given) a scene with real faces pasted in (core.datasets.real_faces.compose_scene)."""
    if faces and uses_real_faces(scene_seed, real_share):
        composite = compose_scene(scene_seed, faces)
        return composite.image, composite.boxes
    scene = render_scene(scene_seed)
    return scene.image, [(h.box.x1, h.box.y1, h.box.x2, h.box.y2) for h in scene.heads]
