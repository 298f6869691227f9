"""The augment stage: N seeded copies of every train row of an ingested dataset, with lineage, via Spark.

extract   : the source files of each dataset kind and split of ``augment.source``, as units of work weighted by
            what they cost (:func:`plan_units`), grouped into Spark tasks (:func:`plan_groups`,
            :func:`pipeline.data.writer.plan_tasks`); a task reads its files a row group at a time;
transform : :func:`copies_of` (no IO): copy 0 of a train row is its stored bytes with lineage, copies 1..N are
            :func:`pipeline.augment.rows.augment_row` (the same function the training loader uses online) of the
            row decoded once, encoded; val and test rows are passed through as stored (:func:`untouched`).
            Context ops need another frame of the split as background, chosen from (row id, copy) alone so any
            row can be re-derived: for those policies the train split goes through a Spark join of (row, copy)
            to its background instead (:func:`context_job`; slower: a plan row per copy);
load      : each task writes an output file per source file (:mod:`pipeline.data.parts`); the driver commits
            them as a new dataset ``<data_url>/<augment.name>`` shaped like an ingested one, checks that every
            source row has its copies (:func:`commit`), and swaps it in whole (:mod:`pipeline.data.writer`); op
            counts, row counts and sample rows come back in the tasks' reports (no second pass over the data).
"""
from __future__ import annotations

import json
from typing import Iterator

from pipeline.augment.policy import Policy, get_policy
from pipeline.config import Config, ConfigError
from pipeline.data import store, writer
from pipeline.data.records import stable_hash

# What an augment run logs, named once for the report
OUTPUT_PARAM = "augment.output_url"
OPS_METRIC, SPLIT_METRIC = "ops.{kind}.{op}", "{kind}.{split}"
FIGURES = ("policy_{kind}", "ops_{kind}")


def run(spark, conf: Config, tracker) -> dict:
    """The augment stage (registered in pipeline.stages): plan the source files into tasks, one Spark job
    augments and writes them (and a join job per kind for context policies), commit and account, swap in."""
    import mlflow

    a, c = conf.augment, conf.ingest
    policy = get_policy(a.policy, a.seed, a.policies_file)
    src, dst = endpoints(conf)
    meta = store.read_meta(src)
    joined = needs_background(policy) and a.copies > 0
    mlflow.log_dict(policy.describe(), "augment_policy.json")
    mlflow.log_params({"augment.source_url": src, OUTPUT_PARAM: dst})
    out = writer.Output(dst)
    groups = plan_groups(spark, src, meta, a.copies, joined)
    encoding = (c.png_compression, c.image_format)
    reports = files_job(spark, groups, policy, a.copies, out.tmp, c.rowgroup_size_mb, encoding).collect() \
        if groups else []
    for kind in train_kinds(meta) if joined else ():
        reports += context_job(spark, src, kind, policy, a.copies, out.tmp, c.rowgroup_size_mb, encoding).collect()
    counts = commit(out, meta, reports, a.copies, c.image_format)
    kinds = list(meta["datasets"])
    ops, samples = op_counts(reports, kinds), samples_of(reports, kinds)
    out.publish({**meta, "datasets": counts, "augment": {"source": src, "policy": policy.describe(),
                                                         "copies": a.copies, "op_counts": ops}})
    log_run(tracker, conf, policy, dst, counts, ops, samples)
    return {"dataset_url": dst, **{f"{k}.train_rows": v["splits"].get("train", 0) for k, v in counts.items()}}


# ----------------------------------------------------------------------------------- extract (driver)

def endpoints(conf: Config) -> tuple[str, str]:
    """The source and output datasets' URLs; an output that would overwrite its source is refused."""
    a = conf.augment
    src, dst = store.dataset_root(conf.paths.data_url, a.source), store.dataset_root(conf.paths.data_url, a.name)
    if src == dst:
        raise ConfigError(f"augment.name={a.name} would overwrite its source dataset: choose another name")
    return src, dst


def needs_background(policy: Policy) -> bool:
    """Whether the policy pastes rows onto another row's background (the train split then goes through the join)."""
    return any(step.op == "context_paste" for step in policy.ops)


def train_kinds(meta: dict) -> list:
    """The kinds of the source dataset that have a train split."""
    return [kind for kind, info in meta["datasets"].items() if "train" in info["splits"]]


def plan_units(src: str, meta: dict, copies: int, joined: bool = False) -> tuple[list, list]:
    """The source files as units of work ``(kind, split, file URL)`` and their weights: bytes times the work per
    byte (train rows are decoded and augmented ``copies`` times; val and test files are only copied). With
    ``joined`` the train split is left out (the context join writes it)."""
    fs, src_path = store.filesystem(src)
    units, weights = [], []
    for kind, info in meta["datasets"].items():
        for split in info["splits"]:
            if split == "train" and joined:
                continue
            listed = sorted(fs.glob(f"{src_path}/{kind}/{split}/*.parquet"))
            if not listed:
                raise RuntimeError(f"{src}: {kind}/{split} should hold {info['splits'][split]} rows but has no "
                                   f"Parquet files: re-run the ingest of {src.rsplit('/', 1)[-1]}")
            for path in listed:  # executors get the source URL itself (an fsspec path drops e.g. the HDFS host)
                units.append((kind, split, f"{src}/{kind}/{split}/{path.rsplit('/', 1)[-1]}"))
                size = fs.size(path)
                weights.append(size * (1 + 3 * copies) if split == "train" else 0.1 * size)
    return units, weights


def plan_groups(spark, src: str, meta: dict, copies: int, joined: bool = False) -> list:
    """The stage's units of work (:func:`plan_units`) grouped into its Spark tasks, balanced by weight
    (:func:`pipeline.data.writer.plan_tasks`)."""
    units, weights = plan_units(src, meta, copies, joined)
    return writer.plan_tasks(units, writer.spark_tasks(spark), weights)


# ------------------------------------------------------------------------------------ transform (no IO)

def background_of(row_id: str, copy_index: int, ids: list) -> str | None:
    """Another row of the split, picked by (row id, copy) alone."""
    if len(ids) < 2:
        return None
    pick = ids[stable_hash(f"{row_id}#{copy_index}") % len(ids)]
    return pick if pick != row_id else ids[(ids.index(pick) + 1) % len(ids)]


def _lineage(row: dict, parent_id: str, copy_index: int, applied: list) -> dict:
    return {**row, "parent_id": parent_id, "copy": int(copy_index), "ops": json.dumps(applied, sort_keys=True)}


def _copy(kind: str, row: dict, policy: Policy, copy_index: int, encoding: tuple, background=None,
          background_id=None) -> tuple[dict, list]:
    """Copy ``copy_index`` of a decoded source row, encoded for the augmented schema with its lineage; and the
    ops applied (a context paste names the background row it used)."""
    from pipeline.augment.rows import augment_row
    from pipeline.data.parts import encode_row
    from schemas.datasets import AUGMENTED_SCHEMAS

    out, applied = augment_row(kind, row, policy, row["id"], copy_index, background)
    if background_id and any(a["op"] == "context_paste" and "skipped" not in a for a in applied):
        applied = [dict(a, background=background_id) if a["op"] == "context_paste" else a for a in applied]
    out["id"] = f"{row['id']}~{copy_index}"
    return encode_row(AUGMENTED_SCHEMAS[kind], _lineage(out, row["id"], copy_index, applied), *encoding), applied


def copies_of(kind: str, stored: dict, policy: Policy, copies: int,
              encoding: tuple = (0, "png")) -> Iterator[tuple[dict, list]]:
    """One stored train row -> its rows in the augmented dataset, each with the ops applied: copy 0 (the stored
    row itself, with its lineage), then copies 1..``copies`` of the row decoded once, augmented and encoded
    (``encoding``: PNG level, image format)."""
    from schemas.datasets import SCHEMAS, decode_row

    yield _lineage(stored, stored["id"], 0, []), []
    row = decode_row(SCHEMAS[kind], stored)
    for copy_index in range(1, copies + 1):
        yield _copy(kind, row, policy, copy_index, encoding)


def untouched(table, out_schema):
    """Rows copied as stored (no decoding: an Arrow table) with their lineage columns: each its own parent,
    copy 0, no ops."""
    import pyarrow as pa

    return (table.append_column("parent_id", table.column("id"))
            .append_column("copy", pa.array([0] * len(table), pa.int32()))
            .append_column("ops", pa.array(["[]"] * len(table), pa.string()))
            .select(out_schema.names).cast(out_schema))


def op_counts(reports: list, kinds: list) -> dict:
    """``{kind: {op: times applied}}`` over the tasks' reports."""
    counts: dict = {kind: {} for kind in kinds}
    for r in reports:
        for (kind, op), n in r["ops"]:
            if kind in counts:
                counts[kind][op] = counts[kind].get(op, 0) + n
    return counts


def samples_of(reports: list, kinds: list) -> dict:
    """Per kind, the kept sample rows of the first four source rows (by id), copies 0..3, for the figures."""
    samples = {}
    for kind in kinds:
        rows = sorted((row for r in reports for row in r["samples"].get(kind, [])),
                      key=lambda row: (row["parent_id"], row["copy"]))
        first = sorted({row["parent_id"] for row in rows})[:4]
        samples[kind] = [row for row in rows if row["parent_id"] in first and row["copy"] <= 3]
    return samples


def expected_rows(meta: dict, copies: int) -> tuple[dict, dict]:
    """``({kind/split: rows}, {kind/split: why})`` the output must hold: every train row and its copies, every
    val and test row once."""
    expected, notes = {}, {}
    for kind, info in meta["datasets"].items():
        for split, n in info["splits"].items():
            train = split == "train"
            expected[f"{kind}/{split}"] = n * (copies + 1) if train else n
            notes[f"{kind}/{split}"] = (f"{copies} copies + the original per source row" if train
                                        else "copied untouched")
    return expected, notes


def counts_of(meta: dict, written: dict) -> dict:
    """The output's ``datasets`` summary: rows per kind and split as written, the source's classes and labels
    (what training reads)."""
    counts = {}
    for kind, info in meta["datasets"].items():
        splits = {split: written[f"{kind}/{split}"] for split in info["splits"]}
        counts[kind] = {"rows": sum(splits.values()), "splits": splits, "classes": info["classes"],
                        **({"labels": info["labels"]} if "labels" in info else {})}
    return counts


# ------------------------------------------------------------------------------------------ load (tasks)

class _Report:
    """What one task tells the driver: files written, augmented op counts, a few sample rows per kind."""

    def __init__(self, samples: int):
        from collections import Counter

        self.files, self.ops, self.samples, self.keep = [], Counter(), {}, samples

    def applied(self, kind: str, applied: list) -> None:
        self.ops.update((kind, a["op"]) for a in applied)

    def sample(self, kind: str, row: dict) -> None:
        kept = self.samples.setdefault(kind, [])
        if row["copy"] <= 3 and len({r["parent_id"] for r in kept} | {row["parent_id"]}) <= self.keep:
            kept.append(row)

    def done(self) -> dict:
        return {"files": self.files, "ops": list(self.ops.items()), "samples": self.samples}


def augment_files(units, policy: Policy, copies: int, out_url: str, rowgroup_size_mb: float,
                  encoding: tuple = (0, "png")) -> Iterator[dict]:
    """Spark task: (kind, split, source file) units -> one output file each, named after its source file;
    yields one report (files written, op counts, sample rows)."""
    from pipeline.data.parts import PartWriter, arrow_schema, row_groups
    from pipeline.session import quiet_warnings
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS

    quiet_warnings()
    _one_thread()
    report = _Report(samples=4)
    for kind, split, path in units:
        out_schema, folder = arrow_schema(AUGMENTED_SCHEMAS[kind]), f"{kind}/{split}"
        part = PartWriter(out_url, _part_name(path), rowgroup_size_mb)
        for table in row_groups(path, list(SCHEMAS[kind].fields)):
            if split != "train" or not copies:
                part.add_table(folder, untouched(table, out_schema))
                continue
            for stored in table.to_pylist():
                for row, applied in copies_of(kind, stored, policy, copies, encoding):
                    part.add(folder, out_schema, row)
                    report.applied(kind, applied)
                    report.sample(kind, row)
        report.files.append(part.close())
    yield report.done()


def files_job(spark, groups: list, policy: Policy, copies: int, out_url: str, rowgroup_size_mb: float,
              encoding: tuple = (0, "png")):
    """The stage's Spark job over the source files, not run yet: a task per group (:func:`plan_groups`) running
    :func:`augment_files` into ``out_url``; ``.collect()`` gives the reports."""
    return writer.task_job(spark, groups, lambda index, units: augment_files(units, policy, copies, out_url,
                                                                            rowgroup_size_mb, encoding))


def _one_thread() -> None:
    """Spark already runs one task per core: OpenCV's own threads would only compete with the other task."""
    import cv2

    cv2.setNumThreads(1)


def _part_name(path: str) -> str:
    """The output file of a source file: its name without extensions (part-00000.snappy.parquet -> part-00000)."""
    return path.rsplit("/", 1)[-1].split(".", 1)[0]


def _context_partition(index: int, rows, kind: str, policy: Policy, out_url: str, rowgroup_size_mb: float,
                       encoding: tuple = (0, "png")):
    """Spark task for context policies: plan rows (source fields + copy + background image) -> one file."""
    from pipeline.data.parts import PartWriter, arrow_schema
    from pipeline.session import quiet_warnings
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, decode_row, field_decoders

    quiet_warnings()
    _one_thread()
    base = SCHEMAS[kind]
    out_schema, decode_image = arrow_schema(AUGMENTED_SCHEMAS[kind]), field_decoders(base, ["image"])["image"]
    part = PartWriter(out_url, f"part-context-{index:05d}", rowgroup_size_mb)
    report = _Report(samples=4)
    for plan in rows:
        copy_index, bg = plan["copy"], plan["bg_image"]
        stored = {k: plan[k] for k in base.fields}
        if copy_index == 0:
            encoded = _lineage(stored, stored["id"], 0, [])
        else:
            row = decode_row(base, stored)
            background = decode_image(bg) if bg is not None else None
            encoded, applied = _copy(kind, row, policy, copy_index, encoding, background, plan["bg_id"])
            report.applied(kind, applied)
        part.add(f"{kind}/train", out_schema, encoded)
        report.sample(kind, encoded)
    report.files.append(part.close())
    yield report.done()


def context_plan(spark, df, copies: int):
    """(id, copy, bg_id) for every row and copy 0..copies, joined to the row and its background's image."""
    from pyspark.sql import functions as F

    ids = sorted(r["id"] for r in df.select("id").collect())
    plan = [(i, c, background_of(i, c, ids) if c else None) for i in ids for c in range(copies + 1)]
    plan_df = spark.createDataFrame(plan, "id string, copy int, bg_id string")
    backgrounds = df.select(F.col("id").alias("bg_id"), F.col("image").alias("bg_image"))
    return plan_df.join(df, "id").join(backgrounds, "bg_id", "left")


def context_job(spark, src: str, kind: str, policy: Policy, copies: int, out_url: str, rowgroup_size_mb: float,
                encoding: tuple = (0, "png")):
    """The join job of a context policy for one kind's train split, not run yet: the plan rows
    (:func:`context_plan`) hashed by id into :func:`pipeline.data.writer.spark_tasks` tasks (asking the plan
    for its size would run its joins), each writing one file; ``.collect()`` gives the reports."""
    rows = context_plan(spark, spark.read.parquet(f"{src}/{kind}/train"), copies)
    return rows.repartition(writer.spark_tasks(spark), "id").rdd.mapPartitionsWithIndex(
        lambda index, it: _context_partition(index, it, kind, policy, out_url, rowgroup_size_mb, encoding))


# ----------------------------------------------------------------------------------------- load (driver)

def commit(out: writer.Output, meta: dict, reports: list, copies: int, image_format: str) -> dict:
    """Commit the tasks' files as one Petastorm dataset per kind and split of the source, and account for every
    row (:func:`expected_rows`). Returns the output's ``datasets`` summary (:func:`counts_of`)."""
    from pipeline.data import parts
    from schemas.datasets import AUGMENTED_SCHEMAS

    expected, notes = expected_rows(meta, copies)
    written = out.commit(parts.merge(f for r in reports for f in r["files"]),
                         lambda folder: AUGMENTED_SCHEMAS[folder.split("/")[0]], image_format, list(expected))
    writer.expect_rows("augment", written, expected, notes)
    return counts_of(meta, written)


def log_run(tracker, conf: Config, policy: Policy, dst: str, counts: dict, op_counts: dict, samples: dict) -> None:
    """The run's metrics (op counts, rows per kind and split), the datasets with their fingerprints, and the
    policy and ops figures."""
    import mlflow

    from pipeline.augment import figures
    from pipeline.tracking import fingerprint_files

    mlflow.log_metrics({OPS_METRIC.format(kind=kind, op=op): n for kind, ops in op_counts.items() for op, n in ops.items()})
    for kind, info in counts.items():
        mlflow.log_metrics({SPLIT_METRIC.format(kind=kind, split=split): n for split, n in info["splits"].items()})
        url = f"{dst}/{kind}"
        tracker.log_dataset(f"{conf.augment.name}/{kind}", url, info["rows"], fingerprint_files(url))
        if samples[kind]:
            tracker.log_figure(figures.policy_figure(kind, samples[kind], policy.name), FIGURES[0].format(kind=kind))
            tracker.log_figure(figures.ops_figure(kind, samples[kind][0], policy), FIGURES[1].format(kind=kind))
