"""``deepfake-detector train CACHE --name RUN``: train the CNN+LSTM detector on a face-clip cache."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys

HELP = "train the detector on a preprocessed face-clip cache (writes runs/NAME/)"
DESCRIPTION = (
    "Train the CNN-per-frame + LSTM detector on the cache made by 'preprocess'. Writes runs/NAME/ with "
    "config.yaml, metrics.csv, best.pt (with a temperature calibration fitted on validation), last.pt, "
    "val_predictions.csv, val_metrics.json, PNG plots, TensorBoard event files (tensorboard/) and "
    "MODEL_CARD.md. --config runs/X/config.yaml repeats run X's settings (flags given here override them). "
    "Multi-GPU / multi-node: "
    "torchrun --nproc-per-node N -m deepfake_detector train ... (DDP; NCCL on GPU, gloo on CPU). "
    "--resume continues runs/NAME/last.pt with its saved settings and cache (only --epochs, --workers, "
    "--device, --patience, --no-amp, --compile, --no-tensorboard and --stop-after may change; other flags "
    "are ignored with a warning)."
)


# dest -> (TrainConfig / ModelConfig field, which config)
_TRAIN_FIELDS = [
    "runs_dir",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "seq_len",
    "patience",
    "min_delta",
    "monitor",
    "balance",
    "seed",
    "workers",
    "device",
    "resume",
    "overwrite",
    "val_fraction",
    "optimizer",
    "scheduler",
    "grad_clip",
    "threshold_method",
    "include_no_face",
    "fake_tracks",
    "stop_after",
    "max_nonfinite",
    "limit_train_batches",
    "compile",
    "amp",
    "feature_cache",
    "tensorboard",
    "lr_backbone",
    "augment",
    "feature_views",
    "order_fakes",
    "ema_epochs",
    "warmup_epochs",
]
_MODEL_FIELDS = [
    "backbone",
    "pretrained",
    "weights_file",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "dropout",
    "freeze_backbone",
    "temporal_diff",
    "pooling",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import ModelConfig, TrainConfig

    t, m = TrainConfig(), ModelConfig()
    p.add_argument("cache", nargs="?", default=None,
                   help="face-clip cache folder (made by 'preprocess'; with --config: default the file's)")
    p.add_argument("--name", default=None,
                   help="run name: results go to RUNS_DIR/NAME (required unless --config names one)")
    p.add_argument("--config", default=None, metavar="CONFIG_YAML",
                   help="start from a run's config.yaml (e.g. runs/X/config.yaml) to reproduce it; flags "
                        "given here override its values; unknown keys in it are an error")
    p.add_argument("--runs-dir", default=None, help=f"folder of runs (default {t.runs_dir})")
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default=None,
        help=f"CNN backbone: resnext50_32x4d | mobilenet_v2 | tiny (default {m.backbone})",
    )
    g.add_argument(
        "--pretrained",
        dest="pretrained",
        action="store_true",
        default=None,
        help="start from torchvision's ImageNet weights (default; downloaded once); backbones without "
        "them (tiny) start from random weights and record pretrained: false",
    )
    g.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="start from random weights"
    )
    g.add_argument(
        "--weights-file",
        default=None,
        help="local backbone weights (.pth state dict); used instead of --pretrained",
    )
    g.add_argument(
        "--hidden-size", type=int, default=None, help=f"LSTM hidden size (default {m.hidden_size})"
    )
    g.add_argument(
        "--lstm-layers",
        dest="num_layers",
        type=int,
        default=None,
        help=f"LSTM layers (default {m.num_layers})",
    )
    g.add_argument("--bidirectional", action="store_true", default=None, help="bidirectional LSTM")
    g.add_argument("--temporal-diff", action=argparse.BooleanOptionalAction, default=None,
                   help="feed the LSTM per-frame feature differences f[t]-f[t-1] beside the features "
                        f"(default {'on' if m.temporal_diff else 'off'}; --no-temporal-diff --pooling mean: "
                        "the seed's design)")
    g.add_argument("--pooling", choices=["mean", "attention"], default=None,
                   help=f"how the LSTM outputs over time are pooled (default {m.pooling})")
    g.add_argument(
        "--dropout", type=float, default=None, help=f"dropout before the classifier (default {m.dropout})"
    )
    g.add_argument(
        "--freeze-backbone",
        action="store_true",
        default=None,
        help="train only the LSTM and classifier (backbone weights fixed); per-frame features are computed "
        "once and cached in CACHE/features/ (fast epochs; augmentation via --feature-views)",
    )
    g.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_false",
        default=None,
        help="with --freeze-backbone: run the frozen backbone on augmented clips every epoch instead",
    )
    g.add_argument(
        "--feature-views", type=int, default=None, metavar="V",
        help="with --freeze-backbone: also cache V augmented views of each training clip's features "
        "(--augment's set, drawn once per view); each epoch reads one view per clip (default 0: none)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=None, help=f"maximum epochs (default {t.epochs})")
    g.add_argument(
        "--batch-size", type=int, default=None,
        help="clips per batch per process, >= 1 (default 16 on CUDA, else 4)",
    )
    g.add_argument("--lr", type=float, default=None, help=f"learning rate (default {t.lr})")
    g.add_argument("--lr-backbone", type=float, default=None,
                   help="learning rate of the CNN backbone; the LSTM and classifier use --lr (default: --lr)")
    g.add_argument("--augment", default=None, metavar="LIST",
                   help="training augmentations, comma-separated: base (flip, affine, colour, blur, JPEG), "
                        f"h264 (re-encoding at random CRF), noise, cutout (face parts), or none "
                        f"(default {t.augment})")
    g.add_argument("--order-fakes", type=float, default=None, metavar="P",
                   help="show this share of REAL training clips with a window of frames shuffled, labelled "
                        "FAKE: a prior for temporal manipulations the training set lacks "
                        f"(default {t.order_fakes})")
    g.add_argument("--ema-epochs", type=float, default=None, metavar="E",
                   help="validate and save a moving average of the weights over about E epochs, 0 = the "
                        f"last step's weights (default {t.ema_epochs})")
    g.add_argument(
        "--weight-decay", type=float, default=None, help=f"weight decay (default {t.weight_decay})"
    )
    g.add_argument(
        "--optimizer", choices=["adamw", "adam"], default=None, help=f"optimizer (default {t.optimizer})"
    )
    g.add_argument(
        "--scheduler",
        choices=["cosine", "step", "none"],
        default=None,
        help=f"LR schedule; cosine has a warm-up (default {t.scheduler})",
    )
    g.add_argument("--warmup-epochs", type=float, default=None, metavar="E",
                   help="cosine: epochs of linear LR warm-up, at most 20%% of all steps "
                        f"(default {t.warmup_epochs})")
    g.add_argument(
        "--grad-clip", type=float, default=None, help=f"max gradient norm, 0 = off (default {t.grad_clip})"
    )
    g.add_argument(
        "--seq-len", type=int, default=None, help=f"frames per clip fed to the model (default {t.seq_len})"
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"validation share when the dataset gives no split (default {t.val_fraction})",
    )
    g.add_argument(
        "--balance",
        choices=["weighted_loss", "sampler", "none"],
        default=None,
        help=f"class-imbalance handling (default {t.balance})",
    )
    g.add_argument(
        "--include-no-face",
        action="store_true",
        default=None,
        help="also train on no_face (centre-crop) clips",
    )
    g.add_argument(
        "--fake-tracks",
        choices=["largest", "all"],
        default=None,
        help="a cache made with --max-faces: which faces of a FAKE whose original the cache lacks are "
        "positives (with the original, the face that differs from it is chosen; every face of a REAL "
        f"is a negative) (default {t.fake_tracks})",
    )
    g.add_argument("--seed", type=int, default=None, help=f"random seed (default {t.seed})")
    g = p.add_argument_group("early stopping and threshold")
    g.add_argument(
        "--monitor",
        choices=["val_loss", "val_auc", "val_f1", "val_accuracy"],
        default=None,
        help=f"metric for early stopping and best.pt; ties go to the lower val_loss (default {t.monitor})",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=None,
        help=f"epochs without improvement, 0 = off (default {t.patience})",
    )
    g.add_argument(
        "--min-delta",
        type=float,
        default=None,
        help=f"smallest improvement that counts (default {t.min_delta})",
    )
    g.add_argument(
        "--threshold-method",
        default=None,
        metavar="eer|f1|fixed|fpr:X",
        help="how the decision threshold is chosen on validation: equal error rate, best F1, 0.5, or the "
        "threshold at false-positive rate X on the REAL videos, e.g. fpr:0.01 "
        f"(default {t.threshold_method})",
    )
    g = p.add_argument_group("hardware and run control")
    g.add_argument(
        "--workers", type=int, default=None,
        help=f"DataLoader worker processes, kept for the whole run (default here {t.workers}: CPUs - 1, 2..8)"
    )
    g.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    g.add_argument(
        "--no-amp", dest="amp", action="store_false", default=None, help="disable mixed precision on CUDA"
    )
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="write no TensorBoard event files (default: RUNS_DIR/NAME/tensorboard/)")
    g.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue RUNS_DIR/NAME/last.pt with its saved settings and the same CACHE",
    )
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run folder")
    g.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after N epochs in this invocation (time-sliced clusters; continue with --resume)",
    )
    g.add_argument(
        "--max-nonfinite",
        type=int,
        default=None,
        help=f"non-finite batches in a row before stopping (default {t.max_nonfinite})",
    )
    g.add_argument("--limit-train-batches", type=int, default=None, help=argparse.SUPPRESS)


def build_config(args: argparse.Namespace):
    """TrainConfig from the parsed flags (unset flags keep defaults, or ``--config``'s values); also the
    set of flags given."""
    from ..config import ModelConfig, TrainConfig
    from ..errors import UserError

    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        # 0 means "the device's default" inside TrainConfig; on the command line that is leaving it out
        raise UserError("--batch-size must be >= 1 (leave it out for the default: 16 on CUDA, 4 on CPU)")
    given = {k for k in _TRAIN_FIELDS + _MODEL_FIELDS if getattr(args, k, None) is not None}
    base_train, base_model = _config_file(args.config) if getattr(args, "config", None) else ({}, {})
    model_kwargs = {**base_model, **{k: getattr(args, k) for k in _MODEL_FIELDS if k in given}}
    train_kwargs = {**base_train, **{k: getattr(args, k) for k in _TRAIN_FIELDS if k in given}}
    train_kwargs["cache"] = args.cache if args.cache is not None else train_kwargs.get("cache", "")
    train_kwargs["name"] = args.name if args.name is not None else train_kwargs.get("name", "")
    for what, flag in (("cache", "CACHE"), ("name", "--name")):
        if not train_kwargs[what]:
            raise UserError(f"train needs {flag} (or a --config file that names it)")
    try:
        model_cfg = ModelConfig(**model_kwargs)
        cfg = TrainConfig(model=model_cfg, **train_kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{args.config}: {exc}" if getattr(args, "config", None) else str(exc)) from exc
    return cfg, given


# settings of one invocation, never taken from a --config file (a resumed run's file says resume: true)
_NOT_FROM_FILE = ("resume", "overwrite", "stop_after")


def _config_file(path: str) -> tuple[dict, dict]:
    """``(train settings, model settings)`` of a run's config.yaml for ``--config``; a missing or unreadable
    file, or a key this version does not know, is one ``UserError`` line."""
    import dataclasses

    from ..config import RUN_CONFIG_RECORDS, ModelConfig, TrainConfig, read_run_config_dict
    from ..errors import UserError

    try:
        data = read_run_config_dict(path)
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UserError(f"--config {exc}") from exc
    train = data.get("train") or {}
    model = data.get("model") or (train.get("model") if isinstance(train, dict) else None) or {}
    if not isinstance(train, dict) or not isinstance(model, dict):
        raise UserError(f"--config {path}: 'train' and 'model' must be mappings")
    known = {"": {"schema", "train", "model", *RUN_CONFIG_RECORDS},
             "train.": {f.name for f in dataclasses.fields(TrainConfig)},
             "model.": {f.name for f in dataclasses.fields(ModelConfig)}}
    unknown = [_unknown(prefix, k, known[prefix]) for prefix, section in (("", data), ("train.", train),
                                                                           ("model.", model))
               for k in section if k not in known[prefix]]
    if unknown:
        raise UserError(f"--config {path}: unknown key(s) {', '.join(unknown)} (not a setting of this "
                        "version of deepfake-detector; remove or correct them)")
    train = {k: v for k, v in train.items() if k not in ("model", *_NOT_FROM_FILE)}
    return train, dict(model)


def _unknown(prefix: str, key: object, known: set) -> str:
    """``train.lr_rate (did you mean train.lr?)``."""
    import difflib

    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else "")


def _resume_command(cfg) -> str:
    """The command line that continues ``cfg``'s run."""
    from ..config import TrainConfig

    words = ["deepfake-detector", "train", str(cfg.cache), "--name", str(cfg.name)]
    if str(cfg.runs_dir) != TrainConfig().runs_dir:
        words += ["--runs-dir", str(cfg.runs_dir)]
    return " ".join(shlex.quote(w) for w in [*words, "--resume"])


def run(args: argparse.Namespace) -> int:
    from ..engine.trainer import fit

    # one line per epoch even when stderr is a log file (Slurm, nohup), where tqdm bars are hidden; the run
    # folder's notes (best.pt repaired after a kill) alike
    for name in ("deepfake_detector.engine.trainer", "deepfake_detector.engine.run"):
        engine_log = logging.getLogger(name)
        if engine_log.getEffectiveLevel() > logging.INFO:
            engine_log.setLevel(logging.INFO)
    cfg, given = build_config(args)
    try:
        summary = fit(cfg, resume_overrides=given, progress=True)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") != "0":  # only rank 0 reports under torchrun
            return 130
        from pathlib import Path

        if (Path(cfg.runs_dir) / cfg.name / "last.pt").is_file():
            print(f"interrupted; continue with: {_resume_command(cfg)}", file=sys.stderr)
        else:
            print(
                "interrupted before the first epoch was saved; nothing to resume: rerun the same command "
                "with --overwrite",
                file=sys.stderr,
            )
        return 130
    if summary.get("rank", 0) != 0:  # only rank 0 reports under torchrun
        return 0
    if summary.get("interrupted"):
        print(
            f"stopped after {summary['epochs_run']} epoch(s) as asked; continue with: "
            f"{_resume_command(summary.get('config') or cfg)}"
        )
        return 0
    _print_summary(summary, summary.get("config") or cfg)
    return 0


def _print_summary(summary: dict, cfg) -> None:
    """The best epoch, its threshold (and the rule), the calibration, the metrics and where things are."""
    from pathlib import Path

    from ..metrics import format_metrics_table

    run_dir = summary["run_dir"]
    best = summary.get("best")
    best_txt = f"{best:.4f}" if isinstance(best, float) and not math.isnan(best) else str(best)
    print(f"run folder: {run_dir}")
    method = cfg.threshold_method
    print(
        f"best epoch {summary['best_epoch']} ({summary['monitor']} = {best_txt}), "
        f"threshold {summary.get('threshold', 0.5):.4f} ({method} on validation, uncalibrated score)"
        + (" (early stop)" if summary["stopped_early"] else "")
    )
    cal = summary.get("calibration")
    if cal:
        print(f"calibration: temperature {cal['temperature']:.4g} fitted on validation (ECE "
              f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}); threshold on calibrated scores "
              f"{cal['threshold']:.4f}")
    else:
        why = summary.get("calibration_note") or "not fitted"
        print(f"calibration: none ({why}); scores are uncalibrated (fit one later on your own videos: "
              "deepfake-detector calibrate CHECKPOINT CACHE)")
    if summary.get("val_metrics"):
        print(format_metrics_table(summary["val_metrics"], "validation (best epoch):"))
    if summary.get("test_metrics"):
        print(format_metrics_table(summary["test_metrics"], "test split:"))
    test = " test_metrics.json" if summary.get("test_metrics") else ""
    print(f"checkpoint: {run_dir}/best.pt   metrics: val_metrics.json{test}   plots: loss.png accuracy.png "
          "confusion_matrix.png roc.png pr.png scores.png calibration.png")
    if (Path(run_dir) / "tensorboard").is_dir():
        print(f"TensorBoard: tensorboard --logdir {run_dir}")
