"""Evaluation of classifiers and the heat-map detector: metrics and pictures, on any split of any dataset.

Classifiers: accuracy, per-class precision / recall / F1, a confusion matrix, the worst mistakes.
Detector: heat-map peaks (3x3 max-pool NMS + threshold) matched greedily by score to the ground-truth lights
(a peak inside the box or within ``match_distance`` pixels of its centre); precision, recall and AP overall
and per distance bucket (near / medium / far), a PR curve and heat-map overlays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.data.records import DISTANCES  # noqa: E402
from pipeline.models.stored import ModelNotFound  # noqa: E402,F401  (raised here; callers import it from here)
from pipeline.tasks import Task, is_key_metric  # noqa: E402
from pipeline.train.loader import DETECTOR_STRIDE, LoaderSpec, eval_batches, from_tensor  # noqa: E402


@dataclass
class Evaluation:
    metrics: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)      # name -> matplotlib figure


# ------------------------------------------------------------------------------------ classifiers

def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list, prefix: str) -> dict:
    """Accuracy, per-class precision / recall / F1 and macro F1 over the classes that occur (as truth or as
    prediction), with scikit-learn; the confusion matrix under ``_confusion``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out = {f"{prefix}accuracy": float(np.trace(cm) / max(cm.sum(), 1))}
    present = [k for k in labels if cm[k].sum() or cm[:, k].sum()]
    if present:
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
        for k, p, r, f in zip(present, precision, recall, f1):
            name = classes[k]
            out.update({f"{prefix}precision_{name}": float(p), f"{prefix}recall_{name}": float(r),
                        f"{prefix}f1_{name}": float(f)})
    out[f"{prefix}f1_macro"] = float(np.mean(f1)) if present else 0.0
    out["_confusion"] = cm
    return out


def confusion_figure(cm: np.ndarray, classes: list, title: str):
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
    mistakes = sorted(mistakes, key=lambda m: -m[0])[:12]
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


@torch.no_grad()
def evaluate_classifier(model, spec: LoaderSpec, classes: list, prefix: str, limit=None, device="cpu") -> Evaluation:
    model.eval()
    y_true, y_pred, mistakes = [], [], []
    for x, y, batch_rows in eval_batches(spec, limit):
        probs = torch.softmax(model(x.to(device)).float(), dim=1).cpu()
        conf, pred = probs.max(dim=1)
        y_true.append(y.numpy())
        y_pred.append(pred.numpy())
        wrong = (pred != y).nonzero().flatten().tolist()
        mistakes += [(float(conf[i]), batch_rows[i]["image"], int(y[i]), int(pred[i]), batch_rows[i]["id"])
                     for i in wrong]
        mistakes = sorted(mistakes, key=lambda m: -m[0])[:12]
    if not y_true:
        raise ValueError(f"no rows to evaluate in {spec.url}")
    metrics = classification_metrics(np.concatenate(y_true), np.concatenate(y_pred), classes, prefix)
    cm = metrics.pop("_confusion")
    figures = {f"{prefix}confusion": confusion_figure(cm, classes, f"{prefix.rstrip('_')} confusion matrix"),
               f"{prefix}worst_mistakes": mistakes_figure(mistakes, classes, f"{prefix.rstrip('_')} worst mistakes")}
    return Evaluation(metrics, figures)


# --------------------------------------------------------------------------------------- detector

def heatmap_peaks(heat: torch.Tensor, threshold: float, stride: int = DETECTOR_STRIDE) -> list:
    """Local maxima (3x3 max-pool NMS) above threshold: per image a list of (x, y, score) in input pixels."""
    pooled = F.max_pool2d(heat, 3, stride=1, padding=1)
    keep = (heat == pooled) & (heat >= threshold)
    out = []
    for b in range(heat.shape[0]):
        ys, xs = keep[b, 0].nonzero(as_tuple=True)
        scores = heat[b, 0, ys, xs]
        out.append([((float(x) + 0.5) * stride, (float(y) + 0.5) * stride, float(s))
                    for x, y, s in zip(xs, ys, scores)])
    return out


def match_peaks(peaks: list, boxes: np.ndarray, match_distance: float) -> tuple[list, list]:
    """Greedy by score: each peak takes the nearest unmatched light that contains it or is within reach.

    Returns, per peak in score order, (score, matched box index or -1, nearest box within reach or -1, taken
    or not: for an unmatched peak this says which light it duplicates), and the matched box flags."""
    order = sorted(peaks, key=lambda p: -p[2])
    taken = [False] * len(boxes)
    result = []
    for x, y, score in order:
        best, best_d, near, near_d = -1, None, -1, None
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            d = float(np.hypot(x - (x0 + x1) / 2, y - (y0 + y1) / 2))
            if (x0 <= x <= x1 and y0 <= y <= y1) or d <= match_distance:
                if near_d is None or d < near_d:
                    near, near_d = k, d
                if not taken[k] and (best_d is None or d < best_d):
                    best, best_d = k, d
        if best >= 0:
            taken[best] = True
        result.append((score, best, best if best >= 0 else near))
    return result, taken


def average_precision(scores: np.ndarray, tp: np.ndarray, n_positive: int) -> tuple[float, np.ndarray, np.ndarray]:
    """All-point interpolated AP and the PR curve."""
    if n_positive == 0:
        return float("nan"), np.array([]), np.array([])
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(float)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_positive
    precision = ctp / np.maximum(ctp + cfp, 1e-9)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * envelope)), recall, precision


@dataclass
class DetectorTally:
    """Per bucket ("all", near, medium, far): peak scores with TP flags, and the number of lights."""
    scores: dict = field(default_factory=lambda: {b: [] for b in ("all",) + DISTANCES})
    tps: dict = field(default_factory=lambda: {b: [] for b in ("all",) + DISTANCES})
    positives: dict = field(default_factory=lambda: {b: 0 for b in ("all",) + DISTANCES})

    def add(self, peaks: list, boxes: np.ndarray, distances: np.ndarray, match_distance: float) -> None:
        matched, _ = match_peaks(peaks, boxes, match_distance)
        self.positives["all"] += len(boxes)
        for d in distances:
            self.positives[DISTANCES[int(d)]] += 1
        for score, k, near in matched:
            self.scores["all"].append(score)
            self.tps["all"].append(k >= 0)
            for bucket in DISTANCES:
                # As COCO does with its area ranges: a peak on a light of another bucket (its match, or a second
                # peak on it) is neither TP nor FP here; a peak on no light is a false positive in every bucket.
                if near < 0 or DISTANCES[int(distances[near])] == bucket:
                    self.scores[bucket].append(score)
                    self.tps[bucket].append(k >= 0)

    def metrics(self, prefix: str, threshold: float) -> tuple[dict, dict]:
        out, curves = {}, {}
        for bucket in ("all",) + DISTANCES:
            s, t, n = np.array(self.scores[bucket]), np.array(self.tps[bucket], bool), self.positives[bucket]
            name = "" if bucket == "all" else f"_{bucket}"
            ap, recall, precision = average_precision(s, t, n)
            above = s >= threshold
            tp_at = int((t & above).sum())
            out[f"{prefix}precision{name}"] = tp_at / max(int(above.sum()), 1)
            out[f"{prefix}recall{name}"] = tp_at / n if n else float("nan")
            out[f"{prefix}ap{name}"] = ap
            at_p90 = recall[precision >= 0.9] if len(recall) else recall
            out[f"{prefix}recall_at_p90{name}"] = float(at_p90.max()) if len(at_p90) else (0.0 if n else float("nan"))
            out[f"{prefix}lights{name}"] = n
            curves[bucket] = (recall, precision)
        return out, curves


def pr_figure(curves: dict, title: str):
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
    """Sample responses: frame, heat map overlay, boxes; one row per distance bucket found."""
    fig, axes = plt.subplots(len(samples), 2, figsize=(7, 2.2 * len(samples)), squeeze=False)
    for (ax_img, ax_heat), (bucket, image, heat, boxes) in zip(axes, samples):
        for ax in (ax_img, ax_heat):
            ax.axis("off")
            ax.imshow(image)
            for x0, y0, x1, y1 in boxes:
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=0.8))
        h, w = image.shape[:2]
        ax_heat.imshow(heat, cmap="inferno", alpha=0.6, extent=(0, heat.shape[1] * DETECTOR_STRIDE,
                                                                heat.shape[0] * DETECTOR_STRIDE, 0))
        ax_heat.set_xlim(0, w)
        ax_heat.set_ylim(h, 0)
        ax_img.set_title(f"sample response: {bucket} distance", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def evaluate_detector(model, spec: LoaderSpec, prefix: str, limit=None, device="cpu", threshold: float = 0.5,
                      match_distance: float = 8.0) -> Evaluation:
    model.eval()
    tally = DetectorTally()
    samples: dict = {}
    for x, _, batch_rows in eval_batches(spec, limit):
        heat = torch.sigmoid(model(x.to(device)).float()).cpu()
        for peaks, row, h, img in zip(heatmap_peaks(heat, min(0.05, threshold)), batch_rows, heat, from_tensor(x)):
            boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
            tally.add(peaks, boxes, row["distances"], match_distance)
            missing = [DISTANCES[int(d)] for d in row["distances"] if DISTANCES[int(d)] not in samples]
            if missing:  # one frame per bucket, a different frame for each
                samples[missing[0]] = (missing[0], img, h[0].numpy(), boxes)
    metrics, curves = tally.metrics(prefix, threshold)
    if not tally.positives["all"] and not tally.scores["all"]:
        raise ValueError(f"no frames with lights to evaluate in {spec.url}")
    figures = {f"{prefix}pr_curve": pr_figure(curves, f"{prefix.rstrip('_')} precision-recall")}
    ordered = [samples[b] for b in DISTANCES if b in samples]
    if ordered:
        figures[f"{prefix}heatmaps"] = overlay_figure(ordered, f"{prefix.rstrip('_')} heat maps")
    return Evaluation(metrics, figures)


def evaluate(model, task: Task, spec: LoaderSpec, classes: list, prefix: str, limit=None, device="cpu",
             threshold: float = 0.5, match_distance: float = 8.0) -> Evaluation:
    if task.detector:
        return evaluate_detector(model, spec, prefix, limit, device, threshold, match_distance)
    return evaluate_classifier(model, spec, classes, prefix, limit, device)


# ------------------------------------------------------------------------------------------ stage

MODEL_TAG = "pipeline.model_uri"       # a train run's tag: the URI of the model it logged (models:/<model_id>)


def latest_model_uri(tracker, task: str, data: str) -> str:
    """The model of the newest finished train run of ``task`` on dataset ``data`` in this experiment (not one the
    correlate stage trained as an extra seed)."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=(f"tags.`pipeline.stage` = 'train' and params.`train.task` = '{task}' "
                       f"and params.`train.data` = '{data}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=50)
    runs = [r for r in runs if not r.data.tags.get("pipeline.role")]  # trained for correlate or the audit only
    if not runs:
        raise ModelNotFound(f"no finished train run of train.task={task} on train.data={data} in experiment "
                            f"'{tracker.conf.mlflow.experiment}': run `pipeline train` first, or set "
                            f"evaluate.model_uri=models:/<model id> (or models:/<name>@<alias>)")
    return model_of(runs[0])


def model_of(run) -> str:
    """The URI of the model a finished train run logged (a run of an earlier version: its ``runs:/`` URI, which
    :func:`load_model` refuses with the line that says how to re-log it)."""
    return run.data.tags.get(MODEL_TAG) or f"runs:/{run.info.run_id}/model"


def load_model(uri: str, conf, key: str = "the model URI"):
    """A logged model by URI (``models:/<model id>``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
    ``runs:/<run id>/<name>``), rebuilt from the project's code with its stored weights (nothing in its files
    runs: :mod:`pipeline.models.stored`). A URI that names nothing is a :class:`ModelNotFound` naming the URI and
    how to list the logged models (``key``: the config key that named it)."""
    from pipeline.models import stored

    try:
        return stored.load(uri, conf.mlflow.tracking_uri)
    except ModelNotFound as exc:
        raise ModelNotFound(
            f"{exc}; list the logged models on the experiment's Models page of `mlflow ui --backend-store-uri "
            f"{conf.mlflow.tracking_uri}` (each train run logs one, models:/<model id>) or with "
            f"mlflow.search_logged_models(), or leave {key} unset for the newest") from None


def run(spark, conf, tracker) -> dict:
    """The evaluate stage: any logged model, on a split of an ingested dataset."""
    import mlflow

    from pipeline.data.splits import require_split
    from pipeline.train.spec import make_spec

    e = conf.evaluate
    uri = e.model_uri or latest_model_uri(tracker, conf.train.task, conf.train.data)
    model = load_model(uri, conf, "evaluate.model_uri")
    spec = make_spec(conf)
    require_split(spec, e.split, "evaluate.split")
    mlflow.log_params({"evaluate.model_uri_resolved": uri, "evaluate.dataset_url": spec.split_url(e.split)})
    result = evaluate(model, spec.task, spec.loader(e.split), list(spec.classes), f"{e.split}_",
                      limit=e.max_batches or None, threshold=e.threshold, match_distance=e.match_distance)
    mlflow.log_metrics(result.metrics)
    for name, fig in result.figures.items():
        tracker.log_figure(fig, name)
    return {**{k: v for k, v in result.metrics.items() if is_key_metric(k)}, "model_uri": uri}
