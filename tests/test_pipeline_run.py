"""`pipeline run`: the order comes from the stage graph; skip only when nothing changed; resume after a failure;
one run at a time per output."""
import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline import stages
from pipeline.cli import main
from pipeline.lock import hold, lock_path
from pipeline.stages import STAGES, get_stage, plan, run_stage, select, why_not_done
from pipeline.tracking import EXPERIMENT_KIND, Tracker
from tests.conftest import TINY, make_conf

ALL = ["lane_classifier", "tl_classifier", "tl_detector"]


def test_the_order_is_derived_from_what_each_stage_needs():
    jobs = plan(ALL, "lane_classifier")
    names = [j.name for j in jobs]
    position = {n: i for i, n in enumerate(names)}
    assert {f"train.{t}" for t in ALL} | {f"evaluate.{t}" for t in ALL} <= set(names)
    for job in jobs:
        assert all(position[need] < position[job.name] for need in job.needs), job
    assert {s.name for s in STAGES} == {j.stage.name for j in jobs}
    report = next(j for j in jobs if j.name == "report")
    assert {f"evaluate.{t}" for t in ALL} <= set(report.needs)       # "evaluate*": every task's
    for t in ALL:                                                      # every net is audited (and gated)
        assert next(j for j in jobs if j.name == f"audit.{t}").needs == (f"train.{t}",)
    assert {f"audit.{t}" for t in ALL} <= set(report.needs)
    # the analysis stages study train.task's net: it is trained even when run.tasks leaves it out
    assert "train.lane_classifier" in [j.name for j in plan(["tl_detector"], "lane_classifier")]
    assert [j.name for j in select(jobs, only=["evaluate"])] == [f"evaluate.{t}" for t in ALL]
    assert select(jobs, start="correlate")[0].name == "correlate" and select(jobs, start="correlate")[-1].name == "report"
    with pytest.raises(KeyError, match="unknown stage 'trian'"):
        select(jobs, only=["trian"])


def test_a_job_reruns_when_its_config_code_input_or_output_changes(spark, tmp_path, monkeypatch, capsys):
    conf = make_conf(tmp_path, *TINY)
    ingest, train = get_stage("ingest"), get_stage("train")
    assert why_not_done(conf, ingest) == "it never finished"
    run_stage(ingest, spark, conf, Tracker(conf))
    assert why_not_done(conf, ingest) is None
    assert why_not_done(make_conf(tmp_path, *TINY, "ingest.seed=1"), ingest) == "its config changed"
    assert why_not_done(make_conf(tmp_path, *TINY, "train.epochs=9"), ingest) is None   # not ingest's business
    run_stage(train, spark, conf, Tracker(conf), needs=("ingest",))
    assert why_not_done(conf, train, ("ingest",)) is None
    # A job run alone (pipeline <stage>, jobs/<stage>.py) runs whenever asked; --skip-up-to-date gives it the rule
    # above (the Airflow DAG's tasks ask for it): nothing is run or logged for an up-to-date job, a changed one runs.
    client = MlflowClient(conf.mlflow.tracking_uri)
    runs = lambda: client.search_runs([e.experiment_id for e in client.search_experiments()])  # noqa: E731
    logged = len(runs())
    args = [f"paths.work_dir={tmp_path}", "spark.master=local[2]", "spark.conf.spark.driver.memory=2g",
            "spark.conf.spark.sql.shuffle.partitions=4", *TINY]    # the shared session's settings kept
    assert main(["train", "--skip-up-to-date", *args]) == 0
    assert "train.lane_classifier: up to date (same config, code and inputs), skipped" in capsys.readouterr().out
    assert len(runs()) == logged
    assert main(["ingest", "--skip-up-to-date", *args, "ingest.seed=1"]) == 0
    assert "up to date" not in capsys.readouterr().out and len(runs()) == logged + 2       # a parent and its child
    assert why_not_done(conf, ingest) == "its config changed"
    monkeypatch.setattr(stages, "code_version", lambda: "another-version")
    assert why_not_done(conf, train, ("ingest",)) == "the code changed"
    monkeypatch.undo()
    run_stage(ingest, spark, conf, Tracker(conf))                           # the input was made again
    assert why_not_done(conf, train, ("ingest",)) == "its input ingest changed"
    import shutil

    shutil.rmtree(tmp_path / "data" / "synthetic")
    assert why_not_done(conf, ingest).startswith("its output file://") and "is gone" in why_not_done(conf, ingest)


def test_a_failed_stage_is_named_marked_failed_and_the_next_run_resumes_there(spark, tmp_path, capsys):
    # the shared session's own settings (conftest), or getOrCreate would change them for every later test
    args = [f"paths.work_dir={tmp_path}", "spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=4",
            "spark.conf.spark.driver.memory=2g", *TINY, "run.tasks=[lane_classifier]"]
    assert main(["run", "--only", "ingest,train", *args, "train.batch_size=500"]) == 2
    err = capsys.readouterr().err
    assert "stage train.lane_classifier:" in err and "fewer than train.batch_size" in err
    conf = make_conf(tmp_path, *TINY, "run.tasks=[lane_classifier]")
    client = MlflowClient(conf.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(conf.mlflow.experiment)
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    failed = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train lane_classifier'")
    assert [r.info.status for r in failed] == ["FAILED"]
    # the next run skips what finished and runs the stage that failed
    assert main(["run", "--only", "ingest,train", *args, "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] ingest: up to date" in out
    assert "== [2/2] train.lane_classifier (it never finished)" in out
    assert "-- train.lane_classifier done in " in out and "time per job: train.lane_classifier " in out
    trained = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train lane_classifier' and "
                                 "attributes.status = 'FINISHED'")
    assert len(trained) == 1 and trained[0].data.tags["pipeline.task"] == "lane_classifier"


def test_a_second_run_on_the_same_output_stops_at_once_naming_the_holder(tmp_path, capsys):
    conf = make_conf(tmp_path)
    with hold(conf, "pipeline run (the first)"):
        assert main(["run", f"paths.work_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'pipeline run (the first)'" in err[0] and f"pid {os.getpid()}" in err[0]
    # a holder killed with SIGKILL leaves nothing stuck: the kernel drops its lock
    code = ("import sys, time; sys.path.insert(0, %r); from tests.conftest import make_conf; from pipeline.lock "
            "import hold\nwith hold(make_conf(%r), 'holder'):\n    print('held', flush=True); time.sleep(600)"
            % (os.getcwd(), str(tmp_path)))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from pipeline.lock import PipelineBusy

        with pytest.raises(PipelineBusy, match=f"pid {holder.pid}"):
            with hold(conf, "second"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with hold(conf, "after the kill") as path:
        assert path == lock_path(conf)
