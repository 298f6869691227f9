"""A team's tracking server (``mlflow server`` on PostgreSQL, artifacts proxied to a URL: tests/tracking_server.py):
two ``pipeline run``s of different datasets log to it at the same time and lose nothing; two runs that start at
once and both find no experiment share one."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as _tracking

from pipeline.data.synth import LANE_CLASSES
from pipeline.tracking import Tracker
from tests.conftest import make_conf
from tests.faults.util import TINY_ARGS, Proc
from tests.tracking_server import TrackingServer, require_postgres

PIPELINE = str(Path(sys.executable).parent / "pipeline")
# ingest, train (2 epochs) and evaluate of the lane net on 48 frames: runs, metrics per epoch, a dataset, a model
# and figures
ONLY = ["run.tasks=[lane_classifier]", "train.task=lane_classifier",
        "train.epochs=2", "mlflow.system_metrics_s=1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    admin = require_postgres()
    server = TrackingServer(tmp_path_factory.mktemp("team-server"), admin)
    try:
        yield server.wait()
    finally:
        server.stop()


def _tree(client: MlflowClient, run_id: str, path: str = "") -> set:
    """Every artifact file of a run, through the server."""
    out = set()
    for item in client.list_artifacts(run_id, path or None):
        out |= _tree(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _what_was_logged(client: MlflowClient, parent_id: str) -> dict:
    """``{run name: (status, {metric: steps logged}, params, artifacts, dataset digests)}`` of a parent run's
    children; artifacts: the run's, and ``model/<name>/<path>`` of the models it logged."""
    children = client.search_runs(client.get_run(parent_id).info.experiment_id,
                                  f"tags.`mlflow.parentRunId` = '{parent_id}'")
    out = {}
    for run in children:
        steps = {key: len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}
        digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
        files = _tree(client, run.info.run_id)
        for output in run.outputs.model_outputs if run.outputs else []:
            model = client.get_logged_model(output.model_id)
            files |= {f"model/{model.name}/{a.path}" for a in client.list_logged_model_artifacts(model.model_id)}
        out[run.info.run_name] = (run.info.status, steps, set(run.data.params), files, digests)
    return out


def _shape(steps: dict) -> dict:
    """The metrics of a run (not the system metrics, sampled by time) with the number of steps of each, the
    per-class ones folded to ``<metric>_<class>``: which classes a split holds (or an epoch predicts) depends on
    the dataset, but each
    per-class metric of a split (``test_f1_<class>``, ``test_recall_<class>``, ...) must be there for the same
    classes."""
    per_class = re.compile(rf"(.+?)_({'|'.join(map(re.escape, LANE_CLASSES))})$")
    shape, classes = {}, {}
    for key, n in steps.items():
        if key.startswith("system/"):
            continue
        match = per_class.match(key)
        if match:
            classes.setdefault(match.group(1), set()).add(match.group(2))
            shape[f"{match.group(1)}_<class>"] = "per class"
        else:
            shape[key] = n
    for split in {metric.split("_")[0] for metric in classes}:          # no metric of a class missing
        assert len({frozenset(c) for m, c in classes.items() if m.split("_")[0] == split}) == 1, (split, classes)
    return shape


def test_two_pipeline_runs_of_different_datasets_log_to_one_server_at_once(server, tmp_path):
    procs = {}
    for name, seed in (("a", 0), ("b", 1)):          # two datasets: another synthetic seed, another work dir
        procs[name] = Proc([PIPELINE, "run", "--only", "ingest,train,evaluate", *TINY_ARGS, *ONLY,
                            f"paths.work_dir={tmp_path / name}",
                            f"ingest.seed={seed}", f"mlflow.tracking_uri={server.uri}"], tmp_path / f"{name}.log")
    try:
        for proc in procs.values():
            assert proc.wait(900) == 0, proc.tail()
    finally:
        for proc in procs.values():
            proc.kill_tree()
    parents = {name: next(line.split()[1] for line in proc.output().splitlines()
                          if line.startswith("pipeline.run_id ")) for name, proc in procs.items()}

    client = MlflowClient(server.uri)
    a, b = (client.get_run(parents[n]) for n in ("a", "b"))
    # at the same time: each started before the other ended
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    assert a.info.experiment_id == b.info.experiment_id                          # one experiment, made once
    logged = {name: _what_was_logged(client, run_id) for name, run_id in parents.items()}
    names = {"ingest", "train lane_classifier", "evaluate lane_classifier"}
    for name, runs in logged.items():
        assert set(runs) == names, (name, sorted(runs))
        assert all(status == "FINISHED" for status, *_ in runs.values()), (name, runs)
        _, steps, params, artifacts, _ = runs["train lane_classifier"]
        assert steps["train_loss"] == 2 and steps["val_accuracy"] == 2, steps      # every epoch of both
        assert any(key.startswith("system/") for key in steps), sorted(steps)      # logged from another thread
        assert "train.epochs" in params and "model/lane_classifier/MLmodel" in artifacts, sorted(artifacts)
    # the same jobs logged the same things for both: no metric, param or artifact of one missing
    for run_name in names:
        (_, steps_a, params_a, files_a, _), (_, steps_b, params_b, files_b, _) = \
            logged["a"][run_name], logged["b"][run_name]
        assert params_a == params_b and files_a == files_b, run_name
        assert _shape(steps_a) == _shape(steps_b), run_name
    assert logged["a"]["train lane_classifier"][4] and logged["a"]["train lane_classifier"][4].isdisjoint(
        logged["b"]["train lane_classifier"][4])                                  # two datasets, two digests
    # nothing left RUNNING; the server's PostgreSQL database holds every run, and the artifacts lie at its URL
    every = client.search_runs([a.info.experiment_id], max_results=1000)
    assert [r.info.run_name for r in every if r.info.status != "FINISHED"] == []
    assert server.backend()["runs"] == len(every) == 2 + 2 * len(names)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in every)
    assert list((Path(server.artifacts[len("file://"):])).rglob("MLmodel"))


def test_two_runs_that_both_find_no_experiment_share_the_one_made_first(server, tmp_path, monkeypatch):
    """Both processes ask for the experiment before either made it: the second create fails on the server
    (RESOURCE_ALREADY_EXISTS) and that Tracker takes the experiment the first made."""
    conf = make_conf(tmp_path, f"mlflow.tracking_uri={server.uri}", "mlflow.experiment=raced")
    monkeypatch.setattr(_tracking, "_tracking_uri", _tracking._tracking_uri)   # a Tracker sets MLflow's current URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI", ""))   # ... and this variable
    first = Tracker(conf)
    real, asked = MlflowClient.get_experiment_by_name, []

    def not_made_yet(self, name):     # the first question is answered as before the first Tracker made it
        asked.append(name)
        return None if len(asked) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_made_yet)
    second = Tracker(conf)
    assert second.experiment_id == first.experiment_id
    experiment = MlflowClient(server.uri).get_experiment(first.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")    # the server's, not a local folder
