"""The training sections: curves per task (drawn from the train runs' metric histories) and test results per task
(the train run's test pass beside the evaluate run's, per class or, for the detector, per distance)."""
from __future__ import annotations

from typing import Optional

from pipeline.vocab import DISTANCES
import pipeline.report.names as names
import pipeline.report.plots as plots
from pipeline.report.artifacts import Artifacts
from pipeline.report.html import esc, figures_html, image, not_run, run_line, table
from pipeline.report.runs import Found, StageRun

ALL = "all"                                  # the row of every distance bucket together (no "_<distance>" suffix)
DISTANCE_ROWS = (ALL,) + DISTANCES


def metric(split: str, name: str) -> str:
    """A metric as pipeline/train/evaluate.py names it for ``split`` (``val_accuracy``, ``test_ap``)."""
    return names.SPLIT_METRIC.format(split=split, metric=name)


def key_metric(task: str) -> str:
    """The task's validation score: AP for the detector, accuracy for a classifier."""
    from pipeline.tasks import get_task

    return "ap" if get_task(task).detector else "accuracy"


def second_metric(task: str) -> str:
    """The score drawn beside the key one: macro F1 for a classifier, recall for the detector."""
    return "f1_macro" if key_metric(task) == "accuracy" else "recall"


# ------------------------------------------------------------------------------------------ training

def history(client, run_id: str, key: str) -> list:
    """``[(epoch from 1, value)]`` of a metric's history (NaNs left out; [] when it cannot be read)."""
    try:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    except Exception:  # noqa: BLE001
        return []
    return [(s + 1, v) for s, v in points if v == v]


def curves_png(client, run_id: str, task: str) -> Optional[bytes]:
    """Loss and the validation key metric per epoch, from the run's metric history (None: nothing logged)."""
    losses = {k: history(client, run_id, k) for k in (names.TRAIN_LOSS, names.VAL_LOSS)}
    scores = {k: history(client, run_id, k)
              for k in (metric("val", key_metric(task)), metric("val", second_metric(task)))}
    return plots.training_curves(task, losses, scores)


def training_section(found: Found, client) -> str:
    """Each train run (one per task): its settings, its curves and its last values."""
    runs = found.all("train")
    if not runs:
        return not_run("train", found.mode)
    return "".join(training_one(client, r) for r in runs)


def training_one(client, r: StageRun) -> str:
    """One train run: its task, run line, settings, curves and the last value of its key metrics."""
    m, p = r.metrics, r.params
    key = key_metric(r.task)
    epochs, batch, optimizer, lr, width, data = (p.get(k, "?") for k in names.TRAIN_SETTINGS)
    out = [f"<h3>{esc(r.task)}</h3>" + run_line(r),
           f"<p class=\"note\">epochs {esc(epochs)}, batch {esc(batch)}, {esc(optimizer)} lr {esc(lr)}, width "
           f"{esc(width)}, on <code>{esc(p.get(names.TRAIN_DATASET_URL, data))}</code></p>"]
    png = curves_png(client, r.id, r.task)
    out.append(image(png, f"training curves of {r.task}",
                     f"{r.task}: loss and validation {key} per epoch (metric history of run {r.id})")
               if png else "<p class=\"note\">no per-epoch metrics logged</p>")
    rows = [(k, m[k]) for k in (names.EPOCHS_RUN, names.TRAIN_LOSS, names.VAL_LOSS, metric("val", key),
                                metric("val", "f1_macro"), names.TRAIN_SECONDS, names.SAMPLES_PER_S) if k in m]
    if rows:
        out.append(table(["metric (last value)", "value"], rows))
    return "".join(out)


# ---------------------------------------------------------------------------------------------- test

def split_of(r: StageRun) -> str:
    """The split a run's test metrics are of: the evaluate run's ``evaluate.split``; a train run's test pass,
    else its validation."""
    if r.stage == "evaluate":
        return r.params.get(names.EVALUATE_SPLIT, "test")
    return "test" if any(k.startswith(metric("test", "")) for k in r.metrics) else "val"


def classes_of(r: StageRun, split: str) -> list:
    """The classes with per-class metrics in ``r``, in the train run's label order (others after, sorted)."""
    prefix = names.CLASS_METRIC.format(split=split, metric="precision", name="")
    found = [k[len(prefix):] for k in r.metrics if k.startswith(prefix)]
    order = [c for c in (r.params.get(names.TRAIN_CLASSES) or "").split(",") if c]
    return [c for c in order if c in found] + sorted(c for c in found if c not in order)


def task_section(found: Found, art: Artifacts, task: str) -> str:
    """The task's test metrics from its train and evaluate runs side by side, then the breakdown and figures
    of one of them (the evaluate run when there is one)."""
    from pipeline.tasks import get_task

    sources = [r for r in (found.get("train", task), found.get("evaluate", task)) if r is not None]
    detector = get_task(task).detector
    out = [run_line(r) for r in sources]
    out.append(side_by_side(sources, names.DETECTOR_ROWS if detector else names.CLASSIFIER_ROWS))
    shown = found.get("evaluate", task) or found.get("train", task)
    split = split_of(shown)
    out.append(by_distance(shown, split) if detector else per_class(shown, split))
    patterns = names.DETECTOR_FIGURES if detector else names.CLASSIFIER_FIGURES
    out.append(figures_html(art.figures(shown.id), [f.format(split=split) for f in patterns],
                            run_label=f"{shown.stage} run {shown.id}"))
    return "".join(out)


def side_by_side(sources: list, keys: tuple) -> str:
    """One row per metric of ``keys``, one column per run (its own split's value)."""
    labels = [f"{r.stage} run ({split_of(r)} split)" for r in sources]
    rows = []
    for k in keys:
        values = [r.metrics.get(metric(split_of(r), k)) for r in sources]
        if any(v is not None for v in values):
            rows.append([k] + ["-" if v is None else v for v in values])
    return table(["metric"] + labels, rows) if rows else "<p class=\"note\">no test metrics logged</p>"


def by_distance(r: StageRun, split: str) -> str:
    """The detector's metrics, one row per distance bucket."""
    def value(name: str, bucket: str):
        key = (metric(split, name) if bucket == ALL
               else names.DISTANCE_METRIC.format(split=split, metric=name, distance=bucket))
        return r.metrics.get(key, "-")

    cols = names.DETECTOR_COLUMNS
    return (f"<h3>By distance ({esc(r.stage)} run, {esc(split)} split)</h3>"
            + table(["distance"] + list(cols), [[b] + [value(c, b) for c in cols] for b in DISTANCE_ROWS]))


def per_class(r: StageRun, split: str) -> str:
    """A classifier's precision, recall and F1 per class ("" when it logged none)."""
    classes = classes_of(r, split)
    if not classes:
        return ""
    rows = [[c] + [r.metrics.get(names.CLASS_METRIC.format(split=split, metric=s, name=c), "-")
                   for s in names.CLASS_STATS] for c in classes]
    return (f"<h3>Per class ({esc(r.stage)} run, {esc(split)} split)</h3>"
            + table(["class"] + list(names.CLASS_STATS), rows))
