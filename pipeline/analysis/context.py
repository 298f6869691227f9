"""The context audit: does a net look at the object (the lane markings, the traffic light) or only at its context?

A pure library (torch, numpy, OpenCV): no Spark, no MLflow, no config. The caller passes a model (put in eval mode
here, already on ``Options.device``), the task name, an iterable of decoded rows (dicts as :mod:`schemas.datasets`
stores them) and :class:`Options`; :func:`audit` reads the rows batch by batch (read, occlude, score, attribute,
keep examples: one small function each) and returns a :class:`ContextAudit` with flat metrics, a verdict in words
and the example rows; :func:`figures` draws its pictures (matplotlib Agg) for the caller to log, apart.

**The object region** (:func:`object_mask`, by the definition augmentation shares:
:mod:`pipeline.data.regions`), grown by ``dilate`` pixels in every direction (a square, i.e. Chebyshev, dilation):

* ``road_frames``: the stored lane mask (1 = marking). A frame without markings has no object.
* ``tl_frames``: the union of the light boxes, each pixel a box touches (pixel ``i`` spans ``[i, i + 1)``).
* ``tl_crops``: where ingest's crop puts the light. :func:`pipeline.data.images.crop` grows the box by ``pad``
  times its longer side, widens the shorter dimension to the crop's aspect ratio around the box centre and
  resizes: the light's place in the crop depends only on the box's aspect ratio (width / height), which the
  stored row does not keep. :func:`light_region` runs ingest's own ``crop`` on a reference light of aspect
  ``light_aspect`` (a row's ``light_aspect`` field, where a caller adds one, wins over the argument) and keeps
  the crop pixels the light touches. The default :data:`LIGHT_ASPECT` is a vertical housing (the synthetic
  renderer's 0.38); horizontal lights (20 % of the synthetic ones, aspect 2.7) are then masked in the wrong
  orientation. For lights only a few source pixels tall, ingest's integer rounding of the crop window moves the
  light by up to half a source pixel, i.e. several crop pixels: ``dilate`` absorbs part of that. Background
  crops (``label_name == "background"``) have no object.
* ``class_images``: no object annotation at all: :class:`ValueError`.

**Fills** (:func:`fill`): ``mean`` (each image's mean colour), ``blur`` (a Gaussian of sigma
:data:`BLUR_SIGMA` times the longer image side), ``noise`` (uniform 0..255 per pixel and channel) and ``grey``
(the normalisation mean, i.e. a zero input to the net). ``mean`` and ``blur`` keep the image's average colour
and brightness in the filled region: a net reading a global cue (time of day, exposure) still finds it with the
context "filled", so they under-state reliance on such a cue; ``noise`` and ``grey`` remove it.

**Occlusion**: the task's score on the images as they are, with the object region filled and with the context
(everything outside the object region) filled. Classifiers: accuracy on labelled rows (label >= 0); detector:
recall of the lights (and precision of the peaks) with the evaluate stage's own peak finding and greedy matching
(:func:`pipeline.train.evaluate.heatmap_peaks`, :func:`~pipeline.train.evaluate.match_peaks`). Rows whose
object region is empty are counted in ``rows_without_object`` and left out of the object/context comparison and
of the attribution shares; ``occlusion.all_rows_accuracy`` is the intact accuracy over every labelled row.

**Attribution**, per image, relative to a baseline image ``b`` (:data:`BASELINE`: mid grey, the normalised
zero, so ``gradient`` is the usual input x gradient in the net's input space):

* ``gradient``: ``(x - b) * df/dx`` at ``x``;
* ``integrated``: integrated gradients, ``(x - b) * mean_k df/dx(b + a_k (x - b))`` over ``steps`` midpoints
  ``a_k = (k + 1/2) / steps``; the attributions then sum to ``f(x) - f(b)`` up to the midpoint rule's error.

Mid grey rather than black: a black baseline gives every dark pixel (a night road, a light's housing) zero
attribution whatever the net does with it, and would make the two methods disagree on what "input" means.
``f`` is the true class logit for classifiers (the predicted one for unlabelled rows) and, for the detector, the
sum of the heat-map *logits* (not the sigmoid, which saturates on confident lights) at the light cells: every
cell whose centre lies in a box, plus each box's centre cell as the training target places it. The map is
``|attribution|`` summed over channels; per image ``object_share`` is the map's mass on the object region,
``area_share`` the region's share of the pixels and ``focus = object_share / area_share`` (1: no preference for
the object; > 1: attribution concentrates on it). Means and medians are over images with an object.

**Verdict** (:func:`verdict`), from occlusion, the intervention: the drops ``d_object = intact - object filled``
and ``d_context = intact - context filled`` of the score, and, for classifiers, the shares of predictions that
*change* when the object or the context is filled (``c_object``, ``c_context``; a net misled by its context can
score better with the context gone, which a drop alone never flags):

* *relies on context*: ``c_context >= MIN_DROP`` and ``c_object < DROP_RATIO * c_context`` for classifiers
  (filling the context changes at least 5% of the predictions and filling the object less than half as many);
  for the detector the same on the drops ``d_context``, ``d_object``;
* *looks at the object*: the mirror image;
* otherwise *uses both* (both fills cost at least :data:`MIN_DROP`) or *inconclusive*.
Attribution is reported beside the verdict and said to agree or disagree (focus below or above
:data:`FOCUS_THRESHOLD`), never overruling occlusion: input x gradient favours high-contrast pixels such as lane
paint whatever the net does with them. ``relies_on_context`` is True only in the first case.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from pipeline.data.regions import box_region, grown, object_region
from pipeline.vocab import CROP_CLASSES
from pipeline.tasks import get_task
from pipeline.models.normalize import DETECTOR_STRIDE, MEAN, to_tensor

__all__ = ["FILLS", "ATTRIBUTIONS", "LIGHT_ASPECT", "MIN_DROP", "DROP_RATIO", "FOCUS_THRESHOLD", "BLUR_SIGMA",
           "ContextAudit", "object_mask", "light_region", "fill", "attribute", "input_x_gradient",
           "integrated_gradients", "baseline_like", "attribution_shares", "verdict", "Options", "audit", "figures"]

FILLS = ("mean", "blur", "noise", "grey")
ATTRIBUTIONS = ("gradient", "integrated")
# Width / height of the light box assumed inside a tl_crop: the synthetic renderer's vertical housing (w = 0.38 h);
# real vertical lights (Bosch, LISA, DTLD) are about 1:2.5 to 1:3.
LIGHT_ASPECT = 0.38
# A score change below 5 points is treated as no change: the binomial noise of an accuracy on a few hundred images.
MIN_DROP = 0.05
# "Costs less than half": filling the object must hurt less than half as much as filling the context (and mirrored).
DROP_RATIO = 0.5
# Median focus separating "no clear preference for the object" from "attribution concentrates on it": 1 is
# indifference, and |input x gradient| leans towards high-contrast pixels (white markings, lit lamps) even in a
# net that ignores them, so half again over indifference is asked for before attribution counts for the object.
FOCUS_THRESHOLD = 1.5
# blur: Gaussian sigma as a fraction of the longer image side (4 px at 32, 16 px at 128): shapes gone, colours kept.
BLUR_SIGMA = 1 / 8
# Baseline of the attributions: "grey" = the normalisation mean (0 in the net's input space), or "black".
BASELINE = "grey"
# The object in words, per dataset kind (and whether the word is plural).
_OBJECT = {"road_frames": ("lanes", True), "tl_frames": ("lights", True), "tl_crops": ("light", False)}
_REFERENCE_HEIGHT = 512   # px of the reference light light_region crops (rounding then < 1/100 of a crop pixel)


# ------------------------------------------------------------------------------------------ object region

@lru_cache(maxsize=64)
def _light_region(hw: tuple, aspect: float) -> np.ndarray:
    from pipeline.data.images import crop
    from pipeline.data.records import Box

    h = _REFERENCE_HEIGHT
    w = max(1, round(h * aspect))
    light = np.full((h, w, 3), 255, np.uint8)        # the image is the light; crop pads the rest with black
    cut = crop(light, Box(0.0, 0.0, float(w), float(h), "red"), tuple(hw))
    region = cut[..., 0] > 12                           # pixels at least 5 % covered by the light
    region.setflags(write=False)
    return region


def light_region(hw: Sequence[int], aspect: float = LIGHT_ASPECT) -> np.ndarray:
    """Bool (H, W): the crop pixels a light of ``aspect`` (width / height) touches in an ``hw`` crop cut by
    ingest's own :func:`pipeline.data.images.crop` (with its default padding)."""
    if not aspect > 0:
        raise ValueError(f"light_aspect must be > 0, got {aspect!r}")
    return _light_region(tuple(int(v) for v in hw), float(aspect)).copy()


def _is_background(row: dict) -> bool:
    name = row.get("label_name")
    if name is not None and str(name) != "":
        return str(name) == "background"
    return int(row.get("label", -1)) == CROP_CLASSES.index("background")


def _check_kind(kind: str) -> None:
    if kind == "class_images":
        raise ValueError("class_images rows carry only a folder class, no object annotation (no lane mask, no "
                         "boxes): the context audit needs road_frames (lane masks), tl_frames (light boxes) or "
                         "tl_crops (lights cut by ingest); audit a dataset of one of those kinds")
    if kind not in _OBJECT:
        raise ValueError(f"unknown dataset kind {kind!r}; the context audit knows road_frames, tl_frames, tl_crops")


def object_mask(kind: str, row: dict, dilate: int = 0, light_aspect: float = LIGHT_ASPECT) -> np.ndarray:
    """Bool (H, W) of the object in ``row`` (a decoded row of dataset ``kind``), grown by ``dilate`` pixels.

    road_frames: the lane markings; tl_frames: the light boxes; tl_crops: the light as ingest cut it
    (:func:`light_region`; empty for background crops). Raises ``ValueError`` for class_images (no object is
    annotated) and for unknown kinds."""
    _check_kind(kind)
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate!r}")
    h, w = np.asarray(row["image"]).shape[:2]
    if kind == "road_frames":
        lanes = np.asarray(row["lane_mask"])
        if lanes.shape != (h, w):
            import cv2

            lanes = cv2.resize(lanes.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        return object_region((h, w), mask=lanes, grow=dilate)
    if kind == "tl_frames":
        return box_region(row["boxes"], (h, w), dilate)
    if _is_background(row):
        return np.zeros((h, w), bool)
    return grown(light_region((h, w), float(row.get("light_aspect") or light_aspect)), dilate)


# ------------------------------------------------------------------------------------------------- fills

def fill(images: np.ndarray, masks: np.ndarray, how: str = "mean",
         rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """A new uint8 array: ``images`` ((N, H, W, 3) or one (H, W, 3)) with the pixels where ``masks`` is True
    replaced by ``how`` (one of :data:`FILLS`); every other pixel is unchanged. ``rng`` draws the noise."""
    if how not in FILLS:
        raise ValueError(f"unknown fill {how!r}; choose one of {', '.join(FILLS)}")
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    masks = np.asarray(masks, bool)
    masks = masks[None] if masks.ndim == 2 else masks
    if batch.ndim != 4 or batch.shape[-1] != 3 or masks.shape != batch.shape[:3]:
        raise ValueError(f"fill needs images (N, H, W, 3) and masks (N, H, W); got {images.shape} and {masks.shape}")
    out = batch.astype(np.uint8, copy=True)
    if how == "mean":
        source = np.broadcast_to(batch.reshape(len(batch), -1, 3).mean(1).round().astype(np.uint8)[:, None, None],
                                 batch.shape)
    elif how == "grey":
        source = np.full(batch.shape, round(MEAN * 255), np.uint8)
    elif how == "noise":
        rng = rng if rng is not None else np.random.default_rng(0)
        source = rng.integers(0, 256, batch.shape, dtype=np.uint8)
    else:
        import cv2

        sigma = max(1.0, BLUR_SIGMA * max(batch.shape[1:3]))
        source = np.stack([cv2.GaussianBlur(np.ascontiguousarray(im, np.uint8), (0, 0), sigma,
                                            borderType=cv2.BORDER_REFLECT) for im in batch])
    out[masks] = source[masks]
    return out[0] if single else out


_fill = fill   # audit's ``fill`` argument shadows the function there


# ------------------------------------------------------------------------------------------- attribution

def baseline_like(x: Tensor, baseline: str = BASELINE) -> Tensor:
    """The baseline image for normalised inputs like ``x``: ``grey`` (0, the normalisation mean) or ``black``."""
    if baseline == "grey":
        return torch.zeros_like(x)
    if baseline == "black":
        return to_tensor(np.zeros((1, 1, 1, 3), np.uint8)).to(x).expand_as(x).clone()
    raise ValueError(f"unknown baseline {baseline!r}; choose grey or black")


Target = Callable[[Tensor], Tensor]   # net output -> one scalar per image, (B,)


def _grad(model, x: Tensor, target: Target) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = target(model(x))
        (grad,) = torch.autograd.grad(value.sum(), x)
    return grad


def input_x_gradient(model, x: Tensor, target: Target, baseline: Optional[Tensor] = None) -> Tensor:
    """``(x - baseline) * d target / dx`` at ``x`` (baseline: the grey image, 0), shaped like ``x``."""
    b = torch.zeros_like(x) if baseline is None else baseline
    return (x - b).detach() * _grad(model, x, target)


def integrated_gradients(model, x: Tensor, target: Target, steps: int = 16,
                         baseline: Optional[Tensor] = None) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from ``baseline`` (the grey image, 0) with ``steps``
    midpoint steps, one forward and backward pass of the batch per step; the attributions of an image sum to
    ``target(x) - target(baseline)`` up to the midpoint rule's error."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    b = torch.zeros_like(x) if baseline is None else baseline
    delta = (x - b).detach()
    total = torch.zeros_like(x)
    for k in range(steps):
        total += _grad(model, b + (k + 0.5) / steps * delta, target)
    return delta * total / steps


def attribute(model, x: Tensor, target: Target, method: str = "gradient", steps: int = 16,
              baseline: str = BASELINE) -> Tensor:
    """Attributions of ``target`` to the input pixels, shaped like ``x``: ``gradient`` (input x gradient) or
    ``integrated`` (integrated gradients), both from the ``baseline`` image."""
    if method not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {method!r}; choose one of {', '.join(ATTRIBUTIONS)}")
    b = baseline_like(x, baseline)
    if method == "gradient":
        return input_x_gradient(model, x, target, b)
    return integrated_gradients(model, x, target, steps, b)


def attribution_shares(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of attribution mass (``maps``, (N, H, W), >= 0) on ``masks``, and the masks' area
    share. An image without attribution mass has share NaN."""
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks, bool)
    total = maps.reshape(len(maps), -1).sum(1)
    on = (maps * masks).reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, on / np.where(total > 0, total, 1), np.nan)
    return share, masks.reshape(len(masks), -1).mean(1)


def _class_target(classes: Tensor) -> Target:
    return lambda logits: logits.gather(1, classes[:, None]).squeeze(1)


def light_cells(boxes_per_image: Sequence[np.ndarray], grid_hw: tuple, stride: int = DETECTOR_STRIDE) -> np.ndarray:
    """Bool (B, gh, gw): the heat-map cells of each image's lights: cells whose centre lies in a box, plus each
    box's centre cell (where :func:`pipeline.train.loader.heat_target` puts the peak)."""
    gh, gw = grid_hw
    out = np.zeros((len(boxes_per_image), gh, gw), bool)
    cy, cx = (np.mgrid[0:gh, 0:gw] + 0.5) * stride
    for i, boxes in enumerate(boxes_per_image):
        for x0, y0, x1, y1 in np.asarray(boxes, np.float32).reshape(-1, 4):
            out[i] |= (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
            r = int(np.clip(round((y0 + y1) / 2 / stride - 0.5), 0, gh - 1))
            c = int(np.clip(round((x0 + x1) / 2 / stride - 0.5), 0, gw - 1))
            out[i, r, c] = True
    return out


def _cell_target(cells: Tensor) -> Target:
    return lambda heat: (heat[:, 0] * cells).sum((1, 2))


# --------------------------------------------------------------------------------------------- verdict

@dataclass
class ContextAudit:
    task: str
    kind: str
    metrics: dict = field(default_factory=dict)       # flat name -> float
    verdict: str = ""
    relies_on_context: bool = False
    notes: list = field(default_factory=list)         # what was left out and why, in words
    options: Optional["Options"] = None               # how it was measured
    examples: list = field(default_factory=list)      # the example rows kept for :func:`figures`


def _score_name(metrics: dict) -> str:
    return "recall" if "occlusion.intact_recall" in metrics else "accuracy"


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(float(v))


def verdict(result: Union[ContextAudit, dict], kind: Optional[str] = None) -> tuple[str, bool]:
    """``(sentence, relies_on_context)`` from an audit's metrics by the rules of the module docstring.
    ``result`` is a :class:`ContextAudit` or its metrics dict (then ``kind`` names the object in the sentence)."""
    metrics = result.metrics if isinstance(result, ContextAudit) else dict(result)
    kind = result.kind if isinstance(result, ContextAudit) else kind
    obj, plural = _OBJECT.get(kind, ("object", False))
    score = _score_name(metrics)
    s0, so, sc = (metrics.get(f"occlusion.{v}_{score}") for v in ("intact", "object_filled", "context_filled"))
    rows, without = int(metrics.get("rows", 0)), int(metrics.get("rows_without_object", 0))
    article = "" if plural else "a "
    left_out = f" ({without} of {rows} rows without {article}{obj} left out)" if without else ""
    if not all(_finite(v) for v in (s0, so, sc)):
        return (f"no verdict: none of the {rows} rows has {article}{obj} to occlude "
                f"and a {'label' if score == 'accuracy' else 'light'} to score"), False
    d_obj, d_ctx = s0 - so, s0 - sc
    c_obj, c_ctx = metrics.get("occlusion.object_filled_changed"), metrics.get("occlusion.context_filled_changed")
    focus = metrics.get("attribution.focus_median")
    share, area = metrics.get("attribution.object_share"), metrics.get("attribution.area_share")
    focus_known = _finite(focus)
    changes = _finite(c_obj) and _finite(c_ctx)
    e_obj, e_ctx = (c_obj, c_ctx) if changes else (d_obj, d_ctx)   # classifiers: changed predictions decide
    relies = e_ctx >= MIN_DROP and e_obj < DROP_RATIO * e_ctx
    looks = e_obj >= MIN_DROP and e_ctx < DROP_RATIO * e_obj
    if relies:
        head = "relies on context"
    elif looks:
        head = "looks at the object"
    elif e_obj >= MIN_DROP and e_ctx >= MIN_DROP:
        head = f"uses both the {obj} and its context"
    else:
        head = (f"inconclusive: neither fill changes {MIN_DROP:.0%} of the predictions" if changes else
                f"inconclusive: neither fill moves the {score} by {MIN_DROP:.2f}")
    text = (f"{head}: {score} with the {obj} filled {so:.2f} vs {s0:.2f} intact, with the context filled "
            f"{sc:.2f}")
    if changes:
        text += (f"; filling the {obj} changes {c_obj:.0%} of the predictions, filling the context "
                 f"{c_ctx:.0%}")
    if _finite(share) and _finite(area) and focus_known:
        agrees = (focus < FOCUS_THRESHOLD) if relies else (focus >= FOCUS_THRESHOLD) if looks else None
        text += (f"; {share:.0%} of attribution on the {obj}, which cover{'' if plural else 's'} {area:.0%} of "
                 f"the image (focus {focus:.1f}"
                 + ("" if agrees is None else ", agrees" if agrees else ", disagrees: gradients favour "
                    "high-contrast pixels") + ")")
    return text + left_out, bool(relies)


# ------------------------------------------------------------------------------------------------ audit

def _infer_kind(task, row: dict, kind: Optional[str]) -> str:
    if kind is None:
        kind = ("road_frames" if "lane_mask" in row else "tl_frames" if "boxes" in row
                else "tl_crops" if ("distance" in row or task.name == "tl_classifier") else "class_images")
    _check_kind(kind)
    if kind not in task.kinds:
        raise ValueError(f"{task.name} does not run on {kind} rows (it takes {' or '.join(task.kinds)})")
    return kind


def _batches(rows: Iterable[dict], size: int, limit: int) -> Iterator[list]:
    """Lists of ``size`` rows (the last one shorter); with ``limit`` > 0, never reads past row ``limit``."""
    from itertools import islice

    chunk: list = []
    for row in islice(rows, limit) if limit else rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Options:
    """How :func:`audit` occludes, attributes and scores (the ``audit.*`` config keys of the same names).

    ``fill``: one of :data:`FILLS`; ``dilate``: pixels the object region grows by; ``attribution``: one of
    :data:`ATTRIBUTIONS` (``ig_steps`` midpoints for integrated gradients) against ``baseline``;
    ``batch_size`` rows at a time, only the first ``max_rows`` (> 0); ``examples`` rows, picked uniformly by a
    reservoir seeded by ``seed``, kept for the examples figure; ``threshold`` and ``match_radius`` score the
    detector as the evaluate stage does; ``light_aspect``: the light assumed inside a crop; ``device``: where
    ``model`` is."""
    fill: str = "mean"
    dilate: int = 2
    attribution: str = "gradient"
    ig_steps: int = 16
    batch_size: int = 32
    max_rows: int = 0
    examples: int = 8
    seed: int = 0
    threshold: float = 0.5
    match_radius: float = 0.5
    baseline: str = BASELINE
    light_aspect: float = LIGHT_ASPECT
    device: str = "cpu"

    def __post_init__(self):
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}; choose one of {', '.join(FILLS)}")
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"unknown attribution {self.attribution!r}; choose one of {', '.join(ATTRIBUTIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")


VARIANTS = ("intact", "object_filled", "context_filled")
FIGURES = ("context_occlusion", "context_examples")


@dataclass
class _Tally:
    rows: int = 0
    without: int = 0
    unlabelled: int = 0
    labelled_all: int = 0
    correct_all: int = 0
    compared: int = 0                                   # classifiers: labelled rows with an object
    correct: dict = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    lights: int = 0                                     # detector: lights in frames with one
    found: dict = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    peaks: dict = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    hits: dict = field(default_factory=lambda: dict.fromkeys(VARIANTS, 0))
    changed: dict = field(default_factory=lambda: {"object_filled": 0, "context_filled": 0})  # classifiers
    object_share: list = field(default_factory=list)
    area_share: list = field(default_factory=list)


def _stats(name: str, values: list) -> dict:
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    return {f"attribution.{name}": float(a.mean()) if len(a) else float("nan"),
            f"attribution.{name}_median": float(np.median(a)) if len(a) else float("nan")}


@dataclass
class _Batch:
    """One batch of rows as the audit reads it: images, object masks, which rows have an object (``idx``), the
    net's output on the intact images, labels (classifiers) or boxes of the rows with an object (detector)."""
    rows: list
    images: np.ndarray
    masks: np.ndarray
    idx: np.ndarray
    out: Tensor
    labels: Optional[np.ndarray] = None
    boxes: list = field(default_factory=list)


def _read_batch(model, spec, kind: str, rows: list, o: Options, tally: _Tally) -> _Batch:
    """Masks and the intact output of one batch; counts rows, rows without an object and, for classifiers, the
    accuracy over every labelled row."""
    images = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
    masks = np.stack([object_mask(kind, r, o.dilate, o.light_aspect) for r in rows])
    has = masks.reshape(len(rows), -1).any(1)
    tally.rows += len(rows)
    tally.without += int((~has).sum())
    with torch.no_grad():
        out = model(to_tensor(images).to(o.device)).float()
    batch = _Batch(rows, images, masks, np.flatnonzero(has), out)
    if spec.detector:
        batch.boxes = [np.asarray(rows[i]["boxes"], np.float32).reshape(-1, 4) for i in batch.idx]
    else:
        batch.labels = np.array([int(r["label"]) for r in rows])
        pred = out.argmax(1).cpu().numpy()
        labelled = batch.labels >= 0
        tally.unlabelled += int((~labelled).sum())
        tally.labelled_all += int(labelled.sum())
        tally.correct_all += int((pred[labelled] == batch.labels[labelled]).sum())
    return batch


def _occlude(model, batch: _Batch, o: Options, rng) -> tuple[dict, dict]:
    """The images with an object as they are, with the object filled and with the context filled, and the net's
    output on each."""
    sub, sub_masks = batch.images[batch.idx], batch.masks[batch.idx]
    variants = {"intact": sub, "object_filled": _fill(sub, sub_masks, o.fill, rng),
                "context_filled": _fill(sub, ~sub_masks, o.fill, rng)}
    outputs = {"intact": batch.out[torch.as_tensor(batch.idx)]}
    with torch.no_grad():
        for name in ("object_filled", "context_filled"):
            outputs[name] = model(to_tensor(variants[name]).to(o.device)).float()
    return variants, outputs


def _score_lights(batch: _Batch, outputs: dict, o: Options, tally: _Tally) -> dict:
    """Detector: lights found, peaks and peaks on a light per variant (the scorer's matching); per variant and
    image (found, lights) for the examples."""
    from pipeline.train.scoring import light_counts

    results = {}
    for name, out in outputs.items():
        counts = light_counts(torch.sigmoid(out).cpu(), batch.boxes, o.threshold, o.match_radius)
        for found, peaks, hits in counts:
            tally.found[name] += found
            tally.peaks[name] += peaks
            tally.hits[name] += hits
        results[name] = [(c[0], len(b)) for c, b in zip(counts, batch.boxes)]
    tally.lights += sum(len(b) for b in batch.boxes)
    return results


def _score_classes(batch: _Batch, outputs: dict, tally: _Tally) -> dict:
    """Classifiers: correct predictions per variant on labelled rows, and predictions each fill changes."""
    labels = batch.labels[batch.idx]
    scored = labels >= 0
    tally.compared += int(scored.sum())
    results = {}
    for name, out in outputs.items():
        results[name] = out.argmax(1).cpu().numpy()
        tally.correct[name] += int((results[name][scored] == labels[scored]).sum())
    for name in tally.changed:
        tally.changed[name] += int((results[name] != results["intact"]).sum())
    return results


def _attribute(model, spec, batch: _Batch, results: dict, o: Options, tally: _Tally) -> np.ndarray:
    """|attribution| maps of the rows with an object (the true class, else the predicted; the detector: its
    light cells), their shares on the object region added to the tally."""
    sub, sub_masks = batch.images[batch.idx], batch.masks[batch.idx]
    x = to_tensor(sub).to(o.device)
    if spec.detector:
        cells = light_cells(batch.boxes, tuple(batch.out.shape[-2:]))
        target = _cell_target(torch.as_tensor(cells, device=x.device, dtype=x.dtype))
    else:
        labels = batch.labels[batch.idx]
        target = _class_target(torch.as_tensor(np.where(labels >= 0, labels, results["intact"]), device=x.device))
    maps = attribute(model, x, target, o.attribution, o.ig_steps, o.baseline).abs().sum(1).detach().cpu().numpy()
    share, area = attribution_shares(maps, sub_masks)
    tally.object_share += share.tolist()
    tally.area_share += area.tolist()
    return maps


class _Reservoir:
    """``size`` example rows picked uniformly from all rows with an object (reservoir sampling, seeded)."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.seen, self.kept = size, np.random.default_rng([seed, 1]), 0, []

    def offer(self, batch: _Batch, variants: dict, results: dict, maps: np.ndarray, detector: bool) -> None:
        for j, i in enumerate(batch.idx):
            self.seen += 1
            slot = len(self.kept) if len(self.kept) < self.size else int(self.rng.integers(self.seen))
            if slot >= self.size:
                continue
            example = {"image": variants["intact"][j], "mask": batch.masks[i], "map": maps[j],
                       "object_filled": variants["object_filled"][j],
                       "context_filled": variants["context_filled"][j],
                       "predictions": {name: results[name][j] for name in results},
                       "label": None if detector else int(batch.labels[i]), "id": batch.rows[i].get("id", "")}
            if slot == len(self.kept):
                self.kept.append(example)
            else:
                self.kept[slot] = example


def audit(model, task: str, rows: Iterable[dict], options: Options = Options(), *,
          kind: Optional[str] = None) -> ContextAudit:
    """Audit ``model`` (the net of ``task``, on ``options.device``) on ``rows`` (decoded rows of one dataset kind;
    ``kind`` None: read from the first row's fields), batch by batch: occlusion, attribution, the verdict. No
    figures: :func:`figures` draws them from the result (its ``examples``)."""
    spec = get_task(task)
    o = options
    model.eval()
    noise_rng = np.random.default_rng([o.seed, 0])
    tally, reservoir = _Tally(), _Reservoir(o.examples, o.seed)
    for chunk in _batches(rows, o.batch_size, o.max_rows):
        if tally.rows == 0:
            kind = _infer_kind(spec, chunk[0], kind)
        batch = _read_batch(model, spec, kind, chunk, o, tally)
        if not len(batch.idx):
            continue
        variants, outputs = _occlude(model, batch, o, noise_rng)
        results = _score_lights(batch, outputs, o, tally) if spec.detector else _score_classes(batch, outputs, tally)
        maps = _attribute(model, spec, batch, results, o, tally)
        reservoir.offer(batch, variants, results, maps, spec.detector)
    if tally.rows == 0:
        raise ValueError("no rows to audit")
    result = ContextAudit(task=task, kind=kind, metrics=_metrics(spec, tally), options=o, examples=reservoir.kept)
    result.notes += _notes(tally, kind)
    result.verdict, result.relies_on_context = verdict(result)
    return result


def _notes(tally: _Tally, kind: str) -> list:
    notes = []
    if tally.without:
        notes.append(f"{tally.without} of {tally.rows} rows have no {_OBJECT[kind][0]} (empty object region) and "
                     f"are left out of the object/context comparison and the attribution shares")
    if tally.unlabelled:
        notes.append(f"{tally.unlabelled} rows are unlabelled (label < 0): not scored; their attribution follows "
                     f"the predicted class")
    return notes


def _metrics(spec, t: _Tally) -> dict:
    nan = float("nan")
    m: dict = {"rows": float(t.rows), "rows_without_object": float(t.without)}
    variants = ("intact", "object_filled", "context_filled")
    if spec.detector:
        m["occlusion.lights"] = float(t.lights)
        for v in variants:
            m[f"occlusion.{v}_recall"] = t.found[v] / t.lights if t.lights else nan
            m[f"occlusion.{v}_precision"] = t.hits[v] / t.peaks[v] if t.peaks[v] else nan
        score = "recall"
    else:
        m["rows_unlabelled"] = float(t.unlabelled)
        m["occlusion.all_rows_accuracy"] = t.correct_all / t.labelled_all if t.labelled_all else nan
        for v in variants:
            m[f"occlusion.{v}_accuracy"] = t.correct[v] / t.compared if t.compared else nan
        with_object = t.rows - t.without
        for v, n in t.changed.items():
            m[f"occlusion.{v}_changed"] = n / with_object if with_object else nan
        score = "accuracy"
    m["occlusion.object_drop"] = m[f"occlusion.intact_{score}"] - m[f"occlusion.object_filled_{score}"]
    m["occlusion.context_drop"] = m[f"occlusion.intact_{score}"] - m[f"occlusion.context_filled_{score}"]
    share, area = np.asarray(t.object_share, np.float64), np.asarray(t.area_share, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        focus = np.where(area > 0, share / np.where(area > 0, area, 1), np.nan)
    m.update(_stats("object_share", share.tolist()))
    m.update(_stats("area_share", area.tolist()))
    m.update(_stats("focus", focus.tolist()))
    return m


# ---------------------------------------------------------------------------------------------- figures

def _prediction_text(pred, detector: bool, classes) -> str:
    if detector:
        found, total = pred
        return f"found {found}/{total}"
    return str(classes[pred]) if classes is not None and 0 <= pred < len(classes) else str(pred)


def _summary_figure(result: ContextAudit, fill_how: str, attribution: str):
    import matplotlib.pyplot as plt

    m = result.metrics
    score = _score_name(m)
    obj = _OBJECT.get(result.kind, ("object", False))[0]
    fig, (ax_occ, ax_att) = plt.subplots(1, 2, figsize=(8, 3.6))
    names = ("intact", "object_filled", "context_filled")
    values = [m.get(f"occlusion.{n}_{score}", float("nan")) for n in names]
    bars = ax_occ.bar(["intact", f"{obj} filled", "context filled"], np.nan_to_num(values),
                      color=["#777777", "#d62728", "#1f77b4"])
    for bar, v in zip(bars, values):
        ax_occ.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    ax_occ.set_ylim(0, 1.1)
    ax_occ.set_ylabel(score)
    ax_occ.set_title(f"occlusion ({fill_how} fill)", fontsize=9)
    shares = [m.get("attribution.object_share", float("nan")), m.get("attribution.area_share", float("nan"))]
    bars = ax_att.bar([f"attribution on the {obj}", f"{obj} area"], np.nan_to_num(shares), color=["#ff7f0e", "#999999"])
    for bar, v in zip(bars, shares):
        ax_att.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f"{v:.0%}", ha="center", fontsize=8)
    ax_att.set_ylim(0, 1.1)
    ax_att.set_ylabel("share (mean over images)")
    ax_att.set_title(f"{attribution} attribution: focus {m.get('attribution.focus_median', float('nan')):.2f} "
                     f"(median)", fontsize=9)
    for ax in (ax_occ, ax_att):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("\n".join(textwrap.wrap(f"{result.task}: {result.verdict}", 110)), fontsize=8)
    fig.tight_layout()
    return fig


def _examples_figure(result: ContextAudit, kept: list, detector: bool, classes, fill_how: str):
    import matplotlib.pyplot as plt

    n = len(kept)
    fig, axes = plt.subplots(n, 4, figsize=(9, 2.3 * n), squeeze=False)
    obj = _OBJECT.get(result.kind, ("object", False))[0]
    for row_axes, ex in zip(axes, kept):
        for ax in row_axes:
            ax.axis("off")
        pred = ex["predictions"]
        truth = "" if detector else f"true {_prediction_text(ex['label'], False, classes)}, "
        row_axes[0].imshow(ex["image"])
        row_axes[0].contour(ex["mask"], levels=[0.5], colors="cyan", linewidths=0.8)
        row_axes[0].set_title(f"{truth}intact: {_prediction_text(pred['intact'], detector, classes)}", fontsize=7)
        heat = ex["map"] / max(float(np.percentile(ex["map"], 99)), 1e-12)
        row_axes[1].imshow(ex["image"].mean(2), cmap="gray", vmin=0, vmax=255)
        row_axes[1].imshow(np.clip(heat, 0, 1), cmap="inferno", alpha=0.65)
        row_axes[1].contour(ex["mask"], levels=[0.5], colors="cyan", linewidths=0.8)
        row_axes[1].set_title("attribution", fontsize=7)
        row_axes[2].imshow(ex["object_filled"])
        row_axes[2].set_title(f"{obj} filled: {_prediction_text(pred['object_filled'], detector, classes)}",
                              fontsize=7)
        row_axes[3].imshow(ex["context_filled"])
        row_axes[3].set_title(f"context filled: {_prediction_text(pred['context_filled'], detector, classes)}",
                              fontsize=7)
    fig.suptitle(f"{result.task}: {n} examples, {obj} outlined, {fill_how} fill", fontsize=9)
    fig.tight_layout()
    return fig


def figures(result: ContextAudit, classes: Optional[Sequence[str]] = None) -> dict:
    """The audit's pictures: occlusion and attribution bars, and the kept examples (``classes`` names the class
    indices)."""
    import matplotlib

    matplotlib.use("Agg")
    o = result.options or Options()
    drawn = {FIGURES[0]: _summary_figure(result, o.fill, o.attribution)}
    if result.examples:
        drawn[FIGURES[1]] = _examples_figure(result, result.examples, get_task(result.task).detector,
                                                     classes, o.fill)
    return drawn
