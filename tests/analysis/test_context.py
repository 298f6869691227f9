"""The context audit on hand-made rows and nets whose behaviour is known by construction (no Spark).

Classifier rows are 32x32 grey images with stripes: horizontal stripes for class 0, vertical for class 1, both in
the object region and in the context (so a net reading either is right on intact images). Stripes have the mean
of the background, so no fill leaks the class through the image's mean colour (a colour-coded class would leak
through the ``mean`` fill: see :mod:`pipeline.analysis.context`). ``StripeNet(support)`` classifies from the
stripes inside ``support`` only: the object region (an object net) or everything else (a context net).
Detector frames hold bright 4x4 lights on a grey background with a dark pole starting one cell below each light;
one hand-set detector fires on the bright light, the other on the pole two cells below it.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.analysis import context as C
from pipeline.data.images import crop
from pipeline.data.records import Box
from pipeline.vocab import CROP_CLASSES
from pipeline.models import build_model
from pipeline.models.normalize import to_tensor

HW = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/analysis/conftest.py)


# -------------------------------------------------------------------------------------------- rows and nets

def _stripes(label: int, hw=(HW, HW)) -> np.ndarray:
    """+-1: alternating rows (horizontal stripes) for class 0, alternating columns for class 1."""
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]]
    return np.where(((ys if label == 0 else xs) % 2) == 0, 1.0, -1.0)


def _striped_image(label: int, rng, amplitude=60.0) -> np.ndarray:
    grey = 128 + amplitude * _stripes(label) + rng.uniform(-8, 8, (HW, HW))
    return np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)


ROAD_LANES = np.zeros((HW, HW), np.uint8)
ROAD_LANES[4:28, 12:20] = 1                       # one wide "marking" band


def _rows(kind: str, n: int = 32, without: int = 3, seed: int = 0) -> list:
    """n striped rows of ``kind`` (balanced labels 0 / 1), then ``without`` rows that have no object (and plain
    grey where the object would be)."""
    rng = np.random.default_rng(seed)
    rows = []
    plain = None
    for i in range(n + without):
        label = i % 2
        row = {"id": f"r{i}", "image": _striped_image(label, rng), "label": label}
        if i >= n:                                # no object: its place is plain grey
            plain = C.object_mask(kind, rows[0], 0) if plain is None else plain
            row["image"][plain] = 128
        if kind == "road_frames":
            row.update(lane_mask=ROAD_LANES.copy() if i < n else np.zeros((HW, HW), np.uint8), context="day",
                       label_name=("solid", "dashed")[label])
        else:                                     # tl_crops: red / yellow lights, then background crops
            name = CROP_CLASSES[label] if i < n else "background"
            row.update(label_name=name, distance="near" if i < n else "",
                       label=label if i < n else CROP_CLASSES.index("background"))
        rows.append(row)
    return rows


class StripeNet(nn.Module):
    """Logits (relu(s - t), relu(-s - t), -inf...): s > 0 when the stripes inside ``support`` run horizontally
    (class 0). The dead zone ``t`` makes stripes of a grey level or two (what a blur's rounding leaves of them) no
    evidence, as for any real net; no evidence is a tie, which argmax breaks to class 0."""

    dead_zone = 0.1                               # intact stripes give |s| ~ 3.5

    def __init__(self, support: np.ndarray, classes: int = 2):
        super().__init__()
        m = torch.as_tensor(support, dtype=torch.float32)
        self.register_buffer("my", m[1:, :] * m[:-1, :])     # vertical neighbours both in the support
        self.register_buffer("mx", m[:, 1:] * m[:, :-1])
        self.classes = classes

    def forward(self, x):
        g = x.mean(1)
        ey = ((g[:, 1:, :] - g[:, :-1, :]) ** 2 * self.my).sum((1, 2))
        ex = ((g[:, :, 1:] - g[:, :, :-1]) ** 2 * self.mx).sum((1, 2))
        s = (ey - ex) / (self.my.sum() + 1)
        rest = [torch.full_like(s, -1e3)] * (self.classes - 2)
        return torch.stack([F.relu(s - self.dead_zone), F.relu(-s - self.dead_zone), *rest], 1)


def _nets(kind: str):
    """(object net, context net): the object net reads the object itself, the context net everything outside
    the object region as the audit draws it (dilated by its default 2 px: a net reading the 2-px ring around the
    object keeps a trace of its evidence when the context is filled, and a sign decision needs no more)."""
    row = _rows(kind, 1, 0)[0]
    classes = 5 if kind == "tl_crops" else 2
    return (StripeNet(C.object_mask(kind, row, dilate=0), classes).eval(),
            StripeNet(~C.object_mask(kind, row, dilate=2), classes).eval())


# ------------------------------------------------------------------------------------------- object masks

def test_object_mask_of_a_road_frame_is_the_lane_mask_grown_by_dilate():
    lanes = np.zeros((HW, HW), np.uint8)
    lanes[10, 10] = 1
    row = {"image": np.zeros((HW, HW, 3), np.uint8), "lane_mask": lanes, "label": 0}
    assert np.array_equal(C.object_mask("road_frames", row, 0), lanes.astype(bool))
    grown = C.object_mask("road_frames", row, 2)
    expected = np.zeros((HW, HW), bool)
    expected[8:13, 8:13] = True
    assert grown.dtype == bool and np.array_equal(grown, expected)
    row["lane_mask"] = np.zeros((HW, HW), np.uint8)
    assert not C.object_mask("road_frames", row, 2).any()


def test_object_mask_of_a_frame_is_the_union_of_its_boxes_clipped_to_the_image():
    row = {"image": np.zeros((HW, HW + 8, 3), np.uint8),
           "boxes": np.array([[2.5, 3.0, 6.0, 8.2], [20, 20, 22, 21], [36.5, 29.0, 45.0, 40.0]], np.float32)}
    mask = C.object_mask("tl_frames", row, 0)
    expected = np.zeros((HW, HW + 8), bool)
    expected[3:9, 2:6] = True                     # every pixel a box touches: [floor(x0), ceil(x1))
    expected[20:21, 20:22] = True
    expected[29:32, 36:40] = True                 # clipped at the image's edge
    assert np.array_equal(mask, expected)
    grown = C.object_mask("tl_frames", row, 1)
    assert grown[2:10, 1:7].all() and not grown[10, 3] and not grown[1, 3] and grown.sum() > mask.sum()
    assert not C.object_mask("tl_frames", {**row, "boxes": np.zeros((0, 4), np.float32)}, 2).any()


def _ingest_crops(full: np.ndarray, boxes: list, crop_hw=(32, 32)) -> list:
    """The tl_crops rows ingest's own ``_Emitter.light_rows`` yields for ``boxes`` on ``full`` (unencoded)."""
    from pipeline.data.ingest import _Emitter

    section = SimpleNamespace(frame_hw=(72, 128), distance_buckets=(0.03, 0.08), crop_hw=crop_hw, seed=0,
                              negatives_per_frame=1)
    emitter = SimpleNamespace(opts=SimpleNamespace(section=section), row=lambda kind, **fields: (kind, fields))
    ident = {"id": "f", "group": "g", "split": "train", "source": "test"}
    return [fields for kind, fields in _Emitter.light_rows(emitter, ident, full, boxes) if kind == "tl_crops"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_object_mask_of_a_crop_lands_on_the_light_as_ingest_cut_it():
    full = np.full((300, 480, 3), 90, np.uint8)
    specs = [(40, 40, 15), (200, 60, 23), (330, 150, 40), (420, 230, 26)]   # (x0, y0, height), vertical lights
    boxes = []
    for x0, y0, h in specs:
        w = round(h * 0.38)
        full[y0:y0 + h, x0:x0 + w] = (255, 0, 0)
        boxes.append(Box(float(x0), float(y0), float(x0 + w), float(y0 + h), "red"))
    rows = _ingest_crops(full, boxes)
    lights = [r for r in rows if r["label_name"] != "background"]
    assert len(lights) == len(boxes)
    for row, box in zip(lights, boxes):
        red = (row["image"][..., 0] > 128) & (row["image"][..., 1] < 100)
        aspect = (box.x_max - box.x_min) / (box.y_max - box.y_min)
        mask = C.object_mask("tl_crops", {**row, "light_aspect": aspect}, 0)
        assert red.sum() > 50
        assert not (red & ~C.object_mask("tl_crops", {**row, "light_aspect": aspect}, 1)).any()
        assert _iou(red, mask) > 0.8, (box, _iou(red, mask))
        assert _iou(red, C.object_mask("tl_crops", row, 0)) > 0.75     # the default aspect: a vertical light
        grown = C.object_mask("tl_crops", row, 2)
        assert grown.sum() > mask.sum() and not grown[0].any()          # grown, still inside the padding
    background = [r for r in rows if r["label_name"] == "background"]
    assert background and all(not C.object_mask("tl_crops", r, 2).any() for r in background)


def test_crop_mask_of_a_horizontal_light_needs_its_aspect():
    full = np.full((200, 300, 3), 90, np.uint8)
    full[100:115, 50:91] = (255, 0, 0)                                  # 41 x 15: aspect 2.73
    (row,) = [r for r in _ingest_crops(full, [Box(50.0, 100.0, 91.0, 115.0, "red")]) if r["label_name"] == "red"]
    red = (row["image"][..., 0] > 128) & (row["image"][..., 1] < 100)
    assert _iou(red, C.object_mask("tl_crops", {**row, "light_aspect": 41 / 15}, 0)) > 0.8
    assert _iou(red, C.object_mask("tl_crops", row, 0)) < 0.5           # the vertical default misses it


def test_light_region_matches_pipeline_crop_of_a_big_light_and_rejects_bad_aspects():
    image = np.zeros((400, 400, 3), np.uint8)
    image[100:300, 180:256] = 255
    cut = crop(image, Box(180.0, 100.0, 256.0, 300.0, "red"), (24, 40))
    assert _iou(cut[..., 0] > 127, C.light_region((24, 40), 76 / 200)) > 0.85
    with pytest.raises(ValueError, match="light_aspect"):
        C.light_region((32, 32), 0)


def test_class_images_and_unknown_kinds_raise_a_clear_value_error():
    row = {"image": np.zeros((HW, HW, 3), np.uint8), "label": 0, "label_name": "a"}
    with pytest.raises(ValueError, match="class_images.*no object annotation"):
        C.object_mask("class_images", row, 2)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        C.object_mask("frames", row, 2)
    with pytest.raises(ValueError, match="class_images"):
        C.audit(StripeNet(np.ones((HW, HW), bool)), "lane_classifier", [row])
    with pytest.raises(ValueError, match="does not run on tl_frames"):
        C.audit(StripeNet(np.ones((HW, HW), bool)), "lane_classifier",
                [{"image": row["image"], "boxes": np.zeros((0, 4), np.float32)}])


# -------------------------------------------------------------------------------------------------- fills

@pytest.mark.parametrize("how", C.FILLS)
def test_fill_changes_only_the_masked_pixels(how):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    masks = rng.random((3, 20, 24)) < 0.3
    before = images.copy()
    out = C.fill(images, masks, how, np.random.default_rng(7))
    assert out.dtype == np.uint8 and out.shape == images.shape and out is not images
    assert np.array_equal(images, before)                               # the input is left alone
    assert np.array_equal(out[~masks], images[~masks])
    assert not np.array_equal(out[masks], images[masks])
    if how == "mean":
        for i in range(3):
            assert np.array_equal(out[i][masks[i]], np.broadcast_to(images[i].reshape(-1, 3).mean(0).round(),
                                                                     (masks[i].sum(), 3)))
    elif how == "grey":
        assert (out[masks] == 128).all()
    elif how == "blur":
        sigma = 24 / 8
        blurred = cv2.GaussianBlur(images[1], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        assert np.array_equal(out[1][masks[1]], blurred[masks[1]])
        assert out[masks].std() < images[masks].std() / 3               # heavy: the texture is gone
    else:
        again = C.fill(images, masks, how, np.random.default_rng(7))
        other = C.fill(images, masks, how, np.random.default_rng(8))
        assert np.array_equal(out, again) and not np.array_equal(out, other)
    single = C.fill(images[0], masks[0], how, np.random.default_rng(7))
    assert single.shape == images[0].shape and np.array_equal(single[~masks[0]], images[0][~masks[0]])


def test_fill_rejects_an_unknown_method_and_mismatched_masks():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown fill"):
        C.fill(images, np.zeros((2, 8, 8), bool), "zeros")
    with pytest.raises(ValueError, match="masks"):
        C.fill(images, np.zeros((2, 8, 9), bool), "mean")


# ------------------------------------------------------------------------------------------- attribution

class SmoothNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _class(k: int):
    return lambda logits: logits[:, k]


@pytest.mark.parametrize("baseline", ["grey", "black"])
def test_integrated_gradients_are_complete(baseline):
    net = SmoothNet().eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    b = C.baseline_like(x, baseline)
    with torch.no_grad():
        gap = net(x)[:, 1] - net(b)[:, 1]
    ig = C.attribute(net, x, _class(1), "integrated", steps=32, baseline=baseline)
    assert ig.shape == x.shape
    assert torch.allclose(ig.sum((1, 2, 3)), gap, rtol=1e-3, atol=1e-4), (ig.sum((1, 2, 3)), gap)
    rough = C.integrated_gradients(net, x, _class(1), steps=1, baseline=b)   # one step: visibly off
    assert (rough.sum((1, 2, 3)) - gap).abs().max() > 10 * (ig.sum((1, 2, 3)) - gap).abs().max()


def test_integrated_gradients_of_a_relu_classifier_are_nearly_complete():
    torch.manual_seed(2)
    net = build_model("tl_classifier", 5, (16, 16), 0.25).eval()
    with torch.no_grad():
        net.fc6.weight.mul_(50)                    # logits of a useful size (the init's are ~0)
    x = to_tensor(np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    with torch.no_grad():
        gap = net(x)[:, 2] - net(torch.zeros_like(x))[:, 2]
    ig = C.integrated_gradients(net, x, _class(2), steps=64).sum((1, 2, 3))
    assert gap.abs().min() > 0.05
    assert torch.allclose(ig, gap, rtol=0.05, atol=0.01), (ig, gap)


def test_input_x_gradient_of_a_linear_net_is_input_times_weight_and_equals_integrated_gradients():
    torch.manual_seed(4)
    w = torch.randn(3, 6, 6)
    net = lambda x: (x * w).sum((1, 2, 3))[:, None]                     # noqa: E731
    x = torch.randn(2, 3, 6, 6)
    grad = C.attribute(net, x, _class(0), "gradient")
    assert torch.allclose(grad, x * w, atol=1e-6)
    assert torch.allclose(C.attribute(net, x, _class(0), "integrated", steps=3), x * w, atol=1e-5)
    black = C.baseline_like(x, "black")
    assert torch.allclose(black, to_tensor(np.zeros((2, 6, 6, 3), np.uint8)))
    assert torch.allclose(C.attribute(net, x, _class(0), "gradient", baseline="black"), (x - black) * w, atol=1e-5)


def test_attribution_shares_and_light_cells():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    masks = np.zeros((2, 4, 4), bool)
    masks[:, 0, :] = True
    share, area = C.attribution_shares(maps, masks)
    assert share[0] == pytest.approx(0.75) and math.isnan(share[1]) and np.allclose(area, 0.25)
    cells = C.light_cells([np.array([[8, 8, 12, 20]], np.float32), np.zeros((0, 4))], (8, 8), stride=4)
    assert cells[0, 2:5, 2].all() and cells[0].sum() == 3 and not cells[1].any()
    tiny = C.light_cells([np.array([[9, 9, 10, 10]], np.float32)], (8, 8), stride=4)
    assert tiny[0, 2, 2] and tiny.sum() == 1          # a light smaller than a cell still has its centre cell


# ------------------------------------------------------------------------------------------------- audits

@pytest.mark.parametrize("kind", ["road_frames", "tl_crops"])
def test_audit_flags_a_net_that_reads_only_the_context(kind):
    _, context_net = _nets(kind)
    result = C.audit(context_net, "lane_classifier" if kind == "road_frames" else "tl_classifier",
                     _rows(kind), C.Options(batch_size=8, examples=4))
    m = result.metrics
    assert result.kind == kind and m["rows"] == 35 and m["rows_without_object"] == 3
    assert m["occlusion.intact_accuracy"] == 1.0 and m["occlusion.object_filled_accuracy"] == 1.0
    assert m["occlusion.context_filled_accuracy"] <= 0.55
    assert m["attribution.focus_median"] < 1.0 and m["attribution.object_share"] < m["attribution.area_share"]
    assert result.relies_on_context is True
    assert result.verdict.startswith("relies on context: accuracy with the ")
    assert "3 of 35 rows without" in result.verdict and "3 of 35 rows" in result.notes[0]
    figs = C.figures(result)
    assert set(figs) == {"context_occlusion", "context_examples"}
    assert len(figs["context_examples"].axes) == 4 * 4
    for fig in figs.values():
        plt.close(fig)


@pytest.mark.parametrize("kind", ["road_frames", "tl_crops"])
def test_audit_clears_a_net_that_reads_only_the_object(kind):
    object_net, _ = _nets(kind)
    result = C.audit(object_net, "lane_classifier" if kind == "road_frames" else "tl_classifier",
                     _rows(kind), C.Options(batch_size=8, examples=2))
    m = result.metrics
    assert m["occlusion.intact_accuracy"] == 1.0 and m["occlusion.context_filled_accuracy"] == 1.0
    assert m["occlusion.object_filled_accuracy"] <= 0.55
    assert m["attribution.object_share_median"] > 0.99
    assert m["attribution.focus_median"] > C.FOCUS_THRESHOLD
    assert m["attribution.focus_median"] == pytest.approx(1 / m["attribution.area_share_median"], rel=0.02)
    assert result.relies_on_context is False and result.verdict.startswith("looks at the object")
    assert m["occlusion.all_rows_accuracy"] < 1.0       # the rows without an object are scored there only
    for fig in C.figures(result).values():
        plt.close(fig)


@pytest.mark.parametrize("how", ["blur", "noise", "grey"])
def test_every_fill_exposes_the_context_net(how):
    object_net, context_net = _nets("road_frames")
    rows = _rows("road_frames", 24, 0)
    flagged = C.audit(context_net, "lane_classifier", rows, C.Options(fill=how, examples=0))
    cleared = C.audit(object_net, "lane_classifier", rows, C.Options(fill=how, examples=0))
    assert flagged.relies_on_context and not cleared.relies_on_context
    assert flagged.metrics["occlusion.context_filled_accuracy"] <= 0.75
    assert cleared.metrics["occlusion.object_filled_accuracy"] <= 0.75
    assert set(C.figures(flagged)) == {"context_occlusion"}
    plt.close("all")


def test_integrated_attribution_agrees_with_the_construction():
    object_net, context_net = _nets("road_frames")
    rows = _rows("road_frames", 8, 0)
    integrated = C.Options(attribution="integrated", ig_steps=4, examples=0)
    looks = C.audit(object_net, "lane_classifier", rows, integrated)
    ignores = C.audit(context_net, "lane_classifier", rows, integrated)
    assert looks.metrics["attribution.object_share_median"] > 0.99
    assert ignores.metrics["attribution.focus_median"] < 1.0 and ignores.relies_on_context
    plt.close("all")


def test_audit_reads_rows_batch_by_batch():
    _, context_net = _nets("road_frames")
    yielded, seen_at_forward = [0], []

    def stream():
        for row in _rows("road_frames", 20, 0):
            yielded[0] += 1
            yield row

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = context_net

        def forward(self, x):
            seen_at_forward.append(yielded[0])
            return self.net(x)

    result = C.audit(Spy(), "lane_classifier", stream(), C.Options(batch_size=6, examples=2, max_rows=15))
    assert result.metrics["rows"] == 15
    assert seen_at_forward[0] == 6 and max(seen_at_forward) <= 15
    plt.close("all")


# --------------------------------------------------------------------------------------------- detector

FRAME = 64


def _frames(n: int = 6) -> list:
    """Frames with two lights each (bright 4x4 on the 4-px cell grid, a dark pole from two cells below), then one
    frame without lights."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n + 1):
        image = np.full((FRAME, FRAME, 3), 100, np.uint8)
        boxes = []
        if i < n:
            cols = rng.choice(np.arange(1, 15, 3), 2, replace=False)
            for c in cols:
                r = int(rng.integers(1, 10))
                image[4 * r:4 * r + 4, 4 * c:4 * c + 4] = 255
                image[4 * (r + 2):4 * (r + 4), 4 * c:4 * c + 4] = 20
                boxes.append([4 * c, 4 * r, 4 * c + 4, 4 * r + 4])
        rows.append({"id": f"f{i}", "image": image, "boxes": np.array(boxes, np.float32).reshape(-1, 4),
                     "states": np.zeros(len(boxes), np.int32), "distances": np.zeros(len(boxes), np.int32)})
    return rows


class LightDetector(nn.Module):
    """Heat-map logits that fire on a bright cell (``reads="light"``) or on the pole two cells below it."""

    def __init__(self, reads: str):
        super().__init__()
        self.reads = reads

    def forward(self, x):
        g = x.mean(1, keepdim=True)
        if self.reads == "light":
            return 8 * (F.avg_pool2d(F.relu(g - 1.0), 4) - 0.5)
        pole = F.avg_pool2d(F.relu(-1.0 - g) / 0.69, 4)
        below = F.pad(pole, (0, 0, 0, 4))
        h = pole.shape[2]
        return 8 * (below[:, :, 2:2 + h] + below[:, :, 3:3 + h] - 1.5)


def test_detector_audit_tells_a_light_detector_from_a_pole_detector():
    rows = _frames()
    looks = C.audit(LightDetector("light"), "tl_detector", rows, C.Options(batch_size=4, examples=3))
    pole = C.audit(LightDetector("pole"), "tl_detector", rows, C.Options(batch_size=4, examples=3))
    for result in (looks, pole):
        m = result.metrics
        assert result.kind == "tl_frames" and m["rows_without_object"] == 1 and m["occlusion.lights"] == 12
        assert m["occlusion.intact_recall"] == 1.0 and m["occlusion.intact_precision"] == 1.0
    a, b = looks.metrics, pole.metrics
    assert a["occlusion.object_filled_recall"] == 0.0 and a["occlusion.context_filled_recall"] == 1.0
    assert b["occlusion.object_filled_recall"] == 1.0 and b["occlusion.context_filled_recall"] == 0.0
    assert a["attribution.object_share_median"] > 0.99 and b["attribution.object_share_median"] < 0.01
    assert not looks.relies_on_context and looks.verdict.startswith("looks at the object: recall with the lights")
    assert pole.relies_on_context and pole.verdict.startswith("relies on context: recall with the lights filled 1.00")
    assert "context_examples" in C.figures(pole)
    plt.close("all")


def test_detector_attribution_follows_the_logits_at_the_light_cells_only():
    """A linear detector whose every cell reads its own 4x4 pixels: only the lights' cells are the target, so
    all attribution lies in the boxes (a target over the whole map would spread it over the frame)."""
    class CellReader(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x.mean(1, keepdim=True), 4)

    result = C.audit(CellReader(), "tl_detector", _frames(3), C.Options(dilate=0, examples=0))
    m = result.metrics
    assert m["attribution.object_share_median"] == pytest.approx(1.0)
    assert m["attribution.area_share_median"] == pytest.approx(2 * 16 / FRAME ** 2)
    plt.close("all")


# ---------------------------------------------------------------------------------------------- verdict

def _metrics(intact, obj, ctx, focus, share=0.1, area=0.1, changed=None):
    m = {"rows": 10, "rows_without_object": 0, "occlusion.intact_accuracy": intact,
         "occlusion.object_filled_accuracy": obj, "occlusion.context_filled_accuracy": ctx,
         "attribution.focus_median": focus, "attribution.object_share": share, "attribution.area_share": area}
    if changed:
        m["occlusion.object_filled_changed"], m["occlusion.context_filled_changed"] = changed
    return m


def test_verdict_rules():
    text, relies = C.verdict(_metrics(0.83, 0.81, 0.22, 1.2, 0.09, 0.06), "road_frames")
    assert relies and text == ("relies on context: accuracy with the lanes filled 0.81 vs 0.83 intact, with the "
                               "context filled 0.22; 9% of attribution on the lanes, which cover 6% of the image "
                               "(focus 1.2, agrees)")
    assert C.verdict(_metrics(0.9, 0.85, 0.3, float("nan")), "tl_crops")[1]          # occlusion alone decides
    text, relies = C.verdict(_metrics(0.9, 0.85, 0.3, 3.0), "tl_crops")              # attribution disagrees
    assert relies and text.startswith("relies on context") and "disagrees" in text    # ... and never overrules
    text, relies = C.verdict(_metrics(0.9, 0.3, 0.88, 4.0), "tl_crops")
    assert not relies and text.startswith("looks at the object") and "which covers" in text and "agrees" in text
    text, relies = C.verdict(_metrics(0.9, 0.5, 0.6, 1.0), "road_frames")            # both cost a lot
    assert not relies and text.startswith("uses both the lanes and its context")
    text, relies = C.verdict(_metrics(0.5, 0.49, 0.48, 1.0), "road_frames")
    assert not relies and text.startswith("inconclusive")
    # a net misled by its context scores *better* with the context filled: no drop, but its predictions move
    text, relies = C.verdict(_metrics(0.24, 0.16, 0.41, 3.5, changed=(0.2, 0.7)), "road_frames")
    assert relies and "filling the lanes changes 20% of the predictions, filling the context 70%" in text
    text, relies = C.verdict(_metrics(0.24, 0.16, 0.41, 3.5, changed=(0.6, 0.1)), "road_frames")
    assert not relies and text.startswith("looks at the object")
    text, relies = C.verdict(_metrics(0.9, 0.85, 0.3, 1.0, changed=(0.5, 0.6)), "road_frames")
    assert not relies and text.startswith("uses both")          # the changes decide, not the drops
    text, relies = C.verdict(_metrics(float("nan"), float("nan"), float("nan"), float("nan")), "tl_crops")
    assert not relies and text.startswith("no verdict")
