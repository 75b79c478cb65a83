"""Plots are PNG files written atomically with the Agg canvas."""

from __future__ import annotations

import numpy as np

from deepfake_detector.plots import plot_accuracy, plot_confusion_matrix, plot_loss, plot_roc

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_plot_writes_a_png_and_no_temp_files(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.5 + e / 10,
            "val_accuracy": 0.4 + e / 10,
        }
        for e in range(1, 4)
    ]
    plot_loss(history, tmp_path / "loss.png")
    plot_accuracy(history, tmp_path / "accuracy.png")
    plot_confusion_matrix([[5, 1], [2, 7]], tmp_path / "cm.png")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    plot_roc(y, np.clip(y * 0.4 + rng.uniform(0, 0.6, 40), 0, 1), tmp_path / "roc.png")
    plot_roc([1, 1], [0.2, 0.9], tmp_path / "roc_one_class.png")  # undefined ROC: a note, no crash
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accuracy.png", "cm.png", "loss.png", "roc.png", "roc_one_class.png"]
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000


def test_plots_do_not_need_pyplot(tmp_path):
    import sys

    import matplotlib

    backend = matplotlib.get_backend()
    plot_confusion_matrix(np.array([[1, 0], [0, 1]]), tmp_path / "cm.png")
    assert matplotlib.get_backend() == backend
    from deepfake_detector import plots

    assert "pyplot" not in plots.__dict__ and "plt" not in plots.__dict__
    assert "deepfake_detector.plots" in sys.modules


def test_evaluation_plots_write_pngs_and_mark_what_they_promise(tmp_path):
    from deepfake_detector.plots import (
        plot_pr,
        plot_reliability,
        plot_roc_by_manipulation,
        plot_score_histogram,
    )

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.4 + rng.uniform(0, 0.6, 60), 0, 1)
    methods = [("swap" if i % 2 else "gan") if v else "" for i, v in enumerate(y)]
    plot_roc(y, p, tmp_path / "roc.png", threshold=0.5)
    plot_roc_by_manipulation(y, p, methods, tmp_path / "roc_m.png")
    plot_pr(y, p, tmp_path / "pr.png", threshold=0.5)
    plot_score_histogram(y, p, tmp_path / "hist.png", threshold=0.5)
    plot_reliability(y, [("before", p), ("after", p ** 2)], tmp_path / "rel.png")
    plot_confusion_matrix([[0, 0], [3, 4]], tmp_path / "cm.png")  # a class without videos: no division by 0
    plot_loss([{"epoch": 1, "train_loss": 1, "val_loss": 2}, {"epoch": 2, "train_loss": 0.5, "val_loss": 1}],
              tmp_path / "loss.png", best_epoch=2)
    for name in ("roc", "roc_m", "pr", "hist", "rel", "cm", "loss"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG), name


def test_the_confusion_matrix_shows_counts_and_row_percentages(tmp_path, monkeypatch):
    import seaborn as sns

    seen = {}
    real_heatmap = sns.heatmap

    def spy(data, **kw):
        seen["annot"] = kw["annot"]
        return real_heatmap(data, **kw)

    monkeypatch.setattr(sns, "heatmap", spy)
    plot_confusion_matrix([[9, 1], [2, 6]], tmp_path / "cm.png")
    assert seen["annot"].tolist() == [["9\n90.0 %", "1\n10.0 %"], ["2\n25.0 %", "6\n75.0 %"]]
