"""The context question on data nobody rendered: the background protocol of Xiao et al. 2020 (*Noise or Signal:
the role of image backgrounds in object recognition*), for any classifier dataset whose rows say where the
object is (lane masks, the light's place in a crop; :func:`pipeline.analysis.context.object_mask`).

For every labelled row with an object, four variants:

* ``only_fg``: the object on a neutral background (the normalisation mean, a zero input);
* ``only_bg``: the object removed by inpainting (OpenCV's Telea method over the dilated object region), not grey;
* ``mixed_same``: the object pasted onto the ``only_bg`` of another row of the **same** class;
* ``mixed_rand``: the object pasted onto the ``only_bg`` of a row of **another** class, drawn at random;

partners drawn from the same batch, never from the row's own group (sequence).

Accuracy (against the object's label) on each, and ``bg_gap = acc(mixed_same) - acc(mixed_rand)``: how much a
background of the right class helps. That needs data whose backgrounds go with the classes (Xiao et al.'s
ImageNet, or the training distribution of a biased set): on scenes where context and class are independent a
"background of the same class" says nothing of the class, and the gap is 0 for any net. On such data a net
that reads only the object has a gap near 0; a net that reads the background loses on ``mixed_rand``. For ``mixed_rand`` the share predicted as the *background's* class is given
too, per object class (does a light crop's ``off`` follow its background?). Intervals are 95% bootstrap intervals
over groups (sequences), paired where two variants share rows (the gap).

A pure library (numpy, OpenCV, torch): the caller passes decoded rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

__all__ = ["VARIANTS", "Backgrounds", "inpaint", "variants", "measure"]

VARIANTS = ("original", "only_fg", "only_bg", "mixed_same", "mixed_rand")


def inpaint(images: np.ndarray, masks: np.ndarray, radius: int = 3) -> np.ndarray:
    """Each image with its mask's pixels filled from around them (Telea inpainting)."""
    import cv2

    return np.stack([cv2.inpaint(np.ascontiguousarray(im), m.astype(np.uint8), radius, cv2.INPAINT_TELEA)
                     if m.any() else im.copy() for im, m in zip(images, masks)])


def variants(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
             groups: Optional[Sequence] = None) -> dict:
    """The four variants of each image (and ``original``), plus ``bg_label``: the class of the background each
    ``mixed_rand`` image got (-1 where no row of another class exists) and ``same_ok`` / ``rand_ok``: whether a
    partner was found. With ``groups``, a partner is never of the row's own group (another frame of the same
    sequence would give it back nearly its own background): rows with no partner outside their group get none."""
    from pipeline.models.normalize import MEAN

    n = len(images)
    bg = inpaint(images, masks)
    grey = np.full_like(images, round(MEAN * 255))
    only_fg = np.where(masks[..., None], images, grey)
    same = np.full(n, -1)
    rand = np.full(n, -1)
    group = np.asarray(list(groups) if groups is not None else range(n), object)
    for i in range(n):
        other = group != group[i]
        pool_same = np.flatnonzero((labels == labels[i]) & other)
        pool_rand = np.flatnonzero((labels != labels[i]) & other)
        if len(pool_same):
            same[i] = pool_same[rng.integers(len(pool_same))]
        if len(pool_rand):
            rand[i] = pool_rand[rng.integers(len(pool_rand))]

    def mixed(partner):
        out = images.copy()
        for i, j in enumerate(partner):
            if j >= 0:
                out[i] = np.where(masks[i][..., None], images[i], bg[j])
        return out

    return {"original": images, "only_fg": only_fg, "only_bg": bg, "mixed_same": mixed(same),
            "mixed_rand": mixed(rand), "bg_label": np.where(rand >= 0, labels[np.maximum(rand, 0)], -1),
            "same_ok": same >= 0, "rand_ok": rand >= 0}


@dataclass
class Backgrounds:
    metrics: dict
    text: str
    follows_background: dict = field(default_factory=dict)   # object class -> (share, lo, hi) on mixed_rand
    rows: int = 0


@dataclass
class _Tally:
    """Per kept row, in reading order: its group, label, which variants it scored on, whether it found a partner
    of its class (same) and of another class (rand), and whether mixed-rand followed the background's class."""
    groups: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    hits: dict = field(default_factory=lambda: {v: [] for v in VARIANTS})
    follows: list = field(default_factory=list)
    same: list = field(default_factory=list)
    rand: list = field(default_factory=list)


def _score_batch(model, batch: list, kind: str, dilate: int, aspect: float, rng, device, tally: _Tally) -> None:
    """The variants of one batch's labelled rows with an object, scored (a batch with fewer than 2: skipped)."""
    from pipeline.analysis.context import object_mask
    from pipeline.models.normalize import to_tensor

    images = np.stack([np.asarray(r["image"], np.uint8) for r in batch])
    masks = np.stack([object_mask(kind, r, dilate, aspect) for r in batch])
    labels = np.array([int(r["label"]) for r in batch])
    keep = masks.reshape(len(batch), -1).any(1) & (labels >= 0)
    if keep.sum() < 2:
        return
    images, masks, labels = images[keep], masks[keep], labels[keep]
    kept = [str(r.get("group", r.get("id", i))) for i, r in enumerate(np.array(batch, object)[keep])]
    made = variants(images, masks, labels, rng, kept)
    for v in VARIANTS:
        with torch.no_grad():
            pred = model(to_tensor(made[v]).to(device)).float().argmax(1).cpu().numpy()
        tally.hits[v] += (pred == labels).tolist()
        if v == "mixed_rand":
            tally.follows.extend((pred == made["bg_label"]) & made["rand_ok"])
    tally.same += made["same_ok"].tolist()
    tally.rand += made["rand_ok"].tolist()
    tally.groups.extend(kept)
    tally.labels.extend(labels.tolist())


def measure(model, rows: Iterable[dict], kind: str, classes: Sequence[str], *, dilate: int = 2,
            batch_size: int = 64, max_rows: int = 0, resamples: int = 2000, seed: int = 0,
            device="cpu", light_aspect: Optional[float] = None) -> Backgrounds:
    """The protocol of the module docstring on ``rows`` (decoded rows of ``kind`` with ``image``, ``label`` and
    ``group``; road frames also ``lane_mask``). Variants pair rows within batches of ``batch_size``, so the
    partner rows are drawn from the same batch."""
    from itertools import islice

    from pipeline.analysis.context import LIGHT_ASPECT

    model.eval()
    rng = np.random.default_rng([seed, 3])
    aspect = LIGHT_ASPECT if light_aspect is None else light_aspect
    tally = _Tally()
    batch: list = []
    for row in islice(rows, max_rows) if max_rows else rows:
        batch.append(row)
        if len(batch) == batch_size:
            _score_batch(model, batch, kind, dilate, aspect, rng, device, tally)
            batch = []
    if batch:
        _score_batch(model, batch, kind, dilate, aspect, rng, device, tally)
    if not tally.groups:
        raise ValueError("no labelled row with an object to paste: the background protocol needs rows whose "
                         "object region is known (lane masks, light crops)")
    return _summarize(tally, classes, resamples, seed)


def _fmt(t) -> str:
    return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"


def _summarize(tally: _Tally, classes: Sequence[str], resamples: int, seed: int) -> Backgrounds:
    """Accuracy per variant, BG-Gap and how often mixed-rand follows the background, with intervals over groups."""
    from pipeline.analysis.intervals import bootstrap, per_group, triple_metrics

    groups, used = tally.groups, {"same": tally.same, "rand": tally.rand}
    k = len(set(groups))
    metrics: dict = {"backgrounds.rows": float(len(groups)), "backgrounds.groups": float(k),
                     "backgrounds.mixed_same_rows": float(sum(used["same"])),
                     "backgrounds.mixed_rand_rows": float(sum(used["rand"]))}
    triples = {}
    for v in VARIANTS:
        where = used["same"] if v == "mixed_same" else used["rand"] if v == "mixed_rand" else None
        triples[v] = bootstrap(*per_group(groups, tally.hits[v], where), resamples, seed)
        metrics.update(triple_metrics(f"backgrounds.{v}_accuracy", triples[v]))
    both = np.asarray(used["same"]) & np.asarray(used["rand"])
    metrics["backgrounds.paired_rows"] = float(both.sum())        # rows in the gap: both partners found
    diff = np.asarray(tally.hits["mixed_same"], np.float64) - np.asarray(tally.hits["mixed_rand"], np.float64)
    gap = bootstrap(*per_group(groups, diff, both), resamples, seed)
    metrics.update(triple_metrics("backgrounds.bg_gap", gap))
    result = Backgrounds(metrics, "", rows=len(groups))
    labels_all = np.asarray(tally.labels)
    for lab in sorted(set(labels_all[np.asarray(used["rand"], bool)].tolist())):
        name = classes[lab] if 0 <= lab < len(classes) else str(lab)
        where = np.asarray(used["rand"], bool) & (labels_all == lab)
        result.follows_background[name] = bootstrap(*per_group(groups, tally.follows, where), resamples, seed)
        metrics.update(triple_metrics(f"backgrounds.follows_background.{name}", result.follows_background[name]))
    result.text = (f"backgrounds (Xiao et al. 2020) on {len(groups)} rows of {k} groups: accuracy original "
                   f"{_fmt(triples['original'])}, object only {_fmt(triples['only_fg'])}, object inpainted away "
                   f"{_fmt(triples['only_bg'])}, on a background of its class {_fmt(triples['mixed_same'])}, of "
                   f"another class {_fmt(triples['mixed_rand'])}; BG-Gap {_fmt(gap)}")
    missing = len(groups) - int(sum(used["same"]))
    if missing:
        result.text += (f" ({missing} rows found no row of their class outside their own sequence in their batch: "
                        f"left out of mixed-same and the gap)")
    return result
