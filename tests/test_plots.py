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
