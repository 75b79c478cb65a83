"""The checkpoint format: schema versions, the upgrade of older files, the typed view, safe loading."""

from __future__ import annotations

import pytest
import torch

from deepfake_detector import __version__
from deepfake_detector.checkpoint import (
    SCHEMA_VERSION,
    Checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from deepfake_detector.config import ModelConfig, PreprocessConfig, TrainConfig, to_dict
from deepfake_detector.errors import UnsafeFileError, UserError
from deepfake_detector.inference import Detector
from deepfake_detector.models import build_model, model_from_checkpoint
from tests.helpers import MkdirPayload


def _today_layout() -> dict:
    """A best.pt exactly as the trainer wrote it before checkpoints carried a schema (schema 1)."""
    torch.manual_seed(0)
    mcfg = ModelConfig(backbone="tiny", pretrained=False, hidden_size=8, dropout=0.0)
    model = build_model(mcfg, load_weights=False)
    tcfg = TrainConfig(cache="cache", name="old", seq_len=4, model=mcfg)
    pcfg = PreprocessConfig(frames=4, size=32, detector="center")
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "epoch": 3,
        "config": {"train": to_dict(tcfg), "model": to_dict(mcfg), "preprocess": to_dict(pcfg),
                   "runtime": {"device": "cpu", "world_size": 1, "amp": "off"}},
        "version": "0.1.0",
        "optimizer": None, "scheduler": None, "scaler": None, "rng": None,
        "threshold": 0.42,
        "metrics": {"val_auc": 0.9, "val_loss": 0.3},
    }


def test_schema_1_checkpoint_loads_and_is_upgraded(tmp_path):
    path = tmp_path / "best.pt"
    torch.save(_today_layout(), path)
    ck = read_checkpoint(path)
    assert ck.schema == SCHEMA_VERSION and ck.calibration is None
    assert ck.epoch == 3 and ck.threshold == pytest.approx(0.42) and ck.metrics["val_auc"] == 0.9
    assert ck.model_config().hidden_size == 8 and ck.preprocess_config().size == 32
    assert ck.train_config().seq_len == 4 and ck.section("runtime")["device"] == "cpu"
    assert load_checkpoint(path)["schema"] == SCHEMA_VERSION
    det = Detector.from_checkpoint(path, device="cpu", workers=0)
    assert det.threshold == pytest.approx(0.42) and det.seq_len == 4 and det.preprocess.size == 32
    ref = build_model(ck.model_config(), load_weights=False)
    ref.load_state_dict(_today_layout()["model"])
    x = torch.rand(1, 4, 3, 32, 32)
    assert torch.equal(model_from_checkpoint(ck).eval()(x), ref.eval()(x))


def test_round_trip_keeps_every_field(tmp_path):
    ck = Checkpoint.from_dict(_today_layout())
    ck.calibration = {"method": "temperature", "temperature": 1.5}
    ck.training = {"optimizer": {"state": {}}, "early_stopping": {"best": 0.1}}
    save_checkpoint(ck, tmp_path / "c.pt")
    back = read_checkpoint(tmp_path / "c.pt")
    assert back.calibration == ck.calibration and back.training == ck.training
    assert back.config == ck.config and back.metrics == ck.metrics and back.version == "0.1.0"
    assert all(torch.equal(back.model[k], ck.model[k]) for k in ck.model)


def test_plain_dict_save_gets_the_current_schema(tmp_path):
    save_checkpoint({"model": {}, "epoch": 1, "version": __version__}, tmp_path / "d.pt")
    assert torch.load(tmp_path / "d.pt", weights_only=True)["schema"] == SCHEMA_VERSION


def test_newer_schema_is_refused_with_a_clear_message(tmp_path):
    obj = _today_layout()
    obj["schema"] = SCHEMA_VERSION + 1
    torch.save(obj, tmp_path / "new.pt")
    with pytest.raises(UserError, match="newer than this version"):
        read_checkpoint(tmp_path / "new.pt")


def test_not_ours_and_hostile_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a deepfake-detector checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    marker = tmp_path / "ran"
    torch.save({"model": {}, "x": MkdirPayload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="refus"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_run_folder_means_its_best_pt(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    with pytest.raises(UserError, match="folder without best.pt"):
        read_checkpoint(run)
    torch.save(_today_layout(), run / "best.pt")
    assert read_checkpoint(run).epoch == 3
    assert Detector.from_checkpoint(run, device="cpu", workers=0).meta["checkpoint"] == str(run / "best.pt")
