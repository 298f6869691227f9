"""Pictures of datasets for MLflow: sample grids with boxes and labels, near-duplicate pairs."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.vocab import DISTANCES, TL_STATES  # noqa: E402

STATE_COLOURS = {"red": "#ff3030", "yellow": "#ffd400", "green": "#30ff60", "off": "#c0c0c0"}


def decode_row(kind: str, row) -> dict:
    """A Petastorm-encoded Spark Row of dataset ``kind`` back to numpy values."""
    from schemas.datasets import SCHEMAS, decode_row as decode

    return decode(SCHEMAS[kind], row)


def _grid(n: int, cell: float = 2.6):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols * 1.3, cell * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def draw_boxes(ax, boxes: np.ndarray, states, distances=None) -> None:
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).reshape(-1, 4)):
        state = TL_STATES[int(states[k])]
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2, ec=STATE_COLOURS[state]))
        if distances is not None:
            ax.text(x0, y0 - 1, DISTANCES[int(distances[k])][0], color=STATE_COLOURS[state], fontsize=6)


def sample_grid(kind: str, rows: list, title: str = ""):
    """A grid of decoded samples: boxes (colour = state, letter = distance) or class names drawn on them."""
    fig, axes = _grid(len(rows))
    for ax, row in zip(axes, rows):
        d = decode_row(kind, row)
        ax.imshow(d["image"])
        if kind == "tl_frames":
            draw_boxes(ax, d["boxes"], d["states"], d["distances"])
            ax.set_title(f"{d['split']} · {len(d['boxes'])} lights", fontsize=7)
        else:
            extra = f" · {d['context']}" if d.get("context") else ""
            ax.set_title(f"{d['label_name']}{extra} ({d['split']})", fontsize=7)
    fig.suptitle(title or f"{kind}: samples", fontsize=9)
    fig.tight_layout()
    return fig


def pair_grid(root: str, kind: str, pairs: list):
    """Near-duplicate frames that straddle two splits, side by side."""
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import col

    spark = SparkSession.getActiveSession()
    ids = sorted({p["id_a"] for p in pairs} | {p["id_b"] for p in pairs})
    found = {r["id"]: r for r in spark.read.parquet(f"{root}/{kind}/*").filter(col("id").isin(ids)).collect()}
    fig, axes = plt.subplots(len(pairs), 2, figsize=(5.5, 2.2 * len(pairs)), squeeze=False)
    for (ax_a, ax_b), pair in zip(axes, pairs):
        for ax, key, split in ((ax_a, pair["id_a"], pair["split_a"]), (ax_b, pair["id_b"], pair["split_b"])):
            ax.axis("off")
            if key in found:
                ax.imshow(decode_row(kind, found[key])["image"])
            ax.set_title(f"{split}: {key[-28:]}", fontsize=6)
        ax_a.text(0, -0.25, f"{pair['distance']} bits apart", transform=ax_a.transAxes, fontsize=6)
    fig.suptitle("near-duplicates across splits", fontsize=9)
    fig.tight_layout()
    return fig
