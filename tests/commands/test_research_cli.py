"""A researcher's run end to end: a CSV list with a ``method`` column -> preprocess -> train -> evaluate,
with per-method and frame-level metrics, TensorBoard events, ``train --config`` and the model card."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from deepfake_detector.cli import main
from deepfake_detector.config import read_run_config
from tests.helpers import make_video

METHODS = ("swap", "reenact", "gan")
TINY = ["--backbone", "tiny", "--no-pretrained", "--hidden-size", "16", "--seq-len", "4", "--batch-size", "8",
        "--lr", "3e-3", "--workers", "0", "--device", "cpu"]


def _frames(fake: bool, seed: int):
    base = np.random.default_rng(seed).integers(40, 200, (48, 48, 3)).astype(np.uint8)

    def frame(i: int) -> np.ndarray:
        f = np.roll(base, i, axis=1).copy()
        if fake:
            f[10:26, 10:26] = 250
        return f

    return frame


def _dataset(root):
    """12 REAL and 12 FAKE videos (three methods) in a ``file,label,method`` list, plus a broken FAKE."""
    rows = [["file", "label", "method"]]
    for i in range(12):
        make_video(root / f"real{i}.mp4", frames=6, size=(48, 48), frame_fn=_frames(False, i))
        rows.append([f"real{i}.mp4", "REAL", ""])
    for j in range(12):
        make_video(root / f"fake{j}.mp4", frames=6, size=(48, 48), frame_fn=_frames(True, 100 + j))
        rows.append([f"fake{j}.mp4", "FAKE", METHODS[j % 3]])
    (root / "broken.mp4").write_bytes(b"\x00" * 100)
    rows.append(["broken.mp4", "FAKE", "gan"])
    with open(root / "list.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root / "list.csv"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    root = tmp_path_factory.mktemp("research")
    listing = _dataset(root / "data")
    cache, runs = root / "cache", root / "runs"
    assert main(["preprocess", str(listing), "--out", str(cache), "--detector", "center", "--frames", "4",
                 "--size", "32", "--workers", "0", "--no-progress"]) == 0
    warnings = _Records()
    logging.getLogger("deepfake_detector.engine.trainer").addHandler(warnings)
    try:
        assert main(["train", str(cache), "--name", "m", "--runs-dir", str(runs), "--epochs", "2", *TINY,
                     "--threshold-method", "fpr:0.1"]) == 0
    finally:
        logging.getLogger("deepfake_detector.engine.trainer").removeHandler(warnings)
    assert main(["evaluate", str(runs / "m"), str(cache), "--split", "all", "--out", str(root / "ev"),
                 "--device", "cpu"]) == 0
    return root, cache, runs / "m", warnings.lines


def test_the_method_column_reaches_the_manifest_and_the_grouping_is_recorded(research):
    _, cache, _, warnings = research
    with open(cache / "manifest.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert rows["fake0.mp4"]["method"] == "swap" and rows["real0.mp4"]["method"] == ""
    meta = json.loads((cache / "preprocess.json").read_text())
    assert meta["grouping"] == "per-video" and meta["manifest_schema"] == 3
    ungrouped = [w for w in warnings if "every video is its own group" in w]
    assert len(ungrouped) == 1
    assert "'original' or 'group' column" in ungrouped[0] and "--group-by" in ungrouped[0]


def test_evaluate_writes_every_key_with_a_per_method_auc_for_every_method(research):
    root, _, _, _ = research
    m = json.loads((root / "ev" / "metrics.json").read_text())
    for key in ("auc", "frame_auc", "tpr_at_fpr", "ece", "brier", "by_manipulation", "threshold",
                "threshold_method", "n_total", "n_scored", "by_status", "calibration", "accuracy"):
        assert key in m, key
    assert set(m["tpr_at_fpr"]) == {"0.1", "0.01", "0.001"}
    assert set(m["by_manipulation"]) == set(METHODS)
    for method, v in m["by_manipulation"].items():
        assert set(v) == {"auc", "n_fake", "n_real", "tpr_at_fpr"} and 0.0 <= v["auc"] <= 1.0, method
        assert v["n_real"] == 12 and set(v["tpr_at_fpr"]) == {"0.1", "0.01", "0.001"}
    assert m["by_manipulation"]["gan"]["n_fake"] == 5  # the unreadable gan video counts (scored 0.5)
    assert m["n_total"] == 25 and m["n_scored"] == 24 and m["by_status"] == {"ok": 24, "unreadable": 1}
    assert m["threshold_method"] == "fpr:0.1 on validation"
    for png in ("confusion_matrix", "roc", "pr", "scores", "calibration", "roc_by_manipulation"):
        assert (root / "ev" / f"{png}.png").is_file(), png


def test_the_run_folder_has_tensorboard_events_and_the_plots(research):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run, _ = research
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "val/auc", "accuracy/val@0.5", "lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/val")] == [1, 2]
    assert {"final_val/roc", "final_val/confusion_matrix"} <= set(tags["images"])
    for png in ("loss", "accuracy", "confusion_matrix", "roc", "pr", "scores", "calibration"):
        assert (run / f"{png}.png").is_file(), png
    val = json.loads((run / "val_metrics.json").read_text())
    assert "frame_auc" in val and val["threshold_method"] == "fpr:0.1 on validation"


def test_train_config_round_trips_flags_override_and_unknown_keys_are_one_line(research, tmp_path, capsys):
    _, _, run, _ = research
    runs = tmp_path / "runs"
    assert main(["train", "--config", str(run / "config.yaml"), "--name", "again", "--runs-dir", str(runs),
                 "--no-tensorboard"]) == 0
    first, again = read_run_config(run / "config.yaml"), read_run_config(runs / "again" / "config.yaml")
    assert first.cache == again.cache and again.name == "again" and not again.tensorboard
    same = {k: v for k, v in vars(again).items() if k not in ("name", "runs_dir", "tensorboard")}
    assert same == {k: v for k, v in vars(first).items() if k in same}
    assert not (runs / "again" / "tensorboard").exists()

    def rows(path):
        with open(path, newline="") as fh:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]

    assert rows(run / "metrics.csv") == rows(runs / "again" / "metrics.csv")  # the same run, reproduced
    assert main(["train", "--config", str(run / "config.yaml"), "--name", "short", "--runs-dir", str(runs),
                 "--epochs", "1"]) == 0
    assert read_run_config(runs / "short" / "config.yaml").epochs == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text((run / "config.yaml").read_text().replace("\n  patience:", "\n  patients:", 1))
    capsys.readouterr()
    assert main(["train", "--config", str(bad), "--name", "x", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) train.patients (did you mean train.patience?)" in err[0]


def test_the_model_card_states_what_a_paper_needs_with_relative_paths(research):
    root, _, run, _ = research
    card = (run / "MODEL_CARD.md").read_text()
    assert "format `csv`" in card and "gan (4), reenact (4), swap (4)" in card
    assert "**not grouped**" in card and "carved out" in card
    assert "| split | method | AUC | TPR@FPR 0.01 | FAKE | REAL |" in card and "frame AUC" in card
    assert "## Calibration" in card and "## Cross-dataset evaluation" in card
    assert str(root) not in card  # no absolute path of the training machine
