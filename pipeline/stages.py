"""The stage registry: the one list the CLI, the spark-submit jobs, ``pipeline run`` and the Airflow DAG read.

Each stage is one library function ``run(spark, conf, tracker) -> dict`` (its key results), named here with
what it reads and writes, the stages whose output it needs (the graph: ``pipeline run``'s order is derived from
it, never listed twice), and the config sections its output depends on. A stage marked ``per_task`` runs once per
task of ``run.tasks`` (a *job* ``train.lane_classifier``); the others run once, for ``train.task``.

``pipeline run`` skips a job only when its config, the code and every input's stamp (the jobs it needs) are what
they were when it last finished, and its output is still there (:func:`why_not_done`). A job whose split is
empty (``Stage.splits``, :mod:`pipeline.data.splits`) is skipped with one line and never marked done; so are
the later jobs that need it, but for a ``partial`` stage (the report), which shows what ran (pipeline/cli.py).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from pipeline.config import Config
from pipeline.data import store
from pipeline.tasks import PER_TASK_STAGES

SKIPPED_TAG = "pipeline.skipped"            # a stage run whose split was empty: why (the run ends FAILED)
SKIPPED_JOB_TAG = "pipeline.skipped.{job}"  # on the parent run of pipeline run: a job skipped, and why


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    entry: str                     # "module:function", imported only when the stage runs (keeps --help fast)
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    depends_on: tuple[str, ...]    # config sections whose values decide the stage's output
    needs: tuple[str, ...] = ()    # stages whose output it reads (a per-task stage: the same task's job, or with
                                   # "name*" every task's)
    splits: tuple[str, ...] = ()   # the splits it reads: a split's name, or the config key naming one; of
                                   # <stage>.data (else train.data), the kind of <stage>.task (else train.task).
                                   # One with no rows skips the job (pipeline.data.splits.check_stage)
    partial: bool = False          # pipeline run: it runs even when a job it needs was skipped (the report)

    @property
    def per_task(self) -> bool:
        """``pipeline run``: one job per task of run.tasks (:data:`pipeline.tasks.PER_TASK_STAGES`)."""
        return self.name in PER_TASK_STAGES

    def function(self) -> Callable:
        module, _, attr = self.entry.partition(":")
        return getattr(importlib.import_module(module), attr)

    def config_hash(self, conf: Config) -> str:
        sections = {name: getattr(conf, name).model_dump(mode="json") for name in self.depends_on}
        sections["data_url"] = conf.paths.data_url
        return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "Render synthetic scenes or read a dataset, validate, split by group, write Petastorm datasets.",
          "pipeline.data.ingest:run", reads=("ingest.source",),
          writes=("road_frames | class_images | tl_frames, tl_crops", "quarantine", "ledger"),
          depends_on=("ingest",)),
    Stage("augment", "Write augment.copies seeded augmented copies of each train row (policy augment.policy).",
          "pipeline.augment.stage:run", reads=("<augment.source>/<every kind>",),
          writes=("<augment.name>/<every kind>",), depends_on=("ingest", "augment"), needs=("ingest",)),
    Stage("train", "Train train.task with TorchDistributor on an ingested dataset; log metrics, checkpoints, model.",
          "pipeline.train.run:run", reads=("<train.data>/<the task's kind>",),
          writes=("checkpoint", "MLflow model"), depends_on=("ingest", "train"), needs=("ingest",),
          splits=("train",)),
    Stage("evaluate", "Evaluate a logged model (evaluate.model_uri, default: the newest of train.task) on a split.",
          "pipeline.train.evaluate:run", reads=("MLflow model", "<train.data>/<the task's kind>"),
          writes=("metrics", "figures"), depends_on=("ingest", "train", "evaluate"), needs=("train",),
          splits=("evaluate.split",)),
    Stage("correlate", "Do nets trained from different seeds learn the same units? Exact correlation, matching, "
                       "CKA and SVCCA between two or more nets of train.task (Li et al. 2016), in one Spark pass.",
          "pipeline.analysis.correlate:run", reads=("MLflow models (or the train stage)", "<train.data>/<kind>/<split>"),
          writes=("metrics", "correlate/<layer>/*.npy", "figures"), depends_on=("ingest", "train", "correlate"),
          needs=("ingest",), splits=("train", "correlate.split")),
    Stage("visualize", "What each unit expects to see: activation maximization of a logged model's units "
                       "(batched, Fourier, colour-decorrelated on its own data), multifaceted and deep-dream, "
                       "beside the real images that excite each unit most (top-k in one Spark pass).",
          "pipeline.analysis.visualize:run", reads=("MLflow model", "<train.data>/<kind>/<split>"),
          writes=("metrics", "figures"), depends_on=("ingest", "train", "visualize"), needs=("train",),
          splits=("train", "visualize.split")),
    Stage("transfer", "Which layers transfer, and does pre-training rescue small data? Halves A and B of the "
                      "data; baseA, baseB, BnB, AnB, BnB+, AnB+ at every chop layer (Yosinski et al. 2014), and "
                      "scratch vs pre-trained vs a second loss at several training-set sizes: parallel Spark "
                      "tasks, one training each, each its own MLflow run.",
          "pipeline.analysis.transfer:run", reads=("<train.data>/<the task's kind>",),
          writes=("<train.data>-transfer-<split>-<A|B>", "checkpoints", "metrics", "figures"),
          depends_on=("ingest", "train", "transfer"), needs=("ingest",), splits=("train", "val", "test")),
    Stage("audit", "Does a net look at the object or only its context (counterfactual twins, backgrounds, "
                   "occlusion, attribution; a verdict in words), is its test set independent, and does its "
                   "registered version earn the alias registry.alias (the gate)?",
          "pipeline.analysis.audit:run", reads=("MLflow model", "<audit.data>/<kind>/<audit.split>"),
          writes=("metrics", "verdicts", "figures", "the gate's tags and alias"),
          depends_on=("ingest", "train", "audit", "registry"), needs=("train",),
          splits=("train", "audit.split")),
    Stage("report", "The inspection report: one self-contained HTML page of the pipeline run (data, training "
                    "curves, confusion matrices, detector PR and heat maps, correlation, unit visualizations, "
                    "transfer, audits), written locally and logged to MLflow.",
          "pipeline.report:run", reads=("the MLflow runs of this pipeline run",), writes=("<work_dir>/reports/*.html",
                                                                                      "MLflow artifact"),
          depends_on=("report",), needs=("augment", "evaluate*", "correlate", "visualize", "transfer", "audit*"),
          partial=True),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage '{name}'; stages: {', '.join(s.name for s in STAGES)}")


# ---------------------------------------------------------------------------------------------- graph

@dataclass(frozen=True)
class Job:
    """One node of ``pipeline run``'s graph: a stage, for one task if the stage runs per task."""
    stage: Stage
    task: Optional[str]
    needs: tuple[str, ...]         # names of the jobs it needs

    @property
    def name(self) -> str:
        return f"{self.stage.name}.{self.task}" if self.task else self.stage.name


def job_name(stage: Stage, conf: Config) -> str:
    return f"{stage.name}.{conf.train.task}" if stage.per_task else stage.name


def plan(tasks, analysis_task: str) -> list[Job]:
    """Every job of ``pipeline run`` in an order that honours ``needs`` (Kahn's algorithm, ties in registry and
    task order): per-task stages once per task of ``tasks``; a once-only stage that needs a per-task stage
    needs that stage's job for ``analysis_task`` (``train.task``), which is added to ``tasks`` if missing."""
    tasks = list(dict.fromkeys(tasks))
    if analysis_task not in tasks and any(get_stage(n).per_task for s in STAGES if not s.per_task
                                          for n in s.needs if not n.endswith("*")):
        tasks.append(analysis_task)

    def needed(name: str, task: Optional[str]) -> list:
        if name.endswith("*"):
            return [f"{name[:-1]}.{t}" for t in tasks]
        return [f"{name}.{task or analysis_task}"] if get_stage(name).per_task else [name]

    jobs: dict = {}
    for stage in STAGES:
        for task in (tasks if stage.per_task else [None]):
            job = Job(stage, task, tuple(n for name in stage.needs for n in needed(name, task)))
            jobs[job.name] = job
    missing = {n for j in jobs.values() for n in j.needs if n not in jobs}
    if missing:
        raise ValueError(f"stage graph: jobs need {sorted(missing)}, which no stage provides")
    order, done = [], set()
    while len(order) < len(jobs):
        ready = [j for j in jobs.values() if j.name not in done and all(n in done for n in j.needs)]
        if not ready:
            raise ValueError(f"stage graph has a cycle among {sorted(set(jobs) - done)}")
        order.append(ready[0])
        done.add(ready[0].name)
    return order


def select(jobs: list, only=None, start: Optional[str] = None) -> list:
    """The jobs of the stages named in ``only``, or from the first job of stage ``start`` on (in order)."""
    for name in list(only or []) + ([start] if start else []):
        get_stage(name)  # an unknown name is a KeyError listing the stages
    if only:
        return [j for j in jobs if j.stage.name in only]
    if start:
        first = next(i for i, j in enumerate(jobs) if j.stage.name == start)
        return jobs[first:]
    return list(jobs)


# ------------------------------------------------------------------------------------------ markers

@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the pipeline's own code (``pipeline/``, ``schemas/`` and ``conf/``), installed or not."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("pipeline", "schemas", "conf"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".yaml") and path.is_file():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _marker_url(conf: Config, name: str) -> str:
    return f"{conf.paths.data_url.rstrip('/')}/_stages/{name}.json"


def read_marker(conf: Config, name: str) -> Optional[dict]:
    url = _marker_url(conf, name)
    return store.read_json(url) if store.exists(url) else None


def _stamp(conf: Config, stage: Stage, inputs: dict) -> dict:
    return {"config_hash": stage.config_hash(conf), "code": code_version(), "inputs": inputs}


def _inputs(conf: Config, needs) -> dict:
    """The stamps of the jobs ``needs`` names, as their markers record them (None: never finished)."""
    return {name: (read_marker(conf, name) or {}).get("stamp") for name in needs}


def why_not_done(conf: Config, stage: Stage, needs=(), job: Optional[str] = None) -> Optional[str]:
    """None when the job (``job``: its marker's name, default the stage's job) last finished with the same config,
    code and inputs and its output is still there (``pipeline run`` then skips it); else why it must run."""
    marker = read_marker(conf, job or job_name(stage, conf))
    if marker is None:
        return "it never finished"
    now = _stamp(conf, stage, _inputs(conf, needs))
    if marker.get("config_hash") != now["config_hash"]:
        return "its config changed"
    if marker.get("code") != now["code"]:
        return "the code changed"
    changed = [n for n in needs if marker.get("inputs", {}).get(n) != now["inputs"][n]]
    if changed:
        return f"its input {', '.join(changed)} changed"
    gone = _missing_output(marker.get("results", {}), conf)
    if gone:
        return f"its output {gone} is gone"
    return None


def is_done(conf: Config, stage: Stage, needs=()) -> bool:
    return why_not_done(conf, stage, needs) is None


def _missing_output(results: dict, conf: Config) -> Optional[str]:
    url = results.get("dataset_url")
    if url and not store.exists(f"{url}/{store.META}"):
        return url
    uri = results.get("model_uri")
    if uri and uri.startswith(("runs:/", "models:/")):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(conf.mlflow.tracking_uri)
        try:
            if uri.startswith("runs:/"):
                client.get_run(uri.split("/")[1])
            else:
                client.get_logged_model(uri[len("models:/"):])
        except Exception:  # noqa: BLE001  (the run or model cannot be found: it must be made again)
            return uri
    return None


def mark_done(conf: Config, stage: Stage, results: dict, needs=(), job: Optional[str] = None) -> None:
    stamp = _stamp(conf, stage, _inputs(conf, needs))
    stamp_id = hashlib.sha256(json.dumps([stamp, results.get("run_id")], sort_keys=True, default=str)
                              .encode()).hexdigest()[:16]
    store.write_json(_marker_url(conf, job or job_name(stage, conf)), {**stamp, "stamp": stamp_id, "results": results})


def run_stage(stage: Stage, spark, conf: Config, tracker, needs=(), job: Optional[str] = None,
              run_name: Optional[str] = None, tags: Optional[dict] = None) -> dict:
    """Run one stage in its own MLflow child run (named ``run_name``, default the stage and, per task, the task;
    with ``tags``); returns its key results (with ``run_id``) and marks the job (``job``: its marker's name,
    default the stage's job) done. A split it reads (``stage.splits``) with no rows raises
    :class:`~pipeline.errors.EmptySplit` inside that run (ended FAILED, tagged ``pipeline.skipped``) and
    marks nothing done."""
    from pipeline.data.splits import check_stage
    from pipeline.errors import EmptySplit

    with tracker.stage_run(stage.name, conf, run_name=run_name or job_name(stage, conf).replace(".", " "),
                           per_task=stage.per_task, tags=tags) as run:
        try:
            check_stage(stage, conf)   # an empty split it reads: EmptySplit, before anything loads or trains
            results = dict(stage.function()(spark, conf, tracker) or {})
        except EmptySplit as exc:
            import mlflow

            mlflow.set_tag(SKIPPED_TAG, str(exc)[:5000])
            raise
        results["run_id"] = run.info.run_id
    mark_done(conf, stage, results, needs, job)
    return results


def run_side_job(name: str, spark, conf: Config, tracker, variant: str, role: str, run_name: str,
                 needs=()) -> dict:
    """A stage run for an analysis on a config of its own (correlate's seeds, the audit's frame split): the job
    ``<job>@<variant>`` of the graph, with its own marker, skipped (its recorded results returned) when it last
    finished with the same config, code and inputs (``needs``: the jobs whose markers it depends on) and its
    output is still there; else run as a child run tagged with its ``role``, which keeps it from being taken for
    the newest model of a later stage (:data:`pipeline.models.lookup.ROLE_TAG`)."""
    from pipeline.models.lookup import ROLE_TAG

    stage = get_stage(name)
    job = f"{job_name(stage, conf)}@{variant}"
    why = why_not_done(conf, stage, needs, job)
    if why is None:
        results = read_marker(conf, job)["results"]
        print(f"{job}: up to date (run {results.get('run_id')}), reused", flush=True)
        return results
    print(f"{job}: running ({why})", flush=True)
    return run_stage(stage, spark, conf, tracker, needs, job=job, run_name=run_name, tags={ROLE_TAG: role})
