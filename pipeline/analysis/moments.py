"""Exact one-pass sufficient statistics of features, and every similarity measure derived from them.

A :class:`Moments` holds, for feature vectors ``z`` whose columns fall into named blocks (one block per net and
layer), the float64 sums that add across samples, partitions and machines:

* ``n``, ``sum z``, ``z^T z`` (all block pairs at once), per-column min and max;
* for the debiased CKA estimator, per block ``b`` the squared norm ``a_b = ||z_b||^2`` of each sample:
  ``sum a_b a_c`` and ``sum a_b z``.

Memory depends on the number of units (``D^2`` floats), never on the number of samples, and merging two
partials is addition, so a result does not change with the number of partitions. From the sums, exactly:
covariance and correlation blocks, linear CKA (Kornblith et al. 2019) and its debiased form (the unbiased HSIC
estimator of Song et al. 2012, expanded so it needs only the sums above), and SVCCA (Raghu et al. 2017: SVD to a
share of the variance, then CCA). Units with zero variance (a ReLU that never fires on the probe set) are *dead*:
they have no correlation; the measures leave them out and never return NaN for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEAD_VARIANCE = 1e-12     # a unit whose variance over the probe set is at most this (relative) is dead


class Moments:
    """Float64 sums over samples of a feature vector whose columns are the concatenated ``blocks``."""

    def __init__(self, blocks: dict[str, int]):
        self.names = list(blocks)
        self.sizes = [int(blocks[b]) for b in self.names]
        self.offsets = dict(zip(self.names, np.cumsum([0] + self.sizes[:-1]).tolist()))
        dim, k = sum(self.sizes), len(self.names)
        self.n = 0
        self.sum = np.zeros(dim)
        self.cross = np.zeros((dim, dim))
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)
        self.norms = np.zeros((k, k))          # sum_i a_b(i) a_c(i)
        self.norm_cross = np.zeros((k, dim))   # sum_i a_b(i) z(i)

    def span(self, block: str) -> slice:
        start = self.offsets[block]
        return slice(start, start + self.sizes[self.names.index(block)])

    def add(self, parts: dict[str, np.ndarray]) -> "Moments":
        """Add samples: ``parts[block]`` is an (m, size) array, the same m samples in every block."""
        z = np.concatenate([np.asarray(parts[b], np.float64).reshape(-1, s) for b, s in zip(self.names, self.sizes)],
                           axis=1)
        if not len(z):
            return self
        a = np.stack([np.einsum("ij,ij->i", z[:, self.span(b)], z[:, self.span(b)]) for b in self.names], axis=1)
        self.n += len(z)
        self.sum += z.sum(0)
        self.cross += z.T @ z
        np.minimum(self.min, z.min(0), out=self.min)
        np.maximum(self.max, z.max(0), out=self.max)
        self.norms += a.T @ a
        self.norm_cross += a.T @ z
        return self

    def merge(self, other: "Moments") -> "Moments":
        if other.names != self.names or other.sizes != self.sizes:
            raise ValueError("cannot merge moments of different blocks")
        self.n += other.n
        self.sum += other.sum
        self.cross += other.cross
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)
        self.norms += other.norms
        self.norm_cross += other.norm_cross
        return self

    # ------------------------------------------------------------------------------------ derived
    def mean(self, block: str) -> np.ndarray:
        return self.sum[self.span(block)] / self.n

    def scatter(self, a: str, b: str) -> np.ndarray:
        """Centred cross-products sum_i (x_i - mean x)(y_i - mean y)^T of blocks a and b."""
        sa, sb = self.span(a), self.span(b)
        return self.cross[sa, sb] - np.outer(self.sum[sa], self.sum[sb]) / self.n

    def covariance(self, a: str, b: str) -> np.ndarray:
        return self.scatter(a, b) / (self.n - 1)

    def variance(self, block: str) -> np.ndarray:
        return np.clip(np.diag(self.scatter(block, block)) / (self.n - 1), 0.0, None)

    def dead(self, block: str) -> np.ndarray:
        """Units that do not vary over the samples (e.g. a ReLU that never fires)."""
        var, mean = self.variance(block), self.mean(block)
        return var <= DEAD_VARIANCE * np.maximum(1.0, mean ** 2)

    def correlation(self, a: str, b: str) -> np.ndarray:
        """Pearson correlation of every unit of a with every unit of b; 0 where either unit is dead."""
        sa = np.sqrt(self.variance(a))
        sb = np.sqrt(self.variance(b))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = self.covariance(a, b) / np.outer(sa, sb)
        corr[self.dead(a), :] = 0.0
        corr[:, self.dead(b)] = 0.0
        return np.clip(np.nan_to_num(corr), -1.0, 1.0)

    def cka(self, a: str, b: str, debiased: bool = False) -> float:
        """Linear CKA of blocks a and b (0 when either has no live unit)."""
        xy = float(np.sum(self.scatter(a, b) ** 2))
        xx = float(np.sum(self.scatter(a, a) ** 2))
        yy = float(np.sum(self.scatter(b, b) ** 2))
        if debiased:
            xy, xx, yy = self._debias(a, b, xy), self._debias(a, a, xx), self._debias(b, b, yy)
        if xx <= 0 or yy <= 0:
            return 0.0
        return float(xy / np.sqrt(xx * yy))

    def _debias(self, a: str, b: str, xty: float) -> float:
        """Kornblith et al.'s debiased dot-product similarity, from sums only. Their formula needs, over centred
        rows, sum_i ||x~_i||^2 ||y~_i||^2; with ||x~_i||^2 = a_i - 2 x_i.mu_x + |mu_x|^2 it expands into the
        accumulated sum a_i b_i, sum a_i y_i, sum b_i x_i and x^T y."""
        n = self.n
        ia, ib = self.names.index(a), self.names.index(b)
        sa, sb = self.span(a), self.span(b)
        mx, my = self.sum[sa] / n, self.sum[sb] / n
        cx, cy = mx @ mx, my @ my
        sum_a, sum_b = np.trace(self.cross[sa, sa]), np.trace(self.cross[sb, sb])
        rows = (self.norms[ia, ib] - 2 * my @ self.norm_cross[ia, sb] + cy * sum_a
                - 2 * mx @ self.norm_cross[ib, sa] + 4 * mx @ self.cross[sa, sb] @ my
                - 2 * cy * (mx @ self.sum[sa]) + cx * sum_b - 2 * cx * (my @ self.sum[sb]) + n * cx * cy)
        norm_x = sum_a - n * cx        # sum_i ||x~_i||^2
        norm_y = sum_b - n * cy
        return float(xty - n / (n - 2.0) * rows + norm_x * norm_y / ((n - 1.0) * (n - 2.0)))

    def svcca(self, a: str, b: str, keep: float = 0.99) -> float:
        """SVCCA: each block reduced to the principal directions holding ``keep`` of its variance (dead units
        hold none), then the mean canonical correlation between the two reduced blocks."""
        basis_a, vals_a = _principal(self.covariance(a, a), keep)
        basis_b, vals_b = _principal(self.covariance(b, b), keep)
        if not len(vals_a) or not len(vals_b):
            return 0.0
        cross = basis_a.T @ self.covariance(a, b) @ basis_b
        whitened = cross / np.sqrt(np.outer(vals_a, vals_b))
        rho = np.linalg.svd(whitened, compute_uv=False)[:min(len(vals_a), len(vals_b))]
        return float(np.mean(np.clip(rho, 0.0, 1.0)))


def _principal(cov: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors of ``cov`` with the largest eigenvalues, as many as hold ``keep`` of the total variance."""
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    total = vals.sum()
    if total <= 0:
        return vecs[:, :0], vals[:0]
    k = int(np.searchsorted(np.cumsum(vals) / total, keep - 1e-12) + 1)
    k = min(k, int((vals > total * 1e-12).sum()))
    return vecs[:, :k], vals[:k]


# ----------------------------------------------------------------------- mutual information, second pass

@dataclass
class PairHistograms:
    """2-D histograms of chosen unit pairs (unit i of block a, unit j of block b), with fixed bin edges."""
    pairs: list                      # [(block a, i, block b, j)]
    edges: list                      # per pair: (edges of a's unit, edges of b's unit)
    counts: np.ndarray               # (pairs, bins, bins)

    @classmethod
    def for_pairs(cls, moments: Moments, pairs: list, bins: int) -> "PairHistograms":
        """Bin edges from the first pass's min and max of each unit."""
        edges = []
        for a, i, b, j in pairs:
            ea = _edges(moments.min[moments.span(a)][i], moments.max[moments.span(a)][i], bins)
            eb = _edges(moments.min[moments.span(b)][j], moments.max[moments.span(b)][j], bins)
            edges.append((ea, eb))
        return cls(list(pairs), edges, np.zeros((len(pairs), bins, bins)))

    def add(self, parts: dict[str, np.ndarray]) -> "PairHistograms":
        bins = self.counts.shape[1]
        for k, ((a, i, b, j), (ea, eb)) in enumerate(zip(self.pairs, self.edges)):
            x = np.clip(np.searchsorted(ea, parts[a][:, i], side="right") - 1, 0, bins - 1)
            y = np.clip(np.searchsorted(eb, parts[b][:, j], side="right") - 1, 0, bins - 1)
            np.add.at(self.counts[k], (x, y), 1)
        return self

    def merge(self, other: "PairHistograms") -> "PairHistograms":
        self.counts += other.counts
        return self

    def mutual_information(self) -> np.ndarray:
        """Per pair, in bits, from the joint histogram."""
        out = []
        for counts in self.counts:
            total = counts.sum()
            if total == 0:
                out.append(0.0)
                continue
            p = counts / total
            px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
            nz = p > 0
            out.append(float(np.sum(p[nz] * np.log2(p[nz] / (px @ py)[nz]))))
        return np.array(out)


def _edges(lo: float, hi: float, bins: int) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        hi = lo + 1.0 if np.isfinite(lo) else 1.0
        lo = lo if np.isfinite(lo) else 0.0
    return np.linspace(lo, hi, bins + 1)
