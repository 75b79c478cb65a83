"""Typed configuration for every stage, validated in ``__post_init__``.

The resolved config is written to the cache / run folder and into every checkpoint, so a model can
be rebuilt and its preprocessing repeated exactly at predict time. A run's ``config.yaml`` is written
and read here (:func:`write_run_config`, :func:`read_run_config`): it carries a ``schema`` version
(files without one are schema 1) and older files are upgraded on read, like checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from .utils import upgrade_schema

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A dataclass (nested ones too) as plain builtins, safe for YAML/JSON and ``weights_only`` loads."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
    """Build ``cls`` from a dict, ignoring unknown keys (older/newer files), recursing into nested configs."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, f in hints.items():
        if name not in data:
            continue
        value = data[name]
        ftype = f.type if isinstance(f.type, type) else _NESTED.get(str(f.type))
        if ftype is not None and dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclass
class PreprocessConfig:
    """How a face clip is made from a video: shared by ``preprocess`` and ``predict``."""

    frames: int = 20  # frames sampled evenly across the whole video
    size: int = 112  # side of the square face crop, pixels
    margin: float = 0.3  # extra context around the detected face box (fraction of its side)
    # face detector by name: auto (mtcnn where its weights can be had, else dlib) | mtcnn | dlib | haar
    # | center
    detector: str = "auto"
    detect_max_side: int = 640  # frames are down-scaled to this longest side before detection
    upsample: int = 1  # dlib HOG up-sampling passes (finds small faces)
    max_decode_side: int = 1920  # cap on decoded resolution (larger videos are refused / scaled)
    max_duration_s: float = 3600.0  # cap on the seconds of video considered
    max_pixels: int = 4096 * 4096  # frames claiming more pixels than this are refused
    no_face: str = "center"  # when no face is found: center (crop the centre, status no_face) | skip
    timeout_s: float = 300.0  # wall-time limit per video (decode); 0 = none. Slower videos get status error
    smooth: int = 3  # median window (in sampled frames) for smoothing the face track; 1 = off
    align: bool = False  # turn each crop so the eyes are level (needs landmarks: detector mtcnn)
    mtcnn_weights: Optional[str] = None  # folder with MTCNN's pnet.pt/rnet.pt/onet.pt (None: torch hub cache)
    # where a torch face detector (mtcnn) runs: auto | cpu | cuda[:N], resolved by device.resolve_device.
    # A run-time setting like mtcnn_weights, not a clip setting: predict/serve set it to their --device.
    detector_device: str = "auto"
    # faces (tracks) kept per video, one clip each (the main face first); 1 = the main face only
    max_faces: int = 4
    # frame sampler by name: even (single frames evenly spaced) | snippets (frames // snippet_len runs of
    # snippet_len consecutive frames, evenly spaced: the LSTM sees local motion); snippet_len: even ignores it
    sampling: str = "even"
    snippet_len: int = 4

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if not 16 <= self.size <= 1024:
            raise ValueError("size must be between 16 and 1024 pixels")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError("margin must be between 0 and 2")
        if self.upsample < 0:
            raise ValueError("upsample must be >= 0")
        if self.no_face not in ("center", "skip"):
            raise ValueError("no_face must be 'center' or 'skip'")
        if self.detect_max_side < 64:
            raise ValueError("detect_max_side must be >= 64")
        if self.max_decode_side < 64:
            raise ValueError("max_decode_side must be >= 64")
        if self.max_duration_s <= 0 or self.max_pixels <= 0:
            raise ValueError("max_duration_s and max_pixels must be > 0")
        if self.timeout_s < 0:
            raise ValueError("timeout_s must be >= 0 (0 = no limit)")
        if self.smooth < 1:
            raise ValueError("smooth must be >= 1")
        if self.detector not in ("auto", "dlib", "haar", "center", "mtcnn"):
            raise ValueError("detector must be auto, dlib, haar, center or mtcnn")
        if self.align and self.detector not in ("mtcnn", "auto"):
            raise ValueError("align needs eye positions, which only the mtcnn detector finds")
        if not 1 <= self.max_faces <= 16:
            raise ValueError("max_faces must be between 1 and 16")
        if not isinstance(self.detector_device, str) or not self.detector_device.strip():
            raise ValueError("detector_device must be a device name: auto, cpu, cuda or cuda:N")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be {' or '.join(SAMPLINGS)}")
        if self.snippet_len < 1:
            raise ValueError("snippet_len must be >= 1")
        if self.sampling == "snippets" and self.frames % self.snippet_len:
            raise ValueError(f"frames ({self.frames}) must be a multiple of snippet_len ({self.snippet_len})")


#: ``PreprocessConfig.sampling`` names (the samplers themselves: ``data.video.SAMPLERS``)
SAMPLINGS = ("even", "snippets")


@dataclass
class SegmentConfig:
    """Scoring a long video window by window (``predict --segments``): the video's score is the highest
    window's, so a short manipulated stretch is not averaged away by the rest."""

    seconds: float = 10.0  # window width; wider when the video would need more than max_segments windows
    max_segments: int = 64  # bound on the work per video

    def __post_init__(self) -> None:
        if not 0.0 < float(self.seconds) <= 86400.0:
            raise ValueError("segment seconds must be > 0 (and at most a day)")
        if not 1 <= int(self.max_segments) <= 4096:
            raise ValueError("max segments must be between 1 and 4096")


#: what a preprocessing record (a cache's preprocess.json, a checkpoint's ``preprocess``) written before a
#: setting existed meant by its absence: the behaviour of the time, not today's default
PREPROCESS_BEFORE = {"max_faces": 1, "sampling": "even", "detector": "dlib"}


def preprocess_config_from_record(record: dict) -> PreprocessConfig:
    """The ``PreprocessConfig`` a stored record describes; keys it predates read as ``PREPROCESS_BEFORE``."""
    return from_dict(PreprocessConfig, {**PREPROCESS_BEFORE, **record})


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    name: str = "resnext_lstm"  # model registry name
    backbone: str = "resnext50_32x4d"  # backbone registry name
    pretrained: bool = True  # ImageNet weights through torchvision's weight enum
    weights_file: Optional[str] = None  # local backbone weights file (overrides pretrained download)
    hidden_size: int = 2048
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.4
    num_classes: int = 2
    freeze_backbone: bool = False
    # Feature differences + attention pooling by default: with H.264 augmentation (TrainConfig.augment) they
    # lift the temporal kind 0.89 -> 0.99 on clean video and hold the seed's head's AUC on CRF-40 re-encoded
    # video (docs/quality.md). The seed's head: temporal_diff=False, pooling="mean".
    temporal_diff: bool = True  # the LSTM also sees per-frame feature differences f[t] - f[t-1]
    pooling: str = "attention"  # how LSTM outputs over time are pooled: mean (the seed's) | attention

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "attention"):
            raise ValueError("pooling must be mean or attention")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.num_classes != 2:
            raise ValueError("only binary REAL/FAKE classification is supported (num_classes=2)")


def default_loader_workers() -> int:
    """DataLoader processes when not told: enough to feed a GPU (clip augmentation costs ~10-20 ms of
    CPU per clip), one core left for the main process, at least 2, at most 8."""
    return max(2, min(8, (os.cpu_count() or 2) - 1))


def default_batch_size(device_type: str) -> int:
    """Clips per batch for ``batch_size=0``: 16 keeps a GPU's tensor cores busy; 4 suits a CPU's memory."""
    return 16 if device_type == "cuda" else 4


@dataclass
class TrainConfig:
    """One training run; written to ``runs/NAME/config.yaml`` and into each checkpoint."""

    cache: str = ""
    name: str = ""
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 0  # clips per batch per process; 0 = auto: 16 on CUDA, 4 elsewhere (resolved by fit)
    # 1e-4, not the reference's 1e-5: on a held-out set of the demo's kinds 1e-4 gave 0.997 overall and 0.957
    # on order-only fakes against 0.957 / 0.852 (docs/quality.md); --lr 1e-5 is the reference's rate
    lr: float = 1e-4
    weight_decay: float = 1e-5
    optimizer: str = "adamw"  # adam | adamw
    scheduler: str = "cosine"  # cosine | step | none
    seq_len: int = 20
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"  # val_loss | val_auc | val_f1 | val_accuracy (ties: the lower val_loss)
    balance: str = "weighted_loss"  # weighted_loss | sampler | none
    grad_clip: float = 1.0
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping with an error
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + scaler)
    channels_last: bool = True  # on CUDA
    compile: bool = False
    workers: int = field(default_factory=lambda: default_loader_workers())
    device: str = "auto"
    resume: bool = False
    threshold_method: str = "eer"  # eer | f1 | fixed | fpr:X (the threshold at false-positive rate X)
    limit_train_batches: int = 0  # 0 = all (debugging and tests)
    # --- added by the train stage ---
    overwrite: bool = False  # replace an existing run folder of the same name
    stop_after: int = 0  # stop after this many epochs in this invocation (0 = no limit); --resume goes on
    include_no_face: bool = False  # also train on no_face (centre-crop) clips
    # which faces of a FAKE with several tracks (preprocess --max-faces) are positives when the cache does
    # not hold its original: largest (the main face) | all. With the original, the swapped face is chosen.
    fake_tracks: str = "largest"
    warmup_epochs: float = 1.0  # linear LR warm-up (cosine), capped at 20 % of all steps
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    step_epochs: int = 0  # step scheduler: decay every N epochs (0 = epochs // 3)
    step_gamma: float = 0.1  # step scheduler: decay factor
    pin_memory: bool = True  # pinned host memory for CUDA transfers
    feature_cache: bool = True  # with model.freeze_backbone: train the head on cached per-frame features
    tensorboard: bool = True  # TensorBoard event files in the run folder (tensorboard/)
    lr_backbone: Optional[float] = None  # learning rate of the backbone; None = lr (one rate for all)
    # training augmentations, comma-separated: base,h264,noise,cutout (or none). H.264 re-encoding by default:
    # without it the feature-difference head fails on heavily compressed video (docs/quality.md)
    augment: str = "base,h264"
    # with model.freeze_backbone + feature_cache: augmented feature views per training clip (0 = none: the
    # head sees the un-augmented features every epoch); each epoch reads one view per clip
    feature_views: int = 0
    # share of REAL training clips shown as order pseudo-fakes (a window of frames shuffled, labelled FAKE):
    # a prior for temporal manipulations training has no examples of (data/augment.py: shuffle_window)
    order_fakes: float = 0.0
    # horizon in epochs of the moving average of the weights that is validated and saved (0 = off: the
    # last step's weights); the per-step decay follows the epoch's steps (engine/ema.py)
    ema_epochs: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = from_dict(ModelConfig, self.model)
        if self.lr_backbone is not None and not self.lr_backbone > 0:
            raise ValueError("lr_backbone must be > 0 (leave it unset for the same rate as lr)")
        self.augment = ",".join(parse_augment(self.augment)) or "none"
        if not 0.0 <= self.order_fakes < 1.0:
            raise ValueError("order_fakes must be in [0, 1)")
        if self.feature_views < 0:
            raise ValueError("feature_views must be >= 0")
        if not (math.isfinite(self.ema_epochs) and self.ema_epochs >= 0):
            raise ValueError("ema_epochs must be >= 0 (0 = no weight average)")
        if self.feature_views and not (self.model.freeze_backbone and self.feature_cache):
            raise ValueError("feature_views needs a frozen backbone with the feature cache "
                             "(--freeze-backbone, without --no-feature-cache)")
        if self.feature_views and self.augment == "none":
            raise ValueError("feature_views needs augmentations to draw (--augment is none)")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 0:
            raise ValueError("batch_size must be >= 1 (or 0 for the device's default)")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.monitor not in ("val_loss", "val_auc", "val_f1", "val_accuracy"):
            raise ValueError("monitor must be val_loss, val_auc, val_f1 or val_accuracy")
        if self.balance not in ("weighted_loss", "sampler", "none"):
            raise ValueError("balance must be weighted_loss, sampler or none")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError("optimizer must be adam or adamw")
        if self.scheduler not in ("cosine", "step", "none"):
            raise ValueError("scheduler must be cosine, step or none")
        _check_threshold_method(self.threshold_method)
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.patience < 0 or self.stop_after < 0 or self.limit_train_batches < 0:
            raise ValueError("patience, stop_after and limit_train_batches must be >= 0")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.fake_tracks not in ("largest", "all"):
            raise ValueError("fake_tracks must be largest or all")
        if self.max_nonfinite < 1:
            raise ValueError("max_nonfinite must be >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        if self.warmup_epochs < 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 < self.step_gamma <= 1.0:
            raise ValueError("warmup_epochs >= 0, min_lr_ratio in [0, 1] and step_gamma in (0, 1] required")


#: training augmentations that can be switched on (``TrainConfig.augment``); ``base`` is today's set
AUGMENTS = ("base", "h264", "noise", "cutout")


def parse_augment(text: str) -> tuple[str, ...]:
    """``"base,noise"`` -> ``("base", "noise")`` in canonical order; ``"none"`` or ``""`` -> ``()``.

    Canonical order keeps one spelling per set, so config files and run comparisons agree."""
    names = {n.strip().lower() for n in str(text).split(",") if n.strip()} - {"none"}
    unknown = sorted(names - set(AUGMENTS))
    if unknown:
        raise ValueError(f"augment: unknown {', '.join(unknown)}; choose from {','.join(AUGMENTS)} or none")
    return tuple(a for a in AUGMENTS if a in names)


def _check_threshold_method(method: str) -> None:
    """``eer``, ``f1``, ``fixed`` or ``fpr:X`` with 0 < X < 1 (see ``metrics.choose_threshold``)."""
    text = str(method).strip().lower()
    if text in ("eer", "f1", "fixed"):
        return
    try:
        ok = text.startswith("fpr:") and 0.0 < float(text[4:]) < 1.0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"threshold_method must be eer, f1, fixed or fpr:X with 0 < X < 1 (e.g. fpr:0.01), "
                         f"got {method!r}")


_NESTED = {"ModelConfig": ModelConfig, "PreprocessConfig": PreprocessConfig}


# --------------------------------------------------------------------------------------------------
# A run's config.yaml: {"schema", "train", "model", "preprocess", "runtime"}
# --------------------------------------------------------------------------------------------------

#: version of config.yaml's layout. Extending it is one change here: bump this and add an upgrader to
#: _RUN_CONFIG_UPGRADERS that turns a file of the previous version into the new layout.
#: 2: ``train.tensorboard``
#: 3: ``train.fake_tracks``
#: 4: ``train.lr_backbone``, ``train.augment``, ``model.temporal_diff``, ``model.pooling``
#: 5: ``train.feature_views``, ``train.order_fakes``
#: 6: ``train.ema_epochs``
RUN_CONFIG_SCHEMA = 6


def _run_config_v1_to_v2(data: dict) -> dict:
    """Schema 1 had no ``tensorboard``: on, the default (it records a run, it does not change it)."""
    if isinstance(data.get("train"), dict):
        data["train"].setdefault("tensorboard", True)
    return data


#: schema N -> the function that turns a schema-N config.yaml dict into a schema-(N+1) one
def _run_config_v2_to_v3(data: dict) -> dict:
    """Schema 2 had no ``fake_tracks``: ``largest``, what training on one face per video amounted to."""
    if isinstance(data.get("train"), dict):
        data["train"].setdefault("fake_tracks", "largest")
    return data


def _run_config_v3_to_v4(data: dict) -> dict:
    """Schema 3 had one learning rate, the base augmentations and the seed's head: say so explicitly."""
    if isinstance(data.get("train"), dict):
        data["train"].setdefault("lr_backbone", None)
        data["train"].setdefault("augment", "base")
    if isinstance(data.get("model"), dict):
        data["model"].setdefault("temporal_diff", False)
        data["model"].setdefault("pooling", "mean")
    return data


def _run_config_v4_to_v5(data: dict) -> dict:
    """Schema 4 trained a frozen backbone's head on un-augmented features only, and had no pseudo-fakes."""
    if isinstance(data.get("train"), dict):
        data["train"].setdefault("feature_views", 0)
        data["train"].setdefault("order_fakes", 0.0)
    return data


def _run_config_v5_to_v6(data: dict) -> dict:
    """Schema 5 validated and saved the last step's weights: no weight average."""
    if isinstance(data.get("train"), dict):
        data["train"].setdefault("ema_epochs", 0.0)
    return data


_RUN_CONFIG_UPGRADERS: dict[int, Callable[[dict], dict]] = {
    1: _run_config_v1_to_v2, 2: _run_config_v2_to_v3, 3: _run_config_v3_to_v4, 4: _run_config_v4_to_v5,
    5: _run_config_v5_to_v6,
}
#: sections of config.yaml that only record what happened (not settings ``train --config`` takes)
RUN_CONFIG_RECORDS = ("preprocess", "runtime")


def upgrade_run_config(data: dict, path: Any = "config.yaml") -> dict:
    """A config.yaml dict of any known schema brought to :data:`RUN_CONFIG_SCHEMA` (in place)."""
    data = upgrade_schema(data, data.get("schema", 1), current=RUN_CONFIG_SCHEMA,
                          upgraders=_RUN_CONFIG_UPGRADERS, what="config", where=path)
    data["schema"] = RUN_CONFIG_SCHEMA
    return data


def write_run_config(path: str | os.PathLike, config: dict) -> None:
    """Write a run's config (``{"train", "model", "preprocess", "runtime"}`` builtins) as YAML, atomically,
    with the schema version first."""
    import yaml

    from .utils import atomic_write_text

    body = {k: v for k, v in config.items() if k != "schema"}
    atomic_write_text(path, yaml.safe_dump({"schema": RUN_CONFIG_SCHEMA, **body}, sort_keys=False))


def read_run_config_dict(path: str | os.PathLike) -> dict:
    """THE reader of a run's config file (YAML; JSON reads too), upgraded to the current schema.

    Raises ``OSError`` when it cannot be read and ``ValueError`` when it is not a config."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a run config (a mapping expected)")
    return upgrade_run_config(data, path)


def read_run_config(path: str | os.PathLike) -> TrainConfig:
    """The ``TrainConfig`` a run's config.yaml records (what :func:`write_run_config` was given)."""
    data = read_run_config_dict(path)
    train = dict(data.get("train") or {})
    if isinstance(data.get("model"), dict):
        train["model"] = data["model"]
    return from_dict(TrainConfig, train)
