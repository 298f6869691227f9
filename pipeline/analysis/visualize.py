"""The visualize stage: what each unit of a trained net expects to see, beside the real images that excite it.

extract   : a logged model of any task (``visualize.model_uri``, default the newest of ``train.task``), the colour
            statistics of its own training images, the probe split;
transform : one Spark job (:mod:`pipeline.analysis.probe`) keeps the top-k real images of every unit
            (:class:`pipeline.analysis.evidence.TopK`); on the driver, activation maximization
            (:mod:`pipeline.analysis.render`) of the first ``visualize.units`` units of each layer as one batch, a
            multifaceted start from each k-means cluster of a unit's top images, a deep dream of a real image;
load      : per layer one grid (synthetic | facets | top real patches), the first-layer filters, the dream; each
            synthetic image's activation as a ratio to the best real image's; ``name value`` lines.

The ratio's denominator is the objective's own statistic over every probe image (:func:`real_best`): for a conv
channel the best spatial mean (``TopK.best_mean``), not the spatial mean of the images ranked first by their peak.
A unit is *faithful* when its synthetic image drives it at least as much as its best real image does
(``faithful.<layer>.<unit>``, the layer's pass rate ``faithful_share.<layer>``). The first ``PRE_STEPS`` steps of
every optimisation maximise the unit before its ReLU (:func:`pipeline.analysis.render.optimize`), so a unit that
is off on the grey start still rises, and after them a unit that is off again keeps climbing its pre-activation
until it turns on (on the demo lane net of 2026-12-02, conv5: 6 of 16 units at 0 on the synthetic image with the
first 16 steps only, 4 with both, with benchmarks/visualize_off_units.py; the stage itself left 5 of 16 either way);
``off_start.<layer>`` and ``off_end.<layer>`` are the shares of
a hidden layer's units at activation 0 on the start and on the synthetic image.

With ``visualize.partner_model`` (a second net of the same architecture, e.g. another seed's), a second check
per hidden unit: its units are matched to the partner's by the Hungarian method on the correlation of their
channel means over the ``visualize.color_images`` training images the colour statistics use, and the unit's
synthetic image must drive its partner above the partner's median on those images
(``partner.<layer>.<unit>``: the partner's unit; ``partner_faithful.<layer>.<unit>``,
``partner_faithful_share.<layer>``). A picture that only exploits one net's quirks fails it.
"""
from __future__ import annotations

import numpy as np

from pipeline.analysis import render
from pipeline.analysis.evidence import TopK, patch, receptive_field
from pipeline.analysis.inputs import resolved_param
from pipeline.analysis.probe import Probe, fetch_rows, fold, layer_shapes
from pipeline.config import Config, ConfigError

PRE_STEPS = 16      # optimisation steps on the pre-ReLU value first (Lucid redirects the ReLU's gradient for 16)

# What the stage logs per layer, named once for it and for the report
RATIO_MEDIAN = "ratio_median.{layer}"
OBJECTIVE_GAIN = "objective_gain.{layer}"
MODEL_PARAM, LAYERS_PARAM = resolved_param("visualize.model_uri"), "visualize.layers_resolved"
FIGURES = ("visualize_{layer}", "visualize_filters", "visualize_dream")


def default_layers(net, in_hw: tuple) -> tuple:
    """The last layer with a spatial map, and the head."""
    shapes = layer_shapes(net, in_hw)
    conv = [name for name, shape in shapes.items() if len(shape) == 3 and name != render.head_of(net)]
    return tuple(conv[-1:]) + (render.head_of(net),)


def unit_objective(net, layer: str, u: int, shape: tuple, detector: bool) -> render.Objective:
    """Unit ``u`` of ``layer``: a channel's spatial mean, a class logit, or the heat map's centre cell."""
    head = render.head_of(net)
    if layer == head and detector:
        return render.heatmap(head, shape[1] // 2, shape[2] // 2)
    if layer == head:
        return render.class_logit(head, u)
    return render.channel(layer, u) if len(shape) == 3 else render.unit(layer, u)


def measure(net, objectives: list, images: np.ndarray) -> np.ndarray:
    """Each image's value of its own objective (image i, objective i)."""
    import torch

    from pipeline.models.normalize import to_tensor

    with torch.no_grad():
        return render.evaluate(net, render.batched(objectives), to_tensor(images)).double().numpy()


def best_value(net, objective, images: list) -> float:
    """The highest value of ``objective`` over real ``images`` (one forward pass), NaN without images."""
    if not images:
        return float("nan")
    return float(measure(net, [objective] * len(images), np.stack(images)).max())


def real_best(net, layer: str, u: int, objective, top: TopK, images: dict, detector: bool) -> float:
    """The best real value of unit ``u``'s own objective: for a channel (its spatial mean), a linear unit or a
    class logit, ``top.best_mean`` over every probe image; the detector's heat-map centre cell is no statistic
    :class:`TopK` keeps: the best over the unit's top images (ranked by their peak cell). NaN when unknown."""
    if detector and layer == render.head_of(net):
        return best_value(net, objective, [images[i] for i in top.ids[layer][u] if i in images])
    value = float(top.best_mean[layer][u])
    return value if np.isfinite(value) else float("nan")


def layer_metrics(layer: str, reached: np.ndarray, best_real: np.ndarray, history: np.ndarray,
                  hidden: bool) -> dict:
    """Per unit the ratio of the synthetic image's value to the best real image's and whether it is at least 1
    (faithful); per layer the median ratio, the pass rate, the mean gain of the objective over the optimisation
    and, for a hidden layer (``hidden``: activations after a ReLU), the shares of units at 0 on the start image
    (the first step's value) and on the synthetic image."""
    metrics = {}
    known = np.isfinite(best_real) & (np.abs(best_real) > 1e-9)
    ratio = np.where(known, reached / np.where(known, best_real, 1.0), np.nan)
    for u in np.flatnonzero(known):
        metrics[f"ratio.{layer}.{u}"] = float(ratio[u])
        metrics[f"faithful.{layer}.{u}"] = float(reached[u] >= best_real[u])
    metrics[RATIO_MEDIAN.format(layer=layer)] = float(np.median(ratio[known])) if known.any() else 0.0
    metrics[f"faithful_share.{layer}"] = float(np.mean(reached[known] >= best_real[known])) if known.any() else 0.0
    metrics[OBJECTIVE_GAIN.format(layer=layer)] = float(np.mean(history[-1] - history[0])) if len(history) else 0.0
    if hidden and len(history):
        metrics[f"off_start.{layer}"] = float(np.mean(history[0] <= 0))
        metrics[f"off_end.{layer}"] = float(np.mean(reached <= 0))
    return metrics


def partner_metrics(net, partner, layer: str, synthetic: np.ndarray, real: np.ndarray) -> dict:
    """For unit u of ``layer`` (synthetic image u): its Hungarian partner in ``partner`` by the correlation of the
    channel means on ``real`` images, and whether the synthetic image drives that partner above the partner's
    median on ``real``."""
    from pipeline.analysis.matching import hungarian
    from pipeline.analysis.probe import activations, samples

    acts = activations({"net": net, "partner": partner}, real, (layer,))
    a, b = samples(acts[("net", layer)], "mean"), samples(acts[("partner", layer)], "mean")
    za = (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), 1.0)
    zb = (b - b.mean(0)) / np.where(b.std(0) > 0, b.std(0), 1.0)
    rows, cols = hungarian(za.T @ zb / len(a))
    mate = dict(zip(rows.tolist(), cols.tolist()))
    median = np.median(b, axis=0)
    driven = samples(activations({"partner": partner}, synthetic, (layer,))[("partner", layer)], "mean")
    out, passed = {}, []
    for u in range(len(synthetic)):
        p = mate[u]
        passed.append(bool(driven[u, p] > median[p]))
        out[f"partner.{layer}.{u}"] = float(p)
        out[f"partner_faithful.{layer}.{u}"] = float(passed[-1])
    out[f"partner_faithful_share.{layer}"] = float(np.mean(passed)) if passed else 0.0
    return out


def run(spark, conf: Config, tracker) -> dict:
    """The visualize stage (registered in pipeline.stages): extract (the model, its layers, a partner, the top
    images of every unit in one Spark pass), transform (per layer: synthesize, measure, multifaceted, patches),
    load (metrics and figures)."""
    import mlflow
    import torch

    from pipeline.analysis.inputs import check_layers, stage_model
    from pipeline.data.splits import require_split
    from pipeline.train.spec import make_spec

    v = conf.visualize
    torch.manual_seed(v.seed)
    uri, net = stage_model(tracker, conf, v.model_uri, "visualize.model_uri")   # logs MODEL_PARAM
    spec = make_spec(conf)
    require_split(spec, v.split, "visualize.split")
    layers = check_layers(net, v.layers, "visualize.layers") if v.layers else default_layers(net, spec.in_hw)
    shapes = layer_shapes(net, spec.in_hw, layers)
    mlflow.log_params({LAYERS_PARAM: ",".join(layers)})
    partner = partner_of(conf, net, uri, spec, layers, shapes)
    top, images = top_images(spark, net, spec, v, layers, shapes)
    sample = colour_sample(spec, v) if v.decorrelate or partner is not None else None
    colors = render.ColorStats.fit(sample) if v.decorrelate else None
    results, metrics = {}, {}
    for layer in layers:
        results[layer], found = visualize_layer(net, partner, layer, shapes[layer], min(v.units, shapes[layer][0]),
                                                top, images, sample, colors, spec, v)
        metrics.update(found)
    dream_layer = v.dream_layer or layers[0]
    start = next(iter(images.values())) if images else None
    dreamed = render.dream(net, start, dream_layer, v.dream_steps, generator=v.seed)[0] \
        if start is not None and v.dream_steps else None
    mlflow.log_metrics(metrics)
    _figures(tracker, net, results, start, dreamed, dream_layer)
    return {**{k: v_ for k, v_ in metrics.items()
               if k.startswith(("ratio_median", "objective_gain", "faithful_share", "off_start", "off_end",
                                "partner_faithful_share"))},
            "model_uri": uri}


def partner_of(conf: Config, net, uri: str, spec, layers: tuple, shapes: dict):
    """``visualize.partner_model`` loaded and checked to have ``net``'s layers (None when unset)."""
    import mlflow

    from pipeline.analysis.inputs import load_partner

    v = conf.visualize
    if not v.partner_model:
        return None
    partner = load_partner(conf, v.partner_model, "visualize.partner_model")
    theirs = layer_shapes(partner, spec.in_hw, layers) if type(partner) is type(net) else {}
    if theirs != shapes:
        raise ConfigError(f"visualize.partner_model={v.partner_model} is a {type(partner).__name__} whose "
                          f"layers {', '.join(layers)} are {theirs or 'absent'}; {uri} has {shapes}: a partner "
                          f"is a net of the same architecture and width (e.g. another seed's)")
    mlflow.log_param("visualize.partner_model_resolved", v.partner_model)
    return partner


def top_images(spark, net, spec, v, layers: tuple, shapes: dict) -> tuple:
    """The ``top_k`` real images of every unit of ``layers`` (one Spark pass over ``visualize.split``), and the
    rows of those that the visualized units need (id -> image)."""
    probe = Probe(spec.split_url(v.split), spec.kind, layers, "mean", 32, v.max_rows, v.partitions)
    top = fold(spark, probe, {"model": net}, zero=lambda: TopK({l: s[0] for l, s in shapes.items()}, v.top_k),
               add=lambda t, acts, _, ids: _add_all(t, acts, ids, layers), merge=lambda a, b: a.merge(b),
               partners=False)
    wanted = {i for l in layers for u in range(min(v.units, shapes[l][0])) for i in top.ids[l][u] if i is not None}
    return top, fetch_rows(spark, probe.url, spec.kind, wanted)


def colour_sample(spec, v) -> np.ndarray:
    """The first ``visualize.color_images`` train images: the colour statistics, and the partner's real images."""
    from pipeline.train.loader import rows

    return np.stack([r["image"] for _, r in zip(range(v.color_images), rows(spec.loader("train")))])


def visualize_layer(net, partner, layer: str, shape: tuple, units: int, top: TopK, images: dict, sample, colors,
                    spec, v) -> tuple:
    """One layer's first ``units`` units: their synthetic images and how far they drive each unit against its best
    real value (and the partner's unit), the multifaceted images and the real patches. Returns the figure's inputs
    (synthetic, facets, patches, ratio) and the layer's metrics."""
    objectives = [unit_objective(net, layer, u, shape, spec.task.detector) for u in range(units)]
    best_real = np.array([real_best(net, layer, u, o, top, images, spec.task.detector)
                          for u, o in enumerate(objectives)])
    synthetic, history = synthesize(net, objectives, best_real, v, spec.in_hw, colors)
    reached = measure(net, objectives, synthetic)
    found = layer_metrics(layer, reached, best_real, history, hidden=layer != render.head_of(net))
    if partner is not None and layer != render.head_of(net):
        found.update(partner_metrics(net, partner, layer, synthetic, sample))
    ratio = np.array([found.get(f"ratio.{layer}.{u}", np.nan) for u in range(units)])
    facets = multifaceted(net, layer, objectives, best_real, top, images, v, colors)
    field = receptive_field(net, layer)
    patches = [[patch(images[i], field, *top.where[layer][u][j]) for j, i in enumerate(top.ids[layer][u])
                if i in images] for u in range(units)]
    return (synthetic, facets, patches, ratio), found


def regularized(v):
    """The transforms and penalties of ``visualize``: jitter / scale / rotation as fractions of the input, decay
    and total variation."""
    transforms = render.compose([render.jitter(v.jitter), render.scale((1 - v.scale, 1 + v.scale)),
                                 render.rotate(v.rotate)])
    return transforms, ((v.l2, render.l2), (v.tv, render.total_variation))


def synthesize(net, objectives: list, scales: np.ndarray, v, hw: tuple, colors=None, starts=None):
    """Activation maximization of ``objectives`` as one batch (element i, objective i). Each objective is divided
    by ``scales[i]`` (the best real image's value of it, where known), so the penalties weigh the same against a
    logit of 15 and a channel mean of 0.5. ``starts``: uint8 images to start from (multifaceted), else noise. The
    first ``PRE_STEPS`` steps maximise the objectives before their layer's ReLU, and so does every later step
    of an objective that is still 0."""
    safe = [abs(s) if np.isfinite(s) and abs(s) > 1e-6 else 1.0 for s in scales]
    objective = render.batched([o / s for o, s in zip(objectives, safe)])
    if starts is not None:
        param = render.Pixels.from_image(starts, decorrelated=colors)
    elif v.param == "fourier":
        param = render.Fourier(len(objectives), hw, decorrelated=colors, seed=v.seed)
    else:
        param = render.Pixels(len(objectives), hw, decorrelated=colors, seed=v.seed)
    transforms, penalties = regularized(v)
    images, history = render.optimize(net, objective, param, v.steps if starts is None else max(1, v.steps // 2),
                                      v.lr, transforms, penalties, v.blur_every, v.blur_sigma, generator=v.seed,
                                      pre_steps=PRE_STEPS, pre_while_off=True)
    return images, history * np.array(safe)[None, :]


def _add_all(top: TopK, acts: dict, ids: list, layers: tuple) -> TopK:
    for layer in layers:
        top.add(layer, acts[("model", layer)], ids)
    return top


def multifaceted(net, layer: str, objectives: list, scales: np.ndarray, top: TopK, images: dict, v,
                 colors) -> list:
    """For the first ``facet_units`` units: k-means of the unit's top real images (on the layer's features), one
    optimisation started from each cluster's mean image. Returns per unit a list of facet images."""
    import torch
    from sklearn.cluster import KMeans

    from pipeline.models.normalize import to_tensor

    out = []
    for u, objective in enumerate(objectives[:v.facet_units]):
        starts = np.stack([images[i] for i in top.ids[layer][u] if i in images]) if v.facets else np.zeros(0)
        if len(starts) < 2:
            out.append([])
            continue
        with torch.no_grad():
            feats = net.features_at(to_tensor(starts), [layer])[layer].double()
        feats = (feats.mean((2, 3)) if feats.ndim == 4 else feats).numpy()
        k = min(v.facets, len(starts))
        labels = KMeans(k, n_init=4, random_state=v.seed).fit_predict(feats)
        means = np.stack([starts[labels == c].mean(0).round().astype(np.uint8) for c in range(k)])
        faceted, _ = synthesize(net, [objective] * k, np.full(k, scales[u]), v, means.shape[1:3], colors, means)
        out.append(list(faceted))
    return out


def _figures(tracker, net, results: dict, start, dreamed, dream_layer: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for layer, (synthetic, facets, patches, ratio) in results.items():
        width = 1 + max([len(f) for f in facets] + [0]) + max([len(p) for p in patches] + [0])
        fig, axes = plt.subplots(len(synthetic), width, figsize=(1.3 * width, 1.35 * len(synthetic)), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for u, image in enumerate(synthetic):
            axes[u, 0].imshow(image)
            axes[u, 0].set_title(f"{layer}:{u} x{ratio[u]:.2f}" if np.isfinite(ratio[u]) else f"{layer}:{u}",
                                 fontsize=6)
            row = (facets[u] if u < len(facets) else []) + patches[u]
            for j, picture in enumerate(row):
                axes[u, 1 + j].imshow(picture)
                if j == 0 and u < len(facets) and facets[u]:
                    axes[u, 1 + j].set_title("facets", fontsize=6)
                if j == len(facets[u] if u < len(facets) else []):
                    axes[u, 1 + j].set_title("top real patches", fontsize=6)
        fig.suptitle(f"{layer}: synthetic (activation / best real image's) | facets | top real patches", fontsize=8)
        fig.tight_layout()
        tracker.log_figure(fig, FIGURES[0].format(layer=layer))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(render.filter_grid(net))
    ax.axis("off")
    ax.set_title("first-layer filters", fontsize=8)
    tracker.log_figure(fig, FIGURES[1])
    if dreamed is not None:
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        for ax, image, title in zip(axes, (start, dreamed), ("real image", f"deep dream of {dream_layer}")):
            ax.imshow(image)
            ax.axis("off")
            ax.set_title(title, fontsize=8)
        tracker.log_figure(fig, FIGURES[2])
