"""Activation maximization for the pipeline's nets: what input makes a unit, a channel, a layer or a class fire.

In the style of lucent (Olah et al. 2017, "Feature Visualization"), cut to small inputs and to
:class:`pipeline.models.NamedLayers`, in small pieces that compose; pure torch + numpy, nothing is written to disk.

* **Objectives** (:class:`Objective`): a function of the activations ``{layer: tensor}`` returning one value per
  batch element, plus the layer names it reads. ``unit``, ``channel``, ``layer`` (deep dream), ``class_logit``,
  ``heatmap``, ``diversity``; combine with ``+``, ``-``, ``*`` / ``/`` by a number and ``sum``; :func:`batched`
  gives batch element *i* objective *i*, so 64 channels are optimised as one batch of 64.
* **Parameterizations** (:class:`Pixels`, :class:`Fourier`): ``params()`` for the optimiser, ``image()`` the
  normalised input (``pipeline.models.normalize.to_tensor``'s space) of pixels in [0, 1] through a sigmoid, and
  ``set_image(x)`` its inverse (used to start from a real image and by the projections of the loop: blur,
  :func:`clip_small`). ``decorrelated=ColorStats.fit(training images)`` optimises in whitened colour space.
* **Penalties** ``fn(x) -> (B,)`` on the parameter image (:func:`l2`, :func:`total_variation`,
  :func:`center_bias`, :func:`tether`) and **random transforms** ``fn(x, generator) -> x`` applied before the net
  (:func:`jitter`, :func:`scale`, :func:`rotate`, :func:`compose`), with shifts given as fractions of the input
  size so a 32x32 crop and a 128x128 frame get the same relative robustness.
* :func:`optimize`: Adam on the parameterization against the frozen net (optionally on the pre-ReLU values for the
  first steps, so units that are off on the start still rise); :func:`dream`; :func:`filter_grid`.

Every image tensor here is normalised, ``(pixel - MEAN) / STD`` with pixels in [0, 1]: 0 is mid grey.
"""
from __future__ import annotations

import abc

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from pipeline.models.normalize import MEAN, STD, from_tensor, to_tensor

__all__ = [
    "Objective", "unit", "channel", "layer", "class_logit", "heatmap", "diversity", "batched", "head_of",
    "evaluate", "evaluate_pre", "ColorStats", "Pixels", "Fourier", "l2", "total_variation", "center_bias",
    "tether", "blur", "clip_small", "jitter", "scale", "rotate", "compose", "optimize", "dream", "filter_grid",
    "frozen",
]

Acts = dict  # {layer name: activation tensor}
Seed = Union[None, int, torch.Generator]
_EPS = 1e-3          # pixels are kept in [_EPS, 1 - _EPS] when a parameterization is set from an image


def _generator(seed: Seed) -> Optional[torch.Generator]:
    """``None`` (torch's global RNG), an int seed, or a Generator as is."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


# --------------------------------------------------------------------------------------------------- objectives

class Objective:
    """``fn(acts) -> (batch,)`` tensor and the layers it reads; higher is better.

    Objectives add and subtract (with each other or a number), negate, scale by a number and ``sum(...)``;
    the result reads the union of the layers. ``objective(acts)`` is ``objective.fn(acts)``.
    """

    def __init__(self, fn: Callable[[Acts], Tensor], layers: Iterable[str], name: str = "objective"):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, acts: Acts) -> Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other):
        if isinstance(other, Objective):
            return Objective(lambda a: self.fn(a) + other.fn(a), self.layers + other.layers,
                             f"{self.name} + {other.name}")
        if isinstance(other, (int, float)):
            return Objective(lambda a: self.fn(a) + other, self.layers, f"{self.name} + {other}")
        return NotImplemented

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:   # the start of sum([...])
            return self
        return self.__add__(other)

    def __neg__(self):
        return Objective(lambda a: -self.fn(a), self.layers, f"-({self.name})")

    def __sub__(self, other):
        if isinstance(other, (Objective, int, float)):
            return self + (-other)
        return NotImplemented

    def __rsub__(self, other):
        return (-self).__add__(other)

    def __mul__(self, k):
        if isinstance(k, (int, float)):
            return Objective(lambda a: k * self.fn(a), self.layers, f"{k} * ({self.name})")
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, k):
        if isinstance(k, (int, float)):
            return self * (1.0 / k)
        return NotImplemented

    @staticmethod
    def sum(objectives: Iterable["Objective"]) -> "Objective":
        """The sum of ``objectives`` (as the builtin ``sum`` does)."""
        return sum(objectives)


def unit(name: str, n: int, y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    """Unit ``n`` of layer ``name``: for a conv layer its activation at ``(y, x)`` (default: the map's centre),
    for a linear layer the unit itself (``y``, ``x`` must then be None)."""
    def fn(acts):
        a = acts[name]
        if a.dim() == 2:
            if y is not None or x is not None:
                raise ValueError(f"{name} is a linear layer: a unit has no position")
            return a[:, n]
        h, w = a.shape[-2:]
        return a[:, n, h // 2 if y is None else y, w // 2 if x is None else x]
    return Objective(fn, [name], f"unit({name}, {n}, {y}, {x})")


def channel(name: str, n: int) -> Objective:
    """Channel ``n`` of layer ``name``: its spatial mean (a linear layer: unit ``n``)."""
    def fn(acts):
        a = acts[name]
        return a[:, n] if a.dim() == 2 else a[:, n].mean((1, 2))
    return Objective(fn, [name], f"channel({name}, {n})")


def layer(name: str) -> Objective:
    """Deep dream: the mean of the squared activations of the whole layer."""
    return Objective(lambda acts: acts[name].pow(2).flatten(1).mean(1), [name], f"layer({name})")


def class_logit(head: str, n: int) -> Objective:
    """Logit ``n`` of the head layer ``head`` (the net's last layer: :func:`head_of`)."""
    return Objective(lambda acts: acts[head][:, n], [head], f"class_logit({head}, {n})")


def heatmap(head: str, y: int, x: int) -> Objective:
    """The detector's heat-map logit at cell ``(y, x)`` (one cell per 4 x 4 pixels); ``head`` is ``"heatmap"``."""
    return Objective(lambda acts: acts[head][:, 0, y, x], [head], f"heatmap({head}, {y}, {x})")


def diversity(name: str) -> Objective:
    """Minus the mean cosine similarity of an element's Gram matrix (channels x channels, over positions) with
    those of the other elements of the batch (lucent's ``diversity``, Olah et al. 2017), per element: -1 for a
    batch of identical elements, higher as they differ; 0 for a batch of one. Add it, weighted, to an objective
    to get several different images of one feature. A linear layer's "Gram matrix" is the outer product of its
    activations, whose cosine similarity is the squared cosine of the activation vectors."""
    def fn(acts):
        a = acts[name]
        b = a.shape[0]
        if a.dim() == 2:
            v = F.normalize(a, dim=1)
            sim = (v @ v.T) ** 2
        else:
            f = a.flatten(2)
            g = F.normalize((f @ f.transpose(1, 2)).flatten(1), dim=1)
            sim = g @ g.T
        if b < 2:
            return sim.new_zeros(b)
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)
    return Objective(fn, [name], f"diversity({name})")


def batched(objectives: Sequence[Objective]) -> Objective:
    """Batch element ``i`` gets ``objectives[i]`` (so one optimisation of a batch of 64 visualises 64 channels).
    Each objective sees its element alone (a batch of one); the batch size must equal ``len(objectives)``."""
    objectives = list(objectives)

    def fn(acts):
        b = next(iter(acts.values())).shape[0]
        if b != len(objectives):
            raise ValueError(f"batched: {len(objectives)} objectives for a batch of {b}")
        return torch.cat([o.fn({k: v[i:i + 1] for k, v in acts.items()}) for i, o in enumerate(objectives)])
    layers = [n for o in objectives for n in o.layers]
    return Objective(fn, layers, f"batched({', '.join(o.name for o in objectives)})")


def head_of(net) -> str:
    """The net's head: its last named layer (``fc8``, ``fc6`` or ``heatmap``)."""
    return net.layer_names[-1]


def evaluate(net, objective: Objective, x: Tensor) -> Tensor:
    """``objective`` on normalised input ``x``: (batch,). Runs ``net.features_at`` as is (mode, grad)."""
    return objective(net.features_at(x, objective.layers))


def evaluate_pre(net, objective: Objective, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(objective, the same objective on its layers' outputs before their ReLU)`` on ``x``, in one pass: a
    forward hook on a named layer sees its pre-ReLU output (the head has no ReLU: both are its logits)."""
    found: dict = {}
    hooks = [getattr(net, name).register_forward_hook(lambda module, args, out, name=name: found.__setitem__(name, out))
             for name in objective.layers]
    try:
        acts = net.features_at(x, objective.layers)
    finally:
        for hook in hooks:
            hook.remove()
    return objective(acts), objective(found)


# ------------------------------------------------------------------------------------------- parameterizations

class ColorStats:
    """The mean colour and the square root of the RGB covariance of given images (our data, not ImageNet's).

    ``fit`` takes uint8 images (N, H, W, 3); pixels are scaled to [0, 1]. ``sqrt_cov`` is the symmetric square
    root (eigendecomposition) of ``cov`` plus ``ridge`` times the identity (so it is invertible even for nearly
    grey data). As ``decorrelated=`` of a parameterization, a decorrelated value ``z`` (3 per pixel) becomes the
    pixel ``sigmoid(logit(mean) + J^-1 sqrt_cov z)`` with ``J = diag(mean (1 - mean))`` the sigmoid's slope at the
    mean: ``z = 0`` is the mean colour and unit-normal ``z`` has RGB covariance ``cov`` to first order (the
    sigmoid keeps pixels in [0, 1], compressing only the tails).
    """

    def __init__(self, mean: np.ndarray, cov: np.ndarray, ridge: float = 1e-5):
        self.mean = np.asarray(mean, np.float64).reshape(3)
        self.cov = np.asarray(cov, np.float64).reshape(3, 3)
        w, v = np.linalg.eigh(self.cov + ridge * np.eye(3))
        self.sqrt_cov = (v * np.sqrt(np.clip(w, ridge, None))) @ v.T
        m = np.clip(self.mean, 0.01, 0.99)
        self._offset = np.log(m / (1 - m))                                   # logit of the mean
        self._matrix = self.sqrt_cov / (m * (1 - m))[:, None]                 # J^-1 sqrt_cov
        self._cache: dict = {}

    @classmethod
    def fit(cls, images: np.ndarray, ridge: float = 1e-5, chunk: int = 1 << 20) -> "ColorStats":
        """Mean and covariance of every pixel of ``images`` (uint8, (..., 3)), accumulated in float64 chunks."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[-1] != 3:
            raise ValueError(f"ColorStats.fit takes uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        px = images.reshape(-1, 3)
        n, s, ss = len(px), np.zeros(3), np.zeros((3, 3))
        if n < 2:
            raise ValueError("ColorStats.fit needs at least two pixels")
        for i in range(0, n, chunk):
            p = px[i:i + chunk].astype(np.float64) / 255.0
            s += p.sum(0)
            ss += p.T @ p
        mean = s / n
        cov = (ss - n * np.outer(mean, mean)) / (n - 1)
        return cls(mean, cov, ridge)

    def _tensors(self, device) -> tuple[Tensor, Tensor, Tensor]:
        key = str(device)
        if key not in self._cache:
            t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
            self._cache[key] = (t(self._offset).view(1, 3, 1, 1), t(self._matrix), t(np.linalg.inv(self._matrix)))
        return self._cache[key]

    def to_logits(self, z: Tensor) -> Tensor:
        """Decorrelated (B, 3, H, W) -> pre-sigmoid pixel logits (B, 3, H, W)."""
        offset, m, _ = self._tensors(z.device)
        return torch.einsum("ij,bjhw->bihw", m, z) + offset

    def from_logits(self, u: Tensor) -> Tensor:
        """The inverse of :meth:`to_logits`."""
        offset, _, m_inv = self._tensors(u.device)
        return torch.einsum("ij,bjhw->bihw", m_inv, u - offset)


def _normalised(image) -> Tensor:
    """uint8 (H, W, 3) / (N, H, W, 3) array or tensor -> normalised (N, 3, H, W); a float tensor is taken as
    already normalised, (3, H, W) or (N, 3, H, W)."""
    if isinstance(image, Tensor) and image.dtype != torch.uint8:
        x = image.detach().float()
        return x.unsqueeze(0) if x.dim() == 3 else x
    a = image.cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.dtype != np.uint8 or a.shape[-1] != 3 or a.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images (H, W, 3) or (N, H, W, 3), got {a.dtype} {a.shape}")
    return to_tensor(a[None] if a.ndim == 3 else a)


def _hw(hw) -> tuple[int, int]:
    return (int(hw), int(hw)) if isinstance(hw, (int, np.integer)) else (int(hw[0]), int(hw[1]))


class _Parameterization(abc.ABC):
    """A batch of images as a function of free parameters: pixel logits (or decorrelated colours) -> sigmoid."""

    def __init__(self, batch: int, hw, decorrelated: Optional[ColorStats], device):
        self.batch, self.hw = int(batch), _hw(hw)
        self.colors = decorrelated
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @abc.abstractmethod
    def params(self) -> list[Tensor]:
        """The free parameters the optimiser updates."""

    @abc.abstractmethod
    def _field(self) -> Tensor:
        """The (B, 3, H, W) pre-colour field: logits, or decorrelated colours."""

    @abc.abstractmethod
    def _set_field(self, z: Tensor) -> None:
        """Set the parameters so that :meth:`_field` returns ``z``."""

    def image(self) -> Tensor:
        """The normalised input (B, 3, H, W), differentiable in :meth:`params`."""
        z = self._field()
        u = self.colors.to_logits(z) if self.colors is not None else z
        return (torch.sigmoid(u) - MEAN) / STD

    @torch.no_grad()
    def set_image(self, x: Tensor) -> None:
        """Set the parameters so that :meth:`image` is ``x`` (normalised; pixels clamped to [1e-3, 1 - 1e-3])."""
        x = _normalised(x).to(self.device)
        if x.shape[0] == 1 and self.batch > 1:
            x = x.expand(self.batch, -1, -1, -1)
        if x.shape != (self.batch, 3, *self.hw):
            raise ValueError(f"set_image: got {tuple(x.shape)}, expected {(self.batch, 3, *self.hw)}")
        u = torch.logit((x * STD + MEAN).clamp(_EPS, 1 - _EPS))
        self._set_field(self.colors.from_logits(u) if self.colors is not None else u)

    @classmethod
    def from_image(cls, image, decorrelated: Optional[ColorStats] = None, device=None, **kw):
        """Start from a real image (deep dream, multifaceted starts): uint8 (H, W, 3) or (N, H, W, 3) array or
        tensor, or a normalised float tensor (N, 3, H, W)."""
        x = _normalised(image)
        p = cls(x.shape[0], tuple(x.shape[-2:]), decorrelated=decorrelated, device=device, std=0.0, **kw)
        p.set_image(x)
        return p


class Pixels(_Parameterization):
    """One free value per pixel and channel, through a sigmoid (and the colour map of ``decorrelated``).

    Initialised as ``std`` x unit-normal noise from ``seed`` (an int or a torch Generator): a near-grey image
    (near the mean colour with ``decorrelated``); ``std=1`` draws images with the fitted colour statistics.
    """

    def __init__(self, batch: int, hw, decorrelated: Optional[ColorStats] = None, std: float = 0.01,
                 seed: Seed = 0, device=None):
        super().__init__(batch, hw, decorrelated, device)
        z = torch.randn(self.batch, 3, *self.hw, generator=_generator(seed)) * std
        self.z = z.to(self.device).requires_grad_(True)

    def params(self) -> list[Tensor]:
        return [self.z]

    def _field(self) -> Tensor:
        return self.z

    def _set_field(self, z: Tensor) -> None:
        self.z.data.copy_(z)


class Fourier(_Parameterization):
    """The image's FFT coefficients scaled by ``1 / frequency ** decay`` (lucent's ``fft_image``), then the colour
    map and the sigmoid: steps in parameter space move low frequencies most, so images are smoother.

    Frequencies are in cycles per pixel, floored at ``1 / max(H, W)``. The scale is normalised so unit-normal
    parameters give a field of unit variance at every pixel (like :class:`Pixels` with ``std=1``, but spatially
    correlated, pink noise). Initialisation: ``std`` x unit-normal coefficients from ``seed``.
    """

    def __init__(self, batch: int, hw, decorrelated: Optional[ColorStats] = None, std: float = 0.01,
                 decay: float = 1.0, seed: Seed = 0, device=None):
        super().__init__(batch, hw, decorrelated, device)
        h, w = self.hw
        f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2).sqrt()
        s = 1.0 / f.clamp(min=1.0 / max(h, w)) ** decay
        with torch.enable_grad():                                         # the field's variance at a pixel is
            probe = torch.zeros(1, 1, h, w // 2 + 1, 2, requires_grad=True)
            torch.fft.irfft2(torch.view_as_complex(probe) * s, s=(h, w), norm="ortho")[0, 0, 0, 0].backward()
        self.scale = (s / probe.grad.pow(2).sum().sqrt()).to(self.device)  # the same at every pixel
        spec = torch.randn(self.batch, 3, h, w // 2 + 1, 2, generator=_generator(seed)) * std
        self.spectrum = spec.to(self.device).requires_grad_(True)

    def params(self) -> list[Tensor]:
        return [self.spectrum]

    def _field(self) -> Tensor:
        return torch.fft.irfft2(torch.view_as_complex(self.spectrum) * self.scale, s=self.hw, norm="ortho")

    def _set_field(self, z: Tensor) -> None:
        self.spectrum.data.copy_(torch.view_as_real(torch.fft.rfft2(z, norm="ortho") / self.scale))


# ------------------------------------------------------------------------------- penalties and projections

def l2(x: Tensor) -> Tensor:
    """Decay: the mean squared normalised pixel, per element (pulls towards mid grey)."""
    return x.pow(2).flatten(1).mean(1)


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of vertically and of horizontally adjacent pixels (anisotropic TV), per element."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


def center_bias(x: Tensor, power: float = 2.0) -> Tensor:
    """A penalty on content away from the centre: the mean over pixels of ``r ** power`` times the pixel's
    squared norm (deviation from grey), ``r`` the distance from the centre (0) to a corner (1). Weighted into
    the objective, features are drawn near the centre and the border fades to grey. (A penalty, not a mask, so it
    composes with the other penalties and leaves the transforms free.)"""
    h, w = x.shape[-2:]
    yy = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h * 2 - 1
    xx = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w * 2 - 1
    r = ((yy[:, None] ** 2 + xx[None, :] ** 2) / 2).sqrt()
    return (r ** power * x.pow(2).sum(1)).flatten(1).mean(1)


def tether(x0: Tensor) -> Callable[[Tensor], Tensor]:
    """A penalty: the mean squared distance to the normalised image ``x0`` (deep dream's leash)."""
    x0 = x0.detach()
    return lambda x: (x - x0.to(x.device)).pow(2).flatten(1).mean(1)


def _gaussian_kernel(sigma: float, device, dtype) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of standard deviation ``sigma`` pixels (edges replicated); ``sigma <= 0``: ``x``."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x.device, x.dtype)
    r, c = len(k) // 2, x.shape[1]
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


def clip_small(x: Tensor, norm_pct: float, contrib_pct: float = 0.0, grad: Optional[Tensor] = None) -> Tensor:
    """Yosinski et al. 2015: set to zero (grey) the pixels whose norm over the channels is at most the
    ``norm_pct`` percentile of the element's pixels, and those whose contribution ``|sum_c x_c grad_c|`` (the
    first-order change of the objective were the pixel grey; ``grad`` the objective's gradient at ``x``) is at
    most the ``contrib_pct`` percentile. Percentiles in [0, 100]; 0 turns a criterion off. (At most: pixels
    tied at the percentile go too, so pixels that contribute nothing are cleared even when they are many.)"""
    keep = torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool, device=x.device)

    def above(v, pct):
        q = torch.quantile(v.flatten(1), pct / 100.0, dim=1).view(-1, 1, 1)
        return v > q
    if norm_pct > 0:
        keep &= above(x.norm(dim=1), norm_pct)
    if contrib_pct > 0:
        if grad is None:
            raise ValueError("clip_small: contrib_pct needs the objective's gradient")
        keep &= above((x * grad).sum(1).abs(), contrib_pct)
    return x * keep.unsqueeze(1)


# ------------------------------------------------------------------------------------------ random transforms

Transform = Callable[[Tensor, Optional[torch.Generator]], Tensor]


def _uniform(n: int, lo: float, hi: float, generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample ``x`` with per-element affine maps (output -> input, normalised coordinates); outside is grey."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter(frac: float) -> Transform:
    """Shift each element by up to ``frac`` of the input's height and width (uniform, sub-pixel), so inputs of
    every size get the same relative shift; uncovered border pixels are grey."""
    def fn(x, generator=None):
        b = x.shape[0]
        dx, dy = _uniform(b, -frac, frac, generator), _uniform(b, -frac, frac, generator)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2], theta[:, 1, 2] = 2 * dx, 2 * dy       # normalised coordinates span 2
        return _affine(x, theta)
    return fn


def scale(range: tuple[float, float]) -> Transform:  # noqa: A002 - the brief's name
    """Zoom each element by a factor uniform in ``range`` (e.g. ``(0.9, 1.1)``) about the centre."""
    lo, hi = range

    def fn(x, generator=None):
        s = _uniform(x.shape[0], lo, hi, generator)
        theta = torch.zeros(x.shape[0], 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s
        return _affine(x, theta)
    return fn


def rotate(degrees: float) -> Transform:
    """Rotate each element by an angle uniform in ``[-degrees, degrees]`` about the centre (in pixels, also for
    non-square inputs)."""
    def fn(x, generator=None):
        h, w = x.shape[-2:]
        a = torch.deg2rad(_uniform(x.shape[0], -degrees, degrees, generator))
        c, s = a.cos(), a.sin()
        theta = torch.zeros(x.shape[0], 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = c, -s * h / w
        theta[:, 1, 0], theta[:, 1, 1] = s * w / h, c
        return _affine(x, theta)
    return fn


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order, all drawing from the one generator."""
    transforms = list(transforms)

    def fn(x, generator=None):
        for t in transforms:
            x = t(x, generator)
        return x
    return fn


# ------------------------------------------------------------------------------------------------------ loop

@contextmanager
def frozen(net) -> Iterator:
    """``net`` in eval mode with no gradient on its weights, restored on exit."""
    training = net.training
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        net.train(training)


Penalty = Callable[[Tensor], Tensor]
Projection = Callable[[Tensor, Tensor], Tensor]


def optimize(net, objective: Objective, param: _Parameterization, steps: int, lr: float = 0.05,
             transforms: Union[Transform, Sequence[Transform]] = (),
             penalties: Sequence[tuple[float, Penalty]] = (), blur_every: int = 0, blur_sigma: float = 0.5,
             generator: Seed = None, projections: Sequence[tuple[int, Projection]] = (), pre_steps: int = 0,
             pre_while_off: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Maximize ``objective`` over ``param`` with Adam; returns (uint8 images (B, H, W, 3), history (steps, B)).

    Each step: ``x = param.image()``; the net (eval mode, weights frozen) sees ``transforms(x, generator)``;
    the maximised quantity is ``objective - sum(weight * penalty(x))`` summed over the batch. ``history[t]`` is
    the objective (without penalties) at step ``t`` before its update, on that step's transformed input.
    For the first ``pre_steps`` steps the maximised objective reads its layers before their ReLU
    (:func:`evaluate_pre`; Lucid redirects the ReLU's gradient for its first steps to the same end): a unit that
    is off everywhere on the near-grey start has zero activation and zero gradient, and would never rise; its
    pre-activation does. With ``pre_while_off``, after those steps an element whose objective is still 0 (every
    position of its channel off) keeps climbing its pre-activation until it turns on, instead of falling back to a
    zero gradient that leaves the regularisers to pull it to grey. ``history`` is always the objective itself,
    after the ReLU.
    After the update, every ``blur_every`` steps the parameter image is replaced by ``blur(x, blur_sigma)``, and
    every ``every`` steps by ``fn(x, grad)`` for each ``(every, fn)`` of ``projections`` (``grad``: the
    gradient of the maximised quantity at ``x`` of that step), e.g.
    ``(1, lambda x, g: clip_small(x, 10, 10, g))``. Runs with gradients on even inside ``torch.no_grad()``.
    """
    transform = transforms if callable(transforms) else compose(transforms)
    generator = _generator(generator)
    projections = list(projections) + ([(blur_every, lambda x, g: blur(x, blur_sigma))] if blur_every else [])
    opt = torch.optim.Adam(param.params(), lr=lr)
    history = []
    with frozen(net), torch.enable_grad():
        for step in range(steps):
            x = param.image()
            x.retain_grad()
            seen = transform(x, generator)
            if step < pre_steps:
                value, total = evaluate_pre(net, objective, seen)
            elif pre_while_off:
                value, pre = evaluate_pre(net, objective, seen)
                total = torch.where(value > 0, value, pre)      # still off: keep climbing its pre-activation
            else:
                value = total = evaluate(net, objective, seen)
            if value.shape != (x.shape[0],):
                raise ValueError(f"{objective} gave shape {tuple(value.shape)}, expected ({x.shape[0]},)")
            for weight, penalty in penalties:
                total = total - weight * penalty(x)
            opt.zero_grad()
            (-total.sum()).backward()
            opt.step()
            history.append(value.detach().cpu())
            due = [fn for every, fn in projections if every and (step + 1) % every == 0]
            if due:
                with torch.no_grad():
                    y, g = param.image(), -x.grad
                    for fn in due:
                        y = fn(y, g)
                    param.set_image(y)
        with torch.no_grad():
            images = from_tensor(param.image())
    hist = torch.stack(history).numpy() if history else np.zeros((0, param.batch), np.float32)
    return images, hist


def dream(net, image, name: str, steps: int = 20, lr: float = 0.02, tether_weight: float = 0.1,
          transforms: Union[Transform, Sequence[Transform]] = (), decorrelated: Optional[ColorStats] = None,
          generator: Seed = None) -> tuple[np.ndarray, np.ndarray]:
    """Deep dream: from the real ``image`` (uint8 (H, W, 3) or (N, H, W, 3)), maximize ``layer(name)`` with a
    small L2 tether (``tether_weight``) to the start image. Returns (the dreamed image(s), of ``image``'s rank,
    history (steps, N))."""
    param = Pixels.from_image(image, decorrelated=decorrelated)
    x0 = param.image().detach()
    images, history = optimize(net, layer(name), param, steps, lr, transforms=transforms,
                               penalties=((tether_weight, tether(x0)),), generator=generator)
    single = (image.dim() if isinstance(image, Tensor) else np.ndim(image)) == 3
    return (images[0] if single else images), history


# ------------------------------------------------------------------------------------------- first-layer view

def filter_grid(net, name: Optional[str] = None, pad: int = 1, background: int = 255) -> np.ndarray:
    """The first conv layer's filters (or layer ``name``'s, which must read RGB) as one uint8 RGB image: each
    filter min-max normalised on its own, tiled ``ceil(sqrt(C))`` to a row with ``pad`` pixels of
    ``background`` between and around the tiles. Shape ``(rows * (k + pad) + pad, cols * (k + pad) + pad, 3)``."""
    w = getattr(net, name or net.layer_names[0]).weight.detach().cpu().double().numpy()
    if w.ndim != 4 or w.shape[1] != 3:
        raise ValueError(f"filter_grid needs a conv layer reading RGB, got weights {w.shape}")
    c, _, kh, kw = w.shape
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    grid = np.full((rows * (kh + pad) + pad, cols * (kw + pad) + pad, 3), background, np.uint8)
    for i, f in enumerate(w):
        lo, hi = f.min(), f.max()
        t = (f - lo) / (hi - lo) if hi > lo else np.full_like(f, 0.5)
        r, q = divmod(i, cols)
        y, x = pad + r * (kh + pad), pad + q * (kw + pad)
        grid[y:y + kh, x:x + kw] = np.round(t.transpose(1, 2, 0) * 255).astype(np.uint8)
    return grid
