"""The MTCNN backend without its real weights: tiny random nets, the published files' key mapping, the
cascade's batching, alignment, and the weights fetch through a wheel built here (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector import fetch
from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import mtcnn
from deepfake_detector.data.faces import (
    Box,
    FaceCropper,
    FaceDetector,
    aligned_crop,
    detector_available,
    eye_angles,
    get_detector,
    resolve_detector,
)
from deepfake_detector.errors import WeightsUnavailableError

torch = pytest.importorskip("torch")

LOW = (0.3, 0.3, 0.3)  # random nets score around 0.5: low thresholds let candidates through every stage


def _random_nets(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return mtcnn.build_nets()


# ``build_nets``' parameter names -> the published files' (the inverse of the module's key map)
def _published(kind: str, net) -> dict:
    inverse = {mine: theirs for theirs, mine in mtcnn._KEY_MAP[kind].items()}
    out = {}
    for key, value in net.state_dict().items():
        prefix, _, param = key.rpartition(".")
        value = value.clone()
        flat = mtcnn._FLATTEN.get(kind)
        if flat and inverse[prefix] == flat[0] and param == "weight":  # (C, H, W) columns -> (W, H, C)
            _, ch, side = flat
            value = value.reshape(-1, ch, side, side).permute(0, 3, 2, 1).reshape(value.shape[0], -1)
        out[f"{inverse[prefix]}.{param}"] = value
    return out


def _save_published(folder: Path, nets: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for kind in mtcnn.NETS:
        torch.save(_published(kind, nets[kind]), folder / f"{kind}.pt")
    return folder


def test_nets_have_the_published_shapes():
    nets = _random_nets()
    with torch.no_grad():
        h = nets["pnet"]["body"](torch.zeros(2, 3, 12, 12))
        assert nets["pnet"]["cls"](h).shape == (2, 2, 1, 1) and nets["pnet"]["box"](h).shape == (2, 4, 1, 1)
        assert nets["rnet"]["body"](torch.zeros(1, 3, 24, 24)).flatten(1).shape == (1, 576)
        assert nets["onet"]["body"](torch.zeros(1, 3, 48, 48)).flatten(1).shape == (1, 1152)
    sizes = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
    assert sizes == {"pnet": 6632, "rnet": 100178, "onet": 389040}  # the original models' parameter counts


def test_published_keys_load_and_the_dense_columns_are_reordered(tmp_path):
    """A file in the published layout loads into the modules, and the first dense layer computes the
    same function after the column reorder (features flattened (W, H, C) there, (C, H, W) here)."""
    src = _random_nets(1)
    folder = _save_published(tmp_path / "w", src)
    nets = mtcnn.load_nets(folder)
    for kind in mtcnn.NETS:
        for (k, a), (_, b) in zip(src[kind].state_dict().items(), nets[kind].state_dict().items()):
            assert torch.equal(a, b), (kind, k)
    feats = torch.randn(3, 64, 3, 3)
    theirs = _published("rnet", src["rnet"])["dense4.weight"]
    expected = feats.permute(0, 3, 2, 1).flatten(1) @ theirs.T  # how the original flattened
    assert torch.allclose(feats.flatten(1) @ nets["rnet"]["fc"][0].weight.T, expected, atol=1e-5)


def test_wrong_files_are_one_clear_error(tmp_path):
    nets = _random_nets()
    folder = _save_published(tmp_path / "w", nets)
    state = torch.load(folder / "rnet.pt", weights_only=True)
    state["surprise.weight"] = torch.zeros(1)
    torch.save(state, folder / "rnet.pt")
    with pytest.raises(WeightsUnavailableError, match="rnet.pt: not MTCNN rnet weights .*'surprise.weight'"):
        mtcnn.load_nets(folder)
    torch.save(_published("pnet", nets["pnet"]), folder / "rnet.pt")  # P-Net's file under R-Net's name
    with pytest.raises(WeightsUnavailableError, match="not MTCNN rnet weights"):
        mtcnn.load_nets(folder)
    state = _published("rnet", nets["rnet"])
    state["conv1.weight"] = torch.zeros(5, 3, 3, 3)  # the right names, a wrong shape
    torch.save(state, folder / "rnet.pt")
    with pytest.raises(WeightsUnavailableError, match="not MTCNN rnet weights .*size mismatch"):
        mtcnn.load_nets(folder)
    (folder / "onet.pt").write_bytes(b"not a torch file")
    (folder / "rnet.pt").unlink()
    torch.save(_published("rnet", nets["rnet"]), folder / "rnet.pt")
    with pytest.raises(WeightsUnavailableError, match="onet"):
        mtcnn.load_nets(folder)


def test_pyramid_covers_min_face_to_frame():
    scales = mtcnn.pyramid_scales(288, 352, 20, 0.709)
    assert scales[0] == pytest.approx(12 / 20)
    assert 288 * scales[-1] >= 12 > 288 * scales[-1] * 0.709
    assert mtcnn.pyramid_scales(10, 10, 20, 0.709) == []


def _frames(n: int, h: int = 120, w: int = 160, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_cascade_is_batch_invariant_and_well_formed():
    """Frames batched together get exactly what each gets alone (the batch never mixes frames)."""
    nets = {k: v.double() for k, v in _random_nets(2).items()}  # float64: no near-ties flip between runs
    frames = _frames(3, 60, 80)
    images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).double()
    together = mtcnn.run_cascade(nets, images, thresholds=LOW)
    assert len(together) == 3 and sum(len(b) for b, _ in together) > 0
    for i, (boxes, marks) in enumerate(together):
        alone, alone_marks = mtcnn.run_cascade(nets, images[i:i + 1], thresholds=LOW)[0]
        np.testing.assert_allclose(boxes, alone, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(marks, alone_marks, rtol=1e-4, atol=1e-3)
        assert boxes.shape[1] == 5 and marks.shape == (len(boxes), 5, 2)
        assert np.isfinite(boxes).all() and (boxes[:, 4] >= LOW[2]).all()
        assert (np.diff(boxes[:, 4]) <= 1e-6).all()  # best first


def test_detector_batches_and_scales_back_to_frame_pixels():
    nets = _random_nets(3)
    det = get_detector("mtcnn", nets=nets, thresholds=LOW, detect_max_side=80)
    assert det.name == "mtcnn" and isinstance(det, FaceDetector)
    frames = _frames(2, 160, 120) + _frames(1, 100, 100, seed=5)  # two sizes: two groups
    out = det.detect_batch(frames)
    assert len(out) == 3
    from deepfake_detector.data.faces import _resize

    small = mtcnn.expose(_resize(frames[0], 0.5))  # what the detector does before the nets
    img = torch.from_numpy(small[None]).permute(0, 3, 1, 2).float()
    boxes, marks = mtcnn.run_cascade(nets, img, thresholds=LOW)[0]
    got = out[0]
    assert len(got) == len(boxes) > 0
    xyxy = [[b.x0, b.y0, b.x1, b.y1] for b in got]
    np.testing.assert_allclose(xyxy, boxes[:, :4] * 2, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(got[0].landmarks, marks[0] * 2, rtol=1e-4, atol=1e-2)
    assert [b.score for b in det.detect(frames[0])] == pytest.approx([b.score for b in got])


def test_cropper_sends_all_frames_in_one_batch_and_keeps_landmarks():
    calls = []

    class Fake(FaceDetector):
        name = "fake"

        def detect(self, rgb, hint=None):  # pragma: no cover - detect_batch must be used
            raise AssertionError("per-frame detect called")

        def detect_batch(self, frames):
            calls.append(len(frames))
            marks = np.array([[30, 40], [50, 40], [40, 50], [32, 60], [48, 60]], np.float32)
            return [[Box(20, 20, 60, 70, 0.9, landmarks=marks + t)] for t in range(len(frames))]

    res = FaceCropper(Fake(), size=32).crop(_frames(4, 100, 100))
    assert calls == [4] and res.found and res.landmarks.shape == (4, 5, 2)
    assert res.landmarks[3, 0].tolist() == [33.0, 43.0]
    assert res.crops.shape == (4, 32, 32, 3)


def test_box_landmarks_scale_and_do_not_change_equality():
    b = Box(1, 2, 3, 4, 0.5, landmarks=np.ones((5, 2), np.float32))
    assert b.scaled(2).landmarks[0].tolist() == [2.0, 2.0]
    assert b == Box(1, 2, 3, 4, 0.5)
    assert Box(1, 2, 3, 4).scaled(2).landmarks is None


def test_eye_angles_sign_smoothing_and_gaps():
    marks = np.full((4, 5, 2), np.nan, np.float32)
    marks[0, :2] = [[0, 0], [10, 10]]  # right eye lower: turned clockwise on screen, +45 degrees
    marks[3, :2] = [[0, 0], [10, -10]]
    ang = eye_angles(marks, window=1)
    assert ang[0] == pytest.approx(45) and ang[3] == pytest.approx(-45)
    assert ang[1] == pytest.approx(15) and ang[2] == pytest.approx(-15)  # interpolated
    assert (eye_angles(np.full((3, 5, 2), np.nan, np.float32)) == 0).all()


def test_aligned_crop_levels_the_eyes():
    """Two bright dots (the eyes) on a line turned by 30 degrees come out on one row of the crop."""
    import cv2

    img = np.zeros((200, 240, 3), np.uint8)
    c = np.array([120.0, 100.0])
    a = np.radians(30)
    d = 25 * np.array([np.cos(a), np.sin(a)])
    left, right = c - d, c + d
    for p in (left, right):
        cv2.circle(img, (int(round(p[0])), int(round(p[1]))), 4, (255, 255, 255), -1)
    angle = float(np.degrees(np.arctan2(*(right - left)[::-1])))
    crop, box = aligned_crop(img, c[0], c[1], 100, angle, 64)
    assert box.tolist() == pytest.approx([70, 50, 170, 150])
    ys, xs = np.nonzero(crop[..., 0] > 128)
    left_half, right_half = ys[xs < 32], ys[xs >= 32]
    assert abs(left_half.mean() - right_half.mean()) < 1.0  # level
    assert abs(left_half.mean() - 32) < 2 and len(left_half) and len(right_half)
    upright, _ = aligned_crop(img, c[0], c[1], 100, 0.2, 64)  # tiny angles: the plain square crop
    np.testing.assert_array_equal(upright, aligned_crop(img, c[0], c[1], 100, 0.0, 64)[0])


def test_cropper_align_turns_crops_only_when_asked():
    class Tilted(FaceDetector):
        name = "tilted"

        def detect(self, rgb, hint=None):
            marks = np.array([[40, 40], [60, 60], [50, 55], [40, 70], [60, 75]], np.float32)
            return [Box(25, 25, 75, 85, 0.9, landmarks=marks)]

    frames = _frames(3, 100, 100)
    plain = FaceCropper(Tilted(), size=32).crop(frames)
    turned = FaceCropper(Tilted(), size=32, align=True).crop(frames)
    assert not np.array_equal(plain.crops, turned.crops)
    np.testing.assert_array_equal(plain.boxes.round(), turned.boxes.round())


def test_config_accepts_mtcnn_and_align_needs_it():
    cfg = PreprocessConfig(detector="mtcnn", align=True, mtcnn_weights="/w")
    assert cfg.align and cfg.mtcnn_weights == "/w"
    with pytest.raises(ValueError, match="align needs eye positions"):
        PreprocessConfig(detector="dlib", align=True)


def test_detector_pickles_and_modules_stay_torch_free():
    det = get_detector("mtcnn", weights_dir="/somewhere", device="cpu", detect_max_side=320, upsample=1)
    back = pickle.loads(pickle.dumps(det))
    assert (back.weights_dir, back.device, back.detect_max_side) == ("/somewhere", "cpu", 320)
    code = ("import sys\nfrom deepfake_detector.data.faces import get_detector\n"
            "get_detector('mtcnn', device='cpu')\nimport deepfake_detector.data.mtcnn\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# Weights: a local folder, the hub cache, and the fetch from a wheel built here
# --------------------------------------------------------------------------------------------------


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("facenet_pytorch/__init__.py", "")
        for name, data in files.items():
            zf.writestr(f"facenet_pytorch/data/{name}", data)
        zf.writestr("facenet_pytorch-2.6.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: facenet-pytorch\nVersion: 2.6.0\n")
    return path


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """A wheel holding random-weight pnet/rnet/onet.pt, pinned as if it were the real release; torch hub's
    cache in a temporary folder; ``pip download`` replaced by a copy of that wheel."""
    src = _save_published(tmp_path / "src", _random_nets(4))
    files = {f"{k}.pt": (src / f"{k}.pt").read_bytes() for k in mtcnn.NETS}
    wheel = _wheel(tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl", files)
    art = fetch.Artefact(
        "MTCNN weights", mtcnn.WEIGHTS_PACKAGE,
        tuple((n, hashlib.sha256(d).hexdigest()) for n, d in files.items()),
        subdir=mtcnn.MTCNN_WEIGHTS.subdir, archive_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(mtcnn, "MTCNN_WEIGHTS", art)
    monkeypatch.setattr(fetch, "hub_checkpoint_dir", lambda: tmp_path / "hub")
    monkeypatch.setattr(mtcnn, "_NETS", {})  # nets loaded per process and folder: none from other tests
    calls = []

    def fake_pip_download(package, dest_dir, timeout=300.0):
        calls.append(package)
        out = Path(dest_dir) / wheel.name
        out.write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(fetch, "pip_download", fake_pip_download)
    return {"art": art, "wheel": wheel, "calls": calls, "hub": tmp_path / "hub" / art.subdir, "src": src}


def test_fetch_from_the_wheel_then_reuse_without_network(fake_release):
    folder = mtcnn.resolve_weights()
    assert folder == fake_release["hub"] and fake_release["calls"] == [mtcnn.WEIGHTS_PACKAGE]
    assert sorted(p.name for p in folder.iterdir()) == ["onet.pt", "pnet.pt", "rnet.pt"]
    assert mtcnn.resolve_weights() == folder and len(fake_release["calls"]) == 1  # cached: no download
    det = get_detector("mtcnn", device="cpu", thresholds=LOW)
    assert isinstance(det.detect_batch(_frames(2)), list)  # loads the fetched files
    assert detector_available("mtcnn") is None


def test_wheel_with_the_wrong_hash_writes_nothing(fake_release, monkeypatch):
    art = fake_release["art"]
    monkeypatch.setattr(mtcnn, "MTCNN_WEIGHTS", fetch.Artefact(art.name, art.package, art.files, art.subdir,
                                                               archive_sha256="0" * 64))
    with pytest.raises(WeightsUnavailableError, match="SHA-256 mismatch.*--mtcnn-weights"):
        mtcnn.resolve_weights()
    assert not fake_release["hub"].exists() or not any(fake_release["hub"].iterdir())


def test_offline_is_one_line_naming_the_way_out(fake_release, monkeypatch):
    def offline(package, dest_dir, timeout=300.0):
        raise WeightsUnavailableError(f"pip download {package} failed: No matching distribution found")

    monkeypatch.setattr(fetch, "pip_download", offline)
    why = detector_available("mtcnn")
    assert why and "\n" not in why
    for text in ("could not be fetched", "pip download --no-deps facenet-pytorch==2.6.0", "--mtcnn-weights"):
        assert text in why


def test_local_folder_is_used_and_a_wrong_one_explained(fake_release, tmp_path):
    src = fake_release["src"]
    assert mtcnn.resolve_weights(src) == src and fake_release["calls"] == []
    why = detector_available("mtcnn", str(tmp_path / "nowhere"))
    assert "has no pnet.pt, rnet.pt, onet.pt" in why and fake_release["calls"] == []
    mtcnn.resolve_weights()  # now the hub cache has them: a stale folder falls back to it
    assert mtcnn.resolve_weights(tmp_path / "nowhere") == fake_release["hub"]


def test_cli_preprocess_offers_mtcnn_and_explains(capsys, tmp_path, fake_release, monkeypatch):
    from tests.helpers import run_cli_in_process

    res = run_cli_in_process(capsys, "preprocess", str(tmp_path), "--out", str(tmp_path / "c"), "--align",
                             "--detector", "dlib")
    assert res.returncode == 2 and "align needs eye positions" in res.stderr
    res = run_cli_in_process(capsys, "preprocess", str(tmp_path), "--out", str(tmp_path / "c"),
                             "--detector", "mtcnn", "--mtcnn-weights", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "face detector 'mtcnn' cannot run" in res.stderr and "has no pnet.pt" in res.stderr


# --------------------------------------------------------------------------------------------------
# The default: auto = mtcnn where it can run, else dlib; dark frames brightened for the nets
# --------------------------------------------------------------------------------------------------


def test_auto_is_mtcnn_when_its_weights_can_be_had(fake_release):
    cfg = resolve_detector(PreprocessConfig(align=True))
    assert cfg.detector == "mtcnn" and cfg.align
    assert resolve_detector(PreprocessConfig(detector="haar")).detector == "haar"  # named: as named


def test_auto_falls_back_to_dlib_offline_and_says_why(fake_release, monkeypatch, caplog):
    monkeypatch.setattr(fetch, "pip_download", _offline_pip)
    with caplog.at_level("WARNING"):
        cfg = resolve_detector(PreprocessConfig())
    assert cfg.detector == "dlib"
    assert "MTCNN cannot run here" in caplog.text and "--mtcnn-weights" in caplog.text
    with pytest.raises(ValueError, match="auto resolved to dlib.*align"):
        resolve_detector(PreprocessConfig(align=True))


def test_auto_keeps_the_detector_of_the_cache_being_resumed(fake_release):
    assert resolve_detector(PreprocessConfig(), previous=PreprocessConfig(detector="dlib")).detector == "dlib"
    assert fake_release["calls"] == []  # nothing fetched: the cache decides


def test_offline_env_blocks_the_download_before_pip_runs(monkeypatch, tmp_path):
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run offline"))
    with pytest.raises(WeightsUnavailableError, match="DEEPFAKE_DETECTOR_OFFLINE is set"):
        fetch.pip_download("facenet-pytorch==2.6.0", tmp_path)
    monkeypatch.setenv(fetch.OFFLINE_ENV, "0")
    assert not fetch.offline()


def test_dark_frames_are_brightened_for_detection_only():
    rng = np.random.default_rng(0)
    bright = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    assert mtcnn.expose(bright) is bright  # well exposed: untouched, no copy
    dark = (bright * 0.25).astype(np.uint8)
    lifted = mtcnn.expose(dark)
    assert lifted.dtype == np.uint8 and lifted.shape == dark.shape
    assert np.percentile(lifted, 99) > 200  # the brightest pixels lifted near full scale...
    assert lifted.astype(int).sum() > 3 * dark.astype(int).sum()  # ...by one gain for the whole frame
    black = np.full((16, 16, 3), 2, np.uint8)
    assert mtcnn.expose(black).max() <= 2 * mtcnn.EXPOSURE_MAX_GAIN  # the gain is capped: noise stays dark


def _offline_pip(package, dest_dir, timeout=300.0):
    raise WeightsUnavailableError(f"pip download {package} failed: No matching distribution found")
