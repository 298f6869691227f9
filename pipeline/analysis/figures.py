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


# ------------------------------------------------------------------------------------------ transfer

_VARIANT_STYLE = {"BnB": ("tab:blue", "o", "BnB (selffer, frozen)"), "BnB+": ("tab:cyan", "s", "BnB+ (fine-tuned)"),
                  "AnB": ("tab:red", "o", "AnB (transfer, frozen)"), "AnB+": ("tab:orange", "s", "AnB+ (fine-tuned)")}


def transfer_curve(results: dict, cells: list, split: str, layers: list, labels: dict) -> plt.Figure:
    """Yosinski et al.'s Figure 2: test accuracy on B against the layer n the net is chopped at, each seed a
    point (the spread), the means joined; baseB at n = 0."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = {n: i + 1 for i, n in enumerate(layers)}

    def acc(cell):
        return results[cell.key]["test_accuracy"] if cell.key in results else None

    base = [acc(c) for c in cells if c.split == split and c.variant == "baseB" and acc(c) is not None]
    if base:
        ax.scatter([0] * len(base), base, color="black", marker="D", zorder=3, label="baseB (trained on B)")
        ax.axhline(float(np.mean(base)), color="black", lw=0.8, ls="--")
    for k, (variant, (colour, marker, name)) in enumerate(_VARIANT_STYLE.items()):
        offset = (k - 1.5) * 0.06
        means = []
        for n in layers:
            values = [acc(c) for c in cells if c.split == split and c.variant == variant and c.layer == n
                      and acc(c) is not None]
            if values:
                ax.scatter([xs[n] + offset] * len(values), values, color=colour, marker=marker, s=18, alpha=0.7)
                means.append((xs[n] + offset, float(np.mean(values))))
        if means:
            ax.plot(*zip(*means), color=colour, marker=marker, label=name)
    ax.set_xticks([0] + list(xs.values()), ["base"] + list(layers))
    ax.set_xlabel("layer n: layers 1..n copied (frozen, or fine-tuned for +), the rest trained on B")
    ax.set_ylabel("test accuracy on B")
    a, b = labels.get((split, "A"), []), labels.get((split, "B"), [])
    what = f"A = {', '.join(a)}\nB = {', '.join(b)}" if split == "class" else "A = day scenes, B = night scenes"
    ax.set_title(f"transfer, {split} split: {what}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def size_curve(results: dict, cells: list, sizes: dict, split: str, *, data: str = "",
               source: str = "", as_is=None) -> plt.Figure:
    """Accuracy against B's training-set size (``sizes``: configured size -> the rows B had for it): from
    scratch, pre-trained on A, and with a second loss; each seed a point, means joined (log x). With ``data``
    (``transfer.mode=sizes``): against the dataset's own size, pre-trained meaning started from ``source``, and
    ``as_is`` (the source's accuracy before fine-tuning) a dotted line."""
    fig, ax = plt.subplots(figsize=(7, 4.3))
    style = {"scratch": ("tab:gray", "from scratch"),
             "pretrained": ("tab:orange", f"from {source}, fine-tuned" if data else "pre-trained on A, fine-tuned"),
             "aux": ("tab:green", "from scratch + second loss (masks / distances)")}
    for variant, (colour, name) in style.items():
        means = []
        for size in sorted(sizes):
            values = [results[c.key]["test_accuracy"] for c in cells
                      if c.variant == variant and c.size == size and c.key in results]
            if values:
                ax.scatter([sizes[size]] * len(values), values, color=colour, s=16, alpha=0.7)
                means.append((sizes[size], float(np.mean(values))))
        if means:
            ax.plot(*zip(*means), color=colour, marker="o", label=name)
    if as_is is not None:
        ax.axhline(as_is, color="tab:orange", ls=":", label=f"{source} as it is (no fine-tuning)")
    ax.set_xscale("log")
    ax.set_xlabel(f"training images of {data}" if data else f"training images of B ({split} split)")
    ax.set_ylabel(f"test accuracy on {data}" if data else "test accuracy on B")
    ax.set_title("too little data: from scratch vs pre-trained" if data
                 else "too little data: scratch vs pre-trained vs a second loss", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def filters_side_by_side(nets: list, titles: list) -> plt.Figure:
    """The first conv layer's filters of each net, side by side."""
    from pipeline.analysis.render import filter_grid

    fig, axes = plt.subplots(1, len(nets), figsize=(4 * len(nets), 4.3))
    for ax, net, title in zip(np.atleast_1d(axes), nets, titles):
        ax.imshow(filter_grid(net), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle("conv1 filters", fontsize=9)
    fig.tight_layout()
    return fig
