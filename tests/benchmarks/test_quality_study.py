"""The quality study script on a tiny cache: 2 configurations x 1 seed, tiny backbone, one table."""

from __future__ import annotations

import csv
import json

from tests.cache_helpers import make_synthetic_cache


def _with_methods(cache):
    """The synthetic cache's fakes labelled with the study's kinds, so the table has per-kind columns."""
    path = cache / "manifest.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(r for r in rows if r["label"] == "FAKE"):
        row["method"] = ("faceswap", "temporal")[i % 2]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return cache


def test_two_configs_one_seed_make_one_table(tmp_path):
    from benchmarks import quality_study

    splits = {f"{k}-{i}": "test" for k in ("real", "fake") for i in range(4)}
    _with_methods(make_synthetic_cache(tmp_path / "data" / "cache-plain", n_real=10, n_fake=10, frames=4,
                                       size=24, splits=splits))
    out = tmp_path / "quality.md"
    # a named one and an inline one, with augmented feature views (a list value spelt with +)
    configs = "base;small:lr=0.01,model.temporal_diff=true,augment=base+noise,feature_views=2"
    argv = ["--data", str(tmp_path / "data"), "--caches", "--work", str(tmp_path / "work"), "--out", str(out),
            "--protocols", "plain", "--configs", configs, "--seeds", "0", "--backbone", "tiny",
            "--hidden-size", "8", "--epochs", "2", "--batch-size", "4", "--frames", "4", "--device", "cpu"]
    assert quality_study.main(argv) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| plain")]
    assert [ln.split(" | ")[1] for ln in lines] == ["base", "small"]
    assert "faceswap AUC (n)" in text and "temporal AUC (n)" in text and "| 4/4 |" in text
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert set(results) == {"plain|base|0", "plain|small|0"}
    assert results["plain|small|0"]["overrides"] == {"lr": 0.01, "model.temporal_diff": True,
                                                     "augment": "base+noise", "feature_views": 2}
    views = list((tmp_path / "data" / "cache-plain" / "features").iterdir())
    assert len(views) == 3  # the un-augmented features and small's two views
    # a rerun finds every run done and only rewrites the table; --no-train never trains
    assert quality_study.main(argv) == 0
    assert out.read_text().split("\n", 2)[2] == text.split("\n", 2)[2]
    assert quality_study.main(argv[:-2] + ["--configs", configs.split(";")[1], "--no-train"]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| plain")]
    assert [ln.split(" | ")[1] for ln in rows] == ["small"]


def test_mean_and_std_over_seeds():
    from benchmarks.quality_study import table

    runs = {f"plain|base|{s}": {"auc": a, "n_real": 2, "n_fake": 2, "seconds": 1.0,
                                "kinds": {"temporal": {"auc": a, "n": 2}}} for s, a in enumerate((0.8, 0.9))}
    text = table(runs, ["plain"], ["base"])
    assert "| plain | base | 2 | 2/2 | 0.850 ± 0.071 | 0.850 ± 0.071 (2) | 1 |" in text


def test_finetune_trains_the_backbone_and_tests_plain_models_on_compressed(tmp_path):
    from benchmarks import quality_study
    from deepfake_detector.checkpoint import read_checkpoint

    splits = {f"{k}-{i}": "test" for k in ("real", "fake") for i in range(4)}
    for protocol in ("plain", "compressed"):  # the same training videos; only the test videos would differ
        _with_methods(make_synthetic_cache(tmp_path / "data" / f"cache-{protocol}", n_real=10, n_fake=10,
                                           frames=4, size=24, splits=splits))
    argv = ["--data", str(tmp_path / "data"), "--caches", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "q.md"), "--protocols", "compressed,plain", "--configs",
            "diff+attention+h264", "--seeds", "0", "--backbone", "tiny", "--hidden-size", "8",
            "--epochs", "1", "--batch-size", "4", "--frames", "4", "--device", "cpu", "--finetune",
            "--workers", "0"]
    assert quality_study.main(argv) == 0
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    plain, compressed = results["plain|diff+attention+h264|0"], results["compressed|diff+attention+h264|0"]
    assert compressed["trained_as"] == "plain|diff+attention+h264|0" and "run_dir" not in compressed
    assert (compressed["n_real"], compressed["n_fake"]) == (plain["n_real"], plain["n_fake"]) == (4, 4)
    assert compressed["auc"] == plain["auc"]  # the same model on the same (here identical) test clips
    assert [p.name for p in (tmp_path / "work" / "runs").iterdir()] == ["plain-diff_attention_h264-s0"]
    best = tmp_path / "work" / "runs" / "plain-diff_attention_h264-s0" / "best.pt"
    cfg = read_checkpoint(best).train_config()
    assert not cfg.model.freeze_backbone and cfg.feature_views == 0 and cfg.augment == "base,h264"
    assert not (tmp_path / "data" / "cache-plain" / "features").exists()  # no feature cache: fine-tuned
    assert "fine-tuned end to end" in (tmp_path / "q.md").read_text()
