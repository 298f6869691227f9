"""Deterministic synthetic road scenes: the pipeline's embedded default data.

:func:`render_frame` draws one dash-cam style frame from ``(seed, index, cfg)`` alone: a sky graded by
time of day, a skyline or hills, a perspective road (straight or curved) with the lane markings of the
sequence's lane class, roadside trees and street lamps, cars, traffic lights on poles, mast arms or span
wires, then weather, exposure and sensor noise. Next to the image it returns pixel-exact masks of the
visible lane-marking and traffic-light pixels, one tight :class:`~pipeline.data.records.Box` per light
and the context the frame was drawn in.

``frames_per_sequence`` consecutive indices form one sequence (like the frames of one drive): they share
the lane class, time of day, weather, scenery, road geometry and light layout, and differ by camera
jitter, forward motion, cars and light states. ``context_bias`` ties the time of day to the lane class,
(and the scenery to it, so that together they identify the class), which lets a classifier score well by
looking at the sky and the skyline instead of the road.

Everything is pure numpy + OpenCV; every random draw comes from ``np.random.default_rng`` seeded with
``[seed, unit, salt]`` (unit = the frame index or the sequence number), so frames can be rendered in any
order, in any process, with identical bytes.
"""
from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from pipeline.data.records import Box
from pipeline.vocab import LANE_CLASSES, TL_STATES, distance_bucket  # noqa: F401  (the renderer's names)
TIMES_OF_DAY = ("day", "dusk", "night")
WEATHERS = ("clear", "fog", "rain")           # context["weather"]
SCENERIES = ("urban", "suburban", "rural")    # context["scenery"]

# Seeding salts: one independent random stream per aspect, so e.g. the number of cars never shifts the lights.
_SALT_CONTEXT, _SALT_SCENERY, _SALT_FACADES, _SALT_LIGHTS = 11, 12, 13, 14
_SALT_CAMERA, _SALT_PAINT, _SALT_CARS, _SALT_LIGHT_STATE, _SALT_SENSOR = 21, 22, 23, 24, 25
_SALT_TWIN = 31

_SHIFT = 4                      # fractional bits of the fixed-point coordinates given to cv2 drawing calls
_Z_ROAD, _Z_MARK = 200.0, 130.0 # metres: how far the road / its markings are drawn
_MIN_LIGHT_PX = 5               # smallest traffic-light housing drawn (its short side is then 2 px)
_JITTER = 0.006                 # camera yaw/pitch jitter per frame, as a fraction of the image size
_DRIFT = 0.003                  # extra per-light drift per frame, as a fraction of the image size

# Lane class -> its lines: (ego-lane boundary -1 left / +1 right, offset from it in m, pattern, paint).
_MARKINGS = {
    "none": (),
    "solid_white": ((-1, 0.0, "solid", "white"), (1, 0.0, "solid", "white")),
    "dashed_white": ((-1, 0.0, "dashed", "white"), (1, 0.0, "dashed", "white")),
    "double_solid_yellow": ((-1, -0.13, "solid", "yellow"), (-1, 0.13, "solid", "yellow")),
    "solid_dashed_yellow": ((-1, -0.13, "solid", "yellow"), (-1, 0.13, "dashed", "yellow")),
    "dashed_yellow": ((-1, 0.0, "dashed", "yellow"),),
}
_PAINT = {"white": (236, 236, 228), "yellow": (238, 184, 40)}
_LENS_LIT = {"red": (255, 50, 35), "yellow": (255, 190, 35), "green": (70, 255, 160)}
_LENSES = ("red", "yellow", "green")                              # top to bottom (left to right)
_LENS_DIM = ((70, 22, 20), (70, 58, 18), (18, 62, 42))            # their colours when unlit
_STATE_WEIGHTS = {"red": 0.34, "yellow": 0.2, "green": 0.32, "off": 0.14}
_STATE_CYCLE = {"green": "yellow", "yellow": "red", "red": "green", "off": "off"}
_CAR_COLOURS = ((200, 200, 205), (30, 30, 35), (150, 20, 25), (40, 60, 120), (120, 120, 125),
                (235, 235, 235), (70, 90, 60), (180, 150, 90))


@dataclass(frozen=True)
class SynthConfig:
    """What to render. Every field is validated; a bad one raises ValueError naming it.

    ``context_bias`` is the probability that a sequence's context is the one tied to its lane class
    (lane class i -> time of day ``TIMES_OF_DAY[i % 3]`` and scenery ``SCENERIES[i // 3]``) rather than
    drawn at random; at 1 the context alone identifies the lane class. ``distance_buckets`` are the
    box-height / image-height thresholds between "far", "medium" and "near" lights.
    """

    width: int = 1280
    height: int = 720
    frames_per_sequence: int = 8
    context_bias: float = 0.0
    light_prob: float = 0.85
    max_lights: int = 4
    distance_buckets: tuple[float, float] = (0.04, 0.09)

    def __post_init__(self):
        _check_int("width", self.width, 64, 8192)
        _check_int("height", self.height, 64, 8192)
        _check_int("frames_per_sequence", self.frames_per_sequence, 1, 1_000_000)
        _check_float("context_bias", self.context_bias, 0.0, 1.0)
        _check_float("light_prob", self.light_prob, 0.0, 1.0)
        _check_int("max_lights", self.max_lights, 0, 16)
        buckets = self.distance_buckets
        valid = "a pair (a, b) with 0 < a < b < 1"
        try:
            a, b = (float(v) for v in buckets)
        except (TypeError, ValueError):
            a = b = math.nan
        if not 0.0 < a < b < 1.0:
            raise ValueError(f"SynthConfig.distance_buckets={buckets!r} is invalid: must be {valid}")
        object.__setattr__(self, "distance_buckets", (a, b))   # accept lists (e.g. from YAML)


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"SynthConfig.{name}={value!r} is invalid: must be an integer in [{lo}, {hi}]")


def _check_float(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= value <= hi:
        raise ValueError(f"SynthConfig.{name}={value!r} is invalid: must be a number in [{lo}, {hi}]")


@dataclass
class Frame:
    """One rendered frame with its labels.

    ``lane_mask`` is 1 on visible lane-marking pixels; ``light_mask`` is k+1 on the visible housing pixels
    of ``boxes[k]``. Boxes are amodal (the whole housing, also when partly covered, then ``occluded``).
    """

    image: np.ndarray                 # (H, W, 3) uint8 RGB
    lane_class: str                   # one of LANE_CLASSES, shared by the sequence
    lane_mask: np.ndarray             # (H, W) uint8
    light_mask: np.ndarray            # (H, W) uint8
    boxes: list[Box]                  # label: one of TL_STATES
    distances: list[str]              # per box, one of DISTANCES
    sequence_id: str
    frame_id: str
    context: dict = field(default_factory=dict)


def render_frame(seed: int, index: int, cfg: SynthConfig = SynthConfig(), *, lane_class: str | None = None,
                 context_of: str | None = None, lanes: bool = True) -> Frame:
    """Render frame ``index`` of the synthetic data set ``seed``; the same arguments give the same bytes.

    The keywords render an intervention on the frame's causes, everything else drawn as without them:
    ``lane_class`` paints the lanes of that class instead of the sequence's own; ``context_of`` sets the time
    of day and the scenery to the context tied to that lane class (:func:`tied_context`) instead of the drawn
    ones; ``lanes=False`` paints no markings at all (an empty lane mask; the label stays the sequence's class).
    A frame and its counterfactual twin (the same ``seed`` and ``index`` with one keyword changed) share the
    camera, road geometry, weather, cars and lights; what the changed cause draws (markings, sky, skyline,
    roadside) differs."""
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid: must be a non-negative integer")
    for name, value in (("lane_class", lane_class), ("context_of", context_of)):
        if value is not None and value not in LANE_CLASSES:
            raise ValueError(f"{name}={value!r} is invalid: must be one of {', '.join(LANE_CLASSES)}")
    seq_no, step = divmod(int(index), cfg.frames_per_sequence)
    seq = _make_sequence(int(seed), seq_no, cfg, lane_class, context_of)
    cam_rng = _rng(seed, index, _SALT_CAMERA)
    dx, dy = cam_rng.uniform(-_JITTER, _JITTER, 2) * (cfg.width, cfg.height)
    cam = replace(seq.camera, cx=seq.camera.cx + dx, horizon=seq.camera.horizon + dy,
                  offset_m=seq.camera.offset_m + cam_rng.uniform(-0.12, 0.12))
    travel = step * seq.speed

    canvas = _Canvas(cfg.height, cfg.width)
    _draw_sky(canvas, seq, cam)
    _draw_skyline(canvas, seq, cam, _rng(seed, seq_no, _SALT_FACADES))
    _draw_ground(canvas, seq, cam)
    _draw_road(canvas, seq, cam)
    if lanes:
        _draw_markings(canvas, seq, cam, travel, _rng(seed, index, _SALT_PAINT))
    cars = _sample_cars(_rng(seed, index, _SALT_CARS), seq)
    _draw_shadows(canvas, seq, cam, travel, cars)
    _draw_objects(canvas, seq, cam, travel, cars)
    lights = _frame_lights(_rng(seed, index, _SALT_LIGHT_STATE), seq, (dx, dy), cfg)
    boxes = _draw_lights(canvas, seq, lights)
    gain = _finish(canvas, seq, _rng(seed, index, _SALT_SENSOR))

    context = dict(seq.context, exposure=round(gain, 4), num_cars=len(cars), num_lights=len(boxes))
    return Frame(
        image=canvas.image,
        lane_class=seq.lane_class,
        lane_mask=canvas.lane,
        light_mask=canvas.light,
        boxes=boxes,
        distances=[distance_bucket(b.y_max - b.y_min, cfg.height, cfg.distance_buckets) for b in boxes],
        sequence_id=f"synth-{seed}-{seq_no:06d}",
        frame_id=f"synth-{seed}-{index:08d}",
        context=context,
    )


# --------------------------------------------------------------------------------------------------
# Sequence context


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera over a road whose centre line bends with constant curvature (x = c*z^2/2)."""

    focal: float            # px
    cx: float               # x of the vanishing point (includes yaw)
    horizon: float          # y of the horizon
    height_m: float
    offset_m: float         # lateral camera position relative to the ego-lane centre
    curvature: float        # 1/m
    image_h: int

    def project(self, u, z, y=0.0):
        """Pixel (x, y) of the point ``u`` m right of the ego-lane centre, ``z`` m ahead, ``y`` m high."""
        z = np.asarray(z, dtype=np.float64)
        x = self.cx + self.focal * (u + 0.5 * self.curvature * z * z - self.offset_m) / z
        return x, self.horizon + self.focal * (self.height_m - y) / z

    @property
    def z_near(self) -> float:
        """Depth of the road point a little below the image bottom."""
        return self.focal * self.height_m / max(1.1 * self.image_h - self.horizon, 1.0)


@dataclass(frozen=True)
class _Palette:
    sky_top: tuple
    sky_bottom: tuple
    ambient: float           # scene brightness multiplier
    tint: tuple              # per-channel light colour
    headlights: float        # extra light on the road near the camera
    windows_lit: float       # probability a window is lit
    stars: bool


_PALETTES = {
    "day": _Palette((70, 125, 215), (185, 210, 238), 1.0, (1.0, 1.0, 1.0), 0.0, 0.0, False),
    "dusk": _Palette((60, 45, 110), (250, 145, 80), 0.62, (1.12, 0.86, 0.78), 0.25, 0.2, False),
    "night": _Palette((3, 5, 16), (22, 26, 46), 0.24, (0.85, 0.9, 1.1), 0.75, 0.45, True),
}


@dataclass
class _Light:
    """One planned traffic light, in the sequence's base camera (before per-frame jitter)."""

    x0: int
    y0: int
    w: int
    h: int
    horizontal: bool
    state: str
    housing: tuple
    support: str             # "pole" | "arm" | "wire"
    support_x: float         # x of the pole (pole, arm); wire: unused
    ground_y: float
    thickness: int
    occluder: str | None = None   # "pole" | "tree" | "sign"
    occ_side: int = 1
    occ_cover: float = 0.3
    occ_colour: tuple = (0, 0, 0)


@dataclass
class _Sequence:
    """Everything frames of one sequence share."""

    lane_class: str
    camera: _Camera
    palette: _Palette
    context: dict
    lane_width: float
    road_left: float
    road_right: float
    paint_wear: float
    dash_len: float
    dash_period: float
    dash_phase: float
    speed: float
    asphalt: tuple
    ground: tuple
    fog: float
    rain: float
    exposure: float          # the sequence's exposure gain; frames vary it by +-5%
    scenery: str
    skyline: list = field(default_factory=list)
    hills: np.ndarray | None = None
    stars: np.ndarray | None = None
    roadside: list = field(default_factory=list)
    shadows: list = field(default_factory=list)
    lights: list = field(default_factory=list)

    def light(self, z) -> np.ndarray:
        """Brightness at depth ``z``: ambient plus headlights near the camera."""
        z = np.asarray(z, dtype=np.float64)
        return self.palette.ambient + self.palette.headlights * np.exp(-z / 28.0)

    def shade(self, colour, light: float | None = None) -> tuple:
        """``colour`` as lit by the scene (``light`` defaults to the ambient light)."""
        light = self.palette.ambient if light is None else float(light)
        c = np.clip(np.asarray(colour, dtype=np.float64) * light * np.asarray(self.palette.tint), 0, 255)
        return tuple(int(v) for v in c)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def tied_context(lane_class: str) -> tuple[str, str]:
    """(time of day, scenery) tied to ``lane_class``: lane class i -> ``TIMES_OF_DAY[i % 3]`` and
    ``SCENERIES[i // 3]``; every lane class has its own pair (rural scenery is tied to none)."""
    i = LANE_CLASSES.index(lane_class)
    return TIMES_OF_DAY[i % 3], SCENERIES[i // 3 % len(SCENERIES)]


def context_class(time_of_day: str, scenery: str) -> str | None:
    """The lane class whose tied context is (``time_of_day``, ``scenery``), or None (rural scenes)."""
    for name in LANE_CLASSES:
        if tied_context(name) == (time_of_day, scenery):
            return name
    return None


def _make_sequence(seed: int, seq_no: int, cfg: SynthConfig, lane_override: str | None = None,
                   context_of: str | None = None) -> _Sequence:
    """Draw the context shared by the frames of sequence ``seq_no``; ``lane_override`` / ``context_of`` (see
    :func:`render_frame`) replace the drawn lane class / time of day and scenery after every draw was made, so
    the random streams, and with them everything else, stay those of the sequence as drawn."""
    rng = _rng(seed, seq_no, _SALT_CONTEXT)
    class_index = int(rng.integers(len(LANE_CLASSES)))
    tied = rng.random() < cfg.context_bias
    uniform_time = int(rng.integers(len(TIMES_OF_DAY)))
    time_of_day = TIMES_OF_DAY[class_index % 3 if tied else uniform_time]
    weather = str(rng.choice(WEATHERS, p=(0.6, 0.2, 0.2)))
    scenery = str(rng.choice(SCENERIES, p=(0.4, 0.35, 0.25)))
    if tied:                 # time of day and scenery together then identify the lane class
        scenery = SCENERIES[class_index // 3 % len(SCENERIES)]
    curvature = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0004, 0.0018) * rng.choice((-1, 1)))
    drawn_yellow = "yellow" in LANE_CLASSES[class_index]
    if lane_override is not None:
        class_index = LANE_CLASSES.index(lane_override)
    if context_of is not None:
        time_of_day, scenery = tied_context(context_of)
    if lane_override is not None or context_of is not None:
        tied = tied_context(LANE_CLASSES[class_index]) == (time_of_day, scenery)
    lane_class = LANE_CLASSES[class_index]

    palette = _PALETTES[time_of_day]
    if weather == "rain":                # overcast: a greyer, darker sky
        grey = np.array((125, 128, 134)) * palette.ambient
        palette = replace(palette, ambient=palette.ambient * 0.8,
                          sky_top=tuple(0.4 * np.array(palette.sky_top) + 0.6 * grey),
                          sky_bottom=tuple(0.4 * np.array(palette.sky_bottom) + 0.6 * grey))

    lane_width = rng.uniform(3.3, 3.8)
    yellow = "yellow" in lane_class
    # a yellow centre line has a lane on its left; the drawn class decides whether the stream gives a draw here
    lanes_left = 1 if drawn_yellow else int(rng.integers(0, 2))
    if yellow:
        lanes_left = 1
    elif drawn_yellow:        # a twin of a yellow sequence painted white: its own draw, the stream untouched
        lanes_left = int(_rng(seed, seq_no, _SALT_TWIN).integers(0, 2))
    lanes_right = int(rng.integers(0, 2))
    road_left = -lane_width * (0.5 + lanes_left) - rng.uniform(0.3, 1.0)
    road_right = lane_width * (0.5 + lanes_right) + rng.uniform(0.3, 1.0)
    width, height = cfg.width, cfg.height
    camera = _Camera(
        focal=width * rng.uniform(0.72, 0.9),
        cx=width * (0.5 + rng.uniform(-0.03, 0.03)),
        horizon=height * rng.uniform(0.4, 0.47),
        height_m=rng.uniform(1.25, 1.6),
        offset_m=rng.uniform(-0.4, 0.4),
        curvature=curvature,
        image_h=height,
    )
    fog = {"clear": 0.0, "fog": rng.uniform(0.25, 0.5), "rain": rng.uniform(0.05, 0.15)}[weather]
    seq = _Sequence(
        lane_class=lane_class, camera=camera, palette=palette, lane_width=lane_width,
        road_left=road_left, road_right=road_right,
        paint_wear=rng.uniform(0.0, 0.6),
        dash_len=rng.uniform(2.5, 3.5), dash_period=rng.uniform(9.0, 13.0), dash_phase=rng.uniform(0, 13.0),
        speed=rng.uniform(0.8, 2.5),
        asphalt=tuple(rng.uniform(78, 105) + rng.uniform(-4, 4, 3)),
        ground=_ground_colour(rng, scenery),
        fog=fog, rain=rng.uniform(0.4, 1.0) if weather == "rain" else 0.0,
        exposure=float(np.clip(np.exp(rng.normal(0.0, 0.15)), 0.7, 1.4)),
        scenery=scenery, context={},
    )
    seq.context = {
        "time_of_day": time_of_day, "weather": weather, "scenery": scenery,
        "curvature": round(curvature, 6), "paint_wear": round(seq.paint_wear, 3), "fog": round(fog, 3),
        "horizon": round(camera.horizon / height, 4), "context_tied": bool(tied),
    }
    scenery_rng = _rng(seed, seq_no, _SALT_SCENERY)
    _plan_scenery(scenery_rng, seq, cfg)
    seq.lights = _plan_lights(_rng(seed, seq_no, _SALT_LIGHTS), seq, cfg)
    return seq


def _ground_colour(rng: np.random.Generator, scenery: str) -> tuple:
    base = {"urban": (138, 136, 130), "suburban": (92, 124, 68), "rural": (118, 124, 74)}[scenery]
    return tuple(np.array(base) + rng.uniform(-10, 10, 3))


def _plan_scenery(rng: np.random.Generator, seq: _Sequence, cfg: SynthConfig) -> None:
    """Skyline buildings, hills, stars, roadside trees / street lamps and shadow bands of a sequence."""
    width, height = cfg.width, cfg.height
    if seq.scenery != "rural":
        tall = seq.scenery == "urban"
        x = -0.15
        while x < 1.15:
            w = rng.uniform(0.04, 0.14) if tall else rng.uniform(0.05, 0.12)
            h = rng.uniform(0.06, 0.32) if tall else rng.uniform(0.025, 0.09)
            wall = np.array((150, 145, 140)) * rng.uniform(0.5, 1.15) + rng.uniform(-15, 15, 3)
            seq.skyline.append((x, w, h, tuple(np.clip(wall, 0, 255))))
            x += w * rng.uniform(0.6, 1.05)
    if seq.scenery != "urban":
        xs = np.linspace(-0.2, 1.2, 40)
        phases = rng.uniform(0, 2 * np.pi, 3)
        bumps = sum(np.sin(xs * k * 5 + p) / k for k, p in zip((1, 2, 4), phases))
        seq.hills = np.stack([xs, 0.025 + 0.02 * (bumps + 1.8)], axis=1)
    if seq.palette.stars:
        seq.stars = rng.uniform(-0.05, 1.05, (int(width * height / 3000), 2))

    tree_gap = {"urban": 45.0, "suburban": 11.0, "rural": 9.0}[seq.scenery]
    for side in (-1, 1):
        edge = seq.road_left if side < 0 else seq.road_right
        z = rng.uniform(2.0, tree_gap)
        while z < 170.0:
            leaves = np.array((55, 95, 45)) * rng.uniform(0.7, 1.2) + rng.uniform(-10, 10, 3)
            blobs = rng.uniform(-0.6, 0.6, (4, 2))
            seq.roadside.append(("tree", z, edge + side * rng.uniform(1.5, 6.0), rng.uniform(1.5, 3.0),
                                 rng.uniform(1.3, 2.8), tuple(np.clip(leaves, 0, 255)), blobs))
            z += rng.exponential(tree_gap) + 3.0
        if seq.scenery != "rural" and rng.random() < 0.7:
            z = rng.uniform(5.0, 30.0)
            while z < 170.0:
                seq.roadside.append(("lamp", z, edge + side * 0.7, rng.uniform(7.0, 8.5)))
                z += rng.uniform(25.0, 40.0)

    if seq.context["time_of_day"] != "night" and seq.context["weather"] == "clear":
        for _ in range(int(rng.integers(0, 5))):
            start = rng.uniform(seq.road_left - 1, seq.road_right - 1)
            seq.shadows.append((rng.uniform(4.0, 60.0), rng.uniform(1.5, 8.0),
                                start, start + rng.uniform(1.5, 8.0)))


# --------------------------------------------------------------------------------------------------
# Traffic-light plan


def _light_height_ranges(cfg: SynthConfig) -> dict:
    """Integer housing heights (px) per distance bucket that the image size can represent."""
    height = cfg.height
    b0, b1 = cfg.distance_buckets
    first_medium, first_near = _first_height_at(b0, height), _first_height_at(b1, height)
    ranges = {
        "far": (max(_MIN_LIGHT_PX, math.ceil(0.45 * b0 * height)), first_medium - 1),
        "medium": (max(_MIN_LIGHT_PX, first_medium), first_near - 1),
        "near": (max(_MIN_LIGHT_PX, first_near), max(_MIN_LIGHT_PX, math.floor(min(2.2 * b1, 0.3) * height))),
    }
    return {k: r for k, r in ranges.items() if r[0] <= r[1]}


def _first_height_at(ratio: float, height: int) -> int:
    """The smallest integer h with h / height >= ratio, exactly as :func:`distance_bucket` compares."""
    h = math.ceil(ratio * height)
    while h > 0 and (h - 1) / height >= ratio:
        h -= 1
    while h / height < ratio:
        h += 1
    return h


def _plan_lights(rng: np.random.Generator, seq: _Sequence, cfg: SynthConfig) -> list:
    """Place up to ``max_lights`` non-overlapping lights, each in a uniformly drawn distance bucket."""
    ranges = _light_height_ranges(cfg)
    if cfg.max_lights == 0 or not ranges:
        return []
    buckets = sorted(ranges)
    slack = 2 * math.ceil(_DRIFT * max(cfg.width, cfg.height)) + 2   # lights drift apart/together per frame
    lights: list[_Light] = []
    for _ in range(int(rng.integers(1, cfg.max_lights + 1))):
        lo, hi = ranges[buckets[int(rng.integers(len(buckets)))]]
        h = int(rng.integers(lo, hi + 1))
        state = str(rng.choice(TL_STATES, p=[_STATE_WEIGHTS[s] for s in TL_STATES]))
        for _attempt in range(12):
            light = _place_light(rng, seq, cfg, h, state)
            if light is not None and not any(_too_close(light, other, slack) for other in lights):
                lights.append(light)
                break
    for light in lights:
        if rng.random() < 0.25:
            _plan_occluder(rng, light, lights, slack)
    return lights


def _place_light(rng: np.random.Generator, seq: _Sequence, cfg: SynthConfig, h: int, state: str):
    """A light of housing height ``h`` px on a pole, mast arm or span wire, or None if it does not fit."""
    cam = seq.camera
    horizontal = rng.random() < 0.2
    w = int(round(h * 2.7)) if horizontal else max(2, int(round(h * 0.38)))
    if w > 0.15 * cfg.width:
        horizontal, w = False, max(2, int(round(h * 0.38)))
    ppm = h / (0.36 if horizontal else 1.0)          # the housing is 1 m long, 0.36 m wide
    z = cam.focal / ppm
    support = str(rng.choice(("pole", "arm", "wire"), p=(0.45, 0.35, 0.2)))
    side = -1 if rng.random() < 0.4 else 1
    side_u = (seq.road_left - 0.8) if side < 0 else (seq.road_right + 0.8)
    if support == "pole":
        xc, bottom = cam.project(side_u, z, rng.uniform(2.2, 3.2))
        y0 = bottom - h
    else:
        xc, y0 = cam.project(rng.uniform(seq.road_left + 0.5, seq.road_right - 0.5), z, rng.uniform(5.2, 6.2))
    pole_x, ground_y = cam.project(side_u, z, 0.0)
    mx = math.ceil((_JITTER + _DRIFT) * cfg.width) + 1
    my = math.ceil((_JITTER + _DRIFT) * cfg.height) + 1
    if cfg.width - 2 * mx < w or cfg.height - 2 * my < h:
        return None
    x0 = int(np.clip(round(float(xc) - w / 2), mx, cfg.width - mx - w))
    y0 = int(np.clip(round(float(y0)), my, cfg.height - my - h))
    if support == "pole":
        pole_x = x0 + w / 2
    housing = tuple(np.array((28, 28, 28)) if rng.random() < 0.8 else np.array((150, 120, 25)))
    return _Light(x0=x0, y0=y0, w=w, h=h, horizontal=horizontal, state=state, housing=housing,
                  support=support, support_x=float(pole_x), ground_y=float(ground_y),
                  thickness=max(1, int(round(0.15 * ppm))))


def _gap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Distance between the intervals [a0, a1) and [b0, b1); negative when they overlap."""
    return max(a0, b0) - min(a1, b1)


def _too_close(a: _Light, b: _Light, slack: int) -> bool:
    """Lights must be apart by the larger housing height (plus ``slack`` px), so that an occluder of one,
    which reaches at most one housing height beyond it, never reaches the other."""
    margin = max(a.h, b.h) + slack
    return (_gap(a.x0, a.x0 + a.w, b.x0, b.x0 + b.w) < margin
            and _gap(a.y0, a.y0 + a.h, b.y0, b.y0 + b.h) < margin)


def _plan_occluder(rng: np.random.Generator, light: _Light, lights: list, slack: int) -> None:
    """Something in front of part of the housing: a lamp post, foliage or a sign plate."""
    kind = str(rng.choice(("pole", "tree", "sign")))
    if kind == "pole":   # a post runs down to the ground: fall back to foliage if it would hit a light
        for other in lights:
            margin = other.h + slack
            columns = _gap(light.x0 - light.w, light.x0 + 2 * light.w, other.x0, other.x0 + other.w)
            rows = _gap(*_post_rows(light), other.y0, other.y0 + other.h)
            if other is not light and columns < margin and rows < margin:
                kind = "tree"
    base = {"pole": (70, 72, 75), "tree": (50, 90, 40), "sign": (30, 80, 160)}[kind]
    light.occluder = kind
    light.occ_side = -1 if rng.random() < 0.5 else 1
    light.occ_cover = rng.uniform(0.2, 0.45)
    light.occ_colour = tuple(np.clip(np.array(base) * rng.uniform(0.8, 1.2), 0, 255))


def _post_rows(light: _Light) -> tuple[int, int]:
    """Rows [top, bottom) of the lamp post that an occluder of type "pole" puts in front of ``light``."""
    return light.y0 - light.h // 2, max(int(light.ground_y), light.y0 + 2 * light.h)


def _frame_lights(rng: np.random.Generator, seq: _Sequence, jitter, cfg: SynthConfig) -> list:
    """The sequence's lights as seen in one frame (moved by camera jitter and drift, states may change)."""
    shown = rng.random() < cfg.light_prob
    lights = []
    for light in seq.lights:
        drift = rng.uniform(-_DRIFT, _DRIFT, 2) * (cfg.width, cfg.height)
        dx, dy = (int(round(v)) for v in np.asarray(jitter) + drift)
        state = _STATE_CYCLE[light.state] if rng.random() < 0.15 else light.state
        x0 = int(np.clip(light.x0 + dx, 0, cfg.width - light.w))
        y0 = int(np.clip(light.y0 + dy, 0, cfg.height - light.h))
        lights.append(replace(light, x0=x0, y0=y0, state=state, support_x=light.support_x + dx,
                              ground_y=light.ground_y + dy))
    return lights if shown else []


# --------------------------------------------------------------------------------------------------
# Drawing


def _fixed(points) -> np.ndarray:
    """Float pixel coordinates -> the int32 fixed-point points cv2 draws with ``shift=_SHIFT``."""
    return np.round(np.asarray(points, dtype=np.float64) * (1 << _SHIFT)).astype(np.int32)


class _Canvas:
    """The image and its two masks. Opaque shapes go through here so the masks track what is visible:
    a shape clears the lane mask under it and sets the light mask to 0, or to ``light_id`` for a housing."""

    def __init__(self, height: int, width: int):
        self.image = np.zeros((height, width, 3), np.uint8)
        self.lane = np.zeros((height, width), np.uint8)
        self.light = np.zeros((height, width), np.uint8)

    def polygon(self, points, colour) -> None:
        pts = [_fixed(points)]
        cv2.fillPoly(self.image, pts, colour, cv2.LINE_8, _SHIFT)
        cv2.fillPoly(self.lane, pts, 0, cv2.LINE_8, _SHIFT)
        cv2.fillPoly(self.light, pts, 0, cv2.LINE_8, _SHIFT)

    def circle(self, centre, radius: float, colour) -> None:
        c, r = tuple(int(v) for v in _fixed(centre)), int(_fixed(radius))
        cv2.circle(self.image, c, r, colour, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(self.lane, c, r, 0, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(self.light, c, r, 0, -1, cv2.LINE_8, _SHIFT)

    def line(self, p0, p1, thickness: int, colour) -> None:
        a, b = (tuple(int(v) for v in _fixed(p)) for p in (p0, p1))
        cv2.line(self.image, a, b, colour, thickness, cv2.LINE_8, _SHIFT)
        cv2.line(self.lane, a, b, 0, thickness, cv2.LINE_8, _SHIFT)
        cv2.line(self.light, a, b, 0, thickness, cv2.LINE_8, _SHIFT)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour, light_id: int = 0) -> None:
        """Fill the pixels [x0, x1) x [y0, y1), clipped to the image."""
        h, w = self.lane.shape
        x0, x1, y0, y1 = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
        if x0 < x1 and y0 < y1:
            self.image[y0:y1, x0:x1] = colour
            self.lane[y0:y1, x0:x1] = 0
            self.light[y0:y1, x0:x1] = light_id

    def marking(self, points, colour) -> None:
        pts = [_fixed(points)]
        cv2.fillPoly(self.image, pts, colour, cv2.LINE_8, _SHIFT)
        cv2.fillPoly(self.lane, pts, 1, cv2.LINE_8, _SHIFT)


def _strip(cam: _Camera, u0: float, u1: float, z: np.ndarray) -> np.ndarray:
    """Polygon of the road-surface band between lateral offsets u0 < u1 over the depths ``z``."""
    xl, yl = cam.project(u0, z)
    xr, yr = cam.project(u1, z)
    return np.concatenate([np.stack([xl, yl], 1), np.stack([xr, yr], 1)[::-1]])


def _vertical_gradient(top, bottom, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, max(n, 1))[:, None]
    return np.clip(np.asarray(top) * (1 - t) + np.asarray(bottom) * t, 0, 255).astype(np.uint8)


def _draw_sky(canvas: _Canvas, seq: _Sequence, cam: _Camera) -> None:
    height, width = canvas.lane.shape
    rows = int(np.clip(round(cam.horizon) + 1, 0, height))
    pal = seq.palette
    canvas.image[:rows] = _vertical_gradient(pal.sky_top, pal.sky_bottom, rows)[:, None, :]
    if seq.stars is not None:
        xs = (seq.stars[:, 0] * width + cam.cx - width / 2).astype(int)
        ys = (seq.stars[:, 1] * seq.camera.horizon * 0.9 + cam.horizon - seq.camera.horizon).astype(int)
        keep = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < rows)
        canvas.image[ys[keep], xs[keep]] = (200, 200, 190)


def _draw_skyline(canvas: _Canvas, seq: _Sequence, cam: _Camera, rng: np.random.Generator) -> None:
    """Hills and buildings standing on the horizon (background: drawn straight into the image)."""
    height, width = canvas.lane.shape
    shift_x = cam.cx - width / 2
    if seq.hills is not None:
        hill = np.stack([seq.hills[:, 0] * width + shift_x, cam.horizon - seq.hills[:, 1] * height], 1)
        hill = np.concatenate([hill, [[hill[-1, 0], cam.horizon + 2], [hill[0, 0], cam.horizon + 2]]])
        cv2.fillPoly(canvas.image, [_fixed(hill)], seq.shade((80, 105, 95)), cv2.LINE_8, _SHIFT)
    cell = max(3, int(round(height * 0.016)))
    for xf, wf, hf, wall in seq.skyline:
        x0, x1 = int(round(xf * width + shift_x)), int(round((xf + wf) * width + shift_x))
        y0, y1 = int(round(cam.horizon - hf * height)), int(round(cam.horizon)) + 2
        facade = _facade(rng, x1 - x0, y1 - y0, cell, seq, wall)
        cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, width), max(y0, 0), min(y1, height)
        if cx0 < cx1 and cy0 < cy1:
            canvas.image[cy0:cy1, cx0:cx1] = facade[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]


def _facade(rng: np.random.Generator, w: int, h: int, cell: int, seq: _Sequence, wall) -> np.ndarray:
    """A building front: a wall with a grid of windows, some lit at dusk and night."""
    rows, cols = max(h // cell, 1), max(w // cell, 1)
    lit = rng.random((rows, cols)) < seq.palette.windows_lit
    dark = np.array(seq.shade((95, 115, 140)), np.uint8)
    windows = np.where(lit[..., None], np.array((255, 214, 140), np.uint8), dark)
    patch = np.empty((max(h, 1), max(w, 1), 3), np.uint8)
    patch[:] = seq.shade(wall)
    grid = np.repeat(np.repeat(windows, cell, 0), cell, 1)[:h, :w]
    inner = (np.arange(grid.shape[0]) % cell >= cell // 3)[:, None] & \
            (np.arange(grid.shape[1]) % cell >= cell // 3)[None, :]
    inner[: cell // 2] = False                                          # a roof edge without windows
    region = patch[:grid.shape[0], :grid.shape[1]]
    region[inner] = grid[inner]
    return patch


def _draw_ground(canvas: _Canvas, seq: _Sequence, cam: _Camera) -> None:
    height = canvas.lane.shape[0]
    top = int(np.clip(round(cam.horizon) + 1, 0, height))
    if top >= height:
        return
    ys = np.arange(top, height) + 0.5
    z = cam.focal * cam.height_m / np.maximum(ys - cam.horizon, 0.5)
    colours = np.asarray(seq.ground) * np.asarray(seq.palette.tint) * seq.light(z)[:, None]
    haze = np.exp(-z / 250.0)[:, None]                  # far ground fades into the sky colour
    colours = colours * haze + np.asarray(seq.palette.sky_bottom) * 0.85 * (1 - haze)
    canvas.image[top:] = np.clip(colours, 0, 255).astype(np.uint8)[:, None, :]


def _draw_road(canvas: _Canvas, seq: _Sequence, cam: _Camera) -> None:
    """The asphalt in depth bands (lit by headlights near the camera), with kerbs in town."""
    z = np.geomspace(cam.z_near, _Z_ROAD, 40)
    if seq.scenery == "urban":
        kerb = seq.shade((150, 148, 142))
        canvas.polygon(_strip(cam, seq.road_left - 2.5, seq.road_left, z), kerb)
        canvas.polygon(_strip(cam, seq.road_right, seq.road_right + 2.5, z), kerb)
    for z0, z1 in zip(z[:-1], z[1:]):
        colour = seq.shade(seq.asphalt, seq.light(0.5 * (z0 + z1)))
        canvas.polygon(_strip(cam, seq.road_left, seq.road_right, np.array((z0, z1 * 1.01))), colour)


def _marking_intervals(seq: _Sequence, pattern: str, z_near: float, travel: float) -> list:
    """Painted depth intervals [z0, z1) of one line: short chunks for solid, receding dashes for dashed."""
    if pattern == "solid":
        z = np.geomspace(z_near, _Z_MARK, 28)
        return list(zip(z[:-1], z[1:]))
    start = z_near - (seq.dash_phase + travel) % seq.dash_period
    starts = np.arange(start, _Z_MARK, seq.dash_period)
    return [(max(s, 0.5 * z_near), s + seq.dash_len) for s in starts if s + seq.dash_len > 0.5 * z_near]


def _draw_markings(canvas: _Canvas, seq: _Sequence, cam: _Camera, travel: float,
                   rng: np.random.Generator) -> None:
    """The lane-class lines, with worn paint: faded colour and short gaps (too short to read as dashes)."""
    z_near = cam.z_near
    retro = 0.45 if seq.context["time_of_day"] == "night" else 0.0    # retro-reflective paint
    for side, offset, pattern, paint in _MARKINGS[seq.lane_class]:
        u = side * seq.lane_width / 2 + offset
        half = 0.07 if offset else 0.075
        for z0, z1 in _marking_intervals(seq, pattern, z_near, travel):
            fade = seq.paint_wear * rng.uniform(0.0, 0.6)
            colour = np.asarray(_PAINT[paint]) * (1 - fade) + np.asarray(seq.asphalt) * fade
            colour = seq.shade(colour, max(float(seq.light(0.5 * (z0 + z1))), retro))
            pieces = [(z0, z1)]
            if rng.random() < seq.paint_wear * 0.5:
                gap_start = rng.uniform(z0, z1)
                pieces = [(z0, gap_start), (gap_start + rng.uniform(0.2, 0.6), z1)]
            for a, b in pieces:
                if b > a:
                    canvas.marking(_strip(cam, u - half, u + half, np.linspace(a, b, 3)), colour)


def _darken(image: np.ndarray, polygons: list, factor: float) -> None:
    """Multiply the pixels inside ``polygons`` by ``factor`` (shadows: the masks are unaffected)."""
    if not polygons:
        return
    pts = [_fixed(p) for p in polygons]
    corners = np.concatenate(pts) >> _SHIFT
    height, width = image.shape[:2]
    x0, y0 = np.maximum(corners.min(0), 0)
    x1, y1 = np.minimum(corners.max(0) + 2, (width, height))
    if x0 >= x1 or y0 >= y1:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    origin = np.array((x0, y0), np.int32) << _SHIFT
    cv2.fillPoly(mask, [p - origin for p in pts], 1, cv2.LINE_8, _SHIFT)
    roi = image[y0:y1, x0:x1]
    np.copyto(roi, cv2.convertScaleAbs(roi, alpha=factor), where=mask[..., None].astype(bool))


def _draw_shadows(canvas: _Canvas, seq: _Sequence, cam: _Camera, travel: float, cars: list) -> None:
    """Shadow bands across the road (trees, buildings) and the dark patch under each car."""
    z_min = 0.5 * cam.z_near
    polygons = [_strip(cam, u0, u1, np.linspace(z - travel, z - travel + length, 4))
                for z, length, u0, u1 in seq.shadows if z - travel > z_min]
    for car in cars:
        polygons.append(_strip(cam, car.u - car.width / 2 - 0.1, car.u + car.width / 2 + 0.1,
                               np.array((car.z - 0.2, car.z + 1.2))))
    _darken(canvas.image, polygons, 0.62 if seq.context["time_of_day"] == "day" else 0.75)


@dataclass
class _Car:
    u: float
    z: float
    width: float
    height: float
    colour: tuple


def _sample_cars(rng: np.random.Generator, seq: _Sequence) -> list:
    """0-3 cars (rear views) in the lanes going our way, spaced apart along each lane."""
    lanes = [0.0]
    if seq.road_right > 1.5 * seq.lane_width:
        lanes.append(seq.lane_width)
    if seq.road_left < -1.5 * seq.lane_width and "yellow" not in seq.lane_class:
        lanes.append(-seq.lane_width)
    cars: list[_Car] = []
    for _ in range(int(rng.integers(0, 4))):
        u = lanes[int(rng.integers(len(lanes)))]
        z = rng.uniform(9.0 if u == 0.0 else 6.0, 70.0)
        if any(c.u == u and abs(c.z - z) < 8.0 for c in cars):
            continue
        van = rng.random() < 0.15
        cars.append(_Car(u=u, z=z,
                         width=rng.uniform(2.0, 2.2) if van else rng.uniform(1.7, 1.95),
                         height=rng.uniform(2.2, 2.6) if van else rng.uniform(1.35, 1.6),
                         colour=_CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]))
    for car in cars:
        car.u += rng.uniform(-0.3, 0.3)
    return cars


def _draw_objects(canvas: _Canvas, seq: _Sequence, cam: _Camera, travel: float, cars: list) -> None:
    """Roadside trees, street lamps and cars, far to near so nearer ones cover farther ones."""
    items = [(obj[1] - travel, "roadside", obj) for obj in seq.roadside]
    items += [(car.z, "car", car) for car in cars]
    for z, kind, obj in sorted(items, key=lambda item: -item[0]):
        if z < 3.0:
            continue
        if kind == "car":
            _draw_car(canvas, seq, cam, obj)
        elif obj[0] == "tree":
            _draw_tree(canvas, seq, cam, z, obj)
        else:
            _draw_lamp(canvas, seq, cam, z, obj)


def _draw_tree(canvas: _Canvas, seq: _Sequence, cam: _Camera, z: float, tree) -> None:
    _, _, u, trunk_h, crown_r, leaves, blobs = tree
    ppm = cam.focal / z
    base, top = cam.project(u, z, 0.0), cam.project(u, z, trunk_h)
    canvas.line(base, top, max(1, int(round(0.3 * ppm))), seq.shade((70, 55, 40)))
    for i, (bx, by) in enumerate(blobs):
        centre = cam.project(u + bx * crown_r, z, trunk_h + crown_r * (0.8 + by))
        colour = seq.shade(np.array(leaves) * (0.85 + 0.1 * i))
        canvas.circle(centre, crown_r * ppm * (0.75 if i else 1.0), colour)


def _draw_lamp(canvas: _Canvas, seq: _Sequence, cam: _Camera, z: float, lamp) -> None:
    _, _, u, pole_h = lamp
    ppm = cam.focal / z
    inward = 1.6 if u < 0 else -1.6
    base, top = cam.project(u, z, 0.0), cam.project(u, z, pole_h)
    head = cam.project(u + inward, z, pole_h)
    thickness = max(1, int(round(0.18 * ppm)))
    colour = seq.shade((90, 92, 95))
    canvas.line(base, top, thickness, colour)
    canvas.line(top, head, max(1, thickness // 2), colour)
    if seq.context["time_of_day"] != "day":
        _glow(canvas.image, head[0], head[1] + 0.1 * ppm, max(1.0, 0.3 * ppm), (255, 200, 120), 1.0)


def _draw_car(canvas: _Canvas, seq: _Sequence, cam: _Camera, car: _Car) -> None:
    """Rear view of a car: wheels, body, cabin with rear window, bumper, tail lights, plate."""
    ppm = cam.focal / car.z
    xc, yb = cam.project(car.u, car.z, 0.0)
    hw, h = car.width / 2, car.height

    def shape(*points):  # metres (x right of the car centre, y up from the road) -> pixel polygon
        return np.array([(xc + x * ppm, yb - y * ppm) for x, y in points])

    def box(x0, y0, x1, y1):
        return shape((x0, y0), (x1, y0), (x1, y1), (x0, y1))

    tyre, body = seq.shade((22, 22, 24)), seq.shade(car.colour)
    canvas.polygon(box(-hw + 0.1, 0.0, -hw + 0.45, 0.4), tyre)
    canvas.polygon(box(hw - 0.45, 0.0, hw - 0.1, 0.4), tyre)
    canvas.polygon(box(-hw, 0.25, hw, 0.55 * h), body)
    canvas.polygon(shape((-0.94 * hw, 0.55 * h), (0.94 * hw, 0.55 * h), (0.74 * hw, h), (-0.74 * hw, h)),
                   body)                                                                  # cabin
    canvas.polygon(shape((-0.82 * hw, 0.6 * h), (0.82 * hw, 0.6 * h), (0.68 * hw, 0.93 * h),
                         (-0.68 * hw, 0.93 * h)), seq.shade((45, 55, 65)))                  # rear window
    canvas.polygon(box(-hw, 0.25, hw, 0.4), seq.shade(np.array(car.colour) * 0.55))
    canvas.polygon(box(-0.25, 0.42, 0.25, 0.55), seq.shade((225, 225, 215)))
    lit = seq.context["time_of_day"] != "day"
    tail = (255, 40, 30) if lit else seq.shade((190, 30, 25))
    for x0 in (-hw + 0.05, hw - 0.35):
        canvas.polygon(box(x0, 0.4 * h, x0 + 0.3, 0.5 * h), tail)
        if lit:
            _glow(canvas.image, xc + (x0 + 0.15) * ppm, yb - 0.45 * h * ppm, max(1.0, 0.12 * ppm), tail, 0.8)


def _glow(image: np.ndarray, x: float, y: float, radius: float, colour, strength: float) -> None:
    """Add a soft halo of ``colour`` around (x, y) (additive light: the masks are unaffected).

    The halo is blurred at a reduced scale (at most ~24 px across) and scaled up, so big glows stay cheap.
    """
    height, width = image.shape[:2]
    reach = int(math.ceil(3.5 * radius)) + 1
    x0, y0 = max(int(x) - reach, 0), max(int(y) - reach, 0)
    x1, y1 = min(int(x) + reach + 1, width), min(int(y) + reach + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    scale = max(1.0, reach / 12.0)
    small = (max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale)))
    patch = np.zeros((small[1], small[0], 3), np.uint8)
    centre = tuple(int(v) for v in _fixed(((x - x0) / scale, (y - y0) / scale)))
    cv2.circle(patch, centre, int(_fixed(1.3 * radius / scale)), tuple(c * strength for c in colour), -1,
               cv2.LINE_AA, _SHIFT)
    patch = cv2.GaussianBlur(patch, (0, 0), max(0.8, radius / scale))
    if scale > 1.0:
        patch = cv2.resize(patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    image[y0:y1, x0:x1] = cv2.add(image[y0:y1, x0:x1], patch)


def _draw_lights(canvas: _Canvas, seq: _Sequence, lights: list) -> list:
    """Supports first, then housings with bulbs and glow, then occluders; returns the boxes."""
    support_colour = seq.shade((55, 57, 60))
    for light in lights:
        _draw_support(canvas, light, support_colour)
    for k, light in enumerate(lights):
        _draw_housing(canvas, seq, light, k + 1)
    for light in lights:
        if light.occluder:
            _draw_occluder(canvas, seq, light)
    boxes = []
    for k, light in enumerate(lights):
        x0, y0, x1, y1 = light.x0, light.y0, light.x0 + light.w, light.y0 + light.h
        visible = int(np.count_nonzero(canvas.light[y0:y1, x0:x1] == k + 1))
        boxes.append(Box(float(x0), float(y0), float(x1), float(y1), label=light.state,
                         occluded=visible < light.w * light.h))
    return boxes


def _draw_support(canvas: _Canvas, light: _Light, colour) -> None:
    width = canvas.lane.shape[1]
    t = light.thickness
    xc = light.x0 + light.w / 2
    if light.support == "pole":
        canvas.line((xc, light.y0 + light.h), (xc, light.ground_y), t, colour)
    elif light.support == "arm":
        arm_y = light.y0 + 0.5 * t
        canvas.line((xc, arm_y), (light.support_x, arm_y), max(1, t // 2 + 1), colour)
        canvas.line((light.support_x, arm_y - t), (light.support_x, light.ground_y), t + 1, colour)
    else:
        wire_y = light.y0 - max(2.0, 0.3 * light.h)
        sag = 0.02 * width
        canvas.line((-1, wire_y - sag), (xc, wire_y), 1, colour)
        canvas.line((xc, wire_y), (width, wire_y - sag), 1, colour)
        canvas.line((xc, wire_y), (xc, light.y0 + 1), max(1, t // 2), colour)


def _draw_housing(canvas: _Canvas, seq: _Sequence, light: _Light, light_id: int) -> None:
    """The dark housing (its pixels get ``light_id``), three lenses and the glow of the lit one."""
    x0, y0, w, h = light.x0, light.y0, light.w, light.h
    canvas.rect(x0, y0, x0 + w, y0 + h, seq.shade(light.housing), light_id)
    roi = canvas.image[y0:y0 + h, x0:x0 + w]            # lenses are drawn clipped to the housing
    long_side, short_side = (w, h) if light.horizontal else (h, w)
    radius = 0.36 * short_side
    lit = _LENSES.index(light.state) if light.state in _LENSES else -1
    night = seq.context["time_of_day"] == "night"
    for i in range(3):
        along, across = long_side * (2 * i + 1) / 6 - 0.5, (short_side - 1) / 2
        cx, cy = (along, across) if light.horizontal else (across, along)
        dim = seq.shade(_LENS_DIM[i], max(seq.palette.ambient, 0.5))
        colour = _LENS_LIT[light.state] if i == lit else dim
        centre = tuple(int(v) for v in _fixed((cx, cy)))
        cv2.circle(roi, centre, int(_fixed(radius)), colour, -1, cv2.LINE_AA, _SHIFT)
        if i == lit:
            _glow(canvas.image, x0 + cx, y0 + cy, max(1.0, radius * (1.6 if night else 1.1)), colour,
                  0.9 if night else 0.55)


def _draw_occluder(canvas: _Canvas, seq: _Sequence, light: _Light) -> None:
    """Cover part of one side of the housing, always leaving most of it visible."""
    x0, y0, w, h = light.x0, light.y0, light.w, light.h
    cover = float(np.clip(light.occ_cover * w, 0.5, w - 1.5))       # covered columns
    colour = seq.shade(light.occ_colour)
    left = light.occ_side < 0
    if light.occluder == "pole":
        cols = max(1, int(cover))
        px0 = x0 - cols if left else x0 + w - cols
        top, bottom = _post_rows(light)
        canvas.rect(px0, top, px0 + 2 * cols, bottom, colour)
    elif light.occluder == "tree":
        r = max(1.5, 0.45 * min(h, w * 2))                     # reaches at most 0.9 h beyond the housing
        cx = x0 + cover - r if left else x0 + w - 1 - cover + r
        for i, fy in enumerate((0.1, 0.5, 0.9)):
            canvas.circle((cx, y0 + fy * h), r, seq.shade(np.array(light.occ_colour) * (0.85 + 0.15 * i)))
    else:
        cols, rows, outside = max(1, int(cover)), max(1, int(0.35 * h)), max(1, min(int(cover), h // 2))
        sx0 = x0 - outside if left else x0 + w - cols
        canvas.rect(sx0, y0 + h - rows, sx0 + cols + outside, y0 + h + rows, colour)


def _finish(canvas: _Canvas, seq: _Sequence, rng: np.random.Generator) -> float:
    """Rain streaks, lens softness, fog, exposure gain and sensor noise; returns the frame's gain."""
    image = canvas.image
    height, width = image.shape[:2]
    if seq.rain > 0:
        n = int(seq.rain * width * height / 2500)
        starts = rng.uniform((0, 0), (width, height), (n, 2))
        lengths = rng.uniform(0.015, 0.04, (n, 1)) * height
        ends = starts + lengths * np.array((0.25, 1.0))
        streaks = np.zeros_like(image)
        lines = list(_fixed(np.stack([starts, ends], 1)))
        cv2.polylines(streaks, lines, False, (55, 58, 62), 1, cv2.LINE_AA, _SHIFT)
        image = cv2.add(image, streaks)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    gain = seq.exposure * rng.uniform(0.95, 1.05)
    fog_level = 205.0 * max(seq.palette.ambient, 0.3)
    image = cv2.convertScaleAbs(image, alpha=gain * (1 - seq.fog), beta=gain * seq.fog * fog_level)
    amplitude = 6 if seq.context["time_of_day"] == "night" else 3
    noise = rng.integers(0, 2 * amplitude + 1, image.shape, dtype=np.uint8)
    canvas.image = cv2.subtract(cv2.add(image, noise), amplitude)
    return gain


# --------------------------------------------------------------------------------------------------
# Preview


def _preview(path: str, seed: int = 0, cfg: SynthConfig = SynthConfig(width=640, height=360)) -> None:
    """Write a 3x3 grid of frames from 9 sequences, boxes drawn in their state's colour."""
    colours = {"red": (255, 0, 0), "yellow": (255, 220, 0), "green": (0, 255, 0), "off": (255, 0, 255)}
    tiles = []
    for i in range(9):
        frame = render_frame(seed, i * cfg.frames_per_sequence + i % cfg.frames_per_sequence, cfg)
        tile = frame.image.copy()
        for box, dist in zip(frame.boxes, frame.distances):
            p0, p1 = (int(box.x_min) - 1, int(box.y_min) - 1), (int(box.x_max), int(box.y_max))
            cv2.rectangle(tile, p0, p1, colours[box.label], 1)
            cv2.putText(tile, dist[0] + ("*" if box.occluded else ""), (p0[0], p0[1] - 2),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, colours[box.label], 1)
        ctx = frame.context
        cv2.putText(tile, f"{frame.lane_class} {ctx['time_of_day']} {ctx['weather']} {ctx['scenery']}",
                    (5, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    grid = np.vstack([np.hstack(tiles[r * 3:r * 3 + 3]) for r in range(3)])
    cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    _preview(sys.argv[1], seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
