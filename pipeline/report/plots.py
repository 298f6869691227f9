"""The figures the report draws itself (every other figure on the page is one a stage logged)."""
from __future__ import annotations

import io
from typing import Optional


def png(fig, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def training_curves(task: str, losses: dict, scores: dict) -> Optional[bytes]:
    """Loss (left) and validation scores (right) per epoch as a PNG; ``losses`` and ``scores`` map a metric
    name to its ``[(epoch, value)]``. None when there is no point to draw."""
    from matplotlib.figure import Figure

    if not any(losses.values()) and not any(scores.values()):
        return None
    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_score = fig.subplots(1, 2)
    epochs = sorted({x for series in (losses, scores) for points in series.values() for x, _ in points})
    draw_series(ax_loss, losses, "loss", epochs)
    draw_series(ax_score, scores, "validation", epochs)
    ax_score.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{task}: training curves", fontsize=10)
    fig.tight_layout()
    return png(fig)


def draw_series(ax, series: dict, ylabel: str, epochs: list) -> None:
    """Each ``{name: [(epoch, value)]}`` of ``series`` as a line over ``epochs`` (whole-numbered ticks)."""
    from matplotlib.ticker import MaxNLocator

    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", label=name, markersize=4)
    ax.set_xlabel("epoch")
    ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(series.values()):
        ax.legend(fontsize=8)
