"""Tests of pipeline.augment. Helpers shared by its test modules: small synthetic samples."""
from __future__ import annotations

import functools

import numpy as np

from pipeline.augment import Sample
from pipeline.data.synth import Frame, SynthConfig, render_frame

SMALL = SynthConfig(width=320, height=180, frames_per_sequence=1)   # one frame per sequence: diverse frames
SEED = 5


@functools.lru_cache(maxsize=None)
def frame(index: int) -> Frame:
    return render_frame(SEED, index, SMALL)


def sample_of(frm: Frame, labels=None) -> Sample:
    """The frame as a Sample: its boxes, lane mask, light (instance) mask and lane class. ``labels``
    default to "id<k>" (no flip meaning), so a test can tell which source box an output box came from."""
    boxes = np.array([[b.x_min, b.y_min, b.x_max, b.y_max] for b in frm.boxes], np.float32).reshape(-1, 4)
    labels = [f"id{k}" for k in range(len(boxes))] if labels is None else labels
    return Sample(frm.image, boxes, labels, frm.lane_mask, frm.light_mask, frm.lane_class)


LIGHT_FRAMES = tuple(i for i in range(40) if frame(i).boxes)     # frames with at least one traffic light
