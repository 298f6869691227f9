"""An executor JVM SIGKILLed while ingest's and then augment's tasks run, on `local-cluster[2,1,1024]`: Spark
retries the lost tasks (on the other executor or the one the worker starts instead), each task's file is
named after its input and committed only from the attempt the driver heard of, so the output has exactly the
expected rows: none lost, none twice, the ledger accounting for every input."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import LIGHT_EXECUTORS, make_conf
from tests.faults.util import (TINY_ARGS, Proc, cmdline, dataset_rows, hidden_files, lost_and_duplicated, pids,
                               record, running)

CLUSTER = ["spark.master=local-cluster[2,1,1024]", LIGHT_EXECUTORS, "augment.copies=1"]
JOB = Path(__file__).with_name("cluster_job.py")


def _events(proc: Proc) -> dict:
    out = {}
    for line in proc.output().splitlines():
        if line.startswith('{"event"'):
            event = json.loads(line)
            out[event["event"]] = event
    return out


def _running_task(ui: str, app: str, where: str):
    """(stage name, executor id) of a task Spark reports RUNNING in an active stage whose name holds ``where``."""
    def get(path):
        with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/{path}", timeout=5) as resp:
            return json.loads(resp.read())
    try:
        for stage in get("stages?status=active"):
            if where in stage["name"]:
                tasks = get(f"stages/{stage['stageId']}/{stage['attemptId']}/taskList?length=1000")
                for task in tasks:
                    if task["status"] == "RUNNING" and task["executorId"] != "driver":
                        return stage["name"], task["executorId"]
    except OSError:
        pass
    return None


def _executor_jvm(app: str, executor: str) -> int:
    found = [p for p in pids() if "CoarseGrainedExecutorBackend" in cmdline(p) and f"--app-id {app}" in cmdline(p)
             and f"--executor-id {executor} " in cmdline(p) + " "]
    assert len(found) == 1, found
    return found[0]


def test_an_executor_killed_mid_ingest_and_mid_augment_loses_and_duplicates_nothing(tiny_data, tmp_path):
    proc = Proc([sys.executable, JOB, tmp_path, *TINY_ARGS, *CLUSTER], tmp_path / "cluster.log")
    killed = []
    try:
        deadline = time.monotonic() + 600
        while "started" not in _events(proc):
            assert proc.alive() and time.monotonic() < deadline, proc.tail()
            time.sleep(0.1)
        app, ui = _events(proc)["started"]["app"], _events(proc)["started"]["ui"]
        for where, done in (("ingest.py", "ingest done"), ("augment/stage.py", "augment done")):
            while True:       # kill the JVM of an executor Spark says is running a task of this stage, at once
                assert proc.alive() and time.monotonic() < deadline, proc.tail()
                assert done not in _events(proc), f"{where}: no task was caught running"
                found = _running_task(ui, app, where)
                if found:
                    os.kill(_executor_jvm(app, found[1]), signal.SIGKILL)
                    killed.append(found)
                    break
                time.sleep(0.05)
        code = proc.wait(timeout=600)
    finally:
        proc.kill_tree()
    assert code == 0, proc.tail()
    done = _events(proc)["done"]
    failed = {s["name"]: s["failed"] for s in done["stages"]}
    for name, executor in killed:       # the kill failed a running task, which Spark ran again
        assert failed[name] >= 1, (name, failed)
    assert len(done["lost"]) == 2, done["lost"]

    data = tmp_path / "data"
    ingest = done["results"]["ingest"]
    assert ingest["rows_in"] == 48 == ingest["rows_written"] + ingest["rows_quarantined"]
    expected = dataset_rows(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic")   # no kill, local[2]
    got = dataset_rows(data / "synthetic")
    lost, dup = lost_and_duplicated(expected, got)
    ledger = pq.read_table(str(data / "synthetic" / "ledger")).to_pylist()
    assert len(ledger) == 48 and len({r["input_id"] for r in ledger}) == 48
    assert sum(r["status"] == "written" for r in ledger) == ingest["rows_written"]

    augmented = dataset_rows(data / "synthetic-basic")
    want = {}
    for key, rows in got.items():
        ids = [i for i, _ in rows]
        want[key] = sorted(ids + [f"{i}~1" for i in ids]) if key.endswith("/train") else sorted(ids)
    a_lost = sum(len(set(want[k]) - {i for i, _ in augmented.get(k, [])}) for k in want)
    a_dup = sum(len(rows) - len(set(want[k])) for k, rows in augmented.items())
    assert {k: sorted(i for i, _ in rows) for k, rows in augmented.items()} == want
    assert hidden_files(data / "synthetic") == [] and hidden_files(data / "synthetic-basic") == []
    left = running(make_conf(tmp_path).mlflow.tracking_uri)
    what = ", ".join(f"executor {e} during '{n.split(' at ')[0]} {n.rsplit('/', 1)[-1]}'" for n, e in killed)
    record("executor JVM SIGKILLed mid-ingest (local-cluster[2,1,1024])",
           f"killed {what}: {failed[killed[0][0]]} task(s) failed and ran again; 48 of 48 inputs in the ledger, "
           f"rows equal an uninterrupted local[2] ingest", lost, dup, len(left))
    record("executor JVM SIGKILLed mid-augment (local-cluster[2,1,1024])",
           f"{failed[killed[1][0]]} task(s) failed and ran again; every source row once plus its copy, ids unique",
           a_lost, a_dup, len(left))
