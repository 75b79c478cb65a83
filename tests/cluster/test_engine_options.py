"""The Ray engines' pieces that need no cluster: the one-line error without Ray, flag checks, actor
sizing (GPU placement) and the per-video crash ledger."""

from __future__ import annotations

import sys

import pytest

from deepfake_detector.cluster import CLUSTER_EXTRA
from deepfake_detector.cluster.runtime import ClusterInfo, CrashLedger, RayOptions, crash_message, require_ray
from deepfake_detector.errors import UserError
from tests.helpers import make_video, run_cli_in_process


@pytest.fixture
def no_ray(monkeypatch):
    """Ray as if it were not installed."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)


def test_without_ray_one_line_names_the_extra(no_ray):
    with pytest.raises(UserError) as err:
        require_ray()
    msg = str(err.value)
    assert CLUSTER_EXTRA in msg and "\n" not in msg and "--engine ray" in msg


@pytest.mark.parametrize("command", ["preprocess", "predict"])
def test_cli_engine_ray_without_ray_is_one_error_line(no_ray, tmp_path, capsys, command):
    video = make_video(tmp_path / "real" / "a.mp4", frames=4, size=(32, 32), face=False)
    if command == "preprocess":
        args = ("preprocess", tmp_path, "--out", tmp_path / "cache", "--engine", "ray")
    else:
        ckpt = tmp_path / "x.pt"
        ckpt.write_bytes(b"not read before the engine check")
        args = ("predict", ckpt, video, "--engine", "ray")
    res = run_cli_in_process(capsys, *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and CLUSTER_EXTRA in lines[0]


def test_cluster_flags_need_engine_ray(tmp_path, capsys):
    res = run_cli_in_process(capsys, "preprocess", tmp_path, "--out", tmp_path / "c", "--address", "auto")
    assert res.returncode == 2 and "need --engine ray" in res.stderr


def test_unknown_engine_is_refused(tmp_path):
    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.data.preprocess import run_preprocess

    with pytest.raises(UserError, match="unknown engine"):
        run_preprocess([], tmp_path / "c", PreprocessConfig(detector="center"), engine="spark")


def test_options_are_checked():
    with pytest.raises(UserError, match="--workers"):
        RayOptions(workers=0)
    with pytest.raises(UserError, match="--num-gpus-per-worker"):
        RayOptions(num_gpus_per_worker=-1)


def _sized(info: ClusterInfo, device: str = "auto", **opts):
    from deepfake_detector.cluster.predict import RayPredictor

    class _Det:
        batch_size = 8

    p = RayPredictor(_Det(), "ckpt.pt", {"device": device}, RayOptions(**opts))  # type: ignore[arg-type]
    p._size(info, n_videos=1000)
    return p.decoders, p.models, p.gpus_per_model


def test_model_actors_go_to_gpus_and_decoders_to_the_cpus_left():
    gpu = ClusterInfo("x", nodes=2, cpus=32, gpus=4, started_here=False)
    assert _sized(gpu) == (28, 4, 1.0)  # one model actor per GPU, one CPU each
    assert _sized(gpu, num_gpus_per_worker=0.5) == (24, 8, 0.5)  # two per GPU
    assert _sized(gpu, device="cpu") == (31, 1, 0.0)  # --device cpu: the model stays on CPUs
    assert _sized(gpu, workers=3) == (3, 4, 1.0)
    cpu = ClusterInfo("x", nodes=1, cpus=2, gpus=0, started_here=True)
    assert _sized(cpu) == (1, 1, 0.0)
    with pytest.raises(UserError, match="needs a GPU"):
        _sized(cpu, num_gpus_per_worker=1)


def test_the_ledger_counts_starts_that_never_finished():
    ledger = CrashLedger()
    assert ledger.start("a") == 0
    ledger.finish("a")
    assert ledger.start("a") == 0  # finished: no crash on record
    assert ledger.start("b") == 0 and ledger.start("b") == 1 and ledger.start("b") == 2  # b died twice
    ledger.finish("b")
    assert "b" not in ledger.open and "a" in ledger.open
    assert "died 3 time(s)" in crash_message(3, 120) and "120 s" in crash_message(3, 120)


def test_run_all_summarises_the_cluster_stage(tmp_path):
    import json

    from benchmarks import run_all

    rows = [{"engine": e, "workers": w, "videos_s": v, "steady_videos_s": s}
            for e, w, v, s in (("local", 1, 1.0, 1.1), ("local", 2, 2.0, 2.2), ("ray", 1, 0.9, 1.05),
                               ("ray", 2, 1.8, 2.1))]
    (tmp_path / "cluster.json").write_text(json.dumps({"videos": 24, "seconds": 10, "rows": rows}))
    table = {r["stage"]: r for r in run_all.collect(tmp_path)["rows"]}
    two = table["cluster preprocess ray vs local, 2 worker(s)"]
    assert two["x_ref"] == pytest.approx(0.9) and "steady 2.2 -> 2.1" in two["note"]
    (tmp_path / "cluster.json").write_text(json.dumps({"skipped": "Ray is not installed"}))
    (row,) = run_all.collect(tmp_path)["rows"]
    assert "skipped: Ray is not installed" in row["note"]
