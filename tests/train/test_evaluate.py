import numpy as np
import pytest
import torch

from pipeline.train.scoring import (DetectorTally, average_precision, classification_metrics, heatmap_peaks,
                                    match_peaks)


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
    boxes = np.array([[0, 0, 10, 10], [50, 50, 54, 54]], np.float32)
    peaks = [(5, 5, 0.9), (6, 6, 0.8), (58, 52, 0.7), (100, 100, 0.95)]
    matched, taken = match_peaks(peaks, boxes, match_distance=8)
    # the second peak on box 0 is a duplicate: unmatched, and it says which light it duplicates
    assert matched == [(0.95, -1, -1), (0.9, 0, 0), (0.8, -1, 0), (0.7, 1, 1)]
    assert taken == [True, True]


def test_average_precision_of_known_rankings():
    ap, recall, precision = average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert average_precision(np.array([0.9, 0.8]), np.array([1, 1], bool), 4)[0] == pytest.approx(0.5)


def test_detector_tally_per_distance_bucket():
    tally = DetectorTally()
    boxes = np.array([[0, 0, 10, 30], [100, 0, 104, 6]], np.float32)   # one near, one far
    distances = np.array([0, 2])
    tally.add([(5, 15, 0.9), (60, 60, 0.8)], boxes, distances, match_distance=4)
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
    tally.add([(5, 15, 0.9), (102, 3, 0.8), (5, 25, 0.7)], boxes, distances, match_distance=4)
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
