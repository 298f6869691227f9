"""Tests of the synthetic road-scene generator (small frames, so the whole file runs in seconds)."""
from __future__ import annotations

import collections
import dataclasses

import cv2
import numpy as np
import pytest

from pipeline.data.records import Box
from pipeline.vocab import DISTANCES, TL_STATES
from pipeline.data.synth import (
    LANE_CLASSES, TIMES_OF_DAY, Frame, SynthConfig, distance_bucket, render_frame,
)

SMALL = SynthConfig(width=320, height=180, frames_per_sequence=1)   # one frame per sequence: diverse samples
TINY = SynthConfig(width=96, height=64, frames_per_sequence=1)      # for context-only statistics


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return [render_frame(3, i, SMALL) for i in range(120)]


def _contexts_by_class(context_bias: float, sequences: int = 60) -> dict:
    """Lane class -> the set of (time_of_day, scenery) its sequences were drawn in."""
    cfg = dataclasses.replace(TINY, context_bias=context_bias)
    seen = collections.defaultdict(set)
    for i in range(sequences):
        frame = render_frame(11, i, cfg)
        seen[frame.lane_class].add((frame.context["time_of_day"], frame.context["scenery"]))
    return seen


# ---- config


def test_config_defaults_and_list_buckets():
    cfg = SynthConfig()
    assert (cfg.width, cfg.height, cfg.frames_per_sequence) == (1280, 720, 8)
    assert SynthConfig(distance_buckets=[0.05, 0.1]).distance_buckets == (0.05, 0.1)


@pytest.mark.parametrize("name, value", [
    ("width", 0), ("width", 32.5), ("width", True), ("height", 10), ("height", 10_000),
    ("frames_per_sequence", 0), ("context_bias", 1.5), ("context_bias", -0.1), ("context_bias", float("nan")),
    ("light_prob", 2), ("max_lights", -1), ("max_lights", 17),
    ("distance_buckets", (0.09, 0.04)), ("distance_buckets", (0.0, 0.5)), ("distance_buckets", (0.5, 1.0)),
    ("distance_buckets", (0.04,)), ("distance_buckets", "ab"),
])
def test_config_rejects_bad_field(name, value):
    with pytest.raises(ValueError) as err:
        SynthConfig(**{name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and "must be" in message


@pytest.mark.parametrize("seed, index", [(-1, 0), (0, -5), (0, 1.5), (True, 0)])
def test_render_rejects_bad_seed_or_index(seed, index):
    with pytest.raises(ValueError):
        render_frame(seed, index, TINY)


def test_distance_bucket_thresholds():
    assert distance_bucket(3.99, 100) == "far"
    assert distance_bucket(4.0, 100) == "medium"
    assert distance_bucket(8.99, 100) == "medium"
    assert distance_bucket(9.0, 100) == "near"
    assert distance_bucket(10, 100, buckets=(0.2, 0.5)) == "far"
    assert distance_bucket(30, 100, buckets=(0.2, 0.5)) == "medium"
    with pytest.raises(ValueError):
        distance_bucket(5, 0)


# ---- determinism


def test_same_arguments_give_same_bytes_in_any_order():
    first = render_frame(5, 17, SMALL)
    render_frame(5, 3, SMALL)                          # rendering something else in between changes nothing
    again = render_frame(5, 17, SMALL)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.lane_mask.tobytes() == again.lane_mask.tobytes()
    assert first.light_mask.tobytes() == again.light_mask.tobytes()
    assert first.boxes == again.boxes and first.context == again.context


def test_other_index_or_seed_differs():
    base = render_frame(5, 17, SMALL).image
    assert not np.array_equal(base, render_frame(5, 18, SMALL).image)
    assert not np.array_equal(base, render_frame(6, 17, SMALL).image)


def test_shapes_dtypes_and_ids():
    cfg = SynthConfig(width=200, height=120, frames_per_sequence=4)
    frame = render_frame(9, 13, cfg)
    assert frame.image.shape == (120, 200, 3) and frame.image.dtype == np.uint8
    assert frame.lane_mask.shape == (120, 200) and frame.lane_mask.dtype == np.uint8
    assert frame.light_mask.shape == (120, 200) and frame.light_mask.dtype == np.uint8
    assert set(np.unique(frame.lane_mask)) <= {0, 1}
    assert frame.sequence_id == "synth-9-000003" and frame.frame_id == "synth-9-00000013"
    assert frame.lane_class in LANE_CLASSES
    assert all(isinstance(b, Box) for b in frame.boxes) and len(frame.distances) == len(frame.boxes)
    ctx = frame.context
    assert ctx["time_of_day"] in TIMES_OF_DAY and ctx["weather"] in ("clear", "fog", "rain")
    assert isinstance(ctx["exposure"], float) and isinstance(ctx["curvature"], float)


# ---- sequences / context


def test_frames_of_a_sequence_share_context_but_differ():
    cfg = SynthConfig(width=160, height=90, frames_per_sequence=4)
    sequences = [[render_frame(2, s * 4 + k, cfg) for k in range(4)] for s in range(10)]
    for seq in sequences:
        assert len({f.sequence_id for f in seq}) == 1
        for key in ("time_of_day", "weather", "scenery", "curvature"):
            assert len({f.context[key] for f in seq}) == 1, key
        assert len({f.lane_class for f in seq}) == 1
        assert len({f.image.tobytes() for f in seq}) == 4           # camera jitter, motion, cars
    assert len({seq[0].lane_class for seq in sequences}) >= 3
    assert len({seq[0].context["time_of_day"] for seq in sequences}) >= 2
    assert len({seq[0].sequence_id for seq in sequences}) == 10


def test_full_context_bias_ties_context_to_lane_class():
    seen = _contexts_by_class(1.0)
    assert set(seen) == set(LANE_CLASSES)
    for lane_class, contexts in seen.items():
        assert {time for time, _ in contexts} == {TIMES_OF_DAY[LANE_CLASSES.index(lane_class) % 3]}
        assert len(contexts) == 1
    assert len(set.union(*seen.values())) == len(LANE_CLASSES)          # the context identifies the class


def test_no_context_bias_leaves_context_free():
    seen = _contexts_by_class(0.0)
    times = {c: {time for time, _ in contexts} for c, contexts in seen.items()}
    assert max(len(t) for t in times.values()) >= 2
    assert sum(len(t) for t in times.values()) > len(times)      # time of day is not a function of the class
    assert sum(len(contexts) for contexts in seen.values()) >= 2 * len(seen)


def test_every_lane_class_appears(frames):
    counts = collections.Counter(f.lane_class for f in frames)
    assert set(counts) == set(LANE_CLASSES)
    assert min(counts.values()) >= 5


# ---- lanes


def test_lane_mask_matches_class(frames):
    for f in frames:
        if f.lane_class == "none":
            assert f.lane_mask.sum() == 0
        else:
            assert f.lane_mask.sum() >= 20, f.frame_id


def test_lane_markings_lie_on_the_road_and_stand_out(frames):
    for f in frames:
        if f.lane_class == "none":
            continue
        ys, _ = np.nonzero(f.lane_mask)
        assert ys.min() >= f.context["horizon"] * f.image.shape[0] - 3       # below the horizon
        grey = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        ring = cv2.dilate(f.lane_mask, np.ones((5, 5), np.uint8)) & (1 - f.lane_mask)
        assert grey[f.lane_mask == 1].mean() > grey[ring == 1].mean() + 10, f.frame_id


def test_yellow_classes_paint_yellow_and_white_classes_white(frames):
    for f in frames:
        if f.lane_class == "none" or f.context["time_of_day"] != "day" or f.context["weather"] != "clear":
            continue
        r, g, b = (f.image[..., c][f.lane_mask == 1].astype(float).mean() for c in range(3))
        if "yellow" in f.lane_class:
            assert r > b + 40, f.frame_id
        else:
            assert abs(r - b) < 25, f.frame_id


# ---- lights


def test_boxes_inside_image_and_consistent_with_light_mask(frames):
    for f in frames:
        height, width = f.light_mask.shape
        assert f.light_mask.max() <= len(f.boxes)
        for k, box in enumerate(f.boxes):
            assert 0 <= box.x_min < box.x_max <= width and 0 <= box.y_min < box.y_max <= height
            assert box.label in TL_STATES
            ys, xs = np.nonzero(f.light_mask == k + 1)
            area = (box.x_max - box.x_min) * (box.y_max - box.y_min)
            assert 0 < len(xs) <= area
            assert xs.min() >= box.x_min and xs.max() < box.x_max
            assert ys.min() >= box.y_min and ys.max() < box.y_max
            if box.occluded:
                assert len(xs) < area
            else:
                assert len(xs) == area
                assert abs(xs.min() - box.x_min) <= 1 and abs(xs.max() + 1 - box.x_max) <= 1
                assert abs(ys.min() - box.y_min) <= 1 and abs(ys.max() + 1 - box.y_max) <= 1


def test_distances_states_and_occlusion_are_all_represented(frames):
    distances = collections.Counter(d for f in frames for d in f.distances)
    states = collections.Counter(b.label for f in frames for b in f.boxes)
    for f in frames:
        for box, dist in zip(f.boxes, f.distances):
            assert dist == distance_bucket(box.y_max - box.y_min, f.image.shape[0], SMALL.distance_buckets)
    total = sum(distances.values())
    assert set(distances) == set(DISTANCES)
    assert all(n > 0.2 * total for n in distances.values()), distances
    assert set(states) == set(TL_STATES)
    occluded = sum(b.occluded for f in frames for b in f.boxes)
    assert 0.05 * total < occluded < 0.6 * total
    assert 0.6 < sum(bool(f.boxes) for f in frames) / len(frames) < 0.98     # light_prob = 0.85


def test_lit_lens_is_the_brightest_part_of_the_housing(frames):
    checked = 0
    for f in frames:
        grey = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        for box in f.boxes:
            x0, y0, x1, y1 = (int(v) for v in (box.x_min, box.y_min, box.x_max, box.y_max))
            if box.occluded or box.label == "off" or y1 - y0 < 8:
                continue
            housing = grey[y0:y1, x0:x1]
            thirds = np.array_split(housing, 3, axis=1 if x1 - x0 > y1 - y0 else 0)
            lens = ("red", "yellow", "green").index(box.label)          # top to bottom / left to right
            assert int(np.argmax([t.mean() for t in thirds])) == lens, f.frame_id
            checked += 1
    assert checked >= 20


def test_light_count_follows_config():
    none = SynthConfig(width=160, height=90, frames_per_sequence=1, light_prob=0.0)
    one = SynthConfig(width=320, height=180, frames_per_sequence=1, light_prob=1.0, max_lights=1)
    for i in range(15):
        f = render_frame(4, i, none)
        assert f.boxes == [] and f.light_mask.max() == 0
        assert len(render_frame(4, i, one).boxes) == 1


def test_custom_distance_buckets_are_used():
    cfg = SynthConfig(width=320, height=180, frames_per_sequence=1, distance_buckets=(0.06, 0.12))
    seen = collections.Counter()
    for i in range(40):
        f = render_frame(8, i, cfg)
        for box, dist in zip(f.boxes, f.distances):
            assert dist == distance_bucket(box.y_max - box.y_min, 180, (0.06, 0.12))
            seen[dist] += 1
    assert set(seen) == set(DISTANCES)
