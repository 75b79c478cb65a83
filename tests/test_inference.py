"""Detector / Prediction: same numbers as evaluate, failures as rows, safe checkpoint loading."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data.reference import legacy_preprocess_config
from deepfake_detector.errors import UnsafeFileError, UserError
from deepfake_detector.inference import PREDICTION_FIELDS, Detector, Prediction, label_for
from deepfake_detector.models import legacy as lg
from deepfake_detector.utils import sha256_file
from tests import helpers
from tests.helpers import OpenPayload, index_frame, make_bad_file, make_video

PRE = PreprocessConfig(frames=6, size=64, margin=0.3, detector="dlib")


def make_tiny_checkpoint(path: Path, pre: PreprocessConfig = PRE, seq_len: int = 6, threshold: float = 0.5,
                         seed: int = 0) -> Path:
    """A real checkpoint (train's layout) around a randomly initialised tiny-backbone model."""
    return helpers.make_tiny_checkpoint(path, pre, seq_len=seq_len, dropout=0.1, fc_scale=40.0,
                                        threshold=threshold, seed=seed, metrics={"val_auc": 0.75})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("videos")
    return {
        "face": make_video(d / "face.mp4", frames=24, size=(176, 144), face=True),
        "face2": make_video(d / "face 2 ü.mp4", frames=30, size=(160, 128), face=True),
        "noface": make_video(d / "noface.mp4", frames=20, size=(96, 80), face=False),
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def test_prediction_fields_and_labels():
    p = Prediction(path="x.mp4")
    assert list(p.to_dict()) == PREDICTION_FIELDS
    assert label_for(0.5, 0.5) == "FAKE" and label_for(0.4999, 0.5) == "REAL" and label_for(None, 0.5) == ""


def test_predict_equals_evaluate_on_the_cached_clip(tmp_path, videos, ckpt):
    from deepfake_detector.data.cache import load_manifest
    from deepfake_detector.data.dataset import ClipDataset
    from deepfake_detector.data.preprocess import run_preprocess
    from deepfake_detector.data.records import VideoRecord
    from deepfake_detector.engine.loop import evaluate

    names = ["face", "face2"]
    records = [VideoRecord(path=str(videos[n]), label="REAL", split="test", rel_path=f"{n}.mp4")
               for n in names]
    cache_dir = tmp_path / "cache"
    run_preprocess(records, cache_dir, PRE, workers=0, progress=False)
    rows = {r.path: r for r in load_manifest(cache_dir)}
    assert all(rows[f"{n}.mp4"].status == "ok" for n in names), rows
    ds = ClipDataset(cache_dir, [rows[f"{n}.mp4"] for n in names], seq_len=6, train=False)
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    ev = evaluate(det.model, loader, torch.device("cpu"), progress=False)
    preds = det.predict([videos[n] for n in names])
    assert [p.status for p in preds] == ["ok", "ok"]
    got = np.array([p.p_fake for p in preds])
    np.testing.assert_allclose(got, ev["p_fake"], atol=1e-5, rtol=0)
    assert abs(got[0] - got[1]) > 1e-4  # the two videos really differ (the check can fail)
    for p in preds:
        assert p.label == label_for(p.p_fake, det.threshold)
        assert p.frames == 6 and 0.5 <= p.face_ratio <= 1.0 and p.seconds > 0


def test_worker_pool_gives_the_same_results_and_order(tmp_path, videos, ckpt):
    bad = make_bad_file(tmp_path / "random.mp4", "random")
    paths = [videos["face"], bad, tmp_path / "missing.mp4", videos["noface"], videos["face2"]]
    inline = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=2).predict(paths)
    pooled = Detector.from_checkpoint(ckpt, device="cpu", workers=2, batch_size=2).predict(paths)
    assert [p.path for p in pooled] == [os.fspath(p) for p in paths]
    assert [p.status for p in pooled] == [p.status for p in inline]
    for a, b in zip(inline, pooled):
        assert (a.p_fake is None) == (b.p_fake is None)
        if a.p_fake is not None:
            assert abs(a.p_fake - b.p_fake) < 1e-5


def crashy_extract(path: str, cfg) -> object:
    """Runs in a decoding worker: dies like a segfaulting decoder on files named *crash*."""
    from deepfake_detector.data.preprocess import ClipResult

    if "crash" in os.path.basename(path):
        os._exit(139)
    return ClipResult(clip=None, status="ok", error="", frames=1)


def test_a_crashing_decoder_costs_one_row_not_the_run(tmp_path):
    from deepfake_detector.data.pool import IDLE
    from deepfake_detector.inference import _iter_extracted

    paths = [str(tmp_path / n) for n in ("a.mp4", "crash.mp4", "b.mp4", "c.mp4", "d.mp4")]
    got = {i: r for i, r in _iter_extracted(paths, PRE, workers=2, extract=crashy_extract) if i != IDLE}
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert got[1].status == "error" and "crashed" in got[1].error
    assert all(got[i].status == "ok" for i in (0, 2, 3, 4))


@pytest.mark.parametrize("kind", ["zero", "random", "png", "truncated", "audio", "text"])
def test_unreadable_videos_become_rows(tmp_path, ckpt, kind):
    bad = make_bad_file(tmp_path / f"bad_{kind}.mp4", kind)
    (pred,) = Detector.from_checkpoint(ckpt, device="cpu", workers=0).predict([bad])
    assert pred.p_fake is None and pred.label == ""
    assert pred.status not in ("ok", "no_face", "")
    assert pred.error


def test_awkward_but_valid_videos_and_links(tmp_path, ckpt):
    from fractions import Fraction

    one = make_video(tmp_path / "one_frame.mp4", frames=1, size=(176, 144), face=True)
    rotated = make_video(tmp_path / "rotated.mp4", frames=12, size=(176, 144), face=True, rotation=90)
    pts = [0, 10, 20, 100, 110, 300, 310, 320, 700, 710, 720, 900]  # variable frame rate
    vfr = make_video(tmp_path / "vfr.mp4", frames=12, size=(176, 144), face=True, pts=pts,
                     time_base=Fraction(1, 1000))
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    preds = det.predict([one, rotated, vfr, loop])
    assert [p.path for p in preds] == [str(one), str(rotated), str(vfr), str(loop)]
    for p in preds[:3]:
        # a verdict, or a clear per-video status; never an exception
        assert (p.p_fake is not None) or (p.status not in ("ok", "") and p.error), p
    assert preds[1].p_fake is not None and preds[2].p_fake is not None
    assert preds[3].status == "unreadable" and "link" in preds[3].error


def test_missing_and_directory_inputs(tmp_path, ckpt):
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    missing, folder = det.predict([tmp_path / "nope.mp4", tmp_path])
    assert missing.status == "missing" and missing.p_fake is None
    assert folder.status == "unreadable" and folder.p_fake is None


def test_no_face_center_is_scored_and_skip_is_not(videos, ckpt):
    center = Detector.from_checkpoint(ckpt, device="cpu", workers=0).predict_one(videos["noface"])
    assert center.status == "no_face" and center.p_fake is not None and center.label in ("REAL", "FAKE")
    assert center.face_ratio == 0.0
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0, no_face="skip")
    skip = det.predict_one(videos["noface"])
    assert skip.status == "no_face" and skip.p_fake is None and skip.label == "" and skip.error


def test_threshold_from_checkpoint_and_override(tmp_path, videos):
    path = make_tiny_checkpoint(tmp_path / "t.pt", threshold=0.0)
    det = Detector.from_checkpoint(path, device="cpu", workers=0)
    assert det.threshold == 0.0
    assert det.predict_one(videos["face"]).label == "FAKE"
    det1 = Detector.from_checkpoint(path, device="cpu", workers=0, threshold=1.0)
    p = det1.predict_one(videos["face"])
    assert p.label == ("FAKE" if p.p_fake >= 1.0 else "REAL")
    with pytest.raises(UserError, match="threshold"):
        Detector.from_checkpoint(path, device="cpu", threshold=1.5)


def test_info(ckpt):
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    info = det.info()
    assert info["sha256"] == sha256_file(ckpt)
    assert info["threshold"] == 0.5 and info["metrics"]["val_auc"] == 0.75
    assert info["config"]["model"]["backbone"] == "tiny" and info["seq_len"] == 6
    assert info["config"]["model"]["pretrained"] is False  # the stored config, untouched


def test_never_downloads_weights(ckpt, monkeypatch):
    import deepfake_detector.models.weights as weights

    def boom(*a, **k):
        raise AssertionError("predict must not fetch pretrained weights")

    for name in dir(weights):
        if name.startswith(("build_pretrained", "load_backbone", "fetch", "download")):
            monkeypatch.setattr(weights, name, boom)
    path = ckpt.parent / "pretrained_cfg.pt"
    obj = torch.load(ckpt, weights_only=True)
    obj["config"]["model"]["pretrained"] = True
    obj["config"]["model"]["weights_file"] = "/nonexistent/weights.pth"
    torch.save(obj, path)
    Detector.from_checkpoint(path, device="cpu", workers=0)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": OpenPayload(str(marker))}, path)
    with pytest.raises(UnsafeFileError):
        Detector.from_checkpoint(path, device="cpu")
    assert not marker.exists()
    raw = tmp_path / "evil.pkl.pt"  # a bare pickle stream (old torch.save format)
    raw.write_bytes(pickle.dumps(OpenPayload(str(marker))))
    with pytest.raises(UserError):
        Detector.from_checkpoint(raw, device="cpu")
    assert not marker.exists()


def test_bad_checkpoints_are_user_errors(tmp_path, ckpt):
    with pytest.raises(UserError, match="not found"):
        Detector.from_checkpoint(tmp_path / "nope.pt")
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(ckpt, weights_only=True)["model"], bare)
    with pytest.raises(UserError, match="config"):
        Detector.from_checkpoint(bare, device="cpu")
    wrong = tmp_path / "wrong.pt"
    obj = torch.load(ckpt, weights_only=True)
    obj["config"]["model"]["hidden_size"] = 32
    torch.save(obj, wrong)
    with pytest.raises(UserError, match="do not fit"):
        Detector.from_checkpoint(wrong, device="cpu")
    with pytest.raises(UserError, match="CUDA"):
        if torch.cuda.is_available():
            raise UserError("CUDA available: nothing to check")
        Detector.from_checkpoint(ckpt, device="cuda")


def test_corrupted_checkpoints_load_or_fail_with_one_clear_line(tmp_path, ckpt):
    data = ckpt.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "mutated.pt"
    outcomes = set()
    for k in range(24):
        buf = bytearray(data)
        if k % 3 == 0:
            buf = buf[: int(rng.integers(1, len(buf)))]  # truncated
        else:
            for pos in rng.integers(0, len(buf), 6):
                buf[pos] ^= 0xFF
        bad.write_bytes(bytes(buf))
        try:
            Detector.from_checkpoint(bad, device="cpu", workers=0)
            outcomes.add("loaded")
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc).strip()
            outcomes.add("refused")
    assert "refused" in outcomes


# --- legacy files through the Detector ----------------------------------------------------------------


def _tiny_legacy_file(path: Path, seed: int = 0):
    torch.manual_seed(seed)
    ref = lg.reference_model_class()(2, 64, 1, 16, False, trunk=lg._our_backbone("tiny")).eval()
    with torch.no_grad():
        ref.linear1.weight.mul_(40)
    torch.save(ref.state_dict(), path)
    return ref


def reference_input(video: Path, count: int) -> torch.Tensor:
    """The reference's predict-time input, written the way the reference wrote it (cv2 + PIL transforms)."""
    import cv2
    import dlib
    from torchvision import transforms

    detector = dlib.get_frontal_face_detector()  # what face_recognition.face_locations(frame) runs
    tf = transforms.Compose([transforms.ToPILImage(), transforms.Resize((112, 112)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        faces = [(max(r.top(), 0), min(r.right(), w), min(r.bottom(), h), max(r.left(), 0))
                 for r in detector(frame, 1)]
        try:
            top, right, bottom, left = faces[0]
            frame = frame[top:bottom, left:right, :]
        except IndexError:
            pass
        frames.append(tf(frame))
        if len(frames) == count:
            break
    cap.release()
    return torch.stack(frames).unsqueeze(0)


def test_legacy_file_autodetected_and_exact_mode_reproduces_reference(tmp_path, videos, caplog):
    path = tmp_path / "model_93_acc_4_frames_final_data.pt"
    ref = _tiny_legacy_file(path)
    with caplog.at_level(logging.WARNING):
        det = Detector.from_checkpoint(path, device="cpu", workers=0, legacy_mode="exact")
    assert "legacy" in caplog.text
    info = det.info()
    assert info["legacy"]["mode"] == "exact" and info["legacy"]["frames"] == 4 and det.seq_len == 4
    assert info["legacy"]["preprocess"] == "reference" and det.threshold == 0.5
    short = make_video(tmp_path / "short.mp4", frames=3, size=(176, 144), face=True)
    for video, n in ((videos["face"], 4), (short, 3)):
        pred = det.predict_one(video)
        assert pred.status == "ok" and pred.frames == n
        x = reference_input(video, 4)
        assert x.shape[1] == n
        with torch.no_grad():
            p_ref = float(torch.softmax(ref(x)[1], 1)[0, 0])  # reference: class 0 = FAKE
        assert abs(pred.p_fake - p_ref) < 1e-6, (video, pred.p_fake, p_ref)
    noface = det.predict_one(videos["noface"])  # the reference classified full frames
    assert noface.status == "no_face" and noface.p_fake is not None


def test_legacy_with_our_preprocessing(tmp_path, videos):
    from deepfake_detector.data.dataset import eval_transform
    from deepfake_detector.data.preprocess import extract_clip

    path = tmp_path / "legacy.pt"
    ref = _tiny_legacy_file(path)
    det = Detector.from_checkpoint(path, device="cpu", workers=0, legacy=True, legacy_mode="exact",
                                   legacy_frames=4, legacy_preprocess="ours")
    pred = det.predict_one(videos["face"])
    res = extract_clip(videos["face"], legacy_preprocess_config(4))
    x = eval_transform(np.ascontiguousarray(res.clip[..., ::-1]), 4).unsqueeze(0)  # BGR, as the reference
    with torch.no_grad():
        p_ref = float(torch.softmax(ref(x)[1], 1)[0, 0])
    assert abs(pred.p_fake - p_ref) < 1e-6
    fixed = Detector.from_checkpoint(path, device="cpu", workers=0, legacy=True, legacy_frames=4)
    assert fixed.info()["legacy"]["mode"] == "fixed" and fixed.info()["legacy"]["preprocess"] == "ours"
    assert fixed.predict_one(videos["face"]).p_fake is not None


def test_legacy_flags_are_checked(tmp_path, ckpt):
    path = tmp_path / "legacy.pt"
    _tiny_legacy_file(path)
    with pytest.raises(UserError, match="--legacy"):
        Detector.from_checkpoint(path, device="cpu", legacy=False)
    with pytest.raises(UserError, match="not a reference"):
        Detector.from_checkpoint(ckpt, device="cpu", legacy=True)
    with pytest.raises(UserError, match="legacy mode"):
        Detector.from_checkpoint(path, device="cpu", legacy_mode="approximate")
    with pytest.raises(UserError, match="legacy preprocessing"):
        Detector.from_checkpoint(path, device="cpu", legacy_preprocess="mine")


def test_index_frame_helper_still_has_no_face():
    # guards the no-face fixture: if index frames ever looked like faces the no_face test would lie
    assert index_frame(3, (96, 80)).shape == (80, 96, 3)


# --- torch.compile -------------------------------------------------------------------------------


def test_compiled_detector_gives_the_eager_numbers_with_padded_batch_buckets(tmp_path, videos, ckpt):
    paths = [videos["face"], videos["face2"], videos["noface"]]
    eager = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=4)
    fast = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=4, compile=True)
    seen = []
    real_net = fast._net
    fast._net = lambda x: (seen.append(int(x.shape[0])), real_net(x))[1]
    fast._net_checked = False
    want = [p.p_fake for p in eager.predict(paths)]
    got = [p.p_fake for p in fast.predict(paths)]
    assert fast.info()["compiled"] and fast._net is not fast.model  # it did compile
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert seen == [4]  # 3 clips padded to the next power of two; the padding's scores are dropped
    (one,) = fast.predict([videos["face"]])
    assert seen[-1] == 1 and abs(one.p_fake - want[0]) < 1e-5


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(videos, ckpt, monkeypatch, caplog):
    def broken_compile(model, **kw):
        def call(x):
            raise RuntimeError("backend compiler failed: no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0, compile=True)
    with caplog.at_level(logging.WARNING):
        got = det.predict([videos["face"], videos["face2"]])
    assert [p.status for p in got] == ["ok", "ok"]
    np.testing.assert_allclose([p.p_fake for p in got], [p.p_fake for p in eager.predict(
        [videos["face"], videos["face2"]])], atol=1e-6)
    assert caplog.text.count("torch.compile failed") == 1 and "no C++ compiler" in caplog.text


# --- thread safety (serve's worker threads share one Detector) -------------------------------------


def test_predict_one_from_several_threads_gives_the_sequential_numbers(tmp_path, videos, ckpt):
    """``serve --workers N`` calls ``predict_one`` from N threads on one Detector: face detectors and
    decoders are per thread, the eager model is shared read-only; the numbers must not change."""
    from concurrent.futures import ThreadPoolExecutor

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    legacy_path = tmp_path / "legacy_4_frames.pt"
    _tiny_legacy_file(legacy_path)
    exact = Detector.from_checkpoint(legacy_path, device="cpu", workers=0, legacy=True, legacy_mode="exact")
    paths = [videos["face"], videos["face2"], videos["noface"]]
    for d in (det, exact):  # the reference preprocessing's dlib detector is per thread too (no lock)
        expected = {str(p): d.predict_one(p) for p in paths}
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(d.predict_one, paths * 3))
        for pred in got:
            want = expected[pred.path]
            assert pred.status == want.status and pred.frames == want.frames
            assert pred.p_fake == pytest.approx(want.p_fake, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# long videos by segments; checkpoints trained on snippet clips
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """4 s of a real face at 25 fps."""
    return make_video(tmp_path_factory.mktemp("long") / "long.mp4", frames=100, size=(176, 144), face=True)


def test_segments_score_each_window_and_the_video_gets_the_highest(long_video, ckpt):
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=3)
    p = det.predict_one(long_video, segments=1.0)
    assert p.status in ("ok", "no_face") and p.segment_seconds == 1.0
    assert [(s["start"], s["end"]) for s in p.segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    scores = [s["p_fake"] for s in p.segments]
    assert all(v is not None and 0.0 <= v <= 1.0 for v in scores)
    assert p.p_fake == max(scores) and p.label == ("FAKE" if p.p_fake >= det.threshold else "REAL")
    assert all(s["frames"] == 6 for s in p.segments) and p.frames == 24
    assert len(set(scores)) > 1  # the windows really are different clips
    d = p.to_dict()
    assert list(d) == PREDICTION_FIELDS + ["segments", "segment_seconds"]
    # each window is exactly the clip a video of that window alone would give: one window = plain predict
    plain = det.predict_one(long_video)
    whole = det.predict_one(long_video, segments=True)  # 10 s windows: one window, the whole video
    assert len(whole.segments) == 1 and whole.p_fake == pytest.approx(plain.p_fake, abs=1e-6)
    assert "segments" not in plain.to_dict() and plain.segments == []


def test_segments_are_bounded_and_the_result_says_how_wide(long_video, ckpt):
    from deepfake_detector.config import SegmentConfig

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    p = det.predict_one(long_video, segments=SegmentConfig(seconds=0.5, max_segments=3))
    assert len(p.segments) == 3 and p.segment_seconds == pytest.approx(4 / 3, abs=1e-3)
    assert p.segments[-1]["end"] == pytest.approx(4.0) and p.p_fake == max(s["p_fake"] for s in p.segments)
    for bad in ("ten", -1.0, 0):
        with pytest.raises(UserError, match="segments"):
            det.predict_one(long_video, segments=bad)


def test_segments_through_the_worker_pool_and_failures(tmp_path, long_video, videos, ckpt):
    bad = make_bad_file(tmp_path / "random.mp4", "random")
    paths = [long_video, bad, tmp_path / "missing.mp4", videos["noface"]]
    inline = Detector.from_checkpoint(ckpt, device="cpu", workers=0).predict(paths, segments=2.0)
    pooled = Detector.from_checkpoint(ckpt, device="cpu", workers=2).predict(paths, segments=2.0)
    assert [p.status for p in inline] == [p.status for p in pooled]
    assert inline[0].segments == pooled[0].segments and len(inline[0].segments) == 2
    assert inline[1].p_fake is None and inline[1].segments == [] and inline[2].status == "missing"
    assert inline[3].status == "no_face" and inline[3].p_fake is not None  # centre crops, scored per window
    skip = Detector.from_checkpoint(ckpt, device="cpu", workers=0, no_face="skip")
    unscored = skip.predict_one(videos["noface"], segments=True)
    assert unscored.status == "no_face" and unscored.p_fake is None and unscored.error


def test_segments_explain_the_top_window(tmp_path, long_video, ckpt):
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    p = det.predict_one(long_video, explain_dir=tmp_path / "ex", segments=2.0)
    assert p.p_fake == max(s["p_fake"] for s in p.segments)
    assert p.explanation and Path(p.explanation).is_file()


def test_a_checkpoint_trained_on_snippets_predicts_with_snippets(tmp_path, videos):
    from deepfake_detector.inference import extract_video

    pre = PreprocessConfig(frames=6, size=64, detector="dlib", sampling="snippets", snippet_len=3)
    det = Detector.from_checkpoint(make_tiny_checkpoint(tmp_path / "s.pt", pre), device="cpu", workers=0)
    assert det.preprocess.sampling == "snippets" and det.clip_config().snippet_len == 3
    res = extract_video(os.fspath(videos["face"]), det.clip_config())
    assert res.indices == [6, 7, 8, 18, 19, 20]  # two runs of 3 consecutive frames across 24 frames
    assert det.predict_one(videos["face"]).p_fake is not None
    # a checkpoint from before samplers (no such keys) predicts with the even sampler it was trained on
    obj = torch.load(make_tiny_checkpoint(tmp_path / "old.pt"), weights_only=True)
    for key in ("sampling", "snippet_len"):
        obj["config"]["preprocess"].pop(key)
    torch.save(obj, tmp_path / "old.pt")
    old = Detector.from_checkpoint(tmp_path / "old.pt", device="cpu", workers=0)
    assert old.preprocess.sampling == "even"
