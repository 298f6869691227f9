"""The augment stage: N seeded copies of every train row of an ingested dataset, with lineage, via Spark.

extract   : the train split of each dataset kind of ``augment.source`` (val and test are copied untouched);
transform : one Spark job over the source files: a task reads its Parquet files with pyarrow, passes copy 0
            (and val / test rows) through as stored bytes, decodes each train row once and runs
            :func:`pipeline.augment.rows.augment_row` (the same function the training loader uses online) for
            copies 1..N, encodes them, and writes its own output file per source file
            (:mod:`pipeline.data.parts`). Context ops need another frame of the split as background, chosen
            from (row id, copy) alone so any row can be re-derived: for those policies the train split goes
            through a Spark join of (row, copy) to its background instead (slower: a plan row per copy);
load      : a new dataset ``<data_url>/<augment.name>`` shaped like an ingested one, swapped in whole; op counts,
            row counts and sample rows come back in the tasks' reports (no second pass over the data).
"""
from __future__ import annotations

import json

from pipeline.augment.policy import Policy, get_policy
from pipeline.config import Config, ConfigError
from pipeline.data import store
from pipeline.data.records import stable_hash


def background_of(row_id: str, copy_index: int, ids: list) -> str | None:
    """Another row of the split, picked by (row id, copy) alone."""
    if len(ids) < 2:
        return None
    pick = ids[stable_hash(f"{row_id}#{copy_index}") % len(ids)]
    return pick if pick != row_id else ids[(ids.index(pick) + 1) % len(ids)]


def _lineage(row: dict, parent_id: str, copy_index: int, applied: list) -> dict:
    return {**row, "parent_id": parent_id, "copy": int(copy_index), "ops": json.dumps(applied, sort_keys=True)}


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


def _augment_files(units, policy: Policy, copies: int, out_url: str, rowgroup_size_mb: float,
                  encoding: tuple = (0, "png")):
    """Spark task: (kind, split, source file) units -> one output file each; yields one report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.parts import PartWriter, arrow_schema
    from pipeline.session import quiet_warnings
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, decode_row

    quiet_warnings()
    _one_thread()
    report = _Report(samples=4)
    for kind, split, path in units:
        base, schema = SCHEMAS[kind], AUGMENTED_SCHEMAS[kind]
        out_schema = arrow_schema(schema)
        folder = f"{kind}/{split}"
        writer = PartWriter(out_url, _part_name(path), rowgroup_size_mb)
        fs, local = store.filesystem(path)
        with fs.open(local, "rb") as fh:
            source = pq.ParquetFile(fh)
            for group in range(source.num_row_groups):  # a row group at a time: bounded memory
                table = source.read_row_group(group, columns=list(base.fields))
                if split != "train" or not copies:  # untouched: the stored bytes plus lineage columns, no decoding
                    table = table.append_column("parent_id", table.column("id")).append_column(
                        "copy", pa.array([0] * len(table), pa.int32())).append_column(
                        "ops", pa.array(["[]"] * len(table), pa.string()))
                    writer.add_table(folder, table.select(out_schema.names).cast(out_schema))
                    continue
                for stored in table.to_pylist():
                    original = _lineage(stored, stored["id"], 0, [])
                    writer.add(folder, out_schema, original)
                    report.sample(kind, original)
                    row = decode_row(base, stored)
                    for copy_index in range(1, copies + 1):
                        encoded, applied = _copy(kind, row, policy, copy_index, encoding)
                        writer.add(folder, out_schema, encoded)
                        report.applied(kind, applied)
                        report.sample(kind, encoded)
        report.files.append(writer.close())
    yield report.done()


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
    writer = PartWriter(out_url, f"part-context-{index:05d}", rowgroup_size_mb)
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
        writer.add(f"{kind}/train", out_schema, encoded)
        report.sample(kind, encoded)
    report.files.append(writer.close())
    yield report.done()


def _plan(spark, df, copies: int):
    """(id, copy, bg_id) for every row and copy 0..copies, joined to the row and its background's image."""
    from pyspark.sql import functions as F

    ids = sorted(r["id"] for r in df.select("id").collect())
    plan = [(i, c, background_of(i, c, ids) if c else None) for i in ids for c in range(copies + 1)]
    plan_df = spark.createDataFrame(plan, "id string, copy int, bg_id string")
    backgrounds = df.select(F.col("id").alias("bg_id"), F.col("image").alias("bg_image"))
    return plan_df.join(df, "id").join(backgrounds, "bg_id", "left")


def _balanced(units: list, weights: list, groups: int) -> list:
    """Units into at most ``groups`` lists of about equal weight (largest first onto the lightest)."""
    bins = [[0.0, []] for _ in range(max(1, min(groups, len(units))))]
    for weight, unit in sorted(zip(weights, units), key=lambda wu: -wu[0]):
        lightest = min(bins, key=lambda b: b[0])
        lightest[0] += weight
        lightest[1].append(unit)
    return [b[1] for b in bins if b[1]]


def run(spark, conf: Config, tracker) -> dict:
    """The augment stage (registered in pipeline.stages)."""
    import mlflow

    from pipeline.data import parts
    from schemas.datasets import AUGMENTED_SCHEMAS

    a = conf.augment
    policy = get_policy(a.policy, a.seed, a.policies_file)
    src, dst = store.dataset_root(conf.paths.data_url, a.source), store.dataset_root(conf.paths.data_url, a.name)
    if src == dst:
        raise ConfigError(f"augment.name={a.name} would overwrite its source dataset: choose another name")
    meta = store.read_meta(src)
    with_background = any(step.op == "context_paste" for step in policy.ops)
    mlflow.log_dict(policy.describe(), "augment_policy.json")
    mlflow.log_params({"augment.source_url": src, "augment.output_url": dst})
    store.recover(dst)
    tmp = store.temporary(dst)
    fs, src_path = store.filesystem(src)
    units, weights = [], []
    for kind, info in meta["datasets"].items():
        for split in info["splits"]:
            if split == "train" and with_background and a.copies:
                continue  # the join path below
            listed = sorted(fs.glob(f"{src_path}/{kind}/{split}/*.parquet"))
            if not listed:
                raise RuntimeError(f"{src}: {kind}/{split} should hold {info['splits'][split]} rows but has no "
                                   f"Parquet files: re-run the ingest of {a.source}")
            for path in listed:  # executors get the source URL itself (an fsspec path drops e.g. the HDFS host)
                units.append((kind, split, f"{src}/{kind}/{split}/{path.rsplit('/', 1)[-1]}"))
                size = fs.size(path)  # val / test files are only copied; train rows are decoded and augmented
                weights.append(size * (1 + 3 * a.copies) if split == "train" else 0.1 * size)
    groups = _balanced(units, weights, 2 * spark.sparkContext.defaultParallelism)
    mb, encoding = conf.ingest.rowgroup_size_mb, (conf.ingest.png_compression, conf.ingest.image_format)
    reports = spark.sparkContext.parallelize(groups, len(groups) or 1).mapPartitions(
        lambda it: _augment_files([u for group in it for u in group], policy, a.copies, tmp, mb, encoding)).collect() \
        if groups else []
    if with_background and a.copies:
        for kind, info in meta["datasets"].items():
            if "train" in info["splits"]:
                plan = _plan(spark, spark.read.parquet(f"{src}/{kind}/train"), a.copies)
                part_count = 2 * spark.sparkContext.defaultParallelism  # (asking the plan would run its joins)
                reports += plan.repartition(part_count, "id").rdd.mapPartitionsWithIndex(
                    lambda i, it, k=kind: _context_partition(i, it, k, policy, tmp, mb, encoding)).collect()
    files = parts.merge(f for r in reports for f in r["files"])
    counts, op_counts, samples = {}, {}, {}
    for kind, info in meta["datasets"].items():
        counts[kind] = {"rows": 0, "splits": {}, "classes": info["classes"],
                        **({"labels": info["labels"]} if "labels" in info else {})}  # what training reads
        for split in info["splits"]:
            n = parts.finalize(f"{tmp}/{kind}/{split}", AUGMENTED_SCHEMAS[kind], files.get(f"{kind}/{split}", []),
                               image_format=conf.ingest.image_format)
            counts[kind]["splits"][split] = n
            counts[kind]["rows"] += n
        for split, n in info["splits"].items():
            expected = n * (a.copies + 1) if split == "train" else n
            if counts[kind]["splits"][split] != expected:
                raise RuntimeError(f"augment wrote {counts[kind]['splits'][split]} {kind} {split} rows, expected "
                                   f"{expected}" + (f" ({a.copies} copies + the original per source row)"
                                                    if split == "train" else " (copied untouched)"))
        op_counts[kind] = {}
        for r in reports:
            for (k, op), n in r["ops"]:
                if k == kind:
                    op_counts[kind][op] = op_counts[kind].get(op, 0) + n
        rows = sorted((row for r in reports for row in r["samples"].get(kind, [])),
                      key=lambda row: (row["parent_id"], row["copy"]))
        first = sorted({row["parent_id"] for row in rows})[:4]
        samples[kind] = [row for row in rows if row["parent_id"] in first and row["copy"] <= 3]
    store.write_meta(tmp, {**meta, "datasets": counts, "augment": {"source": src, "policy": policy.describe(),
                                                               "copies": a.copies, "op_counts": op_counts}})
    store.swap_in(tmp, dst)
    _log(tracker, conf, policy, dst, counts, op_counts, samples)
    return {"dataset_url": dst, **{f"{k}.train_rows": v["splits"].get("train", 0) for k, v in counts.items()}}


def _log(tracker, conf: Config, policy: Policy, dst: str, counts: dict, op_counts: dict, samples: dict) -> None:
    import mlflow

    from pipeline.augment import figures
    from pipeline.tracking import fingerprint_files

    mlflow.log_metrics({f"ops.{kind}.{op}": n for kind, ops in op_counts.items() for op, n in ops.items()})
    for kind, info in counts.items():
        mlflow.log_metrics({f"{kind}.{split}": n for split, n in info["splits"].items()})
        url = f"{dst}/{kind}"
        tracker.log_dataset(f"{conf.augment.name}/{kind}", url, info["rows"], fingerprint_files(url))
        if samples[kind]:
            tracker.log_figure(figures.policy_figure(kind, samples[kind], policy.name), f"policy_{kind}")
            tracker.log_figure(figures.ops_figure(kind, samples[kind][0], policy), f"ops_{kind}")
