"""Augmentation ops: pure functions ``op(sample, rng, **params) -> (new_sample, drawn)``.

Every op takes a :class:`Sample` and a ``numpy.random.Generator``, draws its parameters from the given
ranges, and returns a new sample plus the parameters it actually drew (a JSON-serialisable dict). The
input sample is never modified; fields an op does not change are shared with the output (treat samples
as immutable).

Parameters are *ranges*: ``[lo, hi]`` (a value is drawn uniformly from it) or a single number (used as
is). A parameter left out uses the default range of the op's :class:`Param` in :data:`OPS`, the single
registry of ops, their parameter names, default ranges and allowed domains.

Conventions:

* images are uint8 HxWx3 RGB; boxes are float32 ``(N, 4)`` ``x0, y0, x1, y1`` in pixel-edge coordinates
  (pixel ``i`` spans ``[i, i + 1)``, so ``x1`` is exclusive), one label per box;
* ``mask`` (e.g. a lane mask) and ``instance_mask`` (``k + 1`` on the visible pixels of box ``k``) are
  HxW uint8 and move with the image (nearest-neighbour resampling);
* geometric ops fill uncovered pixels with black and clip boxes to the image; a box narrower or lower
  than :data:`MIN_BOX_PX` afterwards is dropped together with its label and its instance id (the
  remaining ids are renumbered ``1..M`` in box order);
* occlusion ops clear ``mask`` and ``instance_mask`` under what they draw (those mark *visible* pixels)
  and keep the boxes (boxes are amodal).
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import cv2
import numpy as np
import scipy.fft
import scipy.special
from scipy import ndimage

from pipeline.data.regions import grown, object_region
from pipeline.vocab import LANE_CLASSES, TL_STATES

MIN_BOX_PX = 1.0

# Labels whose meaning changes under a left-right mirror, both ways: a traffic-light arrow "<state>_left"
# becomes "<state>_right". The synthetic lane classes name their lines from the outside of the road in
# ("solid_dashed_yellow": a solid outer line, a dashed line next to the ego lane), which a mirror keeps: the
# line nearest the car is still dashed, so passing is still allowed; they all map to themselves. A label set
# that names sides (say "left_solid_right_dashed") adds its pairs here. Labels not in the table stay as
# they are. The table is an involution: flipping twice is the identity.
_MIRRORED = tuple((f"{state}_left", f"{state}_right") for state in TL_STATES)
FLIP_LABELS: dict[str, str] = {
    **{name: name for name in (*TL_STATES, "background", *LANE_CLASSES)},
    **{a: b for a, b in _MIRRORED},
    **{b: a for a, b in _MIRRORED},
}


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class Sample:
    """One image and everything that must move with it. Validated on construction (ValueError)."""

    image: np.ndarray                            # uint8 (H, W, 3) RGB
    boxes: np.ndarray = field(default_factory=_empty_boxes)   # float32 (N, 4) x0, y0, x1, y1; x1, y1 exclusive
    labels: list = field(default_factory=list)   # N box labels, e.g. TL states ("red", "red_left")
    mask: Optional[np.ndarray] = None            # uint8 (H, W), e.g. the lane mask (non-zero = object)
    instance_mask: Optional[np.ndarray] = None   # uint8 (H, W), k + 1 on the visible pixels of box k
    label: Optional[str] = None                  # image-level class, e.g. a lane class

    def __post_init__(self):
        image = self.image
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError(f"Sample.image must be a uint8 (H, W, 3) array, got {_describe(image)}")
        boxes = np.asarray(self.boxes, np.float32)
        boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"Sample.boxes must have shape (N, 4), got {boxes.shape}")
        if len(self.labels) != len(boxes):
            raise ValueError(f"Sample.labels has {len(self.labels)} entries for {len(boxes)} boxes")
        for name in ("mask", "instance_mask"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, np.ndarray) and value.dtype == np.uint8
                                          and value.shape == image.shape[:2]):
                raise ValueError(f"Sample.{name} must be a uint8 {image.shape[:2]} array, got {_describe(value)}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", list(self.labels))


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class Param:
    """A drawn parameter: its default range, the domain every range must lie in, and whether it is an int."""

    default: tuple
    domain: tuple
    integer: bool = False

    def check(self, name: str, value) -> tuple:
        """``value`` (a number or a ``[lo, hi]`` pair) as a validated ``(lo, hi)``; ValueError says what is wrong."""
        pair = value if isinstance(value, (list, tuple)) else (value, value)
        kind = numbers.Integral if self.integer else numbers.Real
        if len(pair) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool) for v in pair):
            what = "an integer" if self.integer else "a number"
            raise ValueError(f"parameter {name!r}={value!r} must be {what} or a [lo, hi] pair of them")
        lo, hi = pair
        if lo > hi:
            raise ValueError(f"parameter {name!r} range [{lo}, {hi}] is inverted (lo > hi)")
        if lo < self.domain[0] or hi > self.domain[1]:
            raise ValueError(f"parameter {name!r} range [{lo}, {hi}] is outside the allowed domain "
                             f"[{self.domain[0]}, {self.domain[1]}]")
        return (int(lo), int(hi)) if self.integer else (float(lo), float(hi))


@dataclass(frozen=True)
class OpSpec:
    """A registered op: ``kind`` (geometric, photometric, noise, frequency, occlusion, context), the
    function and its parameters. Calling it validates the ranges (defaults fill the gaps) and runs the op;
    ops with ``takes_background`` also accept ``background=<HxWx3 uint8 array or None>``."""

    name: str
    kind: str
    fn: Callable
    params: dict
    takes_background: bool = False

    def resolve(self, given: dict) -> dict:
        """The full ``{name: (lo, hi)}`` of this op: ``given`` validated, defaults for the rest."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} for {self.name} "
                             f"(valid: {', '.join(self.params) or 'none'})")
        return {name: param.check(name, given.get(name, param.default)) for name, param in self.params.items()}

    def __call__(self, sample: Sample, rng: np.random.Generator, **params) -> tuple[Sample, dict]:
        extra = {"background": params.pop("background", None)} if self.takes_background else {}
        return self.fn(sample, rng, **self.resolve(params), **extra)


OPS: dict[str, OpSpec] = {}


def _register(kind: str, takes_background: bool = False, **params: Param):
    """Add the decorated function to :data:`OPS`; the module-level name becomes the validating op."""
    def wrap(fn):
        spec = OpSpec(fn.__name__, kind, fn, params, takes_background)
        OPS[spec.name] = spec

        @functools.wraps(fn)
        def op(sample: Sample, rng: np.random.Generator, **given) -> tuple[Sample, dict]:
            return spec(sample, rng, **given)
        return op
    return wrap


def _uniform(rng: np.random.Generator, bounds: tuple) -> float:
    return float(rng.uniform(*bounds))


def _integer(rng: np.random.Generator, bounds: tuple) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round and saturate a float array to uint8."""
    clipped = np.clip(values, 0, 255)
    return np.rint(clipped, out=clipped).astype(np.uint8)


# ---------------------------------------------------------------------------------------- geometric

@_register("geometric")
def hflip(sample: Sample, rng: np.random.Generator) -> tuple[Sample, dict]:
    """Mirror left-right; box labels and the image label are renamed through :data:`FLIP_LABELS`."""
    width = sample.image.shape[1]
    boxes = sample.boxes[:, [2, 1, 0, 3]]
    boxes[:, [0, 2]] = width - boxes[:, [0, 2]]
    flipped = replace(
        sample, image=cv2.flip(sample.image, 1), boxes=boxes,
        labels=[FLIP_LABELS.get(name, name) for name in sample.labels],
        mask=None if sample.mask is None else cv2.flip(sample.mask, 1),
        instance_mask=None if sample.instance_mask is None else cv2.flip(sample.instance_mask, 1),
        label=None if sample.label is None else FLIP_LABELS.get(sample.label, sample.label))
    return flipped, {}


@_register("geometric", scale=Param((0.6, 1.0), (0.05, 1.0)))
def crop_rescale(sample: Sample, rng: np.random.Generator, scale) -> tuple[Sample, dict]:
    """Crop a random window of ``scale`` x the image's width and height and resize it back to full size
    (bilinear; masks nearest-neighbour, pixel-centre aligned). Boxes are scaled and clipped to the window
    (they stay amodal)."""
    height, width = sample.image.shape[:2]
    s = _uniform(rng, scale)
    crop_w, crop_h = max(1, round(width * s)), max(1, round(height * s))
    x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    window = (slice(y0, y0 + crop_h), slice(x0, x0 + crop_w))

    def resize(array, interpolation):
        return None if array is None else cv2.resize(array[window], (width, height), interpolation=interpolation)

    sx, sy = width / crop_w, height / crop_h
    matrix = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]])
    cropped = replace(sample, image=resize(sample.image, cv2.INTER_LINEAR),
                      mask=resize(sample.mask, cv2.INTER_NEAREST_EXACT),
                      instance_mask=resize(sample.instance_mask, cv2.INTER_NEAREST_EXACT))
    drawn = {"scale": s, "x": x0, "y": y0, "width": crop_w, "height": crop_h}
    return _keep_boxes(cropped, _transform_boxes(sample.boxes, matrix)), drawn


@_register("geometric", angle=Param((-8.0, 8.0), (-45.0, 45.0)))
def rotate(sample: Sample, rng: np.random.Generator, angle) -> tuple[Sample, dict]:
    """Rotate by ``angle`` degrees (counter-clockwise) about the image centre. A box becomes the bounding
    box of its rotated instance pixels when ``instance_mask`` has any, else of its rotated corners."""
    height, width = sample.image.shape[:2]
    a = _uniform(rng, angle)
    matrix = np.vstack([cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), a, 1.0), (0.0, 0.0, 1.0)])
    return _warp(sample, matrix), {"angle": a}


@_register("geometric", distortion=Param((0.0, 0.05), (0.0, 0.25)))
def perspective(sample: Sample, rng: np.random.Generator, distortion) -> tuple[Sample, dict]:
    """Move each image corner by up to ``distortion`` x the image size (``shifts``: px per corner, clockwise
    from top-left) and warp accordingly; boxes follow the rule of :func:`rotate`."""
    height, width = sample.image.shape[:2]
    d = _uniform(rng, distortion)
    shifts = rng.uniform(-d, d, (4, 2)) * (width, height)
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), (corners + shifts).astype(np.float32))
    return _warp(sample, matrix), {"distortion": d, "shifts": shifts.tolist()}


def _warp(sample: Sample, matrix: np.ndarray) -> Sample:
    """Apply the 3x3 ``matrix`` (pixel-centre coordinates, as OpenCV) to the image, masks and boxes (see
    :func:`rotate` for the boxes); what comes from outside the image is black (masks: 0)."""
    instances = _warp_array(sample.instance_mask, matrix, cv2.INTER_NEAREST)
    boxes = _transform_boxes(sample.boxes, matrix)
    if instances is not None:
        boxes = _instance_boxes(sample.instance_mask, instances, boxes)
    warped = replace(sample, image=_warp_array(sample.image, matrix, cv2.INTER_LINEAR),
                     mask=_warp_array(sample.mask, matrix, cv2.INTER_NEAREST), instance_mask=instances)
    return _keep_boxes(warped, boxes)


def _warp_array(array: Optional[np.ndarray], matrix: np.ndarray, interpolation: int) -> Optional[np.ndarray]:
    if array is None:
        return None
    size = (array.shape[1], array.shape[0])
    if matrix[2, 0] == 0 and matrix[2, 1] == 0 and matrix[2, 2] == 1:
        return cv2.warpAffine(array, matrix[:2], size, flags=interpolation, borderMode=cv2.BORDER_CONSTANT)
    return cv2.warpPerspective(array, matrix, size, flags=interpolation, borderMode=cv2.BORDER_CONSTANT)


def _transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The bounding boxes of the transformed box corners (float64, unclipped)."""
    x0, y0, x1, y1 = boxes.astype(np.float64).T
    corners = np.stack([np.stack(c, -1) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], 1)   # (N, 4, 2)
    points = np.concatenate([corners - 0.5, np.ones(corners.shape[:2] + (1,))], -1) @ matrix.T  # edge -> centre
    xy = points[..., :2] / points[..., 2:] + 0.5
    return np.concatenate([xy.min(1), xy.max(1)], 1).reshape(-1, 4)


def _instance_boxes(before: np.ndarray, after: np.ndarray, corner_boxes: np.ndarray) -> np.ndarray:
    """Box k = the bounding box of instance k + 1 in ``after`` if it had pixels in ``before`` (NaN, i.e.
    dropped, if none are left); boxes without instance pixels keep ``corner_boxes``."""
    count = len(corner_boxes)
    boxes = corner_boxes.copy()
    if not count:                      # find_objects reads max_label=0 as "every label"
        return boxes
    for k, (had, now) in enumerate(zip(ndimage.find_objects(before, count), ndimage.find_objects(after, count))):
        if had is not None:
            boxes[k] = (now[1].start, now[0].start, now[1].stop, now[0].stop) if now is not None else np.nan
    return boxes


def _keep_boxes(sample: Sample, boxes: np.ndarray) -> Sample:
    """Clip ``boxes`` to the image, drop those under MIN_BOX_PX (or NaN) with their labels and instance ids."""
    height, width = sample.image.shape[:2]
    boxes = np.clip(boxes, 0, (width, height, width, height))
    keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_PX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_PX)
    instances = sample.instance_mask
    if instances is not None and not keep.all():
        lut = np.zeros(256, np.uint8)
        kept_ids = np.flatnonzero(keep[:255]) + 1
        lut[kept_ids] = np.arange(1, len(kept_ids) + 1)
        instances = cv2.LUT(instances, lut)
    return replace(sample, boxes=boxes[keep].astype(np.float32), instance_mask=instances,
                   labels=[name for name, k in zip(sample.labels, keep) if k])


# -------------------------------------------------------------------------------------- photometric

def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map every value ``v`` of ``image`` to ``table[v]`` (256 floats, rounded and saturated)."""
    return cv2.LUT(image, _to_uint8(table))


_LEVELS = np.arange(256, dtype=np.float64)


@_register("photometric", factor=Param((0.7, 1.3), (0.0, 4.0)))
def brightness(sample: Sample, rng: np.random.Generator, factor) -> tuple[Sample, dict]:
    """Multiply every value by ``factor``."""
    f = _uniform(rng, factor)
    return replace(sample, image=_lut(sample.image, _LEVELS * f)), {"factor": f}


@_register("photometric", factor=Param((0.7, 1.3), (0.0, 4.0)))
def contrast(sample: Sample, rng: np.random.Generator, factor) -> tuple[Sample, dict]:
    """Scale the distance of every value from the image's mean grey level by ``factor``."""
    f = _uniform(rng, factor)
    r, g, b, _ = cv2.mean(sample.image)
    grey = 0.299 * r + 0.587 * g + 0.114 * b
    return replace(sample, image=_lut(sample.image, grey + (_LEVELS - grey) * f)), {"factor": f}


@_register("photometric", factor=Param((0.6, 1.4), (0.0, 4.0)))
def saturation(sample: Sample, rng: np.random.Generator, factor) -> tuple[Sample, dict]:
    """Blend each pixel with its grey value: 0 = greyscale, 1 = unchanged, > 1 = more colourful."""
    f = _uniform(rng, factor)
    grey = cv2.cvtColor(cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return replace(sample, image=cv2.addWeighted(sample.image, f, grey, 1.0 - f, 0.0)), {"factor": f}


@_register("photometric", shift=Param((-10.0, 10.0), (-180.0, 180.0)))
def hue(sample: Sample, rng: np.random.Generator, shift) -> tuple[Sample, dict]:
    """Rotate the hue by ``shift`` degrees (8-bit HSV: applied in steps of 2 degrees)."""
    s = _uniform(rng, shift)
    hsv = cv2.cvtColor(sample.image, cv2.COLOR_RGB2HSV)               # hue in [0, 180)
    hue_table = (np.arange(256) + round(s / 2)) % 180
    table = np.stack([hue_table, np.arange(256), np.arange(256)], -1).astype(np.uint8).reshape(1, 256, 3)
    return replace(sample, image=cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2RGB)), {"shift": s}


@_register("photometric", gamma=Param((0.7, 1.5), (0.1, 5.0)))
def gamma(sample: Sample, rng: np.random.Generator, gamma) -> tuple[Sample, dict]:
    """``255 * (v / 255) ** gamma``: > 1 darkens the mid-tones, < 1 brightens them."""
    g = _uniform(rng, gamma)
    return replace(sample, image=_lut(sample.image, 255.0 * (_LEVELS / 255.0) ** g)), {"gamma": g}


@_register("photometric", sigma=Param((0.3, 1.5), (0.1, 10.0)))
def blur(sample: Sample, rng: np.random.Generator, sigma) -> tuple[Sample, dict]:
    """Gaussian blur with standard deviation ``sigma`` px."""
    s = _uniform(rng, sigma)
    return replace(sample, image=cv2.GaussianBlur(sample.image, (0, 0), s)), {"sigma": s}


@_register("photometric", quality=Param((40, 95), (1, 100), integer=True))
def jpeg(sample: Sample, rng: np.random.Generator, quality) -> tuple[Sample, dict]:
    """Re-compress as JPEG at ``quality`` (1-100) and decode again."""
    q = _integer(rng, quality)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, q))
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return replace(sample, image=image), {"quality": q}


# -------------------------------------------------------------------------------------------- noise
# Per-pixel noise by inverse-CDF lookup: output = table[value, u] with u a uniform random byte, where row
# ``value`` of the (256, 256) table holds the 256 equiprobable quantiles of the noisy value's distribution.
# This samples that distribution exactly up to the 1/256 quantile grid (tails beyond it are cut), needs
# one random byte per value, and is ~5x (normal) to ~25x (Poisson) faster than numpy's samplers.

_QUANTILES = (np.arange(256) + 0.5) / 256


def _table_noise(image: np.ndarray, rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
    """``table[v, u]`` (a (256, 256) float table, rounded and saturated) for every value v, u uniform."""
    u = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    index = image.astype(np.uint16)
    index <<= 8
    index |= u
    return _to_uint8(table).ravel()[index]


@_register("noise", sigma=Param((2.0, 10.0), (0.0, 100.0)))
def gaussian_noise(sample: Sample, rng: np.random.Generator, sigma) -> tuple[Sample, dict]:
    """Add zero-mean Gaussian noise of standard deviation ``sigma`` (in 0-255 units) to every value."""
    s = _uniform(rng, sigma)
    table = _LEVELS[:, None] + s * scipy.special.ndtri(_QUANTILES)[None, :]
    return replace(sample, image=_table_noise(sample.image, rng, table)), {"sigma": s}


@_register("noise", photons=Param((20.0, 200.0), (1.0, 1000.0)))
def shot_noise(sample: Sample, rng: np.random.Generator, photons) -> tuple[Sample, dict]:
    """Sensor shot noise: value v becomes Poisson(v / 255 * photons) / photons * 255, ``photons`` being
    the mean photon count of a white pixel (fewer photons = noisier, darker pixels relatively noisier)."""
    n = _uniform(rng, photons)
    means = _LEVELS / 255.0 * n
    counts = np.arange(int(n + 10 * np.sqrt(n) + 20))
    pmf = np.exp(counts[None, :] * np.log(np.maximum(means, 1e-300))[:, None] - means[:, None]
                 - scipy.special.gammaln(counts + 1)[None, :])
    cdf = np.cumsum(pmf, 1)
    quantiles = np.stack([np.searchsorted(row, _QUANTILES) for row in cdf])      # Poisson counts
    return replace(sample, image=_table_noise(sample.image, rng, quantiles * (255.0 / n))), {"photons": n}


@_register("noise", amount=Param((0.001, 0.01), (0.0, 0.5)))
def salt_pepper(sample: Sample, rng: np.random.Generator, amount) -> tuple[Sample, dict]:
    """Set a fraction ``amount`` of the pixels (drawn with replacement) to black or white."""
    a = _uniform(rng, amount)
    height, width = sample.image.shape[:2]
    count = round(a * height * width)
    where = rng.integers(0, height * width, count)
    image = sample.image.copy()
    image.reshape(-1, 3)[where] = (rng.integers(0, 2, count, dtype=np.uint8) * 255)[:, None]
    return replace(sample, image=image), {"amount": a}


# ---------------------------------------------------------------------------------------- frequency
# Ideal radial filters in the 2-D Fourier domain, per channel (real FFT). The radius of a frequency is
# sqrt((2 fy)^2 + (2 fx)^2) with f in cycles per pixel, so 1 is the Nyquist frequency along either axis (the
# corners reach sqrt(2)); cutoffs are fractions of Nyquist, in [0, 1]. A frequency is kept when its radius
# lies in the closed pass band. High- and band-pass filters keep the DC term as well, so the mean brightness
# of each channel stays (without it the output would be centred on 0 and mostly clip to black). The result
# is rounded and saturated to uint8, which puts back a little energy outside the band: rounding noise
# (variance 1/12 per value, white) and the clipping of overshoots next to very bright or dark pixels.

@functools.lru_cache(maxsize=8)
def _radius(height: int, width: int) -> np.ndarray:
    """Frequency radii of an (height, width) real FFT, in fractions of Nyquist (float64)."""
    fy = 2.0 * np.fft.fftfreq(height)[:, None]
    fx = 2.0 * np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fy * fy + fx * fx)


def _fourier_filter(sample: Sample, low: float, high: float, keep_dc: bool) -> Sample:
    """Keep the frequencies with radius in [low, high] (and DC if ``keep_dc``), per channel."""
    height, width = sample.image.shape[:2]
    radius = _radius(height, width)
    keep = (radius >= low) & (radius <= high)
    keep[0, 0] |= keep_dc
    channels = []
    for channel in cv2.split(sample.image):          # contiguous planes: ~2x faster FFTs than axes=(0, 1)
        spectrum = scipy.fft.rfft2(channel.astype(np.float32))
        spectrum *= keep
        channels.append(_to_uint8(scipy.fft.irfft2(spectrum, s=(height, width))))
    return replace(sample, image=cv2.merge(channels))


@_register("frequency", cutoff=Param((0.2, 0.7), (0.0, 1.0)))
def freq_lowpass(sample: Sample, rng: np.random.Generator, cutoff) -> tuple[Sample, dict]:
    """Remove every frequency above ``cutoff`` (fraction of Nyquist)."""
    c = _uniform(rng, cutoff)
    return _fourier_filter(sample, 0.0, c, keep_dc=True), {"cutoff": c}


@_register("frequency", cutoff=Param((0.02, 0.1), (0.0, 1.0)))
def freq_highpass(sample: Sample, rng: np.random.Generator, cutoff) -> tuple[Sample, dict]:
    """Remove every frequency below ``cutoff`` (fraction of Nyquist) except DC."""
    c = _uniform(rng, cutoff)
    return _fourier_filter(sample, c, np.inf, keep_dc=True), {"cutoff": c}


@_register("frequency", low=Param((0.02, 0.08), (0.0, 1.0)), high=Param((0.3, 0.8), (0.0, 1.0)))
def freq_bandpass(sample: Sample, rng: np.random.Generator, low, high) -> tuple[Sample, dict]:
    """Keep DC and the frequencies between ``low`` and ``high`` (fractions of Nyquist; swapped if drawn
    in the wrong order)."""
    lo, hi = sorted((_uniform(rng, low), _uniform(rng, high)))
    return _fourier_filter(sample, lo, hi, keep_dc=True), {"low": lo, "high": hi}


# ---------------------------------------------------------------------------------------- occlusion

def _occlude(sample: Sample, image: np.ndarray, covered: np.ndarray) -> Sample:
    """``sample`` with ``image``, its masks cleared where ``covered`` is non-zero."""
    hidden = covered.astype(bool)

    def clear(mask):
        if mask is None:
            return None
        mask = mask.copy()
        mask[hidden] = 0
        return mask

    return replace(sample, image=image, mask=clear(sample.mask), instance_mask=clear(sample.instance_mask))


@_register("occlusion", count=Param((1, 3), (0, 32), integer=True), size=Param((0.05, 0.2), (0.0, 1.0)))
def cutout(sample: Sample, rng: np.random.Generator, count, size) -> tuple[Sample, dict]:
    """Fill ``count`` rectangles, each ``size`` x the image's width and height (drawn per rectangle and
    side), with the image's mean colour. ``rects``: ``[x0, y0, x1, y1]``, exclusive ends."""
    height, width = sample.image.shape[:2]
    image, covered = sample.image.copy(), np.zeros((height, width), np.uint8)
    fill = tuple(round(v) for v in cv2.mean(sample.image)[:3])
    rects = []
    for _ in range(_integer(rng, count)):
        w, h = (max(1, round(_uniform(rng, size) * side)) for side in (width, height))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        image[y:y + h, x:x + w] = fill
        covered[y:y + h, x:x + w] = 1
        rects.append([x, y, x + w, y + h])
    return _occlude(sample, image, covered), {"rects": rects, "colour": list(fill)}


@_register("occlusion", count=Param((1, 3), (0, 32), integer=True), size=Param((0.05, 0.25), (0.0, 1.0)))
def occluder(sample: Sample, rng: np.random.Generator, count, size) -> tuple[Sample, dict]:
    """Draw ``count`` opaque shapes in random colours: ellipses or star-shaped polygons (3-8 vertices)
    about ``size`` x the image's width and height across, centred anywhere in the image."""
    height, width = sample.image.shape[:2]
    image, covered = sample.image.copy(), np.zeros((height, width), np.uint8)
    shapes = [_random_shape(rng, width, height, size) for _ in range(_integer(rng, count))]
    for shape in shapes:
        _draw_shape(image, shape, shape["colour"])
        _draw_shape(covered, shape, 1)
    return _occlude(sample, image, covered), {"shapes": shapes}


def _random_shape(rng: np.random.Generator, width: int, height: int, size: tuple) -> dict:
    """An ellipse or polygon in integer pixel coordinates, as :func:`occluder` reports it."""
    half = np.array([_uniform(rng, size) * width, _uniform(rng, size) * height]) / 2
    centre = rng.uniform((0, 0), (width, height))
    colour = [int(c) for c in rng.integers(0, 256, 3)]
    if rng.random() < 0.5:
        return {"kind": "ellipse", "centre": [round(v) for v in centre], "axes": [max(1, round(v)) for v in half],
                "angle": round(float(rng.uniform(0, 180)), 2), "colour": colour}
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
    radii = rng.uniform(0.4, 1.0, len(angles))[:, None] * half
    points = np.rint(centre + radii * np.stack([np.cos(angles), np.sin(angles)], 1)).astype(int)
    return {"kind": "polygon", "points": points.tolist(), "colour": colour}


def _draw_shape(target: np.ndarray, shape: dict, colour) -> None:
    if shape["kind"] == "ellipse":
        cv2.ellipse(target, tuple(shape["centre"]), tuple(shape["axes"]), shape["angle"], 0, 360, colour, -1)
    else:
        cv2.fillPoly(target, [np.array(shape["points"], np.int32)], colour)


# ------------------------------------------------------------------------------------------ context

@_register("context", takes_background=True, margin=Param((0, 2), (0, 32), integer=True))
def context_paste(sample: Sample, rng: np.random.Generator, margin,
                  background: Optional[np.ndarray] = None) -> tuple[Sample, dict]:
    """Put the object on another frame: the object region (:func:`pipeline.data.regions.object_region`: the
    pixels the boxes touch and where ``mask`` is non-zero, grown by ``margin`` px) is kept, every other pixel comes from ``background`` (another frame's uint8 HxWx3
    RGB image, resized to this one if its size differs). Labels, boxes and masks stay as they are.

    Skipped (the sample returned unchanged) with ``{"skipped": "no background"}`` when no background is
    given, and with ``{"skipped": "no object"}`` when the sample has no box and no mask pixel (e.g. a
    crop or a frame without markings: everything would be replaced, and its label with it).
    """
    if background is None:
        return sample, {"skipped": "no background"}
    region = object_region(sample.image.shape[:2], sample.mask, sample.boxes)
    if not region.any():
        return sample, {"skipped": "no object"}
    m = _integer(rng, margin)
    image = _fit(background, sample.image.shape).copy()
    np.copyto(image, sample.image, where=grown(region, m)[..., None])
    return replace(sample, image=image), {"margin": m}


def _fit(background: np.ndarray, shape: tuple) -> np.ndarray:
    """``background`` checked and resized to ``shape`` (H, W, 3)."""
    if not (isinstance(background, np.ndarray) and background.dtype == np.uint8 and background.ndim == 3
            and background.shape[2] == 3):
        raise ValueError(f"context_paste background must be a uint8 (H, W, 3) array, got {_describe(background)}")
    if background.shape != shape:
        background = cv2.resize(background, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return background
