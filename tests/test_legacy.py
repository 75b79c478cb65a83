"""Reference-implementation ("legacy") checkpoints: exact reproduction and mapping onto our model."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
import torch.nn as nn
import torchvision

from deepfake_detector.checkpoint import load_torch_file, torch_error_detail
from deepfake_detector.errors import UnsafeFileError, UserError
from deepfake_detector.models import legacy as lg
from tests.helpers import MkdirPayload


class ReferenceModel(nn.Module):
    """The public reference implementation's model as its TRAINING notebook wrote it (mean over dim 1),
    verbatim except ``weights=None`` (no download)."""

    def __init__(self, num_classes, latent_dim=2048, lstm_layers=1, hidden_dim=2048, bidirectional=False):
        super().__init__()
        model = torchvision.models.resnext50_32x4d(weights=None)
        self.model = nn.Sequential(*list(model.children())[:-2])
        self.lstm = nn.LSTM(latent_dim, hidden_dim, lstm_layers, bidirectional)
        self.relu = nn.LeakyReLU()
        self.dp = nn.Dropout(0.4)
        self.linear1 = nn.Linear(2048, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        batch_size, seq_length, c, h, w = x.shape
        x = x.view(batch_size * seq_length, c, h, w)
        fmap = self.model(x)
        x = self.avgpool(fmap)
        x = x.view(batch_size, seq_length, 2048)
        x_lstm, _ = self.lstm(x, None)
        return fmap, self.dp(self.linear1(torch.mean(x_lstm, dim=1)))


def _randomize_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics so a wrong mapping of buffers would show."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = ReferenceModel(2).eval()
    _randomize_bn(ref, 1)
    with torch.no_grad():
        ref.linear1.weight.mul_(20)  # spread the two classes so probabilities are not all ~0.5
    return ref


@pytest.fixture(scope="module")
def exact(reference):
    return lg.build_exact_model(reference.state_dict(), readout="mean")  # the training notebook's forward


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(3)
    return torch.randn(1, 2, 3, 64, 64)  # small frames keep the real ResNeXt-50 forward cheap


def test_reference_layout_is_detected(reference):
    sd = reference.state_dict()
    assert "lstm.bias_ih_l0" not in sd  # the reference's LSTM really has no biases
    assert lg.is_legacy_state_dict(sd)
    spec = lg.inspect_legacy(sd)
    shape = (spec.trunk, spec.latent_dim, spec.hidden_dim, spec.num_layers)
    assert shape == ("resnext50_32x4d", 2048, 2048, 1)
    # DataParallel prefix and {"state_dict": ...} wrapping are understood too
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    assert lg.is_legacy_state_dict(wrapped)
    assert not lg.is_legacy_state_dict({"model": sd, "config": {}})


@pytest.fixture(scope="module")
def exact_logits(exact, clip):
    with torch.no_grad():
        return exact(clip)


@pytest.mark.slow  # a real ResNeXt-50 + 2048-wide LSTM on CPU
def test_exact_mode_matches_reference_forward(reference, exact_logits, clip):
    with torch.no_grad():
        ref_logits = reference(clip)[1]
    ours = exact_logits
    assert torch.equal(ours[:, [1, 0]], ref_logits)  # bit-for-bit, classes swapped to index 1 = FAKE
    ref_p_fake = torch.softmax(ref_logits, 1)[:, 0]  # reference: class 0 = FAKE
    our_p_fake = torch.softmax(ours, 1)[:, 1]  # ours: class 1 = FAKE
    assert torch.allclose(our_p_fake, ref_p_fake, atol=1e-6, rtol=0)
    assert 0.0 < float(our_p_fake) < 1.0


@pytest.mark.slow  # a real ResNeXt-50 + 2048-wide LSTM on CPU
def test_exact_mode_runs_each_video_as_the_reference_did_with_batch_one(exact, exact_logits, clip):
    other = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        batched = exact(torch.cat([clip, other]))  # a batch must not mix videos (the reference's LSTM would)
        # exposed halves (used by explanations) agree with the forward
        feats = exact.frame_features(other[0]).unsqueeze(0)
        via_head = exact.head(feats)
    assert torch.allclose(batched[0], exact_logits[0], atol=1e-6)
    assert torch.allclose(via_head[0], batched[1], atol=1e-6)


@pytest.mark.slow  # a real ResNeXt-50 + 2048-wide LSTM on CPU
def test_fixed_mode_maps_weights_onto_our_model(reference, exact, exact_logits, clip):
    fixed = lg.build_fixed_model(reference.state_dict())
    sd = reference.state_dict()
    ours = fixed.state_dict()
    assert torch.equal(ours["backbone.0.weight"], sd["model.0.weight"])
    assert torch.equal(ours["backbone.7.2.bn3.running_var"], sd["model.7.2.bn3.running_var"])
    assert torch.equal(ours["lstm.weight_hh_l0"], sd["lstm.weight_hh_l0"])
    assert float(ours["lstm.bias_ih_l0"].abs().sum()) == 0.0
    assert torch.equal(ours["fc.weight"][1], sd["linear1.weight"][0])  # FAKE row moved to index 1
    assert torch.equal(ours["fc.bias"][0], sd["linear1.bias"][1])
    with torch.no_grad():
        # one frame: a length-1 sequence either way, so both modes agree ...
        p_fixed_1 = torch.softmax(fixed(clip[:, :1]), 1)[:, 1]
        p_exact_1 = torch.softmax(exact(clip[:, :1]), 1)[:, 1]
        # ... with more frames our LSTM carries state across time and the numbers differ (documented)
        p_fixed = torch.softmax(fixed(clip), 1)[:, 1]
        p_exact = torch.softmax(exact_logits, 1)[:, 1]
    assert torch.allclose(p_fixed_1, p_exact_1, atol=1e-5)
    assert not torch.allclose(p_fixed, p_exact, atol=1e-6)


# --- small trunk: file-level behaviour without the 230 MB ResNeXt state ------------------------------


def _tiny_reference_state(hidden: int = 16, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    trunk = lg._our_backbone("tiny")
    ref = lg.reference_model_class()(2, 64, 1, hidden, False, trunk=trunk)
    _randomize_bn(ref, seed + 1)
    return ref.eval()


class ReferencePredictModel(ReferenceModel):
    """The reference's Predict notebook / web app ``Model``: the same modules as its training notebook
    (above: ResNeXt-50 trunk, average pool, ``nn.LSTM(2048, 2048, 1, False)`` whose 4th argument is
    ``bias``, called on ``[1, T, 2048]`` without ``batch_first``), but ``linear1(x_lstm[:, -1, :])``: only
    the LSTM output of the last frame is scored. ``weights=None``: nothing is downloaded."""

    def forward(self, x):
        batch_size, seq_length, c, h, w = x.shape
        x = x.view(batch_size * seq_length, c, h, w)
        fmap = self.model(x)
        x = self.avgpool(fmap)
        x = x.view(batch_size, seq_length, 2048)
        x_lstm, _ = self.lstm(x, None)
        return fmap, self.dp(self.linear1(x_lstm[:, -1, :]))


@pytest.fixture(scope="module")
def predict_model(reference):
    """The predict code's network reading the same weights as ``reference`` (one state dict, two readouts)."""
    model = ReferencePredictModel(2).eval()
    model.load_state_dict(reference.state_dict())
    return model


def reference_predict_p_fake(model: nn.Module, img: torch.Tensor) -> float:
    """The reference's ``predict``: softmax over the logits (``nn.Softmax()`` picks dim 1 for 2-D),
    class 0 = FAKE."""
    with torch.no_grad():
        _, logits = model(img)
        return float(nn.Softmax(dim=1)(logits)[0, 0])


@pytest.mark.slow  # a real ResNeXt-50 + 2048-wide LSTM on CPU, saved and loaded as a reference file
def test_exact_mode_reproduces_the_reference_predict_path(reference, predict_model, tmp_path, caplog):
    from deepfake_detector.inference import Detector
    from tests.helpers import make_video
    from tests.test_inference import reference_input

    path = tmp_path / "model_90_acc_4_frames_FF_data.pt"
    torch.save(predict_model.state_dict(), path)
    video = make_video(tmp_path / "clip.mp4", frames=12, size=(176, 144), face=True)
    try:
        with caplog.at_level(logging.WARNING):
            det = Detector.from_checkpoint(path, device="cpu", workers=0, legacy_mode="exact")
        mean = Detector.from_checkpoint(path, device="cpu", workers=0, legacy=True, legacy_mode="exact",
                                        legacy_readout="mean")
    finally:
        path.unlink()  # 230 MB
    assert "--legacy --legacy-mode exact" in caplog.text and "silence" not in caplog.text
    assert det.info()["legacy"]["readout"] == "last" and mean.info()["legacy"]["readout"] == "mean"
    x = reference_input(video, 4)
    pred = det.predict_one(video)
    assert pred.status == "ok" and pred.frames == 4
    p_ref = reference_predict_p_fake(predict_model, x)
    assert abs(pred.p_fake - p_ref) < 1e-5, (pred.p_fake, p_ref)
    # the training notebook's readout stays selectable, and really is another number
    p_mean = mean.predict_one(video).p_fake
    with torch.no_grad():
        p_train = float(torch.softmax(reference(x)[1], 1)[0, 0])
    assert abs(p_mean - p_train) < 1e-5
    assert abs(p_mean - p_ref) > 1e-4


@pytest.mark.slow  # a real ResNeXt-50 + 2048-wide LSTM on CPU
def test_exact_model_last_readout_matches_reference_predict_tensor_for_tensor(reference, predict_model, clip):
    exact_last = lg.build_exact_model(reference.state_dict())  # the default readout
    assert exact_last.readout == "last"
    other = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = exact_last(torch.cat([clip, other]))  # batched: still one video at a time
        via_head = exact_last.head(exact_last.frame_features(other[0]).unsqueeze(0))
        for i, x in enumerate((clip, other)):
            assert torch.equal(ours[i:i + 1, [1, 0]], predict_model(x)[1])
    assert torch.allclose(via_head[0], ours[1], atol=1e-6)
    with pytest.raises(UserError, match="readout"):
        lg.build_exact_model(reference.state_dict(), readout="first")


def test_tiny_trunk_exact_and_fixed(tmp_path):
    ref = _tiny_reference_state()
    sd = ref.state_dict()
    spec = lg.inspect_legacy(sd)
    assert spec.trunk == "tiny" and spec.hidden_dim == 16 and spec.latent_dim == 64
    x = torch.randn(1, 3, 3, 64, 64)
    exact = lg.build_exact_model(sd)
    fixed = lg.build_fixed_model(sd)
    with torch.no_grad():
        assert torch.equal(exact(x)[:, [1, 0]], ref(x)[1])
        assert torch.allclose(torch.softmax(fixed(x[:, :1]), 1), torch.softmax(exact(x[:, :1]), 1), atol=1e-6)


def test_frames_from_reference_file_names():
    assert lg.legacy_frames_from_name("model_97_acc_100_frames_FF_data.pt") == 100
    assert lg.legacy_frames_from_name("checkpoints/model_87_acc_20_frames_final_data.pt") == 20
    assert lg.legacy_frames_from_name("best.pt") is None


def test_not_a_legacy_dict_is_a_user_error():
    with pytest.raises(UserError):
        lg.inspect_legacy({"fc.weight": torch.zeros(2, 3)})
    bad = _tiny_reference_state().state_dict()
    bad["linear1.weight"] = torch.zeros(3, 16)
    with pytest.raises(UserError, match="linear1"):
        lg.inspect_legacy(bad)


def test_pickled_whole_model_is_refused(tmp_path, caplog):
    ref = _tiny_reference_state()
    path = tmp_path / "model_90_acc_10_frames.pt"
    torch.save(nn.Sequential(nn.Linear(4, 2)), path)  # a whole model object: needs arbitrary unpickling
    with pytest.raises(UnsafeFileError, match="refusing"):
        load_torch_file(path)
    # a plain state dict of the same model loads fine
    torch.save(ref.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        assert lg.is_legacy_state_dict(load_torch_file(path))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_unreadable_files_are_user_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError):
        load_torch_file(path)
    with pytest.raises(UserError, match="not found"):
        load_torch_file(tmp_path / "missing.pt")


def _assert_clean_line(message: str) -> None:
    """One line, none of torch's generic advice, not cut off mid-sentence."""
    assert "\n" not in message
    for noise in ("Weights only load failed", "In PyTorch 2.6", "Re-running", "Check the documentation",
                  "Please file an issue"):
        assert noise not in message
    assert message.rstrip().endswith(")") or message.rstrip()[-1].isalnum()


@pytest.mark.parametrize("kind", ["garbage", "truncated-zip", "broken-tar"])
def test_corrupt_checkpoint_is_unreadable_not_unsafe(tmp_path, kind):
    path = tmp_path / "bad.pt"
    if kind == "garbage":
        path.write_bytes(b"garbage\n")
    elif kind == "truncated-zip":
        torch.save(_tiny_reference_state().state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError) as info:
        load_torch_file(path)
    assert not isinstance(info.value, UnsafeFileError)
    message = str(info.value)
    assert "not a readable checkpoint (corrupt" in message and "refusing" not in message
    _assert_clean_line(message)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-tar"])
def test_pickle_payload_is_still_refused_as_unsafe_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model.0.weight": torch.zeros(2), "x": MkdirPayload(str(marker))}, path,
               _use_new_zipfile_serialization=zip_format)
    torch.load(path, weights_only=False)  # the payload is live
    assert marker.exists()
    marker.rmdir()
    with pytest.raises(UnsafeFileError) as info:
        load_torch_file(path)
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}") and "GLOBAL" in message and "mkdir" in message
    _assert_clean_line(message)


def test_torch_error_detail_keeps_the_first_sentence_only():
    exc = pickle.UnpicklingError(
        "Weights only load failed. This file can still be loaded, to do so you have two options, "
        "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) In PyTorch "
        "2.6, we changed the default.\n\t(2) Alternatively, to load with `weights_only=True` please "
        "check.\n\t"
        "WeightsUnpickler error: Unsupported global: GLOBAL torch.nn.Linear was not an allowed global by "
        "default. Please use `torch.serialization.add_safe_globals([torch.nn.Linear])` or ...\n\n"
        "Check the documentation of torch.load to learn more.")
    assert torch_error_detail(exc) == ("Unsupported global: GLOBAL torch.nn.Linear was not an allowed "
                                          "global by default")
    assert torch_error_detail(RuntimeError("")) == "RuntimeError"
    assert torch_error_detail(KeyError("x")) == "KeyError: 'x'"
    long = RuntimeError("x" * 1000)
    assert torch_error_detail(long).endswith("...") and len(torch_error_detail(long)) == 300
