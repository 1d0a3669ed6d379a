"""Other head detectors to compare ours with in ``anibot eval detector --pictures``, loaded only when asked for.

A peer is a :class:`~core.vision.slots.base.HeadDetector` whose package may not be installed: each entry of
:data:`PEERS` names the module, the class (built without arguments) and a ``() -> bool`` saying whether its
package is there. The module is imported on use, so that nothing here needs the peer's package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from core.vision.slots.base import HeadDetector


@dataclass(frozen=True)
class PeerSpec:
    module: str
    factory: str  # a class or function of ``module`` building the detector without arguments
    available: str  # a ``() -> bool`` of ``module``
    install_hint: str


PEERS: dict[str, PeerSpec] = {
    "animeface": PeerSpec(
        module="core.vision.slots.animeface_detector",
        factory="AnimeFaceDetector",
        available="animeface_available",
        install_hint="pip install animeface==2.0.3",
    ),
}


@dataclass(frozen=True)
class LoadedPeer:
    name: str
    detector: HeadDetector | None
    reason: str = ""  # why ``detector`` is None

    @property
    def operating_confidence(self) -> float:
        """The peer's own threshold when it has one; otherwise every box it gives is kept."""
        return float(getattr(self.detector, "confidence", 0.0))


def load_peer(name: str) -> LoadedPeer:
    """The peer ``name`` built, or None with one line saying why it is not there; unknown names are errors."""
    try:
        spec = PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer detector {name!r} (known: {', '.join(sorted(PEERS))})") from None
    try:
        module = importlib.import_module(spec.module)
    except ImportError as error:
        return LoadedPeer(name, None, f"{spec.module} cannot be imported ({error})")
    if not getattr(module, spec.available)():
        return LoadedPeer(name, None, f"its package is not installed ({spec.install_hint})")
    try:
        detector = getattr(module, spec.factory)()
    except Exception as error:  # a peer that fails to start is skipped, not fatal to our own measurement
        return LoadedPeer(name, None, f"{spec.factory}() failed: {type(error).__name__}: {error}")
    return LoadedPeer(name, detector)
