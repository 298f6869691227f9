"""Airflow DAG ``road_pipeline``: ``pipeline run``'s jobs, each a ``spark-submit jobs/<stage>.py``, with retries.

The graph is not listed here. It is ``pipeline.stages.plan(run.tasks, train.task)`` of the repository's own
config, the graph ``pipeline run`` executes: one task per job (task_id = the job's name, e.g. ``ingest``,
``train.lane_classifier``), upstream = the job's ``needs``. A per-task job runs its stage with
``train.task=<task>`` after the other overrides, as ``pipeline run`` does. Change ``pipeline/stages.py`` or
``run.tasks`` and the DAG follows at the next parse.

Like ``pipeline run`` it runs one job at a time, in ``pipeline run``'s order (``max_active_tasks=1``, and
priorities that decrease along the plan, so that of the ready tasks the scheduler starts the one ``pipeline run``
would): every job takes the output's lock (``pipeline/lock.py``), so two at once would fail.
One DAG run at a time, no catchup; a failed task is retried twice, 5 minutes apart.

Settings: environment variables of the Airflow deployment (DAG processor, scheduler and workers), read when the
file is parsed. Not Airflow Variables: ``Variable.get`` at parse time would query the metadata database at every
parse, which Airflow's best practices advise against. All optional:

  ROAD_PIPELINE_HOME         the repository (default: the one this file is in, ``../..``, symlinks resolved,
                             so a symlink from ``$AIRFLOW_HOME/dags`` works)
  ROAD_PIPELINE_PROFILE      config profile, as ``--profile`` (default ``local``, as ``pipeline``; a real cluster:
                             ``cluster``, which needs SPARK_MASTER, DATA_URL, ... in that environment too)
  ROAD_PIPELINE_CONF         a YAML file layered over the profile, as ``--conf`` (relative: to the repository)
  ROAD_PIPELINE_OVERRIDES    KEY=VALUE overrides, shell-quoted, e.g. ``"run.tasks=[tl_detector]" train.epochs=5``;
                             they decide the graph and are passed to every job
  ROAD_PIPELINE_SCHEDULE     a cron expression or preset (default ``@daily``; ``none``: triggered by hand only)
  ROAD_PIPELINE_SPARK_MASTER spark-submit's ``--master`` (default: the config's ``spark.master``; always passed, since
                             under spark-submit its --master wins over spark.master, and without one it is local[*])
  SPARK_SUBMIT               the spark-submit command, with any options of its own
                             (default ``spark-submit``; e.g. ``"/opt/spark/bin/spark-submit --deploy-mode client"``)

The jobs import ``pipeline``: the Python that spark-submit starts (PYSPARK_PYTHON, PYSPARK_DRIVER_PYTHON) must
have the project installed (``.venv/bin/python`` of ``make install``, or the docker image). Parsing this file needs
only ``pipeline.stages`` and ``pipeline.config`` (pydantic, PyYAML), which ``docker/airflow/requirements.txt``
provides; the repository is put on ``sys.path`` for them.
"""
from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
try:  # Airflow 3, or 2 with apache-airflow-providers-standard
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

REPO = Path(os.environ.get("ROAD_PIPELINE_HOME") or Path(__file__).resolve().parents[2]).resolve()
if not (REPO / "pipeline" / "stages.py").is_file():
    raise ImportError(f"{REPO} is not the road-pipeline repository (no pipeline/stages.py): set ROAD_PIPELINE_HOME "
                      f"to it, or link this file into the DAG folder instead of copying it")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402  (needs REPO on sys.path)
from pipeline.stages import plan  # noqa: E402

DAG_ID = "road_pipeline"
RETRIES = 2
RETRY_DELAY = timedelta(minutes=5)

PROFILE = os.environ.get("ROAD_PIPELINE_PROFILE") or "local"
CONF_FILE = str(REPO / os.environ["ROAD_PIPELINE_CONF"]) if os.environ.get("ROAD_PIPELINE_CONF") else None
OVERRIDES = shlex.split(os.environ.get("ROAD_PIPELINE_OVERRIDES", ""))
SCHEDULE = os.environ.get("ROAD_PIPELINE_SCHEDULE", "@daily").strip()
SPARK_SUBMIT = shlex.split(os.environ.get("SPARK_SUBMIT") or "spark-submit")

CONF = load_config(PROFILE, CONF_FILE, OVERRIDES)
JOBS = plan(CONF.run.tasks, CONF.train.task)
MASTER = os.environ.get("ROAD_PIPELINE_SPARK_MASTER") or CONF.spark.master


def command(job) -> str:
    """``spark-submit --master M <repo>/jobs/<stage>.py --profile P [--conf F] [overrides] [train.task=T]``."""
    argv = [*SPARK_SUBMIT, "--master", MASTER, str(REPO / "jobs" / f"{job.stage.name}.py"), "--profile", PROFILE,
            *(["--conf", CONF_FILE] if CONF_FILE else []), *OVERRIDES,
            *([f"train.task={job.task}"] if job.task else [])]
    # a trailing space: BashOperator would read a command ending in .sh / .bash as a template file's name
    return " ".join(shlex.quote(a) for a in argv) + " "


with DAG(
    dag_id=DAG_ID,
    description="pipeline run as spark-submit jobs: " + " -> ".join(job.name for job in JOBS),
    doc_md=__doc__,
    schedule=None if SCHEDULE.lower() in ("", "none") else SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=1,
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY},
    tags=["road-pipeline", "spark"],
) as dag:
    tasks = {}
    for index, job in enumerate(JOBS):
        tasks[job.name] = BashOperator(task_id=job.name, bash_command=command(job), cwd=str(REPO),
                                       priority_weight=len(JOBS) - index, weight_rule="absolute",
                                       doc_md=job.stage.help)
    for job in JOBS:
        for need in job.needs:
            tasks[need] >> tasks[job.name]
