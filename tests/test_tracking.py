"""MLflow tracking against a real SQLite store and a real `mlflow server` process."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import matplotlib
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import Tracker, fingerprint_files
from tests.conftest import make_conf

matplotlib.use("Agg")


def _log_a_pipeline(tracker, data_dir):
    import matplotlib.pyplot as plt
    import mlflow

    (data_dir / "part-0.parquet").write_bytes(b"rows")
    with tracker.pipeline_run("pipeline") as parent:
        with tracker.stage_run("ingest") as child:
            mlflow.log_metric("rows_written", 42)
            fig, ax = plt.subplots()
            ax.plot([0, 1], [1, 0])
            tracker.log_figure(fig, "samples")
            tracker.log_dataset("road_frames", data_dir.as_uri(), 42, fingerprint_files(data_dir.as_uri()))
    return parent.info.run_id, child.info.run_id


def _check_logged(client, parent_id, child_id):
    parent, child = client.get_run(parent_id), client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.metrics["rows_written"] == 42
    assert child.data.metrics["dataset.road_frames.rows"] == 42
    assert child.data.params["train.epochs"] == "5"            # the resolved config, on every run
    assert parent.data.params["train.epochs"] == "5"
    assert child.data.tags["mlflow.source.git.commit"]
    artifacts = {a.path for a in client.list_artifacts(child_id)}
    assert {"config.yaml", "figures"} <= artifacts
    assert [a.path for a in client.list_artifacts(child_id, "figures")] == ["figures/samples.png"]
    inputs = child.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["road_frames"]


def test_sqlite_store_parent_child_params_metrics_figure_dataset(tmp_path):
    conf = make_conf(tmp_path)
    data_dir = tmp_path / "ds"
    data_dir.mkdir()
    parent_id, child_id = _log_a_pipeline(Tracker(conf), data_dir)
    _check_logged(MlflowClient(conf.mlflow.tracking_uri), parent_id, child_id)
    assert (tmp_path / "mlflow.db").exists()


def test_failed_stage_marks_runs_failed_with_the_error(tmp_path):
    conf = make_conf(tmp_path)
    tracker = Tracker(conf)
    with pytest.raises(RuntimeError, match="corrupt"):
        with tracker.pipeline_run("pipeline") as parent:
            with tracker.stage_run("ingest") as child:
                raise RuntimeError("corrupt shard")
    client = MlflowClient(conf.mlflow.tracking_uri)
    run = client.get_run(child.info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: corrupt shard"
    assert client.get_run(parent.info.run_id).info.status == "FAILED"


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"one")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    first = fingerprint_files(tmp_path.as_uri())
    (tmp_path / "_SUCCESS").write_bytes(b"marker changes are not content")
    assert fingerprint_files(tmp_path.as_uri()) == first
    (tmp_path / "a.parquet").write_bytes(b"two")
    assert fingerprint_files(tmp_path.as_uri()) != first


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)  # polling a starting process, not a test delay
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_mlflow_server_path(tmp_path, mlflow_server):
    conf = make_conf(tmp_path, f"mlflow.tracking_uri={mlflow_server}", "mlflow.artifact_location=null")
    data_dir = tmp_path / "ds"
    data_dir.mkdir()
    parent_id, child_id = _log_a_pipeline(Tracker(conf), data_dir)
    _check_logged(MlflowClient(mlflow_server), parent_id, child_id)
    assert not (tmp_path / "mlflow.db").exists()     # nothing went to the embedded store


def test_a_stage_run_records_the_config_it_ran_with(tmp_path):
    """One invocation, several stage configs (e.g. one train run per task): each child logs its own."""
    tracker = Tracker(make_conf(tmp_path))
    detector = make_conf(tmp_path, "train.task=tl_detector")
    with tracker.pipeline_run("pipeline") as parent:
        with tracker.stage_run("train", detector) as child:
            pass
    client = MlflowClient(tracker.uri)
    assert client.get_run(child.info.run_id).data.params["train.task"] == "tl_detector"
    assert client.get_run(parent.info.run_id).data.params["train.task"] == "lane_classifier"
