"""Layer probes on units wired by hand: the sky's colour encodes the time of day, a constant layer encodes
nothing, and the exact ridge fit from sufficient statistics equals a plain least-squares solve."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.analysis import layer_probes as lp
from pipeline.analysis.moments import Moments
from pipeline.data.synth import SynthConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)

CFG = SynthConfig(width=320, height=180, frames_per_sequence=2)
HW = (64, 64)


class Wired(nn.Module):
    """``sky``: the mean of each colour channel over the top quarter of the image (where the sky is: its colour
    is the time of day); ``flat``: four units that never change (they encode nothing)."""

    layer_names = ("sky", "flat")

    def features_at(self, x, layers):
        out = {"sky": x[:, :, : x.shape[2] // 4].mean((2, 3)), "flat": torch.ones(len(x), 4)}
        return {name: out[name] for name in layers}


@pytest.fixture(scope="module")
def wired():
    rendered = lp.render(range(40), 5, CFG, HW, 2)
    return lp.score(lp.partial(Wired(), ["sky", "flat"], rendered), ["sky", "flat"], resamples=500)


def test_the_sky_layer_encodes_the_time_of_day_and_not_the_lanes(wired):
    lo = wired.accuracy[("sky", "time_of_day")][1]
    assert lo > wired.chance["time_of_day"] + 0.3, wired.accuracy
    assert wired.accuracy[("sky", "lane_class")][1] < wired.chance["lane_class"] + 0.1   # sky says nothing of lanes


def test_a_layer_that_never_changes_encodes_nothing(wired):
    for target in lp.TARGETS:
        share = wired.accuracy[("flat", target)][0]
        assert share <= wired.chance[target] + 1e-9, target        # its probe can only say the commonest class
    assert wired.held == 20 and wired.fitted == 60                  # 10 of 40 sequences held out, 2 frames each
    assert {"probe.time_of_day.sky", "probe.time_of_day.sky_lo", "probe.chance.scenery"} <= set(wired.metrics)
    assert "context_layer_probes" in wired.figures


def test_ridge_from_moments_is_the_least_squares_solution():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 5)) * [1, 2, 3, 0.5, 1] + 4
    y = np.eye(3)[rng.integers(0, 3, 300)]
    m = Moments({"z": 5, "lane_class": 3}).add({"z": z[:100], "lane_class": y[:100]})
    m.merge(Moments({"z": 5, "lane_class": 3}).add({"z": z[100:], "lane_class": y[100:]}))
    ridge = lp.fit(m, "lane_class", alpha=1e-3)
    zs = (z - z.mean(0)) / z.std(0, ddof=1)
    w = np.linalg.solve(zs.T @ zs + 1e-3 * 300 * np.eye(5), zs.T @ (y - y.mean(0)))
    assert np.allclose(ridge.weights, w, atol=1e-9)
    assert np.array_equal(lp.predict(ridge, z), (y.mean(0) + zs @ w).argmax(1))


def test_probe_layers_runs_as_one_spark_job_and_agrees_with_the_driver(spark, wired):
    result = lp.probe_layers(spark, Wired(), ["sky", "flat"], seed=5, cfg=CFG, hw=HW, sequences=40, frames=2,
                             resamples=500)
    for key, triple in wired.accuracy.items():
        assert result.accuracy[key][0] == pytest.approx(triple[0]), key
