"""Models by name: ``build_model(ModelConfig)`` and the backbone registry.

Add a backbone with ``register_backbone(BackboneSpec(...))`` in ``backbones.py``; every command
(``train --backbone NAME``) picks it up from ``BACKBONES``.

When rebuilding a trained model from a checkpoint, call ``build_model(cfg, load_weights=False)``:
the checkpoint's state dict replaces every weight, so nothing should be downloaded or read.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from torch import nn

from ..checkpoint import Checkpoint
from ..config import ModelConfig
from ..errors import UserError
from .backbones import BACKBONES, BackboneSpec, get_backbone_spec, register_backbone
from .resnext_lstm import ResNeXtLSTM

log = logging.getLogger(__name__)

__all__ = [
    "build_model",
    "build_backbone",
    "BACKBONES",
    "BackboneSpec",
    "register_backbone",
    "get_backbone_spec",
    "ResNeXtLSTM",
    "MODELS",
    "model_from_checkpoint",
]

MODELS = ("resnext_lstm",)


def build_backbone(cfg: ModelConfig, load_weights: bool = True) -> tuple[nn.Module, int]:
    """The conv trunk named by ``cfg.backbone`` and its feature width, with weights per ``cfg``."""
    from .weights import build_pretrained_full, load_backbone_weights_file

    spec = get_backbone_spec(cfg.backbone)
    if load_weights and cfg.weights_file:
        trunk = spec.to_trunk(spec.make_full(None))
        load_backbone_weights_file(trunk, spec, cfg.weights_file)
    elif load_weights and cfg.pretrained:
        if spec.weights is None:
            log.info("backbone %s has no pretrained weights; starting from random weights", spec.name)
            trunk = spec.to_trunk(spec.make_full(None))
        else:
            trunk = spec.to_trunk(build_pretrained_full(spec))
    else:
        trunk = spec.to_trunk(spec.make_full(None))
    return trunk, spec.feature_dim


def build_model(cfg: ModelConfig, load_weights: bool = True) -> ResNeXtLSTM:
    """Build the network described by ``cfg``; ``load_weights=False`` skips pretrained/file weights."""
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model {cfg.name!r}; choose one of {', '.join(MODELS)}")
    trunk, dim = build_backbone(cfg, load_weights=load_weights)
    model = ResNeXtLSTM(
        trunk,
        dim,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        num_classes=cfg.num_classes,
        temporal_diff=cfg.temporal_diff,
        pooling=cfg.pooling,
    )
    if cfg.freeze_backbone:
        model.freeze_backbone = True
        model.backbone.eval()
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return model


def model_from_checkpoint(ckpt: Checkpoint, path: str | os.PathLike = "checkpoint") -> ResNeXtLSTM:
    """The trained network stored in ``ckpt``, rebuilt from its config (never downloads weights).

    Lives beside the registry rather than in ``checkpoint``: the checkpoint module sits below the models
    (backbone weight files are read through its safe loader), so it describes models but never builds one.
    """
    try:
        mcfg = dataclasses.replace(ckpt.model_config(), pretrained=False, weights_file=None)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: invalid model config in checkpoint: {exc}") from None
    try:
        model = build_model(mcfg, load_weights=False)
    except ValueError as exc:
        raise UserError(f"{path}: cannot rebuild the model: {exc}") from None
    state = ckpt.model
    for prefix in ("module.", "_orig_mod."):  # saved from a DDP / torch.compile wrapper
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
        raise UserError(f"{path}: weights do not fit the configured model: {detail[:400]}") from None
    return model
