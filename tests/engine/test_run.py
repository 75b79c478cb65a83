"""The run folder: config.yaml's schema and round trip, splits.csv written by a run and read back by
``--resume`` and ``evaluate`` (with the fallback for run folders from before it existed)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from deepfake_detector import config as config_mod
from deepfake_detector.cli import main
from deepfake_detector.config import (
    RUN_CONFIG_SCHEMA,
    ModelConfig,
    PreprocessConfig,
    TrainConfig,
    read_run_config,
    read_run_config_dict,
    to_dict,
    write_run_config,
)
from deepfake_detector.data.cache import Cache
from deepfake_detector.data.dataset import split_rows
from deepfake_detector.engine import run as run_mod
from deepfake_detector.engine.evaluate import evaluate_checkpoint
from deepfake_detector.engine.run import RunFolder
from deepfake_detector.engine.trainer import fit
from tests.cache_helpers import make_synthetic_cache


def _cfg(cache, runs, name, **kw) -> TrainConfig:
    model = ModelConfig(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.2)
    base = dict(cache=str(cache), name=name, runs_dir=str(runs), model=model, epochs=2, batch_size=8, lr=3e-3,
                seq_len=4, workers=0, patience=5, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _record(cfg: TrainConfig) -> dict:
    return {"train": to_dict(cfg), "model": to_dict(cfg.model), "preprocess": to_dict(PreprocessConfig()),
            "runtime": {"device": "cpu", "world_size": 1, "amp": "off"}}


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- config.yaml ----------------------------------------------------------------------------------


def test_run_config_round_trips_and_carries_its_schema(tmp_path):
    cfg = TrainConfig(cache="c", name="r", lr=3e-5, seq_len=12, weight_decay=0.0, stop_after=2,
                      model=ModelConfig(backbone="mobilenet_v2", hidden_size=64, weights_file="w.pth"))
    path = tmp_path / "config.yaml"
    write_run_config(path, _record(cfg))
    assert path.read_text().startswith(f"schema: {RUN_CONFIG_SCHEMA}\n")
    assert read_run_config(path) == cfg
    data = read_run_config_dict(path)
    assert data["schema"] == RUN_CONFIG_SCHEMA and data["preprocess"]["frames"] == 20


def test_config_yaml_without_a_schema_is_schema_1_and_upgraded(tmp_path, monkeypatch):
    # runs before schema 4 had the seed's head: an old config.yaml keeps it, whatever today's default
    seed_head = ModelConfig(temporal_diff=False, pooling="mean")
    cfg = TrainConfig(cache="c", name="old", seq_len=6, augment="base", model=seed_head)
    path = tmp_path / "config.yaml"
    record = _record(cfg)
    del record["train"]["tensorboard"]  # schema 1 had no tensorboard setting
    del record["train"]["fake_tracks"]  # nor (before schema 3) fake_tracks
    for key in ("lr_backbone", "augment"):  # nor (before schema 4) the ablation options
        del record["train"][key]
    for key in ("temporal_diff", "pooling"):
        del record["model"][key]
    path.write_text(yaml.safe_dump(record, sort_keys=False))  # as runs wrote it before the schema
    data = read_run_config_dict(path)
    assert read_run_config(path) == cfg and data["schema"] == RUN_CONFIG_SCHEMA
    assert data["train"]["tensorboard"] is True
    assert data["train"]["augment"] == "base" and data["model"]["pooling"] == "mean"  # schema 4
    assert data["train"]["fake_tracks"] == "largest"  # schema 3: which faces of a fake train

    def next_schema(data):
        data["runtime"].setdefault("note", "upgraded")
        return data

    nxt = RUN_CONFIG_SCHEMA + 1
    monkeypatch.setattr(config_mod, "RUN_CONFIG_SCHEMA", nxt)
    upgraders = {**config_mod._RUN_CONFIG_UPGRADERS, RUN_CONFIG_SCHEMA: next_schema}
    monkeypatch.setattr(config_mod, "_RUN_CONFIG_UPGRADERS", upgraders)
    data = read_run_config_dict(path)
    assert data["schema"] == nxt and data["runtime"]["note"] == "upgraded"
    path.write_text(yaml.safe_dump({"schema": nxt + 1, **_record(cfg)}))
    with pytest.raises(ValueError, match=f"config schema {nxt + 1} is newer"):
        read_run_config(path)


# --- splits.csv -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    splits = {f"{k}-{i}": "test" for k in ("real", "fake") for i in (0, 1)}
    cache = make_synthetic_cache(root / "cache", n_real=8, n_fake=8, frames=4, size=16, splits=splits)
    fit(_cfg(cache, root / "runs", "r"), progress=False)
    return root, cache, RunFolder(root / "runs" / "r")


def test_a_run_records_its_split_membership_in_order(trained):
    root, cache, run = trained
    rows = _csv(run.splits_csv)
    assert list(rows[0]) == ["path", "split"]
    want = split_rows(Cache.open(cache).rows(), 0.2, 0)
    assert run.read_splits() == {k: [r.path for r in v] for k, v in want.items()}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert sorted(r["path"] for r in _csv(run.val_predictions)) == sorted(run.read_splits()["val"])
    assert [r["path"] for r in _csv(run.root / "test_predictions.csv")] == run.read_splits()["test"]
    assert read_run_config(run.config_yaml).seq_len == 4


def test_evaluate_reads_the_runs_split_and_re_derives_it_for_older_run_folders(trained, tmp_path):
    root, cache, run = trained
    recorded = run.read_splits()
    # the run folder's membership wins over re-deriving it: shown with a hand-made record
    mine = dict(recorded, val=recorded["val"][:2], train=recorded["train"] + recorded["val"][2:])
    saved = run.splits_csv.read_text()
    try:
        with open(run.splits_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "split"])
            for name in ("train", "val", "test"):
                w.writerows([p, name] for p in mine[name])
        res = evaluate_checkpoint(run.best, cache, "val", device="cpu", progress=False)
        assert res.split == "val" and res.paths == mine["val"]
        assert main(["evaluate", str(run.best), str(cache), "--split", "val", "--out", str(tmp_path / "a"),
                     "--device", "cpu"]) == 0
        assert [r["path"] for r in _csv(tmp_path / "a" / "predictions.csv")] == mine["val"]
        # a run folder from before splits.csv: the split is re-created as training made it
        run.splits_csv.unlink()
        res = evaluate_checkpoint(run.best, cache, "val", device="cpu", progress=False)
        assert res.paths == recorded["val"]
    finally:
        run.splits_csv.write_text(saved)
    # another cache (its clips are not the run's): re-derived from that cache, as before
    other = make_synthetic_cache(tmp_path / "other", n_real=5, n_fake=5, frames=4, size=16, seed=4)
    res = evaluate_checkpoint(run.best, other, "val", device="cpu", progress=False)
    assert res.paths == [r.path for r in split_rows(Cache.open(other).rows(), 0.2, 0)["val"]]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["n"] == 2


def test_resume_takes_the_split_from_the_run_folder(tmp_path, monkeypatch):
    cache = make_synthetic_cache(tmp_path / "c", n_real=6, n_fake=6, frames=4, size=16)
    runs = tmp_path / "runs"
    fit(_cfg(cache, runs, "r", epochs=3, stop_after=1), progress=False)
    recorded = RunFolder(runs / "r").read_splits()

    def never(*a, **k):
        raise AssertionError("a resumed run must not re-derive its split")

    monkeypatch.setattr(run_mod, "split_rows", never)
    fit(_cfg(cache, runs, "r", epochs=3, stop_after=1, resume=True), progress=False)
    assert RunFolder(runs / "r").read_splits() == recorded
    monkeypatch.undo()
    # an older run folder without splits.csv resumes by re-deriving the split, and records it
    (runs / "r" / "splits.csv").unlink()
    summary = fit(_cfg(cache, runs, "r", epochs=3, resume=True), progress=False)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert RunFolder(runs / "r").read_splits() == recorded


def test_a_folder_with_only_a_split_record_is_a_run_folder_for_overwrite(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=4, n_fake=4, frames=4, size=16)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "splits.csv").write_text("path,split\n")
    fit(_cfg(cache, tmp_path / "runs", "x", epochs=1, overwrite=True), progress=False)
    assert (tmp_path / "runs" / "x" / "best.pt").is_file()
