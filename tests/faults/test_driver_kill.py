"""The driver killed with SIGKILL mid-ingest, mid-augment and mid-swap (real kills, at points observed on disk or
reached in the code): the previous dataset stays readable, the re-run writes the same rows, and the runs the
killed process left RUNNING are marked KILLED by the next run (pipeline/tracking.py)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from tests.conftest import TINY, make_conf
from tests.faults.util import (PIPELINE, TINY_ARGS, Proc, dataset_rows, leftovers, lost_and_duplicated, record,
                               runs_by_status, running, wait_for)


def _inprogress(data: Path, name: str):
    """The hidden files of tasks still writing (a task opens its file at its first row group, at the latest when
    it ends: the tiny tasks here do at their end, while the job's other tasks still run)."""
    return [p for p in data.glob(f"{name}.tmp-*/**/.*.inprogress")]


def _rerun(spark, conf, stage: str, capsys) -> str:
    run_stage(get_stage(stage), spark, conf, Tracker(conf))
    return capsys.readouterr().out


def _check_killed_and_rerun(spark, work: Path, name: str, stage: str, before: dict, conf, capsys, fault: str):
    data = work / "data"
    assert lost_and_duplicated(before, dataset_rows(data / name)) == (0, 0)    # readable, as it was
    left_open = running(conf.mlflow.tracking_uri)
    assert left_open, "the killed process had runs open"
    out = _rerun(spark, conf, stage, capsys)
    marked = [line for line in out.splitlines() if line.startswith("mlflow: run ") and "marked KILLED" in line]
    assert len(marked) == len(left_open), out
    after = dataset_rows(data / name)
    lost, dup = lost_and_duplicated(before, after)
    assert leftovers(data, name) == []
    statuses = runs_by_status(conf.mlflow.tracking_uri)
    record(fault, f"previous dataset read back whole after the kill; {len(left_open)} runs left RUNNING by the "
                  f"killed driver marked KILLED by the re-run; re-run wrote the same {sum(map(len, after.values()))} "
                  f"rows, no leftovers", lost, dup, len(statuses.get("RUNNING", [])))
    assert len(statuses["KILLED"]) == len(left_open)


def test_driver_killed_mid_ingest(spark, tiny_copy, capsys):
    work, data = tiny_copy, tiny_copy / "data"
    before = dataset_rows(data / "synthetic")
    proc = Proc([PIPELINE, "ingest", f"paths.work_dir={work}", *TINY_ARGS], work / "ingest.log")
    try:
        found = wait_for("a task writing its file", lambda: _inprogress(data, "synthetic"), 240, proc)
        proc.kill()                                       # the driver only: its JVM and workers go by themselves
    finally:
        proc.settle()
    assert proc.popen.returncode == -9 and found
    _check_killed_and_rerun(spark, work, "synthetic", "ingest", before, make_conf(work, *TINY), capsys,
                            "driver SIGKILL mid-ingest")


def test_driver_killed_mid_augment(spark, tiny_copy, capsys):
    work, data = tiny_copy, tiny_copy / "data"
    conf = make_conf(work, *TINY, "augment.copies=1")
    run_stage(get_stage("augment"), spark, conf, Tracker(conf))
    before = dataset_rows(data / "synthetic-basic")
    proc = Proc([PIPELINE, "augment", f"paths.work_dir={work}", *TINY_ARGS, "augment.copies=1"],
                work / "augment.log")
    try:
        wait_for("an augment task writing its file", lambda: _inprogress(data, "synthetic-basic"), 240, proc)
        proc.kill()
    finally:
        proc.settle()
    assert proc.popen.returncode == -9
    _check_killed_and_rerun(spark, work, "synthetic-basic", "augment", before, conf, capsys,
                            "driver SIGKILL mid-augment")


def test_killed_mid_swap(spark, tiny_copy, capsys):
    """PIPELINE_FAULT=kill-mid-swap: a process SIGKILLs itself inside store.swap_in (the driver's last step of a
    write), the new dataset exchanged in, the old one not yet deleted. The dataset's path never lacks a whole
    dataset; the next writer's recover() deletes the old one."""
    work, data = tiny_copy, tiny_copy / "data"
    root = data / "synthetic"
    before = dataset_rows(root)
    new = data / "synthetic.tmp-0000test"                 # a finished write: the same rows a re-ingest gives
    shutil.copytree(root, new)
    (new / "written-by").write_text("the new one")
    code = f"from pipeline.data import store; store.swap_in({new.as_uri()!r}, {root.as_uri()!r})"
    proc = Proc([sys.executable, "-c", code], work / "swap.log", env={"PIPELINE_FAULT": "kill-mid-swap"})
    assert proc.wait(timeout=120) == -9 and "SIGKILL at kill-mid-swap" in proc.output(), proc.tail()
    assert (root / "written-by").exists() and not (new / "written-by").exists()   # exchanged: new in, old aside
    assert lost_and_duplicated(before, dataset_rows(root)) == (0, 0)               # whole, readable
    assert leftovers(data, "synthetic") == ["synthetic.tmp-0000test"]
    conf = make_conf(work, *TINY)
    run_stage(get_stage("ingest"), spark, conf, Tracker(conf))
    lost, dup = lost_and_duplicated(before, dataset_rows(root))
    assert leftovers(data, "synthetic") == [] and not (root / "written-by").exists()
    record("SIGKILL mid-swap (PIPELINE_FAULT=kill-mid-swap)", "the path held a whole dataset at the kill (the new "
           "one, exchanged in atomically; the old one aside, deleted by the next run's recover()); the re-run "
           "wrote the same rows", lost, dup, len(running(conf.mlflow.tracking_uri)))
