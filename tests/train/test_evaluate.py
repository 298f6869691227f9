import numpy as np
import pytest
import torch

from pipeline.train.scoring import (DetectorTally, average_precision, classification_metrics, heatmap_peaks,
                                    match_peaks, reach)


def test_classification_metrics_from_a_known_confusion():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"], "test_")
    assert m["test_accuracy"] == pytest.approx(4 / 6)
    assert m["test_precision_a"] == pytest.approx(2 / 3) and m["test_recall_a"] == pytest.approx(2 / 3)
    assert m["test_precision_b"] == pytest.approx(2 / 3) and m["test_recall_b"] == 1.0
    assert m["test_recall_c"] == 0.0 and m["test_f1_c"] == 0.0
    assert m["_confusion"].tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_heatmap_peaks_nms_and_threshold():
    heat = torch.zeros(1, 1, 6, 8)
    heat[0, 0, 1, 1] = 0.9
    heat[0, 0, 1, 2] = 0.8      # suppressed by its 0.9 neighbour
    heat[0, 0, 4, 6] = 0.6
    heat[0, 0, 4, 3] = 0.2      # below threshold
    peaks = heatmap_peaks(heat, 0.5, stride=4)
    assert sorted(peaks[0]) == sorted([(6.0, 6.0, pytest.approx(0.9)), (26.0, 18.0, pytest.approx(0.6))])


def test_greedy_matching_by_score_inside_box_or_within_distance():
    boxes = np.array([[0, 0, 10, 10], [50, 20, 54, 60]], np.float32)    # a 10 px and a 40 px tall light
    peaks = [(5, 5, 0.9), (6, 6, 0.8), (60, 45, 0.7), (100, 100, 0.95)]
    matched, taken = match_peaks(peaks, boxes, match_radius=0.5)
    # the second peak on box 0 is a duplicate: unmatched, and it says which light it duplicates; the third is
    # outside box 1 but 9.4 px from its centre, within half its height (20 px)
    assert matched == [(0.95, -1, -1), (0.9, 0, 0), (0.8, -1, 0), (0.7, 1, 1)]
    assert taken == [True, True]


def test_the_match_rule_is_in_light_heights_with_one_heat_map_cell_at_least():
    tall = np.array([[50, 20, 54, 60]], np.float32)          # 40 px tall: reach 20 px
    assert match_peaks([(71, 40, 0.9)], tall, 0.5)[1] == [True]     # outside it, 19 px right of its centre
    assert match_peaks([(73, 40, 0.9)], tall, 0.5)[1] == [False]    # 21 px
    # the same picture at twice the resolution: the same answers (a fixed pixel distance would not give them)
    assert match_peaks([(142, 80, 0.9)], tall * 2, 0.5)[1] == [True]
    assert match_peaks([(146, 80, 0.9)], tall * 2, 0.5)[1] == [False]
    tiny = np.array([[100, 0, 102, 3]], np.float32)          # 3 px tall: half of it is less than a 4 px cell
    assert reach(tiny[0], 0.5) == 4.0
    assert match_peaks([(104, 2, 0.9)], tiny, 0.5)[1] == [True]      # 3.0 px from its centre
    assert match_peaks([(106, 2, 0.9)], tiny, 0.5)[1] == [False]     # 5.0 px


def test_average_precision_of_known_rankings():
    ap, recall, precision = average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert average_precision(np.array([0.9, 0.8]), np.array([1, 1], bool), 4)[0] == pytest.approx(0.5)


def test_detector_tally_per_distance_bucket():
    tally = DetectorTally()
    boxes = np.array([[0, 0, 10, 30], [100, 0, 104, 6]], np.float32)   # one near, one far
    distances = np.array([0, 2])
    tally.add([(5, 15, 0.9), (60, 60, 0.8)], boxes, distances, match_radius=0.5)
    metrics, _ = tally.metrics("test_", threshold=0.5)
    assert metrics["test_recall"] == 0.5 and metrics["test_precision"] == 0.5
    assert metrics["test_recall_near"] == 1.0 and metrics["test_recall_far"] == 0.0
    assert metrics["test_precision_near"] == 0.5        # the stray peak is a false positive in every bucket
    assert metrics["test_lights_far"] == 1 and np.isnan(metrics["test_recall_medium"])
    assert metrics["test_recall_at_p90_near"] == 1.0     # the near light's peak ranks first: precision 1 there
    assert metrics["test_recall_at_p90"] == 0.5 and metrics["test_recall_at_p90_far"] == 0.0


def test_detector_tally_duplicate_on_another_bucket_is_ignored_there():
    tally = DetectorTally()
    boxes = np.array([[0, 0, 10, 30], [100, 0, 104, 6]], np.float32)   # one near, one far
    distances = np.array([0, 2])
    # a peak on each light, then a second (weaker) peak on the near light
    tally.add([(5, 15, 0.9), (102, 3, 0.8), (5, 25, 0.7)], boxes, distances, match_radius=0.5)
    metrics, _ = tally.metrics("test_", threshold=0.5)
    assert metrics["test_precision"] == pytest.approx(2 / 3)     # overall, the duplicate is a false positive
    assert metrics["test_precision_near"] == 0.5                  # and in the bucket of the light it duplicates
    assert metrics["test_precision_far"] == 1.0                   # but not in another bucket
    assert metrics["test_recall_far"] == 1.0 and metrics["test_recall_near"] == 1.0


def test_a_model_uri_that_names_nothing_is_one_line_naming_it_and_how_to_list_models(spark, tmp_path, capsys):
    from pipeline.cli import main

    uri = "runs:/0123456789abcdef0123456789abcdef/model"
    assert main(["evaluate", f"paths.work_dir={tmp_path}", "spark.master=local[2]", f"evaluate.model_uri={uri}"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pipeline: error:")]   # (MLflow logs INFO too)
    assert len(errors) == 1 and "Traceback" not in err
    assert f"cannot find the model {uri}" in errors[0] and "mlflow ui --backend-store-uri" in errors[0]
    assert "leave evaluate.model_uri unset" in errors[0]


def test_the_sample_responses_enlarge_each_bucket_light_with_its_peak():
    from pipeline.train.evaluate import overlay_figure

    image = np.zeros((288, 512, 3), np.uint8)
    heat = np.zeros((72, 128), np.float32)
    heat[13, 25] = 0.9                                  # on the far light below (centre pixel (101.5, 54))
    far = np.array([[100, 50, 103, 58], [300, 100, 310, 130]], np.float32)
    fig = overlay_figure([("far", image, heat, far, 0), ("near", image, heat, far[::-1].copy(), 1)], "t")
    rows = np.array(fig.axes).reshape(2, 3)
    zoom = rows[0, 2]
    (left, right), (bottom, top) = zoom.get_xlim(), zoom.get_ylim()
    assert left < 100 and right > 103 and right - left < 60 and top < 50 and bottom > 58   # around the far light
    assert zoom.get_title() == "its far light (8 px tall), peak 0.90"
    assert rows[1, 2].get_xlim()[0] < 100 < rows[1, 2].get_xlim()[1]   # row 2's bucket light is its box 1
    assert rows[0, 1].get_xlim() == (0, 512)                            # the whole frame beside it


def test_the_sample_responses_come_one_per_bucket_each_from_another_sequence():
    from pipeline.train.scoring import SamplePicker

    picker = SamplePicker()
    frames = [("a", [0]), ("a", [1, 2]), ("b", [0, 1]), ("b", [2]), ("c", [2, 0])]   # (group, bucket per light)
    for i, (group, buckets) in enumerate(frames):
        boxes = np.zeros((len(buckets), 4), np.float32) + i
        picker.offer({"group": group, "distances": np.array(buckets)}, f"image {i}", None, boxes)
    got = [(bucket, image, k) for bucket, image, _, _, k in picker.samples()]
    # near from frame 0 (a); medium from frame 2 (b: frame 1 is of a); far from frame 4 (c), its first light
    assert got == [("near", "image 0", 0), ("medium", "image 2", 1), ("far", "image 4", 0)]
