"""What the nets take and give, in pixels: the input normalisation and the detector's output stride.

Every net of :mod:`pipeline.models.nets` is trained on images normalised by :func:`to_tensor`; the loader, the
scorer and every analysis that feeds a net or draws what a net sees use these, from here.
"""
from __future__ import annotations

import numpy as np
import torch

MEAN, STD = 0.5, 0.25
DETECTOR_STRIDE = 4      # input pixels per heat-map cell of the detector (its two stride-2 pools)

_SCALE, _SHIFT = 1.0 / (255.0 * STD), MEAN / STD


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W): (x / 255 - MEAN) / STD, in one allocation and two
    in-place passes (half the CPU of the plain expression; it runs in the loader thread beside the step)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.mul_(_SCALE).sub_(_SHIFT)


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`to_tensor`, for pictures."""
    return ((x.detach().cpu().permute(0, 2, 3, 1).numpy() * STD + MEAN) * 255).round().clip(0, 255).astype(np.uint8)
