"""Matching the units of two nets from their between-net correlation matrix (Li et al., Convergent Learning).

* ``semi``: each unit of net A takes its most correlated unit of net B (several may take the same one);
* ``greedy``: one-to-one, the most correlated remaining pair first;
* ``hungarian``: one-to-one with the largest total correlation (maximum bipartite matching,
  ``scipy.optimize.linear_sum_assignment``).

Each returns ``(rows, cols)`` index arrays over the live units given. Many-to-many: spectral clustering of the
units of both nets, and how much more the units of a cluster correlate across nets than within a net.
"""
from __future__ import annotations

import numpy as np

METHODS = ("greedy", "hungarian", "semi")


def semi(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(corr.shape[0])
    return rows, corr.argmax(1) if corr.shape[1] else rows[:0]


def greedy(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-corr, axis=None, kind="stable")
    used_r, used_c, rows, cols = set(), set(), [], []
    for flat in order:
        r, c = divmod(int(flat), corr.shape[1])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        rows.append(r)
        cols.append(c)
        if len(rows) == min(corr.shape):
            break
    order = np.argsort(rows)
    return np.array(rows, int)[order], np.array(cols, int)[order]


def hungarian(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(corr, maximize=True)


MATCHERS = {"greedy": greedy, "hungarian": hungarian, "semi": semi}


def match(corr: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    return MATCHERS[method](corr)


def matched_values(corr: np.ndarray, method: str) -> np.ndarray:
    """The matched correlations, highest first (the paper's curve)."""
    if not corr.size:
        return np.zeros(0)
    rows, cols = match(corr, method)
    return np.sort(corr[rows, cols])[::-1]


def clusters(within_a: np.ndarray, within_b: np.ndarray, between: np.ndarray, k: int, seed: int = 0) -> dict:
    """Spectral clustering of the units of both nets on |correlation|; per cluster its units of each net and the
    mean |correlation| between its A-units and B-units against the mean within each net."""
    from sklearn.cluster import SpectralClustering

    na, nb = len(within_a), len(within_b)
    affinity = np.abs(np.block([[within_a, between], [between.T, within_b]]))
    np.fill_diagonal(affinity, 1.0)
    k = max(1, min(k, na + nb - 1))
    labels = SpectralClustering(k, affinity="precomputed", random_state=seed).fit_predict(affinity) \
        if na + nb > k else np.arange(na + nb)
    out = []
    for c in range(k):
        ua = np.flatnonzero(labels[:na] == c)
        ub = np.flatnonzero(labels[na:] == c)
        out.append({"a": ua.tolist(), "b": ub.tolist(),
                    "between": _mean_abs(between[np.ix_(ua, ub)]),
                    "within_a": _mean_abs(_off_diagonal(within_a[np.ix_(ua, ua)])),
                    "within_b": _mean_abs(_off_diagonal(within_b[np.ix_(ub, ub)]))})
    return {"labels": labels, "clusters": out}


def _off_diagonal(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(len(m), dtype=bool)] if len(m) > 1 else np.zeros(0)


def _mean_abs(values: np.ndarray) -> float:
    return float(np.mean(np.abs(values))) if np.size(values) else 0.0
