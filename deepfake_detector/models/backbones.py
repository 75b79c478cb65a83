"""Per-frame CNN trunks by name: a small registry so another backbone is added in one place.

A backbone is a convolutional trunk mapping ``[N, 3, H, W]`` to a feature map ``[N, F, h, w]``; the
model pools it to ``F`` per frame. Each entry knows how to build the trunk, its feature width, the
torchvision ImageNet weight enum (if any) and how to map a full torchvision state dict onto the
trunk's keys, so ``--pretrained`` and ``--weights-file`` work the same way for every backbone.

The ResNeXt trunk is ``nn.Sequential(*children[:-2])`` exactly like the known reference, so its keys
(``0.weight``, ``4.0.conv1.weight``...) line up with the reference's ``model.*`` keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

__all__ = ["BackboneSpec", "BACKBONES", "register_backbone", "get_backbone_spec"]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    make_full: Callable[[Any], nn.Module]  # weights enum member (or None) -> full torchvision-style model
    to_trunk: Callable[[nn.Module], nn.Module]  # full model -> conv trunk
    full_key_to_trunk: Callable[[str], Optional[str]]  # full-model key -> trunk key (None: head, dropped)
    weights: Optional[Callable[[], Any]] = None  # -> torchvision weight enum member (ImageNet)
    description: str = ""


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (name must be new)."""
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec
    return spec


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}") from None


# --- ResNeXt-50 32x4d (the seed's backbone) --------------------------------------------------------

_RESNET_CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def _resnext_full(weights: Any) -> nn.Module:
    from torchvision.models import resnext50_32x4d

    return resnext50_32x4d(weights=weights)


def _resnet_trunk(full: nn.Module) -> nn.Module:
    return nn.Sequential(*list(full.children())[:-2])  # drop avgpool, fc


def _resnet_key(key: str) -> Optional[str]:
    head, _, rest = key.partition(".")
    if head in ("fc", "avgpool"):
        return None
    if head in _RESNET_CHILDREN:
        return f"{_RESNET_CHILDREN.index(head)}.{rest}"
    return key


def _resnext_weights() -> Any:
    from torchvision.models import ResNeXt50_32X4D_Weights

    return ResNeXt50_32X4D_Weights.IMAGENET1K_V1


register_backbone(
    BackboneSpec(
        name="resnext50_32x4d",
        feature_dim=2048,
        make_full=_resnext_full,
        to_trunk=_resnet_trunk,
        full_key_to_trunk=_resnet_key,
        weights=_resnext_weights,
        description="torchvision ResNeXt-50 32x4d without pool/fc (the seed's backbone), 2048-d",
    )
)


# --- MobileNetV2 (CPU / edge screening, ~14x fewer FLOPs) ------------------------------------------


def _mobilenet_full(weights: Any) -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=weights)


def _mobilenet_trunk(full: nn.Module) -> nn.Module:
    return full.features


def _mobilenet_key(key: str) -> Optional[str]:
    if key.startswith("classifier."):
        return None
    if key.startswith("features."):
        return key[len("features.") :]
    return key


def _mobilenet_weights() -> Any:
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.IMAGENET1K_V1


register_backbone(
    BackboneSpec(
        name="mobilenet_v2",
        feature_dim=1280,
        make_full=_mobilenet_full,
        to_trunk=_mobilenet_trunk,
        full_key_to_trunk=_mobilenet_key,
        weights=_mobilenet_weights,
        description="torchvision MobileNetV2 features, 1280-d",
    )
)


# --- tiny (tests and smoke runs) -------------------------------------------------------------------


class _TinyFull(nn.Module):
    """Three conv blocks (16-32-64 channels); ``head`` exists only so the full/trunk split is uniform."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )


def _tiny_full(weights: Any) -> nn.Module:
    return _TinyFull()


register_backbone(
    BackboneSpec(
        name="tiny",
        feature_dim=64,
        make_full=_tiny_full,
        to_trunk=lambda full: full.features,
        full_key_to_trunk=lambda k: re.sub(r"^features\.", "", k),
        weights=None,
        description="3 small conv layers, 64-d: tests and smoke runs only (no pretrained weights)",
    )
)
