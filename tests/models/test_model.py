"""The model is wired as specified, and the known reference's wiring bugs stay fixed."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
from torch import nn

from deepfake_detector.config import ModelConfig
from deepfake_detector.errors import UnsafeFileError, WeightsUnavailableError
from deepfake_detector.models import BACKBONES, build_model, get_backbone_spec
from tests.helpers import MkdirPayload


def tiny(**kw) -> nn.Module:
    torch.manual_seed(0)
    # the seed's head (features only, mean over time); the default recipe's variants: tests/engine
    cfg = dict(backbone="tiny", pretrained=False, hidden_size=12, dropout=0.4, temporal_diff=False,
               pooling="mean")
    cfg.update(kw)
    return build_model(ModelConfig(**cfg))


def clips(b=3, t=5, size=24, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, size, size, generator=g)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_has_the_three_backbones():
    assert {"resnext50_32x4d", "mobilenet_v2", "tiny"} <= set(BACKBONES)
    assert BACKBONES["resnext50_32x4d"].feature_dim == 2048
    assert BACKBONES["mobilenet_v2"].feature_dim == 1280
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(ModelConfig(backbone="nope", pretrained=False))


def test_forward_shape_and_submodules():
    model = tiny().eval()
    out = model(clips())
    assert out.shape == (3, 2)
    for name in ("backbone", "pool", "lstm", "dropout", "fc"):
        assert isinstance(getattr(model, name), nn.Module)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    # frame_features + head compose to forward
    x = clips()
    feats = model.frame_features(x.flatten(0, 1)).reshape(3, 5, -1)
    assert feats.shape == (3, 5, 64)
    torch.testing.assert_close(model.head(feats), model(x))


def test_output_of_a_video_does_not_depend_on_its_batch():
    model = tiny().eval()
    x = clips(b=4)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
        other = model(torch.cat([x[2:3], clips(b=3, seed=7)]))[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other, together[2], rtol=1e-4, atol=1e-5)


def test_cpu_chunking_in_eval_gives_the_same_features_and_never_chunks_batchnorm_training(monkeypatch):
    from deepfake_detector.models import resnext_lstm

    model = tiny().eval()
    x = clips(b=4, t=5).flatten(0, 1)  # 20 frames
    with torch.no_grad():
        whole = model.frame_features(x)
        monkeypatch.setattr(resnext_lstm, "CPU_CHUNK_FRAMES", 6)  # 6 + 6 + 6 + 2
        sizes = []
        real = model._pooled
        monkeypatch.setattr(model, "_pooled", lambda f: (sizes.append(f.shape[0]), real(f))[1])
        chunked = model.frame_features(x)
    assert sizes == [6, 6, 6, 2]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    sizes.clear()
    model.train()
    model.frame_features(x)  # BatchNorm batch statistics need every frame at once
    assert sizes == [20]


def test_lstm_is_batch_first_with_bias():
    model = tiny()
    assert model.lstm.batch_first is True
    assert model.lstm.bias is True
    assert any(name.startswith("bias_") for name, _ in model.lstm.named_parameters())


def test_reversing_frames_reverses_the_lstm_input_and_changes_the_output():
    model = tiny().eval()
    seen = []
    model.lstm.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x = clips(b=2, t=6)
    with torch.no_grad():
        fwd = model(x)
        rev = model(x.flip(1))
    assert seen[0].shape == (2, 6, 64)  # [B, T, F]: batch first, time second
    torch.testing.assert_close(seen[1], seen[0].flip(1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fwd, rev, atol=1e-6), "frame order must matter to an LSTM"


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, False), (2, True)])
def test_parameter_count_matches_the_architecture(layers, bidir):
    h = 12
    model = tiny(hidden_size=h, num_layers=layers, bidirectional=bidir)
    f = 64
    dirs = 2 if bidir else 1
    lstm = 0
    for layer in range(layers):
        inp = f if layer == 0 else h * dirs
        lstm += 4 * (inp * h + h * h + 2 * h) * dirs
    fc = h * dirs * 2 + 2
    assert n_params(model.lstm) == lstm
    assert n_params(model.fc) == fc
    assert n_params(model) == n_params(model.backbone) + lstm + fc


def test_resnext_parameter_count_is_the_seed_architecture():
    # resnext50_32x4d, hidden 2048, 1 layer (the defaults) with the seed's head
    model = build_model(ModelConfig(pretrained=False, temporal_diff=False, pooling="mean"))
    from torchvision.models import resnext50_32x4d

    full = resnext50_32x4d(weights=None)
    trunk = n_params(full) - n_params(full.fc)
    f = h = 2048
    assert n_params(model.backbone) == trunk
    assert n_params(model) == trunk + 4 * (f * h + h * h + 2 * h) + (h * 2 + 2)
    with torch.no_grad():
        assert model.eval().frame_features(torch.zeros(1, 3, 64, 64)).shape == (1, 2048)


def test_mobilenet_backbone_is_1280_wide():
    model = build_model(ModelConfig(backbone="mobilenet_v2", pretrained=False, hidden_size=8))
    with torch.no_grad():
        assert model.eval().frame_features(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_dropout_acts_on_features_not_logits():
    model = tiny(dropout=0.5).train()
    fc_inputs = []
    model.fc.register_forward_pre_hook(lambda mod, args: fc_inputs.append(args[0].detach().clone()))
    torch.manual_seed(3)
    logits = model(clips(b=4))
    assert (fc_inputs[0] == 0).any(), "dropout must zero some features before the classifier"
    torch.testing.assert_close(logits, model.fc(fc_inputs[0]))  # nothing is applied after fc
    model.eval()
    with torch.no_grad():
        model(clips(b=4))
    assert not (fc_inputs[-1] == 0).any()


def test_freeze_backbone_keeps_it_fixed_and_in_eval_mode():
    model = tiny(freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.lstm.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.fc.parameters())


def test_channels_last_gives_the_same_output():
    model = tiny().eval()
    x = clips()
    with torch.no_grad():
        ref = model(x)
        model.set_channels_last(True)
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# --- weights ------------------------------------------------------------------------------------


def test_weights_file_accepts_a_torchvision_full_state_dict(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(5)
    full = mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(full.state_dict(), path)  # has classifier.* keys, which must be dropped
    model = build_model(ModelConfig(backbone="mobilenet_v2", weights_file=str(path), hidden_size=8))
    for k, v in full.features.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_weights_file_resnext_key_mapping(tmp_path):
    from torchvision.models import resnext50_32x4d

    torch.manual_seed(6)
    full = resnext50_32x4d(weights=None)
    path = tmp_path / "rx.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    model = build_model(ModelConfig(weights_file=str(path), hidden_size=8))
    assert torch.equal(model.backbone.state_dict()["0.weight"], full.conv1.weight)
    assert torch.equal(model.backbone.state_dict()["7.2.bn3.running_var"], full.layer4[2].bn3.running_var)


def test_weights_file_that_does_not_fit_names_the_keys(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3), "something.else": torch.zeros(1)}, path)
    with pytest.raises(WeightsUnavailableError, match="missing keys") as exc:
        build_model(ModelConfig(backbone="mobilenet_v2", weights_file=str(path), hidden_size=8))
    assert "unexpected keys:" in str(exc.value) and "something.else" in str(exc.value)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_model(ModelConfig(backbone="mobilenet_v2", weights_file=str(tmp_path / "nope.pth")))


def test_weights_file_with_code_execution_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"features.0.0.weight": MkdirPayload(str(marker))}, fh, protocol=2)
    with pytest.raises(UnsafeFileError, match="refused"):
        build_model(ModelConfig(backbone="mobilenet_v2", weights_file=str(path), hidden_size=8))
    assert not marker.exists()


def test_pretrained_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.models._api as api

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as exc:
        build_model(ModelConfig(backbone="mobilenet_v2", pretrained=True, hidden_size=8))
    msg = str(exc.value)
    assert "could not be downloaded" in msg and "--weights-file" in msg and "--no-pretrained" in msg
    assert "\n" not in msg
    assert get_backbone_spec("mobilenet_v2").weights().url.rsplit("/", 1)[-1] in msg


def test_load_weights_false_never_touches_the_network(monkeypatch):
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    build_model(ModelConfig(backbone="mobilenet_v2", pretrained=True, hidden_size=8), load_weights=False)
