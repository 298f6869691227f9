"""What each layer encodes: exact linear probes for the lane class and each context variable, layer by layer.

The talk's "analogy to regression at each layer": for every layer of a lane classifier, a ridge regression from
the layer's units (a conv unit's spatial mean per image) to the one-hot codes of the lane class, the time of day
and the scenery, fitted exactly from float64 sufficient statistics (:class:`pipeline.analysis.moments.Moments`:
``n``, ``sum z``, ``z^T z`` over the units and the codes together) and scored by held-out accuracy (argmax of
the regression). A layer that encodes the time of day lets its probe tell day, dusk and night apart on scenes
it was not fitted on; a net that reads the context carries it up to its last layers, a net that ignores it
loses it.

The scenes are fresh synthetic sequences (seed ``audit.counterfactual.seed + 1``, rendered as the audited
dataset was) at context bias 0, so lane class and context are independent there and no probe can score through
the other variable. Sequences whose number is ``3 mod 4`` are held out (the probes are fitted on the others);
accuracy intervals are bootstrap intervals over held-out sequences. One Spark job: each task renders its
sequences, runs the net, and returns the moments of its fitting frames and the (small) unit means of its held-out
frames; the moments are summed.

Ridge, fixed before any net was probed: units standardised by their fitted mean and standard deviation (dead
units, which do not vary, left out), penalty ``ALPHA * n`` on the centred normal equations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["TARGETS", "ALPHA", "HOLDOUT", "LayerProbes", "codes", "render_probe_frames", "render", "partial",
           "merge", "fit", "predict", "score", "probe_layers"]

ALPHA = 1e-2
HOLDOUT = 4          # sequence numbers s with s % HOLDOUT == HOLDOUT - 1 are held out
MAX_UNITS = 4096     # wider layers are left out (z^T z alone would be 8 * units^2 bytes per task)


def _targets():
    from pipeline.data.synth import LANE_CLASSES, SCENERIES, TIMES_OF_DAY

    return {"lane_class": LANE_CLASSES, "time_of_day": TIMES_OF_DAY, "scenery": SCENERIES}


TARGETS = ("lane_class", "time_of_day", "scenery")
FIGURE = "context_layer_probes"


def codes(frame) -> dict:
    """The class index of each target for a rendered :class:`pipeline.data.synth.Frame`."""
    t = _targets()
    return {"lane_class": t["lane_class"].index(frame.lane_class),
            "time_of_day": t["time_of_day"].index(frame.context["time_of_day"]),
            "scenery": t["scenery"].index(frame.context["scenery"])}


def render_probe_frames(seed: int, seq_no: int, cfg, hw: tuple, frames: int) -> list:
    """``(image resized to hw, codes)`` of the first ``frames`` frames of sequence ``seq_no`` (``cfg`` at context
    bias 0 is the caller's business)."""
    from pipeline.data.images import resize
    from pipeline.data.synth import render_frame

    first = seq_no * cfg.frames_per_sequence
    out = []
    for step in range(frames):
        f = render_frame(seed, first + step, cfg)
        out.append((resize(f.image, tuple(hw)), codes(f)))
    return out


def _one_hot(index: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[index]


def render(seqs: Sequence[int], seed: int, cfg, hw: tuple, frames: int) -> list:
    """``(sequence number, image, codes)`` of every probe frame of ``seqs``."""
    return [(s, image, c) for s in seqs for image, c in render_probe_frames(seed, s, cfg, hw, frames)]


def partial(net, layers: Sequence[str], rendered: list, batch_size: int = 32) -> dict:
    """One task's share over ``rendered`` (:func:`render`): ``{"moments": {layer: Moments}, "held": {layer: (m,
    units)}, "codes": {target: [m]}, "sequence": [m]}``: moments of the fitting frames (units and the codes'
    one-hot columns together), the unit means and codes of the held-out frames."""
    import torch

    from pipeline.analysis.moments import Moments
    from pipeline.analysis.probe import activations, samples

    t = _targets()
    net.eval()
    state: dict = {"moments": {}, "held": {}, "codes": {k: [] for k in TARGETS}, "sequence": []}
    held_parts: dict = {layer: [] for layer in layers}
    for i in range(0, len(rendered), batch_size):
        chunk = rendered[i:i + batch_size]
        with torch.no_grad():
            acts = activations({"net": net}, np.stack([r[1] for r in chunk]), tuple(layers))
        held = np.array([s % HOLDOUT == HOLDOUT - 1 for s, _, _ in chunk])
        ys = {k: _one_hot(np.array([c[k] for _, _, c in chunk]), len(t[k])) for k in TARGETS}
        for layer in layers:
            z = samples(acts[("net", layer)], "mean")
            if layer not in state["moments"]:
                state["moments"][layer] = Moments({"z": z.shape[1], **{k: len(t[k]) for k in TARGETS}})
            if (~held).any():
                state["moments"][layer].add({"z": z[~held], **{k: y[~held] for k, y in ys.items()}})
            held_parts[layer].append(z[held])
        for k in TARGETS:
            state["codes"][k] += [c[k] for (s, _, c), h in zip(chunk, held) if h]
        state["sequence"] += [s for (s, _, _), h in zip(chunk, held) if h]
    state["held"] = {layer: np.concatenate(parts) if parts else np.zeros((0, 0)) for layer, parts in
                     held_parts.items()}
    return state


def _task(net, layers, rendered) -> dict:
    import torch

    from pipeline.session import quiet_warnings

    quiet_warnings()
    torch.set_num_threads(1)
    return partial(net, layers, rendered)


def merge(a: dict, b: dict) -> dict:
    for layer, m in b["moments"].items():
        if layer in a["moments"]:
            a["moments"][layer].merge(m)
        else:
            a["moments"][layer] = m
    for layer, z in b["held"].items():
        if len(z):
            a["held"][layer] = np.concatenate([a["held"][layer], z]) if len(a["held"].get(layer, ())) else z
    for k in TARGETS:
        a["codes"][k] = list(a["codes"][k]) + list(b["codes"][k])
    a["sequence"] = list(a["sequence"]) + list(b["sequence"])
    return a


@dataclass
class Ridge:
    mean: np.ndarray
    scale: np.ndarray
    live: np.ndarray
    weights: np.ndarray
    intercept: np.ndarray


def fit(m, target: str, alpha: float = ALPHA) -> Ridge:
    """The ridge regression of the one-hot ``target`` on the units of ``m`` (a Moments of blocks z + targets)."""
    var = m.variance("z")
    live = ~m.dead("z")
    scale = np.sqrt(np.where(live, var, 1.0))
    s_zz = m.scatter("z", "z")[np.ix_(live, live)] / np.outer(scale[live], scale[live])
    s_zy = m.scatter("z", target)[live] / scale[live][:, None]
    w = np.linalg.solve(s_zz + alpha * m.n * np.eye(int(live.sum())), s_zy) if live.any() else \
        np.zeros((0, s_zy.shape[1]))
    return Ridge(m.mean("z"), scale, live, w, m.mean(target))


def predict(r: Ridge, z: np.ndarray) -> np.ndarray:
    zs = (z[:, r.live] - r.mean[r.live]) / r.scale[r.live]
    return (r.intercept + zs @ r.weights).argmax(1)


@dataclass
class LayerProbes:
    layers: list
    accuracy: dict                 # (layer, target) -> (share, lo, hi) on held-out sequences
    chance: dict                   # target -> the held-out share of its most frequent class
    fitted: int                    # frames the probes were fitted on
    held: int                      # held-out frames
    metrics: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)


def score(state: dict, layers: Sequence[str], resamples: int = 2000, seed: int = 0,
          alpha: float = ALPHA) -> LayerProbes:
    """Fit every probe on the summed moments and score it on the held-out frames of ``state``."""
    from pipeline.analysis.intervals import bootstrap, triple_metrics

    seqs = np.asarray(state["sequence"])
    groups = sorted(set(seqs.tolist()))
    if not groups:
        raise ValueError("no held-out sequence: render at least 4 sequences for the layer probes")
    index = np.searchsorted(groups, seqs)
    accuracy, chance, metrics = {}, {}, {}
    for target in TARGETS:
        truth = np.asarray(state["codes"][target])
        chance[target] = float(np.bincount(truth).max() / len(truth))
        metrics[f"probe.chance.{target}"] = chance[target]
        for layer in layers:
            hit = predict(fit(state["moments"][layer], target, alpha), state["held"][layer]) == truth
            triple = bootstrap(np.bincount(index, hit, len(groups)), np.bincount(index, None, len(groups)),
                               resamples, seed)
            accuracy[(layer, target)] = triple
            metrics.update(triple_metrics(f"probe.{target}.{layer}", triple))
    first = state["moments"][layers[0]]
    result = LayerProbes(list(layers), accuracy, chance, int(first.n), int(len(seqs)), metrics)
    result.figures = {FIGURE: figure(result)}
    return result


def figure(result: LayerProbes, title: Optional[str] = None):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(result.layers))
    colours = {"lane_class": "#d62728", "time_of_day": "#1f77b4", "scenery": "#2ca02c"}
    for target in TARGETS:
        t = np.array([result.accuracy[(layer, target)] for layer in result.layers])
        ax.errorbar(x, t[:, 0], yerr=[t[:, 0] - t[:, 1], t[:, 2] - t[:, 0]], marker="o", capsize=3,
                    color=colours[target], label=target.replace("_", " "))
        ax.axhline(result.chance[target], color=colours[target], ls=":", lw=1)
    ax.set_xticks(x, result.layers)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy of a linear probe")
    ax.set_title(title or f"what each layer encodes: ridge probes fitted on {result.fitted} frames, scored on "
                          f"{result.held} frames of held-out sequences (95% intervals; dotted: majority class)",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probe_layers(spark, net, layers: Sequence[str], *, seed: int, cfg, hw: tuple, sequences: int, frames: int,
                 resamples: int = 2000) -> LayerProbes:
    """The whole measurement as one Spark job over ``sequences`` sequences (``cfg`` is forced to context bias 0)."""
    from dataclasses import replace

    from pipeline.analysis.probe import layer_shapes

    shapes = layer_shapes(net, tuple(hw), tuple(layers))
    wide = [layer for layer, s in shapes.items() if s[0] > MAX_UNITS]
    layers = [layer for layer in layers if layer not in wide]
    cfg = replace(cfg, context_bias=0.0)
    sc = spark.sparkContext
    shared = sc.broadcast(net)
    parts = max(1, min(sequences, sc.defaultParallelism * 2))
    try:
        state = (sc.parallelize(range(sequences), parts).glom()
                 .map(lambda seqs: _task(shared.value, layers, render(seqs, seed, cfg, hw, frames)))
                 .treeReduce(merge, depth=2))
    finally:
        shared.unpersist()
    return score(state, layers, resamples)
