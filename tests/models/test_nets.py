"""Tests for pipeline.models.nets: shapes, named activations, init, transfer, training, save/load."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn import functional as F

from pipeline.models import TASKS, LaneNet, NamedLayers, TLClassifier, TLDetector, build_model

SMALL = 0.25  # width used by the demo on a CPU


def _build(task: str, seed: int = 0, **kwargs) -> NamedLayers:
    torch.manual_seed(seed)
    num_classes = None if task == "tl_detector" else kwargs.pop("num_classes", 3)
    return build_model(task, num_classes, kwargs.pop("in_hw", None), kwargs.pop("width", SMALL))


def _input_hw(model: NamedLayers) -> tuple[int, int]:
    return {LaneNet: (128, 128), TLClassifier: (32, 32), TLDetector: (45, 61)}[type(model)]


def _batch(model: NamedLayers, n: int = 2, seed: int = 123) -> torch.Tensor:
    return torch.randn(n, 3, *_input_hw(model), generator=torch.Generator().manual_seed(seed))


def _channels(model: NamedLayers, name: str) -> int:
    layer = getattr(model, name)
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _hooked_activations(model: NamedLayers, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(layer name, activation) in the order the layers ran, from forward hooks on every layer."""
    head = model.layer_names[-1]
    seen = []
    handles = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.append((name, out if name == head else F.relu(out))))
        for name in model.layer_names
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_hw", [(128, 128), (96, 160)])
def test_lanenet_output_shape(in_hw):
    model = LaneNet(num_classes=5, in_hw=in_hw, width=SMALL).eval()
    assert model(torch.randn(3, 3, *in_hw)).shape == (3, 5)


def test_lanenet_accepts_other_sizes_than_in_hw():
    model = LaneNet(num_classes=4, in_hw=(128, 128), width=SMALL).eval()
    assert model(torch.randn(2, 3, 96, 160)).shape == (2, 4)


@pytest.mark.parametrize("in_hw", [(32, 32), (48, 24)])
def test_tl_classifier_output_shape(in_hw):
    model = TLClassifier(num_classes=4, in_hw=in_hw, width=SMALL).eval()
    assert model(torch.randn(2, 3, *in_hw)).shape == (2, 4)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90))
def test_detector_heatmap_size_matches_output_for_any_size(h, w):
    model = TLDetector(width=SMALL).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w))
    assert out.shape == (1, 1, *model.heatmap_size(h, w))
    assert model.heatmap_size(h, w) == (math.ceil(h / 4), math.ceil(w / 4))


@pytest.mark.parametrize("hw", [(1, 1), (33, 17), (64, 64), (63, 65), (101, 37)])
def test_detector_output_shape(hw):
    model = TLDetector(width=SMALL).eval()
    assert TLDetector.stride == 4
    assert model(torch.zeros(2, 3, *hw)).shape == (2, 1, -(-hw[0] // 4), -(-hw[1] // 4))


def test_detector_initial_heatmap_is_the_prior():
    model = _build("tl_detector").eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(_batch(model)))
    assert torch.all((prob > 0.01) & (prob < 0.03)), (prob.min(), prob.max())


def test_channel_widths_scale_with_width():
    assert [_channels(LaneNet(3, width=SMALL), n) for n in LaneNet.layer_names] == \
        [16, 48, 96, 64, 64, 1024, 1024, 3]
    assert [_channels(TLClassifier(3, width=1.0), n) for n in TLClassifier.layer_names] == \
        [32, 32, 64, 64, 256, 3]
    assert [_channels(TLDetector(width=1.0), n) for n in TLDetector.layer_names] == \
        [32, 32, 64, 64, 64, 96, 96, 96, 1]
    assert _channels(TLDetector(width=0.01), "conv1") == 8  # never narrower than 8


def test_lanenet_first_conv_fits_small_inputs():
    conv1 = LaneNet(3, width=SMALL).conv1
    assert conv1.kernel_size[0] < 11 and conv1.stride[0] < 4


def test_detector_layers_are_as_drawn():
    model = TLDetector(width=SMALL)
    for name in ("conv1", "conv2"):
        layer = getattr(model, name)
        assert (layer.kernel_size, layer.stride, layer.padding) == ((7, 7), (1, 1), (3, 3))
    for name in ("conv3", "conv4", "conv5", "conv6", "conv7", "conv8"):
        layer = getattr(model, name)
        assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (1, 1), (1, 1))
    for name in ("pool1", "pool2"):
        pool = getattr(model, name)
        assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (5, 2, 2)
    assert model.heatmap.kernel_size == (1, 1) and model.heatmap.out_channels == 1


# --- named layers -------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_layer_names_are_the_layers_in_forward_order(task):
    model = _build(task).eval()
    ran = [name for name, _ in _hooked_activations(model, _batch(model))]
    assert ran == list(model.layer_names)
    assert all(isinstance(getattr(model, n), (nn.Conv2d, nn.Linear)) for n in model.layer_names)
    assert set(model.state_dict()) == {f"{n}.{p}" for n in model.layer_names for p in ("weight", "bias")}


@pytest.mark.parametrize("task", TASKS)
def test_features_at_equals_hooked_activations(task):
    model = _build(task).eval()
    x = _batch(model)
    with torch.no_grad():
        hooked = dict(_hooked_activations(model, x))
        feats = model.features_at(x, model.layer_names)
    assert list(feats) == list(model.layer_names)
    for name, act in feats.items():
        assert act.shape[:2] == (2, _channels(model, name))
        torch.testing.assert_close(act, hooked[name], rtol=0, atol=0)
    torch.testing.assert_close(feats[model.layer_names[-1]], model(x), rtol=0, atol=0)


def test_features_at_returns_exactly_the_requested_names_in_one_pass():
    model = _build("lane_classifier").eval()
    calls = []
    for name in model.layer_names:
        getattr(model, name).register_forward_hook(lambda *_a, name=name: calls.append(name))
    feats = model.features_at(_batch(model), ["fc6", "conv2", "conv2"])
    assert list(feats) == ["fc6", "conv2"]
    assert feats["conv2"].shape[1] == 48 and feats["fc6"].shape == (2, 1024)
    assert torch.all(feats["fc6"] >= 0)                       # after the ReLU
    assert calls == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6"]  # stopped after fc6


def test_features_at_empty_and_unknown_names():
    model = _build("tl_classifier").eval()
    assert model.features_at(_batch(model), []) == {}
    with pytest.raises(ValueError, match="pool1"):
        model.features_at(_batch(model), ["conv1", "pool1"])


@pytest.mark.parametrize("task", TASKS)
def test_transferable_is_all_but_the_head(task):
    model = _build(task)
    assert model.transferable() == model.layer_names[:-1]


def test_copying_transferable_layers_makes_their_outputs_identical():
    source = _build("lane_classifier", seed=0, num_classes=3).eval()
    target = _build("lane_classifier", seed=1, num_classes=7).eval()
    x = _batch(source)
    names = source.transferable()
    with torch.no_grad():
        before = target.features_at(x, names)
        assert not torch.equal(before["conv1"], source.features_at(x, ["conv1"])["conv1"])
        state = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in names}
        target.load_state_dict(state, strict=False)
        expected, got = source.features_at(x, names), target.features_at(x, names)
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    assert target(x).shape == (2, 7)


# --- init, training, persistence ----------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_init_is_deterministic_given_the_seed(task):
    a, b, c = _build(task, seed=0), _build(task, seed=0), _build(task, seed=1)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    for name in a.layer_names:
        assert not torch.equal(getattr(a, name).weight, getattr(c, name).weight), name


def test_init_scheme():
    model = _build("lane_classifier", width=0.5)
    assert all(torch.count_nonzero(getattr(model, n).bias) == 0 for n in model.layer_names)
    assert abs(model.fc7.weight.std().item() - 0.01) < 1e-3
    conv = model.conv3  # kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k))
    expected = math.sqrt(2 / (conv.out_channels * 9))
    assert abs(conv.weight.std().item() - expected) < 0.05 * expected
    detector = _build("tl_detector")
    assert torch.all(detector.heatmap.bias == -4.0)


def _loss(model: NamedLayers, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(model, TLDetector):
        target = torch.zeros_like(out)
        target[:, :, :6, :8] = 1.0  # a quarter of the cells: far from the 0.02 prior
        return F.binary_cross_entropy_with_logits(out, target)
    return F.cross_entropy(out, torch.arange(len(x)) % out.shape[1])


@pytest.mark.parametrize("task", TASKS)
def test_one_sgd_step_reduces_the_loss(task):
    model = _build(task).eval()  # eval: dropout off, so the step and both losses are deterministic
    x = _batch(model, n=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = _loss(model, x)
    loss.backward()
    for name in model.layer_names:
        grad = getattr(model, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all(), name
    optimizer.step()
    with torch.no_grad():
        assert _loss(model, x).item() < loss.item()


@pytest.mark.parametrize("task", TASKS)
def test_state_dict_round_trip_with_weights_only(task, tmp_path):
    model = _build(task, seed=0).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = _build(task, seed=1).eval()
    loaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = _batch(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# --- build_model --------------------------------------------------------------------------------

def test_build_model_returns_the_net_for_each_task():
    assert isinstance(build_model("lane_classifier", 3, (96, 160), SMALL), LaneNet)
    assert isinstance(build_model("tl_classifier", 2, None, SMALL), TLClassifier)
    assert isinstance(build_model("tl_detector", None, None, SMALL), TLDetector)
    assert isinstance(build_model("tl_detector", 1, (64, 64), SMALL), TLDetector)


def test_build_model_rejects_an_unknown_task():
    with pytest.raises(ValueError) as info:
        build_model("segmenter", 3, None, SMALL)
    assert all(task in str(info.value) for task in TASKS)


@pytest.mark.parametrize("task", ["lane_classifier", "tl_classifier"])
@pytest.mark.parametrize("num_classes", [None, 0, 1])
def test_build_model_rejects_too_few_classes(task, num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model(task, num_classes, None, SMALL)


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("tl_detector", 4, None, SMALL)
    with pytest.raises(ValueError, match="width"):
        build_model("tl_classifier", 3, None, 0.0)
    with pytest.raises(ValueError, match="in_hw"):
        build_model("lane_classifier", 3, (16, 16), SMALL)
