"""Detector metrics pinned to hand-computed values: constructed heat maps through ``evaluate_detector`` (a real
Petastorm ``tl_frames`` dataset written without Spark, and a fake model returning known logits), and the same
AP arithmetic on plain arrays.

Conventions of the hand computations below: peaks are ranked by score; at each rank precision = TP so far / peaks
so far and recall = TP so far / lights in the bucket. Interpolated AP (what ``average_precision`` documents) is
sum over ranks of (recall step) x (max precision at this rank or later); raw AP is sum of precision at each TP /
lights. recall_at_p90 is the largest recall at a rank whose precision is >= 0.9. All peaks here score above the
0.5 threshold unless said otherwise, so precision / recall at the threshold use every peak.
"""
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from pipeline.data import parts
from pipeline.train.evaluate import evaluate_detector
from pipeline.train.scoring import DetectorTally, average_precision, heatmap_peaks, match_peaks
from pipeline.train.loader import LoaderSpec
from pipeline.models.normalize import DETECTOR_STRIDE as S, MEAN, STD
from schemas.datasets import SCHEMAS

NAN = float("nan")
HW = 64                          # 64x64 frames -> 16x16 heat maps at stride 4
G = HW // S
NEAR, MEDIUM, FAR = 0, 1, 2
HEIGHT = {NEAR: 24, MEDIUM: 12, FAR: 6}     # box heights (the bucket itself is the `distances` label)
LOW = -8.0                       # background logit: sigmoid 3.4e-4, under the 0.05 peak floor


def px(cell: int) -> float:
    return (cell + 0.5) * S      # a heat cell's centre in input pixels


def box(gx: int, gy: int, d: int) -> list:
    """A light centred on heat cell (gx, gy), 4 px wide."""
    return [px(gx) - 2, px(gy) - HEIGHT[d] / 2, px(gx) + 2, px(gy) + HEIGHT[d] / 2]


class FakeDetector(torch.nn.Module):
    """Returns the precomputed logits of each frame; the frame is recognised by its constant pixel value."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        value = ((x[:, 0, 0, 0] * STD + MEAN) * 255).round().long()
        return self.logits[value // 20 - 1]


def run_detector(tmp_path, frames: list, batch_size: int = 2) -> dict:
    """frames: [(lights [(gx, gy, bucket)], peaks [(gx, gy, logit)])] -> evaluate_detector's metrics."""
    url = (tmp_path / "ds").as_uri()
    schema = SCHEMAS["tl_frames"]
    writer = parts.PartWriter(url, "part-00000", 1)
    logits = torch.full((len(frames), 1, G, G), LOW)
    for i, (lights, peaks) in enumerate(frames):
        writer.add("tl_frames/test", parts.arrow_schema(schema), parts.encode_row(schema, {
            "id": f"f{i}", "group": f"g{i}", "split": "test", "source": "test",
            "image": np.full((HW, HW, 3), 20 * (i + 1), np.uint8),
            "boxes": np.array([box(*light) for light in lights], np.float32).reshape(-1, 4),
            "states": np.zeros(len(lights), np.int32),
            "distances": np.array([d for _, _, d in lights], np.int32), "phash": 0}))
        for gx, gy, logit in peaks:
            logits[i, 0, gy, gx] = logit
    files = parts.merge([writer.close()])["tl_frames/test"]
    assert parts.finalize(f"{url}/tl_frames/test", schema, files) == len(frames)
    try:
        result = evaluate_detector(FakeDetector(logits), LoaderSpec(f"{url}/tl_frames/test", "tl_frames", batch_size),
                                   "t_", threshold=0.5, match_radius=0.5)
    finally:
        plt.close("all")
    return result.metrics


def check(metrics: dict, expected: dict) -> None:
    """expected: {bucket: (precision, recall, ap, recall_at_p90)}, hand-computed; NAN means NaN."""
    for bucket, values in expected.items():
        suffix = "" if bucket == "all" else f"_{bucket}"
        for name, want in zip(("precision", "recall", "ap", "recall_at_p90"), values):
            got = metrics[f"t_{name}{suffix}"]
            if math.isnan(want):
                assert math.isnan(got), f"{name}{suffix}: got {got}, expected NaN"
            else:
                assert got == pytest.approx(want), f"{name}{suffix}: got {got}, hand-computed {want}"


def test_perfect_detection_is_one_everywhere(tmp_path):
    # 5 lights (2 near, 2 medium, 1 far) over 3 frames (batches of 2, the last one short), one peak on each and
    # nothing else: every peak is a TP ranked among TPs only -> P = R = AP = recall@P90 = 1 in every bucket.
    frames = [([(2, 2, NEAR), (10, 3, MEDIUM)], [(2, 2, 6.0), (10, 3, 5.0)]),
              ([(3, 10, FAR), (11, 11, NEAR)], [(3, 10, 4.0), (11, 11, 3.0)]),
              ([(6, 12, MEDIUM)], [(6, 12, 2.0)])]
    m = run_detector(tmp_path, frames)
    check(m, {b: (1, 1, 1, 1) for b in ("all", "near", "medium", "far")})
    assert (m["t_lights"], m["t_lights_near"], m["t_lights_medium"], m["t_lights_far"]) == (5, 2, 2, 1)


def test_one_miss_per_bucket(tmp_path):
    # 2 lights per bucket, a peak on the first of each only. Per bucket: 1 TP of 1 peak -> P = 1, R = 1/2;
    # curve (R, P) = (1/2, 1) -> AP = 1/2 * 1 = 1/2; recall@P90 = 1/2.
    # "all": 3 TPs, no FP, 6 lights -> P = 1, R = 3/6; AP = 3 * (1/6 * 1) = 1/2; recall@P90 = 1/2.
    frames = [([(2, 2, NEAR), (10, 2, NEAR)], [(2, 2, 6.0)]),
              ([(2, 8, MEDIUM), (10, 8, MEDIUM)], [(2, 8, 5.0)]),
              ([(2, 13, FAR), (10, 13, FAR)], [(2, 13, 4.0)])]
    check(run_detector(tmp_path, frames), {b: (1, 0.5, 0.5, 0.5) for b in ("all", "near", "medium", "far")})


def one_light_per_bucket_and_a_false_peak(false_logit: float) -> list:
    # near, medium, far lights, each with its peak (logits 6, 4, 3), and a peak at cell (12, 12) = pixel (50, 50):
    # the nearest light centre, (10, 42), is 40 px away, so it is on background.
    return [([(2, 2, NEAR), (10, 2, MEDIUM), (2, 10, FAR)], [(2, 2, 6.0), (10, 2, 4.0), (2, 10, 3.0)]),
            ([], [(12, 12, false_logit)])]


def test_false_peak_on_background_is_a_false_positive_in_every_bucket(tmp_path):
    # The false peak scores highest (logit 7). "all": ranks FP, TP, TP, TP -> P = 0, 1/2, 2/3, 3/4 at
    # R = 0, 1/3, 2/3, 1; envelope 3/4 everywhere -> AP = 3 * 1/3 * 3/4 = 3/4; P@0.5 = 3/4, R = 1;
    # no rank reaches P 0.9 -> recall@P90 = 0. Each bucket: FP, TP -> P = 0, 1/2 at R = 0, 1 -> AP = 1/2,
    # P@0.5 = 1/2, R = 1, recall@P90 = 0. (Also a frame with no lights at all.)
    m = run_detector(tmp_path, one_light_per_bucket_and_a_false_peak(7.0))
    check(m, {"all": (0.75, 1, 0.75, 0), **{b: (0.5, 1, 0.5, 0) for b in ("near", "medium", "far")}})


def test_interpolated_ap_not_raw_ap(tmp_path):
    # Same frames, the false peak now second (logit 5): "all" ranks TP, FP, TP, TP.
    #   P = 1, 1/2, 2/3, 3/4 at R = 1/3, 1/3, 2/3, 1; envelope 1, 3/4, 3/4, 3/4
    #   interpolated AP = 1/3 * 1 + 0 * 3/4 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6 = 0.8333
    #   raw AP = (1 + 2/3 + 3/4) / 3 = 29/36 = 0.8056
    #   P@0.5 = 3/4, R = 1, recall@P90 = 1/3 (only rank 1 has P >= 0.9).
    # near: TP, FP -> AP = 1, P = 1/2, R = 1, recall@P90 = 1. medium, far: FP, TP -> AP = 1/2, recall@P90 = 0.
    m = run_detector(tmp_path, one_light_per_bucket_and_a_false_peak(5.0))
    check(m, {"all": (0.75, 1, 5 / 6, 1 / 3), "near": (0.5, 1, 1, 1), "medium": (0.5, 1, 0.5, 0),
              "far": (0.5, 1, 0.5, 0)})
    assert m["t_ap"] != pytest.approx(29 / 36, abs=1e-3), "AP must be the all-point interpolated one, not raw"


def test_bucket_without_lights_is_nan_and_a_false_peak_does_not_crash_it(tmp_path):
    # near and medium lights with peaks (logits 6, 5), a background peak (logit 4), no far light.
    # far: no lights -> recall, AP, recall@P90 NaN; the false peak is its only peak -> P@0.5 = 0/1 = 0.
    # "all": TP, TP, FP -> P = 2/3, R = 1, AP = 1 (both TPs at P 1), recall@P90 = 1.
    # near and medium: TP, FP -> P = 1/2, R = 1, AP = 1, recall@P90 = 1.
    frames = [([(2, 2, NEAR), (10, 2, MEDIUM)], [(2, 2, 6.0), (10, 2, 5.0), (12, 12, 4.0)])]
    m = run_detector(tmp_path, frames)
    check(m, {"all": (2 / 3, 1, 1, 1), "near": (0.5, 1, 1, 1), "medium": (0.5, 1, 1, 1), "far": (0, NAN, NAN, NAN)})
    assert m["t_lights_far"] == 0


def test_peak_on_a_light_of_another_bucket_is_neither_tp_nor_fp_there(tmp_path):
    # near light at cell (3, 3) (box 24 px high), far light at (11, 3), medium light at (7, 12).
    # Peaks: near light (logit 6, TP), far light (5, TP), a second peak on the near light at cell (3, 5),
    # 8 px below its centre, inside its box (4, FP: a duplicate), medium light (3, TP).
    # "all": TP, TP, FP, TP -> P = 1, 1, 2/3, 3/4 at R = 1/3, 2/3, 2/3, 1; envelope 1, 1, 3/4, 3/4
    #   -> AP = 1/3 + 1/3 + 0 + 1/3 * 3/4 = 11/12; P@0.5 = 3/4, R = 1, recall@P90 = 2/3.
    # near: TP, FP -> P = 1/2, R = 1, AP = 1, recall@P90 = 1.
    # far, medium: only the peak on their own light -> 1, 1, 1, 1 (the near TP and its duplicate are ignored;
    #   were they counted, far precision would be 1/4 and medium's 1/4).
    frames = [([(3, 3, NEAR), (11, 3, FAR), (7, 12, MEDIUM)], [(3, 3, 6.0), (11, 3, 5.0), (3, 5, 4.0), (7, 12, 3.0)])]
    check(run_detector(tmp_path, frames), {"all": (0.75, 1, 11 / 12, 2 / 3), "near": (0.5, 1, 1, 1),
                                           "medium": (1, 1, 1, 1), "far": (1, 1, 1, 1)})


def test_peaks_matching_and_tally_on_plain_arrays():
    # Probabilities at four cells of a 16x16 map: (2,2) 0.9, (12,12) 0.8, (2,10) 0.7, (10,6) 0.3 (under the 0.5
    # threshold, above the 0.05 floor). Three near lights under cells (2,2), (2,10), (10,6); (12,12) is background.
    heat = torch.zeros(1, 1, G, G)
    for (gx, gy), p in {(2, 2): 0.9, (12, 12): 0.8, (2, 10): 0.7, (10, 6): 0.3}.items():
        heat[0, 0, gy, gx] = p
    peaks = heatmap_peaks(heat, 0.05)[0]
    # pixel = (cell + 0.5) * 4
    assert sorted(peaks, key=lambda p: -p[2]) == [(10.0, 10.0, pytest.approx(0.9)), (50.0, 50.0, pytest.approx(0.8)),
                                                 (10.0, 42.0, pytest.approx(0.7)), (42.0, 26.0, pytest.approx(0.3))]
    boxes = np.array([box(2, 2, NEAR), box(2, 10, NEAR), box(10, 6, NEAR)], np.float32)
    matched, taken = match_peaks(peaks, boxes, 0.5)
    assert [(k, near) for _, k, near in matched] == [(0, 0), (-1, -1), (1, 1), (2, 2)] and taken == [True] * 3
    tally = DetectorTally()
    tally.add(peaks, boxes, np.array([NEAR] * 3), 0.5)
    m, curves = tally.metrics("t_", threshold=0.5)
    # "all" = near: ranks TP, FP, TP, TP (the last under the threshold) with 3 lights:
    #   interpolated AP = 5/6, raw AP = 29/36 (as in test_interpolated_ap_not_raw_ap); recall@P90 = 1/3;
    #   at 0.5: peaks 0.9 TP, 0.8 FP, 0.7 TP -> P = 2/3, R = 2/3.
    # medium, far: no lights, the background peak is their only peak -> P = 0, the rest NaN.
    check(m, {"all": (2 / 3, 2 / 3, 5 / 6, 1 / 3), "near": (2 / 3, 2 / 3, 5 / 6, 1 / 3),
              "medium": (0, NAN, NAN, NAN), "far": (0, NAN, NAN, NAN)})
    recall, precision = curves["all"]
    assert recall.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1])
    assert precision.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4])


def test_average_precision_interpolated_with_a_missed_light_and_no_lights():
    scores, tp = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 1], bool)
    # 3 lights: 5/6 (raw 29/36). 4 lights (one never found): R steps of 1/4 at P envelope 1, 3/4, 3/4
    #   -> (1 + 3/4 + 3/4) / 4 = 5/8 = 0.625; raw = (1 + 2/3 + 3/4) / 4 = 29/48 = 0.604.
    assert average_precision(scores, tp, 3)[0] == pytest.approx(5 / 6)
    assert average_precision(scores, tp, 4)[0] == pytest.approx(5 / 8)
    assert average_precision(scores, tp, 4)[0] != pytest.approx(29 / 48, abs=1e-3)
    # scores given out of order are ranked first: the same ranking shuffled gives the same AP
    assert average_precision(scores[::-1].copy(), tp[::-1].copy(), 3)[0] == pytest.approx(5 / 6)
    ap, recall, precision = average_precision(np.array([0.8]), np.array([False]), 0)
    assert math.isnan(ap) and len(recall) == 0 and len(precision) == 0
