"""Explanations: Grad-CAM heat maps point at the evidence, leave-one-out bars add up, PNGs are safe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from deepfake_detector.explain import explain_clip, explanation_filename, render_strip
from deepfake_detector.inference import Detector
from tests.helpers import make_video
from tests.test_inference import make_tiny_checkpoint


class BrightnessModel(nn.Module):
    """A hand-made detector whose FAKE evidence is the brightness of the first channel.

    ``backbone`` keeps the spatial layout (one channel = input channel 0, pooled 4x), so the
    Grad-CAM map must light up exactly where the frame is bright; the head gives frame ``t`` weight
    ``w[t]`` so leave-one-out contributions are predictable.
    """

    def __init__(self, frame_weights) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.AvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.w = torch.tensor(frame_weights, dtype=torch.float32)

    def head(self, feats: torch.Tensor) -> torch.Tensor:  # [B, T, 3] -> [B, 2]
        t = feats.shape[1]
        w = self.w[:t] if t == len(self.w) else torch.ones(t) * self.w.mean()
        score = (feats[..., 0] * w).mean(dim=1) * 4.0
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_gradcam_lights_up_the_region_that_raised_the_fake_score():
    x = torch.zeros(3, 3, 32, 32)
    x[:, 0, 2:10, 20:30] = 1.0  # bright patch, top right, in every frame
    model = BrightnessModel([1.0, 1.0, 1.0])
    expl = explain_clip(model, x)
    assert expl.cams.shape == (3, 32, 32)
    assert expl.cams.min() >= 0.0 and expl.cams.max() <= 1.0 + 1e-6
    cam = expl.cams[0]
    inside = cam[2:10, 20:30].mean()
    outside = np.concatenate([cam[16:, :].ravel(), cam[:, :12].ravel()]).mean()
    assert inside > 0.5 and outside < 0.1
    assert 0.5 < expl.p_fake < 1.0


def test_leave_one_out_contributions_match_rerunning_without_the_frame():
    from deepfake_detector.config import ModelConfig
    from deepfake_detector.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny", hidden_size=8, pretrained=False)
    model = build_model(cfg, load_weights=False).eval()
    with torch.no_grad():
        model.fc.weight.mul_(30)
    x = torch.randn(4, 3, 32, 32)
    expl = explain_clip(model, x)
    with torch.no_grad():
        p_full = float(torch.softmax(model(x.unsqueeze(0)), 1)[0, 1])
        for t in range(4):
            keep = torch.cat([x[:t], x[t + 1:]]).unsqueeze(0)
            p_wo = float(torch.softmax(model(keep), 1)[0, 1])
            assert abs(expl.contributions[t] - (p_full - p_wo)) < 1e-5
    assert abs(expl.p_fake - p_full) < 1e-5
    assert np.abs(expl.contributions).max() > 1e-4  # frames really matter: the check can fail


def test_explanation_filenames_are_safe_and_unique():
    a = explanation_filename("/data/a/clip 1.mp4")
    b = explanation_filename("/data/b/clip 1.mp4")
    assert a != b and a.endswith(".png") and a.startswith("clip_1-")
    for hostile in ["../../etc/passwd", "/x/..mp4", "/x/\u00e9t\u00e9 \U0001f600.mov", "a" * 500 + ".mp4",
                    "/x/\udcff\udcfe.mp4"]:
        name = explanation_filename(hostile)
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert len(name) < 100 and name.isascii()


def test_render_strip_writes_a_png_atomically(tmp_path):
    import cv2

    from deepfake_detector.explain import Explanation

    t = 12  # more than one row
    crops = np.random.default_rng(0).integers(0, 255, (t, 48, 48, 3), dtype=np.uint8)
    cams = np.random.default_rng(1).random((t, 48, 48)).astype(np.float32)
    expl = Explanation(p_fake=0.8, cams=cams, contributions=np.linspace(-0.1, 0.2, t), p_without=np.zeros(t))
    out = render_strip(tmp_path / "sub" / "x.png", crops, expl, title="FAKE  P(FAKE) = 0.800", label="FAKE")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 600
    assert [p.name for p in out.parent.iterdir()] == ["x.png"]  # no temporary files left behind


def test_predict_with_explain_dir(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "best.pt")
    video = make_video(tmp_path / "my video (1).mp4", frames=24, size=(176, 144), face=True)
    out_dir = tmp_path / "explain"
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    (pred,) = det.predict([video], explain_dir=out_dir)
    assert pred.status == "ok" and pred.explanation
    path = Path(pred.explanation)
    assert path.parent == out_dir and path.name == explanation_filename(os.fspath(video))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # unscored videos get no explanation
    (bad,) = det.predict([tmp_path / "missing.mp4"], explain_dir=out_dir)
    assert bad.explanation is None


@pytest.mark.parametrize("frames", [1, 3])
def test_short_clips_explain(frames):
    model = BrightnessModel([1.0] * frames)
    expl = explain_clip(model, torch.rand(frames, 3, 16, 16))
    assert expl.cams.shape == (frames, 16, 16) and expl.contributions.shape == (frames,)


# --- explanations that cannot be written ----------------------------------------------------------------


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory) -> tuple[Path, list[Path]]:
    d = tmp_path_factory.mktemp("explain_fail")
    ckpt = make_tiny_checkpoint(d / "best.pt")
    vids = [make_video(d / f"v{i}.mp4", frames=12 + 2 * i, size=(176, 144), face=True) for i in range(3)]
    return ckpt, vids


def _failing_writer(monkeypatch, exc: BaseException) -> list:
    """Make every PNG write raise ``exc``; returns the list of attempted paths."""
    import deepfake_detector.explain as ex

    calls: list = []

    def write(path, data):
        calls.append(path)
        raise exc

    monkeypatch.setattr(ex, "atomic_write_bytes", write)
    return calls


def _explain_warnings(caplog) -> list:
    return [r for r in caplog.records if r.name == "deepfake_detector.inference" and r.levelname == "WARNING"]


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_a_full_or_read_only_folder_stops_explaining_once_and_keeps_the_verdicts(
        tmp_path, three_videos, monkeypatch, caplog, code):
    import errno

    ckpt, vids = three_videos
    num = getattr(errno, code)
    calls = _failing_writer(monkeypatch, OSError(num, os.strerror(num)))
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=2)  # two batches
    with caplog.at_level("WARNING"):
        preds = det.predict(vids, explain_dir=tmp_path / "ex")
    assert [p.status for p in preds] == ["ok"] * 3 and all(p.p_fake is not None for p in preds)
    assert all(p.explanation is None for p in preds)
    assert len(calls) == 1  # no Grad-CAM rendered for the videos after the first failure
    warnings = _explain_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("explanations stopped: cannot write to ")
    assert warnings[0].exc_info is None  # one line, no traceback
    if code == "ENOSPC":
        assert "(disk full?)" in warnings[0].getMessage()
    # the next predict call tries again (the folder may have room by now)
    caplog.clear()
    with caplog.at_level("WARNING"):
        det.predict(vids[:1], explain_dir=tmp_path / "ex")
    assert len(calls) == 2 and len(_explain_warnings(caplog)) == 1


def test_other_os_errors_warn_per_video_without_traceback(tmp_path, three_videos, monkeypatch, caplog):
    import errno

    ckpt, vids = three_videos
    calls = _failing_writer(monkeypatch, OSError(errno.ENOENT, "No such file or directory"))
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    with caplog.at_level("WARNING"):
        preds = det.predict(vids, explain_dir=tmp_path / "ex")
    assert all(p.p_fake is not None and p.explanation is None for p in preds)
    assert len(calls) == 3
    warnings = _explain_warnings(caplog)
    assert len(warnings) == 3 and all(w.exc_info is None for w in warnings)
    assert all(w.getMessage().startswith("could not write the explanation for ") for w in warnings)


def test_a_bug_while_explaining_keeps_its_traceback(tmp_path, three_videos, monkeypatch, caplog):
    ckpt, vids = three_videos
    _failing_writer(monkeypatch, ValueError("a bug"))
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    with caplog.at_level("WARNING"):
        (pred,) = det.predict(vids[:1], explain_dir=tmp_path / "ex")
    assert pred.p_fake is not None and pred.explanation is None
    (warning,) = _explain_warnings(caplog)
    assert warning.exc_info is not None


# --- several faces (--max-faces N): one strip per face ------------------------------------------------


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A two-person video (the tracker finds both with haar) and tiny checkpoints for 1 and 2 faces."""
    from tests.data.test_tracks import FRAMES, _cfg, _two_person_frames, _write_video
    from tests.helpers import make_tiny_checkpoint as tiny

    d = tmp_path_factory.mktemp("two_faces")
    video = _write_video(d / "two people.mp4", _two_person_frames())
    one = tiny(d / "one.pt", _cfg(1), seq_len=FRAMES, hidden_size=8, fc_scale=50.0)
    two = tiny(d / "two.pt", _cfg(2), seq_len=FRAMES, hidden_size=8, fc_scale=50.0)
    return video, one, two


def _is_png(path) -> bool:
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_face_gets_its_own_strip(tmp_path, two_faces):
    video, _, ckpt = two_faces
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    (pred,) = det.predict([video], explain_dir=tmp_path / "ex")
    assert pred.scored and [f["track"] for f in pred.faces] == [0, 1]
    names = [explanation_filename(os.fspath(video), face=k) for k in (0, 1)]
    assert names[0].endswith("_face0.png") and names[1].endswith("_face1.png")
    assert pred.explanation == [os.fspath(tmp_path / "ex" / n) for n in names]
    assert [f["explanation"] for f in pred.faces] == pred.explanation
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == sorted(names)
    assert all(_is_png(p) for p in pred.explanation)
    a, b = (Path(p).read_bytes() for p in pred.explanation)
    assert a != b  # two faces, two crops, two strips
    # the verdict and the face scores do not depend on explaining
    plain = det.predict_one(video)
    assert plain.explanation is None and "explanation" not in plain.faces[0]
    assert [f["p_fake"] for f in plain.faces] == pytest.approx([f["p_fake"] for f in pred.faces])


def test_one_face_keeps_todays_strip_and_name(tmp_path, two_faces):
    video, ckpt, _ = two_faces
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    (pred,) = det.predict([video], explain_dir=tmp_path / "ex")
    assert pred.faces == [] and isinstance(pred.explanation, str)
    assert Path(pred.explanation).name == explanation_filename(os.fspath(video))
    assert [p.name for p in (tmp_path / "ex").iterdir()] == [explanation_filename(os.fspath(video))]


def test_a_face_whose_strip_fails_keeps_the_others(tmp_path, two_faces, monkeypatch, caplog):
    import errno

    import deepfake_detector.explain as ex

    video, _, ckpt = two_faces
    real = ex.atomic_write_bytes

    def write(path, data):
        if Path(path).name.endswith("_face1.png"):
            raise OSError(errno.ENOENT, "No such file or directory")
        return real(path, data)

    monkeypatch.setattr(ex, "atomic_write_bytes", write)
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    with caplog.at_level("WARNING"):
        (pred,) = det.predict([video], explain_dir=tmp_path / "ex")
    assert pred.scored and len(pred.faces) == 2
    assert pred.faces[1]["explanation"] is None and pred.explanation == [pred.faces[0]["explanation"]]
    assert len(_explain_warnings(caplog)) == 1


def test_predict_cli_writes_and_lists_every_faces_strip(tmp_path, two_faces, capsys):
    import csv
    import json

    from tests.helpers import run_cli_in_process

    video, ckpt, _ = two_faces
    out_csv, out_json, ex_dir = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "ex"
    common = ("predict", ckpt, video, "--workers", "0", "--device", "cpu", "--max-faces", "2",
              "--explain", ex_dir)
    r = run_cli_in_process(capsys, *common, "--output", out_csv)
    assert r.returncode == 0, r.stderr
    assert "2 explanation(s) written to" in r.stdout
    with open(out_csv, newline="") as fh:
        row = next(csv.DictReader(fh))
    files = json.loads(row["explanation"])
    faces = json.loads(row["faces"])
    assert [Path(f).name for f in files] == [explanation_filename(os.fspath(video), face=k) for k in (0, 1)]
    assert [f["explanation"] for f in faces] == files and all(_is_png(f) for f in files)
    assert run_cli_in_process(capsys, *common, "--output", out_json).returncode == 0
    (pred,) = json.loads(out_json.read_text())["predictions"]
    assert pred["explanation"] == files and [f["explanation"] for f in pred["faces"]] == files


def test_serve_returns_every_faces_strip_inline(tmp_path, two_faces):
    import base64

    from fastapi.testclient import TestClient

    from deepfake_detector.serve import ServeSettings, create_app

    video, _, ckpt = two_faces
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    (tmp_path / "serve").mkdir()
    app = create_app(det, ServeSettings(tmp_dir=str(tmp_path / "serve"), warmup=False))
    with TestClient(app) as client:
        for explain in (True, False):
            with open(video, "rb") as fh:
                r = client.post("/api/v1/predict" + ("?explain=true" if explain else ""),
                                files={"file": (video.name, fh, "video/mp4")})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [f["track"] for f in body["faces"]] == [0, 1]
            assert all("explanation" not in f for f in body["faces"])  # never a server path
            if not explain:
                assert "explanation_png" not in body
                assert all("explanation_png" not in f for f in body["faces"])
                continue
            pngs = [base64.b64decode(f["explanation_png"]) for f in body["faces"]]
            assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs) and pngs[0] != pngs[1]
            assert base64.b64decode(body["explanation_png"]) == pngs[0]  # the main face's, as before
