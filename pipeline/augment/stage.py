"""The augment stage: N seeded copies of every train row of an ingested dataset, with lineage, via Spark.

extract   : the train split of each dataset kind of ``augment.source`` (val and test are copied untouched);
transform : a plan row per (row, copy); Spark tasks decode, run :func:`pipeline.augment.rows.augment_row`
            (the same function the training loader uses online) and encode; context ops get another frame
            of the split as background, chosen from (row id, copy) alone so any row can be re-derived;
load      : a new dataset ``<data_url>/<augment.name>`` shaped like an ingested one, swapped in whole.
"""
from __future__ import annotations

import json
import uuid

from pipeline.augment.policy import Policy, get_policy, stable_hash
from pipeline.config import Config, ConfigError


def background_of(row_id: str, copy_index: int, ids: list) -> str | None:
    """Another row of the split, picked by (row id, copy) alone."""
    if len(ids) < 2:
        return None
    pick = ids[stable_hash(f"{row_id}#{copy_index}") % len(ids)]
    return pick if pick != row_id else ids[(ids.index(pick) + 1) % len(ids)]


def _augment_partition(rows, kind: str, policy: Policy):
    """Spark task: plan rows (source fields + copy + optional bg_image) -> encoded augmented rows."""
    from petastorm.unischema import dict_to_spark_row

    from pipeline.augment.rows import augment_row
    from pipeline.session import quiet_warnings
    from schemas.datasets import AUGMENTED_SCHEMAS, SCHEMAS, decode_row

    quiet_warnings()
    base, schema = SCHEMAS[kind], AUGMENTED_SCHEMAS[kind]
    image_field = base.fields["image"]
    for plan in rows:
        copy_index, bg = plan["copy"], plan["bg_image"]
        row = decode_row(base, {k: plan[k] for k in base.fields})
        if copy_index == 0:
            out, applied = row, []
        else:
            background = image_field.codec.decode(image_field, bg) if bg is not None else None
            out, applied = augment_row(kind, row, policy, row["id"], copy_index, background)
            if plan["bg_id"] and any(a["op"] == "context_paste" and "skipped" not in a for a in applied):
                applied = [dict(a, background=plan["bg_id"]) if a["op"] == "context_paste" else a for a in applied]
            out["id"] = f"{row['id']}~{copy_index}"
        out.update(parent_id=row["id"], copy=int(copy_index), ops=json.dumps(applied, sort_keys=True))
        yield dict_to_spark_row(schema, out)


def _plan(spark, df, copies: int, with_background: bool):
    """(id, copy, bg_id) for every row and copy 0..copies, joined to the row and its background's image."""
    from pyspark.sql import functions as F

    ids = sorted(r["id"] for r in df.select("id").collect())
    plan = [(i, c, background_of(i, c, ids) if with_background and c else None)
            for i in ids for c in range(copies + 1)]
    plan_df = spark.createDataFrame(plan, "id string, copy int, bg_id string")
    backgrounds = df.select(F.col("id").alias("bg_id"), F.col("image").alias("bg_image"))
    return plan_df.join(df, "id").join(backgrounds, "bg_id", "left")


def run(spark, conf: Config, tracker) -> dict:
    """The augment stage (registered in pipeline.stages)."""
    import mlflow
    from pyspark.sql import functions as F

    from pipeline.data.ingest import _write_meta, dataset_root, read_meta, recover, swap_in, write_petastorm
    from schemas.datasets import AUGMENTED_SCHEMAS

    a = conf.augment
    policy = get_policy(a.policy, a.seed, a.policies_file)
    src, dst = dataset_root(conf, a.source), dataset_root(conf, a.name)
    if src == dst:
        raise ConfigError(f"augment.name={a.name} would overwrite its source dataset: choose another name")
    meta = read_meta(src)
    with_background = any(step.op == "context_paste" for step in policy.ops)
    mlflow.log_dict(policy.describe(), "augment_policy.json")
    mlflow.log_params({"augment.source_url": src, "augment.output_url": dst})
    recover(dst)
    tmp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
    counts, op_counts, samples = {}, {}, {}
    for kind, info in meta["datasets"].items():
        counts[kind] = {"rows": 0, "splits": {}, "classes": info["classes"]}
        for split in info["splits"]:
            df = spark.read.parquet(f"{src}/{kind}/{split}")
            copies = a.copies if split == "train" else 0
            plan = _plan(spark, df, copies, with_background and split == "train")
            parts = 2 * spark.sparkContext.defaultParallelism  # (asking the plan would execute its joins)
            rows = plan.repartition(parts, "id").rdd.mapPartitions(
                lambda it, k=kind: _augment_partition(it, k, policy))
            url = f"{tmp}/{kind}/{split}"
            write_petastorm(spark, rows, AUGMENTED_SCHEMAS[kind], url, conf.ingest.rowgroup_size_mb)
            n = spark.read.parquet(url).count()
            counts[kind]["splits"][split] = n
            counts[kind]["rows"] += n
        train = spark.read.parquet(f"{tmp}/{kind}/train")
        applied = train.select(F.explode(F.from_json("ops", "array<struct<op:string>>")).alias("a"))
        op_counts[kind] = {r["op"]: r["count"] for r in applied.groupBy("a.op").count().collect()}
        samples[kind] = train.filter("copy <= 3").orderBy("parent_id", "copy").limit(4 * (a.copies + 1)).collect()
    _write_meta(tmp, {**meta, "datasets": counts, "augment": {"source": src, "policy": policy.describe(),
                                                               "copies": a.copies, "op_counts": op_counts}})
    swap_in(tmp, dst)
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
