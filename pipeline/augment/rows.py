"""Dataset rows <-> augmentation samples: the one code path the Spark augment job and the training loader share.

A row is a dict of decoded Petastorm fields (``image``, and ``label``/``label_name``, ``lane_mask``, or
``boxes``/``states``/``distances`` by kind). Box labels carry the box's index (``"red#3"``) through the ops so
per-box fields (the distance bucket) stay with their box when an op drops boxes.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.augment.ops import Sample
from pipeline.augment.policy import Policy
from pipeline.vocab import TL_STATES


def to_sample(kind: str, row: dict) -> Sample:
    if kind == "tl_frames":
        labels = [f"{TL_STATES[int(s)]}#{k}" for k, s in enumerate(row["states"])]
        return Sample(row["image"], np.asarray(row["boxes"], np.float32).reshape(-1, 4), labels)
    if kind == "road_frames":
        return Sample(row["image"], mask=row.get("lane_mask"), label=row.get("label_name"))
    return Sample(row["image"], label=row.get("label_name"))


def from_sample(kind: str, row: dict, sample: Sample) -> dict:
    """The row with the sample's image and targets; other fields (ids, labels, context) are kept."""
    out = dict(row, image=sample.image)
    if kind == "tl_frames":
        index = [int(label.rsplit("#", 1)[1]) for label in sample.labels]
        states = [TL_STATES.index(label.rsplit("#", 1)[0]) for label in sample.labels]
        out.update(boxes=np.asarray(sample.boxes, np.float32).reshape(-1, 4),
                   states=np.asarray(states, np.int32),
                   distances=np.asarray(row["distances"], np.int32)[index] if index else np.zeros(0, np.int32))
    elif kind == "road_frames" and sample.mask is not None:
        out["lane_mask"] = sample.mask
    return out


def augment_row(kind: str, row: dict, policy: Policy, row_id: str, copy_index: int,
                background: Optional[np.ndarray] = None) -> tuple[dict, list]:
    """Apply ``policy`` to one row: the random state comes from (policy seed, row_id, copy_index) only."""
    sample, applied = policy.apply(to_sample(kind, row), row_id, copy_index, background=background)
    return from_sample(kind, row, sample), applied
