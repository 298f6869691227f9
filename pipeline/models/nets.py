"""The three nets of the pipeline, with stable layer names.

Every convolution and linear layer is a direct attribute named after its place in the net
(``conv1`` ... ``fc8``), so analysis jobs can address layers by name: correlate the units of two
nets, maximize one unit's activation, or chop a net after layer *n* and transfer those layers.
The state-dict keys are exactly ``<layer>.weight`` and ``<layer>.bias``.

A layer's *activation* is its output after its ReLU; the last layer (the head) has no ReLU, its
activation is the logits. ReLUs are applied functionally (not in place), so a forward hook on a
layer sees the layer's pre-ReLU output. Use :meth:`NamedLayers.features_at` to read activations.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.tasks import TASKS, get_task  # noqa: F401  (TASKS re-exported by pipeline.models)

_IN_CHANNELS = 3        # RGB images
_MIN_WIDTH = 8          # narrowest layer a width multiplier may produce


def _scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least ``_MIN_WIDTH``."""
    return max(_MIN_WIDTH, round(channels * width))


def _check_width(width: float) -> None:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")


def _check_num_classes(num_classes: Optional[int]) -> None:
    if num_classes is None or num_classes < 2:
        raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes!r}")


class NamedLayers(nn.Module):
    """Base of the nets: runs child modules in a declared order and exposes named activations.

    Subclasses set two class attributes and create one child module per entry of ``step_names``:

    * ``layer_names``: the conv / linear layers in forward order; the last one is the head.
    * ``step_names``: every step of the forward pass, in order: the named layers plus the
      parameter-free steps between them (pools, dropout, flatten).
    """

    layer_names: tuple[str, ...] = ()
    step_names: tuple[str, ...] = ()

    def _steps(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(step name, output)`` for each step of ``step_names``; named layers include their ReLU."""
        head = self.layer_names[-1]
        for name in self.step_names:
            x = getattr(self, name)(x)
            if name in self.layer_names and name != head:
                x = F.relu(x)
            yield name, x

    def _output_hw(self, in_hw: tuple[int, int], step: str) -> tuple[int, int]:
        """Spatial size of the output of ``step`` for an input of size ``in_hw`` (one dummy forward)."""
        x = torch.zeros(1, _IN_CHANNELS, *in_hw)
        try:
            with torch.no_grad():
                for name, x in self._steps(x):
                    if name == step:
                        break
        except RuntimeError as err:
            raise ValueError(f"in_hw={tuple(in_hw)} is too small for {type(self).__name__}") from err
        return tuple(x.shape[-2:])

    def init_weights(self) -> None:
        """Kaiming-normal (fan_out, ReLU) convs, N(0, 0.01) linears, zero biases (torchvision's VGG scheme)."""
        for name in self.layer_names:
            layer = getattr(self, name)
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the head (class scores, or the heat map for the detector)."""
        for _, x in self._steps(x):
            pass
        return x

    def features_at(self, x: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
        """Activations of the named layers for input ``x``, in one forward pass.

        Each value is the layer's output after its ReLU (the head's: its logits). The pass stops
        after the last requested layer. Keys are the requested names, in the order given.
        Raises ``ValueError`` for a name that is not in ``layer_names``.
        """
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.layer_names]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; {type(self).__name__} has {self.layer_names}")
        found: dict[str, Tensor] = {}
        if wanted:
            for name, x in self._steps(x):
                if name in wanted:
                    found[name] = x
                    if len(found) == len(wanted):
                        break
        return {n: found[n] for n in wanted}

    def transferable(self) -> tuple[str, ...]:
        """Layers whose state can be copied between nets of one architecture: all but the head.

        The source and target must share ``width`` (and, for the classifiers, ``in_hw``), since
        those fix the layer shapes; ``num_classes`` may differ.
        """
        return self.layer_names[:-1]


class LaneNet(NamedLayers):
    """AlexNet for road-lane images, adapted from torchvision's AlexNet to small inputs.

    Five convs with max-pools after conv1, conv2 and conv5, then dropout + fc6, dropout + fc7,
    fc8. conv1 is 7x7 stride 2 (instead of 11x11 stride 4, too coarse for 128x128). Channel
    widths are AlexNet's (64, 192, 384, 256, 256; fc 4096, 4096) times ``width``.

    As in torchvision, an adaptive average pool precedes fc6. Its output size is the conv5 map
    size for ``in_hw`` (so at ``in_hw`` it is the identity); other input sizes still work.
    """

    layer_names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    step_names = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5",
              "avgpool", "flatten", "drop6", "fc6", "drop7", "fc7", "fc8")

    def __init__(self, num_classes: int, in_hw: tuple[int, int] = (128, 128), width: float = 1.0,
                 dropout: float = 0.5) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        _check_width(width)
        c1, c2, c3, c4, c5, f6, f7 = (_scaled(c, width) for c in (64, 192, 384, 256, 256, 4096, 4096))
        self.conv1 = nn.Conv2d(_IN_CHANNELS, c1, kernel_size=7, stride=2, padding=3)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=2)
        map_hw = self._output_hw(in_hw, "pool5")
        self.avgpool = nn.AdaptiveAvgPool2d(map_hw)
        self.flatten = nn.Flatten()
        self.drop6 = nn.Dropout(dropout)
        self.fc6 = nn.Linear(c5 * map_hw[0] * map_hw[1], f6)
        self.drop7 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(f6, f7)
        self.fc8 = nn.Linear(f7, num_classes)
        self.init_weights()


class TLClassifier(NamedLayers):
    """Small CNN that classifies traffic-light crops (e.g. red / yellow / green / off).

    conv1, conv2 (3x3), 2x2 max-pool, conv3, conv4 (3x3), 2x2 max-pool, then dropout + fc5,
    dropout + fc6 (head). Widths (32, 32, 64, 64; fc 256) times ``width``; no batch norm.
    An adaptive average pool before fc5 is the identity at ``in_hw``, as in :class:`LaneNet`.
    """

    layer_names = ("conv1", "conv2", "conv3", "conv4", "fc5", "fc6")
    step_names = ("conv1", "conv2", "pool1", "conv3", "conv4", "pool2",
              "avgpool", "flatten", "drop5", "fc5", "drop6", "fc6")

    def __init__(self, num_classes: int, in_hw: tuple[int, int] = (32, 32), width: float = 1.0,
                 dropout: float = 0.5) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        _check_width(width)
        c1, c2, c3, c4, f5 = (_scaled(c, width) for c in (32, 32, 64, 64, 256))
        self.conv1 = nn.Conv2d(_IN_CHANNELS, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(kernel_size=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(kernel_size=2)
        map_hw = self._output_hw(in_hw, "pool2")
        self.avgpool = nn.AdaptiveAvgPool2d(map_hw)
        self.flatten = nn.Flatten()
        self.drop5 = nn.Dropout(dropout)
        self.fc5 = nn.Linear(c4 * map_hw[0] * map_hw[1], f5)
        self.drop6 = nn.Dropout(dropout)
        self.fc6 = nn.Linear(f5, num_classes)
        self.init_weights()


class TLDetector(NamedLayers):
    """Fully convolutional traffic-light detector from the talk: image in, heat map out.

    conv1, conv2 (7x7); pool1 (max 5x5 stride 2); conv3, conv4, conv5 (3x3); pool2 (max 5x5
    stride 2); conv6, conv7, conv8 (3x3); ``heatmap`` (1x1, one channel). Convs are stride 1 and
    padded to keep the size, so the heat map has ``heatmap_size(h, w)`` cells for any input size,
    one per ``stride`` x ``stride`` pixels. It holds logits: apply a sigmoid at inference. The
    heat-map bias starts at -4 (a focal-loss prior) so the initial map is ~0.02 everywhere.
    Widths (32, 32; 64, 64, 64; 96, 96, 96) times ``width``.
    """

    layer_names = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7", "conv8", "heatmap")
    step_names = ("conv1", "conv2", "pool1", "conv3", "conv4", "conv5", "pool2",
              "conv6", "conv7", "conv8", "heatmap")
    stride = 4
    prior_bias = -4.0

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        _check_width(width)
        c1, c2, c3, c4, c5, c6, c7, c8 = (_scaled(c, width) for c in (32, 32, 64, 64, 64, 96, 96, 96))
        self.conv1 = nn.Conv2d(_IN_CHANNELS, c1, kernel_size=7, padding=3)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=7, padding=3)
        self.pool1 = nn.MaxPool2d(kernel_size=5, stride=2, padding=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(kernel_size=5, stride=2, padding=2)
        self.conv6 = nn.Conv2d(c5, c6, kernel_size=3, padding=1)
        self.conv7 = nn.Conv2d(c6, c7, kernel_size=3, padding=1)
        self.conv8 = nn.Conv2d(c7, c8, kernel_size=3, padding=1)
        self.heatmap = nn.Conv2d(c8, 1, kernel_size=1)
        self.init_weights()
        nn.init.normal_(self.heatmap.weight, 0.0, 0.01)
        nn.init.constant_(self.heatmap.bias, self.prior_bias)

    def heatmap_size(self, h: int, w: int) -> tuple[int, int]:
        """Size of the heat map for an ``h`` x ``w`` input: ``(ceil(h / 4), ceil(w / 4))``."""
        return math.ceil(h / self.stride), math.ceil(w / self.stride)


class WithAux(nn.Module):
    """A net plus a second head on one of its layers, trained beside the class head: more information from the
    same images (the talk's "multiple loss functions" against too little data). ``forward`` returns
    ``(logits, aux)``; the net itself is unchanged, so the trained net is used, probed and logged alone.

    * ``lane_mask``: a 1x1 conv on the last conv layer's map, one logit per cell: "is there lane paint here?"
    * ``distance``: a linear layer on the last hidden layer: the light's distance bucket, or background.
    """

    def __init__(self, net: NamedLayers, target: str, outputs: int = 1):
        super().__init__()
        self.net, self.target = net, target
        if target == "lane_mask":
            self.layer = [n for n in net.layer_names if isinstance(getattr(net, n), nn.Conv2d)][-1]
            self.head = nn.Conv2d(getattr(net, self.layer).out_channels, 1, kernel_size=1)
        elif target == "distance":
            self.layer = net.layer_names[-2]
            hidden = getattr(net, self.layer)
            if not isinstance(hidden, nn.Linear):
                raise ValueError(f"{type(net).__name__} has no hidden linear layer for a distance head")
            self.head = nn.Linear(hidden.out_features, outputs)
        else:
            raise ValueError(f"unknown auxiliary target {target!r}: lane_mask | distance")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        found = self.net.features_at(x, [self.layer, self.net.layer_names[-1]])
        return found[self.net.layer_names[-1]], self.head(found[self.layer])


def aux_loss(target: str, output: Tensor, truth: Tensor) -> Tensor:
    """The second head's loss: per-cell BCE against the share of lane pixels in each cell (masks pooled to the
    head's map), or cross-entropy over distance buckets."""
    if target == "lane_mask":
        cells = F.adaptive_avg_pool2d(truth, output.shape[-2:])
        return F.binary_cross_entropy_with_logits(output, cells)
    return F.cross_entropy(output, truth)


def build_model(task: str, num_classes: Optional[int] = None,
                in_hw: Optional[tuple[int, int]] = None, width: float = 1.0) -> NamedLayers:
    """The net for ``task`` (one of ``TASKS``).

    ``num_classes`` (>= 2) and ``in_hw`` are for the classifiers; ``in_hw=None`` takes the net's
    default. The detector predicts one heat map whatever the input size: it takes
    ``num_classes`` None (or 1) and ignores ``in_hw``. Raises ``ValueError`` on a bad argument.
    """
    net = {cls.__name__: cls for cls in (LaneNet, TLClassifier, TLDetector)}[get_task(task).net]
    if net is TLDetector:
        if num_classes not in (None, 1):
            raise ValueError(f"tl_detector predicts one heat map; got num_classes={num_classes!r}")
        return TLDetector(width=width)
    size = {} if in_hw is None else {"in_hw": tuple(in_hw)}
    return net(num_classes, width=width, **size)
