"""Before/after pictures of augmentation: per policy (rows and their copies) and per op (each op alone)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.augment.policy import OpStep, Policy  # noqa: E402
from pipeline.augment.rows import augment_row  # noqa: E402
from pipeline.data.figures import draw_boxes  # noqa: E402


def _decode(kind: str, row) -> dict:
    from schemas.datasets import AUGMENTED_SCHEMAS, decode_row

    return decode_row(AUGMENTED_SCHEMAS[kind], row)


def _show(ax, kind: str, row: dict, title: str) -> None:
    ax.imshow(row["image"])
    if kind == "tl_frames":
        draw_boxes(ax, row["boxes"], row["states"], row["distances"])
    ax.set_title(title, fontsize=6)
    ax.axis("off")


def policy_figure(kind: str, rows: list, policy: str):
    """One line per source row: the original, then its augmented copies with the ops that ran."""
    decoded = [_decode(kind, r) for r in rows]
    parents = sorted({r["parent_id"] for r in decoded})
    cols = max(r["copy"] for r in decoded) + 1
    fig, axes = plt.subplots(len(parents), cols, figsize=(2.6 * cols, 2.0 * len(parents)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, parent in enumerate(parents):
        for row in (r for r in decoded if r["parent_id"] == parent):
            ops = ", ".join(a["op"] for a in json.loads(row["ops"])) or "original"
            _show(axes[i][row["copy"]], kind, row, ops[:48])
    fig.suptitle(f"policy '{policy}' on {kind}", fontsize=9)
    fig.tight_layout()
    return fig


def ops_figure(kind: str, row, policy: Policy, background=None):
    """The row before and after each op of the policy alone (probability 1), with the drawn parameters."""
    base = _decode(kind, row)
    steps = list(policy.ops)
    cols = 4
    rows_n = -(-(len(steps) + 1) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.8 * cols, 2.2 * rows_n), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes.flat[0], kind, base, "before")
    bg = background if background is not None else base["image"][:, ::-1].copy()
    for ax, step in zip(list(axes.flat)[1:], steps):
        alone = Policy(step.op, (OpStep(step.op, 1.0, dict(step.params_ranges)),), policy.seed)
        out, applied = augment_row(kind, base, alone, base["parent_id"], 1, background=bg)
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in applied[0].items() if k != "op") if applied else ""
        _show(ax, kind, out, f"{step.op} {params}"[:52])
    fig.suptitle(f"policy '{policy.name}': each op alone on {kind}", fontsize=9)
    fig.tight_layout()
    return fig
