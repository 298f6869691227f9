"""The correlate stage on the shared SparkSession: real Spark passes, real training runs, a real MLflow store."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.analysis import correlate
from pipeline.analysis.probe import Probe, layer_shapes
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train.spec import make_spec

SETTINGS = ["correlate.seeds=2", "correlate.width=0.25", "correlate.epochs=1", "correlate.mi_pairs=2",
            "correlate.clusters=3", "correlate.partitions=3"]


@pytest.fixture(scope="module")
def correlated(spark, tiny_data):
    conf = tiny_data(*SETTINGS)
    return conf, run_stage(get_stage("correlate"), spark, conf, Tracker(conf))


def _materialised(conf, uris, layer):
    """Every probe image through both nets, in memory: what the stage must reproduce without doing it."""
    import mlflow.pytorch
    import torch

    from pipeline.train.loader import rows, to_tensor

    spec = make_spec(conf)
    images = np.stack([r["image"] for r in rows(spec.loader("val"))])
    out = []
    for uri in uris:
        net = mlflow.pytorch.load_model(uri, map_location="cpu").eval()
        with torch.no_grad():
            out.append(net.features_at(to_tensor(images), [layer])[layer].double().mean((2, 3)).numpy())
    return out


def test_correlate_trains_two_seeds_and_logs_matrices_equal_to_numpy(correlated):
    conf, results = correlated
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    uris = run.data.params["correlate.model_uris"].split(",")
    assert len(uris) == 2 and uris[0] != uris[1]
    trained = [client.get_run(u.split("/")[1]) for u in uris]
    assert [t.data.params["train.seed"] for t in trained] == ["0", "1"]
    assert all(t.info.status == "FINISHED" and t.data.tags["mlflow.parentRunId"] == results["run_id"] for t in trained)
    from pipeline.train.evaluate import ModelNotFound, latest_model_uri

    try:                                         # later stages' "newest model" is never a seed net trained here
        newest = latest_model_uri(Tracker(conf), "lane_classifier", conf.train.data)
    except ModelNotFound:
        newest = None
    assert newest not in uris
    layers = run.data.params["correlate.layers_resolved"].split(",")
    assert layers == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for key in ("corr_matched_mean.hungarian.conv1", "corr_matched_mean.greedy.conv5", "corr_matched_mean.semi.conv3",
                "random.corr_matched_mean.hungarian.conv1", "permuted.corr_matched_mean.hungarian.conv1",
                "cka.conv1", "cka_debiased.conv5", "svcca.conv2", "unmatched_units.conv4", "dead_units.net0.conv5",
                "mutual_information_bits.conv1"):
        value = run.data.metrics[key]
        assert np.isfinite(value), key
    local = client.download_artifacts(results["run_id"], "correlate")
    a, b = _materialised(conf, uris, "conv1")
    expected = np.corrcoef(np.c_[a, b], rowvar=False)
    n = a.shape[1]
    live_a, live_b = a.std(0) > 0, b.std(0) > 0
    between = np.load(f"{local}/conv1/between.npy")
    assert np.allclose(between[np.ix_(live_a, live_b)], expected[:n, n:][np.ix_(live_a, live_b)], atol=1e-6)
    assert np.allclose(np.load(f"{local}/conv1/within_a.npy")[np.ix_(live_a, live_a)],
                       expected[:n, :n][np.ix_(live_a, live_a)], atol=1e-6)
    assert np.load(f"{local}/cka.npy").shape == (5, 5)
    figures = {p.path for p in client.list_artifacts(results["run_id"], "figures")}
    assert {"figures/correlate_cka.png", "figures/correlate_matched_curves.png",
            "figures/correlate_conv1_matrices.png"} <= figures


def test_a_rerun_reuses_the_trained_nets(spark, correlated, capsys):
    conf, results = correlated
    again = run_stage(get_stage("correlate"), spark, conf, Tracker(conf))
    assert capsys.readouterr().out.count("reusing train run") == 2
    assert again["corr_matched_mean.hungarian.conv1"] == pytest.approx(results["corr_matched_mean.hungarian.conv1"])


@pytest.mark.parametrize("unit", ["mean", "position"])
def test_the_sums_do_not_depend_on_the_number_of_partitions(spark, correlated, unit):
    conf, results = correlated
    import mlflow.pytorch

    uris = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"]).data.params["correlate.model_uris"]
    models = [mlflow.pytorch.load_model(u, map_location="cpu").eval() for u in uris.split(",")]
    spec = make_spec(conf)
    layers = ("conv1", "conv3")
    shapes = layer_shapes(models[0], spec.in_hw, layers)
    nets = {"net0": models[0], "net1": models[1], "random": correlate.random_net(models[0], 1)}
    one, four = (correlate.first_pass(spark, Probe(spec.split_url("val"), spec.kind, layers, unit, 5, 0, p), nets,
                                      shapes) for p in (1, 4))
    assert one.mean.n == four.mean.n > 0
    assert np.allclose(one.mean.cross, four.mean.cross, rtol=1e-12, atol=1e-9)
    for layer in layers:
        assert np.allclose(one.permuted[layer].cross, four.permuted[layer].cross, rtol=1e-12, atol=1e-9)
        if unit == "position":
            assert one.positions[layer].n == one.mean.n * shapes[layer][1] * shapes[layer][2]
            assert np.allclose(one.positions[layer].cross, four.positions[layer].cross, rtol=1e-12, atol=1e-9)


def test_a_layer_the_net_lacks_is_named_with_the_ones_it_has(spark, correlated):
    from pipeline.config import ConfigError

    conf, _ = correlated
    with pytest.raises(ConfigError, match=r"LaneNet has no layer conv9; its layers: conv1, conv2"):
        run_stage(get_stage("correlate"), spark, correlated[0].model_copy(update={
            "correlate": conf.correlate.model_copy(update={"layers": ["conv9"]})}), Tracker(conf))
