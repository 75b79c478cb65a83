"""MODEL_CARD.md: the numbers next to the limitations, from whatever the trainer has at hand."""

from __future__ import annotations

import json

from deepfake_detector.config import ModelConfig, PreprocessConfig, TrainConfig, to_dict
from deepfake_detector.model_card import MODEL_CARD_NAME, write_model_card
from tests.cache_helpers import make_synthetic_cache


def _config(cache: str = "") -> dict:
    mcfg = ModelConfig(backbone="tiny", hidden_size=16, pretrained=False)
    return {"train": to_dict(TrainConfig(cache=cache, name="exp1", seq_len=8, model=mcfg, lr=3e-5)),
            "model": to_dict(mcfg), "preprocess": to_dict(PreprocessConfig(frames=8, size=64))}


def test_card_has_data_metrics_threshold_and_limitations(tmp_path):
    path = write_model_card(tmp_path, _config(), {"val_auc": 0.9123, "val_loss": 0.25},
                            threshold=0.4321, data_summary={"videos": {"train": 80, "val": 20}},
                            test_metrics={"auc": 0.88, "test_f1": 0.8, "roc": [[0, 0], [1, 1]]})
    assert path == tmp_path / MODEL_CARD_NAME
    text = path.read_text()
    assert "# Model card: exp1" in text
    assert "| val | ROC AUC | 0.9123 |" in text
    assert "| test | ROC AUC | 0.8800 |" in text and "| test | F1 (FAKE) | 0.8000 |" in text
    assert "0.4321" in text and "videos.train: 80" in text
    assert "3e-05" in text  # small floats stay readable
    for topic in ("Compression", "Unseen manipulation", "No face", "Demographic bias", "Decision threshold",
                  "Intended use"):
        assert topic in text, topic
    assert "tiny" in text and "64 px" in text
    assert not [p for p in tmp_path.iterdir() if p.name != MODEL_CARD_NAME]  # atomic, no temp files


def test_card_reads_config_and_cache_when_not_given(tmp_path):
    cache = tmp_path / "cache"
    make_synthetic_cache(cache, n_real=3, n_fake=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_config(str(cache))))
    text = write_model_card(run, metrics=None).read_text()
    assert "exp1" in text and "No metrics recorded" in text
    assert "videos in manifest: 5" in text
    assert "n/a" in text  # no threshold given


def test_card_accepts_a_train_config_object_and_nan(tmp_path):
    cfg = TrainConfig(name="obj", model=ModelConfig(backbone="mobilenet_v2", pretrained=True))
    text = write_model_card(tmp_path, cfg, {"val": {"auc": float("nan")}}, threshold=0.5).read_text()
    assert "mobilenet_v2" in text and "ImageNet weights" in text and "| val | ROC AUC | n/a |" in text


def test_card_states_the_real_backbone_initialisation(tmp_path):
    def init_line(**model):
        cfg = TrainConfig(name="i", model=ModelConfig(**model))
        text = write_model_card(tmp_path, cfg, None, threshold=0.5).read_text()
        line = next(line for line in text.splitlines() if line.startswith("- Backbone initialisation"))
        return line[len("- Backbone initialisation: "):]

    # tiny has no pretrained weights: an old config that still says pretrained: true is not believed
    assert init_line(backbone="tiny", pretrained=True) == (
        "random weights (this backbone has no pretrained weights)."
    )
    assert init_line(backbone="mobilenet_v2", pretrained=False) == "random weights."
    assert init_line(backbone="resnext50_32x4d", weights_file="w.pth") == "weights file (`w.pth`)."
    assert init_line(backbone="resnext50_32x4d", pretrained=True) == "ImageNet weights."


def test_card_states_dataset_split_policy_results_calibration_and_takes_later_rows(tmp_path):
    from deepfake_detector.data.cache import Cache
    from deepfake_detector.model_card import record_calibration, record_cross_dataset

    test = {"n_total": 10, "n_scored": 9, "auc": 0.9, "frame_auc": 0.8, "tpr_at_fpr": {"0.01": 0.4},
            "threshold": 0.61, "threshold_method": "eer on validation, mapped by the calibration",
            "by_manipulation": {"swap": {"auc": 0.95, "n_fake": 3, "n_real": 5, "tpr_at_fpr": {"0.01": 0.5}}}}
    cal = {"temperature": 1.3, "threshold": 0.61, "raw_threshold": 0.58, "ece_before": 0.2, "ece_after": 0.05,
           "fitted_on": {"split": "val", "cache": "cache", "n": 30, "n_real": 15, "n_fake": 15}}
    cache = Cache(make_synthetic_cache(tmp_path / "cache", n_real=2, n_fake=2))
    config = _config(str(tmp_path / "cache"))
    config["model"]["weights_file"] = str(tmp_path / "weights" / "w.pth")
    card = write_model_card(tmp_path, config, None, threshold=0.58, test_metrics=test, calibration=cal,
                            cache=cache)
    text = card.read_text()
    assert "| test | 10 (9 scored) | 0.9000 | 0.8000 |" in text
    assert "| test | swap | 0.9500 | 0.5000 | 3 | 5 |" in text
    assert "calibrated P(FAKE) >= **0.6100**" in text and "T = 1.3000" in text
    assert "Split policy: validation:" in text and "`w.pth`" in text and str(tmp_path) not in text
    celeb = {"cross_dataset": {"evaluated_on": "celeb (celebdf)"}, "n_total": 50}
    record_cross_dataset(card, dict(celeb, auc=0.7), "all")
    record_cross_dataset(card, dict(celeb, auc=0.71), "all")  # the same evaluation again: its row replaced
    text = card.read_text()
    assert text.count("| celeb (celebdf) | all | 50 |") == 1 and "0.7100" in text and "None yet." not in text
    assert record_calibration(card, dict(cal, temperature=2.5)) and "T = 2.5000" in card.read_text()
    old = tmp_path / "old.md"  # a card written before the cross-dataset section existed
    old.write_text("# Model card: x\n\n## Calibration\n\nNone.\n")
    record_cross_dataset(old, {"cross_dataset": {"evaluated_on": "b"}, "auc": 0.6}, "test")
    assert "| b | test |" in old.read_text()
