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
    """The stage on the trained net, its partner a copy with every hidden layer's units permuted (the same
    function: each unit's partner is known, and is driven exactly as the unit is)."""
    import mlflow

    from pipeline.models import stored
    from pipeline.models.lookup import load_model
    from tests.analysis.test_correlate import permuted_copy

    conf, trained = lights
    tracker = Tracker(conf)
    copy, perms = permuted_copy(load_model(trained["model_uri"], conf), seed=5)
    with tracker.stage_run("train"):
        mlflow.set_tag("pipeline.role", "visualize partner")    # never the newest model of train.task
        uri = stored.log_model(copy, copy.card, "tl_classifier", requirements=[]).model_uri
    partnered = conf.model_copy(update={"visualize": conf.visualize.model_copy(update={"partner_model": uri})})
    return conf, trained, run_stage(get_stage("visualize"), spark, partnered, Tracker(partnered)), perms


def test_visualize_logs_a_grid_per_layer_filters_dream_and_ratios(visualized):
    conf, trained, results, _ = visualized
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
    for layer in ("conv4", "fc6"):                     # the pass rate is the share of units whose ratio is >= 1
        ratio = [v for k, v in run.data.metrics.items() if k.startswith(f"ratio.{layer}.")]
        passed = [v for k, v in run.data.metrics.items() if k.startswith(f"faithful.{layer}.")]
        assert len(passed) == len(ratio) == 4 and sum(passed) == sum(r >= 1 for r in ratio)
        assert run.data.metrics[f"faithful_share.{layer}"] == pytest.approx(np.mean(passed))
    assert 0 <= run.data.metrics["off_end.conv4"] <= run.data.metrics["off_start.conv4"] <= 1
    assert "off_start.fc6" not in run.data.metrics                     # logits are never "off"


def test_the_partner_check_finds_each_unit_in_a_permuted_copy_and_drives_it_as_the_unit(visualized, one_thread):
    """Partner = the net with every hidden layer's units permuted: Hungarian on the colour sample must find, for
    each unit that varies there, the copy's unit computing the same function."""
    from pipeline.analysis.probe import activations, samples
    from pipeline.models import stored
    from pipeline.train.loader import rows
    from pipeline.train.spec import make_spec

    conf, trained, results, perms = visualized
    run = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"])
    m = run.data.metrics
    inverse = np.argsort(perms["conv4"])                # net's unit u is the copy's unit inverse[u]
    net = stored.load(trained["model_uri"], conf.mlflow.tracking_uri).eval()
    spec = make_spec(conf)
    sample = np.stack([r["image"] for _, r in zip(range(conf.visualize.color_images), rows(spec.loader("train")))])
    own = samples(activations({"n": net}, sample, ("conv4",))[("n", "conv4")], "mean")
    varies = own.std(0) > 0
    checked = [u for u in range(4) if varies[u]]
    assert checked and all(m[f"partner.conv4.{u}"] == inverse[u] for u in checked)
    assert "partner.fc6.0" not in m                                       # the head's units are the classes
    assert m["partner_faithful_share.conv4"] == pytest.approx(np.mean([m[f"partner_faithful.conv4.{u}"]
                                                                       for u in range(4)]))


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
    from pipeline.vocab import CROP_CLASSES
    from pipeline.data.synth import _LENS_LIT
    from pipeline.models.lookup import load_model
    from pipeline.train.loader import rows
    from pipeline.models.normalize import to_tensor
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


# ----------------------------------------------------------------------------------------- planted truths
#
# A traffic-light classifier wired by hand: conv1 unit 0 is a red detector that is off on grey (a negative bias),
# conv1 unit 1 a vertical-edge filter (Sobel in x on every channel), conv2 unit 0 the sum of unit 1 over its
# 3x3 window. What each unit wants is known, and so are the real images that excite it.

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
RED, EDGE = 0, 1


@pytest.fixture(scope="module")
def wired():
    import torch

    from pipeline.models import build_model

    torch.manual_seed(0)
    net = build_model("tl_classifier", 4, (32, 32), 0.25).eval()
    with torch.no_grad():
        for layer in (net.conv1, net.conv2):
            layer.weight.zero_()
            layer.bias.zero_()
        net.conv1.weight[RED, 0] = 1.0
        net.conv1.weight[RED, 1:] = -0.5
        net.conv1.bias[RED] = -1.0                  # off on mid grey (a normalised 0) and on white or black
        net.conv1.weight[EDGE] = torch.tensor(SOBEL_X / 3, dtype=torch.float32)
        net.conv2.weight[0, EDGE] = 1.0
    return net


def _real_images() -> dict:
    """Grey images with a red, green or blue square, and black-and-white vertical or horizontal stripes."""
    out = {}
    for k in range(6):
        for name, colour in (("red", (230, 20, 20)), ("green", (20, 230, 20)), ("blue", (20, 20, 230))):
            image = np.full((32, 32, 3), 128, np.uint8)
            image[4 + 2 * k:16 + 2 * k, 3 + 3 * k:15 + 3 * k] = colour
            out[f"{name}{k}"] = image
        stripes = ((np.arange(32) + k) // 2 % 2 * 255).astype(np.uint8)
        out[f"vertical{k}"] = np.repeat(np.broadcast_to(stripes[None, :], (32, 32))[..., None], 3, axis=2)
        out[f"horizontal{k}"] = np.repeat(np.broadcast_to(stripes[:, None], (32, 32))[..., None], 3, axis=2)
    return out


def _settings():
    from pipeline.config import load_config

    return load_config(overrides=["visualize.steps=48"]).visualize


def _gradient_energy(image: np.ndarray) -> tuple:
    """Mean squared difference of horizontally adjacent pixels (vertical edges) and of vertically adjacent ones."""
    grey = image.astype(float).mean(2)
    return float(np.mean(np.diff(grey, axis=1) ** 2)), float(np.mean(np.diff(grey, axis=0) ** 2))


def test_the_wired_units_top_real_images_are_the_ones_with_their_feature(wired, one_thread):
    from pipeline.analysis.evidence import TopK
    from pipeline.analysis.probe import activations

    real = _real_images()
    ids = list(real)
    acts = activations({"net": wired}, np.stack([real[i] for i in ids]), ("conv1", "conv2"))
    top = TopK({"conv1": 8, "conv2": 8}, 6)
    for layer in ("conv1", "conv2"):
        top.add(layer, acts[("net", layer)], ids)
    assert sorted(top.ids["conv1"][RED]) == [f"red{k}" for k in range(6)]
    assert sorted(top.ids["conv2"][0]) == [f"vertical{k}" for k in range(6)]


def test_a_red_detector_off_on_grey_still_gets_a_red_image_that_beats_the_real_ones(wired, one_thread):
    """The unit is 0 on the grey start (so its gradient is 0 there): only the pre-activation steps let it rise.
    Its synthetic image is red, and drives it harder than the best real image (a red square) does."""
    from pipeline.analysis import render, visualize
    from pipeline.analysis.evidence import TopK
    from pipeline.analysis.probe import activations

    real = _real_images()
    colors = render.ColorStats.fit(np.stack(list(real.values())))
    top = TopK({"conv1": 8}, 6).add("conv1", activations({"net": wired}, np.stack(list(real.values())),
                                                          ("conv1",))[("net", "conv1")], list(real))
    objective = render.channel("conv1", RED)
    best = np.array([visualize.real_best(wired, "conv1", RED, objective, top, real, False)])
    images, history = visualize.synthesize(wired, [objective], best, _settings(), (32, 32), colors)
    reached = visualize.measure(wired, [objective], images)
    metrics = visualize.layer_metrics("conv1", reached, best, history, hidden=True)
    assert metrics["off_start.conv1"] == 1.0 and metrics["off_end.conv1"] == 0.0
    assert metrics["faithful.conv1.0"] == 1.0 and metrics["faithful_share.conv1"] == 1.0
    r, g, b = images[0].reshape(-1, 3).astype(float).mean(0)
    assert r > g + 60 and r > b + 60, (r, g, b)


def test_a_unit_still_off_after_the_first_steps_keeps_climbing_until_it_turns_on(wired, one_thread):
    """The red detector is 0 on the grey start: with no pre-activation steps at all it never moves (zero gradient);
    with ``pre_while_off`` alone (every step reads the pre-activation while the unit is still 0) it turns on."""
    from pipeline.analysis import render

    objective = render.channel("conv1", RED)
    reached = {}
    for while_off in (False, True):
        param = render.Pixels(1, (32, 32), seed=0)
        images, history = render.optimize(wired, objective, param, 24, 0.05, pre_steps=0, pre_while_off=while_off)
        assert history[0, 0] == 0.0
        reached[while_off] = float(history[-1, 0])
    assert reached[False] == 0.0 and reached[True] > 0.0, reached


def test_a_permuted_partner_is_driven_exactly_as_the_unit_itself(wired, one_thread):
    """partner_metrics against a permuted copy gives the same verdicts as against the net itself (the copy's
    partner unit computes the unit's function), with the partner indices the permutation's inverse; against a net
    whose red unit is cut, the red image no longer drives its partner."""
    import torch

    from pipeline.analysis import visualize
    from tests.analysis.test_correlate import permuted_copy

    real = np.stack(list(_real_images().values()))
    red = np.full((2, 32, 32, 3), 128, np.uint8)
    red[:, 8:24, 8:24] = (240, 10, 10)
    synthetic = np.concatenate([red[:1], np.repeat(real[:1], 7, axis=0)])     # unit 0's image: red
    self_check = visualize.partner_metrics(wired, wired, "conv1", synthetic, real)
    copy, perms = permuted_copy(wired, seed=2)
    permuted = visualize.partner_metrics(wired, copy, "conv1", synthetic, real)
    inverse = np.argsort(perms["conv1"])
    for u in (RED, EDGE):                        # the wired units (the others are 0 everywhere)
        assert self_check[f"partner.conv1.{u}"] == u and permuted[f"partner.conv1.{u}"] == inverse[u]
        assert permuted[f"partner_faithful.conv1.{u}"] == self_check[f"partner_faithful.conv1.{u}"]
    assert RED == 0 and self_check["partner_faithful.conv1.0"] == 1.0      # the red image drives the red unit
    cut = permuted_copy(wired, seed=2)[0]
    with torch.no_grad():
        getattr(cut, "conv1").bias[inverse[RED]] = -1e3                     # the partner's red unit never fires
    assert visualize.partner_metrics(wired, cut, "conv1", synthetic, real)["partner_faithful.conv1.0"] == 0.0


def test_a_channel_summing_a_vertical_edge_filter_gets_vertical_edges(wired, one_thread):
    from pipeline.analysis import render, visualize

    objective = render.channel("conv2", 0)
    images, history = visualize.synthesize(wired, [objective], np.array([1.0]), _settings(), (32, 32))
    assert history[-1, 0] > history[0, 0]
    across, along = _gradient_energy(images[0])
    assert across > 3 * along, (across, along)


def test_the_ratio_is_against_the_objective_s_own_statistic(wired, one_thread):
    """A red dot has the highest peak, a wash of red the highest spatial mean: the channel objective is the mean,
    so its reference is the wash's, though the dot ranks first among the top images."""
    from pipeline.analysis import render, visualize
    from pipeline.analysis.evidence import TopK
    from pipeline.analysis.probe import activations

    dot = np.full((32, 32, 3), 128, np.uint8)
    dot[14:17, 14:17] = (255, 0, 0)
    real = {"dot": dot, "wash": np.full((32, 32, 3), (200, 90, 90), np.uint8)}
    acts = activations({"net": wired}, np.stack([real["dot"], real["wash"]]), ("conv1",))[("net", "conv1")]
    top = TopK({"conv1": 8}, 1).add("conv1", acts, ["dot", "wash"])
    assert list(top.ids["conv1"][RED]) == ["dot"]                       # ranked by its peak
    objective = render.channel("conv1", RED)
    every = visualize.measure(wired, [objective] * 2, np.stack([real["dot"], real["wash"]]))
    assert every[1] > 10 * every[0]
    assert visualize.real_best(wired, "conv1", RED, objective, top, real, False) == pytest.approx(every.max())
