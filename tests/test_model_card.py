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
