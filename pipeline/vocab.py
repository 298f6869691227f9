"""The project's vocabulary: the class names, states and distance buckets every layer speaks of.

At the bottom of the import graph (it imports nothing of ours), so that the config, the task table, the
readers, the synthetic renderer, augmentation and the analyses all take these names from one place.
"""
from __future__ import annotations

# The canonical traffic-light states every format maps to.
TL_STATES = ("red", "yellow", "green", "off")
# Classes of the traffic-light crops, in label-index order: the states and "not a light".
CROP_CLASSES = TL_STATES + ("background",)
# Lane-marking classes of the ego lane (the synthetic generator's); the position is the class index.
LANE_CLASSES: tuple[str, ...] = (
    "none", "solid_white", "dashed_white", "double_solid_yellow", "solid_dashed_yellow", "dashed_yellow",
)
# Distance buckets of a traffic light, decided by box height in the stored image (conf: ingest.distance_buckets).
DISTANCES = ("near", "medium", "far")


def distance_bucket(box_height: float, image_height: int, buckets=(0.04, 0.09)) -> str:
    """The distance label of a traffic light: "far" if box_height/image_height < buckets[0], "medium" if
    below buckets[1], else "near"."""
    if image_height <= 0:
        raise ValueError(f"image_height={image_height!r} is invalid: must be > 0")
    ratio = box_height / image_height
    if ratio < buckets[0]:
        return DISTANCES[2]
    return DISTANCES[1] if ratio < buckets[1] else DISTANCES[0]
