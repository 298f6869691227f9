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
    import torch

    from pipeline.models import stored
    from pipeline.train.loader import rows
    from pipeline.models.normalize import to_tensor

    spec = make_spec(conf)
    images = np.stack([r["image"] for r in rows(spec.loader("val"))])
    out = []
    for uri in uris:
        net = stored.load(uri)
        with torch.no_grad():
            out.append(net.features_at(to_tensor(images), [layer])[layer].double().mean((2, 3)).numpy())
    return out


def test_correlate_trains_two_seeds_and_logs_matrices_equal_to_numpy(correlated):
    conf, results = correlated
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(results["run_id"])
    uris = run.data.params["correlate.model_uris"].split(",")
    assert len(uris) == 2 and uris[0] != uris[1]
    trained = [client.get_run(client.get_logged_model(u[len("models:/"):]).source_run_id) for u in uris]
    assert [t.data.params["train.seed"] for t in trained] == ["0", "1"]
    assert all(t.info.status == "FINISHED" and t.data.tags["mlflow.parentRunId"] == results["run_id"] for t in trained)
    from pipeline.models.lookup import ModelNotFound, latest_model_uri

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
    from pipeline.models import stored

    uris = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"]).data.params["correlate.model_uris"]
    models = [stored.load(u) for u in uris.split(",")]
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


# ----------------------------------------------------------------------------------------- planted truths
#
# Cases whose right answer is known by construction: a net against a copy of itself with its units permuted (the
# matching must give the permutation back, every similarity 1), against an untrained net (the random baseline's
# level), and every logged number against numpy on the activations held in memory.

LAYERS = ("conv1", "conv3")


def _nets_of(conf, results) -> dict:
    from pipeline.models import stored

    uris = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"]).data.params["correlate.model_uris"]
    models = [stored.load(u) for u in uris.split(",")]
    return {"net0": models[0], "net1": models[1], "random": correlate.random_net(models[0], conf.correlate.random_seed)}


@pytest.fixture(scope="module")
def probed(spark, correlated):
    """The two trained nets, the stage's random net, and every probe row (val) decoded in memory."""
    from schemas.datasets import SCHEMAS, field_decoders

    conf, results = correlated
    spec = make_spec(conf)
    decode = field_decoders(SCHEMAS[spec.kind], ["image"])["image"]
    rows = sorted(spark.read.parquet(spec.split_url("val")).select("id", "image").collect(), key=lambda r: r["id"])
    return conf, spec, _nets_of(conf, results), [r["id"] for r in rows], np.stack([decode(r["image"]) for r in rows])


def permuted_copy(net, seed: int = 0):
    """``net`` with the units of every hidden layer in another order and the next layer's inputs reordered to
    match: unit j of the copy's layer is unit ``perms[layer][j]`` of ``net``'s, and the copy computes the same
    function. Returns ``(copy, perms)``."""
    import copy

    import torch

    other = copy.deepcopy(net).eval()
    rng = np.random.default_rng(seed)
    names = net.layer_names
    perms = {}
    with torch.no_grad():
        for layer, following in zip(names[:-1], names[1:]):
            out = getattr(other, layer)
            perm = rng.permutation(out.weight.shape[0])
            perms[layer] = perm
            out.weight.copy_(out.weight[perm])
            out.bias.copy_(out.bias[perm])
            nxt = getattr(other, following)
            w = nxt.weight
            if w.dim() == 2 and out.weight.dim() == 4:      # conv -> linear: the flattened (channel, y, x) inputs
                w.copy_(w.view(w.shape[0], len(perm), -1)[:, perm].reshape(w.shape))
            else:
                w.copy_(w[:, perm])
    return other, perms


def direct_sums(nets: dict, images: np.ndarray, layers: tuple, unit: str, shapes: dict) -> correlate.Sums:
    """The stage's accumulation (:func:`correlate.add_batch`) on images in memory, without Spark; each image's
    partner is the next one."""
    from pipeline.analysis.probe import activations

    sums = correlate.empty_sums(list(nets), shapes, unit)
    others = np.roll(images, -1, axis=0)
    partner = lambda names: activations({n: nets[n] for n in names}, others, layers)   # noqa: E731
    return correlate.add_batch(sums, activations(nets, images, layers), partner, unit)


@pytest.mark.parametrize("unit", ["mean", "position"])
def test_a_permuted_copy_is_matched_back_unit_for_unit(probed, one_thread, unit):
    import torch

    conf, spec, trained, _, images = probed
    a = trained["net0"]
    b, perms = permuted_copy(a, seed=3)
    x = torch.randn(4, 3, *spec.in_hw)
    with torch.no_grad():
        assert torch.allclose(b(x), a(x), atol=1e-5)                    # the same function
        assert not torch.allclose(b.features_at(x, ["conv3"])["conv3"], a.features_at(x, ["conv3"])["conv3"])
    nets = {"net0": a, "net1": b, "random": trained["random"]}
    shapes = layer_shapes(a, spec.in_hw, LAYERS)
    sums = direct_sums(nets, images, LAYERS, unit, shapes)
    for layer in LAYERS:
        f = correlate.layer_findings(sums, layer, "net0", "net1", conf.correlate.match_threshold, 2, 0)
        rows, cols = f.hungarian
        assert len(rows) == shapes[layer][0] - len(f.dead["net0"]) > shapes[layer][0] // 2
        exact = perms[layer][cols] == rows                              # B's unit j is A's unit perm[j] ...
        twins = f.within_a[rows, perms[layer][cols]] > 1 - 1e-9         # ... or A's unit's exact twin on these
        assert (exact | twins).all() and exact.mean() > 0.9             # images (firing on one image only)
        if unit == "position":
            assert exact.all()
        for method, values in f.matched.items():
            assert values == pytest.approx(np.ones(len(rows)), abs=1e-9), method
        assert f.cka == pytest.approx(1.0, abs=1e-9) and f.cka_debiased == pytest.approx(1.0, abs=1e-9)
        assert f.svcca == pytest.approx(1.0, abs=1e-6)
        assert f.unmatched == []
        assert sorted(f.dead["net1"]) == sorted(np.argsort(perms[layer])[f.dead["net0"]].tolist())


def test_an_untrained_net_matches_no_better_than_the_random_baseline(probed, one_thread):
    """A trained net against untrained ones of other seeds: matched as well as against the stage's own random
    baseline (another untrained net), and far below the permuted copy's 1."""
    conf, spec, trained, _, images = probed
    a = trained["net0"]
    shapes = layer_shapes(a, spec.in_hw, LAYERS)
    between = {layer: [] for layer in LAYERS}
    for seed in (71, 72, 73):
        nets = {"net0": a, "net1": correlate.random_net(a, seed), "random": trained["random"]}
        sums = direct_sums(nets, images, LAYERS, "position", shapes)
        for layer in LAYERS:
            f = correlate.layer_findings(sums, layer, "net0", "net1", conf.correlate.match_threshold, 2, 0)
            between[layer].append(f.matched["hungarian"].mean())
    for layer in LAYERS:
        f = correlate.layer_findings(sums, layer, "net0", "net1", conf.correlate.match_threshold, 2, 0)
        random = f.baselines["random"]["hungarian"].mean()
        assert max(between[layer]) < 0.8, (layer, between[layer])
        if shapes[layer][0] >= correlate.MIN_UNITS:        # 16 units (conv1) spread too much from seed to seed
            assert np.abs(np.array(between[layer]) - random).max() < 0.15, (layer, between[layer], random)


def test_cka_on_kornblith_et_al_s_published_example():
    """Kornblith et al. 2019's notebook: linear CKA 0.55761, debiased 0.51346."""
    from pipeline.analysis.moments import Moments

    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    m = Moments({"x": 10, "y": 10}).add({"x": x, "y": y})
    assert m.cka("x", "y") == pytest.approx(0.55761, abs=5e-6)
    assert m.cka("x", "y", debiased=True) == pytest.approx(0.51346, abs=5e-6)


@pytest.fixture(scope="module")
def partners(spark, probed):
    """``{row id: the id of the row the stage's pass paired it with}``, read off the Spark pass itself: the partner
    activations it hands to ``add`` identify the image they came from."""
    from pipeline.analysis.probe import fold

    conf, spec, nets, ids, _ = probed
    probe = Probe(spec.split_url("val"), spec.kind, ("conv1",), "mean", 5, 0, 3)
    seen = fold(spark, probe, {"net0": nets["net0"]}, zero=list, merge=lambda x, y: x + y,
                add=lambda s, acts, partner, batch: s.append((batch, acts[("net0", "conv1")].mean((2, 3)),
                                                               partner(["net0"])[("net0", "conv1")].mean((2, 3)))))
    own = {i: v for batch, acts, _ in seen for i, v in zip(batch, acts)}
    out = {}
    for batch, _, others in seen:
        for i, v in zip(batch, others):
            found = [j for j, w in own.items() if np.allclose(v, w, rtol=0, atol=1e-12)]
            assert len(found) == 1, (i, found)
            out[i] = found[0]
    return out


def test_the_permuted_baseline_pairs_every_image_with_another(probed, partners):
    _, _, _, ids, _ = probed
    assert len(ids) < 2 * 16        # fewer rows than two per hash bucket: single-row buckets occur
    assert sorted(partners) == sorted(ids)
    assert all(partners[i] != i for i in ids)                     # never the row itself
    assert sorted(partners.values()) == sorted(ids)               # a permutation of the images


# --- the direct implementation: numpy and scipy on the materialised activations

def _unit_samples(act: np.ndarray, unit: str) -> np.ndarray:
    return act.mean((2, 3)) if unit == "mean" else act.transpose(0, 2, 3, 1).reshape(-1, act.shape[1])


def _live(x: np.ndarray) -> np.ndarray:
    return np.flatnonzero(x.max(0) > x.min(0))


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    zx, zy = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    return zx.T @ zy / len(x)


def _matched_means(corr: np.ndarray) -> dict:
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(corr, maximize=True)
    pairs, free = [], np.ones_like(corr, bool)
    for _ in range(min(corr.shape)):
        k = np.argmax(np.where(free, corr, -np.inf))
        i, j = divmod(int(k), corr.shape[1])
        pairs.append(corr[i, j])
        free[i, :] = free[:, j] = False
    return {"hungarian": corr[r, c].mean(), "greedy": np.mean(pairs), "semi": corr.max(1).mean()}


def _linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Kornblith et al.'s ``feature_space_linear_cka``."""
    x, y = x - x.mean(0), y - y.mean(0)
    n = len(x)

    def similarity(p, q):
        value = np.linalg.norm(p.T @ q) ** 2
        if not debiased:
            return value
        rp, rq = np.einsum("ij,ij->i", p, p), np.einsum("ij,ij->i", q, q)
        return value - n / (n - 2.0) * np.sum(rp * rq) + rp.sum() * rq.sum() / ((n - 1.0) * (n - 2.0))
    return similarity(x, y) / np.sqrt(similarity(x, x) * similarity(y, y))


def _svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    def reduced(z):
        u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
        share = np.cumsum(s ** 2) / np.sum(s ** 2)
        return u[:, :int(np.argmax(share >= keep - 1e-12)) + 1]
    rho = np.linalg.svd(reduced(x).T @ reduced(y), compute_uv=False)
    return float(np.mean(np.clip(rho, 0, 1)))


def _bits(x: np.ndarray, y: np.ndarray, bins: int) -> float:
    counts, *_ = np.histogram2d(x, y, bins=[np.linspace(x.min(), x.max(), bins + 1),
                                            np.linspace(y.min(), y.max(), bins + 1)])
    p = counts / counts.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / (px @ py)[nz])))


def reference_metrics(acts: dict, partner_index: np.ndarray, unit: str, c) -> dict:
    """What :func:`correlate.metrics_of` must log, computed directly: ``acts[(net, layer)]`` every probe image's
    activation, ``partner_index[i]`` the row image i is paired with in the permuted baseline."""
    from scipy.optimize import linear_sum_assignment

    out = {}
    for layer in LAYERS:
        a, b, r = (_unit_samples(acts[(n, layer)], unit) for n in ("net0", "net1", "random"))
        b_other = _unit_samples(acts[("net1", layer)][partner_index], unit)
        la, lb, lr = _live(a), _live(b), _live(r)
        between = _corr(a[:, la], b[:, lb])
        for base, corr in (("", between), ("random.", _corr(a[:, la], r[:, lr])),
                           ("permuted.", _corr(a[:, la], b_other[:, _live(b_other)]))):
            for method, value in _matched_means(corr).items():
                out[f"{base}corr_matched_mean.{method}.{layer}"] = value
        rows, cols = linear_sum_assignment(between, maximize=True)
        out[f"unmatched_units.{layer}"] = int((between[rows, cols] < c.match_threshold).sum()) + len(la) - len(rows)
        out[f"dead_units.net0.{layer}"] = a.shape[1] - len(la)
        out[f"dead_units.net1.{layer}"] = b.shape[1] - len(lb)
        ma, mb = (_unit_samples(acts[(n, layer)], "mean") for n in ("net0", "net1"))   # CKA: per-image means
        out[f"cka.{layer}"] = _linear_cka(ma, mb, debiased=False)
        out[f"cka_debiased.{layer}"] = _linear_cka(ma, mb, debiased=True)
        out[f"svcca.{layer}"] = _svcca(a, b)
        best = np.argsort(-between[rows, cols], kind="stable")[:c.mi_pairs]
        out[f"mutual_information_bits.{layer}"] = np.mean(
            [_bits(a[:, la[rows[k]]], b[:, lb[cols[k]]], c.mi_bins) for k in best])
    return out


@pytest.mark.parametrize("unit", ["mean", "position"])
def test_every_logged_number_equals_numpy_on_the_materialised_activations(spark, probed, partners, unit):
    """The Spark passes (sums, then histograms) against numpy on every probe image held in memory."""
    from pipeline.analysis.probe import activations

    conf, spec, nets, ids, images = probed
    c = conf.correlate
    shapes = layer_shapes(nets["net0"], spec.in_hw, LAYERS)
    probe = Probe(spec.split_url("val"), spec.kind, LAYERS, unit, 5, 0, 2)
    sums = correlate.first_pass(spark, probe, nets, shapes)
    findings = [correlate.layer_findings(sums, layer, "net0", "net1", c.match_threshold, c.clusters, c.random_seed)
                for layer in LAYERS]
    correlate.second_pass(spark, probe, nets, sums, findings, c)
    logged = correlate.metrics_of(findings)
    index = {i: k for k, i in enumerate(ids)}
    expected = reference_metrics(activations(nets, images, LAYERS), np.array([index[partners[i]] for i in ids]),
                                 unit, c)
    assert sums.mean.n == len(ids)
    assert set(logged) == set(expected)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key
