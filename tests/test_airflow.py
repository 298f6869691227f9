"""The Airflow DAG (docker/airflow/road_pipeline_dag.py), loaded by Airflow's own DagBag, is ``pipeline run``'s graph,
and it runs: ``dag.test()`` runs every task (a ``SparkSubmitOperator`` submitting ``jobs/<stage>.py``) for real.

Airflow is not a dependency of the project: it lives in its own virtual environment (``bash
docker/airflow/install.sh`` makes ``.venv-airflow``, or ``$AIRFLOW_VENV``; ``make test`` makes it), so Airflow
runs there, in a subprocess, and prints what it saw as JSON; this process (the project's .venv) compares it with
``pipeline.stages.plan`` and the pipeline's own outputs. Without that venv the tests skip, saying how to make it,
except under CI (``CI=true``), where they fail: CI installs it, and a DAG test that silently skips tests nothing.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.stages import Stage, plan, why_not_done
from tests.conftest import TINY, make_conf

REPO = Path(__file__).resolve().parent.parent
DAG_FOLDER = REPO / "docker" / "airflow"
DAG_FILE = DAG_FOLDER / "road_pipeline_dag.py"
AIRFLOW_VENV = REPO / (os.environ.get("AIRFLOW_VENV") or ".venv-airflow")  # as install.sh: relative to the repository
INSTALL = "bash docker/airflow/install.sh"
DAG_SETTINGS = ("ROAD_PIPELINE_HOME", "ROAD_PIPELINE_PROFILE", "ROAD_PIPELINE_CONF", "ROAD_PIPELINE_OVERRIDES",
                "ROAD_PIPELINE_SCHEDULE", "ROAD_PIPELINE_SPARK_CONN", "ROAD_PIPELINE_RETRY_DELAY")

# Runs in the Airflow venv: DagBag over docker/airflow, optionally after adding a stage to pipeline.stages.STAGES
# (argv[2], JSON), then the DAG as one JSON line (Airflow logs to stdout too).
PROBE = r"""
import json, sys
extra = json.loads(sys.argv[2])
if extra:
    sys.path.insert(0, sys.argv[3])
    from pipeline import stages
    stages.STAGES = stages.STAGES + (stages.Stage(**extra),)
try:
    from airflow.dag_processing.dagbag import DagBag  # where later Airflow 3 releases move it
except ImportError:
    from airflow.models.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
dag = bag.dags.get("road_pipeline")
if dag is not None:
    schedule = getattr(dag, "schedule", None)  # Airflow 3; 2: schedule_interval
    schedule = schedule if isinstance(schedule, str) else getattr(dag, "schedule_interval", None)
    out["dag"] = {
        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs, "max_active_tasks": dag.max_active_tasks,
        "schedule": schedule if isinstance(schedule, str) else None,
        "tasks": {t.task_id: {"operator": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                              "retries": t.retries, "retry_delay_s": t.retry_delay.total_seconds(),
                              "application": t.application, "application_args": t.application_args,
                              "conn_id": t._conn_id, "name": t.name, "priority_weight": t.priority_weight,
                              "weight_rule": str(getattr(t.weight_rule, "value", None) or
                                                 type(t.weight_rule).__name__)}
                  for t in dag.tasks}}
print("PROBE-JSON " + json.dumps(out))
"""


def require_airflow_venv(venv: Path, environ=os.environ) -> Path:
    """The venv's python; else skip (fail under CI) with the command that makes it."""
    python = venv / "bin" / "python"
    stamp = venv / ".airflow-installed"
    wanted = hashlib.sha256((DAG_FOLDER / "requirements.txt").read_bytes()).hexdigest()
    if not python.exists():
        problem = f"no Airflow venv at {venv}"
    elif not stamp.exists() or stamp.read_text().split()[:1] != [wanted]:
        problem = f"the Airflow venv at {venv} is not made from docker/airflow/requirements.txt as it is now"
    else:
        return python
    message = f"{problem}: make it with `{INSTALL}` (AIRFLOW_VENV=DIR to put it elsewhere)"
    if environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{message}; under CI the Airflow DAG test must run, not skip", pytrace=False)
    pytest.skip(message)


def load_dag(tmp_path: Path, settings: dict = None, extra_stage: dict = None) -> dict:
    """DagBag's view of the DAG folder in the Airflow venv, with the DAG's settings (environment) given."""
    python = require_airflow_venv(AIRFLOW_VENV)
    env = {k: v for k, v in os.environ.items()
           if k not in DAG_SETTINGS and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow-home"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(DAG_FOLDER), **(settings or {}))
    proc = subprocess.run([str(python), "-c", PROBE, str(DAG_FOLDER), json.dumps(extra_stage or {}), str(REPO)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-JSON ")]
    assert proc.returncode == 0 and lines, f"DagBag probe failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    out = json.loads(lines[-1][len("PROBE-JSON "):])
    assert not out["import_errors"], "the DAG file does not load:\n" + "\n".join(
        f"{path}:\n{error}" for path, error in out["import_errors"].items())
    assert out["dag_ids"] == ["road_pipeline"]
    return out["dag"]


def expected_args(job, profile="local", conf_file=None, overrides=()) -> list:
    """What ``jobs/<stage>.py`` is given: pipeline run's skip rule, then the config, then the job's task."""
    return ["--skip-up-to-date", "--profile", profile, *(["--conf", conf_file] if conf_file else []), *overrides,
            *([f"train.task={job.task}"] if job.task else [])]


def check_graph(dag: dict, jobs: list, conn_id: str = "road_pipeline_spark", retry_delay_s: float = 300) -> None:
    """Same jobs, same needs, each a spark-submit of its job script through the connection, retried twice, and
    pipeline run's order among ready tasks, one at a time."""
    tasks = dag["tasks"]
    assert sorted(tasks) == sorted(j.name for j in jobs)
    for job in jobs:
        task = tasks[job.name]
        assert task["operator"] == "SparkSubmitOperator", job.name
        assert task["upstream"] == sorted(job.needs), job.name
        assert task["retries"] == 2 and task["retry_delay_s"] == retry_delay_s, job.name     # as the README says
        assert task["application"] == str(REPO / "jobs" / f"{job.stage.name}.py"), job.name
        assert task["conn_id"] == conn_id and task["name"] == f"road_pipeline.{job.name}", job.name
        assert "absolute" in task["weight_rule"].lower(), job.name
    # one task at a time, and of the ready ones the highest priority first: pipeline run's order
    assert dag["max_active_tasks"] == 1 and dag["max_active_runs"] == 1 and dag["catchup"] is False
    by_priority = sorted(tasks, key=lambda name: -tasks[name]["priority_weight"])
    assert by_priority == [j.name for j in jobs]
    assert len({t["priority_weight"] for t in tasks.values()}) == len(tasks)


def test_dag_is_pipeline_runs_graph(tmp_path):
    conf = load_config("local")
    jobs = plan(conf.run.tasks, conf.train.task)
    dag = load_dag(tmp_path)
    check_graph(dag, jobs)
    assert dag["schedule"] == "@daily"
    per_task = [j for j in jobs if j.task]
    assert {j.task for j in per_task} >= set(conf.run.tasks) and len(per_task) >= 2 * len(conf.run.tasks)
    for job in jobs:
        assert dag["tasks"][job.name]["application_args"] == expected_args(job), job.name
        assert (REPO / "jobs" / f"{job.stage.name}.py").is_file(), job.name


def test_dag_follows_config_settings_and_stage_registry(tmp_path, monkeypatch):
    """Another profile, config file, run.tasks, connection and retry delay, and one more stage in pipeline.stages:
    the DAG changes with them, so it cannot be a hard-coded copy of the graph."""
    cluster_env = {"SPARK_MASTER": "spark://master:7077", "DATA_URL": "s3://bucket/road",
                   "CHECKPOINT_URL": "s3://bucket/ckpt", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    conf_file = tmp_path / "team.yaml"
    conf_file.write_text("run:\n  tasks: [tl_detector]\n")
    overrides = ["train.task=tl_detector", "ingest.split={train: 0.5, val: 0.25, test: 0.25}"]
    extra = {"name": "smoke", "help": "a stage added for this test", "entry": "pipeline.nothing:run",
             "reads": [], "writes": [], "depends_on": [], "needs": ["evaluate*", "audit"]}
    settings = {**cluster_env, "ROAD_PIPELINE_HOME": str(REPO), "ROAD_PIPELINE_PROFILE": "cluster",
                "ROAD_PIPELINE_CONF": str(conf_file),
                "ROAD_PIPELINE_OVERRIDES": " ".join(shlex.quote(o) for o in overrides),
                "ROAD_PIPELINE_SCHEDULE": "none", "ROAD_PIPELINE_SPARK_CONN": "team_spark",
                "ROAD_PIPELINE_RETRY_DELAY": "42"}
    dag = load_dag(tmp_path, settings, extra)

    for name, value in cluster_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(stages, "STAGES", stages.STAGES + (Stage(**{k: tuple(v) if isinstance(v, list) else v
                                                                   for k, v in extra.items()}),))
    conf = load_config("cluster", str(conf_file), overrides)
    jobs = plan(conf.run.tasks, conf.train.task)
    default = load_config("local")
    assert len(jobs) < len(plan(default.run.tasks, default.train.task))  # fewer, even with one more stage
    assert "smoke" in dag["tasks"] and not any("lane_classifier" in name for name in dag["tasks"])
    check_graph(dag, jobs, conn_id="team_spark", retry_delay_s=42)
    assert dag["schedule"] is None
    for job in jobs:
        assert dag["tasks"][job.name]["application_args"] == expected_args(job, "cluster", str(conf_file),
                                                                           overrides), job.name


def test_the_connection_is_made_from_the_config(tmp_path):
    """docker/airflow/spark_connection.py: the config's spark.master, in the form Airflow reads from the
    environment; the provider's own parser turns it back into that master (checked in the Airflow venv)."""
    script = [sys.executable, str(DAG_FOLDER / "spark_connection.py")]
    line = subprocess.run([*script, "spark.master=local[3]"], capture_output=True, text=True, check=True).stdout
    name, _, value = line.strip().partition("=")
    assert name == "AIRFLOW_CONN_ROAD_PIPELINE_SPARK"
    assert json.loads(shlex.split(value)[0])["host"] == "local[3]"
    cluster = subprocess.run([*script, "--json", "--profile", "cluster"], capture_output=True, text=True, check=True,
                             env={**os.environ, "SPARK_MASTER": "spark://head:7077", "DATA_URL": "file:///d",
                                  "CHECKPOINT_URL": "file:///c", "MLFLOW_TRACKING_URI": "http://m:5000"}).stdout
    conn = json.loads(cluster)
    assert conn["conn_type"] == "spark" and conn["host"] == "spark://head:7077"
    python = require_airflow_venv(AIRFLOW_VENV)
    resolved = subprocess.run(
        [str(python), "-c", "import json, sys; from airflow.providers.apache.spark.hooks.spark_submit import "
         "SparkSubmitHook as H; d = H(conn_id='road_pipeline_spark')._resolve_connection(); "
         "print(json.dumps({k: d[k] for k in ('master', 'deploy_mode', 'spark_binary')}))"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow-home"), "AIRFLOW_CONN_ROAD_PIPELINE_SPARK": cluster})
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    assert json.loads(resolved.stdout.strip().splitlines()[-1]) == {
        "master": "spark://head:7077", "deploy_mode": "client", "spark_binary": "spark-submit"}


def test_dag_file_does_not_list_the_stages():
    """The graph comes from pipeline.stages: no stage name or job script is spelled in the DAG's code."""
    tree = ast.parse(DAG_FILE.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    literals = {node.value for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}
    names = {s.name for s in stages.STAGES}
    assert not {lit for lit in literals if lit in names or any(f"{n}.py" in lit for n in names)}
    assert "pipeline.stages" in {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_missing_venv_skips_with_the_install_command_but_fails_under_ci(tmp_path):
    with pytest.raises(pytest.skip.Exception, match="bash docker/airflow/install.sh"):
        require_airflow_venv(tmp_path / "none", environ={})
    with pytest.raises(pytest.fail.Exception, match="bash docker/airflow/install.sh"):
        require_airflow_venv(tmp_path / "none", environ={"CI": "true"})


# ------------------------------------------------------------------------------------------ the DAG runs

# Runs in the Airflow venv: Airflow's DagBag loads the DAG, dag.test() runs one DAG run (every task in this process,
# each a spark-submit), then prints the run's and each task instance's state and try as one JSON line.
RUN = r"""
import json, sys, time
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
assert not bag.import_errors, bag.import_errors
started = time.monotonic()
run = bag.dags["road_pipeline"].test()
tasks = {ti.task_id: {"state": str(ti.state), "try_number": ti.try_number,
                      "seconds": (ti.end_date - ti.start_date).total_seconds() if ti.end_date else None}
         for ti in run.get_task_instances()}
print("RUN-JSON " + json.dumps({"state": str(run.state), "seconds": time.monotonic() - started, "tasks": tasks}))
"""
# The analysis stages at about their smallest settings (tests/report/test_report.py's), correlate training its
# second net for one epoch at width 0.25: the DAG of run.tasks=[lane_classifier] runs 9 jobs on 48 frames.
DAG_RUN = ["run.tasks=[lane_classifier]", "train.task=lane_classifier", "train.epochs=1", "spark.master=local[2]",
           "spark.conf.spark.driver.memory=1g", "correlate.width=0.25", "correlate.epochs=1"]
# Short-lived driver JVMs doing little JVM work: the client compiler only and a serial GC (as tests/cluster).
LIGHT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


class AirflowRuns:
    """dag.test() runs of the DAG in one Airflow home (its metadata database kept between runs, as a
    deployment's is), on one work dir."""

    def __init__(self, root: Path, work: Path):
        from pipeline.javahome import ensure_java
        from tests.report.test_report import ANALYSIS

        self.python = require_airflow_venv(AIRFLOW_VENV)
        self.root, self.work = root, work
        self.overrides = [*TINY, *ANALYSIS, *DAG_RUN, f"paths.work_dir={work}"]
        env = {k: v for k, v in os.environ.items()
               if k not in DAG_SETTINGS and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
               and not k.startswith(("AIRFLOW", "PYSPARK_", "SPARK_", "MLFLOW_"))}
        ensure_java(env)
        connection = subprocess.run([sys.executable, str(DAG_FOLDER / "spark_connection.py"), "--json",
                                     *self.overrides], capture_output=True, text=True, check=True).stdout.strip()
        # spark-submit and the Python its driver runs: the project's venv, first on PATH (README: the workers)
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   AIRFLOW_HOME=str(root / "airflow-home"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                   AIRFLOW__CORE__DAGS_FOLDER=str(DAG_FOLDER), AIRFLOW_CONN_ROAD_PIPELINE_SPARK=connection,
                   ROAD_PIPELINE_RETRY_DELAY="1", SPARK_SUBMIT_OPTS=LIGHT_JVM, SPARK_LOCAL_IP="127.0.0.1",
                   PYTHONUNBUFFERED="1")
        self.env = env
        migrate = subprocess.run([str(self.python.parent / "airflow"), "db", "migrate"], cwd=root, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stderr[-3000:]

    def run(self, name: str, *extra: str, **env) -> dict:
        """One DAG run with ``extra`` overrides after the others; its JSON, and its log in ``<root>/<name>.log``."""
        settings = {"ROAD_PIPELINE_OVERRIDES": " ".join(shlex.quote(o) for o in [*self.overrides, *extra]),
                    "ROAD_PIPELINE_SCHEDULE": "none"}
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.run([str(self.python), "-c", RUN, str(DAG_FOLDER)], cwd=self.root, stdout=out,
                                  stderr=subprocess.STDOUT, env={**self.env, **settings, **env}, timeout=1200)
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("RUN-JSON ")]
        assert proc.returncode == 0 and lines, f"dag.test() failed (rc {proc.returncode}):\n{text[-6000:]}"
        result = json.loads(lines[-1][len("RUN-JSON "):])
        result["log"] = text
        print(f"{name}: DAG run {result['state']} in {result['seconds']:.0f} s")
        for task, ti in result["tasks"].items():
            print(f"  {task:28s} {ti['state']:8s} try {ti['try_number']}  {ti['seconds'] or 0:5.1f} s")
        return result


@pytest.fixture(scope="module")
def dag_runs(tiny_data, tmp_path_factory):
    """Two DAG runs on one work dir: the first with ingest killed once (SIGKILL mid-swap of its dataset: a power
    cut's leftovers) and left to Airflow's retry; the second after one config value (visualize.steps) changed."""
    root = tmp_path_factory.mktemp("airflow")
    runs = AirflowRuns(root, root / "work")
    first = runs.run("first", PIPELINE_FAULT="kill-mid-swap", PIPELINE_FAULT_ONCE=str(root / "fault-fired"))
    assert (root / "fault-fired").exists()
    first["children"] = _child_runs(make_conf(runs.work, *runs.overrides).mlflow.tracking_uri)
    second = runs.run("second", "visualize.steps=9")
    return runs, first, second


def _child_runs(tracking_uri: str) -> dict:
    """``{run name: [status, ...]}`` of the stage runs (children of a parent run) in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out: dict = {}
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000):
        if "mlflow.parentRunId" in run.data.tags:
            out.setdefault(run.info.run_name, []).append(run.info.status)
    return out


def test_a_dag_run_runs_every_job_and_retries_a_killed_one_to_the_uninterrupted_rows(dag_runs, tiny_data):
    from tests.faults.util import dataset_rows, lost_and_duplicated, running

    runs, first, _ = dag_runs
    conf = make_conf(runs.work, *runs.overrides)
    jobs = plan(conf.run.tasks, conf.train.task)
    assert first["state"] == "success"
    assert {t: ti["state"] for t, ti in first["tasks"].items()} == {j.name: "success" for j in jobs}
    # ingest died once (the SIGKILL is in its task log) and passed on Airflow's retry; nothing else needed one
    assert "PIPELINE_FAULT: SIGKILL at kill-mid-swap" in first["log"]
    assert {t: ti["try_number"] for t, ti in first["tasks"].items()} == {j.name: 1 + (j.name == "ingest")
                                                                        for j in jobs}
    # the retried ingest wrote exactly the rows of an uninterrupted one (tests/conftest.py's tiny_data): none lost,
    # none twice; augment then holds each source row once plus its copy
    data = runs.work / "data"
    expected = dataset_rows(Path(tiny_data().paths.data_url[len("file://"):]) / "synthetic")
    assert lost_and_duplicated(expected, dataset_rows(data / "synthetic")) == (0, 0)
    augmented = dataset_rows(data / "synthetic-basic")
    assert all(len({i for i, _ in rows}) == len(rows) for rows in augmented.values())
    # every job's MLflow run, named as pipeline run names it, finished; the killed try's run is not left RUNNING
    children = _child_runs(conf.mlflow.tracking_uri)
    for job in jobs:
        assert "FINISHED" in children.get(job.name.replace(".", " "), []), (job.name, children)
    assert running(conf.mlflow.tracking_uri) == []


def test_a_second_dag_run_reruns_only_the_jobs_a_changed_value_affects(dag_runs):
    runs, first, second = dag_runs
    conf = make_conf(runs.work, *runs.overrides, "visualize.steps=9")
    jobs = plan(conf.run.tasks, conf.train.task)
    assert second["state"] == "success" and all(ti["state"] == "success" for ti in second["tasks"].values())
    rerun = {"visualize", "report"}              # visualize's config changed; the report needs visualize
    for job in jobs:
        up_to_date = f"{job.name}: up to date (same config, code and inputs), skipped" in second["log"]
        assert up_to_date == (job.name not in rerun), job.name
        assert why_not_done(conf, job.stage, job.needs) is None, job.name        # all up to date now
    children = _child_runs(conf.mlflow.tracking_uri)
    for job in jobs:      # one more run of each job rerun, none of the others
        runs_of = children[job.name.replace(".", " ")]
        assert len(runs_of) - len(first["children"][job.name.replace(".", " ")]) == (job.name in rerun), job.name
