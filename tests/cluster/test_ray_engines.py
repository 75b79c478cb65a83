"""``--engine ray`` against the local engine on the same generated videos (bad files included), on a
2-CPU local Ray instance: the same cache (manifest and clip bytes) and the same scores; a worker killed
mid-video is retried and every video appears exactly once; a rerun resumes; a video that keeps killing
its worker becomes an error row. With ``--max-faces 2`` a two-person video gives the local engine's
rows, clips and sidecars per face, and the local per-face scores."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from deepfake_detector.cluster.runtime import RayOptions
from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import cache
from deepfake_detector.data import preprocess as pp
from deepfake_detector.data.records import VideoRecord
from tests.cluster import standins
from tests.helpers import make_bad_file, make_tiny_checkpoint, make_video, run_cli_in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data")]  # Ray's own settings

CFG = PreprocessConfig(frames=6, size=32, detector="haar", timeout_s=60)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three face videos, one without a face, two bad files (plus a missing one in the records)."""
    root = tmp_path_factory.mktemp("cluster_videos")
    for i in range(3):
        make_video(root / f"face{i}.mp4", frames=10 + 2 * i, size=(96, 80), face=True)
    make_video(root / "noface.mp4", frames=8, size=(64, 48), face=False)
    make_bad_file(root / "random.mp4", "random")
    make_bad_file(root / "truncated.mp4", "truncated")
    return root


def _records(root: Path, extra: tuple[str, ...] = ()) -> list[VideoRecord]:
    names = sorted(p.name for p in root.glob("*.mp4")) + ["missing.mp4", *extra]
    return [VideoRecord(path=str(root / n), label="FAKE" if n.startswith(("face1", "random")) else "REAL",
                        rel_path=n, group=n) for n in names]


def _manifest(out: Path) -> list[dict]:
    """The manifest's rows without the per-video timing (the only column that may differ)."""
    rows = cache.read_manifest_file(out / cache.MANIFEST_NAME, cache.MANIFEST_SCHEMA)
    return [{k: v for k, v in vars(r).items() if k != "seconds"} for r in rows]


def _clips(out: Path, pattern: str = "*.npy") -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / cache.CLIPS_DIR).rglob(pattern))}


def _engine(**kw):
    from deepfake_detector.cluster.preprocess import RayEngine

    return RayEngine(RayOptions(workers=2, videos_per_task=1, **kw))


@pytest.fixture(scope="module")
def local_cache(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local_cache")
    pp.run_preprocess(_records(videos), out, CFG, workers=2, progress=False)
    return out


def test_preprocess_on_ray_gives_the_local_cache_and_resumes(ray_local, videos, local_cache, tmp_path):
    out = tmp_path / "ray"
    engine = _engine()
    s = pp.run_preprocess(_records(videos), out, CFG, progress=False, engine=engine)
    assert s.processed == s.total == 7 and engine.duplicates == 0
    assert s.counts == {"ok": 3, "no_face": 1, "unreadable": 2, "missing": 1}
    assert _manifest(out) == _manifest(local_cache)
    assert _clips(out) == _clips(local_cache) and len(_clips(out)) == 4  # byte-identical clips
    assert "2 decoding actor(s)" in engine.describe() and "2 CPU(s)" in engine.describe()

    again = pp.run_preprocess(_records(videos), out, CFG, progress=False, engine=_engine())
    assert again.skipped == 4 and again.todo == 3  # finished videos skipped, failures retried
    assert _manifest(out) == _manifest(local_cache)


def _kill_when_announced(marker: Path, killed: list) -> threading.Thread:
    """Kill -9 the process that writes its id into ``marker`` (an actor in the middle of a video)."""
    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.1)
        if marker.exists():
            pid = int(marker.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_preprocess_worker_killed_mid_video_is_retried_once(ray_local, videos, local_cache, tmp_path,
                                                            monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for p in videos.glob("*.mp4"):
        os.symlink(p, data / p.name)
    os.symlink(videos / "face0.mp4", data / "victim.mp4")
    monkeypatch.setattr(pp, "_TASK", standins.preprocess_task)
    killed: list = []
    watcher = _kill_when_announced(data / "victim.started", killed)
    rows: list = []
    engine = _engine()
    real_run = engine.run
    monkeypatch.setattr(engine, "run", lambda todo, cfg, out, on_row: real_run(
        todo, cfg, out, lambda row: (rows.append(row.path), on_row(row))))
    s = pp.run_preprocess(_records(data), tmp_path / "ray", CFG, progress=False, engine=engine)
    watcher.join(5)
    assert killed, "the victim video never started"
    assert sorted(rows) == sorted(r.rel_path for r in _records(data))  # each video exactly once
    assert s.processed == 8 and s.counts["ok"] == 4
    got = {r["path"]: r for r in _manifest(tmp_path / "ray")}
    want = {r["path"]: r for r in _manifest(local_cache)}
    assert got["victim.mp4"]["status"] == "ok"
    assert {k: v for k, v in got.items() if k != "victim.mp4"} == want
    clips = _clips(tmp_path / "ray")
    same = (local_cache / cache.clip_relpath("face0.mp4")).read_bytes()
    assert clips[cache.clip_relpath("victim.mp4")] == same


def test_a_video_that_keeps_killing_its_worker_becomes_an_error_row(ray_local, videos, tmp_path,
                                                                     monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(videos / "face1.mp4", data / "face1.mp4")
    os.symlink(videos / "face2.mp4", data / "poison.mp4")
    monkeypatch.setattr(pp, "_TASK", standins.preprocess_task)
    recs = [VideoRecord(path=str(data / n), label="REAL", rel_path=n) for n in ("face1.mp4", "poison.mp4")]
    s = pp.run_preprocess(recs, tmp_path / "ray", CFG, progress=False, engine=_engine(max_crashes=2))
    rows = {r["path"]: r for r in _manifest(tmp_path / "ray")}
    assert rows["face1.mp4"]["status"] == "ok"
    assert rows["poison.mp4"]["status"] == "error" and "died 2 time(s)" in rows["poison.mp4"]["error"]
    assert s.processed == 2


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", CFG, seq_len=6, fc_scale=50.0)


def _compare(got: list, want: list) -> None:
    assert [p.path for p in got] == [p.path for p in want]
    for g, w in zip(got, want):
        assert (g.status, g.error, g.frames, g.label) == (w.status, w.error, w.frames, w.label), g.path
        assert g.face_ratio == pytest.approx(w.face_ratio)
        if w.p_fake is None:
            assert g.p_fake is None
        else:
            assert g.p_fake == pytest.approx(w.p_fake, abs=1e-5)
        assert [(f["track"], f["box"]) for f in g.faces] == [(f["track"], f["box"]) for f in w.faces], g.path
        assert [f["p_fake"] for f in g.faces] == pytest.approx([f["p_fake"] for f in w.faces], abs=1e-5)


def _paths(root: Path) -> list[str]:
    return [str(root / n) for n in sorted(p.name for p in root.glob("*.mp4"))] + [str(root / "missing.mp4")]


def test_predict_on_ray_gives_the_local_scores(ray_local, videos, checkpoint):
    from deepfake_detector.cluster.predict import RayPredictor
    from deepfake_detector.inference import Detector

    load = {"device": "cpu", "batch_size": 2, "workers": 0}
    det = Detector.from_checkpoint(checkpoint, **load)
    want = det.predict(_paths(videos))
    assert len({round(p.p_fake, 6) for p in want if p.p_fake is not None}) > 1  # the scores differ
    predictor = RayPredictor(det, checkpoint, load, RayOptions(workers=1, videos_per_task=1))
    got = predictor.predict(_paths(videos))
    _compare(got, want)
    assert "1 decoding actor(s) and 1 model actor(s) (CPU)" in predictor.describe()


def test_predict_decoder_killed_mid_video_is_retried_once(ray_local, videos, checkpoint, tmp_path):
    from deepfake_detector.cluster.predict import RayPredictor
    from deepfake_detector.inference import Detector

    os.symlink(videos / "face2.mp4", tmp_path / "victim.mp4")
    os.symlink(videos / "random.mp4", tmp_path / "random.mp4")
    os.symlink(videos / "face0.mp4", tmp_path / "face0.mp4")
    load = {"device": "cpu", "batch_size": 2, "workers": 0}
    det = Detector.from_checkpoint(checkpoint, **load)
    killed: list = []
    watcher = _kill_when_announced(tmp_path / "victim.started", killed)
    predictor = RayPredictor(det, checkpoint, load, RayOptions(workers=1, videos_per_task=1),
                             extract=standins.predict_extract)
    paths = _paths(tmp_path)
    got = predictor.predict(paths)
    watcher.join(5)
    assert killed and predictor.duplicates == 0
    _compare(got, det.predict(paths))
    assert got[-2].path.endswith("victim.mp4") and got[-2].p_fake is not None


def _folders(videos: Path, root: Path) -> Path:
    for label, names in (("real", ("face0", "noface", "random")), ("fake", ("face1", "face2", "truncated"))):
        (root / label).mkdir(parents=True)
        for n in names:
            os.symlink(videos / f"{n}.mp4", root / label / f"{n}.mp4")
    return root


def test_cli_preprocess_and_predict_with_engine_ray(ray_local, videos, checkpoint, tmp_path, capsys):
    import json

    data = _folders(videos, tmp_path / "data")
    flags = ("--frames", 6, "--size", 32, "--detector", "haar", "--workers", 2, "--no-progress")
    local = run_cli_in_process(capsys, "preprocess", data, "--out", tmp_path / "local", *flags)
    ray = run_cli_in_process(capsys, "preprocess", data, "--out", tmp_path / "ray", *flags, "--engine", "ray")
    assert local.returncode == ray.returncode == 0, ray.stderr
    assert "engine: ray, 2 decoding actor(s)" in ray.stdout and "videos/s" in ray.stdout
    assert _manifest(tmp_path / "ray") == _manifest(tmp_path / "local")
    assert _clips(tmp_path / "ray") == _clips(tmp_path / "local")

    args = ("predict", checkpoint, data, "--device", "cpu", "--batch-size", 2, "-q")
    local = run_cli_in_process(capsys, *args, "--output", tmp_path / "local.json")
    ray = run_cli_in_process(capsys, *args, "--output", tmp_path / "ray.json", "--engine", "ray",
                             "--workers", 1)
    assert local.returncode == ray.returncode == 1, ray.stderr  # the two bad files are not scored
    assert "engine: ray, 1 decoding actor(s) and 1 model actor(s)" in ray.stdout
    want = json.loads((tmp_path / "local.json").read_text())["predictions"]
    got = json.loads((tmp_path / "ray.json").read_text())["predictions"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "p_fake")} for r in rows]  # noqa: E731
    assert strip(got) == strip(want)
    assert [r["p_fake"] for r in got] == pytest.approx([r["p_fake"] for r in want], abs=1e-5)


def test_a_cache_folder_the_actors_cannot_see_is_one_error(ray_local, videos, tmp_path):
    from deepfake_detector.errors import UserError

    todo = [(str(videos / "face0.mp4"), "face0.mp4", "REAL", "", "", "")]
    with pytest.raises(UserError, match="is not visible on every node") as err:
        _engine().run(todo, CFG, tmp_path / "not-on-this-node", lambda row: None)
    assert "\n" not in str(err.value) and "--out must be on a file system all nodes share" in str(err.value)
    assert not (tmp_path / "not-on-this-node").exists()


def test_a_checkpoint_the_model_actors_cannot_read_is_one_error(ray_local, videos, checkpoint, tmp_path):
    from deepfake_detector.cluster.predict import RayPredictor
    from deepfake_detector.errors import UserError
    from deepfake_detector.inference import Detector

    load = {"device": "cpu", "workers": 0}
    predictor = RayPredictor(Detector.from_checkpoint(checkpoint, **load), tmp_path / "elsewhere.pt", load,
                             RayOptions(workers=1))
    with pytest.raises(UserError, match="elsewhere.pt is not visible on every node") as err:
        predictor.predict([str(videos / "face0.mp4")])
    assert "\n" not in str(err.value) and err.value.exit_code == 1


def test_shard_k_of_n_works_with_the_ray_engine(ray_local, videos, tmp_path):
    """``--shard K/N`` selects the same videos whichever engine runs them (a Ray job per shard)."""
    local = pp.run_preprocess(_records(videos), tmp_path / "local", CFG, workers=1, shard=(1, 2),
                              progress=False)
    ray = pp.run_preprocess(_records(videos), tmp_path / "ray", CFG, shard=(1, 2), progress=False,
                            engine=_engine())
    assert 0 < ray.total == local.total < 7
    read = lambda out: [{k: v for k, v in vars(r).items() if k != "seconds"}  # noqa: E731
                        for r in cache.read_manifest_file(out / "manifest-1-of-2.csv", cache.MANIFEST_SCHEMA)]
    assert read(tmp_path / "ray") == read(tmp_path / "local")


# --------------------------------------------------------------------------------------------------
# several faces (--max-faces 2)
# --------------------------------------------------------------------------------------------------

CFG2 = dataclasses.replace(CFG, max_faces=2)


@pytest.fixture(scope="module")
def two_faces(videos, tmp_path_factory) -> Path:
    """Two real faces side by side (``tests/data/test_tracks.py``'s video) beside a one-face, a faceless
    and a bad file (plus a missing one in the records)."""
    from tests.data.test_tracks import _two_person_frames, _write_video

    root = tmp_path_factory.mktemp("two_faces")
    _write_video(root / "two.mp4", _two_person_frames())
    for n in ("face0", "noface", "random"):
        os.symlink(videos / f"{n}.mp4", root / f"{n}.mp4")
    return root


def test_preprocess_on_ray_keeps_every_face_like_the_local_engine(ray_local, two_faces, tmp_path):
    local = pp.run_preprocess(_records(two_faces), tmp_path / "local", CFG2, workers=0, progress=False)
    s = pp.run_preprocess(_records(two_faces), tmp_path / "ray", CFG2, progress=False, engine=_engine())
    assert s.counts == local.counts == {"ok": 2, "no_face": 1, "unreadable": 1, "missing": 1}
    rows = _manifest(tmp_path / "ray")
    assert [(r["track"], r["tracks"]) for r in rows if r["path"] == "two.mp4"] == [(0, 2), (1, 2)]
    assert rows == _manifest(tmp_path / "local")
    assert _clips(tmp_path / "ray") == _clips(tmp_path / "local")  # one clip per face, byte for byte
    sidecars = _clips(tmp_path / "ray", "*.json")
    assert sidecars == _clips(tmp_path / "local", "*.json")
    assert len(sidecars) == 2  # one per face of two.mp4; a single-face video is stored as before tracks

    again = pp.run_preprocess(_records(two_faces), tmp_path / "ray", CFG2, progress=False, engine=_engine())
    assert again.skipped == 3 and again.todo == 2  # both faces of two.mp4 count as done
    assert _manifest(tmp_path / "ray") == _manifest(tmp_path / "local")


def test_predict_on_ray_scores_every_face_like_the_local_detector(ray_local, two_faces, checkpoint):
    from deepfake_detector.cluster.predict import RayPredictor
    from deepfake_detector.inference import Detector

    load = {"device": "cpu", "batch_size": 2, "workers": 0}
    det = Detector.from_checkpoint(checkpoint, **load)
    det.preprocess = dataclasses.replace(det.preprocess, max_faces=2)  # as predict --max-faces 2 does
    want = det.predict(_paths(two_faces))
    two = next(p for p in want if p.path.endswith("two.mp4"))
    assert [f["track"] for f in two.faces] == [0, 1] and two.p_fake == max(f["p_fake"] for f in two.faces)
    got = RayPredictor(det, checkpoint, load, RayOptions(workers=1, videos_per_task=1)).predict(
        _paths(two_faces))
    _compare(got, want)
    assert json.dumps([p.to_dict() for p in got if p.faces])  # the faces list is plain JSON
