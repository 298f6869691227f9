"""Real evidence for a unit: the probe images that excite it most, and the patch of each that its activation sees.

:class:`TopK` keeps, per layer and unit, the ``k`` highest activations (a conv unit's maximum over positions, with
the position) and the row ids they came from; per partition in Spark, merged on the driver (a merge keeps the
``k`` best of both, ties broken by id, so the result does not depend on the partitioning). It also keeps each
unit's best spatial-mean activation over all images: the reference a synthetic image's activation is compared to.
:func:`receptive_field` walks a net's layers (convolutions and pools) to the input pixels one activation sees.
"""
from __future__ import annotations

import numpy as np


class TopK:
    def __init__(self, units: dict, k: int):
        self.k = k
        self.values = {l: np.full((n, 0), -np.inf) for l, n in units.items()}
        self.ids = {l: np.empty((n, 0), object) for l, n in units.items()}
        self.where = {l: np.zeros((n, 0, 2), int) for l, n in units.items()}
        self.best_mean = {l: np.full(n, -np.inf) for l, n in units.items()}

    def add(self, layer: str, act: np.ndarray, ids: list) -> "TopK":
        """``act``: (N, C, H, W) or (N, C) activations of ``layer`` for the rows ``ids``."""
        a = act if act.ndim == 4 else act[:, :, None, None]
        n, c, h, w = a.shape
        flat = a.reshape(n, c, h * w)
        pos = flat.argmax(2)                                    # (N, C)
        peak = np.take_along_axis(flat, pos[..., None], 2)[..., 0]
        where = np.stack([pos // w, pos % w], -1).transpose(1, 0, 2)   # (C, N, 2)
        ids = np.array(list(ids), object)
        self._keep(layer, np.concatenate([self.values[layer], peak.T], 1),
                   np.concatenate([self.ids[layer], np.broadcast_to(ids, (c, n))], 1),
                   np.concatenate([self.where[layer], where], 1))
        self.best_mean[layer] = np.maximum(self.best_mean[layer], a.mean((2, 3)).max(0))
        return self

    def _keep(self, layer: str, values, ids, where) -> None:
        keep_v, keep_i, keep_w = [], [], []
        for u in range(len(values)):
            order = sorted(range(values.shape[1]), key=lambda j: (-values[u, j], str(ids[u, j])))[:self.k]
            keep_v.append(values[u, order])
            keep_i.append(ids[u, order])
            keep_w.append(where[u, order])
        self.values[layer] = np.array(keep_v).reshape(len(values), -1)
        self.ids[layer] = np.array(keep_i, object).reshape(len(values), -1)
        self.where[layer] = np.array(keep_w, int).reshape(len(values), -1, 2)

    def merge(self, other: "TopK") -> "TopK":
        for layer in self.values:
            self._keep(layer, np.concatenate([self.values[layer], other.values[layer]], 1),
                       np.concatenate([self.ids[layer], other.ids[layer]], 1),
                       np.concatenate([self.where[layer], other.where[layer]], 1))
            self.best_mean[layer] = np.maximum(self.best_mean[layer], other.best_mean[layer])
        return self


def receptive_field(net, layer: str) -> tuple[int, int, float]:
    """``(size, stride, start)`` of one activation of ``layer`` in input pixels: position (y, x) sees the square
    of side ``size`` centred on ``start + stride * (y, x)`` (in each axis)."""
    import torch.nn as nn

    size, stride, start = 1, 1, 0.0
    for name in net.step_names:
        module = getattr(net, name)
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            s = module.stride if isinstance(module.stride, int) else module.stride[0]
            p = module.padding if isinstance(module.padding, int) else module.padding[0]
            start += ((k - 1) / 2 - p) * stride
            size += (k - 1) * stride
            stride *= s
        elif not isinstance(module, (nn.ReLU, nn.Dropout, nn.Identity)):
            return 0, 1, 0.0      # past the conv part (pooling to a vector, linear layers): the whole image
        if name == layer:
            break
    return size, stride, start


def patch(image: np.ndarray, field: tuple, y: int, x: int) -> np.ndarray:
    """The part of ``image`` that activation (y, x) sees (the whole image for layers without a spatial map),
    padded with grey where the field reaches past the border."""
    size, stride, start = field
    if size == 0:
        return image
    cy, cx = start + stride * y, start + stride * x
    y0, x0 = int(round(cy - (size - 1) / 2)), int(round(cx - (size - 1) / 2))
    out = np.full((size, size, 3), 128, np.uint8)
    ys, xs = slice(max(y0, 0), min(y0 + size, image.shape[0])), slice(max(x0, 0), min(x0 + size, image.shape[1]))
    out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = image[ys, xs]
    return out
