"""The bad-input corpus through predict: ``Detector.predict`` / ``predict_one``, the ``predict`` CLI and
the HTTP server. Every input gets exactly one row with a status and a message; bad files never end the
run; the CLI exits 1 when some video could not be scored."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_detector.config import PreprocessConfig
from deepfake_detector.utils import path_from_text
from tests.corpus import ALL_STATUSES, GOOD, build_corpus
from tests.helpers import make_tiny_checkpoint

PRE = PreprocessConfig(frames=8, size=32, detector="haar", timeout_s=30)
SEQ = 8


def make_checkpoint(path: Path, pre: PreprocessConfig = PRE, seed: int = 0) -> Path:
    """A real checkpoint in train's layout around a randomly initialised tiny model."""
    return make_tiny_checkpoint(path, pre, seq_len=SEQ, hidden_size=8, seed=seed, name="corpus")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    report: dict = {}
    items = build_corpus(tmp_path_factory.mktemp("corpus") / "data", detector=PRE.detector, report=report)
    return items


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def check_prediction(item, pred) -> None:
    assert pred.status in ALL_STATUSES, (item.name, pred)
    assert pred.status in item.expect, (item.name, pred.status, pred.error, item.note)
    assert "\n" not in pred.error and len(pred.error) < 600, (item.name, pred.error)
    if pred.status in GOOD:  # no_face is classified on the centre crop by default
        assert pred.p_fake is not None and 0.0 <= pred.p_fake <= 1.0, (item.name, pred)
        assert pred.label in ("REAL", "FAKE") and pred.frames >= 1
    else:
        assert pred.p_fake is None and pred.label == "", (item.name, pred)
        assert pred.error.strip(), f"{item.name}: status {pred.status} without a message"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_detector_predict_whole_corpus_in_one_call(corpus, ckpt):
    from deepfake_detector.inference import Detector

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=1, batch_size=4)
    names = list(corpus)
    preds = det.predict([corpus[n].path for n in names])
    assert len(preds) == len(names)
    for name, pred in zip(names, preds):
        assert pred.path == corpus[name].path  # input order, the caller's path (surrogates included)
        check_prediction(corpus[name], pred)


@pytest.mark.timeout(300)
def test_predict_one_every_corpus_item_in_process(corpus, ckpt):
    """The server's entry point: decoding in the calling process, never an exception."""
    from deepfake_detector.inference import Detector

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    for item in corpus.values():
        check_prediction(item, det.predict_one(item.path))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_predict_cli_rows_for_every_input_and_exit_code_1(corpus, ckpt, tmp_path):
    # a folder argument is searched for videos, so the corpus' "folder.mp4" is not a video input here
    items = [it for it in corpus.values() if it.name != "directory"]
    out = tmp_path / "results.csv"
    argv = [sys.executable, "-m", "deepfake_detector", "predict", str(ckpt),
            *[os.fsencode(it.path) for it in items], "--output", str(out), "--workers", "1",
            "--device", "cpu"]
    proc = subprocess.run(argv, capture_output=True, timeout=280, cwd=tmp_path)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    # the per-video rows say what went wrong; FFmpeg's own log lines ("[mov,mp4,... @ 0x...] moov atom
    # not found", from the OpenCV fallback reader) are noise the user cannot tie to a video
    noise = [ln for ln in text.splitlines() if re.match(r"\[[\w,.-]+ @ 0x[0-9a-f]+\]", ln)]
    assert not noise, noise[:5]
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(items), [r["path"] for r in rows]
    by_path = {path_from_text(r["path"]): r for r in rows}  # non-UTF-8 names are written as bytes:...
    for it in items:
        row = by_path.get(it.path)
        assert row is not None, f"{it.name}: no row for {it.path!r}"
        assert row["status"] in it.expect, (it.name, row)
        assert (row["p_fake"] != "") == (row["status"] in GOOD), (it.name, row)
        if row["status"] not in GOOD:
            assert row["error"], (it.name, row)
    # the JSON output holds the same rows and is strict JSON (no NaN)
    out_json = tmp_path / "results.json"
    two = [os.fsencode(corpus["zero_bytes"].path), os.fsencode(corpus["no_face"].path)]
    proc = subprocess.run(argv[:5] + [*two, "--output", str(out_json), "--workers", "0", "--device", "cpu"],
                          capture_output=True, timeout=200, cwd=tmp_path)
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert proc.returncode == 1 and [p["status"] for p in data["predictions"]] == ["unreadable", "no_face"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_answers_every_corpus_upload_without_a_500(corpus, ckpt, tmp_path):
    """Uploads of every corpus file: a video gets 200 + its status, a non-video 415, never a 500."""
    from fastapi.testclient import TestClient

    from deepfake_detector.inference import Detector
    from deepfake_detector.serve.app import create_app
    from deepfake_detector.serve.settings import ServeSettings

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    app = create_app(det, ServeSettings(tmp_dir=str(tmp_path), request_timeout_s=120))
    files = [it for it in corpus.values() if os.path.isfile(it.path) and os.access(it.path, os.R_OK)]
    with TestClient(app) as client:
        for it in files:
            with open(it.path, "rb") as fh:
                data = fh.read()
            name = os.path.basename(it.path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            r = client.post("/api/v1/predict", files={"file": (name, data, "video/mp4")})
            assert r.status_code in (200, 400, 415), (it.name, r.status_code, r.text[:500])
            body = r.json()
            if r.status_code == 200:
                assert body["status"] in it.expect, (it.name, body)
                assert (body["p_fake"] is not None) == (body["status"] in GOOD), (it.name, body)
            else:
                assert it.bad, (it.name, r.status_code, body)
                assert body.get("detail") or body.get("error"), (it.name, body)
        assert client.get("/healthz").status_code == 200
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not leftovers, leftovers  # every upload was deleted


@pytest.mark.timeout(300)
def test_explanations_for_every_scored_corpus_item(corpus, ckpt, tmp_path):
    """Heat-map strips for odd inputs too (1 frame, rotated, VFR, odd file names): an explanation
    failure never costs the verdict, and every scored video gets its PNG."""
    from deepfake_detector.inference import Detector

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    scored = [it for it in corpus.values() if it.usable]
    preds = det.predict([it.path for it in scored], explain_dir=tmp_path / "explain")
    missing = []
    for it, pred in zip(scored, preds):
        assert pred.p_fake is not None, (it.name, pred)
        if not pred.explanation or not Path(pred.explanation).is_file():
            missing.append(it.name)
            continue
        assert Path(pred.explanation).resolve().parent == (tmp_path / "explain").resolve()
        assert Path(pred.explanation).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not missing, f"no explanation written for: {missing}"
