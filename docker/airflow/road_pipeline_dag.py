"""Airflow DAG ``road_pipeline``: ``pipeline run``'s jobs, each a ``SparkSubmitOperator`` of ``jobs/<stage>.py``.

The graph is not listed here. It is ``pipeline.stages.plan(run.tasks, train.task)`` of the repository's own
config, the graph ``pipeline run`` executes: one task per job (task_id = the job's name, e.g. ``ingest``,
``train.lane_classifier``), upstream = the job's ``needs``. A per-task job runs its stage with
``train.task=<task>`` after the other overrides, as ``pipeline run`` does. Change ``pipeline/stages.py`` or
``run.tasks`` and the DAG follows at the next parse.

Each task is ``spark-submit jobs/<stage>.py --skip-up-to-date ...`` through the Spark connection
``road_pipeline_spark``: a job whose config, code and inputs are what they were when it last finished, with its
output still there, does nothing (``pipeline run``'s skip rule), so a daily run redoes only what changed.

Like ``pipeline run`` it runs one job at a time, in ``pipeline run``'s order (``max_active_tasks=1``, and
priorities that decrease along the plan, so that of the ready tasks the scheduler starts the one ``pipeline run``
would): every job takes the output's lock (``pipeline/lock.py``), so two at once would fail.
One DAG run at a time, no catchup; a failed task is retried twice, 5 minutes apart.

The Spark connection (``ROAD_PIPELINE_SPARK_CONN``, default ``road_pipeline_spark``) says where to submit: its
host is the master (``local[*]``, ``spark://host:7077``, ``yarn``, ``k8s://...``), its extras the deploy mode and
the spark-submit binary (``spark-submit`` on the workers' PATH). ``python docker/airflow/spark_connection.py
[--profile P] [--conf F] [KEY=VALUE ...]`` prints it from the project's config (``spark.master``) as
``AIRFLOW_CONN_ROAD_PIPELINE_SPARK=...``, for the deployment's environment or ``airflow connections add``.

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
  ROAD_PIPELINE_SPARK_CONN   the Airflow connection id of the Spark master (default ``road_pipeline_spark``)
  ROAD_PIPELINE_RETRY_DELAY  seconds between a failed try and the next (default 300)

The jobs import ``pipeline``: the Python that spark-submit starts (PYSPARK_PYTHON, PYSPARK_DRIVER_PYTHON, else
``python3`` on PATH) must have the project installed (``.venv/bin/python`` of ``make install``, or the docker
image), and the workers need ``spark-submit`` and Java 17+ (JAVA_HOME) too. Parsing this file needs only
``pipeline.stages`` and ``pipeline.config`` (pydantic, PyYAML), which ``docker/airflow/requirements.txt``
provides with Airflow and its Spark provider; the repository is put on ``sys.path`` for them.
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
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

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

PROFILE = os.environ.get("ROAD_PIPELINE_PROFILE") or "local"
CONF_FILE = str(REPO / os.environ["ROAD_PIPELINE_CONF"]) if os.environ.get("ROAD_PIPELINE_CONF") else None
OVERRIDES = shlex.split(os.environ.get("ROAD_PIPELINE_OVERRIDES", ""))
SCHEDULE = os.environ.get("ROAD_PIPELINE_SCHEDULE", "@daily").strip()
SPARK_CONN_ID = os.environ.get("ROAD_PIPELINE_SPARK_CONN") or "road_pipeline_spark"
RETRY_DELAY = timedelta(seconds=float(os.environ.get("ROAD_PIPELINE_RETRY_DELAY") or 300))

CONF = load_config(PROFILE, CONF_FILE, OVERRIDES)
JOBS = plan(CONF.run.tasks, CONF.train.task)
# The driver logs as `pipeline` does (warnings only, conf/log4j2.properties), not Spark's INFO lines in every
# task log.
LOG4J = REPO / "conf" / "log4j2.properties"
SPARK_CONF = {"spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile=file:{LOG4J}"}


def application_args(job) -> list:
    """``jobs/<stage>.py``'s arguments: ``--skip-up-to-date --profile P [--conf F] [overrides] [train.task=T]``."""
    return ["--skip-up-to-date", "--profile", PROFILE, *(["--conf", CONF_FILE] if CONF_FILE else []), *OVERRIDES,
            *([f"train.task={job.task}"] if job.task else [])]


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
        tasks[job.name] = SparkSubmitOperator(
            task_id=job.name, application=str(REPO / "jobs" / f"{job.stage.name}.py"),
            application_args=application_args(job), conn_id=SPARK_CONN_ID, name=f"{DAG_ID}.{job.name}",
            conf=SPARK_CONF,
            priority_weight=len(JOBS) - index, weight_rule="absolute", doc_md=job.stage.help)
    for job in JOBS:
        for need in job.needs:
            tasks[need] >> tasks[job.name]
