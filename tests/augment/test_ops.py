"""Tests of the augmentation ops: geometry keeps labels on their objects, flips rename, frequency filters
remove what they should, context pastes keep the object, pixel ops keep everything but the pixels."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.augment import FLIP_LABELS, OPS, Sample
from pipeline.augment import ops
from pipeline.vocab import TL_STATES
from pipeline.data.synth import LANE_CLASSES
from tests.augment import LIGHT_FRAMES, frame, sample_of

# Drawn values for each geometric op, over more than the default ranges.
GEOMETRIC = {
    "hflip": {},
    "crop_rescale": {"scale": st.floats(0.3, 1.0)},
    "rotate": {"angle": st.floats(-30.0, 30.0)},
    "perspective": {"distortion": st.floats(0.0, 0.12)},
}
PIXEL_OPS = [name for name, spec in OPS.items() if spec.kind in ("photometric", "noise", "frequency")]
# Clearly non-identity settings of every pixel op.
STRONG = {
    "brightness": {"factor": 1.3}, "contrast": {"factor": 1.4}, "saturation": {"factor": 1.6},
    "hue": {"shift": 30.0}, "gamma": {"gamma": 1.5}, "blur": {"sigma": 1.5}, "jpeg": {"quality": 50},
    "gaussian_noise": {"sigma": 6.0}, "shot_noise": {"photons": 40.0}, "salt_pepper": {"amount": 0.02},
    "freq_lowpass": {"cutoff": 0.3}, "freq_highpass": {"cutoff": 0.05}, "freq_bandpass": {"low": 0.05, "high": 0.5},
}
seeds = st.integers(0, 2 ** 32 - 1)


def run(name: str, sample: Sample, seed: int = 0, **params):
    return OPS[name](sample, np.random.default_rng(seed), **params)


def pixel_bbox(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return len(xs), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------------------ registry

def test_registry_lists_every_op_of_the_brief_with_sane_defaults():
    expected = {"hflip", "crop_rescale", "rotate", "perspective", "brightness", "contrast", "saturation", "hue",
                "gamma", "blur", "jpeg", "gaussian_noise", "salt_pepper", "shot_noise", "freq_lowpass",
                "freq_highpass", "freq_bandpass", "cutout", "occluder", "context_paste"}
    assert set(OPS) == expected
    for name, spec in OPS.items():
        assert spec.name == name and callable(getattr(ops, name))
        for pname, param in spec.params.items():
            assert param.check(pname, list(param.default)) == tuple(param.default)


def test_ops_reject_unknown_and_out_of_domain_parameters():
    sample = sample_of(frame(LIGHT_FRAMES[0]))
    with pytest.raises(ValueError, match=r"unknown parameter 'angel' for rotate \(valid: angle\)"):
        ops.rotate(sample, np.random.default_rng(0), angel=3)
    with pytest.raises(ValueError, match="outside the allowed domain"):
        ops.rotate(sample, np.random.default_rng(0), angle=[-90, 0])
    with pytest.raises(ValueError, match="inverted"):
        ops.brightness(sample, np.random.default_rng(0), factor=[1.2, 0.8])


def test_sample_validates_its_fields():
    image = np.zeros((8, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="image"):
        Sample(image.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        Sample(image, np.zeros((2, 4)), ["red"])
    with pytest.raises(ValueError, match="mask"):
        Sample(image, mask=np.zeros((10, 8), np.uint8))
    assert Sample(image, [[1, 2, 3, 4]], ["red"]).boxes.dtype == np.float32


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_leaves_its_input_alone_and_reports_json(name):
    sample = sample_of(frame(LIGHT_FRAMES[3]))
    before = {k: np.copy(getattr(sample, k)) for k in ("image", "boxes", "mask", "instance_mask")}
    labels = list(sample.labels)
    out, drawn = run(name, sample, seed=1, background=frame(1).image) if OPS[name].takes_background \
        else run(name, sample, seed=1)
    for key, value in before.items():
        assert np.array_equal(getattr(sample, key), value), key
    assert sample.labels == labels
    assert isinstance(out, Sample) and out.image.shape == sample.image.shape and out.image.dtype == np.uint8
    json.dumps(drawn)
    again, drawn_again = (run(name, sample, seed=1, background=frame(1).image) if OPS[name].takes_background
                          else run(name, sample, seed=1))
    assert np.array_equal(again.image, out.image) and drawn_again == drawn


# ---------------------------------------------------------------------------------------- geometric

@pytest.mark.parametrize("name", GEOMETRIC)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_geometric_ops_keep_each_box_on_its_object_pixels(name, data):
    index = data.draw(st.sampled_from(LIGHT_FRAMES), "frame")
    params = {k: data.draw(v, k) for k, v in GEOMETRIC[name].items()}
    src = frame(index)
    out, _ = run(name, sample_of(src), data.draw(seeds, "seed"), **params)

    assert len(out.boxes) == len(out.labels) <= len(src.boxes)
    assert int(out.instance_mask.max()) <= len(out.boxes)          # dropped boxes took their ids along
    assert np.all(out.boxes[:, 2] - out.boxes[:, 0] >= 1) and np.all(out.boxes[:, 3] - out.boxes[:, 1] >= 1)
    assert np.all(out.boxes >= 0) and np.all(out.boxes[:, [2, 3]] <= (320, 180))
    for k, (box, label) in enumerate(zip(out.boxes, out.labels)):
        count, bbox = pixel_bbox(out.instance_mask == k + 1)
        if not count:
            continue
        assert box[0] - 1 <= bbox[0] and box[1] - 1 <= bbox[1], (box, bbox)
        assert bbox[2] <= box[2] + 1 and bbox[3] <= box[3] + 1, (box, bbox)
        # Boxes are amodal: only a fully visible light's box must hug its pixels after hflip / crop; after a
        # rotation or perspective warp a box is the bounding box of its pixels whenever it had any.
        fully_visible = not src.boxes[int(label[2:])].occluded
        if count >= 20 and (fully_visible or name in ("rotate", "perspective")):
            assert iou(box, bbox) >= 0.5, (box, bbox)


@pytest.mark.parametrize("name", GEOMETRIC)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_geometric_ops_move_image_and_masks_together(name, data):
    """Paint the image with the instance ids (x 50) and put in ``mask`` where the ids are constant over a
    3x3 neighbourhood: where the warped mask says so, the bilinear image must equal the nearest-neighbour ids."""
    ids = frame(data.draw(st.sampled_from(LIGHT_FRAMES), "frame")).light_mask
    square, outside = np.ones((3, 3), np.uint8), {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    flat = (cv2.erode(ids, square, **outside) == cv2.dilate(ids, square, **outside)).view(np.uint8)
    painted = Sample(np.repeat((ids * 50)[..., None], 3, 2), mask=flat, instance_mask=ids)
    out, _ = run(name, painted, data.draw(seeds, "seed"), **{k: data.draw(v, k) for k, v in GEOMETRIC[name].items()})
    checked = out.mask == 1
    assert checked.mean() > 0.5
    assert np.abs(out.image[..., 0].astype(int) - out.instance_mask * 50)[checked].max() <= 1


@settings(max_examples=30, deadline=None)
@given(index=st.sampled_from(LIGHT_FRAMES), scale=st.floats(0.2, 1.0), seed=seeds)
def test_crop_rescale_scales_and_clips_boxes_and_drops_those_outside(index, scale, seed):
    sample = sample_of(frame(index))
    out, drawn = run("crop_rescale", sample, seed, scale=scale)
    x, y, w, h = drawn["x"], drawn["y"], drawn["width"], drawn["height"]
    expected = (sample.boxes - (x, y, x, y)) * (320 / w, 180 / h, 320 / w, 180 / h)
    expected = np.clip(expected, 0, (320, 180, 320, 180))
    keep = (expected[:, 2] - expected[:, 0] >= 1) & (expected[:, 3] - expected[:, 1] >= 1)
    np.testing.assert_allclose(out.boxes, expected[keep], atol=1e-3)
    assert out.labels == [label for label, k in zip(sample.labels, keep) if k]


def test_rotate_without_instance_mask_boxes_the_rotated_corners():
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:50, 60:100] = 255
    sample = Sample(image, [[60, 30, 100, 50]], ["obj"])
    out, drawn = run("rotate", sample, angle=30.0)
    assert drawn == {"angle": 30.0}
    _, bbox = pixel_bbox(out.image[..., 0] > 128)
    box = out.boxes[0]
    assert box[0] - 1 <= bbox[0] and box[1] - 1 <= bbox[1] and bbox[2] <= box[2] + 1 and bbox[3] <= box[3] + 1
    assert iou(box, bbox) > 0.9
    # corners of a 40 x 20 rectangle rotated by 30 degrees span 40 cos + 20 sin by 40 sin + 20 cos
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    np.testing.assert_allclose((box[2] - box[0], box[3] - box[1]), (40 * c + 20 * s, 40 * s + 20 * c), atol=1e-3)


# --------------------------------------------------------------------------------------------- flip

def test_flip_labels_mirror_arrows_only_lane_classes_keep_their_meaning():
    assert all(FLIP_LABELS[FLIP_LABELS[name]] == name for name in FLIP_LABELS)        # an involution
    for state in TL_STATES:
        assert FLIP_LABELS[state] == state
        assert FLIP_LABELS[f"{state}_left"] == f"{state}_right"
    for lane_class in LANE_CLASSES:      # named outside-in: a mirror keeps which line is nearest the car
        assert FLIP_LABELS[lane_class] == lane_class

    image = np.zeros((40, 60, 3), np.uint8)
    sample = Sample(image, [[0, 0, 10, 20], [5, 5, 6, 6], [10, 10, 60, 40], [1, 1, 2, 2]],
                    ["red_left", "green_right", "yellow", "no_such_label"], label="solid_dashed_yellow")
    out, drawn = run("hflip", sample)
    assert drawn == {}
    assert out.labels == ["red_right", "green_left", "yellow", "no_such_label"]
    assert out.label == "solid_dashed_yellow"
    np.testing.assert_array_equal(out.boxes, [[50, 0, 60, 20], [54, 5, 55, 6], [0, 10, 50, 40], [58, 1, 59, 2]])
    assert run("hflip", Sample(image, label="double_solid_yellow"))[0].label == "double_solid_yellow"


@settings(max_examples=20, deadline=None)
@given(index=st.sampled_from(LIGHT_FRAMES), states=st.lists(st.sampled_from(sorted(FLIP_LABELS)), min_size=4,
                                                          max_size=4))
def test_hflip_twice_is_the_identity(index, states):
    src = frame(index)
    sample = sample_of(src, labels=states[:len(src.boxes)])
    once, _ = run("hflip", sample)
    assert np.array_equal(once.image, sample.image[:, ::-1])
    assert np.array_equal(once.instance_mask, sample.instance_mask[:, ::-1])
    twice, _ = run("hflip", once)
    for key in ("image", "boxes", "mask", "instance_mask"):
        assert np.array_equal(getattr(twice, key), getattr(sample, key)), key
    assert twice.labels == sample.labels and twice.label == sample.label


# ---------------------------------------------------------------------------------------- frequency

def band_energy(image: np.ndarray, outside: np.ndarray) -> float:
    """Energy (sum of |F|^2 over channels) of ``image`` in the frequency bins where ``outside`` is True."""
    spectra = np.fft.fft2(image.astype(np.float64), axes=(0, 1))
    return float((np.abs(spectra) ** 2)[outside].sum())


def rounding_floor(image: np.ndarray, outside: np.ndarray) -> float:
    """The energy that storing a filtered image as uint8 adds in the bins ``outside``: rounding errors are
    white noise of variance 1/12 per value, i.e. N / 12 per bin and channel (N pixels)."""
    height, width, channels = image.shape
    return float(outside.sum()) * channels * height * width / 12


def radius(height: int, width: int) -> np.ndarray:
    fy, fx = 2 * np.fft.fftfreq(height)[:, None], 2 * np.fft.fftfreq(width)[None, :]
    return np.sqrt(fy ** 2 + fx ** 2)


def texture(seed: int) -> np.ndarray:
    """Rough noise: energy at every frequency, far above the uint8 rounding floor."""
    return np.random.default_rng(seed).integers(0, 256, (90, 160, 3), dtype=np.uint8)


images = st.one_of(st.integers(0, 39).map(lambda i: frame(i).image), seeds.map(texture))


@settings(max_examples=40, deadline=None)
@given(image=images, kind=st.sampled_from(["freq_lowpass", "freq_highpass", "freq_bandpass"]),
       cut_a=st.floats(0.03, 1.0), cut_b=st.floats(0.03, 1.0))
def test_frequency_filters_remove_the_energy_outside_their_band(image, kind, cut_a, cut_b):
    """What is left outside the band is < 1% of the input's energy there, beyond the rounding floor of
    uint8 output (allowed twice over, for the clipping of overshoots next to bright or dark pixels: the
    synthetic frames are smooth, so their sensor noise is only ~50x that floor)."""
    r = radius(*image.shape[:2])
    dc = r == 0
    if kind == "freq_lowpass":
        out, drawn = run(kind, Sample(image), cutoff=cut_a)
        outside = r > drawn["cutoff"]
    elif kind == "freq_highpass":
        out, drawn = run(kind, Sample(image), cutoff=cut_a)
        outside = (r < drawn["cutoff"]) & ~dc
    else:
        out, drawn = run(kind, Sample(image), low=min(cut_a, cut_b), high=max(cut_a, cut_b))
        outside = ((r < drawn["low"]) | (r > drawn["high"])) & ~dc
    assert out.image.dtype == np.uint8 and out.image.shape == image.shape
    if outside.any():
        left = band_energy(out.image, outside)
        assert left < 0.01 * band_energy(image, outside) + 2 * rounding_floor(image, outside)
    if kind != "freq_lowpass":     # DC is kept: the mean brightness stays (up to rounding and clipping)
        assert abs(out.image.mean() - image.mean()) < 0.1 * image.mean() + 2


def test_frequency_filters_keep_their_pass_band():
    image = frame(2).image
    r = radius(*image.shape[:2])
    out, _ = run("freq_lowpass", Sample(image), cutoff=0.4)
    inside = r <= 0.4
    assert band_energy(out.image, inside) == pytest.approx(band_energy(image, inside), rel=0.02)
    out, _ = run("freq_highpass", Sample(image), cutoff=0.05)
    inside = r >= 0.05
    assert band_energy(out.image, inside) == pytest.approx(band_energy(image, inside), rel=0.2)


# ------------------------------------------------------------------------------------------ context

def object_region(sample: Sample) -> np.ndarray:
    region = sample.mask > 0
    for x0, y0, x1, y1 in sample.boxes.astype(int):
        region[y0:y1, x0:x1] = True
    return region


@settings(max_examples=20, deadline=None)
@given(index=st.sampled_from(LIGHT_FRAMES), other=st.integers(0, 39), margin=st.integers(0, 4), seed=seeds)
def test_context_paste_keeps_the_object_and_replaces_the_background(index, other, margin, seed):
    sample = sample_of(frame(index))
    background = frame(other).image
    out, drawn = run("context_paste", sample, seed, background=background, margin=margin)
    assert drawn == {"margin": margin}
    region = object_region(sample)
    assert np.array_equal(out.image[region], sample.image[region])
    square = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    far = cv2.dilate(region.view(np.uint8), square) == 0                 # farther than margin from the object
    assert np.array_equal(out.image[far], background[far])
    assert np.all((out.image == sample.image) | (out.image == background))
    for key in ("boxes", "mask", "instance_mask"):
        assert getattr(out, key) is getattr(sample, key)
    assert out.labels == sample.labels and out.label == sample.label


def test_context_paste_pastes_lane_markings_and_resizes_the_background():
    road = frame(1)
    assert road.lane_mask.any()
    sample = Sample(road.image, mask=road.lane_mask, label=road.lane_class)
    big = cv2.resize(frame(2).image, (640, 360), interpolation=cv2.INTER_NEAREST)
    out, _ = run("context_paste", sample, background=big, margin=0)
    on = road.lane_mask > 0
    assert np.array_equal(out.image[on], road.image[on])
    assert np.array_equal(out.image[~on], frame(2).image[~on])


def test_context_paste_skips_without_background_or_object():
    sample = sample_of(frame(LIGHT_FRAMES[0]))
    out, drawn = run("context_paste", sample)
    assert out is sample and drawn == {"skipped": "no background"}
    crop = Sample(frame(0).image)
    out, drawn = run("context_paste", crop, background=frame(1).image)
    assert out is crop and drawn == {"skipped": "no object"}
    with pytest.raises(ValueError, match="background"):
        run("context_paste", sample, background=frame(1).image[..., 0])


# ---------------------------------------------------------------------------------------- occlusion

@pytest.mark.parametrize("name", ["cutout", "occluder"])
def test_occlusion_ops_paint_over_pixels_and_clear_the_masks_there(name):
    src = frame(LIGHT_FRAMES[4])
    sample = Sample(src.image, sample_of(src).boxes, sample_of(src).labels, np.ones_like(src.lane_mask),
                    np.full_like(src.light_mask, 1))
    out, drawn = run(name, sample, seed=3, count=3, size=0.3)
    covered = out.mask == 0
    assert covered.any() and np.array_equal(covered, out.instance_mask == 0)
    assert np.array_equal(out.image[~covered], sample.image[~covered])
    assert np.array_equal(out.boxes, sample.boxes) and out.labels == sample.labels
    assert len(drawn["rects" if name == "cutout" else "shapes"]) == 3
    if name == "cutout":
        x0, y0, x1, y1 = drawn["rects"][0]
        assert np.all(out.image[y0:y1, x0:x1] == drawn["colour"])


# ------------------------------------------------------------------------------------ pixel ops

@pytest.mark.parametrize("name", PIXEL_OPS)
def test_pixel_ops_change_only_the_pixels(name):
    sample = sample_of(frame(LIGHT_FRAMES[2]))
    for params in ({}, STRONG[name]):
        out, drawn = run(name, sample, seed=7, **params)
        assert out.image.dtype == np.uint8 and out.image.shape == sample.image.shape
        for key in ("boxes", "mask", "instance_mask"):
            assert getattr(out, key) is getattr(sample, key), key
        assert out.labels == sample.labels and out.label == sample.label
    assert not np.array_equal(out.image, sample.image)
    assert set(drawn) == set(OPS[name].params)


@settings(max_examples=20, deadline=None)
@given(index=st.integers(0, 39), quality=st.integers(50, 100))
def test_jpeg_changes_the_image_but_stays_close(index, quality):
    image = frame(index).image
    out, drawn = run("jpeg", Sample(image), quality=quality)
    assert drawn == {"quality": quality}
    mse = np.mean((out.image.astype(np.float64) - image) ** 2)
    assert mse > 0
    assert 10 * np.log10(255 ** 2 / mse) > 25


def test_gaussian_noise_has_the_drawn_standard_deviation():
    grey = Sample(np.full((200, 300, 3), 128, np.uint8))
    out, drawn = run("gaussian_noise", grey, seed=1, sigma=[5.0, 9.0])
    diff = out.image.astype(np.float64) - 128
    assert 5.0 <= drawn["sigma"] <= 9.0
    assert abs(diff.mean()) < 0.1 and diff.std() == pytest.approx(drawn["sigma"], rel=0.05)


@pytest.mark.parametrize("value", [10, 64, 128])   # brighter: the upper tail saturates at 255
def test_shot_noise_is_poisson_in_photons(value):
    photons = 50.0
    flat = Sample(np.full((200, 300, 3), value, np.uint8))
    out, _ = run("shot_noise", flat, seed=2, photons=photons)
    counts = out.image.astype(np.float64) / 255 * photons     # back to photon counts (up to rounding)
    mean = value / 255 * photons
    assert counts.mean() == pytest.approx(mean, rel=0.03)
    assert counts.var() == pytest.approx(mean, rel=0.1)      # Poisson: variance == mean
    black, _ = run("shot_noise", Sample(np.zeros((20, 30, 3), np.uint8)), photons=photons)
    assert not black.image.any()                             # no light, no photons


def test_salt_pepper_sets_about_the_drawn_fraction_to_black_or_white():
    grey = Sample(np.full((200, 300, 3), 128, np.uint8))
    out, drawn = run("salt_pepper", grey, seed=4, amount=0.02)
    changed = np.any(out.image != 128, axis=2)
    assert changed.mean() == pytest.approx(1 - np.exp(-0.02), rel=0.1)
    assert set(np.unique(out.image[changed])) == {0, 255}
