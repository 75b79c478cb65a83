"""``export --format onnx`` and ONNX Runtime in predict: PyTorch's scores, self-describing, clear errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_detector.config import PreprocessConfig, to_dict
from deepfake_detector.errors import UserError
from deepfake_detector.export import (
    EXTRA_HINT,
    FORMAT_KEY,
    TOLERANCE,
    check_export,
    export_onnx,
    is_onnx_file,
    load_onnx,
)
from deepfake_detector.inference import Detector
from deepfake_detector.models import legacy as lg
from deepfake_detector.utils import sha256_file
from tests import helpers

for _module in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_module, reason=f"needs the onnx extra: {EXTRA_HINT}")

PRE = PreprocessConfig(frames=6, size=64, margin=0.3, detector="dlib")


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return helpers.make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", PRE, seq_len=6,
                                        dropout=0.1, fc_scale=40.0, threshold=0.37, metrics={"val_auc": 0.75})


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("videos")
    return [helpers.make_video(d / "face.mp4", frames=24, size=(176, 144), face=True),
            helpers.make_video(d / "face2.mp4", frames=30, size=(160, 128), face=True),
            helpers.make_video(d / "noface.mp4", frames=20, size=(96, 80), face=False)]


def test_metadata_round_trip(ckpt, exported):
    import onnx

    assert exported.max_dp <= TOLERANCE and exported.dynamic_frames
    model = onnx.load(str(exported.path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    assert props[FORMAT_KEY] == "1" and model.producer_name == "deepfake-detector"
    assert json.loads(props["preprocess"]) == to_dict(PRE)
    assert json.loads(props["seq_len"]) == 6 and json.loads(props["frames"]) == 6
    assert json.loads(props["crop_size"]) == 64 and json.loads(props["threshold"]) == pytest.approx(0.37)
    assert json.loads(props["labels"]) == ["REAL", "FAKE"]
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert json.loads(props["model_config"])["backbone"] == "tiny"
    assert json.loads(props["calibration"]) is None and json.loads(props["metrics"]) == {"val_auc": 0.75}
    assert props["source_sha256"] == sha256_file(ckpt) and props["package_version"]
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[0] and isinstance(dims[0], str) and dims[2:] == [3, 64, 64]

    opened = load_onnx(exported.path, device="cpu")
    assert opened.seq_len == 6 and opened.threshold == pytest.approx(0.37) and opened.preprocess == PRE
    assert opened.meta["onnx"]["source_sha256"] == sha256_file(ckpt)


@pytest.mark.parametrize("batch,frames", [(1, 6), (5, 6), (2, 3), (3, 11)])
def test_onnx_runtime_matches_pytorch_on_random_clips(ckpt, exported, batch, frames):
    """Dynamic batch and frame count; max |ΔP(FAKE)| within the tolerance the export promises."""
    from deepfake_detector.data.dataset import clips_to_device

    det = Detector.from_checkpoint(ckpt, device="cpu", workers=0)
    onnx_net = load_onnx(exported.path, device="cpu").net
    gen = torch.Generator().manual_seed(batch * 100 + frames)
    raw = torch.randint(0, 256, (batch, frames, 64, 64, 3), dtype=torch.uint8, generator=gen)
    x = clips_to_device(raw, "cpu")
    with torch.inference_mode():
        ref = torch.softmax(det.model(x), 1)[:, 1]
        got = torch.softmax(onnx_net(x), 1)[:, 1]
    assert float((ref - got).abs().max()) <= TOLERANCE
    assert bool(((ref > 1e-3) & (ref < 1 - 1e-3)).all())  # not saturated: the comparison means something


def test_detector_predict_matches_pytorch_on_videos(ckpt, exported, videos):
    pt = Detector.from_checkpoint(ckpt, device="cpu", workers=0).predict(videos)
    det = Detector.from_checkpoint(exported.path, device="cpu", workers=0)
    ox = det.predict(videos)
    assert [p.status for p in ox] == [p.status for p in pt] and all(p.p_fake is not None for p in ox)
    assert max(abs(a.p_fake - b.p_fake) for a, b in zip(pt, ox)) <= TOLERANCE
    assert [p.label for p in ox] == [p.label for p in pt] and [p.frames for p in ox] == [p.frames for p in pt]
    info = det.info()
    assert info["runtime"].startswith("onnxruntime") and info["threshold"] == pytest.approx(0.37)


def test_onnx_content_under_another_name_is_recognised(exported, tmp_path, ckpt):
    other = tmp_path / "model.bin"
    other.write_bytes(exported.path.read_bytes())
    assert is_onnx_file(other) and not is_onnx_file(ckpt)
    det = Detector.from_checkpoint(other, device="cpu", workers=0)
    assert det.info()["runtime"].startswith("onnxruntime")


def test_cli_export_then_predict(ckpt, videos, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    res = helpers.run_cli_in_process(capsys, "export", ckpt, "--format", "onnx", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "max |dP(FAKE)|" in res.stdout and out.is_file()
    res = helpers.run_cli_in_process(capsys, "predict", out, videos[0], "--workers", "0",
                                     "-o", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["predictions"]
    ref = Detector.from_checkpoint(ckpt, device="cpu", workers=0).predict_one(videos[0])
    assert abs(rows[0]["p_fake"] - ref.p_fake) <= TOLERANCE and rows[0]["label"] == ref.label


def test_explain_is_refused_on_the_cli_and_skipped_in_the_api(exported, videos, tmp_path, capsys, caplog):
    res = helpers.run_cli_in_process(capsys, "predict", exported.path, videos[0],
                                     "--explain", tmp_path / "hm")
    assert res.returncode == 2 and "--explain needs the PyTorch checkpoint" in _one_line(res.stderr)
    det = Detector.from_checkpoint(exported.path, device="cpu", workers=0)
    with caplog.at_level(logging.WARNING):
        pred = det.predict_one(videos[0], explain_dir=tmp_path / "hm2")
    assert pred.p_fake is not None and pred.explanation is None and "no heat maps" in caplog.text


def test_non_onnx_and_metadata_less_files_are_refused_with_one_line(tmp_path, videos, capsys):
    import onnx
    from onnx import TensorProto, helper

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model at all\n" * 10)
    res = helpers.run_cli_in_process(capsys, "predict", junk, videos[0], "--workers", "0")
    assert res.returncode == 2 and "not a valid ONNX file" in _one_line(res.stderr)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    bare = tmp_path / "bare.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(bare))
    res = helpers.run_cli_in_process(capsys, "predict", bare, videos[0], "--workers", "0")
    assert res.returncode == 2 and "without deepfake-detector metadata" in _one_line(res.stderr)


def test_missing_extra_names_it(exported, ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(UserError) as err:
        Detector.from_checkpoint(exported.path, device="cpu", workers=0)
    assert EXTRA_HINT in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"deepfake-detector\[onnx\]"):
        export_onnx(ckpt, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_failed_check_leaves_no_file(ckpt, exported, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="export check failed"):
        export_onnx(ckpt, out, tolerance=-1.0)
    with pytest.raises(UserError, match="already an ONNX model"):
        export_onnx(exported.path, out)
    assert list(tmp_path.iterdir()) == []


def _legacy_file(path: Path) -> Path:
    torch.manual_seed(0)
    ref = lg.reference_model_class()(2, 64, 1, 16, False, trunk=lg._our_backbone("tiny"))
    torch.save(ref.state_dict(), path)
    return path


def test_legacy_fixed_exports_and_exact_is_refused(tmp_path, capsys):
    src = _legacy_file(tmp_path / "legacy_model_6_frames.pt")
    res = helpers.run_cli_in_process(capsys, "export", src, "--legacy", "--legacy-mode", "exact",
                                     "--out", tmp_path / "e.onnx")
    assert res.returncode == 2 and "exact cannot be exported" in _one_line(res.stderr)
    result = export_onnx(src, tmp_path / "f.onnx", legacy=True, legacy_frames=6)
    opened = load_onnx(result.path, device="cpu")
    assert opened.channel_order == "bgr" and opened.meta["legacy"]["mode"] == "fixed" and opened.seq_len == 6
    fixed = Detector.from_checkpoint(src, device="cpu", workers=0, legacy=True, legacy_frames=6)
    assert check_export(fixed.model, result.path, 6, int(opened.preprocess.size))[0] <= TOLERANCE


def test_onnx_scores_are_finite_probabilities(exported):
    net = load_onnx(exported.path, device="cpu").net
    p = torch.softmax(net(torch.zeros(2, 6, 3, 64, 64)), 1)[:, 1].numpy()
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
