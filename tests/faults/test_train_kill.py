"""Training killed mid-run for real: one DDP rank SIGKILLed (the job fails, its run FAILED), then the whole job
SIGKILLed (driver, torchrun and both ranks: its runs left RUNNING, marked KILLED by the next run); each time
`train.resume=true` continues from the last checkpoint, and the final weights equal an uninterrupted run's."""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.stages import get_stage, run_stage
from pipeline.tracking import Tracker
from pipeline.train.run import distribute, load_checkpoint
from pipeline.train.spec import make_spec
from tests.conftest import make_conf
from tests.faults.util import PIPELINE, TINY_ARGS, Proc, descendants, environ, record, runs_by_status, wait_for

TRAIN = ["train.num_processes=2", "train.epochs=3", "train.batch_size=4"]   # 3 steps an epoch on each rank


def test_a_killed_rank_and_a_killed_job_resume_to_the_uninterrupted_result(spark, tiny_data, tmp_path, capsys):
    data_url = tiny_data().paths.data_url
    args = [f"paths.work_dir={tmp_path}", f"paths.data_url={data_url}", *TINY_ARGS, *TRAIN,
            f"paths.checkpoint_url=file://{tmp_path}/ckpt"]
    conf = make_conf(tmp_path, *args)
    spec = make_spec(conf)
    ckpt = tmp_path / "ckpt" / "synthetic" / "lane_classifier" / "last.pt"

    # 1. One rank SIGKILLed after the first epoch's checkpoint (the stage runs here; its ranks are torchrun's
    #    processes): torchrun stops the other rank, the stage fails, its run is marked FAILED.
    killed, stop = [], threading.Event()

    def kill_rank1():
        end = time.monotonic() + 300
        while time.monotonic() < end and not killed and not stop.is_set():
            ranks = [p for p in descendants(os.getpid()) if environ(p).get("RANK") == "1"] if ckpt.exists() else []
            if ranks:
                os.kill(ranks[0], signal.SIGKILL)
                killed.append(ranks[0])
            time.sleep(0.05)
    watcher = threading.Thread(target=kill_rank1, daemon=True)
    watcher.start()
    try:
        with pytest.raises(RuntimeError, match="TorchDistributor failed"):
            run_stage(get_stage("train"), spark, conf, Tracker(conf))
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert killed, "rank 1 was not found"
    assert load_checkpoint(ckpt.parent.as_uri())["epoch"] == 0
    statuses = runs_by_status(conf.mlflow.tracking_uri)
    assert list(statuses) == ["FAILED"] and len(statuses["FAILED"]) == 2, statuses    # the stage and its parent

    # 2. The resumed job SIGKILLed whole (driver, torchrun, ranks) once it wrote the next checkpoint. Meanwhile
    #    (its driver starts a JVM and opens the store first) the uninterrupted reference trains here, in a thread:
    #    the same two ranks, its own checkpoint folder, its processes outside the job's tree.
    reference = replace(spec, run_id=None, checkpoint_url=(tmp_path / "reference").as_uri())
    failed = []

    def train_reference():
        try:
            distribute(reference, 2, local_mode=True, use_gpu=False)
        except BaseException as exc:  # noqa: BLE001  (reported below, in the test's thread)
            failed.append(exc)
    uninterrupted = threading.Thread(target=train_reference, daemon=True)
    stamp = ckpt.stat().st_mtime_ns
    second = Proc([PIPELINE, "train", *args, "train.resume=true"], tmp_path / "job.log")
    uninterrupted.start()
    try:
        wait_for("the resumed run's checkpoint", lambda: ckpt.stat().st_mtime_ns != stamp, 300, second)
    finally:
        second.kill_tree()
        uninterrupted.join(timeout=600)
    assert not uninterrupted.is_alive() and not failed, failed
    expected = load_checkpoint(reference.checkpoint_url)["model"]
    killed_at = load_checkpoint(ckpt.parent.as_uri())["epoch"]
    assert killed_at == 1, "killed before its last epoch"
    assert "resuming from the checkpoint of epoch 1/3" in second.output()
    left_open = runs_by_status(conf.mlflow.tracking_uri).get("RUNNING", [])
    assert sorted(left_open) == ["train", "train lane_classifier"]

    # 3. Resumed again, to the end: the killed runs are marked KILLED; the weights are the uninterrupted ones.
    capsys.readouterr()
    results = run_stage(get_stage("train"), spark, make_conf(tmp_path, *args, "train.resume=true"), Tracker(conf))
    out = capsys.readouterr().out
    assert sum("marked KILLED" in line for line in out.splitlines()) == 2, out
    assert "1 epoch(s) to run" in out
    final = load_checkpoint(ckpt.parent.as_uri())
    assert final["epoch"] == 2
    differing = [k for k in expected if not torch.equal(expected[k], final["model"][k])]
    run = MlflowClient(conf.mlflow.tracking_uri).get_run(results["run_id"])
    assert run.data.metrics["resumed_from_epoch"] == 1 and run.data.tags["train.world_size"] == "2"
    history = MlflowClient(conf.mlflow.tracking_uri).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [2]                     # only the remaining epoch trained
    statuses = runs_by_status(conf.mlflow.tracking_uri)
    assert sorted(statuses["KILLED"]) == ["train", "train lane_classifier"]
    record("training: one DDP rank SIGKILLed mid-run", "torchrun stopped the other rank; the stage failed, its run "
           "FAILED; the epoch-1 checkpoint intact; resumed below", 0, 0, 0)
    record("training: the whole job SIGKILLed mid-run", "its 2 runs left RUNNING were marked KILLED by the next "
           f"run; train.resume=true continued from epoch {killed_at + 1}; final weights equal the uninterrupted "
           f"run's in {len(expected) - len(differing)}/{len(expected)} tensors", len(differing), 0,
           len(statuses.get("RUNNING", [])))
