"""The transfer stage: which layers transfer between tasks, and does pre-training rescue small data? (Yosinski,
Clune, Bengio, Lipson: "How transferable are features in deep neural networks?", NIPS 2014.)

extract   : halves A and B of ``train.data``'s rows of the task's kind, per ``transfer.splits``: ``class`` (A: the
            first half of the classes, B: the rest: similar tasks on the same images) and ``day_night`` (A: day
            scenes, B: night scenes, every class: the same task on different-looking images). One Spark job
            writes each half as a dataset of its own (``<train.data>-transfer-<split>-<A|B>``, every split, images
            resized to ``transfer.image_hw``, labels renumbered), with nested train subsets ``train_n<size>`` of
            B for the size curve;
transform : the grid as parallel Spark tasks, one training per task on one thread, each its own MLflow child
            run: baseA and baseB; for every chop layer n, BnB (B's first n layers copied from baseB and frozen,
            the rest trained afresh: the "selffer"), AnB (copied from baseA: transfer), and the fine-tuned BnB+
            and AnB+; each from ``transfer.seeds`` seeds. On B's subsets of ``transfer.sizes`` rows: the net
            from scratch, pre-trained on A (every layer below the head from baseA, fine-tuned), and from scratch
            with a second loss from the same images (lane masks / light distances, ``transfer.aux_weight``);
load      : test accuracy on B of every cell; the paper's figure (accuracy against n, spread over seeds) per
            split, the size curve, conv1 filters from scratch beside pre-trained; metrics and a table to MLflow.

``transfer.mode=sizes`` asks the size curve of any ingested dataset instead (``train.data``, a user's own crops):
no halves, no grid; on the first ``transfer.sizes`` train rows in a stable order of their groups (nested, as
``train.max_rows``), nets from scratch and nets started from ``transfer.init_model`` (a model pre-trained by this
pipeline, e.g. on the generator's scenes: every layer of the same shape copied, as ``train.init_model`` does),
each seed a Spark task and an MLflow run of its own, scored on the dataset's test split.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.data import store
from pipeline.data.records import stable_hash

log = logging.getLogger(__name__)

SPLITS = ("class", "day_night")
HALVES = ("A", "B")
DAY_NIGHT = {"A": "day", "B": "night"}      # road frames' ``context`` (the synthetic scene's time of day)
GRID_VARIANTS = ("BnB", "BnB+", "AnB", "AnB+")
SIZE_VARIANTS = ("scratch", "pretrained", "aux")
OWN = "dataset"          # the split name of ``transfer.mode=sizes`` cells (the dataset itself, not a half)
EVAL_SPLITS = ("val", "test")
# What a transfer run logs besides the cells' metrics, named once for the report
MODE_PARAM, DATA_PARAM, LAYERS_PARAM = "transfer.mode", "transfer.data", "transfer.layers_resolved"
TRAININGS, GRID_SECONDS, AS_IS = "trainings", "grid_seconds", "sizes.as_is"
FIGURES = ("transfer_{split}", "transfer_sizes", "transfer_conv1")


def dataset_name(data: str, split: str, half: str) -> str:
    return f"{data}-transfer-{split}-{half}"


def subset_folder(size: int) -> str:
    return f"train_n{size}"


def metric_key(variant: str) -> str:
    """MLflow metric names allow no '+': AnB+ -> AnB_plus."""
    return variant.replace("+", "_plus")


# ------------------------------------------------------------------------------------------- halves

def half_labels(split: str, labels: list) -> dict:
    """``{half: class names in the half's label order}``."""
    if split == "class":  # every other class: each half mixes the kinds of class (white / yellow, solid / dashed)
        return {"A": list(labels[0::2]), "B": list(labels[1::2])}
    return {"A": list(labels), "B": list(labels)}


def half_of(split: str, halves: dict, label_name: str, context: str) -> Optional[str]:
    """Which half a row belongs to (None: neither, e.g. a dusk scene in the day/night split)."""
    if split == "class":
        return "A" if label_name in halves["A"] else "B" if label_name in halves["B"] else None
    return next((h for h, ctx in DAY_NIGHT.items() if context == ctx), None)


@dataclass(frozen=True)
class Plan:
    """What the derive job writes: per output dataset its labels, and which train rows go to which folders."""
    kind: str
    image_hw: Optional[tuple]
    labels: dict            # {(split, half): [class names]}
    folders: dict           # {train row id: [(split, half, folder), ...]}
    sizes: dict             # {(split, half): {folder: rows}} of the train folders

    def outputs(self) -> list:
        return sorted(self.labels)


def plan_halves(rows: list, kind: str, labels: list, splits: list, sizes: list, size_split: str,
                train_rows: int, image_hw) -> Plan:
    """From the train rows' ``(id, label_name, context)``: each half's train rows (all, or the first
    ``train_rows`` in id-hash order) and B's nested subsets of ``sizes`` rows (the same order: a smaller subset
    is inside every larger one), for the half of ``size_split``."""
    plan_labels, folders, counts = {}, {}, {}
    for split in splits:
        halves = half_labels(split, labels)
        for half in HALVES:
            plan_labels[(split, half)] = halves[half]
            members = sorted((r for r in rows if half_of(split, halves, r[1], r[2]) == half),
                             key=lambda r: stable_hash(r[0]))
            chosen = {"train": members[:train_rows] if train_rows else members}
            if split == size_split and half == "B":
                for size in sizes:
                    chosen[subset_folder(size)] = chosen["train"][:size]
            counts[(split, half)] = {folder: len(ids) for folder, ids in chosen.items()}
            for folder, members_in in chosen.items():
                for r in members_in:
                    folders.setdefault(r[0], []).append((split, half, folder))
    return Plan(kind, tuple(image_hw) if image_hw else None, plan_labels, folders, counts)


def _derive_files(units, plan: Plan, roots: dict, encoding: tuple, mb: float):
    """Spark task: (split, source file) units -> rows of each half, transformed, into each output's files."""
    from pipeline.data.images import resize
    from pipeline.data.parts import PartWriter, arrow_schema, encode_row, row_groups
    from pipeline.session import quiet_warnings
    from schemas.datasets import SCHEMAS, decode_row

    quiet_warnings()
    schema = SCHEMAS[plan.kind]
    out_schema = arrow_schema(schema)
    index = {key: {name: i for i, name in enumerate(names)} for key, names in plan.labels.items()}
    results = []
    for split_name, path in units:
        part = f"{split_name}-{path.rsplit('/', 1)[-1].split('.', 1)[0]}"
        writers = {key: PartWriter(roots[key], part, mb) for key in plan.outputs()}
        for table in row_groups(path, list(schema.fields)):
            for stored in table.to_pylist():
                targets = _targets(plan, split_name, stored)
                if not targets:
                    continue
                row = decode_row(schema, stored)
                if plan.image_hw:
                    row["image"] = resize(row["image"], plan.image_hw)
                    if "lane_mask" in row:
                        row["lane_mask"] = resize(row["lane_mask"], plan.image_hw, nearest=True)
                for key, folder in targets:
                    out = dict(row, label=index[key][row["label_name"]])
                    writers[key].add(f"{plan.kind}/{folder}", out_schema, encode_row(schema, out, *encoding))
        results.append({key: writer.close() for key, writer in writers.items()})
    yield results


def _targets(plan: Plan, split_name: str, stored: dict) -> list:
    """``[((split, half), folder)]`` a stored row goes to: train rows as planned, val / test rows by their half."""
    if split_name == "train":
        return [((s, h), folder) for s, h, folder in plan.folders.get(stored["id"], ())]
    out = []
    for split in dict.fromkeys(s for s, _ in plan.outputs()):
        half = half_of(split, {h: plan.labels[(split, h)] for h in HALVES}, stored["label_name"],
                       stored.get("context", ""))
        if half:
            out.append(((split, half), split_name))
    return out


def derive(spark, conf: Config, spec) -> Plan:
    """Write every half as a dataset of its own (swapped in whole; a killed run leaves the previous ones)."""
    from pyspark.sql import functions as F

    from pipeline.data import writer
    from schemas.datasets import SCHEMAS

    c = conf.transfer
    kind, root = spec.kind, spec.data_root
    if "day_night" in c.splits and "context" not in SCHEMAS[kind].fields:
        raise ConfigError(f"transfer.splits=day_night needs rows that record the scene's time of day (road_frames); "
                          f"{root}/{kind} has none: use transfer.splits=[class]")
    train = spark.read.parquet(spec.split_url("train"))
    context = F.col("context") if "context" in train.columns else F.lit("")
    rows = [(r[0], r[1], r[2]) for r in train.select("id", "label_name", context.alias("context")).collect()]
    plan = plan_halves(rows, kind, list(spec.classes), c.splits, c.sizes, c.size_split, c.train_rows, c.image_hw)
    for key in plan.outputs():
        if len(plan.labels[key]) < 2:
            raise ConfigError(f"transfer: half {key[1]} of the {key[0]} split has one class "
                              f"({', '.join(plan.labels[key])}): the task needs 4 or more classes for a class split")
    outs = {key: writer.Output(store.dataset_root(conf.paths.data_url, dataset_name(conf.train.data, *key)))
            for key in plan.outputs()}
    tmp = {key: out.tmp for key, out in outs.items()}
    units, weights = _derive_units(spec)
    mb, encoding = conf.ingest.rowgroup_size_mb, (conf.ingest.png_compression, conf.ingest.image_format)
    groups = writer.plan_tasks(units, writer.spark_tasks(spark), weights)
    reports = writer.task_job(spark, groups, lambda index, group: _derive_files(group, plan, tmp, encoding, mb)
                              ).collect()
    for key, out in outs.items():
        _publish_half(out, key, plan, [r[key] for task in reports for r in task], spec, conf)
    return plan


def _derive_units(spec) -> tuple[list, list]:
    """The source files derive reads, as units ``(split, file URL)`` (train, then val and test), weighted by
    their bytes."""
    fs, path = store.filesystem(spec.data_root)
    units, weights = [], []
    for split in ("train",) + EVAL_SPLITS:
        if spec.has_split(split):
            for p in sorted(fs.glob(f"{path}/{spec.kind}/{split}/*.parquet")):
                units.append((split, f"{spec.split_url(split)}/{p.rsplit('/', 1)[-1]}"))
                weights.append(fs.size(p))
    return units, weights


def _publish_half(out, key: tuple, plan: Plan, written: list, spec, conf: Config) -> None:
    """Commit one half's files (``written``: its part of the tasks' reports), check every folder holds the rows
    planned and val and test are not empty, and swap the half's dataset in."""
    from pipeline.data import parts, writer
    from schemas.datasets import SCHEMAS

    kind, root = spec.kind, spec.data_root
    on_disk = out.commit(parts.merge(written), lambda folder: SCHEMAS[kind], conf.ingest.image_format)
    writer.expect_rows(f"transfer ({out.root})", on_disk, {f"{kind}/{f}": n for f, n in plan.sizes[key].items()})
    splits = {folder.split("/", 1)[1]: n for folder, n in on_disk.items()}
    missing = [s for s in EVAL_SPLITS if not splits.get(s)]
    if missing:
        from pipeline.data.splits import fix, rows_in
        from pipeline.errors import EmptySplit

        meta = store.read_meta(root)
        held = " and ".join(f"{rows_in(meta, kind, s)} {s}" for s in missing)
        raise EmptySplit(f"transfer: half {key[1]} of the {key[0]} split ({', '.join(plan.labels[key])}) has no "
                         f"{' or '.join(missing)} rows: dataset {root.rsplit('/', 1)[-1]}, kind {kind}, holds "
                         f"{held} rows, none of this half's; {fix(meta, missing[0])}", root, kind, missing[0])
    out.publish({"datasets": {kind: {"rows": sum(splits.values()), "splits": splits, "classes": {},
                                     "labels": plan.labels[key]}},
                 "kinds": [kind], "classes": plan.labels[key],
                 "transfer": {"source": root, "split": key[0], "half": key[1],
                              "image_hw": list(plan.image_hw or spec.in_hw)}})
    print(f"transfer: half {key[1]} of the {key[0]} split: {', '.join(plan.labels[key])}; "
          + ", ".join(f"{folder} {n}" for folder, n in sorted(splits.items())), flush=True)


# --------------------------------------------------------------------------------------------- grid

@dataclass(frozen=True)
class Cell:
    split: str
    variant: str                 # baseA | baseB | BnB | BnB+ | AnB | AnB+ | scratch | pretrained | aux
    seed: int
    layer: Optional[str] = None  # the chop point n (grid variants)
    size: Optional[int] = None   # B's train rows (size variants)

    @property
    def key(self) -> str:
        where = self.layer or (f"n{self.size}" if self.size else "")
        return "/".join(x for x in (self.split, self.variant, where, f"seed{self.seed}") if x)

    @property
    def half(self) -> str:
        return "A" if self.variant == "baseA" else "B"

    @property
    def source(self) -> Optional["Cell"]:
        """The base net this cell copies layers from."""
        if self.variant in GRID_VARIANTS:
            return Cell(self.split, "base" + self.variant[0], self.seed)
        if self.variant == "pretrained":
            return Cell(self.split, "baseA", self.seed)
        return None


def plan_cells(c) -> tuple[list, list]:
    """The grid as two waves: the nets nothing depends on (bases, scratch and second-loss size cells), then the
    cells that copy from a base."""
    first, second = [], []
    for split in c.splits:
        for seed in range(c.seeds):
            first += [Cell(split, "baseA", seed), Cell(split, "baseB", seed)]
            second += [Cell(split, v, seed, layer=n) for n in c.layers for v in GRID_VARIANTS]
    for seed in range(c.seeds):
        for size in c.sizes:
            first += [Cell(c.size_split, "scratch", seed, size=size), Cell(c.size_split, "aux", seed, size=size)]
            second.append(Cell(c.size_split, "pretrained", seed, size=size))
    if c.size_split not in c.splits:  # the pre-trained size cells need their split's baseA
        first += [Cell(c.size_split, "baseA", seed) for seed in range(c.seeds)]
    return first, second


def cell_spec(cell: Cell, base_specs: dict, conf: Config, layers: list, run_id: str):
    """The :class:`TrainSpec` of one cell: its half's spec with the cell's seed, folder, copied layers and loss.
    Every cell takes the same number of optimizer steps (``transfer.steps``, validated ``transfer.epochs``
    times), whatever its training-set size: a net on 100 images sees them many times, as it would in practice."""
    from pipeline.train.loader import AUX_TARGETS

    spec = base_specs[(cell.split, cell.half)]
    t = spec.train.model_copy(update={"seed": cell.seed, "resume": False})
    folder = subset_folder(cell.size) if cell.size else "train"
    c = conf.transfer
    init_layers: tuple = ()
    if cell.variant in GRID_VARIANTS:
        init_layers = tuple(layers[:layers.index(cell.layer) + 1])
    elif cell.variant == "pretrained":
        init_layers = tuple(layers)
    source = cell.source
    return dataclasses.replace(
        spec, train=t, train_split=folder, steps_per_epoch=max(1, c.steps // c.epochs),
        checkpoint_url=f"{conf.paths.checkpoint_url.rstrip('/')}/transfer/{conf.train.data}/{cell.key}",
        run_id=run_id, init_url=source and _checkpoint(conf, source), init_layers=init_layers,
        freeze=cell.variant in ("BnB", "AnB"), init_lr_scale=c.fine_tune_lr,
        aux=AUX_TARGETS.get(spec.kind) if cell.variant == "aux" else None,
        aux_weight=conf.transfer.aux_weight, threads=1, log_model=False)


def _checkpoint(conf: Config, cell: Cell) -> str:
    return f"{conf.paths.checkpoint_url.rstrip('/')}/transfer/{conf.train.data}/{cell.key}"


def train_cell(key: str, spec) -> dict:
    """One cell in a Spark task: train (one thread), then test on B; the test metrics go to the cell's run."""
    import torch
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipeline.train.evaluate import evaluate
    from pipeline.train.run import load_trained, train_fn

    tic = time.perf_counter()
    torch.set_num_threads(1)
    train_fn(spec)
    model = load_trained(spec).eval()
    result = evaluate(model, spec.task, spec.loader("test"), list(spec.classes), "test_", figures=False)
    metrics = {k: float(v) for k, v in result.metrics.items() if np.isscalar(v)}
    metrics["train_seconds"] = time.perf_counter() - tic
    now = int(time.time() * 1000)
    MlflowClient(spec.tracking_uri).log_batch(spec.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()
                                                                    if v == v])
    print(f"transfer: {key}: test accuracy {metrics.get('test_accuracy', float('nan')):.3f} "
          f"({metrics['train_seconds']:.0f} s)", flush=True)
    return {"key": key, **metrics}


def _train_partition(items):
    for key, spec in items:
        yield train_cell(key, spec)


def run_wave(spark, cells: list, specs: dict, partitions: int) -> dict:
    """One Spark job: every cell's training as a task (``partitions`` tasks, 0: one per cell)."""
    if not cells:
        return {}
    items = [(cell.key, specs[cell.key]) for cell in cells]
    n = min(partitions or len(items), len(items))
    rdd = spark.sparkContext.parallelize(items, n)
    spark.sparkContext.setJobDescription(f"transfer: {len(items)} trainings")
    return {r["key"]: r for r in rdd.mapPartitions(_train_partition).collect()}


# --------------------------------------------------------------------------------------------- stage

def run(spark, conf: Config, tracker) -> dict:
    """The transfer stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.models import build_model
    from pipeline.train.spec import make_spec

    c = conf.transfer
    t = conf.train.model_copy(update={"task": c.task, "epochs": c.epochs, "lr": c.lr, "batch_size": c.batch_size,
                                      "kind": None, "num_processes": 1, "augment_policy": None, "per_task": {},
                                      "init_model": None, "init_freeze": None, "max_rows": 0})
    conf = conf.model_copy(update={"train": t})
    spec = make_spec(conf)
    from pipeline.data.splits import require_split

    for split in EVAL_SPLITS:   # every cell validates on val and is scored on test
        require_split(spec, split)
    if spec.task.detector:
        raise ConfigError("transfer.task: the grid compares classifiers (lane_classifier or tl_classifier)")
    if c.mode == "sizes":
        return run_sizes(spark, conf, tracker, spec)
    if c.size_split not in c.splits:
        raise ConfigError(f"transfer.size_split={c.size_split} is not among transfer.splits={c.splits}")
    layers = list(build_model(c.task, len(spec.classes), spec.in_hw, t.width).transferable())
    chops = c.layers or layers
    unknown = [n for n in chops if n not in layers]
    if unknown:
        raise ConfigError(f"transfer.layers: {', '.join(unknown)} cannot be chopped; the {c.task} net transfers "
                          f"{', '.join(layers)}")
    c = c.model_copy(update={"layers": sorted(chops, key=layers.index)})
    plan = derive(spark, conf, spec)
    base_specs = {}
    for key in plan.outputs():
        half_conf = conf.model_copy(update={"train": t.model_copy(update={"data": dataset_name(t.data, *key)})})
        base_specs[key] = make_spec(half_conf)
    b_sizes = plan.sizes[(c.size_split, "B")]
    capped = sorted({min(s, b_sizes["train"]) for s in c.sizes})
    if capped != sorted(set(c.sizes)):
        print(f"transfer: B of the {c.size_split} split has {b_sizes['train']} train rows: sizes "
              f"{sorted(set(c.sizes))} become {capped}", flush=True)
    mlflow.log_params({LAYERS_PARAM: ",".join(c.layers), "transfer.task_kind": spec.kind,
                       **{f"transfer.{s}.{h}.classes": ",".join(plan.labels[(s, h)]) for s, h in plan.outputs()},
                       **{f"transfer.{s}.{h}.train_rows": plan.sizes[(s, h)]["train"] for s, h in plan.outputs()}})
    first, second = plan_cells(c)
    runs = cell_runs(tracker, first + second)
    specs = {cell.key: cell_spec(cell, base_specs, conf, layers, runs[cell.key])
             for cell in first + second}
    for cell in first + second:
        s = specs[cell.key]
        tracker.client.log_batch(runs[cell.key], params=_params(cell, s))
    results: dict = {}
    tic = time.perf_counter()
    try:
        for name, wave in (("bases and nets from scratch", first), ("copies from the bases", second)):
            print(f"transfer: {len(wave)} trainings ({name}), {c.partitions or len(wave)} tasks", flush=True)
            results.update(run_wave(spark, wave, specs, c.partitions))
    except BaseException:
        for key, run_id in runs.items():
            tracker.client.set_terminated(run_id, "FINISHED" if key in results else "FAILED")
        raise
    for run_id in runs.values():
        tracker.client.set_terminated(run_id, "FINISHED")
    seconds = time.perf_counter() - tic
    metrics = summarize(results, first + second, c)
    metrics[GRID_SECONDS] = seconds
    metrics[TRAININGS] = len(results)
    metrics.update(audit_second_loss(conf, c, specs))
    mlflow.log_metrics(metrics)
    _log_figures(tracker, results, first + second, c, specs, plan)
    return {k: v for k, v in metrics.items() if k.endswith(".mean") or k in (GRID_SECONDS, TRAININGS)}


def cell_runs(tracker, cells: list) -> dict:
    """A child run of the active stage run per cell, tagged with what the cell is: ``{cell key: run id}``."""
    import mlflow

    parent = mlflow.active_run().info.run_id
    return {cell.key: tracker.client.create_run(
        tracker.experiment_id, run_name=f"transfer {cell.key}",
        tags={"mlflow.parentRunId": parent, "pipeline.kind": "transfer-cell", "pipeline.stage": "transfer",
              "transfer.split": cell.split, "transfer.variant": cell.variant, "transfer.layer": cell.layer or "",
              "transfer.size": str(cell.size or ""), "transfer.seed": str(cell.seed)}).info.run_id for cell in cells}


def run_sizes(spark, conf: Config, tracker, spec) -> dict:
    """``transfer.mode=sizes``: the size curve on ``train.data`` itself, from scratch and from
    ``transfer.init_model``."""
    import mlflow

    from pipeline.train.finetune import resolve
    from pipeline.train.spec import first_rows

    c = conf.transfer
    if not c.init_model:
        raise ConfigError("transfer.mode=sizes needs transfer.init_model=<model URI>: the pre-trained net whose "
                          "fine-tuning the curve sets beside training from scratch (e.g. models:/road-lights@audited)")
    base = dataclasses.replace(spec, checkpoint_url=f"{conf.paths.checkpoint_url.rstrip('/')}/transfer/"
                                                    f"{conf.train.data}/{OWN}")
    t = spec.train.model_copy(update={"init_model": c.init_model, "init_lr_scale": c.fine_tune_lr})
    tuned, init_params = resolve(dataclasses.replace(base, train=t), conf.model_copy(update={"train": t}))
    url = spec.split_url("train")
    keep = {size: first_rows(url, size) for size in sorted(set(c.sizes))}
    held = max(len(ids) for ids in keep.values())
    if any(len(ids) < size for size, ids in keep.items()):
        print(f"transfer: {conf.train.data} has {held} {spec.kind} train rows: sizes {sorted(keep)} become "
              f"{sorted({len(ids) for ids in keep.values()})}", flush=True)
    cells = [Cell(OWN, v, seed, size=size) for seed in range(c.seeds) for size in sorted(keep)
             for v in ("scratch", "pretrained")]
    mlflow.log_params({MODE_PARAM: "sizes", "transfer.task_kind": spec.kind, DATA_PARAM: conf.train.data,
                       **{k.replace("train.", "transfer.", 1): v for k, v in init_params.items()},
                       **{f"transfer.rows.n{size}": len(ids) for size, ids in keep.items()}})
    runs = cell_runs(tracker, cells)
    specs = {}
    for cell in cells:
        pre = cell.variant == "pretrained"
        specs[cell.key] = dataclasses.replace(
            spec, train=spec.train.model_copy(update={"seed": cell.seed, "resume": False}),
            keep_ids=keep[cell.size], steps_per_epoch=max(1, c.steps // c.epochs),
            checkpoint_url=_checkpoint(conf, cell), run_id=runs[cell.key],
            init_url=tuned.init_url if pre else None, init_layers=tuned.init_layers if pre else (),
            init_head=tuned.init_head and pre, freeze=False, freeze_layers=(), init_lr_scale=c.fine_tune_lr,
            threads=1, log_model=False)
        tracker.client.log_batch(runs[cell.key], params=_params(cell, specs[cell.key]))
    tic = time.perf_counter()
    results: dict = {}
    try:
        print(f"transfer: {len(cells)} trainings on {conf.train.data} (from scratch and from {c.init_model}), "
              f"{c.partitions or len(cells)} tasks", flush=True)
        results = run_wave(spark, cells, specs, c.partitions)
    finally:
        for key, run_id in runs.items():
            tracker.client.set_terminated(run_id, "FINISHED" if key in results else "FAILED")
    metrics = summarize(results, cells, c.model_copy(update={"splits": [], "sizes": sorted(keep)}))
    if tuned.init_head:   # the model's own classes: how it does as it is, before any fine-tuning (the bar to beat)
        from pipeline.train.evaluate import evaluate
        from pipeline.train.run import build

        found = evaluate(build(tuned)[0].eval(), spec.task, spec.loader("test"), list(spec.classes), "test_",
                         figures=False)
        metrics[AS_IS] = float(found.metrics["test_accuracy"])
        print(f"transfer: {c.init_model} as it is (no fine-tuning): test accuracy {metrics[AS_IS]:.3f}",
              flush=True)
    for size in keep:
        scratch = accuracies(results, cells, variant="scratch", size=size)
        pre = accuracies(results, cells, variant="pretrained", size=size)
        if scratch and pre:
            metrics[f"sizes.gain.n{size}"] = float(np.mean(pre) - np.mean(scratch))
    metrics[GRID_SECONDS] = time.perf_counter() - tic
    metrics[TRAININGS] = len(results)
    mlflow.log_metrics(metrics)
    from pipeline.analysis import figures

    tracker.log_figure(figures.size_curve(results, cells, {s: len(ids) for s, ids in keep.items()}, OWN,
                                          data=conf.train.data, source=c.init_model,
                                          as_is=metrics.get(AS_IS)), FIGURES[1])
    mlflow.log_table({"cell": [k for k in results], "test_accuracy": [r["test_accuracy"] for r in results.values()],
                      "train_seconds": [r["train_seconds"] for r in results.values()]}, "transfer_cells.json")
    for size in sorted(keep):
        print(f"transfer: {len(keep[size])} images: from scratch "
              f"{metrics.get(f'sizes.scratch.n{size}.mean', float('nan')):.3f}, pre-trained "
              f"{metrics.get(f'sizes.pretrained.n{size}.mean', float('nan')):.3f} (mean of {c.seeds} seeds)",
              flush=True)
    return {k: v for k, v in metrics.items() if k.endswith(".mean") or k in (GRID_SECONDS, TRAININGS)}


def audit_second_loss(conf: Config, c, specs: dict) -> dict:
    """The context audit of the net from scratch and the net with a second loss (largest size, seed 0) on B's
    test split: does learning where the lane paint is make the net look at it?"""
    import mlflow

    from pipeline.analysis.audit import context_audit
    from pipeline.train.run import load_trained

    size = max(c.sizes)
    out = {}
    for variant in ("scratch", "aux"):
        spec = specs[Cell(c.size_split, variant, 0, size=size).key]
        result = context_audit(load_trained(spec).eval(), spec, conf, "test")
        print(f"transfer: context audit of {variant} (n{size}, seed 0): {result.verdict}", flush=True)
        mlflow.set_tag(f"transfer.audit.{variant}", result.verdict[:5000])
        for key in ("occlusion.object_drop", "occlusion.context_drop", "attribution.focus"):
            if key in result.metrics:
                out[f"sizes.{variant}.n{size}.audit.{key}"] = float(result.metrics[key])
        out[f"sizes.{variant}.n{size}.audit.relies_on_context"] = float(result.relies_on_context)
    return out


def _params(cell: Cell, spec) -> list:
    from mlflow.entities import Param

    values = {"transfer.split": cell.split, "transfer.variant": cell.variant, "train.seed": cell.seed,
              "transfer.layer": cell.layer or "", "transfer.size": cell.size or "", "train.task": spec.train.task,
              "train.data": spec.data_root.rsplit("/", 1)[-1], "train.folder": spec.train_split,
              "train.epochs": spec.train.epochs, "train.steps_per_epoch_resolved": spec.steps_per_epoch,
              "transfer.copied_layers": ",".join(spec.init_layers), "transfer.frozen": spec.freeze,
              "transfer.copied_from": spec.init_url or "", "transfer.aux": spec.aux or "",
              "train.classes": ",".join(spec.classes)}
    return [Param(k, str(v)[:500]) for k, v in values.items()]


# ------------------------------------------------------------------------------------------ results

def accuracies(results: dict, cells: list, **match) -> list:
    """Test accuracies of the cells whose fields equal ``match``."""
    return [results[cell.key]["test_accuracy"] for cell in cells
            if cell.key in results and all(getattr(cell, k) == v for k, v in match.items())]


def summarize(results: dict, cells: list, c) -> dict:
    """Mean and spread over seeds of every grid point, the size curve, and the transfer gaps per layer."""
    out = {}

    def put(name: str, values: list) -> None:
        if values:
            out[f"{name}.mean"] = float(np.mean(values))
            out[f"{name}.min"], out[f"{name}.max"] = float(np.min(values)), float(np.max(values))

    for split in c.splits:
        base_b = accuracies(results, cells, split=split, variant="baseB")
        put(f"{split}.baseB", base_b)
        put(f"{split}.baseA_on_A", accuracies(results, cells, split=split, variant="baseA"))
        for n in c.layers:
            for v in GRID_VARIANTS:
                put(f"{split}.{metric_key(v)}.{n}", accuracies(results, cells, split=split, variant=v, layer=n))
            anb = accuracies(results, cells, split=split, variant="AnB", layer=n)
            bnb = accuracies(results, cells, split=split, variant="BnB", layer=n)
            if anb and bnb:  # the paper's split of a drop: co-adaptation (BnB < baseB), specificity (AnB < BnB)
                out[f"{split}.specificity_gap.{n}"] = float(np.mean(bnb) - np.mean(anb))
                out[f"{split}.coadaptation_gap.{n}"] = float(np.mean(base_b) - np.mean(bnb)) if base_b else 0.0
    for size in c.sizes:
        for v in SIZE_VARIANTS:
            put(f"sizes.{v}.n{size}", accuracies(results, cells, variant=v, size=size))
    return out


def _log_figures(tracker, results: dict, cells: list, c, specs: dict, plan: Plan) -> None:
    from pipeline.analysis import figures

    for split in c.splits:
        tracker.log_figure(figures.transfer_curve(results, cells, split, c.layers, plan.labels), FIGURES[0].format(split=split))
    rows = plan.sizes[(c.size_split, "B")]
    tracker.log_figure(figures.size_curve(results, cells, {s: rows[subset_folder(s)] for s in c.sizes}, c.size_split),
                       FIGURES[1])
    smallest = min(c.sizes)
    pair = [specs.get(Cell(c.size_split, v, 0, size=smallest).key) for v in ("scratch", "pretrained")]
    if all(pair):
        from pipeline.train.run import load_trained

        nets = [load_trained(s) for s in pair]
        tracker.log_figure(figures.filters_side_by_side(nets, [f"from scratch on {smallest} images",
                                                               f"pre-trained on A, fine-tuned on {smallest}"]),
                           FIGURES[2])
    table = [{"cell": cell.key, **{k: v for k, v in results[cell.key].items() if k != "key"}}
             for cell in cells if cell.key in results]
    import mlflow

    mlflow.log_table({k: [r.get(k) for r in table] for k in ("cell", "test_accuracy", "train_seconds")},
                     "transfer_cells.json")
