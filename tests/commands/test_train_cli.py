"""``deepfake-detector train`` and ``evaluate`` end to end on a tiny synthetic cache."""

from __future__ import annotations

import csv
import json
import urllib.error

import pytest

from deepfake_detector.checkpoint import load_checkpoint
from deepfake_detector.cli import main
from tests.cache_helpers import RUN_FILES, make_synthetic_cache

TINY = [
    "--backbone",
    "tiny",
    "--no-pretrained",
    "--hidden-size",
    "16",
    "--seq-len",
    "6",
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--workers",
    "0",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    splits = {f"{k}-{i}": "test" for k in ("real", "fake") for i in (0, 1, 2)}
    cache = make_synthetic_cache(root / "cache", n_real=14, n_fake=14, splits=splits)
    rc = main(
        ["train", str(cache), "--name", "cli", "--runs-dir", str(root / "runs"), "--epochs", "3", *TINY]
    )
    assert rc == 0
    return root, cache, root / "runs" / "cli"


def test_train_writes_the_run_folder_with_test_results(trained, capsys):
    root, cache, run = trained
    names = {p.name for p in run.iterdir()}
    assert RUN_FILES | {"test_metrics.json", "test_predictions.csv"} <= names
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["seq_len"] == 6 and cfg["model"]["backbone"] == "tiny" and cfg["train"]["epochs"] == 3
    with open(run / "test_predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6


def test_evaluate_writes_metrics_predictions_and_plots(trained, capsys, tmp_path):
    root, cache, run = trained
    out = tmp_path / "ev"
    assert main(["evaluate", str(run / "best.pt"), str(cache), "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "auc" in printed and "confusion" in printed
    assert {"metrics.json", "predictions.csv", "confusion_matrix.png", "roc.png"} <= {
        p.name for p in out.iterdir()
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["split"] == "test"
    assert metrics["threshold"] == pytest.approx(load_checkpoint(run / "best.pt")["threshold"])
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:3] == ["path", "label", "p_fake"]
    # the same p_fake as training's own test pass (same checkpoint, seq_len and eval transform)
    with open(run / "test_predictions.csv", newline="") as fh:
        train_side = {r["path"]: float(r["p_fake"]) for r in csv.DictReader(fh)}
    for r in rows:
        assert float(r["p_fake"]) == pytest.approx(train_side[r["path"]], abs=1e-6)
    # the validation split is re-created exactly as in training
    out_val = tmp_path / "ev_val"
    assert main(["evaluate", str(run / "best.pt"), str(cache), "--split", "val", "--out", str(out_val)]) == 0
    with open(run / "val_predictions.csv", newline="") as fh:
        val_paths = sorted(r["path"] for r in csv.DictReader(fh))
    with open(out_val / "predictions.csv", newline="") as fh:
        assert sorted(r["path"] for r in csv.DictReader(fh)) == val_paths
    # an output folder that cannot take files is a usage error before any evaluation (exit 2)
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.pt"), str(cache), "--out", "/proc/ev_here"]) == 2
    assert "output folder /proc/ev_here" in capsys.readouterr().err


def test_existing_run_is_refused_and_resume_continues(trained, capsys):
    root, cache, run = trained
    rc = main(["train", str(cache), "--name", "cli", "--runs-dir", str(root / "runs"), *TINY])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = main(
        ["train", str(cache), "--name", "cli", "--runs-dir", str(root / "runs"), "--resume", "--epochs", "4"]
    )
    assert rc == 0
    with open(run / "metrics.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    assert load_checkpoint(run / "last.pt")["config"]["train"]["batch_size"] == 8  # saved settings kept


def test_user_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch):
    assert main(["train", str(tmp_path / "missing"), "--name", "x", "--runs-dir", str(tmp_path), *TINY]) == 2
    assert "manifest" in capsys.readouterr().err
    cache = make_synthetic_cache(tmp_path / "c", n_real=4, n_fake=4)
    assert (
        main(["train", str(cache), "--name", "x", "--runs-dir", str(tmp_path), *TINY, "--epochs", "0"]) == 2
    )
    assert "epochs" in capsys.readouterr().err

    import torchvision.models._api as api

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    rc = main(
        [
            "train",
            str(cache),
            "--name",
            "y",
            "--runs-dir",
            str(tmp_path),
            "--backbone",
            "mobilenet_v2",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ImageNet weights for mobilenet_v2 could not be downloaded")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "nope.pt"), str(cache)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_stop_after_then_resume_finishes_the_run(tmp_path, capsys):
    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    base = ["train", str(cache), "--name", "s", "--runs-dir", str(tmp_path / "runs")]
    assert main([*base, *TINY, "--epochs", "3", "--stop-after", "1"]) == 0
    assert "--resume" in capsys.readouterr().out
    assert not (tmp_path / "runs/s/roc.png").exists()  # like a killed run: not finished
    assert main([*base, "--resume"]) == 0  # settings come from last.pt; stop-after is not inherited
    with open(tmp_path / "runs/s/metrics.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]
    assert (tmp_path / "runs/s/roc.png").exists()


def test_resume_refuses_another_cache_and_warns_once_about_ignored_flags(tmp_path, capsys, caplog):
    import logging

    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    other = make_synthetic_cache(tmp_path / "o", n_real=5, n_fake=5, frames=4, size=16, seed=1)
    runs = str(tmp_path / "runs")
    assert main(["train", str(cache), "--name", "r", "--runs-dir", runs, *TINY, "--epochs", "3",
                 "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert main(["train", str(other), "--name", "r", "--runs-dir", runs, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run r was trained on cache") and err.count("\n") == 1, err
    assert "pass the same cache, or start a new run with another --name" in err
    with caplog.at_level(logging.WARNING, logger="deepfake_detector"):
        rc = main(["train", str(cache), "--name", "r", "--runs-dir", runs, "--resume", "--epochs", "4",
                   "--seq-len", "12", "--lr", "0.1", "--hidden-size", "16", "--device", "cpu"])
    assert rc == 0
    ignored = [r.getMessage() for r in caplog.records if "ignored with --resume" in r.getMessage()]
    assert len(ignored) == 1, ignored
    assert "--seq-len 12 (saved 6)" in ignored[0] and "--lr 0.1 (saved 0.003)" in ignored[0]
    named = ignored[0].split(" (a resumed run")[0]
    assert "--hidden-size" not in named and "--epochs" not in named and "--device" not in named
    saved = load_checkpoint(tmp_path / "runs/r/last.pt")["config"]["train"]
    assert saved["seq_len"] == 6 and saved["lr"] == 0.003 and saved["epochs"] == 4


def test_ctrl_c_at_the_end_of_the_first_epoch_leaves_a_resumable_run(tmp_path, capsys, monkeypatch):
    import deepfake_detector.plots as plots

    cache = make_synthetic_cache(tmp_path / "c", n_real=5, n_fake=5, frames=4, size=16)
    runs = str(tmp_path / "my runs")
    real_plot = plots.plot_loss

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_loss", interrupted)  # Ctrl-C while the first epoch's files are written
    assert main(["train", str(cache), "--name", "r", "--runs-dir", runs, *TINY, "--epochs", "2"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; continue with: deepfake-detector train" in err and err.count("\n") == 1, err
    assert f"--name r --runs-dir '{runs}' --resume" in err
    monkeypatch.setattr(plots, "plot_loss", real_plot)
    assert main(["train", str(cache), "--name", "r", "--runs-dir", runs, "--resume"]) == 0
    with open(tmp_path / "my runs/r/metrics.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]


def test_tiny_with_the_default_pretrained_records_random_weights(tmp_path, capsys):
    import yaml

    cache = make_synthetic_cache(tmp_path / "c", n_real=4, n_fake=4, frames=4, size=16)
    args = [a for a in TINY if a != "--no-pretrained"]
    assert main(["train", str(cache), "--name", "t", "--runs-dir", str(tmp_path / "runs"), *args,
                 "--epochs", "1"]) == 0
    run = tmp_path / "runs/t"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["pretrained"] is False
    assert "Backbone initialisation: random weights" in (run / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_batch_size_below_one_is_refused(tmp_path, capsys, value):
    cache = make_synthetic_cache(tmp_path / "c", n_real=4, n_fake=4, frames=4, size=16)
    args = [a if a != "8" else value for a in TINY]
    assert main(["train", str(cache), "--name", "b", "--runs-dir", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch-size must be >= 1") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_train_help_shows_each_default_once_and_truthfully(capsys):
    import re

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    flat = re.sub(r"\s+", " ", text)
    # one option per help entry: "--flag METAVAR  help..." up to the next option
    entries = re.split(r" (?=--?[a-z][a-z-]* )", flat.split("options:", 1)[1])
    for entry in entries:
        assert entry.count("default") <= 1, entry
    assert "clips per batch per process, >= 1 (default 16 on CUDA, else 4)" in flat
    assert "folder of runs (default runs)" in flat
    assert re.search(r"--no-pretrained start from random weights (?!\(default)", flat)


def test_evaluate_warns_when_the_cache_was_preprocessed_differently(trained, tmp_path, capsys, caplog):
    import logging

    root, cache, run = trained
    other = make_synthetic_cache(tmp_path / "other", n_real=3, n_fake=3, frames=4, size=16)
    with caplog.at_level(logging.WARNING, logger="deepfake_detector"):
        assert main(["evaluate", str(run / "best.pt"), str(cache), "--split", "test",
                     "--out", str(tmp_path / "same")]) == 0
        assert not [r for r in caplog.records if "preprocessed differently" in r.getMessage()]
        assert main(["evaluate", str(run / "best.pt"), str(other), "--split", "all",
                     "--out", str(tmp_path / "diff")]) == 0
    warned = [r.getMessage() for r in caplog.records if "preprocessed differently" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "frames 4 (trained on 6)" in warned[0] and "size 16 (trained on 24)" in warned[0]
    assert "\n" not in warned[0]


@pytest.mark.timeout(180)
def test_tampered_manifest_gives_one_error_line_with_loader_workers(tmp_path):
    """A clip path escaping the cache is refused inside a DataLoader worker: one line, not its traceback."""
    import subprocess
    import sys

    cache = make_synthetic_cache(tmp_path / "cache", n_real=6, n_fake=6)
    lines = (cache / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("clip")] = "../../etc/passwd"
    lines[3] = ",".join(row)
    (cache / "manifest.csv").write_text("\n".join(lines) + "\n")
    args = [*TINY]
    args[args.index("--workers") + 1] = "2"
    proc = subprocess.run([sys.executable, "-m", "deepfake_detector", "train", str(cache), "--name", "t",
                           "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", *args],
                          capture_output=True, text=True, timeout=170)
    err_lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("INFO", "WARNING"))]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err_lines) == 1 and "points outside the cache folder" in err_lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
