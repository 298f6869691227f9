"""Where the object is in an image: one definition for every stage that separates an object from its context
(augmentation's ``context_paste``, the context audit's occlusion and attribution shares, the backgrounds
protocol).

The object region is the union of the non-zero pixels of a mask (the lane markings) and every pixel a box touches
(pixel ``i`` spans ``[i, i + 1)``, so a box narrower than a pixel still covers the pixel it lies in), grown by
``grow`` pixels in every direction: a square (Chebyshev) dilation, the same for a mask and for a box.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def grown(region: np.ndarray, pixels: int) -> np.ndarray:
    """Bool copy of ``region`` grown by ``pixels`` in every direction (square dilation; 0: unchanged)."""
    if pixels < 0:
        raise ValueError(f"the object region cannot grow by {pixels!r} pixels (must be >= 0)")
    region = np.asarray(region).astype(bool)
    if pixels == 0 or not region.any():
        return region
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(region.view(np.uint8), kernel).astype(bool)


def box_region(boxes, hw: Sequence[int], grow: int = 0) -> np.ndarray:
    """Bool (H, W): the pixels the boxes ``(x0, y0, x1, y1)`` touch, each box grown by ``grow`` pixels."""
    h, w = int(hw[0]), int(hw[1])
    region = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        c0, r0 = math.floor(x0) - grow, math.floor(y0) - grow
        c1 = max(math.ceil(x1), math.floor(x0) + 1) + grow
        r1 = max(math.ceil(y1), math.floor(y0) + 1) + grow
        region[max(r0, 0):max(min(r1, h), 0), max(c0, 0):max(min(c1, w), 0)] = True
    return region


def object_region(hw: Sequence[int], mask: Optional[np.ndarray] = None, boxes=(), grow: int = 0) -> np.ndarray:
    """Bool (H, W): ``mask``'s non-zero pixels and the pixels ``boxes`` touch, grown by ``grow`` pixels."""
    region = box_region(boxes, hw)
    if mask is not None:
        region |= np.asarray(mask) > 0
    return grown(region, grow)
