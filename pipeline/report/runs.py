"""Which stage runs a report shows: the children of a pipeline run (and the runs ``pipeline run`` reused), or,
for a report on its own, the newest finished run of each stage in the experiment.

The stages, their order and which of them run per task come from the stage registry (:mod:`pipeline.stages`):
a report shows every stage but itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.config import Config
import pipeline.report.names as names
from pipeline.stages import STAGES, Stage, read_marker
from pipeline.tasks import TASKS

NEWEST = "newest finished run of the stage in the experiment"
REUSED = "up to date: reused from an earlier pipeline run"


def is_report(stage: Stage) -> bool:
    """Whether ``stage`` is the report itself (its registry entry is a function of this package)."""
    module = stage.entry.partition(":")[0]
    return module == __package__ or module.startswith(f"{__package__}.")


SHOWN: tuple[Stage, ...] = tuple(s for s in STAGES if not is_report(s))   # in pipeline (registry) order
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in SHOWN)
PER_TASK: frozenset = frozenset(s.name for s in SHOWN if s.per_task)


@dataclass
class StageRun:
    """One stage run shown on the page (``task`` only for a per-task stage)."""
    stage: str
    task: Optional[str]
    run: object                      # mlflow.entities.Run
    note: str = ""                   # how it was found, when not as a child of this pipeline run

    @property
    def id(self) -> str:
        """The run's id."""
        return self.run.info.run_id

    @property
    def metrics(self) -> dict:
        """The run's metrics (last values)."""
        return dict(self.run.data.metrics)

    @property
    def params(self) -> dict:
        """The run's params."""
        return dict(self.run.data.params)

    @property
    def tags(self) -> dict:
        """The run's tags."""
        return dict(self.run.data.tags)


@dataclass
class Found:
    """The stage runs found, in pipeline order, and how they were found."""
    runs: list                       # StageRun, in pipeline order
    mode: str                        # "pipeline": children of a pipeline run; "newest": newest per stage
    pipeline: object = None          # the parent Run (mode "pipeline")

    def get(self, stage: str, task: Optional[str] = None) -> Optional[StageRun]:
        """The run of ``stage`` (for ``task``, when given), or None."""
        for r in self.runs:
            if r.stage == stage and (task is None or r.task == task):
                return r
        return None

    def all(self, stage: str) -> list:
        """Every run of ``stage`` (one per task for a per-task stage)."""
        return [r for r in self.runs if r.stage == stage]


def task_order(task: Optional[str]) -> int:
    """Where ``task`` sorts: in the task table's order, unknown tasks and None last."""
    return list(TASKS).index(task) if task in TASKS else len(TASKS)


def in_order(runs: Iterable[StageRun]) -> list:
    """``runs`` in pipeline order: stage, then task, then start time."""
    return sorted(runs, key=lambda r: (STAGE_NAMES.index(r.stage), task_order(r.task), r.run.info.start_time or 0))


def key(run) -> tuple:
    """``(stage, task)`` of a stage run; the task only for a per-task stage."""
    tags = run.data.tags
    stage = tags.get(names.STAGE_TAG)
    return stage, (tags.get(names.TASK_TAG) if stage in PER_TASK else None)


def is_stage_run(run, exclude: set) -> bool:
    """A run of a shown stage, not one an analysis made for itself (a role tag), not in ``exclude``."""
    from pipeline.models.lookup import ROLE_TAG

    tags = run.data.tags
    return (tags.get(names.KIND_TAG) == names.KIND_STAGE and tags.get(names.STAGE_TAG) in STAGE_NAMES
            and not tags.get(ROLE_TAG)          # nets trained for correlate or the audit, not stages of their own
            and run.info.run_id not in exclude)


def find_runs(client, experiment_id: str, parent_id: Optional[str], exclude: set = frozenset(),
              conf: Optional[Config] = None) -> Found:
    """The stage runs a report shows: the children of ``parent_id`` (newest per stage and task), plus the runs
    whose output ``pipeline run`` reused (their markers); when the parent has no stage child but the report
    (``pipeline report`` alone), the newest FINISHED run of each stage and task in the experiment whose parent
    is a pipeline run."""
    if parent_id:
        chosen = children(client, experiment_id, parent_id, exclude)
        if chosen:
            if conf is not None:
                add_reused(client, experiment_id, conf, chosen)
            return Found(in_order(chosen.values()), "pipeline", client.get_run(parent_id))
    return Found(in_order(newest(client, experiment_id, exclude).values()), "newest")


def children(client, experiment_id: str, parent_id: str, exclude: set) -> dict:
    """``{(stage, task): StageRun}``: the newest stage run of each stage and task under ``parent_id``."""
    runs = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    chosen: dict = {}
    for run in runs:
        if is_stage_run(run, exclude):
            chosen.setdefault(key(run), StageRun(*key(run), run))
    return chosen


def newest(client, experiment_id: str, exclude: set) -> dict:
    """``{(stage, task): StageRun}``: the newest FINISHED run of each stage and task whose parent is a
    pipeline run (a stage nested in another stage's run, as the audit's ingest, is not the stage's)."""
    query = (f"tags.`{names.KIND_TAG}` = '{names.KIND_STAGE}' and attributes.status = 'FINISHED'")
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1000)
    kinds: dict = {}
    chosen: dict = {}
    for run in runs:
        if not is_stage_run(run, exclude) or key(run) in chosen:
            continue
        if parent_kind(client, run.data.tags.get(MLFLOW_PARENT_RUN_ID), kinds) == names.KIND_PIPELINE:
            chosen[key(run)] = StageRun(*key(run), run, NEWEST)
    return chosen


def parent_kind(client, parent: Optional[str], seen: dict) -> Optional[str]:
    """The ``pipeline.kind`` tag of run ``parent`` (None for none, or a deleted one), looked up once."""
    if parent not in seen:
        try:
            seen[parent] = client.get_run(parent).data.tags.get(names.KIND_TAG) if parent else None
        except Exception:  # noqa: BLE001  (a deleted parent)
            seen[parent] = None
    return seen[parent]


def add_reused(client, experiment_id: str, conf: Config, chosen: dict) -> None:
    """Stages ``pipeline run`` skipped as up to date: the run their marker names (the output they reuse)."""
    for stage in SHOWN:
        for task in (conf.run.tasks if stage.per_task else [None]):
            if (stage.name, task) in chosen:
                continue
            run = reused(client, conf, f"{stage.name}.{task}" if task else stage.name)
            if run is not None and run.info.experiment_id == experiment_id and run.info.status == "FINISHED":
                chosen[(stage.name, task)] = StageRun(stage.name, task, run, REUSED)


def reused(client, conf: Config, job: str):
    """The run that job ``job``'s done-marker names, or None (no marker, no marker store, a deleted run)."""
    try:
        marker = read_marker(conf, job)
        run_id = ((marker or {}).get("results") or {}).get("run_id")
        return client.get_run(run_id) if run_id else None
    except Exception:  # noqa: BLE001  (no marker store, a deleted run: the stage did not run)
        return None
