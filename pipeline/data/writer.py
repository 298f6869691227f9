"""The dataset writer: how ingest, augment and transfer's derive write a dataset from Spark tasks and swap it in.

plan    : :func:`plan_tasks` groups the units of work (ingest's inputs; the source files augment and derive read)
          into Spark tasks: with weights, the heaviest unit first onto the lightest task; without, contiguous
          runs cut as Spark cuts a list.
write   : :func:`task_job` is the job: one task per group, each writing its own part files
          (:class:`pipeline.data.parts.PartWriter`) and yielding small reports (files written, counts). The stage
          runs it (``.collect()``) on a line of its own: Spark names a job after the line that runs it, so the
          Spark UI shows the stage's file (and ``tests/faults/test_executor_kill.py`` finds the running tasks by it).
commit  : :class:`Output`: what a killed writer left is undone first (:func:`store.recover`), the tasks write
          under a fresh temporary folder beside the dataset, :meth:`Output.commit` renames the files the tasks
          reported (any other attempt's go) and adds the Petastorm metadata, the footers checked against the
          reports, and :meth:`Output.publish` writes the summary and swaps the dataset in whole
          (:func:`store.swap_in`). A job killed midway leaves the previous dataset; its re-run neither loses nor
          duplicates a row.
account : :func:`expect_rows`: every folder holds exactly the rows planned for it, else :class:`AccountingError`.

Imports nothing of ours above :mod:`pipeline.data`.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

from pipeline.data import parts, store

# PySpark ships a list to the executors in batches of max(1, min(n // tasks, SPARK_BATCH)) items
# (SparkContext.parallelize with the default batchSize=0) and Spark deals the batches out evenly.
SPARK_BATCH = 1024


class AccountingError(RuntimeError):
    """A writer cannot account for its rows (rows in != rows out, on disk as reported): a bug, never bad input."""


# ------------------------------------------------------------------------------------------------- plan

def plan_tasks(units: Sequence, tasks: int, weights: Optional[Sequence[float]] = None) -> list[list]:
    """The units of work grouped into Spark tasks: ``[[unit, ...] per task]``, every unit in exactly one task.

    With ``weights`` (one per unit: what it costs, e.g. bytes to read times the work per byte), at most ``tasks``
    groups of about equal weight: units in order of weight, the heaviest first, each onto the group that is the
    lightest so far (the first such); equal weights deal the units out in turn (unit ``i`` to group
    ``i % tasks``). No group is empty.

    Without weights (units of about equal cost), exactly ``tasks`` contiguous runs in order, cut as
    ``SparkContext.parallelize(units, tasks)`` cuts a list (see :data:`SPARK_BATCH`): a run may be empty when
    there are fewer units than tasks."""
    units = list(units)
    if weights is None:
        return _runs(units, max(1, tasks))
    if len(weights) != len(units):
        raise ValueError(f"plan_tasks: {len(weights)} weights for {len(units)} units")
    groups = [[0.0, []] for _ in range(max(1, min(tasks, len(units))))]
    for weight, unit in sorted(zip(weights, units), key=lambda wu: -wu[0]):
        lightest = min(groups, key=lambda g: g[0])
        lightest[0] += weight
        lightest[1].append(unit)
    return [g[1] for g in groups if g[1]]


def _runs(units: list, tasks: int) -> list[list]:
    """``tasks`` contiguous runs of ``units``, as Spark's ``parallelize`` slices a list: batches of ``size`` units,
    run ``i`` taking batches ``[i * batches // tasks, (i + 1) * batches // tasks)``."""
    size = max(1, min(len(units) // tasks, SPARK_BATCH))
    batches = -(-len(units) // size)
    cuts = [i * batches // tasks * size for i in range(tasks + 1)]
    return [units[cuts[i]:cuts[i + 1]] for i in range(tasks)]


def spark_tasks(spark, per_core: int = 2) -> int:
    """The task count of a write over source files: ``per_core`` tasks per core Spark offers, so a slow file
    does not leave a core idle while the last task runs."""
    return per_core * spark.sparkContext.defaultParallelism


# ------------------------------------------------------------------------------------------------ write

def task_job(spark, groups: list, task: Callable[[int, list], Iterator]):
    """The Spark job of a write (an RDD, not run yet): task ``i`` calls ``task(i, groups[i])``, which writes its
    part files and yields its reports. One partition per group; the caller runs it with ``.collect()``."""
    return spark.sparkContext.parallelize(groups, max(1, len(groups))).mapPartitionsWithIndex(
        lambda index, it: task(index, [unit for group in it for unit in group]))


# ----------------------------------------------------------------------------------------------- commit

class Output:
    """One dataset being written at ``root``: a killed writer's leftovers undone, a fresh temporary folder
    (``tmp``) for the tasks, then :meth:`commit` and :meth:`publish`. Until published, a failed stage's
    :func:`store.discard_unfinished` removes the temporary folder."""

    def __init__(self, root: str):
        store.recover(root)
        self.root = root
        self.tmp = store.temporary(root)

    def commit(self, files: dict, schema_of: Callable[[str], object], image_format: str = "png",
               folders: Optional[Sequence[str]] = None) -> dict:
        """Commit each folder's files as the tasks reported them (``files``: :func:`parts.merge` of the reports):
        a Petastorm dataset where ``schema_of(folder)`` gives its Unischema, a plain Parquet table where it gives
        None. ``folders``: the folders to commit, in order (default: every reported one, sorted); a folder no
        task wrote fails. Returns ``{folder: rows on disk}``, from the footers."""
        rows = {}
        for folder in sorted(files) if folders is None else folders:
            url, infos, schema = f"{self.tmp}/{folder}", files.get(folder, []), schema_of(folder)
            rows[folder] = (parts.commit(url, infos) if schema is None
                            else parts.finalize(url, schema, infos, image_format=image_format))
        return rows

    def publish(self, summary: dict) -> None:
        """Write the dataset's summary (:data:`store.META`) and swap the dataset in whole."""
        store.write_meta(self.tmp, summary)
        store.swap_in(self.tmp, self.root)


# ---------------------------------------------------------------------------------------------- account

def expect_rows(label: str, written: dict, expected: dict, notes: Optional[dict] = None) -> None:
    """Fail unless every folder of ``expected`` (``{folder: rows planned}``) holds that many rows in ``written``
    (``{folder: rows on disk}``, :meth:`Output.commit`): :class:`AccountingError` naming the first folder that
    does not, with its note from ``notes`` (why that many)."""
    for folder, want in expected.items():
        got = written.get(folder, 0)
        if got != want:
            raise AccountingError(f"{label} wrote {got} rows to {folder}, expected {want}"
                                  + (f" ({notes[folder]})" if notes and folder in notes else ""))
