"""Intervals over clusters: frames of one sequence (one split group) are not independent, so every share the
analyses report is resampled by cluster.

:func:`bootstrap` gives a share and its percentile bootstrap interval from per-cluster counts; :func:`gap` the
difference of two independent samples of clusters; :func:`per_group` turns per-row values and cluster keys into
those counts; :func:`grouped_counts` / :func:`grouped_accuracy` score a classifier on decoded rows with a
``group``; :func:`triple_metrics` names a ``(share, lo, hi)`` triple as three metrics.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["CONFIDENCE", "bootstrap", "gap", "per_group", "grouped_counts", "grouped_accuracy", "triple_metrics"]

CONFIDENCE = 0.95


def bootstrap(hits: np.ndarray, totals: np.ndarray, resamples: int = 2000, seed: int = 0,
              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(share, lo, hi): ``sum(hits) / sum(totals)`` and its percentile bootstrap interval over clusters (rows of
    ``hits``/``totals``: one per sequence), resampling clusters with replacement ``resamples`` times."""
    hits, totals = np.asarray(hits, np.float64), np.asarray(totals, np.float64)
    if hits.shape != totals.shape or hits.ndim != 1:
        raise ValueError(f"hits and totals must be 1-d and of one shape, got {hits.shape} and {totals.shape}")
    if totals.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    share = float(hits.sum() / totals.sum())
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(hits), (resamples, len(hits)))
    h, t = hits[pick].sum(1), totals[pick].sum(1)
    shares = h[t > 0] / t[t > 0]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(shares, [alpha, 1 - alpha])
    return share, float(lo), float(hi)


def per_group(keys: Sequence, values, where=None) -> tuple[np.ndarray, np.ndarray]:
    """(sum of ``values``, rows) per cluster, clusters in the sorted order of their ``keys`` (one key per row);
    ``where`` (bool per row) keeps only those rows (a cluster left with none counts 0 rows)."""
    names, index = np.unique(np.asarray([str(k) for k in keys], object), return_inverse=True)
    values = np.asarray(values, np.float64)
    keep = np.ones(len(values), bool) if where is None else np.asarray(where, bool)
    return (np.bincount(index[keep], values[keep], len(names)), np.bincount(index[keep], None, len(names)))


def grouped_accuracy(model, rows: Iterable[dict], *, batch_size: int = 64, device="cpu", resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """(accuracy, lo, hi) of a classifier on labelled ``rows`` (decoded rows with ``image``, ``label`` and
    ``group``, the sequence or group the split rule placed whole), the interval a bootstrap over groups."""
    hits, totals = grouped_counts(model, rows, batch_size=batch_size, device=device)
    return bootstrap(hits, totals, resamples, seed)


def grouped_counts(model, rows: Iterable[dict], *, batch_size: int = 64, device="cpu") -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """(correct, rows) per group (sorted by group) of a classifier on labelled ``rows`` with a ``group``."""
    from pipeline.models.normalize import to_tensor

    model.eval()
    groups: list = []
    hits: list = []
    batch: list = []

    def flush():
        images = np.stack([np.asarray(r["image"], np.uint8) for r in batch])
        with torch.no_grad():
            pred = model(to_tensor(images).to(device)).float().argmax(1).cpu().numpy()
        groups.extend(str(r["group"]) for r in batch)
        hits.extend(p == int(r["label"]) for r, p in zip(batch, pred))
        batch.clear()

    for row in rows:
        if int(row["label"]) < 0:
            continue
        batch.append(row)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return per_group(groups, hits)


def gap(a: tuple, b: tuple, resamples: int = 2000, seed: int = 0,
        confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(difference, lo, hi): share(a) - share(b) for two independent samples of clusters, ``a`` and ``b`` each
    ``(hits, totals)`` per cluster, the interval from resampling each sample's clusters independently."""
    (ha, ta), (hb, tb) = ((np.asarray(h, np.float64), np.asarray(t, np.float64)) for h, t in (a, b))
    if ta.sum() <= 0 or tb.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pa = rng.integers(0, len(ha), (resamples, len(ha)))
    pb = rng.integers(0, len(hb), (resamples, len(hb)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = ha[pa].sum(1) / ta[pa].sum(1) - hb[pb].sum(1) / tb[pb].sum(1)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return float(ha.sum() / ta.sum() - hb.sum() / tb.sum()), float(lo), float(hi)


def triple_metrics(name: str, triple) -> dict:
    s, lo, hi = triple
    return {name: s, f"{name}_lo": lo, f"{name}_hi": hi}
