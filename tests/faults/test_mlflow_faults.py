"""The MLflow tracking server unreachable at start (a closed port) and killed mid-run (a real `mlflow server`
process, SIGKILLed while a training runs against it); and the runs a dead process left RUNNING."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import HTTP_DEFAULTS, PID_START_TAG, PID_TAG, Tracker, TrackingUnreachable, process_start
from pipeline.train.run import load_checkpoint
from tests.conftest import make_conf
from tests.faults.util import PIPELINE, TINY_ARGS, Proc, dataset_rows, lost_and_duplicated, record, running, wait_for
from tests.test_tracking import _free_port, mlflow_server  # noqa: F401  (a fixture: a real `mlflow server`)


def _closed_port() -> int:
    port = _free_port()  # bound and released: nothing listens there
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_an_unreachable_server_at_start_is_one_line_naming_the_uri_at_once(tmp_path, monkeypatch):
    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)               # the Tracker's defaults, not the caller's
    uri = f"http://127.0.0.1:{_closed_port()}"
    tic = time.monotonic()
    with pytest.raises(TrackingUnreachable) as err:
        Tracker(make_conf(tmp_path, f"mlflow.tracking_uri={uri}"))
    assert time.monotonic() - tic < 5                        # one probe, no retries
    message = str(err.value)
    assert uri in message and "Connection refused" in message and "mlflow server" in message
    assert "mlflow.tracking_uri" in message and "\n" not in message
    assert {key: os.environ[key] for key in HTTP_DEFAULTS} == HTTP_DEFAULTS   # set by the Tracker (env wins)
    # the command line, in a process of its own (started now: it runs while the retries below sleep)
    proc = Proc([PIPELINE, "ingest", f"paths.work_dir={tmp_path}", f"mlflow.tracking_uri={uri}"], tmp_path / "cli.log")
    tic = time.monotonic()                                   # what one call costs once a server is gone
    with pytest.raises(Exception, match="Connection refused"):
        MlflowClient(uri).get_run("0" * 32)
    bound = time.monotonic() - tic
    assert 5 < bound < 20, bound                             # 3 retries: 0 + 2 + 4 s (+ jitter), not 4 minutes
    assert proc.wait(timeout=120) == 2
    lines = proc.output().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pipeline: error: the MLflow tracking server {uri} is "
                                                   f"unreachable"), lines
    record("MLflow server unreachable at start", f"Tracker stops before Spark starts: one line naming the URI and "
                                                 f"the fix, exit 2, no traceback; a call to a dead server fails "
                                                 f"after {bound:.1f} s (3 retries)")


def test_a_server_killed_mid_training_fails_the_stage_in_bounded_time_with_the_cause(tiny_data, tmp_path,
                                                                                     mlflow_server):  # noqa: F811
    data_url = tiny_data().paths.data_url
    dataset = Path(data_url[len("file://"):]) / "synthetic"
    before = dataset_rows(dataset)
    ckpt = tmp_path / "ckpt"
    proc = Proc([PIPELINE, "train", f"paths.work_dir={tmp_path}", f"paths.data_url={data_url}", *TINY_ARGS,
                 f"mlflow.tracking_uri={mlflow_server}", "mlflow.artifact_location=null", "train.epochs=3",
                 f"paths.checkpoint_url=file://{ckpt}"], tmp_path / "train.log")
    try:
        wait_for("the first epoch's checkpoint", lambda: list(ckpt.rglob("last.pt")), 300, proc)
        _kill_server(mlflow_server)
        killed_at = time.monotonic()
        code = proc.wait(timeout=300)
        seconds = time.monotonic() - killed_at
    finally:
        proc.kill_tree()
    out = proc.output()
    assert code != 0, out[-3000:]
    assert "stage train.lane_classifier failed" in out, out[-3000:]
    assert "Connection refused" in out and mlflow_server in out, out[-3000:]
    assert "mlflow: could not mark run" in out                # said in one line; the original error is kept
    # From the kill: the rest of the epoch (the next log call is at its end), 4 attempts, the driver's one.
    assert seconds < 150, f"the stage took {seconds:.0f} s to fail after the server died"
    state = load_checkpoint(next(ckpt.rglob("last.pt")).parent.as_uri())   # intact: loads, weights_only=True
    assert state is not None and 0 <= state["epoch"] < 2
    lost, dup = lost_and_duplicated(before, dataset_rows(dataset))
    # The runs it could not end, in the server's own store (read directly): the next Tracker marks them KILLED.
    store_uri = f"sqlite:///{tmp_path}/server.db"
    left = running(store_uri)
    assert left, "the dead server could not have been told the run ended"
    Tracker(make_conf(tmp_path, f"mlflow.tracking_uri={store_uri}"))
    record("MLflow server SIGKILLed mid-training",
           f"the stage failed {seconds:.0f} s after the kill (3 retries), naming the URI and 'Connection refused'; "
           f"the epoch-{state['epoch'] + 1} checkpoint loads; the dataset unchanged; the {len(left)} runs it could "
           f"not end marked KILLED by the next Tracker", lost, dup, len(running(store_uri)))


def _server_tree(url: str) -> list:
    """The `mlflow server` process on ``url``'s port and its workers (uvicorn serves from a child process)."""
    from tests.faults.util import cmdline, parent, pids

    port = f"--port {url.rsplit(':', 1)[1]}"
    roots = [p for p in pids() if port in cmdline(p) and "mlflow" in cmdline(p) and " server " in cmdline(p)]
    assert roots, f"no mlflow server process on {url}"
    tree, grew = set(roots), True
    while grew:
        more = {p for p in pids() if parent(p) in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def _kill_server(url: str) -> None:
    for pid in _server_tree(url):
        os.kill(pid, signal.SIGKILL)
    port = int(url.rsplit(":", 1)[1])

    def closed():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) != 0
    wait_for(f"the server on port {port} to be gone", closed, 30)


def test_runs_of_dead_processes_are_marked_killed_and_live_ones_left_alone(tmp_path, capsys):
    conf = make_conf(tmp_path)
    tracker = Tracker(conf)
    client = MlflowClient(conf.mlflow.tracking_uri)
    with tracker.stage_run("ingest") as live:               # this process: alive
        reused = client.create_run(tracker.experiment_id, run_name="pid reused", tags={
            "pipeline.host": socket.gethostname(), PID_TAG: str(os.getpid()), PID_START_TAG: "another-boot:1"})
        child = client.create_run(tracker.experiment_id, run_name="its cell", tags={
            "mlflow.parentRunId": reused.info.run_id})
        other_host = client.create_run(tracker.experiment_id, run_name="elsewhere", tags={
            "pipeline.host": "another-host", PID_TAG: "1", PID_START_TAG: ""})
        capsys.readouterr()
        again = Tracker(conf)                                # a Tracker that starts marks them
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 2 and all("marked KILLED" in line for line in out), out
        assert reused.info.run_id in out[0] + out[1] and child.info.run_id in out[0] + out[1]
        assert again.mark_killed_runs() == []                # once
        assert client.get_run(live.info.run_id).info.status == "RUNNING"
        assert client.get_run(other_host.info.run_id).info.status == "RUNNING"
        assert process_start(os.getpid()) == live.data.tags[PID_START_TAG]
    assert client.get_run(reused.info.run_id).info.status == "KILLED"
    assert client.get_run(child.info.run_id).info.status == "KILLED"
    assert "killed:" in client.get_run(reused.info.run_id).data.tags["error"]
