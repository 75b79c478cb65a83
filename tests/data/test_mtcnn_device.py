"""MTCNN runs on the device the user asked for: ``predict``/``serve --device cpu`` keep it off a GPU, and
``auto`` is read by ``device.resolve_device`` (CUDA when there is one).

This machine may have no CUDA, so "there is a GPU" is ``torch.cuda.is_available`` patched to True; the
tests check which device the nets are asked for and never run anything on CUDA.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deepfake_detector import device as device_rules
from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import mtcnn
from deepfake_detector.data import preprocess as pp
from deepfake_detector.data.faces import detector_from_config
from deepfake_detector.inference import Detector, _onnx_detector_device
from tests.data.test_mtcnn import _random_nets, _save_published
from tests.helpers import make_tiny_checkpoint, make_video, run_cli_in_process

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _save_published(tmp_path_factory.mktemp("mtcnn") / "w", _random_nets())


@pytest.fixture(scope="module")
def mtcnn_model(tmp_path_factory, weights) -> tuple[Path, Path]:
    """A tiny checkpoint trained (so it says) on MTCNN crops, and a short face video."""
    d = tmp_path_factory.mktemp("mtcnn_model")
    pre = PreprocessConfig(frames=4, size=32, detector="mtcnn", mtcnn_weights=str(weights), timeout_s=0)
    ckpt = make_tiny_checkpoint(d / "m.pt", pre, seq_len=4, hidden_size=8)
    return ckpt, make_video(d / "face.mp4", frames=8, size=(96, 80))


@pytest.fixture
def a_gpu(monkeypatch) -> list:
    """CUDA "available"; fresh detector and net caches; ``load_nets`` records the device it is given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mtcnn, "_NETS", {})
    monkeypatch.setattr(pp, "_DETECTOR_CACHE", {})
    asked: list = []
    real = mtcnn.load_nets

    def load_nets(folder, device="cpu"):
        asked.append(torch.device(device))
        if torch.device(device).type != "cpu":  # never touch a GPU that is not there
            return _random_nets()
        return real(folder, device)

    monkeypatch.setattr(mtcnn, "load_nets", load_nets)
    return asked


@pytest.mark.parametrize("how", ["cli", "serve"])
def test_device_cpu_keeps_mtcnn_on_the_cpu_when_there_is_a_gpu(a_gpu, mtcnn_model, capsys, how):
    ckpt, video = mtcnn_model
    if how == "cli":
        r = run_cli_in_process(capsys, "predict", ckpt, video, "--device", "cpu", "--workers", "0")
        assert r.returncode == 0, r.stderr
    else:  # what `serve --device cpu` loads; an upload runs in this process (the batcher decodes with
        import argparse  # clip_config())

        from deepfake_detector.commands import serve

        parser = argparse.ArgumentParser()
        serve.add_arguments(parser)
        opts = serve._detector_options(parser.parse_args([str(ckpt), "--device", "cpu"]))
        det = Detector.from_checkpoint(ckpt, **dict(opts, workers=0))
        assert det.clip_config().detector_device == "cpu"
        assert det.predict_one(video).scored
    assert a_gpu == [torch.device("cpu")]


def test_the_detector_passes_its_resolved_device_to_the_decoders(mtcnn_model):
    ckpt, _ = mtcnn_model
    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    cfg = det.clip_config()
    assert cfg.detector_device == "cpu" and det.preprocess.detector_device == "auto"  # the model's is kept
    built = detector_from_config(cfg)
    assert isinstance(built, mtcnn.MTCNNDetector) and built.device == "cpu"
    # auto: device.py's answer here (no CUDA on a test machine: the CPU); a torch.device is taken as it is
    auto = Detector.from_checkpoint(ckpt, device="auto", workers=0)
    assert auto.clip_config().detector_device == str(device_rules.resolve_device("auto"))
    det.detector_device = torch.device("cuda", 1)
    assert det.clip_config().detector_device == "cuda:1"


def test_auto_resolves_through_device_py(a_gpu, weights, monkeypatch):
    seen: list = []
    real = device_rules.resolve_device

    def spy(name="auto", local_rank=None):
        seen.append(name)
        return real(name, local_rank)

    monkeypatch.setattr(device_rules, "resolve_device", spy)
    cfg = PreprocessConfig(detector="mtcnn", mtcnn_weights=str(weights))
    assert cfg.detector_device == "auto"  # preprocess (no --device flag) keeps today's rule
    det = detector_from_config(cfg)
    assert det.device == "auto"
    det._nets()
    assert seen == ["auto"] and a_gpu == [torch.device("cuda")]
    cpu = detector_from_config(dataclasses.replace(cfg, detector_device="cpu"))
    cpu._nets()
    assert seen == ["auto", "cpu"] and a_gpu[-1] == torch.device("cpu")


def test_one_detector_per_device_and_the_device_is_no_clip_setting():
    cfg = PreprocessConfig(detector="mtcnn", mtcnn_weights="/w")
    on_cpu = pp._detector_for(dataclasses.replace(cfg, detector_device="cpu"))
    on_gpu = pp._detector_for(dataclasses.replace(cfg, detector_device="cuda"))
    assert (on_cpu.device, on_gpu.device) == ("cpu", "cuda")  # nothing loaded yet: the nets load lazily
    assert pp._detector_for(dataclasses.replace(cfg, detector_device="cpu")) is on_cpu
    assert "detector_device" not in pp.CLIP_KEYS  # a cache made on a GPU is reused on a CPU
    with pytest.raises(ValueError, match="detector_device"):
        PreprocessConfig(detector_device=" ")


def test_an_onnx_models_face_detector_follows_device_where_torch_can(monkeypatch):
    assert _onnx_detector_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # onnxruntime may have CUDA where this torch has not: the model runs there, MTCNN on the CPU
    assert _onnx_detector_device("cuda") == torch.device("cpu")
    assert _onnx_detector_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _onnx_detector_device("auto") == torch.device("cuda")
    assert _onnx_detector_device("cpu") == torch.device("cpu")
