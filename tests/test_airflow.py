"""The Airflow DAG (docker/airflow/road_pipeline_dag.py), loaded by Airflow's own DagBag, is ``pipeline run``'s graph.

Airflow is not a dependency of the project: it lives in its own virtual environment (``bash
docker/airflow/install.sh`` makes ``.venv-airflow``, or ``$AIRFLOW_VENV``), so the DagBag runs there, in a
subprocess, and prints the DAG as JSON; this process (the project's .venv) compares it with
``pipeline.stages.plan``. Without that venv the tests skip, saying how to make it, except under CI (``CI=true``),
where they fail: CI installs it, and a DAG test that silently skips tests nothing.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.stages import Stage, plan

REPO = Path(__file__).resolve().parent.parent
DAG_FOLDER = REPO / "docker" / "airflow"
DAG_FILE = DAG_FOLDER / "road_pipeline_dag.py"
AIRFLOW_VENV = REPO / (os.environ.get("AIRFLOW_VENV") or ".venv-airflow")  # as install.sh: relative to the repository
INSTALL = "bash docker/airflow/install.sh"
DAG_SETTINGS = ("ROAD_PIPELINE_HOME", "ROAD_PIPELINE_PROFILE", "ROAD_PIPELINE_CONF", "ROAD_PIPELINE_OVERRIDES",
                "ROAD_PIPELINE_SCHEDULE", "ROAD_PIPELINE_SPARK_MASTER", "SPARK_SUBMIT")

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
                              "bash_command": t.bash_command, "cwd": t.cwd, "priority_weight": t.priority_weight,
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


def expected_argv(job, master: str, submit=("spark-submit",), profile="local", overrides=()) -> list:
    return [*submit, "--master", master, str(REPO / "jobs" / f"{job.stage.name}.py"), "--profile", profile,
            *overrides, *([f"train.task={job.task}"] if job.task else [])]


def check_graph(dag: dict, jobs: list) -> None:
    """Same jobs, same needs, retries, and pipeline run's order among ready tasks, one at a time."""
    tasks = dag["tasks"]
    assert sorted(tasks) == sorted(j.name for j in jobs)
    for job in jobs:
        task = tasks[job.name]
        assert task["operator"] == "BashOperator", job.name
        assert task["upstream"] == sorted(job.needs), job.name
        assert task["retries"] >= 1 and task["retry_delay_s"] > 0, job.name
        assert task["cwd"] == str(REPO), job.name
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
        argv = shlex.split(dag["tasks"][job.name]["bash_command"])
        assert argv == expected_argv(job, conf.spark.master), job.name
        assert (REPO / "jobs" / f"{job.stage.name}.py").is_file(), job.name


def test_dag_follows_config_settings_and_stage_registry(tmp_path, monkeypatch):
    """Another profile, config file, run.tasks and spark-submit, and one more stage in pipeline.stages: the DAG
    changes with them, so it cannot be a hard-coded copy of the graph."""
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
                "ROAD_PIPELINE_SCHEDULE": "none", "ROAD_PIPELINE_SPARK_MASTER": "spark://other:7077",
                "SPARK_SUBMIT": "/opt/spark/bin/spark-submit --deploy-mode client"}
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
    check_graph(dag, jobs)
    assert dag["schedule"] is None
    for job in jobs:
        argv = shlex.split(dag["tasks"][job.name]["bash_command"])
        assert argv == expected_argv(job, "spark://other:7077", ("/opt/spark/bin/spark-submit", "--deploy-mode",
                                                                 "client"), "cluster", ["--conf", str(conf_file),
                                                                                        *overrides]), job.name


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
