"""The visualize stage on a traffic-light classifier trained here: figures, ratios, and what its logits want."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker

SMALL = ["visualize.units=4", "visualize.steps=48", "visualize.top_k=4", "visualize.facets=2",
         "visualize.facet_units=2", "visualize.dream_steps=8", "visualize.color_images=64", "visualize.partitions=3"]


@pytest.fixture(scope="module")
def lights(spark, tmp_path_factory):
    """A traffic-light classifier that learned something (val accuracy about 0.9 on 200 small synthetic frames)."""
    from tests.conftest import TINY, make_conf

    conf = make_conf(tmp_path_factory.mktemp("lights"), *TINY, "ingest.num_frames=200", "ingest.frames_per_sequence=4",
                     "train.task=tl_classifier", "train.epochs=8", "train.lr=0.003", "train.batch_size=16", *SMALL)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    trained = run_stage(get_stage("train"), spark, conf, Tracker(conf))
    assert trained["val_accuracy"] > 0.7, trained
    return conf, trained


@pytest.fixture(scope="module")
def visualized(spark, lights):
    conf, trained = lights
    return conf, trained, run_stage(get_stage("visualize"), spark, conf, Tracker(conf))


def test_visualize_logs_a_grid_per_layer_filters_dream_and_ratios(visualized):
    conf, trained, results = visualized
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    assert results["model_uri"] == trained["model_uri"]                         # the newest of train.task
    assert run.data.params["visualize.layers_resolved"] == "conv4,fc6"          # last conv layer and the head
    figures = {a.path for a in client.list_artifacts(results["run_id"], "figures")}
    assert {"figures/visualize_conv4.png", "figures/visualize_fc6.png", "figures/visualize_filters.png",
            "figures/visualize_dream.png"} <= figures
    ratios = [v for k, v in run.data.metrics.items() if k.startswith("ratio.fc6.")]
    assert len(ratios) == 4 and all(np.isfinite(ratios))
    assert run.data.metrics["objective_gain.conv4"] > 0 and run.data.metrics["objective_gain.fc6"] > 0


def _near(images: np.ndarray, centre: float, within: float = 45.0) -> float:
    """Share of the vivid (saturated, not dark) pixels whose hue lies within ``within`` degrees of ``centre``."""
    px = images.reshape(-1, 3) / 255.0
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    vivid = (hsv[:, 1] > 0.25) & (hsv[:, 2] > 0.2)
    distance = np.abs((hsv[vivid, 0] * 360 - centre + 180) % 360 - 180)
    return float((distance <= within).mean()) if vivid.any() else 0.0


def test_the_red_logit_wants_red_and_the_green_logit_green(lights):
    """With the stage's own settings (decorrelated pixels, decay, blur every step), measured against the hues the
    synthetic generator paints the lit lenses with."""
    import torch

    from pipeline.analysis import render, visualize
    from pipeline.data.records import CROP_CLASSES
    from pipeline.data.synth import _LENS_LIT
    from pipeline.train.evaluate import load_model
    from pipeline.train.loader import rows, to_tensor
    from pipeline.train.spec import make_spec

    conf, trained = lights
    net = load_model(trained["model_uri"], conf).eval()
    spec = make_spec(conf)
    crops = np.stack([r["image"] for r in rows(spec.loader("train"))][:256])
    colors = render.ColorStats.fit(crops)
    head = render.head_of(net)
    classes = [CROP_CLASSES.index(c) for c in ("red", "green")]
    with torch.no_grad():
        best = net(to_tensor(crops)).max(0).values.double().numpy()[classes]
    images, history = visualize.synthesize(net, [render.class_logit(head, c) for c in classes], best,
                                           conf.visualize, spec.in_hw, colors)
    assert (history[-1] > history[0]).all()
    hue = {name: colorsys.rgb_to_hsv(*(np.array(_LENS_LIT[name]) / 255))[0] * 360 for name in ("red", "green")}
    red_img, green_img = images
    assert _near(red_img, hue["red"]) > 0.5 > _near(red_img, hue["green"])
    assert _near(green_img, hue["green"]) > 0.5 > _near(green_img, hue["red"])
