"""One scorer for the classifiers and the heat-map detector: what every stage that scores a net on a split uses
(the evaluate stage, validation inside training, the audits, transfer's cells).

No figures here and no matplotlib: a rank validating every epoch, or a transfer cell scoring its net, imports
only torch, numpy and scikit-learn. :mod:`pipeline.train.evaluate` draws the pictures from what this returns.

Classifiers: :func:`classify` runs one ordered pass and keeps every row's truth, prediction, confidence and id
(the most confident mistakes on request); :func:`classification_metrics` turns truth and predictions into
accuracy, per-class precision / recall / F1 and macro F1.
Detector: heat-map peaks (3x3 max-pool NMS + threshold, :func:`heatmap_peaks`) matched greedily by score to the
ground-truth lights (:func:`match_peaks`: a peak inside the box, or within ``match_radius`` times the light's
height of its centre and never less than one heat-map cell: a rule in the light's own size, so scores compare
across stored resolutions); a :class:`DetectorTally` per group of rows gives precision, recall and AP overall and
per distance bucket; :func:`detect` runs one pass filling one tally per group a row belongs to.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.vocab import DISTANCES
from pipeline.train.loader import LoaderSpec, eval_batches
from pipeline.models.normalize import DETECTOR_STRIDE, from_tensor

MISTAKES = 12            # the most confident wrong predictions a classifier's pass keeps for its figure


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


@dataclass
class Classified:
    """One pass of a classifier over a split: per row, in the split's order."""
    ids: list
    y_true: np.ndarray
    y_pred: np.ndarray
    confidence: np.ndarray
    mistakes: list = field(default_factory=list)   # (confidence, image, true, predicted, id), most confident first

    def metrics(self, classes: list, prefix: str, keep: Optional[np.ndarray] = None) -> dict:
        """:func:`classification_metrics` of every row, or of the rows ``keep`` (a boolean mask) selects."""
        t, p = (self.y_true, self.y_pred) if keep is None else (self.y_true[keep], self.y_pred[keep])
        return classification_metrics(t, p, classes, prefix)


@torch.no_grad()
def classify(model, spec: LoaderSpec, limit: Optional[int] = None, device="cpu", mistakes: int = 0) -> Classified:
    """Score ``model`` on every row of ``spec``'s split (``limit``: batches); ``mistakes``: how many of the most
    confident wrong predictions to keep, with their images. No rows: :class:`ValueError` naming the split."""
    model.eval()
    ids, y_true, y_pred, confidence, wrong_kept = [], [], [], [], []
    for x, y, batch_rows in eval_batches(spec, limit):
        probs = torch.softmax(model(x.to(device)).float(), dim=1).cpu()
        conf, pred = probs.max(dim=1)
        ids += [r.get("id") for r in batch_rows]
        y_true.append(y.numpy())
        y_pred.append(pred.numpy())
        confidence.append(conf.numpy())
        if mistakes:
            wrong = (pred != y).nonzero().flatten().tolist()
            wrong_kept += [(float(conf[i]), batch_rows[i]["image"], int(y[i]), int(pred[i]), batch_rows[i]["id"])
                           for i in wrong]
            wrong_kept = sorted(wrong_kept, key=lambda m: -m[0])[:mistakes]
    if not y_true:
        raise ValueError(f"no rows to evaluate in {spec.url}")
    return Classified(ids, np.concatenate(y_true), np.concatenate(y_pred), np.concatenate(confidence), wrong_kept)


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


def reach(box, match_radius: float, stride: int = DETECTOR_STRIDE) -> float:
    """How far from a light's centre a peak may lie and still be on it, in input pixels: ``match_radius`` light
    heights, at least one heat-map cell (``stride`` pixels: a peak cannot be placed finer than its cell)."""
    return max(match_radius * float(box[3] - box[1]), float(stride))


def match_peaks(peaks: list, boxes: np.ndarray, match_radius: float) -> tuple[list, list]:
    """Greedy by score: each peak takes the nearest unmatched light that contains it or is within its
    :func:`reach`.

    Returns, per peak in score order, (score, matched box index or -1, nearest box within reach or -1, taken
    or not: for an unmatched peak this says which light it duplicates), and the matched box flags."""
    order = sorted(peaks, key=lambda p: -p[2])
    taken = [False] * len(boxes)
    result = []
    reaches = [reach(box, match_radius) for box in boxes]
    for x, y, score in order:
        best, best_d, near, near_d = -1, None, -1, None
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            d = float(np.hypot(x - (x0 + x1) / 2, y - (y0 + y1) / 2))
            if (x0 <= x <= x1 and y0 <= y <= y1) or d <= reaches[k]:
                if near_d is None or d < near_d:
                    near, near_d = k, d
                if not taken[k] and (best_d is None or d < best_d):
                    best, best_d = k, d
        if best >= 0:
            taken[best] = True
        result.append((score, best, best if best >= 0 else near))
    return result, taken


def light_counts(heat: torch.Tensor, boxes: list, threshold: float, match_radius: float) -> list:
    """Per image of ``heat`` (sigmoid heat maps, N x 1 x h x w): (lights found, peaks, peaks on a light) against
    its ``boxes``, with the peak finding and matching every detector score uses."""
    out = []
    for peaks, b in zip(heatmap_peaks(heat, threshold), boxes):
        matched, taken = match_peaks(peaks, b, match_radius)
        out.append((int(sum(taken)), len(peaks), sum(1 for _, k, _ in matched if k >= 0)))
    return out


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

    def add(self, peaks: list, boxes: np.ndarray, distances: np.ndarray, match_radius: float) -> None:
        matched, _ = match_peaks(peaks, boxes, match_radius)
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

    @property
    def empty(self) -> bool:
        return not self.positives["all"] and not self.scores["all"]

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


@dataclass
class Detected:
    """One pass of the detector over a split: a tally per group of rows (a group no row fell in: an empty
    tally), the frames read, and (on request) one sample frame per distance bucket, each a different frame:
    (bucket, image, heat map, boxes, index of the box of that bucket), each frame from another sequence."""
    tallies: dict
    rows: int
    group_rows: dict = field(default_factory=dict)   # group -> frames in it
    samples: list = field(default_factory=list)

    def tally(self, group: str = "all") -> DetectorTally:
        return self.tallies.get(group) or DetectorTally()


def every_row(row: dict) -> tuple:
    return ("all",)


class SamplePicker:
    """The figure's sample responses: the first frame offered that holds a light of a distance bucket not shown
    yet, one per bucket, and each from a sequence (group) no other sample comes from."""

    def __init__(self) -> None:
        self.picked: dict = {}
        self.groups: set = set()

    def offer(self, row: dict, image, heat, boxes: np.ndarray) -> None:
        missing = [(DISTANCES[int(d)], k) for k, d in enumerate(row["distances"])
                   if DISTANCES[int(d)] not in self.picked]
        if missing and row["group"] not in self.groups:
            bucket, k = missing[0]
            self.picked[bucket] = (bucket, image, heat, boxes, k)
            self.groups.add(row["group"])

    def samples(self) -> list:
        """(bucket, image, heat map, boxes, index of the bucket's box) per bucket, near to far."""
        return [self.picked[b] for b in DISTANCES if b in self.picked]


@torch.no_grad()
def detect(model, spec: LoaderSpec, limit: Optional[int] = None, device="cpu", threshold: float = 0.5,
           match_radius: float = 0.5, groups: Callable[[dict], Iterable[str]] = every_row,
           samples: bool = False) -> Detected:
    """Score the detector on every frame of ``spec``'s split (``limit``: batches); each frame's peaks (down to
    ``min(0.05, threshold)``, so that the PR curve reaches below the operating point) go into the tally of each
    group ``groups(row)`` names. No frame at all: :class:`ValueError` naming the split."""
    model.eval()
    tallies: dict = {}
    group_rows: dict = {}
    picked = SamplePicker()
    rows = 0
    if samples and "group" not in spec.fields:
        spec = dataclasses.replace(spec, extra=spec.extra + ("group",))
    for x, _, batch_rows in eval_batches(spec, limit):
        heat = torch.sigmoid(model(x.to(device)).float()).cpu()
        images = from_tensor(x) if samples else [None] * len(batch_rows)
        for peaks, row, h, img in zip(heatmap_peaks(heat, min(0.05, threshold)), batch_rows, heat, images):
            rows += 1
            boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
            for group in groups(row):
                tallies.setdefault(group, DetectorTally()).add(peaks, boxes, row["distances"], match_radius)
                group_rows[group] = group_rows.get(group, 0) + 1
            if samples:
                picked.offer(row, img, h[0].numpy(), boxes)
    if not rows:
        raise ValueError(f"no frames with lights to evaluate in {spec.url}")
    return Detected(tallies, rows, group_rows, picked.samples())
