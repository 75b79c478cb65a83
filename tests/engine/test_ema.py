"""The weight average (``train --ema-epochs``): what it averages, that validation and checkpoints see
it, and that a resumed run continues it exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepfake_detector.checkpoint import load_checkpoint
from deepfake_detector.cli import build_parser
from deepfake_detector.commands.train import build_config
from deepfake_detector.config import TrainConfig
from deepfake_detector.engine.ema import WeightAverage, decay_for
from deepfake_detector.engine.trainer import fit
from tests.cache_helpers import make_synthetic_cache
from tests.engine.test_training import assert_same_run, read_csv, tiny_cfg


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)  # frozen: not tracked
    return net


def test_decay_follows_the_horizon_in_epochs():
    assert decay_for(2, 50) == pytest.approx(1 - 1 / 100)
    assert decay_for(0.01, 10) == 0.0  # a horizon under one step: no averaging
    assert decay_for(3, 0) == pytest.approx(1 - 1 / 3)


def test_update_averages_trainable_weights_and_buffers_with_a_warmed_up_decay():
    net = _net()
    avg = WeightAverage(net, decay=0.9)
    assert "2.weight" not in avg.average and "1.running_mean" in avg.average and "0.weight" in avg.average
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].num_batches_tracked.fill_(7)
    avg.update(net)
    d = min(0.9, 2 / 11)  # first update: the warm-up keeps little of the start
    assert torch.allclose(avg.average["0.weight"], d * start + (1 - d) * (start + 1.0))
    assert int(avg.average["1.num_batches_tracked"]) == 7  # counters are copied, not averaged
    for _ in range(200):
        avg.update(net)
    assert torch.allclose(avg.average["0.weight"], start + 1.0, atol=1e-6)


def test_applied_puts_the_average_in_and_the_training_weights_back():
    net = _net()
    avg = WeightAverage(net, decay=0.5)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    avg.average["0.weight"].fill_(3.0)
    with avg.applied(net):
        assert torch.all(net[0].weight == 3.0)
        state = avg.training_state()
        assert torch.equal(state["training"]["0.weight"], trained["0.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, trained[k]), k
    with pytest.raises(RuntimeError):
        avg.training_state()
    # a resume: the checkpoint's model is the average, the state brings the training weights back
    other = _net()
    with torch.no_grad():
        other[0].weight.fill_(3.0)
    again = WeightAverage(other, decay=0.5)
    again.load(other, state)
    assert torch.all(again.average["0.weight"] == 3.0) and torch.equal(other[0].weight, trained["0.weight"])
    with pytest.raises(ValueError, match="lacks"):
        again.load(other, {"training": {}})


def test_the_flag_sets_the_horizon_and_the_config_refuses_a_negative_or_infinite_one(tmp_path):
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="ema_epochs"):
            TrainConfig(cache=str(tmp_path), ema_epochs=bad)
    cfg, given = build_config(build_parser().parse_args(["train", "C", "--name", "r", "--ema-epochs", "2.5"]))
    assert cfg.ema_epochs == 2.5 and "ema_epochs" in given
    assert TrainConfig().ema_epochs == 0.0  # off by default


def test_checkpoints_hold_the_average_and_a_resume_matches_an_uninterrupted_run(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=8, n_fake=8, kind="flicker")
    kw = dict(batch_size=4, patience=0, epochs=3, ema_epochs=1.0)
    straight = fit(tiny_cfg(cache, tmp_path / "runs", "a", **kw), progress=False)
    plain = fit(tiny_cfg(cache, tmp_path / "runs", "p", **{**kw, "ema_epochs": 0.0}), progress=False)
    last = load_checkpoint(tmp_path / "runs/a/last.pt")
    trained = last["ema"]["training"]
    n_train = sum(row["split"] == "train" for row in read_csv(tmp_path / "runs/a/splits.csv"))
    assert last["ema"]["updates"] == 3 * math.ceil(n_train / 4)  # one update per optimiser step
    assert any(not torch.equal(last["model"][k], trained[k]) for k in trained)  # model: the average
    assert read_csv(tmp_path / "runs/a/metrics.csv") != read_csv(tmp_path / "runs/p/metrics.csv")
    assert plain["model"] is not None and load_checkpoint(tmp_path / "runs/p/last.pt").get("ema") is None
    first = fit(tiny_cfg(cache, tmp_path / "runs", "b", stop_after=1, **kw), progress=False)
    assert first["interrupted"]
    fit(tiny_cfg(cache, tmp_path / "runs", "b", resume=True, **kw), progress=False)
    assert_same_run(tmp_path / "runs/a", tmp_path / "runs/b")
    assert straight["best_epoch"] >= 1
