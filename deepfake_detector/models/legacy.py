"""The network of the known public reference implementation ("legacy" checkpoints) and its weights.

Many people trained a ResNeXt-50 + LSTM with the widely copied reference code and have its
``torch.save(model.state_dict())`` files. Their layout and semantics differ from ours:

* keys ``model.*`` (the ResNeXt trunk as ``nn.Sequential(*children[:-2])``), ``lstm.weight_ih_l0``,
  ``lstm.weight_hh_l0`` (the LSTM was built as ``nn.LSTM(latent, hidden, layers, bidirectional)``
  whose 4th positional argument is ``bias``, so: no biases, never bidirectional) and ``linear1.*``;
* class index 1 = REAL (P(FAKE) = softmax[:, 0]); ours is 1 = FAKE;
* the LSTM has no ``batch_first``: with ``x`` of shape ``[B, T, F]`` it runs over dim 0. At inference
  the reference predicted one video at a time (B = 1), so every frame was a separate length-1
  sequence and the "LSTM" acted as a per-frame non-linearity;
* two readouts of that output: the reference's Predict notebook and web app score a video with
  ``linear1(x_lstm[:, -1, :])``, the LSTM output of the LAST frame only (``readout="last"``, what
  reproducing its predictions needs); its training notebook averaged over dim 1 (``readout="mean"``);
* frames were OpenCV's BGR arrays fed through ``ToPILImage`` as if RGB, then ImageNet-normalised,
  112x112 tight face crops, the FIRST N frames of the video (N = the sequence length trained with).
  That input side lives in ``data/reference.py``.

This module owns recognising the layout (:func:`is_legacy_state_dict`, :func:`inspect_legacy`,
:func:`legacy_frames_from_name`) and the two ways to run such a file:

``exact``  :class:`LegacyExactModel` runs the reference forward verbatim (per video, batch 1), so it
           reproduces the reference's numbers for the same input tensor; by default with the predict
           path's last-frame readout, the training notebook's mean readout on request.
``fixed``  :func:`map_legacy_state_dict` maps the weights onto our model (``backbone`` <- ``model``,
           LSTM weights with zero biases, fc rows swapped so index 1 = FAKE). Our LSTM then really
           runs over time, which the weights were never trained for: the numbers DIFFER from the
           reference. Useful as a starting point for fine-tuning, not to reproduce old results.

Loading the file is not done here: it is always ``checkpoint.load_torch_file`` (``weights_only=True``);
a file that needs arbitrary unpickling (for example a whole model object saved with ``torch.save(model)``)
is refused with :class:`~deepfake_detector.errors.UnsafeFileError`.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from . import build_backbone, build_model
from .backbones import BACKBONES
from .resnext_lstm import ResNeXtLSTM

log = logging.getLogger(__name__)

__all__ = [
    "LEGACY_MODES",
    "LEGACY_READOUTS",
    "REFERENCE_TRUNK",
    "LegacySpec",
    "LegacyExactModel",
    "unwrap_state_dict",
    "is_legacy_state_dict",
    "inspect_legacy",
    "legacy_frames_from_name",
    "reference_model_class",
    "build_reference_model",
    "build_exact_model",
    "legacy_model_config",
    "map_legacy_state_dict",
    "build_fixed_model",
]

LEGACY_MODES = ("fixed", "exact")
#: how exact mode reads the LSTM output: ``last`` = ``x_lstm[:, -1, :]`` (the reference's Predict
#: notebook and web app: what its users saw), ``mean`` = ``x_lstm.mean(dim=1)`` (its training notebook)
LEGACY_READOUTS = ("last", "mean")
REFERENCE_TRUNK = "resnext50_32x4d"


# --------------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------------


def unwrap_state_dict(obj: Any) -> Optional[dict]:
    """The tensor dict inside ``obj`` (plain, ``{"state_dict": ...}``, ``{"model_state_dict": ...}``),
    with a DataParallel ``module.`` prefix removed; None when ``obj`` holds no state dict."""
    if not isinstance(obj, dict):
        return None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) for k in obj):
        return None
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def is_legacy_state_dict(obj: Any) -> bool:
    """True when ``obj`` has the reference implementation's key layout."""
    sd = unwrap_state_dict(obj)
    if sd is None:
        return False
    return (
        "linear1.weight" in sd
        and "lstm.weight_ih_l0" in sd
        and "lstm.weight_hh_l0" in sd
        and any(k.startswith("model.") for k in sd)
    )


@dataclass
class LegacySpec:
    """Shape of a legacy network, read from its state dict."""

    trunk: str  # our backbone name whose key layout matches ``model.*`` (resnext50_32x4d normally)
    latent_dim: int
    hidden_dim: int
    num_layers: int
    has_bias: bool  # the reference has none; tolerated if present


def _trunk_state(sd: dict) -> OrderedDict:
    return OrderedDict((k[len("model."):], v) for k, v in sd.items() if k.startswith("model."))


def _reference_trunk(name: str) -> nn.Module:
    """The trunk as the reference built it: ``Sequential(*children[:-2])`` of a torchvision model."""
    import torchvision

    if name != REFERENCE_TRUNK:
        raise ValueError(name)
    net = torchvision.models.resnext50_32x4d(weights=None)
    return nn.Sequential(*list(net.children())[:-2])


def _our_backbone(name: str) -> nn.Module:
    cfg = ModelConfig(backbone=name, pretrained=False, weights_file=None)
    return build_backbone(cfg, load_weights=False)[0]


def _build_trunk(name: str) -> nn.Module:
    """An untrained trunk named ``name``: the reference's own for ResNeXt-50, else one of ours."""
    return _reference_trunk(name) if name == REFERENCE_TRUNK else _our_backbone(name)


def _layout_matches(trunk_sd: dict, module: nn.Module) -> bool:
    ref = module.state_dict()
    if len(ref) != len(trunk_sd):
        return False
    return all(tuple(a.shape) == tuple(b.shape) for a, b in zip(ref.values(), trunk_sd.values()))


def _candidate_trunks() -> list[str]:
    """The reference's trunk first, then every registered backbone (a file may carry one of ours)."""
    return [REFERENCE_TRUNK, *(n for n in BACKBONES if n != REFERENCE_TRUNK)]


def _identify_trunk(trunk_sd: dict) -> str:
    """The first candidate trunk whose tensors have exactly the shapes of ``trunk_sd``."""
    for name in _candidate_trunks():
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                module = _build_trunk(name)
        except Exception as exc:  # a backbone we cannot build here: try the next one
            log.debug("cannot build trunk %s: %s", name, exc)
            continue
        if _layout_matches(trunk_sd, module):
            return name
    raise UserError(
        f"legacy checkpoint: the model.* trunk ({len(trunk_sd)} tensors) matches no known backbone "
        f"(expected torchvision {REFERENCE_TRUNK} without avgpool/fc)"
    )


def inspect_legacy(obj: Any) -> LegacySpec:
    """Read the network shape of a legacy state dict; raises ``UserError`` when it is not one."""
    sd = unwrap_state_dict(obj)
    if sd is None or not is_legacy_state_dict(sd):
        raise UserError("not a reference-implementation state dict (needs model.*, lstm.*, linear1.* keys)")
    w_ih = sd["lstm.weight_ih_l0"]
    w_hh = sd["lstm.weight_hh_l0"]
    hidden = int(w_hh.shape[1])
    latent = int(w_ih.shape[1])
    layers = 0
    while f"lstm.weight_ih_l{layers}" in sd:
        layers += 1
    if any("_reverse" in k for k in sd):
        raise UserError("bidirectional legacy LSTMs are not supported (the reference never built one)")
    lin = sd["linear1.weight"]
    if tuple(lin.shape) != (2, hidden):
        raise UserError(f"legacy linear1.weight has shape {tuple(lin.shape)}, expected (2, {hidden})")
    trunk = _identify_trunk(_trunk_state(sd))
    return LegacySpec(trunk=trunk, latent_dim=latent, hidden_dim=hidden, num_layers=layers,
                      has_bias="lstm.bias_ih_l0" in sd)


def legacy_frames_from_name(path: str | os.PathLike) -> Optional[int]:
    """Sequence length encoded in reference file names such as ``model_97_acc_100_frames_FF_data.pt``.

    The reference saved no config, so the file name is the only record of how many frames it ran.
    """
    m = re.search(r"(\d+)[_-]?frames", Path(path).name, flags=re.IGNORECASE)
    if m:
        n = int(m.group(1))
        if 1 <= n <= 1000:
            return n
    return None


# --------------------------------------------------------------------------------------------------
# Exact reproduction
# --------------------------------------------------------------------------------------------------


def _check_readout(readout: str) -> str:
    if readout not in LEGACY_READOUTS:
        raise UserError(f"legacy readout must be one of {', '.join(LEGACY_READOUTS)}, got {readout!r}")
    return readout


def read_out(x_lstm: torch.Tensor, readout: str) -> torch.Tensor:
    """``[B, T, H]`` LSTM output -> ``[B, H]`` as the reference read it (see ``LEGACY_READOUTS``)."""
    return x_lstm[:, -1, :] if readout == "last" else torch.mean(x_lstm, dim=1)


class ReferenceModel(nn.Module):
    """The reference ``Model`` class, verbatim except that the trunk can be injected (tests) and the
    readout chosen: ``last`` is its predict-time class (the default), ``mean`` its training one."""

    def __init__(self, num_classes: int = 2, latent_dim: int = 2048, lstm_layers: int = 1,
                 hidden_dim: int = 2048, bidirectional: bool = False, trunk: Optional[nn.Module] = None,
                 lstm_bias: bool = False, readout: str = "last") -> None:
        super().__init__()
        self.readout = _check_readout(readout)
        self.model = trunk if trunk is not None else _reference_trunk(REFERENCE_TRUNK)
        # the reference passed ``bidirectional`` as the 4th positional argument, which is ``bias``
        self.lstm = nn.LSTM(latent_dim, hidden_dim, lstm_layers, lstm_bias)
        self.relu = nn.LeakyReLU()
        self.dp = nn.Dropout(0.4)
        self.linear1 = nn.Linear(hidden_dim, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.latent_dim = latent_dim

    def forward(self, x):
        batch_size, seq_length, c, h, w = x.shape
        x = x.view(batch_size * seq_length, c, h, w)
        fmap = self.model(x)
        x = self.avgpool(fmap)
        x = x.view(batch_size, seq_length, self.latent_dim)
        x_lstm, _ = self.lstm(x, None)
        return fmap, self.dp(self.linear1(read_out(x_lstm, self.readout)))


def reference_model_class() -> type[ReferenceModel]:
    """The reference ``Model`` class (tests and benchmarks build the reference through this)."""
    return ReferenceModel


def build_reference_model(spec: LegacySpec, readout: str = "last") -> ReferenceModel:
    """An untrained reference network with ``spec``'s shape (trunk built without downloading)."""
    return ReferenceModel(2, spec.latent_dim, spec.num_layers, spec.hidden_dim, False,
                          trunk=_build_trunk(spec.trunk), lstm_bias=spec.has_bias, readout=readout)


class LegacyExactModel(nn.Module):
    """Runs the reference forward verbatim, one video at a time, with OUR output convention.

    ``forward`` returns logits ordered ``[REAL, FAKE]`` (the reference's two outputs swapped),
    so softmax[:, 1] is bit-for-bit the reference's softmax[:, 0]. Exposes ``backbone``,
    ``pool``, ``frame_features`` and ``head`` like our models so explanations work the same. The
    readout is the wrapped reference's (``readout``: ``last`` or ``mean``).
    """

    def __init__(self, reference: nn.Module) -> None:
        super().__init__()
        self.reference = reference

    @property
    def backbone(self) -> nn.Module:
        return self.reference.model

    @property
    def pool(self) -> nn.Module:
        return self.reference.avgpool

    @property
    def readout(self) -> str:
        return self.reference.readout

    def reference_forward(self, x: torch.Tensor):
        """The untouched reference output ``(fmap, logits[FAKE, REAL])``."""
        return self.reference(x)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference.avgpool(self.reference.model(x)).flatten(1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        ref = self.reference
        outs = []
        for b in range(feats.shape[0]):  # batch 1 per video, as the reference's predict ran
            x_lstm, _ = ref.lstm(feats[b:b + 1], None)
            outs.append(ref.dp(ref.linear1(read_out(x_lstm, ref.readout))))
        return torch.cat(outs, 0)[:, [1, 0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.reference(x[b:b + 1])[1] for b in range(x.shape[0])]
        return torch.cat(outs, 0)[:, [1, 0]]


def _require_state_dict(state: Any) -> dict:
    sd = unwrap_state_dict(state)
    if sd is None:
        raise UserError("legacy checkpoint holds no state dict")
    return sd


def build_exact_model(state: dict, spec: Optional[LegacySpec] = None, readout: str = "last"
                      ) -> LegacyExactModel:
    """The reference network loaded with ``state`` and wrapped as :class:`LegacyExactModel`;
    ``readout`` ``last`` reproduces the reference's predictions, ``mean`` its training forward."""
    sd = _require_state_dict(state)
    spec = spec or inspect_legacy(sd)
    ref = build_reference_model(spec, _check_readout(readout))
    _load_strict(ref, sd, "legacy (exact)")
    model = LegacyExactModel(ref)
    model.eval()
    return model


def _load_strict(module: nn.Module, sd: dict, what: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise UserError(f"{what} checkpoint does not fit the network: {' '.join(lines)[:400]}") from None


# --------------------------------------------------------------------------------------------------
# Mapping onto our model ("fixed")
# --------------------------------------------------------------------------------------------------


def legacy_model_config(spec: LegacySpec) -> ModelConfig:
    """Our ModelConfig for a legacy network (weights come from the file: never downloaded)."""
    return ModelConfig(backbone=spec.trunk, pretrained=False, weights_file=None, hidden_size=spec.hidden_dim,
                       num_layers=spec.num_layers, bidirectional=False, dropout=0.4, num_classes=2,
                       temporal_diff=False, pooling="mean")  # the reference's head: features only, mean


def map_legacy_state_dict(state: dict, target_state: dict) -> OrderedDict:
    """Translate a legacy state dict into our model's key layout.

    ``target_state`` is our freshly built model's ``state_dict()`` (names and shapes to fill).
    The trunk is matched tensor-by-tensor in registration order with a shape check (both come
    from the same torchvision network, whatever the module names), LSTM biases are zero (the
    reference had none) and the fc rows are swapped so index 1 = FAKE.
    """
    sd = _require_state_dict(state)
    out: OrderedDict = OrderedDict()
    _map_trunk(sd, target_state, out)
    _map_lstm(sd, target_state, out)
    _map_head(sd, target_state, out)
    missing = [k for k in target_state if k not in out]
    if missing:
        # buffers such as BatchNorm's num_batches_tracked that the reference also had are mapped
        # above; anything else keeps our (untrained) value, which would be silently wrong
        raise UserError(f"legacy checkpoint cannot fill {len(missing)} of our tensors, e.g. {missing[:3]}")
    return out


def _map_trunk(sd: dict, target_state: dict, out: OrderedDict) -> None:
    """``backbone.*`` <- ``model.*``, in registration order, each shape checked."""
    ours_bb = [k for k in target_state if k.startswith("backbone.")]
    theirs_bb = list(_trunk_state(sd).items())
    if len(ours_bb) != len(theirs_bb):
        raise UserError(f"legacy trunk has {len(theirs_bb)} tensors, our backbone {len(ours_bb)}: "
                        "layouts differ")
    for key, (tkey, tensor) in zip(ours_bb, theirs_bb):
        if tuple(target_state[key].shape) != tuple(tensor.shape):
            raise UserError(f"legacy model.{tkey} {tuple(tensor.shape)} does not fit {key} "
                            f"{tuple(target_state[key].shape)}")
        out[key] = tensor.clone()


def _map_lstm(sd: dict, target_state: dict, out: OrderedDict) -> None:
    """``lstm.*`` by name; the biases the reference never had are zero."""
    for k, v in target_state.items():
        if not k.startswith("lstm."):
            continue
        src = sd.get(k)
        if src is not None:
            if tuple(src.shape) != tuple(v.shape):
                raise UserError(f"legacy {k} {tuple(src.shape)} does not fit ours {tuple(v.shape)}")
            out[k] = src.clone()
        elif ".bias" in k or k.startswith("lstm.bias"):
            out[k] = torch.zeros_like(v)
        else:
            raise UserError(f"legacy checkpoint lacks {k}")


def _map_head(sd: dict, target_state: dict, out: OrderedDict) -> None:
    """``fc`` <- ``linear1`` with the two rows swapped: the reference's index 1 was REAL, ours is FAKE."""
    fc_w = next((k for k in target_state if k.endswith("weight") and k.startswith("fc")), "fc.weight")
    fc_b = fc_w[: -len("weight")] + "bias"
    out[fc_w] = sd["linear1.weight"][[1, 0]].clone()
    if fc_b in target_state:
        out[fc_b] = sd["linear1.bias"][[1, 0]].clone() if "linear1.bias" in sd else torch.zeros(2)


def build_fixed_model(state: dict, spec: Optional[LegacySpec] = None) -> ResNeXtLSTM:
    """Our model (``build_model``) carrying the legacy weights; see the module docstring."""
    sd = _require_state_dict(state)
    spec = spec or inspect_legacy(sd)
    model = build_model(legacy_model_config(spec), load_weights=False)
    mapped = map_legacy_state_dict(sd, model.state_dict())
    _load_strict(model, mapped, "legacy (fixed)")
    model.eval()
    return model
