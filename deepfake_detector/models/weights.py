"""Backbone weights: torchvision's ImageNet weights (``--pretrained``) or a local file (``--weights-file``).

Both paths fail with one ``WeightsUnavailableError`` line that says how to proceed (offline machine,
wrong file), never a traceback. Local files are read with ``torch.load(weights_only=True)``: a file
that would need arbitrary unpickling is refused (``UnsafeFileError``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_torch_file
from ..errors import WeightsUnavailableError
from .backbones import BackboneSpec

log = logging.getLogger(__name__)

__all__ = ["build_pretrained_full", "load_backbone_weights_file", "extract_state_dict"]


def build_pretrained_full(spec: BackboneSpec) -> nn.Module:
    """The full torchvision model with ImageNet weights (downloaded into the torch hub cache once)."""
    if spec.weights is None:
        raise WeightsUnavailableError(
            f"backbone {spec.name!r} has no pretrained weights; pass --no-pretrained"
        )
    weights = spec.weights()
    try:
        return spec.make_full(weights)
    except Exception as exc:  # URLError, OSError, hash mismatch: all mean "could not get the file"
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        fname = getattr(weights, "url", "").rsplit("/", 1)[-1] or "the weights file"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} could not be downloaded ({reason}). "
            f"Put {fname} in {hub}/, pass --weights-file PATH, or --no-pretrained"
        ) from exc


def extract_state_dict(obj: Any) -> dict:
    """Find the tensor dict inside what ``torch.load`` returned (plain state dict or a wrapper)."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner:
                return extract_state_dict(inner)
    raise ValueError("no state dict (a mapping of parameter names to tensors) found in the file")


def load_backbone_weights_file(trunk: nn.Module, spec: BackboneSpec, path: str) -> None:
    """Load a local backbone state dict into ``trunk``, strictly.

    Accepted layouts: a torchvision full-model state dict (``conv1.*``/``features.*`` keys; its
    ``fc.*``/``classifier.*`` head is dropped), a trunk state dict as saved from our backbone, or one
    of our checkpoints (its ``backbone.*`` keys). ``module.`` prefixes (DataParallel) are stripped.
    """
    obj = load_torch_file(path, "weights file", WeightsUnavailableError)
    try:
        sd = extract_state_dict(obj)
    except ValueError as exc:
        raise WeightsUnavailableError(f"{path}: {exc}") from exc
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):  # one of our own checkpoints
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    want = set(trunk.state_dict())
    mapped: dict[str, torch.Tensor] = {}
    dropped = []
    for k, v in sd.items():
        nk = spec.full_key_to_trunk(k)
        if nk is None:
            dropped.append(k)
        else:
            mapped[nk] = v
    # Use whichever reading of the keys matches the trunk better (already-trunk keys map to themselves
    # for most backbones, but e.g. ResNeXt trunk keys "0.weight" are left alone by the mapping).
    candidate = mapped if len(want & set(mapped)) >= len(want & set(sd)) else sd
    if dropped and candidate is mapped:
        log.info("%s: ignored %d classifier-head keys (%s...)", path, len(dropped), dropped[0])
    missing = sorted(want - set(candidate))
    unexpected = sorted(set(candidate) - want)
    if missing or unexpected:

        def _show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {_show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_show(unexpected)}")
        raise WeightsUnavailableError(
            f"{path} does not fit backbone {spec.name} ({'; '.join(parts)}). Is it a {spec.name} state dict?"
        )
    try:
        trunk.load_state_dict(candidate, strict=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line][:2]
        raise WeightsUnavailableError(
            f"{path} does not fit backbone {spec.name}: {'; '.join(first) or exc}"
        ) from exc
    log.info("loaded %s backbone weights from %s", spec.name, path)
