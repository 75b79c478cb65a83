"""Training engine: acceptance on a synthetic cache, exact resume, early stopping, non-finite batches,
checkpoint safety and the samplers."""

from __future__ import annotations

import csv
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from deepfake_detector.checkpoint import load_checkpoint
from deepfake_detector.config import ModelConfig, TrainConfig
from deepfake_detector.engine.distributed import BalancedDistributedSampler, ShardSampler
from deepfake_detector.engine.early_stopping import EarlyStoppingWithCheckpoint
from deepfake_detector.engine.loop import NonFiniteTracker, evaluate, train_epoch
from deepfake_detector.engine.rng import get_rng_state, set_rng_state
from deepfake_detector.engine.run import METRICS_COLUMNS
from deepfake_detector.engine.trainer import fit
from deepfake_detector.errors import UnsafeFileError, UserError
from tests.cache_helpers import RUN_FILES, make_synthetic_cache
from tests.helpers import MkdirPayload


def tiny_cfg(cache, runs, name="run", **kw) -> TrainConfig:
    model = ModelConfig(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.2)
    base = dict(
        cache=str(cache),
        name=name,
        runs_dir=str(runs),
        model=model,
        epochs=3,
        batch_size=8,
        lr=3e-3,
        seq_len=6,
        workers=0,
        patience=5,
        device="cpu",  # exact resume is a CPU promise (CUDA kernels may be non-deterministic)
    )
    base.update(kw)
    return TrainConfig(**base)


def assert_same_run(a, b) -> None:
    """Two run folders with the same metrics (but the clock) and bit-identical checkpoints."""
    rows_a, rows_b = read_csv(a / "metrics.csv"), read_csv(b / "metrics.csv")
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    for name in ("last.pt", "best.pt"):
        ca, cb = load_checkpoint(a / name), load_checkpoint(b / name)
        for k in ca["model"]:
            assert torch.equal(ca["model"][k], cb["model"][k]), (name, k)
        assert ca["threshold"] == cb["threshold"]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def square_cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("cache") / "c", n_real=16, n_fake=16, kind="square")


def test_acceptance_tiny_model_learns_the_synthetic_fakes(square_cache, tmp_path):
    torch.set_num_threads(1)
    summary = fit(tiny_cfg(square_cache, tmp_path, epochs=5, monitor="val_loss"), progress=False)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= RUN_FILES
    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == METRICS_COLUMNS and len(rows) == summary["epochs_run"]
    best = max(float(r["val_auc"]) for r in rows)
    assert best >= 0.95, rows
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])  # it learned, not luck of the init
    ck = load_checkpoint(run / "best.pt")
    assert set(ck) >= {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "config",
        "metrics",
        "threshold",
        "version",
        "rng",
    }
    assert 0.0 <= ck["threshold"] <= 1.0
    assert set(ck["config"]) == {"train", "model", "preprocess", "runtime"}
    runtime = ck["config"]["runtime"]  # what "auto" became: the train section keeps what was asked
    assert runtime["device"] == "cpu" and runtime["amp"] == "off" and runtime["world_size"] == 1
    assert runtime["channels_last"] is False and ck["config"]["train"]["device"] == "cpu"
    assert ck["config"]["model"]["backbone"] == "tiny" and ck["config"]["preprocess"]["size"] == 24
    assert ck["epoch"] == summary["best_epoch"]
    # the returned model holds the best weights
    for k, v in summary["model"].state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    preds = read_csv(run / "val_predictions.csv")
    assert list(preds[0]) == ["path", "label", "p_fake", "predicted"]
    last = load_checkpoint(run / "last.pt")
    assert last["optimizer"] and last["scheduler"] and last["rng"] and last["early_stopping"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=8, n_fake=8, kind="flicker")
    kw = dict(batch_size=4, patience=0, balance="sampler", monitor="val_auc")
    straight = fit(tiny_cfg(cache, tmp_path / "runs", "a", **kw), progress=False)
    first = fit(tiny_cfg(cache, tmp_path / "runs", "b", stop_after=1, **kw), progress=False)
    assert first["interrupted"] and first["epochs_run"] == 1
    resumed = fit(tiny_cfg(cache, tmp_path / "runs", "b", resume=True, **kw), progress=False)
    assert resumed["epochs_run"] == 2
    assert len(read_csv(tmp_path / "runs/a/metrics.csv")) == 3
    assert_same_run(tmp_path / "runs/a", tmp_path / "runs/b")
    for k, v in straight["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k])


def test_persistent_loader_workers_see_each_epoch_exactly_like_no_workers(tmp_path):
    """The workers live for the whole run; the epoch reaches them with each index, so every epoch's
    augmentation (and hence the weights) equals a run that loads in the main process."""
    cache = make_synthetic_cache(tmp_path / "c", n_real=6, n_fake=6, kind="flicker")
    kw = dict(batch_size=4, patience=0, epochs=3, monitor="val_loss")
    inline = fit(tiny_cfg(cache, tmp_path / "runs", "w0", workers=0, **kw), progress=False)
    pooled = fit(tiny_cfg(cache, tmp_path / "runs", "w2", workers=2, **kw), progress=False)
    a, b = read_csv(tmp_path / "runs/w0/metrics.csv"), read_csv(tmp_path / "runs/w2/metrics.csv")
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    for k, v in inline["model"].state_dict().items():
        assert torch.equal(v, pooled["model"].state_dict()[k]), k


def test_train_config_defaults_resolve_per_device(tmp_path):
    from deepfake_detector.config import default_batch_size

    cfg = TrainConfig(cache="c", name="n")
    assert cfg.batch_size == 0 and 2 <= cfg.workers <= 8  # auto until fit() resolves it
    assert default_batch_size("cuda") == 16 and default_batch_size("cpu") == 4
    cache = make_synthetic_cache(tmp_path / "c", n_real=4, n_fake=4)
    fit(tiny_cfg(cache, tmp_path / "runs", "auto", batch_size=0, epochs=1), progress=False)
    saved = load_checkpoint(tmp_path / "runs/auto/last.pt")["config"]["train"]
    assert saved["batch_size"] == 4  # the resolved value is what the run records


def test_run_folder_is_never_overwritten_silently(square_cache, tmp_path):
    cfg = tiny_cfg(square_cache, tmp_path, epochs=1)
    fit(cfg, progress=False)
    with pytest.raises(UserError, match="already exists"):
        fit(cfg, progress=False)
    fit(tiny_cfg(square_cache, tmp_path, epochs=1, overwrite=True), progress=False)
    with pytest.raises(UserError, match="cannot resume"):
        fit(tiny_cfg(square_cache, tmp_path, name="other", resume=True), progress=False)
    with pytest.raises(UserError, match="invalid run name"):
        fit(tiny_cfg(square_cache, tmp_path, name="../escape"), progress=False)


def test_missing_cache_and_one_class_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="manifest"):
        fit(tiny_cfg(tmp_path / "nothing", tmp_path / "runs", "x"), progress=False)
    cache = make_synthetic_cache(tmp_path / "c", n_real=6, n_fake=0)
    with pytest.raises(UserError, match="only REAL"):
        fit(tiny_cfg(cache, tmp_path / "runs", "y"), progress=False)


# --- early stopping -----------------------------------------------------------------------------


def test_early_stopping_min_mode_saves_best_and_restores_it(tmp_path):
    model = nn.Linear(2, 2)
    stopper = EarlyStoppingWithCheckpoint(tmp_path / "best.pt", "val_loss", patience=2, min_delta=0.01)
    values = [1.0, 0.8, 0.795, 0.9, 0.7]
    saved_weights = {}
    for epoch, v in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        improved = stopper.step(v, epoch, model, lambda e=epoch: {"model": model.state_dict(), "epoch": e})
        if improved:
            saved_weights[epoch] = model.weight.clone()
        if stopper.should_stop:
            break
    assert list(saved_weights) == [1, 2]  # 0.795 is within min_delta: no improvement
    assert epoch == 4 and stopper.best_epoch == 2 and stopper.best == pytest.approx(0.8)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert stopper.restore_best(model)
    assert torch.equal(model.weight, saved_weights[2])
    # after a "resume" the weights come from best.pt
    fresh = EarlyStoppingWithCheckpoint(tmp_path / "best.pt", "val_loss", patience=2)
    fresh.load_state_dict(stopper.state_dict())
    other = nn.Linear(2, 2)
    assert fresh.restore_best(other) and torch.equal(other.weight, saved_weights[2])
    assert fresh.counter == stopper.counter and fresh.best == stopper.best


def test_early_stopping_max_mode_and_nan(tmp_path):
    model = nn.Linear(1, 1)
    stopper = EarlyStoppingWithCheckpoint(tmp_path / "b.pt", "val_auc", patience=1, write=False)
    assert not stopper.step(float("nan"), 1, model, dict)
    assert stopper.step(0.7, 2, model, dict)
    assert not stopper.step(0.6, 3, model, dict) and stopper.should_stop
    assert not (tmp_path / "b.pt").exists()  # write=False (non-zero DDP ranks)
    with pytest.raises(ValueError):
        EarlyStoppingWithCheckpoint(tmp_path / "x.pt", "val_magic")


def test_early_stopping_breaks_ties_of_a_coarse_metric_by_validation_loss(tmp_path):
    """A validation AUC of a few dozen videos sits at 1.0 for many epochs: the lowest loss among them wins."""
    model = nn.Linear(1, 1)
    stopper = EarlyStoppingWithCheckpoint(tmp_path / "b.pt", "val_auc", patience=2, write=False)
    assert stopper.step(1.0, 1, model, dict, tie=0.40)
    assert stopper.step(1.0, 2, model, dict, tie=0.30)  # equal AUC, lower loss: the new best
    assert not stopper.step(1.0, 3, model, dict, tie=0.35)  # equal AUC, higher loss
    assert not stopper.step(1.0, 4, model, dict)  # no loss to compare: not better
    assert stopper.should_stop and stopper.best_epoch == 2 and stopper.best_tie == pytest.approx(0.30)
    resumed = EarlyStoppingWithCheckpoint(tmp_path / "b.pt", "val_auc", patience=2, write=False)
    resumed.load_state_dict(stopper.state_dict())
    assert not resumed.step(1.0, 5, model, dict, tie=0.31) and resumed.step(1.0, 6, model, dict, tie=0.29)
    assert not resumed.step(0.99, 7, model, dict, tie=0.01)  # a lower AUC never wins on its loss
    loss = EarlyStoppingWithCheckpoint(tmp_path / "b.pt", "val_loss", patience=2, write=False)
    assert loss.step(0.5, 1, model, dict, tie=0.9) and not loss.step(0.5, 2, model, dict, tie=0.1)


# --- non-finite batches -------------------------------------------------------------------------


class _Clips(torch.utils.data.Dataset):
    def __init__(self, bad: set) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        x = torch.randn(2, 3, 8, 8)
        if i in self.bad:
            x[0, 0, 0, 0] = float("nan")
        return x, i % 2, i


def _tiny_model():
    torch.manual_seed(0)
    from deepfake_detector.models import build_model

    return build_model(ModelConfig(backbone="tiny", pretrained=False, hidden_size=4))


def test_nonfinite_inputs_are_skipped_with_video_ids(caplog):
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(_Clips({2}), batch_size=2)
    paths = [f"video{i}.mp4" for i in range(6)]
    with caplog.at_level(logging.WARNING):
        out = train_epoch(
            model,
            loader,
            opt,
            nn.CrossEntropyLoss(),
            torch.device("cpu"),
            paths=paths,
            tracker=NonFiniteTracker(2),
            progress=False,
        )
    assert out["skipped"] == 1 and out["n"] == 4
    assert "video2.mp4" in caplog.text and "video3.mp4" in caplog.text
    for k, v in model.state_dict().items():  # parameters and BatchNorm statistics stay finite
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


def test_too_many_nonfinite_batches_in_a_row_stop_with_a_clear_error():
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(_Clips({0, 2, 4}), batch_size=2)
    with pytest.raises(UserError, match="3 batches in a row"):
        train_epoch(
            model,
            loader,
            opt,
            nn.CrossEntropyLoss(),
            torch.device("cpu"),
            tracker=NonFiniteTracker(3),
            progress=False,
        )


def test_nonfinite_loss_and_gradients_are_skipped():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(_Clips(set()), batch_size=2)

    def inf_loss(logits, y):
        return logits.sum() * float("inf")

    out = train_epoch(
        model, loader, opt, inf_loss, torch.device("cpu"), tracker=NonFiniteTracker(10), progress=False
    )
    assert out["skipped"] == 3 and out["n"] == 0
    model.load_state_dict(before)

    def nan_grad_loss(logits, y):  # finite loss, NaN gradient (sqrt at 0 of a negative slope)
        return nn.functional.cross_entropy(logits, y) + torch.sqrt(logits.sum() * 0.0 - 0.0)

    out = train_epoch(
        model, loader, opt, nan_grad_loss, torch.device("cpu"), tracker=NonFiniteTracker(10), progress=False
    )
    assert out["skipped"] == 3
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


class _RawClips(torch.utils.data.Dataset):
    """uint8 [T,H,W,3] clips, as ClipDataset(raw=True) gives them."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, 256, (2, 8, 8, 3), generator=g, dtype=torch.uint8), i % 2, i


def test_raw_uint8_batches_train_and_evaluate_like_their_float_form():
    from deepfake_detector.data.dataset import clips_to_device

    raw_loader = list(torch.utils.data.DataLoader(_RawClips(), batch_size=3))  # lists: no RNG draws
    float_loader = [(clips_to_device(x, "cpu"), y, i) for x, y, i in raw_loader]
    states = []
    for loader in (raw_loader, float_loader):
        model = _tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = train_epoch(model, loader, opt, nn.CrossEntropyLoss(), torch.device("cpu"), progress=False)
        assert out["n"] == 6 and out["skipped"] == 0
        ev = evaluate(model, loader, torch.device("cpu"), progress=False)
        states.append((model.state_dict(), ev["p_fake"]))
    for k, v in states[0][0].items():
        torch.testing.assert_close(v, states[1][0][k], rtol=0, atol=0)
    np.testing.assert_array_equal(states[0][1], states[1][1])


def test_nonfinite_loss_with_a_grad_scaler_is_skipped_and_training_goes_on():
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    loader = torch.utils.data.DataLoader(_Clips(set()), batch_size=2)
    calls = {"n": 0}

    def sometimes_nan(logits, y):  # the 2nd batch's loss is NaN; the others are fine
        calls["n"] += 1
        loss = nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] == 2 else loss

    tracker = NonFiniteTracker(10)
    out = train_epoch(model, loader, opt, sometimes_nan, torch.device("cpu"), scaler=scaler,
                      tracker=tracker, progress=False)
    assert out["skipped"] == 1 and out["n"] == 4 and tracker.total == 1
    assert scaler.get_scale() < 2.0**8  # the skipped step closed the scaler's iteration
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


def test_evaluate_returns_predictions_in_dataset_order():
    model = _tiny_model()
    loader = torch.utils.data.DataLoader(_Clips(set()), batch_size=4, sampler=ShardSampler(6))
    out = evaluate(model, loader, torch.device("cpu"), progress=False)
    assert out["index"].tolist() == list(range(6)) and out["n"] == 6
    assert ((out["p_fake"] >= 0) & (out["p_fake"] <= 1)).all() and np.isfinite(out["loss"])


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_with_code_execution_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": MkdirPayload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(MkdirPayload(str(marker))))
    with pytest.raises(UserError):
        load_checkpoint(raw)
    assert not marker.exists()
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    a = (np.random.rand(), torch.rand(1).item(), __import__("random").random())
    set_rng_state(loaded)
    b = (np.random.rand(), torch.rand(1).item(), __import__("random").random())
    assert a == b


# --- samplers -----------------------------------------------------------------------------------


def test_balanced_sampler_balances_and_is_seeded_per_epoch():
    labels = [1] * 90 + [0] * 10
    counts = np.bincount(labels)
    weights = [1.0 / counts[y] for y in labels]
    s = BalancedDistributedSampler(range(100), weights=weights, seed=3)
    s.set_epoch(0)
    draws = [labels[i] for e in range(5) for i in (s.set_epoch(e) or list(s))]
    assert 0.4 < np.mean(draws) < 0.6
    s.set_epoch(1)
    one = list(s)
    s.set_epoch(1)
    assert list(s) == one
    s.set_epoch(2)
    assert list(s) != one
    ranks = [BalancedDistributedSampler(range(7), num_replicas=2, rank=r, seed=0) for r in range(2)]
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 4 and set(parts[0]) | set(parts[1]) == set(range(7))


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(7, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert [len(ShardSampler(7, 3, r)) for r in range(3)] == [3, 2, 2]


# --- frozen backbone: feature cache -------------------------------------------------------------


def test_freeze_backbone_trains_the_head_on_cached_features(square_cache, tmp_path):
    from deepfake_detector.data.cache import load_manifest
    from deepfake_detector.engine.evaluate import evaluate_rows

    model = ModelConfig(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.2, freeze_backbone=True)
    cfg = tiny_cfg(square_cache, tmp_path, "frozen", model=model, epochs=2, lr=1e-2)
    summary = fit(cfg, progress=False)
    feat_dirs = list((square_cache / "features").iterdir())
    assert len(feat_dirs) == 1 and (feat_dirs[0] / "info.json").is_file()
    files = sorted(feat_dirs[0].glob("*.npy"))
    assert len(files) == len(load_manifest(square_cache))  # train + val clips, once each
    assert np.load(files[0]).shape == (6, 64)
    mtimes = [f.stat().st_mtime_ns for f in files]
    best = load_checkpoint(tmp_path / "frozen" / "best.pt")
    # the p_fake computed from cached features equals the full model's on the clips (float16 features)
    preds = {r["path"]: float(r["p_fake"]) for r in read_csv(tmp_path / "frozen" / "val_predictions.csv")}
    rows = [r for r in load_manifest(square_cache) if r.path in preds]
    ev = evaluate_rows(summary["model"], str(square_cache), rows, 6, 4, torch.device("cpu"), progress=False)
    for path, p in zip(ev["paths"], ev["p_fake"]):
        assert p == pytest.approx(preds[path], abs=5e-3)
    assert best["config"]["model"]["freeze_backbone"] is True
    # a second run reuses the features
    fit(tiny_cfg(square_cache, tmp_path, "frozen2", model=model, epochs=1), progress=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_single_class_validation_falls_back_to_val_loss(tmp_path, caplog):
    splits = {"real-0": "val", "real-1": "val"}
    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=4, frames=4, size=16, splits=splits)
    with caplog.at_level(logging.WARNING):
        summary = fit(tiny_cfg(cache, tmp_path / "runs", "one", epochs=1, monitor="val_auc"), progress=False)
    assert "only one class" in caplog.text and summary["monitor"] == "val_loss"
    assert (tmp_path / "runs/one/best.pt").is_file()
    assert np.isnan(summary["history"][0]["val_auc"])


# --- resume safety, save order, feature-cache determinism ---------------------------------------------


def test_resume_refuses_another_cache_and_names_ignored_settings(tmp_path, caplog):
    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    other = make_synthetic_cache(tmp_path / "other", n_real=5, n_fake=5, frames=4, size=16, seed=1)
    runs = tmp_path / "runs"
    fit(tiny_cfg(cache, runs, "r", epochs=2, stop_after=1), progress=False)
    with pytest.raises(UserError, match="was trained on cache .*pass the same cache"):
        fit(tiny_cfg(other, runs, "r", resume=True), resume_overrides=set(), progress=False)
    with pytest.raises(UserError, match="pass the same cache"):  # the API default (no override set) too
        fit(tiny_cfg(other, runs, "r", resume=True), progress=False)
    # the same cache spelled differently is the same cache
    same = tmp_path / "x" / ".." / "c"
    given = {"epochs", "seq_len", "lr", "workers", "hidden_size", "pretrained"}
    with caplog.at_level(logging.WARNING, logger="deepfake_detector"):
        summary = fit(
            tiny_cfg(same, runs, "r", resume=True, epochs=3, seq_len=12, lr=0.1),
            resume_overrides=given,
            progress=False,
        )
    ignored = [r.getMessage() for r in caplog.records if "ignored with --resume" in r.getMessage()]
    assert len(ignored) == 1, ignored
    assert "--seq-len 12 (saved 6)" in ignored[0] and "--lr 0.1 (saved 0.003)" in ignored[0]
    assert "hidden-size" not in ignored[0] and "pretrained" not in ignored[0]  # given, but unchanged
    assert summary["config"].seq_len == 6 and summary["config"].lr == 0.003 and summary["config"].epochs == 3
    # raising --epochs re-plans the LR schedule, and says so
    assert any("LR schedule is recomputed for 3 epochs" in r.getMessage() for r in caplog.records)


def test_raised_epochs_on_resume_follow_the_longer_schedule(tmp_path, monkeypatch):
    """The cosine schedule is re-planned for the new total from the first step of the resumed run (the
    finished 2-epoch run had decayed to its floor, lr * min_lr_ratio)."""
    import deepfake_detector.engine.trainer as trainer

    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    runs = tmp_path / "runs"
    fit(tiny_cfg(cache, runs, "b", epochs=2, patience=0), progress=False)
    first_lr = []
    real_train_epoch = trainer.train_epoch

    def spy(model, loader, optimizer, *a, **k):
        first_lr.append(optimizer.param_groups[0]["lr"])
        return real_train_epoch(model, loader, optimizer, *a, **k)

    monkeypatch.setattr(trainer, "train_epoch", spy)
    fit(tiny_cfg(cache, runs, "b", epochs=4, patience=0, resume=True), progress=False)
    floor = 3e-3 * 0.01
    assert len(first_lr) == 2 and first_lr[0] > 10 * floor and first_lr[1] < first_lr[0]


def test_best_pt_is_written_after_last_pt_and_ctrl_c_waits_for_both(tmp_path, monkeypatch):
    """Ctrl-C while the epoch's files are written: they are all finished first, so --resume works."""
    import signal

    import deepfake_detector.engine.trainer as trainer

    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    runs = tmp_path / "runs"
    order = []
    real_save = trainer.save_checkpoint

    def save(obj, path):
        order.append(os.path.basename(path))
        if len(order) == 1:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C arrived while last.pt was being written
        real_save(obj, path)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    # Ctrl-C as in a terminal, also where the test runner was started with SIGINT ignored (a background
    # job): there the run would rightly ignore it too
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(tiny_cfg(cache, runs, "r", epochs=2), progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert order == ["last.pt", "best.pt"]
    names = {p.name for p in (runs / "r").iterdir()}
    assert {"last.pt", "best.pt", "metrics.csv", "val_predictions.csv"} <= names
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    summary = fit(tiny_cfg(cache, runs, "r", epochs=2, resume=True), progress=False)
    assert summary["epochs_run"] == 1 and [r["epoch"] for r in summary["history"]] == [1, 2]


def test_resume_without_last_pt_suggests_overwrite_and_a_lost_best_pt_is_recovered(tmp_path, caplog):
    from deepfake_detector.checkpoint import save_checkpoint

    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    runs = tmp_path / "runs"
    kw = dict(epochs=3, patience=0, monitor="val_loss")
    straight = fit(tiny_cfg(cache, runs, "u", **kw), progress=False)
    fit(tiny_cfg(cache, runs, "r", stop_after=1, **kw), progress=False)
    (runs / "r" / "last.pt").rename(runs / "r" / "last.bak")
    with pytest.raises(UserError, match="does not exist .*--overwrite"):
        fit(tiny_cfg(cache, runs, "r", resume=True, **kw), progress=False)
    # killed after last.pt, before val_predictions.csv and best.pt: last.pt has what they need
    (runs / "r" / "last.bak").rename(runs / "r" / "last.pt")
    (runs / "r" / "best.pt").unlink()
    (runs / "r" / "val_predictions.csv").unlink()
    with caplog.at_level(logging.INFO, logger="deepfake_detector"):
        resumed = fit(tiny_cfg(cache, runs, "r", resume=True, **kw), progress=False)
    assert any("best.pt of epoch 1 rewritten from last.pt" in r.getMessage() for r in caplog.records)
    a, b = read_csv(runs / "u/metrics.csv"), read_csv(runs / "r/metrics.csv")
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
    assert a == b
    assert resumed["best_epoch"] == straight["best_epoch"]
    ca, cb = load_checkpoint(runs / "u/best.pt"), load_checkpoint(runs / "r/best.pt")
    assert ca["epoch"] == cb["epoch"] and ca["threshold"] == cb["threshold"]
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    assert read_csv(runs / "u/val_predictions.csv") == read_csv(runs / "r/val_predictions.csv")
    # a last.pt without that record (older versions): fall back to what best.pt holds, with a warning
    fit(tiny_cfg(cache, runs, "old", stop_after=1, **kw), progress=False)
    last = load_checkpoint(runs / "old/last.pt")
    last.pop("best_pending")
    save_checkpoint(last, runs / "old/last.pt")
    (runs / "old" / "best.pt").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepfake_detector"):
        summary = fit(tiny_cfg(cache, runs, "old", resume=True, **kw), progress=False)
    assert any("best.pt holds epoch none" in r.getMessage() for r in caplog.records)
    assert summary["best_epoch"] >= 2
    assert load_checkpoint(runs / "old/best.pt")["epoch"] == summary["best_epoch"]


def test_tiny_backbone_records_that_it_was_not_pretrained(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=4, n_fake=4, frames=4, size=16)
    cfg = tiny_cfg(cache, tmp_path / "runs", "t", epochs=1)
    cfg.model.pretrained = True  # the CLI default
    summary = fit(cfg, progress=False)
    assert summary["config"].model.pretrained is False
    import yaml

    saved = yaml.safe_load((tmp_path / "runs/t/config.yaml").read_text())
    assert saved["model"]["pretrained"] is False and saved["train"]["model"]["pretrained"] is False
    assert load_checkpoint(tmp_path / "runs/t/best.pt")["config"]["model"]["pretrained"] is False
    card = (tmp_path / "runs/t/MODEL_CARD.md").read_text()
    assert "Backbone initialisation: random weights." in card and "initialisation: ImageNet" not in card


def test_frozen_backbone_runs_do_not_depend_on_whether_features_were_cached(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    model = ModelConfig(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.3, freeze_backbone=True)
    runs = tmp_path / "runs"
    fit(tiny_cfg(cache, runs, "first", model=model, epochs=2), progress=False)  # extracts the features
    assert any((cache / "features").iterdir())
    fit(tiny_cfg(cache, runs, "second", model=model, epochs=2), progress=False)  # reuses them
    a, b = read_csv(runs / "first/metrics.csv"), read_csv(runs / "second/metrics.csv")
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
    assert a == b and len(a) == 2
