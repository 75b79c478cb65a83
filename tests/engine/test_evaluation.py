"""engine.evaluate: every video counts, frame-level scores, operating points, cross-dataset, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepfake_detector.checkpoint import read_checkpoint, save_checkpoint
from deepfake_detector.config import ModelConfig, PreprocessConfig, TrainConfig
from deepfake_detector.data.cache import Cache, ManifestRow, save_clip
from deepfake_detector.engine.evaluate import (
    UNSCORED_SCORE,
    evaluate_checkpoint,
    evaluate_rows,
    every_video,
    prepare_evaluation,
)
from tests.cache_helpers import make_clip, make_synthetic_cache
from tests.helpers import make_tiny_checkpoint

PRE = PreprocessConfig(frames=6, size=24, detector="center")


def _hard_cache(root):
    """Four ok test videos, a no-face video with centre crops, one without a clip and an unreadable one."""
    rng = np.random.default_rng(5)
    clip = save_clip(root, "videos/noface-clip.mp4", make_clip(rng, True, 6, 24))
    extra = [
        ManifestRow(path="videos/noface-clip.mp4", label="FAKE", split="test", group="x1", method="swap",
                    status="no_face", frames=6, clip=clip),
        ManifestRow(path="videos/noface-none.mp4", label="REAL", split="test", group="x2", status="no_face"),
        ManifestRow(path="videos/broken.mp4", label="FAKE", split="test", group="x3", method="gan",
                    status="unreadable", error="cannot open"),
        ManifestRow(path="videos/unlabelled.mp4", label="", split="test", status="unreadable"),
    ]
    splits = {f"{k}-{i}": "test" for k in ("real", "fake") for i in (0, 1)}
    return make_synthetic_cache(root, n_real=6, n_fake=6, splits=splits, extra_rows=extra)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    cache = _hard_cache(root / "cache")
    ckpt = make_tiny_checkpoint(root / "ck.pt", PRE, seq_len=6, fc_scale=40.0, threshold=0.5)
    return cache, ckpt


def test_every_video_of_the_split_counts_by_default(hard):
    cache, ckpt = hard
    res = evaluate_checkpoint(ckpt, cache, "test", device="cpu", progress=False)
    m = res.metrics
    assert m["n_total"] == m["n"] == 7 and m["n_scored"] == 5
    assert m["n_no_face"] == 2 and m["n_unreadable"] == 1
    assert m["by_status"] == {"no_face": 2, "ok": 4, "unreadable": 1}
    p = dict(zip(res.paths, res.p_fake))
    assert p["videos/broken.mp4"] == p["videos/noface-none.mp4"] == UNSCORED_SCORE
    assert p["videos/noface-clip.mp4"] != UNSCORED_SCORE  # scored on its centre crops
    assert any("2 of 7 videos had no face found: scored on centre crops; 1 of them" in n for n in m["notes"])
    assert any("1 of 7 videos could not be read" in n for n in m["notes"])
    assert m["n_frames"] == 5 * 6 and 0.0 <= m["frame_auc"] <= 1.0
    assert set(m["by_manipulation"]) == {"swap", "gan", "(unknown)"}
    assert res.statuses[res.paths.index("videos/broken.mp4")] == "unreadable"
    # the DFDC convention for faceless videos, and the explicit way to leave them out
    half = evaluate_checkpoint(ckpt, cache, "test", device="cpu", progress=False, no_face_score="0.5").metrics
    assert half["n_scored"] == 4 and half["no_face_score"] == 0.5
    only = evaluate_checkpoint(ckpt, cache, "test", device="cpu", progress=False, scored_only=True).metrics
    assert only["n_total"] == 4 and only["by_status"] == {"ok": 4}


def test_the_evaluate_command_says_how_many_had_no_face_and_leaves_out_only_if_asked(hard, tmp_path, capsys):
    from deepfake_detector.cli import main

    cache, ckpt = hard
    assert main(["evaluate", str(ckpt), str(cache), "--split", "test", "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test split, 7 videos" in out
    assert "4 with a face, 2 without (scored on centre crops), 1 unreadable" in out
    assert main(["evaluate", str(ckpt), str(cache), "--split", "test", "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--scored-only"]) == 0
    out = capsys.readouterr().out
    assert "left out by --scored-only: 3" in out
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["left_out"] == {"no_face": 2, "unreadable": 1} and metrics["n_total"] == 4


def test_frame_scores_are_each_frame_alone_and_the_clip_score_is_unchanged(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=3, n_fake=3, frames=6, frame_counts=[6, 6, 3])
    rows = Cache.open(cache).rows()
    ckpt = make_tiny_checkpoint(tmp_path / "ck.pt", PRE, seq_len=6, fc_scale=20.0)
    prepared = prepare_evaluation(ckpt, cache, "all", device="cpu")
    model = prepared.model
    plain = evaluate_rows(model, cache, rows, 6, 4, torch.device("cpu"), progress=False)
    both = evaluate_rows(model, cache, rows, 6, 4, torch.device("cpu"), progress=False, frames=True)
    assert np.array_equal(plain["p_fake"], both["p_fake"])  # bit for bit: the clip path is model(x)
    ds_clip = torch.from_numpy(np.stack([Cache.open(cache).load_clip(r.clip)[:1] for r in rows[:2]]))
    from deepfake_detector.data.dataset import clips_to_device

    with torch.no_grad():
        one = torch.softmax(model(clips_to_device(ds_clip, "cpu")).float(), 1)[:, 1].numpy()
    assert np.allclose(both["p_frames"][:2, 0], one, atol=1e-6)  # frame 0 scored as a one-frame clip
    res = prepared.run(progress=False)
    # a clip of 3 frames is stretched to 6 for the video score; its frames count once each
    assert res.metrics["n_frames"] == sum(min(r.frames, 6) for r in rows)


def test_threshold_at_fpr_on_the_splits_own_reals(hard):
    cache, ckpt = hard
    res = evaluate_checkpoint(ckpt, cache, "all", device="cpu", progress=False, threshold_at_fpr=0.2)
    (tn, fp), _ = res.metrics["confusion_matrix"]
    assert fp / (tn + fp) <= 0.2 and "fpr:0.2 on this split's" in res.metrics["threshold_method"]
    with pytest.raises(Exception, match="not both"):
        prepare_evaluation(ckpt, cache, "all", device="cpu", threshold=0.5, threshold_at_fpr=0.1)


def test_a_carved_validation_split_gains_the_faceless_videos_of_its_groups():
    def row(path, group, status="ok", split="", label="FAKE"):
        return ManifestRow(path=path, label=label, group=group, status=status, split=split,
                           clip="c.npy" if status in ("ok", "no_face") else "")

    rows = [row("a", "g1"), row("b", "g2"), row("c", "g3"), row("t", "g9", split="test"),
            row("a-noface", "g1", "no_face"), row("b-broken", "g2", "unreadable"),
            row("t-broken", "g8", "unreadable", split="test"), row("u", "g7", "unreadable")]
    splits = {"train": [rows[0]], "val": [rows[1], rows[2]], "test": [rows[3]]}
    assert [r.path for r in every_video(rows, splits, "val")] == ["b", "c", "b-broken"]
    assert [r.path for r in every_video(rows, splits, "test")] == ["t", "t-broken"]


def test_another_datasets_cache_is_a_cross_dataset_evaluation(tmp_path, capsys):
    from deepfake_detector.cli import main
    from deepfake_detector.model_card import write_model_card

    a = make_synthetic_cache(tmp_path / "a", n_real=4, n_fake=4)
    b = make_synthetic_cache(tmp_path / "b", n_real=4, n_fake=4, seed=9)
    for cache, root in ((a, "/data/ffpp"), (b, "/data/celeb")):
        (cache / "preprocess.json").write_text(json.dumps({"preprocess": {"frames": 6, "size": 24},
                                                           "dataset_root": root, "format": "csv"}))
    run = tmp_path / "run"
    run.mkdir()
    ck = read_checkpoint(make_tiny_checkpoint(run / "best.pt", PRE, seq_len=6))
    ck.config["train"]["cache"] = str(a)
    save_checkpoint(ck, run / "best.pt")
    write_model_card(run, ck.config)
    assert prepare_evaluation(run / "best.pt", a, device="cpu").cross_dataset is None
    prepared = prepare_evaluation(run / "best.pt", b, device="cpu")
    assert prepared.split == "all"  # nothing of it was trained on
    assert prepared.cross_dataset == {"trained_on": "ffpp (csv)", "evaluated_on": "celeb (csv)"}
    for _ in range(2):  # evaluating again replaces the card's row
        assert main(["evaluate", str(run), str(b), "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["cross_dataset"]["evaluated_on"] == "celeb (csv)"
    assert any(n.startswith("cross-dataset: trained on ffpp (csv)") for n in metrics["notes"])
    card = (run / "MODEL_CARD.md").read_text()
    assert card.count("| celeb (csv) | all | 8 |") == 1 and "None yet." not in card


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A run whose validation split is large enough to fit a temperature (22 videos)."""
    from deepfake_detector.engine.trainer import fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cal")
    splits = {f"{k}-{i}": "test" for k in ("real", "fake") for i in range(52, 62)}
    cache = make_synthetic_cache(root / "cache", n_real=62, n_fake=62, seed=1, splits=splits, kind="flicker")
    cfg = TrainConfig(cache=str(cache), name="c", runs_dir=str(root / "runs"), epochs=2, batch_size=8,
                      lr=3e-3, seq_len=6, workers=0, device="cpu", seed=0,
                      model=ModelConfig(backbone="tiny", pretrained=False, hidden_size=16))
    summary = fit(cfg, progress=False)
    return root, cache, root / "runs" / "c", summary


def test_training_fits_a_temperature_on_validation_and_keeps_every_verdict(calibrated, tmp_path):
    root, cache, run, summary = calibrated
    best = read_checkpoint(run / "best.pt")
    cal = best.calibration
    assert cal and cal["temperature"] > 0
    assert cal["fitted_on"]["split"] == "val" and cal["fitted_on"]["n"] == 22
    assert cal["raw_threshold"] == best.threshold == summary["threshold"]
    assert {"ece_before", "ece_after", "brier_before", "brier_after"} <= set(cal)
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["calibration"]["applied"] and test["threshold"] == pytest.approx(cal["threshold"])
    assert "mapped by the calibration" in test["threshold_method"]
    assert test["score"] == "calibrated probability"
    val = json.loads((run / "val_metrics.json").read_text())
    assert val["calibration"]["applied"] and val["calibration"]["ece_after"] == pytest.approx(val["ece"])
    assert (run / "calibration.png").is_file()
    on = evaluate_checkpoint(run / "best.pt", cache, "test", device="cpu", progress=False)
    off = evaluate_checkpoint(run / "best.pt", cache, "test", device="cpu", progress=False, calibration=False)
    assert np.array_equal(on.p_fake >= on.threshold, off.p_fake >= off.threshold)
    assert on.metrics["confusion_matrix"] == off.metrics["confusion_matrix"]
    assert on.metrics["auc"] == off.metrics["auc"] and not np.allclose(on.p_fake, off.p_fake)
    assert off.metrics["calibration"] == {"applied": False, "why": "--no-calibration",
                                          "ece": off.metrics["ece"]}


def test_predict_applies_the_calibration_and_can_show_raw_scores(calibrated, tmp_path):
    from deepfake_detector.calibration import Calibration
    from deepfake_detector.inference import Detector
    from tests.helpers import make_video

    _, _, run, _ = calibrated
    video = make_video(tmp_path / "v.mp4", frames=12, size=(64, 48))
    on = Detector.from_checkpoint(run / "best.pt", device="cpu", workers=0)
    off = Detector.from_checkpoint(run / "best.pt", device="cpu", workers=0, calibration=False)
    cal = Calibration.from_dict(read_checkpoint(run / "best.pt").calibration)
    assert on.meta["calibration"] and off.meta["calibration"] is None and off.calibration is None
    assert on.threshold == pytest.approx(cal.threshold) and off.threshold == cal.raw_threshold
    a, b = on.predict_one(video), off.predict_one(video)
    assert a.p_fake == cal.apply(b.p_fake) and a.label == b.label


def test_the_calibrate_command_fits_on_other_videos_without_touching_weights(calibrated, tmp_path, capsys):
    from deepfake_detector.cli import main

    root, cache, run, _ = calibrated
    out = tmp_path / "recal.pt"
    assert main(["calibrate", str(run), str(cache), "--split", "all", "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on the all split: 124 videos" in printed
    assert "ECE" in printed and "verdicts unchanged" in printed
    before, after = read_checkpoint(run / "best.pt"), read_checkpoint(out)
    assert after.calibration["fitted_on"]["split"] == "all" and after.threshold == before.threshold
    assert all(torch.equal(before.model[k], after.model[k]) for k in before.model)
    assert (tmp_path / "calibration.png").is_file()
    a = evaluate_checkpoint(out, cache, "all", device="cpu", progress=False)
    b = evaluate_checkpoint(run / "best.pt", cache, "all", device="cpu", progress=False)
    assert np.array_equal(a.p_fake >= a.threshold, b.p_fake >= b.threshold)
    tiny = make_synthetic_cache(tmp_path / "tiny", n_real=3, n_fake=3)
    assert main(["calibrate", str(run / "best.pt"), str(tiny), "--split", "all", "--out", str(out),
                 "--device", "cpu"]) == 2
    assert "temperature scaling needs at least 20" in capsys.readouterr().err


def test_the_predict_command_says_whether_scores_are_calibrated(calibrated, tmp_path, capsys):
    from deepfake_detector.cli import main
    from tests.helpers import make_video

    _, _, run, _ = calibrated
    video = make_video(tmp_path / "v.mp4", frames=12, size=(64, 48))
    assert main(["predict", str(run / "best.pt"), str(video), "--device", "cpu", "--workers", "0",
                 "--output", str(tmp_path / "p.json")]) in (0, 1)
    assert "P(FAKE) is calibrated (temperature" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["calibration"]["method"] == "temperature"
    assert main(["predict", str(run / "best.pt"), str(video), "--device", "cpu", "--workers", "0",
                 "--no-calibration"]) in (0, 1)
    assert "P(FAKE) is an uncalibrated score, not a probability" in capsys.readouterr().out
