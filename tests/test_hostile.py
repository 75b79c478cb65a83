"""Hostile files across stages: code-execution payloads in pickles and checkpoints are refused without
running (the planted marker file never appears), paths that escape the dataset root are refused, and
malformed metadata gives one clear ``error:`` line, never a traceback.

Every payload is first proven live: a plain ``pickle.loads`` of the same bytes does create its marker.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_detector.data.sources import load_records
from deepfake_detector.errors import UnsafeFileError, UserError
from tests.helpers import (
    ExecPayload,
    MkdirPayload,
    SystemPayload,
    run_cli,
    run_cli_in_process,
)

REPO = Path(__file__).resolve().parents[1]


PAYLOADS = (MkdirPayload, ExecPayload, SystemPayload)


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 (user error), an ``error:`` line, no traceback."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, (proc.returncode, text[-2000:])
    assert "Traceback" not in text, text[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]


def prove_live(blob: bytes, marker: Path) -> None:
    """The payload really executes under a plain unpickler (so the refusal tests can fail)."""
    assert not marker.exists()
    pickle.loads(blob)
    assert marker.exists(), "payload did not run under plain pickle: the test would prove nothing"
    if marker.is_dir():
        marker.rmdir()
    else:
        marker.unlink()


# --------------------------------------------------------------------------------------------------
# Pickled video list (legacy layout)
# --------------------------------------------------------------------------------------------------


def make_legacy_root(root: Path, blob: bytes) -> Path:
    (root / "Models").mkdir(parents=True)
    (root / "Data").mkdir()
    (root / "videos").mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"\x00" * 16)
    (root / "Data" / "Gobal_metadata.csv").write_text("a.mp4,REAL\n")
    (root / "Models" / "video_files.pkl").write_bytes(blob)
    return root


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_pickled_video_list_payload_is_refused_by_load_records(tmp_path, payload):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(["/content/videos/a.mp4", payload(marker)], protocol=2)
    prove_live(blob, marker)
    root = make_legacy_root(tmp_path / "ds", blob)
    with pytest.raises(UnsafeFileError):
        load_records(root, "legacy")
    with pytest.raises(UnsafeFileError):
        load_records(root)  # auto-detected as legacy
    assert not marker.exists()


def test_pickled_video_list_payload_is_refused_by_the_preprocess_cli(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps([ExecPayload(marker)])
    prove_live(blob, marker)
    root = make_legacy_root(tmp_path / "ds", blob)
    proc = run_cli("preprocess", str(root), "--out", str(tmp_path / "cache"), "--detector", "center",
                   "--workers", "0", "--no-progress", cwd=tmp_path)
    assert_one_error_line(proc, "refused")
    assert not marker.exists()
    assert not (tmp_path / "cache" / "manifest.csv").exists()


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def poisoned_checkpoint(path: Path, marker: Path, payload=ExecPayload, zip_format: bool = True) -> Path:
    """A checkpoint that looks like train's output but carries a payload next to the weights."""
    from deepfake_detector.config import ModelConfig, PreprocessConfig, TrainConfig, to_dict
    from deepfake_detector.models import build_model

    mcfg = ModelConfig(backbone="tiny", hidden_size=8, pretrained=False)
    model = build_model(mcfg, load_weights=False)
    obj = {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1,
           "config": {"train": to_dict(TrainConfig(cache="c", name="x", model=mcfg)), "model": to_dict(mcfg),
                      "preprocess": to_dict(PreprocessConfig(detector="center"))},
           "metrics": {"note": payload(marker)}, "threshold": 0.5, "version": "x", "rng": {}}
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-tar"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_checkpoint_payload_is_refused_by_every_loader(tmp_path, payload, zip_format):
    from deepfake_detector.checkpoint import load_checkpoint
    from deepfake_detector.inference import Detector

    marker = tmp_path / "pwned"
    path = poisoned_checkpoint(tmp_path / "best.pt", marker, payload, zip_format)
    # the payload is live: a plain torch.load (weights_only=False) would run it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.rmdir() if marker.is_dir() else marker.unlink()
    with pytest.raises(UnsafeFileError):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError):
        Detector.from_checkpoint(path, device="cpu", workers=0)
    assert not marker.exists()
    # the same file given as backbone weights (--weights-file)
    from deepfake_detector.config import ModelConfig
    from deepfake_detector.models import build_model

    with pytest.raises(UnsafeFileError):
        build_model(ModelConfig(backbone="tiny", pretrained=False, hidden_size=8, weights_file=str(path)))
    assert not marker.exists()


def test_raw_pickle_payload_named_pt_is_refused(tmp_path):
    from deepfake_detector.checkpoint import load_checkpoint
    from deepfake_detector.inference import Detector

    marker = tmp_path / "pwned"
    blob = pickle.dumps({"model": {}, "x": SystemPayload(marker)})
    prove_live(blob, marker)
    path = tmp_path / "model.pt"
    path.write_bytes(blob)
    for load in (load_checkpoint, lambda p: Detector.from_checkpoint(p, device="cpu", workers=0)):
        with pytest.raises(UserError):
            load(path)
        assert not marker.exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_checkpoint_payload_is_refused_by_predict_evaluate_serve_and_resume(tmp_path, capsys):
    from tests.cache_helpers import make_synthetic_cache
    from tests.helpers import make_video

    marker = tmp_path / "pwned"
    ckpt = poisoned_checkpoint(tmp_path / "best.pt", marker)
    video = make_video(tmp_path / "v.mp4", frames=8, size=(64, 64), face=False)
    proc = run_cli_in_process(capsys, "predict", ckpt, video, "--workers", "0", "--device", "cpu")
    assert_one_error_line(proc, "refus")
    assert not marker.exists()
    cache = make_synthetic_cache(tmp_path / "cache", n_real=2, n_fake=2)
    proc = run_cli_in_process(capsys, "evaluate", ckpt, cache, "--device", "cpu")
    assert_one_error_line(proc, "refused")
    assert not marker.exists()
    # serve must refuse before it ever binds a port (a hang here would mean it started serving)
    proc = run_cli("serve", str(ckpt), "--port", "0", "--device", "cpu", cwd=tmp_path, timeout=120)
    assert_one_error_line(proc, "refus")
    assert not marker.exists()
    # a poisoned last.pt in a run folder: --resume refuses it
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    poisoned_checkpoint(run / "last.pt", marker)
    proc = run_cli_in_process(capsys, "train", cache, "--name", "r", "--runs-dir", tmp_path / "runs",
                              "--resume", "--device", "cpu", "--backbone", "tiny", "--no-pretrained")
    assert_one_error_line(proc, "refused")
    assert not marker.exists()


def test_cached_clip_with_a_pickled_object_array_is_refused(tmp_path):
    """A shared cache is data from someone else too: clips load with allow_pickle=False."""
    from deepfake_detector.data.cache import load_clip

    marker = tmp_path / "pwned"
    clip = tmp_path / "clips" / "ab" / "evil.npy"
    clip.parent.mkdir(parents=True)
    np.save(clip, np.array([ExecPayload(marker), 1], dtype=object), allow_pickle=True)
    np.load(clip, allow_pickle=True)  # live under a permissive load
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError):
        load_clip(tmp_path, "clips/ab/evil.npy")
    assert not marker.exists()


def test_manifest_clip_paths_cannot_leave_the_cache(tmp_path):
    """A manifest row naming ``../x.npy`` or an absolute path must not be read from outside the cache."""
    from deepfake_detector.data.cache import load_clip

    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((2, 16, 16, 3), np.uint8))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    for rel in ("../outside.npy", str(outside)):
        with pytest.raises((ValueError, UserError, OSError)):
            load_clip(cache_dir, rel)


# --------------------------------------------------------------------------------------------------
# Paths escaping the dataset root and malformed metadata
# --------------------------------------------------------------------------------------------------


def test_shipped_metadata_stays_in_its_root_user_lists_may_name_any_regular_file(tmp_path):
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"x")
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"x")
    escapes = ["../secret.mp4", str(secret), "sub/../../secret.mp4", "./sub/../../secret.mp4"]
    # DFDC metadata.json ships with a downloaded dataset: every escape refused, the flag named
    meta = {"a.mp4": {"label": "REAL"}, **{e: {"label": "FAKE"} for e in escapes}}
    (root / "metadata.json").write_text(json.dumps(meta))
    res = load_records(root / "metadata.json", "dfdc")
    assert [r.rel_path for r in res.records] == ["a.mp4"]
    refused = [str(p) for p in res.problems if "outside" in str(p)]
    assert len(refused) == len(escapes) and all("--data-root" in r for r in refused)
    # a CSV is the user's own list: the same file by any spelling, once (the rest are duplicates)
    (root / "labels.csv").write_text("file,label\na.mp4,REAL\n" + "".join(f"{e},FAKE\n" for e in escapes))
    res = load_records(root / "labels.csv", "csv")
    assert [r.rel_path for r in res.records] == ["a.mp4", str(secret)]
    assert [p.kind for p in res.problems] == ["duplicate"] * (len(escapes) - 1)
    # special files are refused from any list, with the fix named
    (root / "special.csv").write_text("file,label\n/proc/self/environ,FAKE\n/dev/zero,FAKE\nsub,FAKE\n")
    res = load_records(root / "special.csv", "csv")
    assert not res.records and [p.kind for p in res.problems] == ["refused"] * 3
    # the legacy pickle: entries that exist as written are used; others only by name under the root
    blob = pickle.dumps([str(secret), "/content/a.mp4"])
    legacy = make_legacy_root(tmp_path / "legacy", blob)
    (legacy / "Data" / "Gobal_metadata.csv").write_text("a.mp4,REAL\nsecret.mp4,FAKE\n")
    res = load_records(legacy, "legacy")
    assert sorted(os.path.basename(r.path) for r in res.records) == ["a.mp4", "secret.mp4"]
    assert res.problems == []


@pytest.mark.timeout(180)
def test_preprocess_cli_never_follows_shipped_metadata_outside_the_root(tmp_path):
    from tests.helpers import make_video

    root = tmp_path / "ds"
    make_video(root / "a.mp4", frames=8, size=(64, 64), face=False)
    make_video(tmp_path / "secret.mp4", frames=8, size=(64, 64), face=False)
    (root / "metadata.json").write_text(json.dumps({
        "a.mp4": {"label": "REAL"}, "../secret.mp4": {"label": "FAKE"},
        f"{tmp_path}/secret.mp4": {"label": "FAKE"}}))
    out = tmp_path / "cache"
    proc = run_cli("preprocess", str(root / "metadata.json"), "--out", str(out), "--detector", "center",
                   "--frames", "4", "--size", "32", "--workers", "0", "--no-progress", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in text, text[-2000:]
    assert text.count("outside the dataset root") == 2 and "--data-root" in text, text
    manifest = (out / "manifest.csv").read_text()
    assert "secret" not in manifest and "a.mp4" in manifest


BAD_TABLES = {
    "missing_label_column.csv": ("file\na.mp4\n", "label"),
    "binary_garbage.csv": ("\x00\x01\x02,\xff\xfe\n", "column"),
    "json_list.json": ("[1, 2, 3]", "object"),
    "json_broken.json": ("{not json", "json"),
    "json_scalar.json": ("42", "object"),
}


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_malformed_metadata_files_give_one_error_line(tmp_path, name):
    text, needle = BAD_TABLES[name]
    root = tmp_path / "ds"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"x")
    path = root / name
    path.write_text(text, errors="surrogateescape")
    fmt = "csv" if name.endswith(".csv") else "dfdc"
    with pytest.raises(UserError) as info:
        load_records(path, fmt)
    assert "\n" not in str(info.value) and needle in str(info.value).lower(), str(info.value)
    proc = run_cli("preprocess", str(path), "--format", fmt, "--out", str(tmp_path / "cache"), "--detector",
                   "center", "--workers", "0", "--no-progress", cwd=tmp_path)
    assert_one_error_line(proc, needle)


def test_bad_entries_give_one_problem_line_each_and_the_rest_is_used(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    for n in ("a.mp4", "b.mp4", "c.mp4"):
        (root / n).write_bytes(b"x")
    (root / "labels.csv").write_text("file,label\na.mp4,REAL\nb.mp4,MAYBE\n,FAKE\nc.mp4,\nd.mp4,FAKE\n"
                                     "a.mp4,FAKE\nb.mp4\n")
    res = load_records(root / "labels.csv", "csv")
    assert [r.rel_path for r in res.records] == ["a.mp4"]
    lines = [str(p) for p in res.problems]
    assert len(lines) == 6, lines
    assert all("\n" not in ln and ln.startswith("labels.csv:") for ln in lines), lines
    meta = {"a.mp4": {"label": "FAKE"}, "b.mp4": "FAKE", "c.mp4": {"label": ["FAKE"]}, "d.mp4": None,
            "e.mp4": {"label": "REAL", "split": 3}, "f.mp4": {"split": "train"}, "7": 7}
    (root / "metadata.json").write_text(json.dumps(meta))
    res = load_records(root / "metadata.json", "dfdc")
    assert [r.rel_path for r in res.records] == ["a.mp4"]
    lines = [str(p) for p in res.problems]
    assert len(lines) == len(meta) - 1, lines
    assert all("\n" not in ln for ln in lines), lines


def test_upload_file_names_cannot_escape_the_server_temp_dir(tmp_path):
    from fastapi.testclient import TestClient

    from deepfake_detector.serve.app import create_app
    from deepfake_detector.serve.settings import ServeSettings
    from tests.helpers import make_video

    class Echo:
        seen: list = []

        def predict_one(self, path, explain_dir=None):
            from deepfake_detector.inference import Prediction

            self.seen.append(path)
            return Prediction(path=path, p_fake=0.1, label="REAL", status="ok", frames=4)

        def info(self):
            return {"name": "echo", "sha256": "0" * 64, "threshold": 0.5, "config": {}, "metrics": {}}

    det = Echo()
    video = make_video(tmp_path / "v.mp4", frames=8, size=(64, 64), face=False).read_bytes()
    tmp = tmp_path / "srv"
    tmp.mkdir()
    app = create_app(det, ServeSettings(tmp_dir=str(tmp)))
    with TestClient(app) as client:
        for name in ("../../escape.mp4", "/tmp/abs-escape.mp4", "..\\..\\win.mp4", "a\x00b.mp4"):
            r = client.post("/api/v1/predict", files={"file": (name, video, "video/mp4")})
            assert r.status_code in (200, 400), (name, r.status_code, r.text)
    for path in det.seen:
        assert Path(path).resolve().is_relative_to(tmp.resolve()), path
    assert not (tmp_path / "escape.mp4").exists() and not Path("/tmp/abs-escape.mp4").exists()
    assert not [p for p in tmp.rglob("*") if p.is_file()]
