"""Ablation options: backbone/head learning rates, extra augmentations, temporal diff and attention
pooling. The seed's behaviour stays selectable (tests/test_golden.py pins it with these options off);
here each option must change what it names, be recorded, and be rebuilt by predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepfake_detector.cli import build_parser
from deepfake_detector.commands.train import build_config
from deepfake_detector.config import (
    ModelConfig,
    TrainConfig,
    parse_augment,
    read_run_config,
    write_run_config,
)
from deepfake_detector.data.augment import cutout_face_part, gaussian_noise, h264_roundtrip
from deepfake_detector.data.cache import Cache
from deepfake_detector.data.dataset import _augment, train_clip
from deepfake_detector.engine.trainer import fit, param_groups
from deepfake_detector.inference import Detector
from deepfake_detector.models import build_model
from tests.cache_helpers import make_synthetic_cache

TINY = dict(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.2)


def _clip(seed: int = 0, t: int = 6, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, size, size, 3), dtype=np.uint8)


# --- config -----------------------------------------------------------------------------------------


def test_defaults_are_the_measured_recipe():
    """Feature differences + attention with H.264 augmentation: the study's winner (docs/quality.md);
    without the augmentation that head fails on heavily compressed video, so both change together."""
    t, m = TrainConfig(), ModelConfig()
    assert (t.lr_backbone, t.augment, m.temporal_diff, m.pooling) == (None, "base,h264", True, "attention")
    assert (t.feature_views, t.order_fakes) == (0, 0.0)


def test_augment_lists_are_canonical_and_checked():
    assert parse_augment("cutout, base,h264") == ("base", "h264", "cutout")
    assert TrainConfig(augment="noise,base").augment == "base,noise"
    assert TrainConfig(augment="none").augment == "none" and parse_augment("none") == ()
    with pytest.raises(ValueError, match="unknown blur2"):
        TrainConfig(augment="base,blur2")
    with pytest.raises(ValueError, match="lr_backbone"):
        TrainConfig(lr_backbone=0.0)
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(pooling="max")


def test_new_options_round_trip_through_config_yaml(tmp_path):
    cfg = TrainConfig(cache="c", name="r", lr_backbone=1e-6, augment="base,h264,cutout",
                      model=ModelConfig(temporal_diff=True, pooling="attention", **TINY))
    path = tmp_path / "config.yaml"
    write_run_config(path, {"train": {k: v for k, v in vars(cfg).items() if k != "model"},
                            "model": vars(cfg.model), "preprocess": {}, "runtime": {}})
    assert read_run_config(path) == cfg


def test_train_flags_reach_the_config():
    args = build_parser().parse_args(["train", "CACHE", "--name", "r", "--lr", "1e-4", "--lr-backbone",
                                      "1e-5", "--augment", "base,noise", "--temporal-diff", "--pooling",
                                      "attention", "--warmup-epochs", "3"])
    cfg, given = build_config(args)
    assert (cfg.lr, cfg.lr_backbone, cfg.augment, cfg.warmup_epochs) == (1e-4, 1e-5, "base,noise", 3.0)
    assert cfg.model.temporal_diff and cfg.model.pooling == "attention"
    assert {"lr_backbone", "augment", "temporal_diff", "pooling", "warmup_epochs"} <= given


# --- learning rates ---------------------------------------------------------------------------------


def test_one_group_by_default_and_a_slower_backbone_when_asked():
    model = build_model(ModelConfig(**TINY), load_weights=False)
    n_params = len(list(model.parameters()))
    assert [len(g["params"]) for g in param_groups(model, TrainConfig(lr=1e-3))] == [n_params]
    opt = torch.optim.AdamW(param_groups(model, TrainConfig(lr=1e-3, lr_backbone=1e-5)), lr=1e-3)
    head, trunk = opt.param_groups
    assert (head["lr"], trunk["lr"]) == (1e-3, 1e-5)
    assert {id(p) for p in trunk["params"]} == {id(p) for p in model.backbone.parameters()}
    assert len(head["params"]) + len(trunk["params"]) == n_params
    frozen = build_model(ModelConfig(freeze_backbone=True, **TINY), load_weights=False)
    groups = param_groups(frozen, TrainConfig(lr=1e-3, lr_backbone=1e-5))
    assert len(groups) == 1 and all(p.requires_grad for p in groups[0]["params"])


# --- augmentation -----------------------------------------------------------------------------------


def test_base_augment_is_todays_stream():
    clip = _clip()
    for seed in range(4):
        want = _augment(clip, np.random.default_rng(seed))
        assert np.array_equal(train_clip(clip, 6, np.random.default_rng(seed)), want)
    assert np.array_equal(train_clip(clip, 6, np.random.default_rng(0), "none"), clip)


def test_extra_augmentations_change_the_clip_the_same_way_on_every_frame_where_they_should():
    clip = np.repeat(_clip(t=1), 6, axis=0)  # a still clip: clip-consistent augmentations keep it still
    coded = h264_roundtrip(clip, 40)
    assert coded.shape == clip.shape and coded.dtype == np.uint8 and not np.array_equal(coded, clip)
    odd = h264_roundtrip(_clip(size=33)[:, :, :31], 30)
    assert odd.shape == (6, 33, 31, 3)
    cut = cutout_face_part(clip, "mouth", (0.0, 0.0))
    assert (cut[:, 22:25, 12:20] == 0).all() and np.array_equal(cut[:, :15], clip[:, :15])
    assert all(np.array_equal(cut[0], f) for f in cut)
    noisy = gaussian_noise(clip, 5.0, np.random.default_rng(0))
    assert 2.0 < np.abs(noisy.astype(float) - clip).mean() < 6.0
    # through the transform: a fixed seed gives the same clip; the extras make it differ from base
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    full = train_clip(clip, 6, rng(), "base,h264,noise,cutout")
    assert np.array_equal(full, train_clip(clip, 6, rng(), "base,h264,noise,cutout"))
    assert not np.array_equal(full, train_clip(clip, 6, rng(), "base"))


# --- model ------------------------------------------------------------------------------------------


def _lstm_params(inp: int, hidden: int) -> int:
    return 4 * hidden * (inp + hidden) + 8 * hidden


def test_temporal_diff_and_attention_shapes_and_parameter_counts():
    base = build_model(ModelConfig(temporal_diff=False, pooling="mean", **TINY), load_weights=False)
    f, h = base.feature_dim, 16
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    trunk = count(base.backbone)
    assert count(base) == trunk + _lstm_params(f, h) + (h * 2 + 2)
    diff = build_model(ModelConfig(temporal_diff=True, pooling="mean", **TINY), load_weights=False)
    assert count(diff) == trunk + _lstm_params(2 * f, h) + (h * 2 + 2)
    attn = build_model(ModelConfig(pooling="attention", temporal_diff=False, bidirectional=True, **TINY),
                       load_weights=False)
    assert count(attn) == trunk + 2 * _lstm_params(f, h) + (2 * h + 1) + (2 * h * 2 + 2)
    assert not any(k.startswith("attn") for k in base.state_dict())
    x = torch.randn(3, 5, 3, 32, 32)
    for model in (base, diff, attn):
        assert model.eval()(x).shape == (3, 2)
    # a still clip has zero differences: the diff half of the input carries the motion, nothing else
    feats = torch.randn(2, 1, f).repeat(1, 4, 1)
    diff.eval()
    moved = feats.clone()
    moved[:, 2] += 1.0
    assert not torch.allclose(diff.head(feats), diff.head(moved))


# --- a run records them and predict rebuilds the network --------------------------------------------


def test_a_run_with_the_options_is_recorded_and_rebuilt_by_predict(tmp_path):
    cache = make_synthetic_cache(tmp_path / "cache", n_real=6, n_fake=6, frames=4, size=24)
    cfg = TrainConfig(cache=str(cache), name="abl", runs_dir=str(tmp_path / "runs"), epochs=1, batch_size=4,
                      lr=3e-3, lr_backbone=3e-4, augment="base,noise,cutout", seq_len=4, workers=0,
                      device="cpu", tensorboard=False,
                      model=ModelConfig(temporal_diff=True, pooling="attention", **TINY))
    fit(cfg, progress=False)
    run = tmp_path / "runs" / "abl"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr_backbone"] == 3e-4 and saved["train"]["augment"] == "base,noise,cutout"
    assert saved["model"]["temporal_diff"] is True and saved["model"]["pooling"] == "attention"
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    head, trunk = last["optimizer"]["param_groups"]  # same schedule, rates 10:1
    assert head["initial_lr"] == 3e-3 and trunk["initial_lr"] == 3e-4
    det = Detector.from_checkpoint(run / "best.pt", device="cpu", workers=0)
    assert det.model.temporal_diff and det.model.attn is not None
    assert det.model.lstm.input_size == 2 * det.model.feature_dim


# --- augmented feature views (frozen backbone) ------------------------------------------------------


def test_feature_views_are_checked_and_flagged():
    frozen = ModelConfig(freeze_backbone=True, **TINY)
    with pytest.raises(ValueError, match="frozen backbone"):
        TrainConfig(feature_views=2)
    with pytest.raises(ValueError, match="frozen backbone"):
        TrainConfig(feature_views=2, feature_cache=False, model=frozen)
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(feature_views=2, augment="none", model=frozen)
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig(feature_views=-1, model=frozen)
    args = build_parser().parse_args(["train", "CACHE", "--name", "r", "--freeze-backbone",
                                      "--feature-views", "3", "--augment", "base,h264"])
    cfg, given = build_config(args)
    assert cfg.feature_views == 3 and "feature_views" in given


def test_frozen_training_reads_augmented_views_drawn_per_epoch(tmp_path):
    from deepfake_detector.engine.features import FeatureDataset, feature_key

    cache = make_synthetic_cache(tmp_path / "cache", n_real=6, n_fake=6, frames=4, size=24)
    model = ModelConfig(freeze_backbone=True, **TINY)
    cfg = TrainConfig(cache=str(cache), name="views", runs_dir=str(tmp_path / "runs"), epochs=2, batch_size=4,
                      lr=3e-3, augment="base,h264", feature_views=3, seq_len=4, workers=0, device="cpu",
                      tensorboard=False, model=model)
    fit(cfg, progress=False)
    plain = cache / "features" / feature_key(model, cfg.seed)[0]
    views = [cache / "features" / feature_key(model, cfg.seed, cfg.augment, v)[0] for v in (1, 2, 3)]
    assert len({plain, *views}) == 4 and all(d.is_dir() for d in views)
    n_plain = len(list(plain.glob("*.npy")))
    names = sorted(p.name for p in views[0].glob("*.npy"))
    assert 0 < len(names) < n_plain  # training clips only; validation reads the un-augmented features
    assert all(sorted(p.name for p in d.glob("*.npy")) == names for d in views)
    a, b = (np.load(d / names[0]) for d in views[:2])
    assert a.shape == np.load(plain / names[0]).shape and not np.array_equal(a, b)  # each view its own draw
    mtimes = [p.stat().st_mtime_ns for p in views[0].glob("*.npy")]
    fit(TrainConfig(**{**vars(cfg), "overwrite": True}), progress=False)  # a rerun reuses every view
    assert [p.stat().st_mtime_ns for p in views[0].glob("*.npy")] == mtimes
    saved = yaml.safe_load((tmp_path / "runs" / "views" / "config.yaml").read_text())
    assert saved["train"]["feature_views"] == 3
    # each epoch a clip reads one view, drawn from (seed, epoch, index): workers and resumes agree
    rows = [r for r in Cache(cache).rows() if (views[0] / (Path(r.clip).stem + ".npy")).is_file()]
    ds = FeatureDataset(views, rows, seq_len=4, seed=cfg.seed)
    seen = {tuple(ds[(0, epoch)][0].flatten()[:4].tolist()) for epoch in range(12)}
    assert len(seen) > 1 and torch.equal(ds[(0, 5)][0], ds[(0, 5)][0])


# --- order pseudo-fakes -----------------------------------------------------------------------------


def test_shuffle_window_breaks_the_order_of_one_window_and_keeps_the_frames():
    from deepfake_detector.data.augment import shuffle_window

    frames = np.arange(10)
    lengths = set()
    for seed in range(200):
        out = shuffle_window(frames, np.random.default_rng(seed))
        moved = np.flatnonzero(out != frames)
        assert sorted(out) == list(frames) and len(moved) >= 2  # a permutation, never the identity
        assert moved.max() - moved.min() + 1 <= 10
        lengths.add(int(moved.max() - moved.min() + 1))
    assert min(lengths) <= 3 and max(lengths) == 10  # from a local swap to the whole clip
    assert shuffle_window(np.arange(1), np.random.default_rng(0)) is None
    assert list(shuffle_window(np.arange(2), np.random.default_rng(0))) == [1, 0]


def test_order_fakes_turn_real_training_clips_into_fakes_and_nothing_else(tmp_path):
    from deepfake_detector.data.dataset import ClipDataset
    from deepfake_detector.engine.features import FeatureDataset

    cache = make_synthetic_cache(tmp_path / "cache", n_real=4, n_fake=4, frames=6, size=24)
    rows = Cache(cache).rows()
    plain = ClipDataset(cache, rows, 6, train=True, seed=1, raw=True, augment="none")
    fakes = ClipDataset(cache, rows, 6, train=True, seed=1, raw=True, augment="none", order_fakes=0.99)
    val = ClipDataset(cache, rows, 6, train=False, raw=True, order_fakes=0.99)
    for i, label in enumerate(plain.labels):
        (x0, y0), (x1, y1), (xv, yv) = plain[i], fakes[i], val[i]
        assert y0 == yv == label and torch.equal(x0, xv)
        if label == 0:  # REAL: same frames, another order, labelled FAKE
            assert y1 == 1 and not torch.equal(x1, x0)
            assert sorted(x1.flatten(1).sum(1).tolist()) == sorted(x0.flatten(1).sum(1).tolist())
        else:
            assert y1 == 1 and torch.equal(x1, x0)
    feats = tmp_path / "feats"
    feats.mkdir()
    for r in rows:
        np.save(feats / (Path(r.clip).stem + ".npy"), np.arange(24, dtype=np.float16).reshape(6, 4))
    ds = FeatureDataset(feats, rows, seq_len=6, seed=0, order_fakes=0.99)
    real = plain.labels.index(0)
    items = [ds[(real, epoch)] for epoch in range(5)]
    assert sum(y for _, y, _ in items) >= 4  # p = 0.99 per epoch
    assert all((y == 1) != torch.equal(x, torch.arange(24.0).reshape(6, 4)) for x, y, _ in items)
    with pytest.raises(ValueError, match="order_fakes"):
        TrainConfig(order_fakes=1.0)
    args = build_parser().parse_args(["train", "C", "--name", "r", "--order-fakes", "0.25"])
    cfg, given = build_config(args)
    assert cfg.order_fakes == 0.25 and "order_fakes" in given
