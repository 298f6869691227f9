"""The one task table: what each task trains, on which dataset kinds, with which target and key metrics.

Everything that branches on a task (the config's choices, the net, the loader's targets, the loss, the
evaluation, the printed metrics) looks it up here. Dataset kinds are named for the rows they hold:

* ``road_frames``:  whole road frames with an image-level class and a lane mask (synthetic, TuSimple, CULane);
* ``class_images``: images with a class from their folder name (ImageFolder: crops, patches, whole frames);
* ``tl_frames``:    frames with traffic-light boxes (the detector's data);
* ``tl_crops``:     crops around traffic lights plus background crops.

It imports only the vocabulary (:mod:`pipeline.vocab`: distance buckets).
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.vocab import DISTANCES
KINDS = ("road_frames", "class_images", "tl_frames", "tl_crops")
# The stages that run once per task of run.tasks (a job "train.lane_classifier"); the others once, for train.task.
# The stage registry (pipeline.stages) and the tracker's run names and tags read it here.
PER_TASK_STAGES = ("train", "evaluate", "audit")
# The kinds each ingest source yields (the first is the one an input's ledger row stands for).
SOURCES: dict[str, tuple[str, ...]] = {
    "synthetic": ("road_frames", "tl_frames", "tl_crops"),
    "imagefolder": ("class_images",),
    "bosch": ("tl_frames", "tl_crops"), "lisa": ("tl_frames", "tl_crops"), "dtld": ("tl_frames", "tl_crops"),
    "coco": ("tl_frames", "tl_crops"),
    "tusimple": ("road_frames",), "culane": ("road_frames",),
}


@dataclass(frozen=True)
class Task:
    name: str
    net: str                      # class in pipeline.models.nets
    kinds: tuple[str, ...]        # dataset kinds it can train on; its own first
    target: str                   # "class": an index per image; "heatmap": a map from the boxes
    metrics: tuple[str, ...]      # key metrics (printed; per-class ones go to MLflow only)

    @property
    def detector(self) -> bool:
        return self.target == "heatmap"


_CLASS_METRICS = ("loss", "accuracy", "f1_macro")
_DETECTOR_METRICS = ("precision", "recall", "ap", "recall_at_p90") + tuple(
    f"{m}_{d}" for m in ("precision", "recall", "ap", "recall_at_p90") for d in DISTANCES)

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("lane_classifier", "LaneNet", ("road_frames", "class_images"), "class", _CLASS_METRICS),
    Task("tl_classifier", "TLClassifier", ("tl_crops", "class_images"), "class", _CLASS_METRICS),
    Task("tl_detector", "TLDetector", ("tl_frames",), "heatmap", ("loss",) + _DETECTOR_METRICS),
)}
TRAIN_METRICS = ("train_loss", "samples_per_s", "lr")


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def is_key_metric(name: str) -> bool:
    """A summary metric (``<split>_<metric>`` of any task, or a training metric), printed on the console."""
    metric = name.split("_", 1)[-1]
    return name in TRAIN_METRICS or any(metric in task.metrics for task in TASKS.values())


def pick_kind(task: Task, available, wanted: str | None = None) -> str:
    """The dataset kind ``task`` trains on among the ``available`` kinds of a dataset: ``wanted`` if given
    (it must fit the task), else the task's first kind the dataset has. Raises ValueError naming the fix."""
    available = list(available)
    if wanted is not None:
        if wanted not in task.kinds:
            raise ValueError(f"train.kind={wanted} does not fit train.task={task.name} (it trains on "
                             f"{' or '.join(task.kinds)})")
        if wanted not in available:
            raise ValueError(f"the dataset has no {wanted} (it has {', '.join(available)})")
        return wanted
    fitting = [k for k in task.kinds if k in available]
    if not fitting:
        others = sorted((t.name for t in TASKS.values() if set(t.kinds) & set(available)), reverse=True)
        raise ValueError(f"train.task={task.name} trains on {' or '.join(task.kinds)}, and the dataset has only "
                         f"{', '.join(available)}" + (f": train {' or '.join(others)} on it, or ingest a source "
                                                       f"that yields {task.kinds[0]}" if others else ""))
    return fitting[0]
