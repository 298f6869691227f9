"""Evaluation of classifiers and the heat-map detector on any split of any dataset: the scores of
:mod:`pipeline.train.scoring` and, on request, the pictures (a confusion matrix and the worst mistakes; a PR
curve and heat-map overlays per distance bucket).

matplotlib is imported only where a figure is drawn, so that scoring without pictures (validation in every
rank, transfer's cells, the audits) never loads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.models.lookup import load_model, resolve
from pipeline.tasks import Task, is_key_metric
from pipeline.train.loader import LoaderSpec
from pipeline.models.normalize import DETECTOR_STRIDE
from pipeline.train.scoring import MISTAKES, classify, detect


# The figures an evaluation draws, "<prefix><name>" (prefix: the split and "_")
CLASSIFIER_FIGURES = ("confusion", "worst_mistakes")
DETECTOR_FIGURES = ("pr_curve", "heatmaps")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Evaluation:
    metrics: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)      # name -> matplotlib figure


# ------------------------------------------------------------------------------------ classifiers

def confusion_figure(cm: np.ndarray, classes: list, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > cm.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def mistakes_figure(mistakes: list, classes: list, title: str):
    """The most confident wrong predictions: (confidence, image, true, predicted, id)."""
    plt = _pyplot()
    mistakes = sorted(mistakes, key=lambda m: -m[0])[:MISTAKES]
    cols = 4
    rows = max(1, -(-len(mistakes) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (conf, image, true, pred, ident) in zip(axes.flat, mistakes):
        ax.imshow(image)
        ax.set_title(f"{classes[true]} -> {classes[pred]} ({conf:.2f})", fontsize=7)
    fig.suptitle(title if mistakes else f"{title}: no mistakes", fontsize=9)
    fig.tight_layout()
    return fig


def evaluate_classifier(model, spec: LoaderSpec, classes: list, prefix: str, limit=None, device="cpu",
                        figures: bool = True) -> Evaluation:
    """Accuracy and per-class scores on ``spec``'s split; with ``figures``, the confusion matrix and the most
    confident mistakes."""
    scored = classify(model, spec, limit, device, mistakes=MISTAKES if figures else 0)
    metrics = scored.metrics(classes, prefix)
    cm = metrics.pop("_confusion")
    if not figures:
        return Evaluation(metrics)
    title = prefix.rstrip("_")
    confusion, mistakes = (prefix + name for name in CLASSIFIER_FIGURES)
    return Evaluation(metrics, {confusion: confusion_figure(cm, classes, f"{title} confusion matrix"),
                                mistakes: mistakes_figure(scored.mistakes, classes, f"{title} worst mistakes")})


# --------------------------------------------------------------------------------------- detector

def pr_figure(curves: dict, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for bucket, (recall, precision) in curves.items():
        if len(recall):
            ax.plot(recall, precision, label=bucket, lw=2 if bucket == "all" else 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def overlay_figure(samples: list, title: str):
    """The talk's figure: sample responses at each distance found, each from a different frame. Per row the frame
    with its boxes, the heat map over it, and both around the bucket's light, enlarged (a far light is a few
    pixels of the frame)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(samples), 3, figsize=(10, 2.2 * len(samples)), squeeze=False,
                             gridspec_kw={"width_ratios": [16, 16, 9]})
    for (ax_img, ax_heat, ax_zoom), (bucket, image, heat, boxes, k) in zip(axes, samples):
        h, w = image.shape[:2]
        for ax in (ax_img, ax_heat, ax_zoom):
            ax.axis("off")
            ax.imshow(image)
            for x0, y0, x1, y1 in boxes:
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=0.8))
        for ax in (ax_heat, ax_zoom):
            ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0,
                      extent=(0, heat.shape[1] * DETECTOR_STRIDE, heat.shape[0] * DETECTOR_STRIDE, 0))
        ax_heat.set_xlim(0, w)
        ax_heat.set_ylim(h, 0)
        x0, y0, x1, y1 = boxes[k]
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(4 * (y1 - y0), 8 * DETECTOR_STRIDE)
        ax_zoom.set_xlim(cx - half * 9 / 16, cx + half * 9 / 16)
        ax_zoom.set_ylim(cy + half / 2, cy - half / 2)
        ax_img.set_title(f"sample response: {bucket} distance", fontsize=8)
        ax_zoom.set_title(f"its {bucket} light ({y1 - y0:.0f} px tall), peak {heat_at(heat, cx, cy):.2f}",
                          fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def heat_at(heat: np.ndarray, x: float, y: float) -> float:
    """The heat map's highest value within one cell of the pixel (x, y): the response to the light there."""
    gx, gy = int(x // DETECTOR_STRIDE), int(y // DETECTOR_STRIDE)
    return float(heat[max(gy - 1, 0):gy + 2, max(gx - 1, 0):gx + 2].max())


def evaluate_detector(model, spec: LoaderSpec, prefix: str, limit=None, device="cpu", threshold: float = 0.5,
                      match_radius: float = 0.5, figures: bool = True) -> Evaluation:
    """Precision, recall, AP and recall at precision 0.9, overall and per distance bucket, on ``spec``'s split;
    with ``figures``, the PR curves and one sample response per bucket."""
    scored = detect(model, spec, limit, device, threshold, match_radius, samples=figures)
    if scored.tally().empty:
        raise ValueError(f"no frames with lights to evaluate in {spec.url}")
    metrics, curves = scored.tally().metrics(prefix, threshold)
    if not figures:
        return Evaluation(metrics)
    title = prefix.rstrip("_")
    pr, heat = (prefix + name for name in DETECTOR_FIGURES)
    drawn = {pr: pr_figure(curves, f"{title} precision-recall")}
    if scored.samples:
        drawn[heat] = overlay_figure(scored.samples, f"{title} heat maps")
    return Evaluation(metrics, drawn)


def evaluate(model, task: Task, spec: LoaderSpec, classes: list, prefix: str, limit=None, device="cpu",
             threshold: float = 0.5, match_radius: float = 0.5, figures: bool = True) -> Evaluation:
    """The task's scores on ``spec``'s split, named ``<prefix><metric>``; its figures only with ``figures``."""
    if task.detector:
        return evaluate_detector(model, spec, prefix, limit, device, threshold, match_radius, figures)
    return evaluate_classifier(model, spec, classes, prefix, limit, device, figures)


# ------------------------------------------------------------------------------------------ stage

def run(spark, conf, tracker) -> dict:
    """The evaluate stage: any logged model, on a split of an ingested dataset."""
    import mlflow

    from pipeline.data.splits import require_split
    from pipeline.train.spec import make_spec

    e = conf.evaluate
    uri = resolve(tracker, conf, e.model_uri, "evaluate.model_uri")
    model = load_model(uri, conf, "evaluate.model_uri")
    spec = make_spec(conf)
    require_split(spec, e.split, "evaluate.split")
    mlflow.log_params({"evaluate.model_uri_resolved": uri, "evaluate.dataset_url": spec.split_url(e.split)})
    result = evaluate(model, spec.task, spec.loader(e.split), list(spec.classes), f"{e.split}_",
                      limit=e.max_batches or None, threshold=e.threshold, match_radius=e.match_radius)
    mlflow.log_metrics(result.metrics)
    for name, fig in result.figures.items():
        tracker.log_figure(fig, name)
    return {**{k: v for k, v in result.metrics.items() if is_key_metric(k)}, "model_uri": uri}
