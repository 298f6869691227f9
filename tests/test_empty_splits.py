"""Empty splits: every stage that reads one says so in one line (which split of which dataset and kind, why, the
fix) and exits 3; ``pipeline run`` skips that job, and the jobs that need it, and goes on to the report."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.data import store
from pipeline.data.splits import check_split, empty_splits
from pipeline.errors import EmptySplit
from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import TINY, make_conf

NO_TEST = "ingest.split={train: 0.75, val: 0.25, test: 0}"
NO_VAL = "ingest.split={train: 0.75, val: 0, test: 0.25}"
NO_TRAIN = "ingest.split={train: 0, val: 0.5, test: 0.5}"


def args(work, *more):
    """CLI arguments: the shared session's own settings (conftest), the tiny ingest, one task, one epoch."""
    return [f"paths.work_dir={work}", "spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=4",
            "spark.conf.spark.driver.memory=2g", *TINY, "train.epochs=1", "run.tasks=[lane_classifier]", *more]


def ingested(spark, work, split):
    conf = make_conf(work, *TINY, split)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    return conf


@pytest.fixture(scope="module")
def no_test(spark, tmp_path_factory):
    work = tmp_path_factory.mktemp("no_test")
    ingested(spark, work, NO_TEST)
    return work


@pytest.fixture(scope="module")
def no_val(spark, tmp_path_factory):
    work = tmp_path_factory.mktemp("no_val")
    ingested(spark, work, NO_VAL)
    return work


def one_line(capsys, code: int, expected: int = 3) -> str:
    captured = capsys.readouterr()
    assert code == expected, captured
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_ingest_says_which_split_of_which_kind_came_out_empty(spark, tmp_path, capsys):
    # 16 frames in sequences of 8 are two groups: at least one of the three splits gets none
    conf = make_conf(tmp_path, *TINY, "ingest.num_frames=16", "ingest.frames_per_sequence=8")
    results = run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    meta = store.read_meta(results["dataset_url"])
    assert sum(meta["split_groups"].values()) == 2 and meta["split_rule"]["frames_per_sequence"] == 8
    empty = empty_splits(meta)
    assert empty and results["empty_splits"] == len(empty)
    warnings = [l for l in capsys.readouterr().out.splitlines() if l.startswith("ingest: warning: ")]
    assert len(warnings) == len(empty)       # one line per empty split of each kind
    for (kind, split), line in zip(empty, warnings):
        assert f"the {split} split of dataset synthetic, kind {kind}, is empty: " in line
        assert "ingest.num_frames=16 made 2 sequences of 8 frames" in line and "0 in " + split in line
        assert "ingest more frames (ingest.num_frames)" in line
    kind, split = empty[0]
    with pytest.raises(EmptySplit, match=f"the {split} split of dataset synthetic"):
        check_split(results["dataset_url"], kind, split)


@pytest.mark.parametrize("stage, more", [("evaluate", []), ("correlate", ["correlate.split=test"]),
                                         ("visualize", ["visualize.split=test"]), ("transfer", []), ("audit", [])])
def test_a_stage_on_an_empty_test_split_says_one_line_and_exits_3(no_test, capsys, stage, more):
    line = one_line(capsys, main([stage, *args(no_test, NO_TEST, *more)]))
    assert line.startswith(f"{stage}: skipped (exit 3): the test split")
    assert "of dataset synthetic, kind road_frames, is empty: ingest.num_frames=48 made 24 sequences" in line
    assert "0 in test" in line and "which gives test no share" in line and "give test a share (ingest.split)" in line
    key = {"evaluate": "evaluate.split", "audit": "audit.split", "correlate": "correlate.split",
           "visualize": "visualize.split"}.get(stage)
    if key:
        assert f"({key}=test)" in line and f"or set {key} to train or val" in line


@pytest.mark.parametrize("stage, more", [("evaluate", ["evaluate.split=val"]), ("correlate", []),
                                         ("visualize", []), ("transfer", []), ("audit", ["audit.split=val"])])
def test_a_stage_on_an_empty_val_split_says_one_line_and_exits_3(no_val, capsys, stage, more):
    line = one_line(capsys, main([stage, *args(no_val, NO_VAL, *more)]))
    assert line.startswith(f"{stage}: skipped (exit 3): the val split")
    assert "kind road_frames, is empty: " in line and "0 in val" in line and "which gives val no share" in line


def test_train_trains_without_the_empty_split_and_says_what_it_left_out(no_test, no_val, capsys):
    assert main(["train", *args(no_test, NO_TEST)]) == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "train.lane_classifier: the test pass skipped: the test split of dataset synthetic" in captured.out
    assert "model_uri models:/" in captured.out and "val_accuracy" in captured.out
    assert "test_accuracy" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "no job skipped, 1 left a part out for an empty split (exit 3)" in err[0]
    assert main(["train", *args(no_val, NO_VAL)]) == 3
    out = capsys.readouterr().out
    assert "train.lane_classifier: per-epoch validation skipped: the val split of dataset synthetic" in out
    assert "test_accuracy" in out and "val_accuracy" not in out


def test_pipeline_run_skips_the_jobs_of_an_empty_split_and_goes_on_to_the_report(no_test, capsys):
    # (train.seed=1: not the net the train test made, which would be up to date)
    code = main(["run", "--only", "ingest,train,evaluate,audit,report", *args(no_test, NO_TEST, "train.seed=1")])
    captured = capsys.readouterr()
    assert code == 3 and "Traceback" not in captured.err
    out = captured.out
    assert "[1/5] ingest: up to date" in out
    assert "-- train.lane_classifier done in " in out
    assert "-- [3/5] evaluate.lane_classifier skipped: the test split (evaluate.split=test) of dataset" in out
    assert "-- [4/5] audit.lane_classifier skipped: the test split (audit.split=test) of dataset" in out
    assert "-- report done in " in out
    report = next(l.split(" ", 1)[1] for l in out.splitlines() if l.startswith("Report: "))
    assert "skipped for an empty split: the test split (evaluate.split=test)" in Path(report).read_text()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pipeline: finished, 2 of 5 jobs skipped, 1 left a part out for an "
                                               "empty split (exit 3): evaluate.lane_classifier, audit.lane_classifier, ")
    conf = make_conf(no_test, *TINY, NO_TEST)
    client = MlflowClient(conf.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(conf.mlflow.experiment).experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'evaluate lane_classifier'")
    assert runs and runs[0].info.status == "FAILED" and runs[0].data.tags["pipeline.skipped"].startswith("the test")


def test_a_job_that_needs_a_skipped_job_is_skipped_and_nothing_skipped_counts_as_done(spark, tmp_path, capsys):
    ingested(spark, tmp_path, NO_TRAIN)
    for attempt in range(2):   # a skipped job is never marked done: the next run tries it again
        code = main(["run", "--only", "ingest,train,evaluate,report", *args(tmp_path, NO_TRAIN)])
        captured = capsys.readouterr()
        assert code == 3 and "Traceback" not in captured.err
        assert "== [2/4] train.lane_classifier (it never finished)" in captured.out
        assert "-- [2/4] train.lane_classifier skipped: the train split of dataset synthetic, kind road_frames" \
               in captured.out
        assert ("-- [3/4] evaluate.lane_classifier skipped: it needs train.lane_classifier, skipped above"
                in captured.out)
        assert ("Report: " if attempt == 0 else "[4/4] report: up to date") in captured.out
        assert "2 of 4 jobs skipped for an empty split (exit 3)" in captured.err
