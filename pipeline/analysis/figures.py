"""Figures of the analysis stages (matplotlib, Agg): drawn from results, computing nothing new."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _matrix(ax, m: np.ndarray, title: str) -> None:
    ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def correlation_matrices(f) -> plt.Figure:
    """Within net 0, within net 1 and between, in natural order; then between with net 1's units in the order
    of their Hungarian partners (a matched pair on the diagonal), as in Li et al.'s Figure 2."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    _matrix(axes[0], f.within_a, f"{f.layer}: within net 0")
    _matrix(axes[1], f.within_b, "within net 1")
    _matrix(axes[2], f.between, "between, natural order")
    rows, cols = f.hungarian
    rest = [u for u in range(f.between.shape[1]) if u not in set(cols.tolist())]
    order_a = list(rows) + [u for u in range(f.between.shape[0]) if u not in set(rows.tolist())]
    _matrix(axes[3], f.between[np.ix_(order_a, list(cols) + rest)], "between, Hungarian order")
    dead = sum(len(d) for d in f.dead.values())
    fig.suptitle(f"{f.layer}: {f.units} units per net, {dead} dead (both nets), {len(f.unmatched)} without a "
                 f"good match", fontsize=9)
    fig.tight_layout()
    return fig


def matched_curves(findings: list) -> plt.Figure:
    """Per layer: the Hungarian-matched correlations of net 0 and net 1, highest first, with the random-net and
    permuted-image baselines."""
    cols = min(len(findings), 4)
    rows = -(-len(findings) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f in zip(axes.flat, findings):
        ax.axis("on")
        for label, values, style in (("net 0 vs net 1", f.matched["hungarian"], "-"),
                                     ("vs random net", f.baselines["random"]["hungarian"], "--"),
                                     ("permuted images", f.baselines["permuted"]["hungarian"], ":")):
            if len(values):
                ax.plot(np.arange(len(values)) / max(len(values) - 1, 1), values, style, label=label)
        ax.set_ylim(-0.2, 1.0)
        ax.set_title(f"{f.layer}", fontsize=9)
        ax.set_xlabel("units, sorted (fraction)", fontsize=7)
        ax.set_ylabel("matched correlation", fontsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def cka_figure(cka: np.ndarray, debiased: np.ndarray, layers: tuple) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, m, title in ((axes[0], cka, "linear CKA"), (axes[1], debiased, "debiased linear CKA")):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(layers)), layers, rotation=45, fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_xlabel("net 1")
        ax.set_ylabel("net 0")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.5 else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def cluster_figure(findings: list) -> plt.Figure:
    """Per layer and spectral cluster: mean |correlation| between its units of the two nets against within."""
    fig, axes = plt.subplots(1, len(findings), figsize=(3.2 * len(findings), 3), squeeze=False)
    for ax, f in zip(axes[0], findings):
        clusters = [c for c in f.clusters["clusters"] if c["a"] and c["b"]]
        x = np.arange(len(clusters))
        ax.bar(x - 0.2, [c["between"] for c in clusters], 0.4, label="between nets")
        ax.bar(x + 0.2, [(c["within_a"] + c["within_b"]) / 2 for c in clusters], 0.4, label="within a net")
        ax.set_title(f"{f.layer}: clusters with units of both nets", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_xlabel("cluster", fontsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig
