"""Every face: two people in one video give two tracks, two clips, two manifest rows and two scores.

The video is two real faces side by side (the carphone footage and the astronaut photo), so the
tracker, the cache layout and the per-face scores are checked on faces a detector really finds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import cache
from deepfake_detector.data.preprocess import extract_clip, run_preprocess
from deepfake_detector.data.records import VideoRecord
from tests.helpers import astronaut_image, carphone_frames, make_tiny_checkpoint, run_cli_in_process

FRAMES = 8
SCHEMA2_FIELDS = ["path", "label", "split", "group", "method", "status", "frames", "face_ratio", "error",
                  "clip", "source_frames", "fps", "duration", "width", "height", "seconds", "source_stat"]


def _two_person_frames() -> list[np.ndarray]:
    import cv2

    face = astronaut_image()[0:240, 130:330]
    face = cv2.resize(face, (120, 144))
    out = []
    for f in carphone_frames(FRAMES):
        both = np.concatenate([f, face], axis=1)  # [144, 296]
        out.append(cv2.resize(both, (both.shape[1] * 2, both.shape[0] * 2)))
    return out


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def two_person(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    return _write_video(folder / "two.mp4", _two_person_frames())


def _cfg(max_faces: int) -> PreprocessConfig:
    return PreprocessConfig(frames=FRAMES, size=32, detector="haar", max_faces=max_faces, timeout_s=0)


def _preprocess(video: Path, out: Path, max_faces: int) -> list[cache.ManifestRow]:
    rec = VideoRecord(path=str(video), label="REAL", split="test", rel_path="two.mp4")
    run_preprocess([rec], out, _cfg(max_faces), workers=0, progress=False, dataset_root=video.parent)
    return sorted(cache.Cache.open(out).rows(), key=lambda r: r.track)


def test_two_people_give_two_tracks_rows_and_clips(two_person, tmp_path):
    rows = _preprocess(two_person, tmp_path / "c2", max_faces=2)
    assert [(r.path, r.track, r.tracks) for r in rows] == [("two.mp4", 0, 2), ("two.mp4", 1, 2)]
    assert rows[0].clip == cache.clip_relpath("two.mp4") != rows[1].clip
    boxes = [cache.load_track_info(tmp_path / "c2", r.clip)["box"] for r in rows]
    centres = sorted((b[0] + b[2]) / 2 for b in boxes)
    assert centres[0] < 296 < centres[1]  # one face on each half of the frame
    for r in rows:
        assert cache.load_clip(tmp_path / "c2", r.clip).shape == (FRAMES, 32, 32, 3)
    header = (tmp_path / "c2" / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["track", "tracks"]
    # a rerun finds both tracks done and keeps them
    again = _preprocess(two_person, tmp_path / "c2", max_faces=2)
    assert [r.clip for r in again] == [r.clip for r in rows]


def test_one_face_keeps_todays_cache(two_person, tmp_path):
    one = _preprocess(two_person, tmp_path / "c1", max_faces=1)
    two = _preprocess(two_person, tmp_path / "c2", max_faces=2)
    assert len(one) == 1 and (one[0].track, one[0].tracks) == (0, 1)
    with open(tmp_path / "c1" / "manifest.csv", newline="") as fh:
        assert next(csv.reader(fh)) == SCHEMA2_FIELDS  # today's columns, nothing added
    assert not list((tmp_path / "c1" / "clips").rglob("*.json"))  # no sidecars
    assert (tmp_path / "c1" / one[0].clip).read_bytes() == (tmp_path / "c2" / two[0].clip).read_bytes()


def test_schema2_manifest_upgrades_to_one_track(tmp_path):
    (tmp_path / "manifest.csv").write_text(",".join(SCHEMA2_FIELDS) + "\n" + "a.mp4,REAL,train,a,,ok,4,1.0,,"
                                           "clips/aa/x.npy,4,25,1,64,64,0.1,\n")
    (tmp_path / "preprocess.json").write_text(json.dumps({"manifest_schema": 2}))
    (row,) = cache.Cache.open(tmp_path).rows()
    assert (row.track, row.tracks, row.clip) == (0, 1, "clips/aa/x.npy")
    assert cache.upgrade_manifest_row({"path": "b"}, 2) == {"path": "b", "track": "0", "tracks": "1"}


def test_video_score_is_the_highest_face(two_person, tmp_path):
    from deepfake_detector.inference import Detector

    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", _cfg(2), seq_len=FRAMES, hidden_size=8, fc_scale=50.0)
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    pred = det.predict_one(two_person)
    assert pred.scored and [f["track"] for f in pred.faces] == [0, 1]
    assert pred.p_fake == max(f["p_fake"] for f in pred.faces)
    assert all(len(f["box"]) == 4 for f in pred.faces)
    res = extract_clip(two_person, _cfg(2))
    assert len(res.others) == 1  # the same two faces the cache holds


def test_predict_cli_lists_faces(two_person, tmp_path, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", _cfg(1), seq_len=FRAMES, hidden_size=8)
    out1, out2 = tmp_path / "one.csv", tmp_path / "two.csv"
    assert run_cli_in_process(capsys, "predict", ckpt, two_person, "--workers", "0", "--device", "cpu",
                              "--output", out1).returncode == 0
    assert run_cli_in_process(capsys, "predict", ckpt, two_person, "--workers", "0", "--device", "cpu",
                              "--max-faces", "2", "--output", out2).returncode == 0
    with open(out1, newline="") as fh:
        assert "faces" not in next(csv.DictReader(fh))
    with open(out2, newline="") as fh:
        row = next(csv.DictReader(fh))
    faces = json.loads(row["faces"])
    assert len(faces) == 2 and float(row["p_fake"]) == pytest.approx(max(f["p_fake"] for f in faces))


# --- training and evaluation with tracks ------------------------------------------------------------


def _track_cache(root: Path) -> cache.Cache:
    """orig.mp4 (REAL, faces a and b), fake.mp4 (its fake: a untouched, b swapped), lone.mp4 (a FAKE
    without an original in the cache, two faces)."""
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    swapped = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    videos = {"orig.mp4": ("REAL", "orig.mp4", [a, b]), "fake.mp4": ("FAKE", "orig.mp4", [a, swapped]),
              "lone.mp4": ("FAKE", "lone.mp4", [b, a])}
    rows = []
    for path, (label, group, clips) in videos.items():
        for k, clip in enumerate(clips):
            rel = cache.save_clip(root, path, clip, track=k)
            rows.append(cache.ManifestRow(path=path, label=label, group=group, status="ok", frames=4,
                                          clip=rel, track=k, tracks=len(clips)))
    cache.write_manifest_file(root / "manifest.csv", rows)
    return cache.Cache.open(root)


def test_training_samples_pick_the_swapped_face_and_every_real_face(tmp_path):
    from deepfake_detector.data.dataset import training_rows, usable_rows

    c = _track_cache(tmp_path)
    videos = usable_rows(c.rows())
    assert sorted(v.path for v in videos) == ["fake.mp4", "lone.mp4", "orig.mp4"]  # one row per video
    samples = {(r.path, r.track) for r in training_rows(c, videos, c.rows())}
    assert samples == {("orig.mp4", 0), ("orig.mp4", 1), ("fake.mp4", 1), ("lone.mp4", 0)}
    every = {(r.path, r.track) for r in training_rows(c, videos, c.rows(), fake_tracks="all")}
    assert every == samples | {("lone.mp4", 1)}


def test_evaluation_scores_every_track_and_keeps_the_highest(tmp_path):
    from deepfake_detector.data.dataset import usable_rows, video_tracks
    from deepfake_detector.engine.evaluate import max_per_video

    c = _track_cache(tmp_path)
    videos = sorted(usable_rows(c.rows()), key=lambda r: r.path)
    tracks, owner = video_tracks(videos, c.rows())
    assert [(t.path, t.track) for t in tracks] == [(v, k) for v in ("fake.mp4", "lone.mp4", "orig.mp4")
                                                  for k in (0, 1)]
    assert owner == [0, 0, 1, 1, 2, 2]
    p = max_per_video(np.array([0.2, 0.9, 0.4, 0.1, 0.3, 0.6]), owner, 3)
    assert p.tolist() == [0.9, 0.4, 0.6]


def test_evaluate_gives_each_video_its_highest_face(tmp_path):
    import torch

    from deepfake_detector.engine.evaluate import evaluate_rows, prepare_evaluation

    c = _track_cache(tmp_path / "c")
    pre = PreprocessConfig(frames=4, size=16, detector="haar", max_faces=2)
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", pre, seq_len=4, hidden_size=8, fc_scale=50.0)
    prepared = prepare_evaluation(ckpt, c, "all", device="cpu")
    res = prepared.run(progress=False)
    assert sorted(res.paths) == ["fake.mp4", "lone.mp4", "orig.mp4"] and res.metrics["n_total"] == 3
    every = evaluate_rows(prepared.model, c, c.rows(), 4, 8, torch.device("cpu"), progress=False)
    best: dict = {}
    for path, p in zip(every["paths"], every["p_fake"]):
        best[path] = max(best.get(path, 0.0), float(p))
    assert {p: float(v) for p, v in zip(res.paths, res.p_raw)} == pytest.approx(best)


def test_rank_tracks_keeps_real_faces_best_first_and_drops_flickers_and_split_faces():
    from deepfake_detector.data.faces import Box, rank_tracks

    big = {t: Box(0, 0, 100, 100) for t in range(9)}
    small = {t: Box(200, 0, 250, 50) for t in range(6)}
    flicker = {0: Box(400, 0, 460, 60), 5: Box(400, 0, 460, 60)}  # 2 of 9 frames: under a third
    split = {t: Box(5, 5, 100, 100) for t in range(4)}  # lies on the big face
    assert rank_tracks([small, flicker, big, split], 4) == [big, small]
    assert rank_tracks([small, big], 1) == [big]
    assert rank_tracks([], 4) == []
