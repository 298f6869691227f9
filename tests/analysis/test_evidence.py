"""Real evidence: Spark's top-k per unit equals a brute-force top-k over the same rows; receptive fields."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.analysis.evidence import TopK, patch, receptive_field
from pipeline.analysis.probe import Probe, fold, layer_shapes
from pipeline.models import build_model
from pipeline.train.loader import rows
from pipeline.models.normalize import to_tensor
from pipeline.train.spec import make_spec


def test_spark_top_k_equals_brute_force_top_k_over_the_same_rows(spark, tiny_data):
    conf = tiny_data()
    spec = make_spec(conf)
    torch.manual_seed(0)
    net = build_model("lane_classifier", len(spec.classes), spec.in_hw, 0.25).eval()
    layers = ("conv2", "fc8")
    units = {l: s[0] for l, s in layer_shapes(net, spec.in_hw, layers).items()}
    probe = Probe(spec.split_url("val"), spec.kind, layers, "mean", 4, 0, 3)
    top = fold(spark, probe, {"m": net}, zero=lambda: TopK(units, 3),
               add=lambda t, acts, _, ids: [t.add(l, acts[("m", l)], ids) for l in layers][-1],
               merge=lambda a, b: a.merge(b))
    every = list(rows(spec.loader("val")))
    with torch.no_grad():
        acts = net.features_at(to_tensor(np.stack([r["image"] for r in every])), layers)
    for layer in layers:
        a = acts[layer].double().numpy()
        peak = a.reshape(len(a), a.shape[1], -1).max(2) if a.ndim == 4 else a
        for u in range(units[layer]):
            order = sorted(range(len(every)), key=lambda i: (-peak[i, u], every[i]["id"]))[:3]
            assert list(top.ids[layer][u]) == [every[i]["id"] for i in order]
            assert np.allclose(top.values[layer][u], peak[order, u])
        means = a.mean((2, 3)) if a.ndim == 4 else a
        assert np.allclose(top.best_mean[layer], means.max(0))
    i = [r["id"] for r in every].index(top.ids["conv2"][0][0])         # the kept position is the peak's
    y, x = top.where["conv2"][0][0]
    assert float(acts["conv2"][i, 0, y, x]) == pytest.approx(top.values["conv2"][0][0], rel=1e-6)


def test_receptive_field_of_a_conv_stack_and_its_patch():
    net = build_model("tl_classifier", 5, (32, 32), 0.25)
    assert receptive_field(net, "conv1") == (3, 1, 0.0)                 # 3x3, padding 1: centred on the pixel
    assert receptive_field(net, "conv2") == (5, 1, 0.0)
    assert receptive_field(net, "conv3") == (10, 2, 0.5)                # after a 2x2 pool
    assert receptive_field(net, "fc5")[0] == 0                          # a vector: the whole image
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    p = patch(image, receptive_field(net, "conv2"), 10, 12)
    assert p.shape == (5, 5, 3) and np.array_equal(p, image[8:13, 10:15])
    corner = patch(image, receptive_field(net, "conv2"), 0, 0)
    assert np.all(corner[:2] == 128) and np.array_equal(corner[2:, 2:], image[:3, :3])
